"""Pages of weight memory: handing back file-mapped pages once their data has been copied
elsewhere, and placing large copies on huge pages.

Checkpoints are read through private, read-only-in-practice memory maps; a page read once
stays counted in the process's memory until the map is closed. After a weight has been
converted into new memory, `FileMappings.release` tells the kernel it may drop the source's
pages (`madvise(MADV_DONTNEED)`): they are read again from the file if ever touched, so this
never changes a value. Memory that is not a file mapping (anonymous, heap) is left alone,
since dropping it would zero it. Linux only; elsewhere `release` does nothing.

Weights the engine copies (regrouped quantized weights) are streamed in full for every token;
on 2 MB pages the processor's address translation keeps up with that stream (about 8% faster
decoding measured on int4 weights; 8-20% in later A/B runs). `huge_page_empty` asks for them
where the system allows. The first touch of fresh memory is paid once at load: on the
benchmark machine, a virtual machine, 1-2 s per GB in a new process (2.7 GB: 2.2-5.8 s; 0.16 s
when another process had freed that memory moments before), on huge pages or not.

Weights read in place from a checkpoint's map (bfloat16) get the same from the page cache when
it holds the file in 2 MB pieces: the kernel then maps them 2 MB at a time. `huge_page_hint`
marks a checkpoint's map so that pages it reads from disk come in such pieces (bfloat16
decoding ~5% faster measured; files already cached in small pieces are simply used as they are).
A file just written sits in the cache in the pieces the writes made, often smaller (a quantized
2B checkpoint: a third of it mapped 4 KB at a time); `drop_cached` writes it out and drops it
from the cache, so that its first read brings it back in large pieces.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import torch

_MADV_DONTNEED = 4


def huge_page_hint(mapped: mmap.mmap) -> None:
    """Ask that the file's pages this map reads from disk be cached (and mapped) 2 MB at a time
    (`MADV_HUGEPAGE`); ignored where the system has no such thing."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return
    try:
        mapped.madvise(advice)
    except (OSError, ValueError):
        pass


def drop_cached(path: Path) -> bool:
    """Write `path`'s data to disk and drop its pages from the page cache (the next read
    caches it anew, in large pieces); False where the system offers no such advice."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return False
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # dirty pages would stay cached
        advise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    finally:
        os.close(descriptor)
    return True


class FileMappings:
    """The process's file-backed private mappings, read once at construction."""

    def __init__(self, maps_path: Path = Path("/proc/self/maps")) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._madvise = None
        try:
            lines = maps_path.read_text().splitlines()
        except OSError:
            return  # not Linux: nothing is released
        for line in lines:
            fields = line.split()
            if len(fields) < 6 or not fields[1].endswith("p") or fields[4] == "0":
                continue  # shared, anonymous or pseudo mappings ([heap], [stack], ...)
            start, end = (int(part, 16) for part in fields[0].split("-"))
            self._starts.append(start)
            self._ends.append(end)
        libc_name = ctypes.util.find_library("c")
        if libc_name and self._starts:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            libc.madvise.restype = ctypes.c_int
            self._madvise = libc.madvise

    def is_mapped(self, begin: int, end: int) -> bool:
        """True when the byte range [begin, end) lies inside one file-backed private mapping."""
        index = bisect.bisect_right(self._starts, begin) - 1
        return index >= 0 and end <= self._ends[index]

    def release(self, tensor: torch.Tensor) -> bool:
        """Drop the whole pages spanned by `tensor` if it is a view of a file mapping."""
        if self._madvise is None or tensor.numel() == 0:
            return False
        size = tensor.element_size()
        begin = tensor.data_ptr()
        reach = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride(), strict=True))
        end = begin + (reach + 1) * size
        if not self.is_mapped(begin, end):
            return False
        page = mmap.PAGESIZE
        first, last = -(-begin // page) * page, end // page * page  # whole pages only
        if last <= first:
            return False
        return self._madvise(first, last - first, _MADV_DONTNEED) == 0


def huge_page_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in anonymous memory advised to use huge pages (a plain
    `torch.empty` where the platform has no such advice)."""
    count = 1
    for size in shape:
        count *= size
    nbytes = count * dtype.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or nbytes < _HUGE_PAGE:
        return torch.empty(shape, dtype=dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        memory.madvise(advice)
    except OSError:
        pass  # a kernel without transparent huge pages: ordinary pages
    return torch.frombuffer(memory, dtype=dtype, count=count).view(shape)


_HUGE_PAGE = 2 * 1024 * 1024
