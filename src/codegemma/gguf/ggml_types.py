"""ggml's tensor types: ids as stored in GGUF files, and the size of their blocks."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GGMLType:
    """A ggml tensor type: `block_size` values are stored in `type_size` bytes."""

    name: str
    id: int
    block_size: int
    type_size: int


# Every type id ggml has assigned, so that sizes can be checked and errors can name the type
# even for types the loader does not run. (Q8_1 is ggml's 36-byte block; it never appears in
# files, and gguf-py's table still lists an older 40-byte layout.)
GGML_TYPES: dict[int, GGMLType] = {
    t.id: t
    for t in (
        GGMLType("F32", 0, 1, 4),
        GGMLType("F16", 1, 1, 2),
        GGMLType("Q4_0", 2, 32, 18),
        GGMLType("Q4_1", 3, 32, 20),
        GGMLType("Q5_0", 6, 32, 22),
        GGMLType("Q5_1", 7, 32, 24),
        GGMLType("Q8_0", 8, 32, 34),
        GGMLType("Q8_1", 9, 32, 36),
        GGMLType("Q2_K", 10, 256, 84),
        GGMLType("Q3_K", 11, 256, 110),
        GGMLType("Q4_K", 12, 256, 144),
        GGMLType("Q5_K", 13, 256, 176),
        GGMLType("Q6_K", 14, 256, 210),
        GGMLType("Q8_K", 15, 256, 292),
        GGMLType("IQ2_XXS", 16, 256, 66),
        GGMLType("IQ2_XS", 17, 256, 74),
        GGMLType("IQ3_XXS", 18, 256, 98),
        GGMLType("IQ1_S", 19, 256, 50),
        GGMLType("IQ4_NL", 20, 32, 18),
        GGMLType("IQ3_S", 21, 256, 110),
        GGMLType("IQ2_S", 22, 256, 82),
        GGMLType("IQ4_XS", 23, 256, 136),
        GGMLType("I8", 24, 1, 1),
        GGMLType("I16", 25, 1, 2),
        GGMLType("I32", 26, 1, 4),
        GGMLType("I64", 27, 1, 8),
        GGMLType("F64", 28, 1, 8),
        GGMLType("IQ1_M", 29, 256, 56),
        GGMLType("BF16", 30, 1, 2),
        GGMLType("TQ1_0", 34, 256, 54),
        GGMLType("TQ2_0", 35, 256, 66),
        GGMLType("MXFP4", 39, 32, 17),
        GGMLType("NVFP4", 40, 64, 36),
        GGMLType("Q1_0", 41, 128, 18),
    )
}
TYPES_BY_NAME: dict[str, GGMLType] = {t.name: t for t in GGML_TYPES.values()}
