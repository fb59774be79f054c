"""Scores of a completed line against the hidden one: exact match and edit similarity.

Both compare the first line of the answer with the reference's, whitespace at either end
ignored (as CrossCodeEval's code-match scores strip lines; its edit similarity is this
Levenshtein ratio), so indentation, which a model gets right most of the time, does not pad
the similarity.
"""

from __future__ import annotations


def first_line(text: str) -> str:
    """The text up to its first newline, whitespace at either end dropped."""
    return text.split("\n", 1)[0].strip()


def exact_match(answer: str, reference: str) -> bool:
    """Whether the answer's first line is the reference's."""
    return first_line(answer) == first_line(reference)


def edit_similarity(answer: str, reference: str) -> float:
    """1 - Levenshtein distance / length of the longer, over the first lines; 1.0 when equal."""
    a, b = first_line(answer), first_line(reference)
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def levenshtein(a: str, b: str) -> int:
    """Fewest single-character insertions, deletions and substitutions turning a into b."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))  # distances from a[:i] to every b[:j]
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
            )
        previous = current
    return previous[-1]
