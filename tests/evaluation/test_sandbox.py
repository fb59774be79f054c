"""Hostile programs end as failed samples; the harness and the machine stay healthy.

Every hostile program here is bounded even if containment failed: the fork bomb stops at 256
processes that only sleep, the memory hog asks for a few GiB at most, timeouts are seconds.
Where an OS layer is not available on the machine running the tests, the test of that layer
alone (Python guard off) is skipped; the default configuration is always tested.
"""

from __future__ import annotations

import os
import re
import socket
import time

import pytest

from codegemma.evaluation.sandbox import Limits, Sandbox

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")

LIMITS = dict(timeout=1.5, cpu_seconds=1, memory_mb=256, max_processes=16)


@pytest.fixture(scope="module")
def guarded():
    """The default configuration: OS layers plus the Python-level guard."""
    with Sandbox(Limits(**LIMITS)) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def unguarded():
    """OS layers only, as a program that gets around the Python guard would meet them."""
    with Sandbox(Limits(**LIMITS, python_guard=False)) as sandbox:
        yield sandbox


def assert_healthy(sandbox: Sandbox) -> None:
    result = sandbox.run("import math\nassert math.factorial(5) == 120\nprint('ok')\n")
    assert result.status == "passed", result.detail
    assert result.detail.strip() == "ok"


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"  # a zombie holds nothing
    except FileNotFoundError:
        return True


def test_passing_and_failing_programs(guarded):
    assert guarded.run("x = 1 + 1\nassert x == 2\n").status == "passed"
    failed = guarded.run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert failed.status == "failed" and "AssertionError: arithmetic" in failed.detail
    assert guarded.run("def f(:\n").status == "failed"


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_exiting_early_is_not_a_pass(guarded, exit_call):
    result = guarded.run(f"{exit_call}\nassert False, 'tests never ran'\n")
    assert result.status == "failed"


def test_infinite_loop_is_stopped_by_the_cpu_limit(guarded):
    started = time.monotonic()
    result = guarded.run("while True:\n    pass\n")
    assert result.status in ("failed", "timeout")
    assert time.monotonic() - started < LIMITS["timeout"] + 2
    assert "SIGXCPU" in result.detail or result.status == "timeout"
    assert_healthy(guarded)


def test_sleeping_forever_is_killed_at_the_timeout(guarded):
    started = time.monotonic()
    result = guarded.run("import time\ntime.sleep(1000)\n")
    assert result.status == "timeout"
    assert LIMITS["timeout"] <= time.monotonic() - started < LIMITS["timeout"] + 2


@pytest.mark.parametrize(
    "hog",
    [
        "block = bytearray(8 << 30)\n",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(32 << 20))\n",
    ],
)
def test_memory_hog_gets_memory_error(guarded, hog):
    result = guarded.run(hog)
    assert result.status == "failed"
    assert "MemoryError" in result.detail
    assert_healthy(guarded)


def test_huge_output_is_stopped_by_the_file_size_limit(guarded):
    result = guarded.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert result.status == "failed"
    assert_healthy(guarded)


# The bomb: every process forks again up to 8 times (256 at most if nothing stopped it), says
# which pid it is, and sleeps; a refused fork is reported and ends the forking.
FORK_BOMB = """\
import os, time
for _ in range(8):
    try:
        os.fork()
    except OSError as exc:
        print("refused", type(exc).__name__, flush=True)
        break
print("alive", os.getpid(), flush=True)
time.sleep(60)
"""


def run_bomb(sandbox: Sandbox):
    started = time.monotonic()
    result = sandbox.run(FORK_BOMB)
    elapsed = time.monotonic() - started
    pids = [int(p) for p in re.findall(r"alive (\d+)", result.detail)]
    return result, elapsed, pids


def test_fork_bomb_is_contained_by_the_os(unguarded):
    if unguarded.isolation.user != "per-run uid" and os.geteuid() == 0:
        pytest.skip("RLIMIT_NPROC cannot apply: running as root without a sandbox uid")
    result, elapsed, pids = run_bomb(unguarded)
    assert result.status == "timeout"  # the processes that did start sleep until killed
    assert elapsed < LIMITS["timeout"] + 3
    assert "refused BlockingIOError" in result.detail  # EAGAIN from the process limit
    assert 1 <= len(pids) <= LIMITS["max_processes"]
    assert all(gone(pid) for pid in pids)
    assert_healthy(unguarded)


def test_fork_bomb_under_the_guard(guarded):
    result, elapsed, pids = run_bomb(guarded)
    assert result.status in ("failed", "timeout")
    assert "refused PermissionError" in result.detail
    assert all(gone(pid) for pid in pids)


def test_process_that_leaves_the_group_is_still_killed(unguarded):
    program = (
        "import os, time\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.setsid()\n"  # a new session and process group: killpg no longer reaches it
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('escaped', child, flush=True)\n"
    )
    result = unguarded.run(program)
    escaped = int(re.search(r"escaped (\d+)", result.detail).group(1))
    if unguarded.isolation.user != "per-run uid":
        pytest.skip("without a sandbox uid a process that calls setsid cannot be found")
    assert gone(escaped)


def delete_program(sentinel) -> str:
    return (
        "import os\n"
        "errors = []\n"
        f"for attempt in (lambda: os.remove({str(sentinel)!r}),\n"
        f"                lambda: open({str(sentinel)!r}, 'w').write('overwritten')):\n"
        "    try:\n"
        "        attempt()\n"
        "    except OSError as exc:\n"
        "        errors.append(type(exc).__name__)\n"
        "assert not errors, errors\n"
    )


@pytest.mark.parametrize("layer", ["guarded", "unguarded"])
def test_files_outside_the_scratch_directory_survive(request, tmp_path, layer):
    sandbox = request.getfixturevalue(layer)
    if layer == "unguarded" and sandbox.isolation.user != "per-run uid":
        pytest.skip("file protection without the guard needs a sandbox uid (root)")
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("precious")
    result = sandbox.run(delete_program(sentinel))
    assert result.status == "failed"
    assert "PermissionError" in result.detail
    assert sentinel.read_text() == "precious"


def test_scratch_directory_is_writable(guarded):
    program = (
        "import os\n"
        "with open('notes.txt', 'w') as f:\n"
        "    f.write('scratch')\n"
        "assert open(os.path.join(os.getcwd(), 'notes.txt')).read() == 'scratch'\n"
    )
    assert guarded.run(program).status == "passed"


@pytest.mark.parametrize("layer", ["guarded", "unguarded"])
def test_network_connection_fails(request, layer):
    sandbox = request.getfixturevalue(layer)
    if layer == "unguarded" and not sandbox.isolation.network.endswith("netns"):
        pytest.skip("no network namespace on this machine")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.3)
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            f"with socket.create_connection(('127.0.0.1', {port}), timeout=1) as s:\n"
            "    s.sendall(b'escaped')\n"
        )
        result = sandbox.run(program)
        assert result.status == "failed"
        with pytest.raises(TimeoutError):
            server.accept()  # nothing reached the listening socket


def test_isolation_is_reported(guarded):
    isolation = guarded.isolation.as_dict()
    assert set(isolation) == {"python", "python_version", "network", "user", "processes"}
    if os.geteuid() == 0 and hasattr(os, "setresuid"):
        assert isolation["network"] == "netns"
