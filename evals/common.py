"""What several suites share: the rows of a split, greedy answers, the accepted answers of a row, and how an
answer is judged (right, refused, empty) under a suite's ``match`` rule."""

from __future__ import annotations

from datasets import DatasetDict

from posttrain.core.errors import UsageError
from posttrain.core.phrases import ANSWER_STOP
from posttrain.evals import metrics

FREQUENT = 8  # "frequently seen": a fact voiced at least this many times in the pretraining corpus


def first_rows(dd: DatasetDict, splits: list[str], limit: int | None = None) -> dict:
    """Split -> its first ``limit`` rows (all rows without a limit)."""
    return {s: dd[s] if limit is None else dd[s].select(range(min(limit, len(dd[s])))) for s in splits}


def greedy_answers(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, max_tokens: int = 24,
                   stop=ANSWER_STOP) -> dict:
    """Split -> (its first ``limit`` rows, the greedy answer to each, cut at ``stop``); all splits' prompts in one
    engine call."""
    rows = first_rows(dd, splits, limit)
    prompts = [p for s in splits for p in rows[s]["prompt"]]
    answers = iter(engine.generate(prompts, n=1, temperature=0.0, max_tokens=max_tokens, stop=stop))
    return {s: (rows[s], [next(answers)[0] for _ in range(len(rows[s]))]) for s in splits}


def golds(ds) -> list[list[str]]:
    """Per row, the answers that count as right: the completion, and the ``answer`` column and the ``aliases`` list
    where the split has them (real facts have several names: "Washington" / "Washington, D.C.")."""
    extra = [ds[c] for c in ("answer", "aliases") if c in ds.column_names]
    out = []
    for i, completion in enumerate(ds["completion"]):
        row = [completion]
        for column in extra:
            value = column[i]
            row += [str(v) for v in value] if isinstance(value, list) else [] if value is None else [str(value)]
        out.append(list(dict.fromkeys(row)))
    return out


def judged(answers: list[str], gold: list[list[str]], match: str, refusals) -> dict[str, list[bool]]:
    """Per answer: ``correct`` (``answers.is_correct`` under ``match``), ``refused`` (the one refusal matcher over
    ``refusals``: templates and phrases, by default the testbed's and free-form hedges), ``empty`` (nothing generated: neither right nor a
    hallucination; an instruct model read without its template ends its turn at once)."""
    return {"correct": [metrics.is_correct(a, g, match) for a, g in zip(answers, gold)],
            "refused": [metrics.is_refusal(a, refusals) for a in answers],
            "empty": [not a.strip() for a in answers]}


def check_match(match: str) -> None:
    if match not in metrics.MATCH_RULES:
        raise UsageError(f"unknown --match {match!r}; known: {', '.join(metrics.MATCH_RULES)}")
