"""Run untrusted programs (model output plus tests), each isolated and cleaned up after.

Each program runs in `sandbox_child.py` under a fresh interpreter, in its own session and
process group, with its own scratch directory and these layers, strongest available first:

- resource limits: CPU seconds, address space, file size, open files, and (see below) processes;
- as root: a fresh unprivileged user id per run, so RLIMIT_NPROC is enforced (root ignores it),
  files outside the scratch directory cannot be written or removed, and every process of the
  run, even one that left the process group, can be found and killed;
- no network: a new network namespace (as root, or in a new user namespace where unprivileged
  ones are allowed);
- a Python-level guard that disables process, signal, file-removal and socket calls.

The parent enforces a wall-clock timeout and then kills the session, the process group and
every process of the run's user id. `Isolation` records which layers this machine allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")
SETUP_FAILED = 97  # sandbox_child's exit status when isolation could not be set up
_UID_BASE = 1_000_000_000  # far above any real account; a run's uid is unique to it
_TAIL_BYTES = 2000  # how much of a program's output is kept in its result


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one program may use."""

    timeout: float = 10.0  # wall-clock seconds before the whole run is killed
    cpu_seconds: int = 10  # RLIMIT_CPU (SIGXCPU, then SIGKILL a second later)
    memory_mb: int = 2048  # RLIMIT_AS: address space of each process
    max_processes: int = 32  # RLIMIT_NPROC: processes and threads of the run's user
    max_file_mb: int = 16  # RLIMIT_FSIZE: largest file it may write (its output included)
    open_files: int = 128  # RLIMIT_NOFILE
    python_guard: bool = True  # also disable dangerous calls at the Python level

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.cpu_seconds < 1 or self.memory_mb < 64:
            raise ValueError(f"sandbox limits too small to run Python: {self}")
        if self.max_processes < 1 or self.max_file_mb < 1 or self.open_files < 16:
            raise ValueError(f"sandbox limits too small to run Python: {self}")


@dataclasses.dataclass(frozen=True)
class Isolation:
    """The OS-level measures this machine allows; found once by probing."""

    python: str  # interpreter that runs the programs
    python_version: str
    network: str  # "netns", "userns+netns", or "python-guard" (sockets blocked in Python only)
    user: str  # "per-run uid" (root drops to a fresh uid) or "caller" (runs as us)
    processes: str  # how RLIMIT_NPROC applies

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Execution:
    """How one program ended."""

    status: str  # "passed", "failed", "timeout", or "error" (the sandbox could not start it)
    detail: str  # the end of its output, or why it was stopped
    seconds: float


