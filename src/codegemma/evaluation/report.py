"""Summaries of finished runs, next to the figures Google published for the same model."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from codegemma.evaluation.pass_at_k import mean_pass_at_k
from codegemma.evaluation.tasks import Task

# pass@1 in percent from the CodeGemma model card, by checkpoint and task.
MODEL_CARD: dict[str, dict[str, float]] = {
    "codegemma-2b": {
        "humaneval": 31.1,
        "mbpp": 43.6,
        "humaneval-infill-single": 78.41,
        "humaneval-infill-multi": 51.44,
    },
    "codegemma-1.1-2b": {
        "humaneval": 37.8,
        "mbpp": 49.2,
        "humaneval-infill-single": 79.3,
        "humaneval-infill-multi": 51.0,
    },
    "codegemma-7b": {
        "humaneval": 44.5,
        "mbpp": 56.2,
        "humaneval-infill-single": 76.09,
        "humaneval-infill-multi": 58.44,
    },
    "codegemma-7b-it": {
        "humaneval": 56.1,
        "mbpp": 54.2,
        "humaneval-infill-single": 68.25,
        "humaneval-infill-multi": 20.05,
    },
    "codegemma-1.1-7b-it": {
        "humaneval": 60.4,
        "mbpp": 55.6,
        "humaneval-infill-single": 77.4,
        "humaneval-infill-multi": 23.7,
    },
}


def match_model(name: str | None) -> str | None:
    """The model card entry a model name or path refers to, if any."""
    if not name:
        return None
    text = name.lower().replace("_", "-")
    # Longest first, so "codegemma-7b-it" is not taken for "codegemma-7b".
    for key in sorted(MODEL_CARD, key=len, reverse=True):
        if key in text:
            return key
    return None


def summarize(
    settings: dict,
    tasks: Sequence[Task],
    records: Sequence[dict],
    ks: Sequence[int],
    wall_seconds: float,
    *,
    resumed: int = 0,
) -> dict:
    """pass@k, outcome counts and generation speed of the run over `tasks`."""
    samples = settings["samples"]
    wanted = {t.task_id for t in tasks}
    latest = {
        (r["task_id"], r["sample"]): r
        for r in records
        if r["task_id"] in wanted and r["sample"] < samples
    }
    runs = list(latest.values())
    per_task: dict[str, list[bool]] = collections.defaultdict(list)
    for r in runs:
        per_task[r["task_id"]].append(r["passed"])
    complete = [(len(v), sum(v)) for t, v in per_task.items() if len(v) == samples]
    scores = mean_pass_at_k(complete, ks)
    tokens = sum(r["completion_tokens"] for r in runs)
    seconds = sum(r["generation_seconds"] for r in runs)
    model = settings.get("model") or {}
    card_key = None if settings.get("oracle") else match_model(model.get("name"))
    return {
        "task": settings["task"],
        "model": model.get("name"),
        "oracle": bool(settings.get("oracle")),
        "tasks": len(tasks),
        "samples_per_task": samples,
        "complete_tasks": len(complete),
        "pass_at_k": {f"pass@{k}": round(100 * v, 2) for k, v in scores.items()},
        "outcomes": dict(collections.Counter(r["status"] for r in runs)),
        "model_card": (
            {"model": card_key, "pass@1": MODEL_CARD[card_key].get(settings["task"])}
            if card_key
            else None
        ),
        "generation": {
            "prompt_tokens": sum(r["prompt_tokens"] for r in runs),
            "completion_tokens": tokens,
            "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 2) if tokens and seconds else None,
        },
        "execution_seconds": round(sum(r["exec_seconds"] for r in runs), 3),
        "wall_seconds": round(wall_seconds, 3),  # of this invocation
        "resumed_samples": resumed,  # samples already done when this invocation started
    }


def format_report(summary: dict) -> str:
    """A short table for the terminal: our pass@k beside the model card's pass@1."""
    card = summary["model_card"]
    card_name = card["model"] if card else "n/a"
    source = "oracle (canonical solutions)" if summary["oracle"] else summary["model"]
    lines = [
        f"{summary['task']}: {summary['complete_tasks']}/{summary['tasks']} tasks x "
        f"{summary['samples_per_task']} samples, {source}",
        f"{'metric':<10}{'this run':>10}   model card ({card_name})",
    ]
    for metric, value in summary["pass_at_k"].items():
        published = card["pass@1"] if card and metric == "pass@1" else None
        shown = "n/a" if published is None else f"{published:g}"
        lines.append(f"{metric:<10}{value:>10.2f}   {shown}")
    outcomes = summary["outcomes"]
    lines.append("outcomes: " + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())))
    if outcomes.get("error"):
        lines.append(
            f"warning: {outcomes['error']} samples could not be started in the sandbox "
            "(status 'error' in samples.jsonl); they count as failures"
        )
    gen = summary["generation"]
    if gen["completion_tokens"]:
        lines.append(
            f"generation: {gen['completion_tokens']} tokens in {gen['seconds']:.1f} s "
            f"({gen['tokens_per_second']:.1f} tokens/s)"
        )
    lines.append(
        f"wall time: {summary['wall_seconds']:.1f} s "
        f"(execution {summary['execution_seconds']:.1f} s of sandbox time)"
    )
    return "\n".join(lines)


