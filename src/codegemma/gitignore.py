"""Git's ignore rules (`.gitignore` at any depth, `.git/info/exclude`), read without git.

Covered: comments, blank lines, `!` negation, a trailing `/` for directories only, patterns
anchored by a `/` in them, `*`, `?`, `[...]` and `**`. The last matching rule wins, rules of a
deeper `.gitignore` come after those of its parents, and nothing inside an ignored directory is
looked at (git cannot re-include it either).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Rule:
    """One pattern line of an ignore file, compiled."""

    base: str  # directory of the ignore file, relative to the root ("" at the root)
    regex: re.Pattern[str]  # matches a path relative to `base`
    negated: bool  # "!pattern": re-include
    dir_only: bool  # "pattern/": directories only


def parse_rules(text: str, base: str = "") -> list[Rule]:
    """The rules in the text of one ignore file located in directory `base`."""
    rules = []
    for raw in text.splitlines():
        line = _strip_trailing_spaces(raw)
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        elif line.startswith("\\"):  # "\#x" or "\!x": a literal first character
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        body = _glob_to_regex(line)
        regex = re.compile(body if anchored else f"(?:.*/)?{body}")
        rules.append(Rule(base, regex, negated, dir_only))
    return rules


class IgnoreRules:
    """The ignore rules that apply inside one repository directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        exclude = root / ".git" / "info" / "exclude"
        self._root_rules = parse_rules(_read(exclude)) if exclude.is_file() else []
        self._by_file: dict[Path, list[Rule]] = {}

    def ignored(self, path: Path, *, is_dir: bool) -> bool:
        """Whether git would ignore `path` (its parent directories are known not ignored)."""
        rel = path.relative_to(self.root).as_posix()
        verdict = False
        for rule in self._rules_for(path.parent):
            if rule.dir_only and not is_dir:
                continue
            local = rel[len(rule.base) + 1 :] if rule.base else rel
            if rule.regex.fullmatch(local):
                verdict = not rule.negated
        return verdict

    def _rules_for(self, directory: Path) -> list[Rule]:
        """Rules of every `.gitignore` from the root down to `directory`, in that order."""
        rules = list(self._root_rules)
        rel = directory.relative_to(self.root)
        current = self.root
        chain = [current] + [current.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts))]
        for folder in chain:
            rules.extend(self._file_rules(folder / ".gitignore"))
        return rules

    def _file_rules(self, file: Path) -> list[Rule]:
        if file not in self._by_file:
            base = file.parent.relative_to(self.root).as_posix()
            text = _read(file) if file.is_file() else ""
            self._by_file[file] = parse_rules(text, "" if base == "." else base)
        return self._by_file[file]


def _read(file: Path) -> str:
    return file.read_text(encoding="utf-8", errors="replace")


def _strip_trailing_spaces(line: str) -> str:
    stripped = line.rstrip(" ")
    if stripped.endswith("\\") and len(stripped) < len(line):
        return stripped[:-1] + " "  # "a\ " keeps one escaped space
    return stripped


def _glob_to_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape("["))
                i += 1
                continue
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)