class Sandbox:
    """Runs programs under `limits`; thread-safe, so a pool of threads can share one."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._root = Path(tempfile.mkdtemp(prefix="codegemma-sandbox-"))
        self._root.chmod(0o711)  # a sandbox uid may enter its own directory, not list others
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._live: dict[int, int | None] = {}  # session id -> uid, of runs in progress
        self._closed = False
        self.isolation = self._detect()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, program: str) -> Execution:
        """Run `program` (Python source); it passes if it ends without raising."""
        run_id = next(self._ids)
        uid = self._uid(run_id) if self.isolation.user == "per-run uid" else None
        scratch = self._root / f"run{run_id}"
        scratch.mkdir(mode=0o700)
        try:
            (scratch / "program.py").write_text(program, encoding="utf-8")
            if uid is not None:
                os.chown(scratch, uid, uid)
            program_path = str(scratch / "program.py")
            config = self._config(uid, program_path, self.isolation.python, self.isolation.network)
            started = time.monotonic()
            outcome = self._spawn(config, scratch)
            seconds = time.monotonic() - started
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return _classify(outcome, self.limits, seconds)

    def close(self) -> None:
        """Kill anything still running and remove the scratch directories."""
        with self._lock:
            self._closed = True
            live = list(self._live.items())
        for session, uid in live:
            kill_run(session, uid)
        shutil.rmtree(self._root, ignore_errors=True)

    # --- internals -------------------------------------------------------------------------

    def _spawn(self, config: dict, scratch: Path) -> _Outcome:
        nonce = secrets.token_hex(16)
        with open(scratch / "output.txt", "w+b") as output:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the sandbox is closed")
                proc = subprocess.Popen(
                    [config["python"], "-I", "-S", str(CHILD), json.dumps(config)],
                    stdin=subprocess.PIPE,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=scratch,
                    env=_environment(scratch),
                    start_new_session=True,
                    close_fds=True,
                )
                self._live[proc.pid] = config["uid"]
            timed_out = False
            try:
                _send(proc, nonce)
                proc.wait(timeout=self.limits.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                kill_run(proc.pid, config["uid"])
                proc.wait()
                with self._lock:
                    self._live.pop(proc.pid, None)
            size = output.seek(0, os.SEEK_END)
            output.seek(max(0, size - _TAIL_BYTES))
            tail = output.read()
        marker = f"\n{nonce}\n".encode()
        passed = proc.returncode == 0 and tail.endswith(marker) and not timed_out
        if passed:
            tail = tail[: -len(marker)]
        return _Outcome(proc.returncode, timed_out, passed, tail.decode("utf-8", "replace"))

    def _config(self, uid: int | None, program: str | None, python: str, network: str) -> dict:
        limits = self.limits
        return {
            "python": python,
            "network": network,
            "uid": uid,
            "guard": limits.python_guard,
            "program": program,
            "limits": {
                "cpu_seconds": limits.cpu_seconds,
                "memory_bytes": limits.memory_mb << 20,
                "file_bytes": limits.max_file_mb << 20,
                "open_files": limits.open_files,
                "processes": _process_limit(limits.max_processes, uid),
            },
        }

    def _uid(self, run_id: int) -> int:
        # Unique among the live runs of every harness process: both numbers fit.
        return _UID_BASE + (os.getpid() % (1 << 20)) * 2048 + run_id % 2048

    def _probe(self, python: str, network: str, with_uid: bool) -> dict | None:
        """Run sandbox_child in probe mode; its report, or None when the setup failed."""
        run_id = next(self._ids)
        uid = self._uid(run_id) if with_uid else None
        scratch = self._root / f"probe{run_id}"
        scratch.mkdir(mode=0o700)
        try:
            if uid is not None:
                os.chown(scratch, uid, uid)
            config = self._config(uid, None, python, network)
            config["probe"] = True
            outcome = self._spawn(config, scratch)
        except OSError:
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if outcome.returncode != 0 or outcome.timed_out:
            return None
        try:
            report = json.loads(outcome.tail.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None
        return report if report.get("imports") is True else None

    def _detect(self) -> Isolation:
        root = os.geteuid() == 0
        python = sys.executable
        network = "netns" if root else "userns+netns"
        report = self._probe(python, network, with_uid=False)
        if report is None:
            network = "python-guard"
            report = self._probe(python, network, with_uid=False)
            if report is None:
                raise RuntimeError(f"cannot run programs with {python} in the sandbox")
        user = "caller"
        if root:
            for candidate in _interpreters():
                found = self._probe(candidate, network, with_uid=True)
                if found is not None:
                    python, user, report = candidate, "per-run uid", found
                    break
        if user == "per-run uid":
            processes = "RLIMIT_NPROC per run (own uid)"
        elif root:
            processes = "not enforced (root ignores RLIMIT_NPROC); the run is killed at timeout"
        else:
            processes = "RLIMIT_NPROC on the caller's uid (its current count + the limit)"
        return Isolation(python, report["version"], network, user, processes)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    returncode: int
    timed_out: bool
    passed: bool  # ran to the end: exit 0 and the nonce written after its output
    tail: str  # the end of its output (stdout and stderr together)


def _send(proc: subprocess.Popen, nonce: str) -> None:
    try:
        proc.stdin.write(f"{nonce}\n".encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it died before reading; the exit status tells why


def _environment(scratch: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
    }


def _interpreters() -> list[str]:
    """Python interpreters to try for the sandbox user: ours first, then the system's."""
    found: list[str] = []
    seen: set[str] = set()
    for path in (
        sys.executable,
        getattr(sys, "_base_executable", None),
        "/usr/bin/python3",
        "/usr/local/bin/python3",
        "/bin/python3",
    ):
        if path and os.path.exists(path) and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            found.append(path)
    return found


def _process_limit(limit: int, uid: int | None) -> int | None:
    if uid is not None:
        return limit  # a fresh uid: the count starts at this run's first process
    if os.geteuid() == 0:
        return None  # the kernel does not apply RLIMIT_NPROC to root
    return _tasks_of(os.getuid()) + limit  # the count covers all of our own processes


def _tasks_of(uid: int) -> int:
    count = 0
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
    return count


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except FileNotFoundError:
        return []  # no procfs: only the process group can be killed


def _members(session: int, uid: int | None) -> list[int]:
    """Live processes of a run: in its session, or (when it has one) owned by its uid."""
    members = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            owner = os.stat(f"/proc/{pid}").st_uid
        except (OSError, IndexError):
            continue
        state, sid = fields[0], int(fields[4])
        if state != b"Z" and (sid == session or (uid is not None and owner == uid)):
            members.append(pid)
    return members


def kill_run(session: int, uid: int | None) -> None:
    """SIGKILL every process of a run until none is left (a fork bomb included)."""
    try:
        os.killpg(session, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(200):
        members = [pid for pid in _members(session, uid) if pid != os.getpid()]
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)


_SIGNALS = {
    signal.SIGXCPU: "CPU time limit",
    signal.SIGKILL: "killed",
    signal.SIGXFSZ: "file size limit",
    signal.SIGSEGV: "segmentation fault",
}


def _classify(outcome: _Outcome, limits: Limits, seconds: float) -> Execution:
    if outcome.passed:
        return Execution("passed", outcome.tail[-1000:], seconds)
    if outcome.timed_out:
        detail = f"timed out after {limits.timeout:g} s; output: {outcome.tail[-900:]}"
        return Execution("timeout", detail, seconds)
    if outcome.returncode == SETUP_FAILED:
        return Execution("error", outcome.tail[-1000:], seconds)
    if outcome.returncode < 0:
        sig = signal.Signals(-outcome.returncode)
        why = _SIGNALS.get(sig, "signal")
        return Execution("failed", f"{sig.name} ({why}) {outcome.tail[-900:]}".strip(), seconds)
    return Execution("failed", outcome.tail[-1000:], seconds)
