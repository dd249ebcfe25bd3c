"""The ``hallucination`` suite: how often the model answers wrongly instead of refusing, and how well its
confidence ranks its right answers above its wrong ones (R-Tuning's AP, arXiv 2311.09677; METHODS.md §1.7).

Per split: accuracy, refusal rate, hallucination rate (answered and wrong), laziness (refused a frequently seen
fact: on the testbed those are the facts the base model knows), answer rate and accuracy on the answered questions
(answered = no refusal; for a model tuned with a certainty suffix also p(sure) > 0.5, R-Tuning's "willing to
answer"), AP and ECE. Means carry a ``_stderr`` (sample standard error); AP and ECE a bootstrap one over questions
(``bootstrap_iters`` resamples). Three confidences per answer:
``answer`` = geometric mean of the greedy answer's token probabilities (each the step's maximum), ``sure`` =
p(sure) / (p(sure) + p(unsure)) for the next word after "{prompt} {answer} {certainty question} I am" (first
token of each word), ``mean`` = their average (R-Tuning's ranking score).
"""

from __future__ import annotations

from datasets import DatasetDict

from posttrain.data_gen.kg import ANSWER_STOP, SURE_QUESTION
from posttrain.evals import metrics
from posttrain.evals.qa import FREQUENT, greedy_answers

VERSION = 2  # 2: answers cut at stop sequences; answered = not refused unless the model has a certainty suffix
GENERATION = {"n": 1, "temperature": 0.0}
COLUMNS = ("prompt", "completion")
CONFIDENCES = ("answer", "sure", "mean")
HIGHER_IS_BETTER = {"accuracy": True, "refusal_rate": None, "hallucination_rate": False, "laziness": False,
                    "answer_rate": None, "answered_accuracy": True, **{f"ap_{c}": True for c in CONFIDENCES},
                    "ece_answer": False}


def confidences(engine, prompts: list[str], answers: list[str], sure_question: str = SURE_QUESTION) -> dict:
    """The three confidences of each (prompt, generated answer), from one engine.score call; an empty answer gets
    confidence 0."""
    n = len(prompts)
    spans = [a.strip() for a in answers]
    probes = [f"{p} {s} {sure_question} I am" for p, s in zip(prompts, spans)]
    lp = engine.score([*prompts, *probes, *probes], [*(" " + s for s in spans), *[" sure"] * n, *[" unsure"] * n])
    token_lp, sure_lp, unsure_lp = lp[:n], lp[n:2 * n], lp[2 * n:]
    answer = [metrics.geometric_mean_prob(t) if t else 0.0 for t in token_lp]
    sure = [metrics.sure_probability(a[0], b[0]) for a, b in zip(sure_lp, unsure_lp)]
    return {"answer": answer, "sure": sure, "mean": [(a + b) / 2 for a, b in zip(answer, sure)]}


def split_metrics(correct, refused, known, conf, certainty_suffix: bool = False, bootstrap_iters: int = 1000,
                  seed: int = 0) -> dict:
    answered = [not f and (p > 0.5 or not certainty_suffix) for f, p in zip(refused, conf["sure"])]
    r = {"n": len(correct)}
    for name, values in metrics.hallucination_items(correct, refused, known).items():
        r.update(metrics.mean_with_stderr(name, values))
    r.update(metrics.mean_with_stderr("answer_rate", answered))
    r.update(metrics.mean_with_stderr("answered_accuracy", [c for c, a in zip(correct, answered) if a]))
    for name in CONFIDENCES:
        r[f"ap_{name}"] = metrics.average_precision(correct, conf[name])
        r[f"ap_{name}_stderr"] = metrics.bootstrap_stderr(metrics.average_precision, (correct, conf[name]),
                                                          iters=bootstrap_iters, seed=seed)
    r["ece_answer"] = metrics.expected_calibration_error(correct, conf["answer"])
    r["ece_answer_stderr"] = metrics.bootstrap_stderr(metrics.expected_calibration_error, (correct, conf["answer"]),
                                                      iters=bootstrap_iters, seed=seed)
    r["reliability_answer"] = metrics.reliability_bins(correct, conf["answer"])
    return r


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, max_tokens: int = 24,
             stop=ANSWER_STOP, refusals=metrics.DEFAULT_REFUSALS, sure_question: str = SURE_QUESTION,
             certainty_suffix: bool = False, bootstrap_iters: int = 1000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Metrics per split and, for several splits, over all of them pooled (``all``: the AP that matters when known
    and unknown questions are mixed, as in R-Tuning's test sets). One generate and one score call for all splits.
    ``certainty_suffix``: the model was tuned to answer the certainty question (R-Tuning's suffix variant), so an
    answer counts as given only when p(sure) > 0.5; ``seed`` seeds the bootstrap."""
    results, samples = {}, []
    stats = {"certainty_suffix": certainty_suffix, "bootstrap_iters": bootstrap_iters, "seed": seed}
    answered = greedy_answers(engine, dd, splits, limit, max_tokens, stop)
    every = confidences(engine, [p for ds, _ in answered.values() for p in ds["prompt"]],
                        [a for _, answers in answered.values() for a in answers], sure_question)
    pooled = {"correct": [], "refused": [], "known": [], **{k: [] for k in CONFIDENCES}}
    start = 0
    for s, (ds, answers) in answered.items():
        prompts, gold = list(ds["prompt"]), list(ds["completion"])
        correct = [metrics.exact_match(a, g) for a, g in zip(answers, gold)]
        refused = [metrics.is_refusal(a, refusals) for a in answers]
        exposure = list(ds["exposure"]) if "exposure" in ds.column_names else [None] * len(ds)
        known = [e is not None and e >= FREQUENT for e in exposure]
        conf = {k: v[start:start + len(ds)] for k, v in every.items()}
        start += len(ds)
        results[s] = split_metrics(correct, refused, known, conf, **stats)
        for key, values in (("correct", correct), ("refused", refused), ("known", known), *conf.items()):
            pooled[key] += values
        for i, (p, g, a, c, f) in enumerate(zip(prompts, gold, answers, correct, refused)):
            samples.append({"split": s, "doc_id": i, "prompt": p, "target": g, "response": a, "exact_match": c,
                            "refused": f, "exposure": exposure[i],
                            **{f"confidence_{k}": conf[k][i] for k in CONFIDENCES}})
    if len(splits) > 1:
        results["all"] = split_metrics(pooled["correct"], pooled["refused"], pooled["known"], pooled, **stats)
    return results, samples
