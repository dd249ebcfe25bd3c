"""The ``qa`` suite: greedy answers to each split's questions; exact match and refusal rate per split, and
accuracy by exposure count (how often the fact occurs in the pretraining corpus)."""

from __future__ import annotations

from datasets import DatasetDict

from posttrain.data_gen.kg import ANSWER_STOP
from posttrain.evals import metrics

VERSION = 2  # 2: answers cut by the engine at stop sequences (1: at the first ".")
COLUMNS = ("prompt", "completion")
GENERATION = {"n": 1, "temperature": 0.0}
HIGHER_IS_BETTER = {"exact_match": True, "frequent_exact_match": True, "refusal_rate": None}
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


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, max_tokens: int = 24,
             stop=ANSWER_STOP, frequent: int = FREQUENT,
             refusals=metrics.DEFAULT_REFUSALS) -> tuple[dict, list[dict]]:
    """Results per split (``n``, ``exact_match``, ``refusal_rate``, and where the split has an ``exposure`` column
    ``by_exposure`` and ``frequent_exact_match`` over facts with exposure >= ``frequent``), each mean with its
    ``_stderr``, and one sample per question. All splits' prompts go to the engine in one call."""
    results, samples = {}, []
    for s, (ds, preds) in greedy_answers(engine, dd, splits, limit, max_tokens, stop).items():
        correct = [metrics.exact_match(p, g) for p, g in zip(preds, ds["completion"])]
        refused = [metrics.is_refusal(p, refusals) for p in preds]
        r = {"n": len(ds), **metrics.mean_with_stderr("exact_match", correct),
             **metrics.mean_with_stderr("refusal_rate", refused)}
        if "exposure" in ds.column_names:
            exp = ds["exposure"]
            r["by_exposure"] = metrics.accuracy_by_bucket(exp, correct)
            r.update(metrics.mean_with_stderr("frequent_exact_match",
                                              [c for c, e in zip(correct, exp) if e >= frequent]))
        results[s] = r
        for i, (row, p, c, f) in enumerate(zip(ds, preds, correct, refused)):
            samples.append({"split": s, "doc_id": i, "prompt": row["prompt"], "target": row["completion"],
                            "response": p, "exact_match": c, "refused": f,
                            **{k: row[k] for k in ("fact_id", "exposure") if k in row}})
    return results, samples
