"""The sandboxed side of one execution: set up isolation, then run one untrusted program.

`codegemma.evaluation.sandbox` starts this file by path as `python -I -S sandbox_child.py CONFIG`
(CONFIG is JSON), in a new session, with the scratch directory as working directory. It is
never imported by the package and uses only the standard library, so the interpreter that
runs it needs nothing but its own stdlib.

Order matters: the network namespace needs root, so it comes first; the resource limits come
before the switch to an unprivileged user id, which makes RLIMIT_NPROC count (root ignores it)
and denies writes outside the scratch directory; the program is read before that switch.

Passing is proven, not inferred from the exit status: the parent sends a random nonce on
stdin, and only a program that runs to its end without raising gets it written after its
output. A program that calls `sys.exit(0)` or `os._exit(0)` early does not pass.
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SETUP_FAILED = 97  # exit status: the isolation asked for could not be set up

# Modules a HumanEval or MBPP program may import: the probe checks that they still import
# after the switch to the sandbox user (an interpreter under /root, say, would not).
PROBE_IMPORTS = (
    "traceback",
    "math",
    "hashlib",
    "json",
    "re",
    "collections",
    "itertools",
    "heapq",
    "fractions",
    "decimal",
    "statistics",
    "random",
    "string",
    "typing",
    "functools",
    "datetime",
    "bisect",
    "copy",
)


def main() -> None:
    config = json.loads(sys.argv[1])
    nonce = sys.stdin.readline().strip()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the program must not read anything we send
    try:
        source = None if config.get("probe") else _read(config["program"])
        _isolate(config)
    except OSError as exc:
        sys.stderr.write(f"sandbox setup failed: {exc}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    if config.get("probe"):
        _probe()
    if config["guard"]:
        _install_guard()
    _run(source, nonce)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _isolate(config: dict) -> None:
    if config["network"] == "netns":
        _unshare(CLONE_NEWNET)
    elif config["network"] == "userns+netns":
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    limits = config["limits"]
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_CPU, limits["cpu_seconds"], limits["cpu_seconds"] + 1)
    _limit(resource.RLIMIT_AS, limits["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, limits["file_bytes"])
    _limit(resource.RLIMIT_NOFILE, limits["open_files"])
    if limits.get("processes") is not None:
        _limit(resource.RLIMIT_NPROC, limits["processes"])
    uid = config.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError(f"still running as uid {os.geteuid()}, not {uid}")


def _limit(which: int, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(which, (soft, soft if hard is None else hard))


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare({flags:#x}): {os.strerror(errno)}")


def _probe() -> None:
    """Report what this configuration allows, for the parent to decide what to use."""
    report = {"uid": os.getuid(), "version": sys.version.split()[0], "imports": True}
    try:
        for name in PROBE_IMPORTS:
            __import__(name)
    except (ImportError, OSError) as exc:
        report["imports"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report), flush=True)
    os._exit(0)


def _blocked(name: str):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the evaluation sandbox")

    return refuse


def _install_guard() -> None:
    """Disable process, signal, file-removal and network calls at the Python level.

    One layer of several: ctypes can get around it, which is why the resource limits, the
    sandbox user id and the network namespace are set up by the OS first.
    """
    import _posixsubprocess
    import _socket
    import posix

    names = (
        "fork forkpty system popen kill killpg execv execve execl execle execlp execlpe execvp "
        "execvpe spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe posix_spawn "
        "posix_spawnp remove unlink rmdir removedirs rename renames replace truncate chmod "
        "chown lchown fchmod fchown link symlink chroot setuid setgid setreuid setregid "
        "setresuid setresgid setgroups"
    ).split()
    for module in (os, posix):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, _blocked(f"os.{name}"))
    _posixsubprocess.fork_exec = _blocked("subprocess")  # every subprocess API ends here

    class BlockedSocket(_socket.socket):
        __slots__ = ()  # socket.socket adds __weakref__ itself

        def __init__(self, *args, **kwargs):
            raise PermissionError("sockets are disabled in the evaluation sandbox")

    # socket.socket subclasses _socket.socket and calls _socket.socket.__init__ by name.
    _socket.socket = BlockedSocket
    _socket.socketpair = _blocked("socket.socketpair")


def _run(source: str, nonce: str) -> None:
    namespace = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit included: an early exit is not a pass
        import traceback

        # Skip this file's own frame: the traceback starts in the program.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next, limit=8)
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, f"\n{nonce}\n".encode())
    os._exit(0)


if __name__ == "__main__":
    main()
