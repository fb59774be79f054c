"""`codegemma serve --replicas / --ray-address`: bad values are one line and exit code 2, and
without them `serve` stays one process that never imports Ray."""

import subprocess
import sys
import textwrap

import pytest

from codegemma import cli


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--replicas", "0"], "--replicas"),
        (["--replicas", "two"], "--replicas"),
        (["--ray-address", ""], "--ray-address"),
        (["--ray-address", "head node:6379"], "--ray-address"),
        (["--replicas", "2", "--threads", "0"], "--threads"),
    ],
)
def test_bad_cluster_flags_are_one_line_and_exit_2(argv, needle, capsys, no_loading):
    try:
        code = cli.main(["serve", *argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("codegemma serve: error:"), err
    assert needle in err


def test_serve_without_replicas_never_imports_ray():
    script = textwrap.dedent(
        """
        import socket
        import sys
        import uvicorn
        from codegemma import cli

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        uvicorn.Server.run = lambda self, sockets=None: None  # load, build the app, stop
        code = cli.main(["serve", "--port", str(port), "--threads", "1"])
        print(code, "ray" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.stdout.split() == ["0", "False"], done.stderr