def summarize_repo(
    settings: dict, tasks: int, records: Sequence[dict], wall_seconds: float, *, resumed: int = 0
) -> dict:
    """Exact match and edit similarity (percent) per context setting of a repo-completion run,
    with context sizes and retrieval times."""
    by_setting: dict[str, list[dict]] = collections.defaultdict(list)
    for r in {r["task_id"]: r for r in records}.values():  # the latest of each
        by_setting[r["setting"]].append(r)
    table = {}
    for setting in settings["settings"]:
        rows = by_setting.get(setting, [])
        n = max(1, len(rows))
        retrieval = sorted(r["retrieval_ms"] for r in rows if r["retrieval_ms"] is not None)
        table[setting] = {
            "tasks": len(rows),
            "exact_match": round(100 * sum(r["exact_match"] for r in rows) / n, 2),
            "edit_similarity": round(100 * sum(r["edit_similarity"] for r in rows) / n, 2),
            "shows_name": round(100 * sum(r["shows_name"] for r in rows) / n, 2),
            "context_tokens": round(sum(r["context_tokens"] for r in rows) / n, 1),
            "prompt_tokens": round(sum(r["prompt_tokens"] for r in rows) / n, 1),
            "finish_reasons": dict(collections.Counter(r["finish_reason"] for r in rows)),
            "retrieval_ms": _spread(retrieval) if retrieval else None,
            "vs_none": _paired(rows, by_setting.get("none", [])) if setting != "none" else None,
        }
    return {
        "task": settings["task"],
        "model": (settings.get("model") or {}).get("name"),
        "tasks": tasks,
        "data": [f"{p['package']} {p['version']}" for p in settings["data"]["packages"]],
        "budget": settings.get("prompt", {}).get("budget"),
        "settings": table,
        "generation_seconds": round(sum(r["generation_seconds"] for r in records), 3),
        "wall_seconds": round(wall_seconds, 3),  # of this invocation
        "resumed_samples": resumed,
    }


def _paired(rows: Sequence[dict], base: Sequence[dict]) -> dict | None:
    """The setting minus no context, task by task (percentage points): mean differences and a
    95% interval of the edit-similarity one (normal approximation over tasks)."""
    before = {r["task_id"].rsplit("@", 1)[0]: r for r in base}
    pairs = [(r, before[key]) for r in rows if (key := r["task_id"].rsplit("@", 1)[0]) in before]
    if len(pairs) < 2:
        return None
    diffs = [100 * (a["edit_similarity"] - b["edit_similarity"]) for a, b in pairs]
    matches = sum(a["exact_match"] - b["exact_match"] for a, b in pairs)
    mean = sum(diffs) / len(diffs)
    spread = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    half = 1.96 * spread / len(diffs) ** 0.5
    return {
        "tasks": len(pairs),
        "exact_match": round(100 * matches / len(pairs), 2),
        "edit_similarity": round(mean, 2),
        "edit_similarity_ci95": [round(mean - half, 2), round(mean + half, 2)],
        "better": sum(d > 0 for d in diffs),  # tasks whose similarity rose
        "worse": sum(d < 0 for d in diffs),
    }


def _spread(values: Sequence[float]) -> dict:
    """Mean, median, 95th percentile and maximum of sorted `values`."""

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "mean": round(sum(values) / len(values), 3),
        "p50": round(pick(0.5), 3),
        "p95": round(pick(0.95), 3),
        "max": round(values[-1], 3),
    }


def format_repo_report(summary: dict) -> str:
    """A short table for the terminal: one row per context setting."""
    budget = summary.get("budget") or {}
    lines = [
        f"{summary['task']}: {summary['tasks']} tasks from {', '.join(summary['data'])}, "
        f"{summary['model'] or 'default model'}; budget: current file "
        f"{budget.get('in_file', '?')}, other files {budget.get('context', '?')} tokens",
        f"{'setting':<11}{'tasks':>6}{'EM %':>8}{'ES %':>8}{'name shown %':>14}"
        f"{'context tok':>13}{'retrieval ms':>22}",
    ]
    for setting, row in summary["settings"].items():
        ms = row["retrieval_ms"]
        shown = f"{ms['mean']:.1f} (p95 {ms['p95']:.1f})" if ms else "-"
        lines.append(
            f"{setting:<11}{row['tasks']:>6}{row['exact_match']:>8.2f}"
            f"{row['edit_similarity']:>8.2f}{row['shows_name']:>14.2f}"
            f"{row['context_tokens']:>13.1f}{shown:>22}"
        )
    for setting, row in summary["settings"].items():
        paired = row.get("vs_none")
        if paired:
            low, high = paired["edit_similarity_ci95"]
            lines.append(
                f"{setting} - none: ES {paired['edit_similarity']:+.2f} points (95% interval "
                f"{low:+.2f} to {high:+.2f}; {paired['better']} tasks up, {paired['worse']} "
                f"down), EM {paired['exact_match']:+.2f}"
            )
    lines.append(
        "name shown: the other files in the prompt contain the name the hidden line uses; "
        f"wall time: {summary['wall_seconds']:.1f} s"
    )
    return "\n".join(lines)
