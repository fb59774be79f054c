"""`codegemma serve` flags: every bad value is one line on stderr and exit code 2 before the
model loads; a real server process with --api-key-file, --cors-origin and an access log."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from codegemma import cli


def run_serve(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(["serve", *argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "99999"], "--port"),
        (["--port", "http"], "--port"),
        (["--max-active", "0"], "--max-active"),
        (["--prefill-chunk", "0"], "--prefill-chunk"),
        (["--cache-mib", "-1"], "--cache-mib"),
        (["--max-body-mib", "0"], "--max-body-mib"),
        (["--log-level", "bogus"], "--log-level"),
        (["--cors-origin", "example.com/path"], "--cors-origin"),
        (["--alias", "two words"], "--alias"),
        (["--fim-mode", "pms"], "--fim-mode"),
        (["--threads", "0"], "--threads"),
        (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
        (["--api-key", "a", "--api-key-file", "/nonexistent/key"], "--api-key-file"),
        (["--host", "no-such-host.invalid"], "--host"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(argv, needle, capsys, no_loading):
    code, err = run_serve(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("codegemma serve: error:"), err
    assert needle in err


def test_a_port_in_use_is_reported_before_loading(capsys, no_loading):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_serve(["--port", str(port)], capsys)
    assert code == 2 and f"127.0.0.1:{port}" in err and err.count("\n") == 1


def test_an_empty_key_file_is_refused(tmp_path, capsys, no_loading):
    empty = tmp_path / "key"
    empty.write_text("\n")
    code, err = run_serve(["--api-key-file", str(empty)], capsys)
    assert code == 2 and "no key" in err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_served_process_checks_keys_allows_origins_and_logs_each_request(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\nignored second line\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", "from codegemma.cli import main; raise SystemExit(main())"]
    command += ["serve", "--port", str(port), "--api-key-file", str(key_file)]
    command += ["--cors-origin", "http://editor.test", "--log-level", "info", "--threads", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("CODEGEMMA_API_KEY", "CODEGEMMA_MODEL")}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {"prompt": "def add(a, b):\n", "n_predict": 4, "temperature": 0}
        assert httpx.post(f"{url}/completion", json=body, timeout=30).status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        answer = httpx.post(f"{url}/completion", json=body, headers=key, timeout=30)
        assert answer.status_code == 200
        origin = {"Origin": "http://editor.test"}
        preflight = httpx.options(
            f"{url}/v1/chat/completions",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://editor.test"
        models = httpx.get(f"{url}/v1/models", headers={**key, **origin})
        assert models.headers["access-control-allow-origin"] == "http://editor.test"
        other = httpx.get(f"{url}/v1/models", headers={**key, "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    tokens = answer.json()
    line = next(line for line in err.splitlines() if '"POST /completion" 200' in line)
    assert f"prompt={tokens['tokens_evaluated']}" in line
    assert f"generated={tokens['tokens_predicted']}" in line and line.endswith(" ms")
    assert any('"POST /completion" 401' in line for line in err.splitlines())
