"""Fill-in-the-middle prompts in CodeGemma's format, and putting the answer back into the file."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FILE_SEPARATOR = "<|file_separator|>"
EOS = "<eos>"
END_OF_TURN = "<end_of_turn>"

# The model ends a middle with one of these; everything from the first one on is discarded.
FIM_STOP_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEPARATOR, EOS, END_OF_TURN)

FimMode = Literal["psm", "spm"]
# The documented default order: suffix first, so text typed at the cursor only extends the end
# of the prompt and a cached prefix stays valid (in PSM order every keystroke changes the
# tokens right after the cursor, and the whole suffix is computed again). CodeGemma was
# trained on both orders.
DEFAULT_FIM_MODE: FimMode = "spm"


@dataclasses.dataclass(frozen=True)
class ContextFile:
    """Another file shown to the model before the one being completed."""

    path: str
    content: str


def fim_prompt(
    prefix: str,
    suffix: str = "",
    *,
    mode: FimMode = DEFAULT_FIM_MODE,
    files: Sequence[ContextFile | tuple[str, str]] | None = None,
    path: str | None = None,
) -> str:
    """The exact prompt text for completing between `prefix` and `suffix`.

    PSM: `<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>` (no added whitespace).
    SPM: `<|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>`, so text typed at the
    cursor only extends the end of the prompt. With `files`, each context file comes first as
    `{path}\\n{content}`, joined with `<|file_separator|>`; the current file comes last, after
    its own `{path}\\n` when `path` is given.
    """
    if mode == "psm":
        body = f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"
    elif mode == "spm":
        body = f"{FIM_SUFFIX}{suffix}{FIM_PREFIX}{prefix}{FIM_MIDDLE}"
    else:
        raise ValueError(f"FIM mode must be 'psm' or 'spm', got {mode!r}")
    if path is not None:
        body = f"{path}\n{body}"
    if not files:
        return body
    parts = [as_context_file(f) for f in files]
    return FILE_SEPARATOR.join([f"{f.path}\n{f.content}" for f in parts] + [body])


def as_context_file(item: ContextFile | tuple[str, str]) -> ContextFile:
    """A context file given as ContextFile or as a (path, content) pair."""
    if isinstance(item, ContextFile):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return ContextFile(*item)
    raise ValueError(
        f"a context file must be ContextFile(path, content) or (path, content): {item!r}"
    )


def cut_at_stop(generated: str, stops: Sequence[str] = FIM_STOP_TOKENS) -> str:
    """The middle text of a raw generation: everything before the first stop token."""
    cut = min((i for i in (generated.find(s) for s in stops) if i >= 0), default=len(generated))
    return generated[:cut]


def reassemble(prefix: str, middle: str, suffix: str) -> str:
    """The completed file: prefix, then the (sentinel-free) middle, then suffix."""
    return prefix + cut_at_stop(middle) + suffix
