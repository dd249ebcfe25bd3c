"""The ``reasoning`` suite: n sampled solutions per problem, each checked by a verifier; unbiased pass@k for
k = 1..n per split.

With c of n samples correct, pass@k = E_problems[1 - C(n - c, k) / C(n, k)]: the probability that at least one of
k samples drawn without replacement from the n is correct, averaged over problems — the unbiased estimator of
Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (arXiv 2107.03374), ``metrics.pass_at_k``.
"""

from __future__ import annotations

from importlib import import_module

from datasets import DatasetDict

from posttrain.core import answers
from posttrain.core.errors import UsageError
from posttrain.evals import metrics
from posttrain.evals.common import first_rows

VERSION = 4  # 2: max_tokens 96, stop sequences, standard errors; 3: the answer is every word up to "." (digit answers);
# 4: a verifier of the gold completion (DCO's, from its run)
COLUMNS = ("prompt", "answer")
GENERATION = {}  # n and temperature are options of this suite
HIGHER_IS_BETTER = {"mean_correct": True, "pass@k": True}


def resolve_verifier(spec: str | None, dd: DatasetDict, splits: list[str]):
    """(response, row) -> bool: ``answers.verify`` against the answer, or the importable ``spec`` against the gold
    completion; bad input (no such function, no completion column) is a one-line ``UsageError``."""
    if spec is None:
        return lambda response, row: answers.verify(response, row["answer"])
    module, _, name = spec.partition(":")
    try:
        function = getattr(import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UsageError(f"--verifier {spec!r} is not an importable module:function") from None
    for s in splits:
        if "completion" not in dd[s].column_names:
            raise UsageError(f"--verifier checks the gold completion, and split {s!r} has no completion column")
    return lambda response, row: function(response, row["completion"])


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, n: int = 8,
             temperature: float = 0.7, max_tokens: int = 96, stop=(), seed: int = 0,
             verifier: str | None = None) -> tuple[dict, list[dict]]:
    """Results per split (``n`` problems, ``samples_per_problem``, ``mean_correct`` = correct samples / all
    samples, ``pass@k`` for k = 1..n, each with the sample standard error over problems of its per-problem value)
    and one sample per problem. All splits' prompts go to the engine in one call, ``n`` samples each, generation
    ending at the end-of-sequence token or a ``stop`` string. A sample is checked by ``core.answers.verify``
    against the row's ``answer``, or, with ``verifier`` ("module:function", e.g. the one a DCO run trained with,
    from its run.json), by ``function(response, gold completion)``."""
    check = resolve_verifier(verifier, dd, splits)
    rows = first_rows(dd, splits, limit)
    prompts = [p for s in splits for p in rows[s]["prompt"]]
    outputs = iter(engine.generate(prompts, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed,
                                   stop=stop))
    results, samples = {}, []
    for s in splits:
        counts = []
        for i, row in enumerate(rows[s]):
            responses = next(outputs)
            correct = [bool(check(r, row)) for r in responses]
            counts.append(sum(correct))
            samples.append({"split": s, "doc_id": i, "prompt": row["prompt"], "target": row["answer"],
                            "responses": responses, "correct": correct, "n_correct": counts[-1]})
        results[s] = {"n": len(counts), "samples_per_problem": n,
                      **metrics.mean_with_stderr("mean_correct", [c / n for c in counts])}
        for k in range(1, n + 1):
            results[s].update(metrics.mean_with_stderr(f"pass@{k}", [metrics.pass_at_k(n, c, k) for c in counts]))
    return results, samples
