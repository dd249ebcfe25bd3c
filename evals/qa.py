"""The ``qa`` suite: greedy answers to each split's questions; exact match (or the ``match`` rule), refusal and
empty rates per split, and accuracy by exposure count (how often the fact occurs in the pretraining corpus)."""

from __future__ import annotations

from datasets import DatasetDict

from posttrain.core.phrases import ANSWER_STOP
from posttrain.evals import metrics
from posttrain.evals.common import FREQUENT, golds, greedy_answers, judged

VERSION = 3  # 3: the match rule, aliases, empty answers apart, the refusal matcher with hedges; 2: stop sequences
COLUMNS = ("prompt", "completion")
GENERATION = {"n": 1, "temperature": 0.0}
HIGHER_IS_BETTER = {"exact_match": True, "frequent_exact_match": True, "refusal_rate": None, "empty_rate": False}


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, max_tokens: int = 24,
             stop=ANSWER_STOP, frequent: int = FREQUENT, refusals=metrics.DEFAULT_REFUSALS,
             match: str = "exact") -> tuple[dict, list[dict]]:
    """Results per split (``n``, ``exact_match`` = the share judged right under ``match`` against the completion,
    ``answer`` and ``aliases``; ``refusal_rate``, ``empty_rate``, and where the split has an ``exposure`` column
    ``by_exposure`` and ``frequent_exact_match`` over facts with exposure >= ``frequent``), each mean with its
    ``_stderr``, and one sample per question. All splits' prompts go to the engine in one call."""
    results, samples = {}, []
    for s, (ds, preds) in greedy_answers(engine, dd, splits, limit, max_tokens, stop).items():
        j = judged(preds, golds(ds), match, refusals)
        correct = j["correct"]
        r = {"n": len(ds), **metrics.mean_with_stderr("exact_match", correct),
             **metrics.mean_with_stderr("refusal_rate", j["refused"]),
             **metrics.mean_with_stderr("empty_rate", j["empty"])}
        if "exposure" in ds.column_names:
            exp = ds["exposure"]
            r["by_exposure"] = metrics.accuracy_by_bucket(exp, correct)
            r.update(metrics.mean_with_stderr("frequent_exact_match",
                                              [c for c, e in zip(correct, exp) if e >= frequent]))
        results[s] = r
        for i, (row, p, c, f) in enumerate(zip(ds, preds, correct, j["refused"])):
            samples.append({"split": s, "doc_id": i, "prompt": row["prompt"], "target": row["completion"],
                            "response": p, "exact_match": c, "refused": f,
                            **{k: row[k] for k in ("fact_id", "exposure") if k in row}})
    return results, samples
