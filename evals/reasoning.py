"""The ``reasoning`` suite: n sampled solutions per problem, each checked by a verifier; unbiased pass@k for
k = 1..n per split.

With c of n samples correct, pass@k = E_problems[1 - C(n - c, k) / C(n, k)]: the probability that at least one of
k samples drawn without replacement from the n is correct, averaged over problems — the unbiased estimator of
Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (arXiv 2107.03374), ``metrics.pass_at_k``.
"""

from __future__ import annotations

from collections.abc import Callable

from datasets import DatasetDict

from posttrain.data_gen import reasoning
from posttrain.evals import metrics
from posttrain.evals.qa import first_rows

COLUMNS = ("prompt", "answer")


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, n: int = 8,
             temperature: float = 0.7, max_tokens: int = 48, seed: int = 0,
             verifier: Callable[[str, str], bool] | None = None, **_) -> tuple[dict, list[dict]]:
    """Results per split (``n`` problems, ``samples_per_problem``, ``mean_correct`` = correct samples / all
    samples, ``pass@k`` for k = 1..n) and one sample per problem. All splits' prompts go to the engine in one call,
    ``n`` samples each; ``verifier(response, answer)`` defaults to ``data_gen.reasoning.verify``."""
    verify = verifier or reasoning.verify
    rows = first_rows(dd, splits, limit)
    prompts = [p for s in splits for p in rows[s]["prompt"]]
    outputs = iter(engine.generate(prompts, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed))
    results, samples = {}, []
    for s in splits:
        counts = []
        for i, row in enumerate(rows[s]):
            responses = next(outputs)
            correct = [bool(verify(r, row["answer"])) for r in responses]
            counts.append(sum(correct))
            samples.append({"split": s, "doc_id": i, "prompt": row["prompt"], "target": row["answer"],
                            "responses": responses, "correct": correct, "n_correct": counts[-1]})
        results[s] = {"n": len(counts), "samples_per_problem": n, "mean_correct": metrics.mean(counts) / n,
                      **{f"pass@{k}": metrics.mean([metrics.pass_at_k(n, c, k) for c in counts])
                         for k in range(1, n + 1)}}
    return results, samples
