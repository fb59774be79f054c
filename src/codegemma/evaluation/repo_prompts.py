"""The three prompts of a repo-completion task: no context, retrieved context, oracle file.

All three show the same part of the current file (the whole lines nearest the cursor that fit
`RepoBudget.in_file`, with the file's path), so they differ only in what comes before it:
- "none": nothing;
- "retrieved": chunks of other files of the package chosen by `codegemma.retrieval` (an
  in-memory index of the package; definitions the file uses, then BM25 on the code around the
  cursor; the retriever reads the whole current file, as an editor sends it) within
  `RepoBudget.context` tokens;
- "oracle": the file that defines the name the hidden text uses, from the definition's first
  line on, cut to whole lines within the same budget.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from tqdm import tqdm

from codegemma.evaluation.prompts import fit_around_cursor
from codegemma.evaluation.tasks import Dataset, Task
from codegemma.fim import FimMode, fim_prompt
from codegemma.retrieval.chunking import Chunk, line_text, split_lines
from codegemma.retrieval.context import (
    ContextAssembler,
    ContextOptions,
    context_files,
    default_budget,
    longest_head,
)
from codegemma.retrieval.index import RepoIndex
from codegemma.tokenizer import Tokenizer

SETTINGS = ("none", "retrieved", "oracle")
IN_FILE_MAX = 2048  # in-file tokens at most, however long the model's context
_SLACK = 4  # tokens kept free for line-by-line counts that undercount the whole text


@dataclasses.dataclass(frozen=True)
class RepoBudget:
    """Tokens of each part of the prompt; recorded with the run."""

    in_file: int  # the current file's part: BOS, its path, the sentinels, prefix and suffix
    context: int  # the other files' part: paths, contents, separators

    @classmethod
    def for_model(
        cls, context_length: int, max_new_tokens: int, context: int | None = None
    ) -> RepoBudget:
        """`context` tokens (default: a third of the window, at most 1024) for other files;
        the rest, less the answer's room, for the current file (at most IN_FILE_MAX)."""
        context = default_budget(context_length) if context is None else context
        in_file = min(IN_FILE_MAX, context_length - max_new_tokens - context)
        if in_file < 32 or context < 0:
            raise ValueError(
                f"a context of {context} tokens and {max_new_tokens} new tokens leave "
                f"{in_file} of the model's {context_length} for the current file (need 32)"
            )
        return cls(in_file, context)


@dataclasses.dataclass(frozen=True)
class RepoPrompt:
    """One setting's prompt for one task."""

    setting: str
    text: str
    context_tokens: int  # of the other files' part (0 for "none")
    retrieval_ms: float | None  # "retrieved" only
    shows_name: bool  # the other files shown contain the name the hidden line uses (as defined)
    chunks: tuple[dict, ...]  # the other files' lines shown: {"path", "lines": [first, last]}


class RepoPrompter:
    """Builds the prompts of every setting; indexes each package of the dataset once."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        dataset: Dataset,
        budget: RepoBudget,
        *,
        mode: FimMode = "psm",
        progress: bool = False,
    ) -> None:
        self.tokenizer, self.budget, self.mode = tokenizer, budget, mode
        self.roots = {p["package"]: Path(p["root"]) for p in dataset.source["packages"]}
        options = ContextOptions(budget=budget.context, sticky=False)
        self._assemblers = {}
        for package, root in tqdm(self.roots.items(), desc="indexing", disable=not progress):
            index = RepoIndex(root, within=[package])
            index.update()
            self._assemblers[package] = ContextAssembler(index, self.count, options)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_bos=False))

    def prompts(self, task: Task) -> dict[str, RepoPrompt]:
        """{setting: prompt} for the task."""
        prefix, suffix = self.in_file(task)
        assembler = self._assemblers[task.path.split("/")[0]]
        # The retriever sees the whole file, as an editor sends it; the model sees its part.
        found = assembler.context(task.prompt, task.suffix, task.path)
        chunks = {
            "none": [],
            "retrieved": list(found.chunks),
            "oracle": [self.oracle_chunk(task, assembler)],
        }
        prompts = {}
        for setting in SETTINGS:
            shown = [c for c in chunks[setting] if c is not None]
            files = context_files(shown)
            text = fim_prompt(prefix, suffix, mode=self.mode, files=files, path=task.path)
            prompts[setting] = RepoPrompt(
                setting,
                text,
                sum(assembler.count(f"{p}\n{c}") + 1 for p, c in files),
                found.retrieval_ms if setting == "retrieved" else None,
                _shows(task.cross_file.definition_name, files),
                tuple({"path": c.path, "lines": [c.start + 1, c.end]} for c in shown),
            )
        return prompts

    def in_file(self, task: Task) -> tuple[str, str]:
        """The prefix and suffix shown: whole lines near the cursor, within the budget."""

        def tokens(before: str, after: str) -> int:
            text = fim_prompt(before, after, mode=self.mode, path=task.path)
            return len(self.tokenizer.encode(text))  # BOS included

        room = self.budget.in_file - tokens("", "") - _SLACK
        prefix, suffix = fit_around_cursor(task.prompt, task.suffix, self.count, room)
        while tokens(prefix, suffix) > self.budget.in_file:  # rarely: the counts were short
            if "\n" in prefix:
                prefix = prefix.split("\n", 1)[1]  # the farthest line goes first
            elif suffix:
                lines = suffix.splitlines(keepends=True)
                suffix = "".join(lines[:-1])
            else:
                break  # one line over the budget: the engine will say so
        return prefix, suffix

    def oracle_chunk(self, task: Task, assembler: ContextAssembler) -> Chunk | None:
        """The defining file from the definition on, cut to whole lines within the budget."""
        use = task.cross_file
        root = self.roots[task.path.split("/")[0]]
        lines = split_lines((root / use.definition_path).read_text(encoding="utf-8"))
        text = line_text(lines, use.definition_line, len(lines))
        whole = Chunk(
            use.definition_path, use.definition_line, len(lines), "oracle", use.name, text
        )

        def fits(chunk: Chunk) -> bool:
            return assembler.count(f"{chunk.path}\n{chunk.text}") + 1 <= self.budget.context

        return longest_head(whole, fits)


def _shows(name: str, files: list[tuple[str, str]]) -> bool:
    word = re.compile(rf"\b{re.escape(name)}\b")
    return any(word.search(content) for _, content in files)
