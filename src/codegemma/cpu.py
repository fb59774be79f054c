"""The CPU this process runs on: its model and feature flags, its cores, and PyTorch's threads.

The one reader of /proc/cpuinfo (elsewhere, `platform` gives what it can). PyTorch's thread
count is process state: `torch_threads` sets it around one piece of work and puts it back.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(prefixes: tuple[str, ...], path: Path = CPUINFO) -> str | None:
    """The first /proc/cpuinfo line starting with one of `prefixes`, or None."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(prefixes):
                return line
    except OSError:
        pass
    return None


def cpu_signature() -> str:
    """The CPU's feature flags line (x86 `flags`, Arm `Features`), else the processor name:
    compiled kernels are cached per signature, so a cache shared between machines never runs
    code built for another CPU."""
    return _cpuinfo_field(("flags", "Features")) or platform.processor()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (`avx2`, `avx512_vnni`, ...); empty where they are unknown."""
    line = _cpuinfo_field(("flags", "Features"))
    return frozenset(line.split(":", 1)[1].split()) if line and ":" in line else frozenset()


def cpu_model() -> str:
    """The CPU's model name (`model name` in /proc/cpuinfo), else what `platform` knows."""
    line = _cpuinfo_field(("model name",))
    if line and ":" in line:
        return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch computes on `count` threads inside the block (the calling thread's setting,
    with OpenMP), and on as many as before after it."""
    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
