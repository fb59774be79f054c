"""ctypes declarations read from the kernels' C header (csrc/cg_kernels.h), the one place where
C and Python agree: codes, structures and function signatures are written there once.

The reader is small on purpose and expects the header's plain style: `#define NAME number`,
`typedef struct { type name; ... } name;` and one-line prototypes `ret name(type arg, ...);`.
"""

from __future__ import annotations

import ctypes
import functools
import re
from pathlib import Path

HEADER_FILE = Path(__file__).with_name("csrc") / "cg_kernels.h"

_SCALARS = {
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "uint32_t": ctypes.c_uint32,
    "float": ctypes.c_float,
    "void": None,
}
_DEFINE = re.compile(r"^#define\s+(CG_\w+)\s+(\d+)\s*$", re.M)
_STRUCT = re.compile(r"typedef struct \{(.*?)\}\s*(\w+);", re.S)
_PROTOTYPE = re.compile(r"^([\w ]+?\**)\s*(cg_\w+)\((.*)\);\s*$", re.M)
_COMMENT = re.compile(r"/\*.*?\*/", re.S)


class Header:
    """The header's codes (`codes`), structures (`structs`, ctypes classes) and function
    signatures (`functions`: name -> (restype, argtypes))."""

    def __init__(self, text: str) -> None:
        text = _COMMENT.sub("", text)
        self.codes = {name: int(value) for name, value in _DEFINE.findall(text)}
        self.structs: dict[str, type[ctypes.Structure]] = {}
        for body, name in _STRUCT.findall(text):
            fields = [self._field(line) for line in body.split(";") if line.strip()]
            self.structs[name] = type(name, (ctypes.Structure,), {"_fields_": fields})
        self.functions = {
            name: (self._type(ret), [self._type(_arg_type(a)) for a in _args(args)])
            for ret, name, args in _PROTOTYPE.findall(text)
        }

    def bind(self, lib: ctypes.CDLL) -> ctypes.CDLL:
        """Set every declared function's restype and argtypes on the loaded library."""
        for name, (restype, argtypes) in self.functions.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        return lib

    def _field(self, declaration: str) -> tuple[str, type]:
        kind, name = declaration.strip().rsplit(None, 1)
        pointer = name.startswith("*") or kind.endswith("*")
        return name.lstrip("*"), self._type(kind + ("*" if pointer else ""))

    def _type(self, spelled: str):
        spelled = spelled.replace("const ", "").strip()
        if spelled == "char *":
            return ctypes.c_char_p
        if spelled.endswith("*"):
            return ctypes.c_void_p  # data pointers, structures passed by pointer, the pool
        if spelled in _SCALARS:
            return _SCALARS[spelled]
        if spelled in self.structs:
            return self.structs[spelled]
        if spelled == "cg_task":
            return ctypes.c_void_p
        raise ValueError(f"cg_kernels.h: no ctypes type for {spelled!r}")


def _args(text: str) -> list[str]:
    return [] if text.strip() in ("", "void") else [a.strip() for a in text.split(",")]


def _arg_type(argument: str) -> str:
    """`const float *x` -> `float *`; `int64_t M` -> `int64_t`."""
    kind, name = argument.rsplit(None, 1)
    stars = len(name) - len(name.lstrip("*"))
    kind = kind.replace("const ", "").strip()
    return kind + " " + "*" * stars if stars else kind


def read_header(path: Path = HEADER_FILE) -> Header:
    return Header(path.read_text())


@functools.cache
def kernel_header() -> Header:
    """The installed header, read once (on first use, not at import)."""
    return read_header()
