"""The ``hallucination`` suite: how often the model answers wrongly instead of refusing, and how well its
confidence ranks its right answers above its wrong ones (R-Tuning's AP, arXiv 2311.09677; METHODS.md §1.7).

Per split: accuracy, refusal rate, hallucination rate (answered and wrong), laziness (refused a frequently seen
fact: on the testbed those are the facts the base model knows), answer rate and accuracy on the answered questions
(answered = no refusal; for a model tuned with a certainty suffix also p(sure) > 0.5, R-Tuning's "willing to
answer"), AP and ECE. Means carry a ``_stderr`` (sample standard error); AP and ECE a bootstrap one over questions
(``bootstrap_iters`` resamples). Three confidences per answer:
``answer`` = geometric mean of the greedy answer's token probabilities (each the step's maximum), ``answer_min`` =
the smallest of them (a chat model's sentence "The capital of France is Paris." is mostly template words the model
is sure of; its least likely token is the entity's), ``sure`` = p(sure) / (p(sure) + p(unsure)) for the word
after the words ``sure`` and ``unsure`` share ("I am"), after "{prompt} {answer} {certainty question}" (first
token of each word), ``mean`` = the average of ``answer`` and ``sure`` (R-Tuning's ranking score). A split with a
``popularity`` column (real facts: the entity's population) also gets accuracy by popularity decile
(``by_popularity``), the knowledge curve of a model that knows popular entities best.
"""

from __future__ import annotations

import numpy as np
from datasets import DatasetDict

from posttrain.core.phrases import ANSWER_STOP, SURE, SURE_QUESTION, UNSURE
from posttrain.evals import metrics
from posttrain.evals.common import FREQUENT, golds, greedy_answers, judged

VERSION = 4  # 4: a suffix-tuned model's answer ends before the certainty question it goes on to ask; 3: the match
# rule, aliases, empty answers apart (never hallucinations), sure/unsure words, answer_min, by_popularity; 2: answers
# cut at stop sequences; answered = not refused unless the model has a certainty suffix
GENERATION = {"n": 1, "temperature": 0.0}
COLUMNS = ("prompt", "completion")
CONFIDENCES = ("answer", "answer_min", "sure", "mean")
HIGHER_IS_BETTER = {"accuracy": True, "refusal_rate": None, "hallucination_rate": False, "laziness": False,
                    "empty_rate": False,
                    "answer_rate": None, "answered_accuracy": True, **{f"ap_{c}": True for c in CONFIDENCES},
                    "ece_answer": False}


def certainty_words(sure: str, unsure: str) -> tuple[str, str, str]:
    """(the words ``sure`` and ``unsure`` share first, the next word of each without its final punctuation):
    ("I am", "sure", "unsure") for "I am sure." / "I am unsure."; only the next word's first token is scored."""
    a, b = sure.split(), unsure.split()
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return " ".join(a[:n]), a[n].rstrip(".!") or a[n], b[n].rstrip(".!") or b[n]


def after(prompt: str, text: str) -> str:
    """``text`` continuing ``prompt``: after a space, unless the prompt ends with whitespace (a chat turn)."""
    return prompt + text if prompt[-1:].isspace() else f"{prompt} {text}"


def question_lead(sure_question: str) -> str:
    """The certainty question's first three words ("Are you sure"): where a suffix-tuned model's answer ends."""
    return " ".join(sure_question.split()[:3])


def before_question(answer: str, sure_question: str) -> str:
    """The answer a suffix-tuned model gave before it went on to ask itself the certainty question: ``answer`` cut
    where ``question_lead`` begins, else unchanged. "Paris Are you sure you accurately ...? I am sure." -> "Paris"."""
    lead = question_lead(sure_question)
    i = answer.find(lead) if lead else -1
    return answer[:i].rstrip() if i >= 0 else answer


def confidences(engine, prompts: list[str], answers: list[str], sure_question: str = SURE_QUESTION,
                sure: str = SURE, unsure: str = UNSURE) -> dict:
    """The confidences of each (prompt, generated answer), from one engine.score call; an empty answer gets
    confidence 0."""
    n = len(prompts)
    spans = [a.strip() for a in answers]
    shared, yes, no = certainty_words(sure, unsure)
    probes = [" ".join(w for w in (after(p, s), sure_question, shared) if w) for p, s in zip(prompts, spans)]
    lp = engine.score([*prompts, *probes, *probes], [*(after(p, s)[len(p):] for p, s in zip(prompts, spans)),
                                                     *[" " + yes] * n, *[" " + no] * n])
    token_lp, sure_lp, unsure_lp = lp[:n], lp[n:2 * n], lp[2 * n:]
    answer = [metrics.geometric_mean_prob(t) if s and t else 0.0 for s, t in zip(spans, token_lp)]
    lowest = [float(np.exp(min(t))) if s and t else 0.0 for s, t in zip(spans, token_lp)]
    p_sure = [metrics.sure_probability(a[0], b[0]) for a, b in zip(sure_lp, unsure_lp)]
    return {"answer": answer, "answer_min": lowest, "sure": p_sure,
            "mean": [(a + b) / 2 for a, b in zip(answer, p_sure)]}


def split_metrics(correct, refused, empty, known, conf, popularity=None, certainty_suffix: bool = False,
                  bootstrap_iters: int = 1000, seed: int = 0) -> dict:
    answered = [not f and not e and (p > 0.5 or not certainty_suffix)
                for f, e, p in zip(refused, empty, conf["sure"])]
    r = {"n": len(correct)}
    for name, values in metrics.hallucination_items(correct, refused, known, empty).items():
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
    if popularity is not None:
        r["by_popularity"] = metrics.accuracy_by_decile(popularity, correct)
    return r


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, max_tokens: int = 24,
             stop=ANSWER_STOP, refusals=metrics.DEFAULT_REFUSALS, sure_question: str = SURE_QUESTION,
             sure: str = SURE, unsure: str = UNSURE, certainty_suffix: bool = False, match: str = "exact",
             bootstrap_iters: int = 1000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Metrics per split and, for several splits, over all of them pooled (``all``: the AP that matters when known
    and unknown questions are mixed, as in R-Tuning's test sets). One generate and one score call for all splits.
    ``certainty_suffix``: the model was tuned to answer the certainty question (R-Tuning's suffix variant), so an
    answer counts as given only when p(sure) > 0.5, and a generation that goes on into the question is cut before
    it (``before_question``: a chat model's turn ends after "I am sure.", not at a stop); ``match``: how an answer
    is judged right against the completion, ``answer`` and ``aliases``; ``seed`` seeds the bootstrap."""
    results, samples = {}, []
    stats = {"certainty_suffix": certainty_suffix, "bootstrap_iters": bootstrap_iters, "seed": seed}
    # a suffix-tuned model's generation stops where its certainty question starts: the answer before it is judged
    answered = greedy_answers(engine, dd, splits, limit, max_tokens,
                              (*stop, question_lead(sure_question)) if certainty_suffix else stop)
    if certainty_suffix:
        answered = {s: (ds, [before_question(a, sure_question) for a in answers]) for s, (ds, answers) in
                    answered.items()}
    every = confidences(engine, [p for ds, _ in answered.values() for p in ds["prompt"]],
                        [a for _, answers in answered.values() for a in answers], sure_question, sure, unsure)
    keys = ("correct", "refused", "empty", "known", "popularity")
    pooled = {**{k: [] for k in keys}, **{k: [] for k in CONFIDENCES}}
    start = 0
    for s, (ds, answers) in answered.items():
        prompts, gold = list(ds["prompt"]), golds(ds)
        j = judged(answers, gold, match, refusals)
        exposure = list(ds["exposure"]) if "exposure" in ds.column_names else [None] * len(ds)
        known = [e is not None and e >= FREQUENT for e in exposure]
        popularity = list(ds["popularity"]) if "popularity" in ds.column_names else None
        conf = {k: v[start:start + len(ds)] for k, v in every.items()}
        start += len(ds)
        results[s] = split_metrics(j["correct"], j["refused"], j["empty"], known, conf, popularity, **stats)
        for key, values in (*j.items(), ("known", known), ("popularity", popularity), *conf.items()):
            if pooled[key] is not None:
                pooled[key] = None if values is None else pooled[key] + values
        for i, (p, a) in enumerate(zip(prompts, answers)):
            samples.append({"split": s, "doc_id": i, "prompt": p, "target": gold[i][0], "response": a,
                            "exact_match": j["correct"][i], "refused": j["refused"][i], "empty": j["empty"][i],
                            "exposure": exposure[i], **({"popularity": popularity[i]} if popularity else {}),
                            **{f"confidence_{k}": conf[k][i] for k in CONFIDENCES}})
    if len(splits) > 1:
        results["all"] = split_metrics(pooled["correct"], pooled["refused"], pooled["empty"], pooled["known"],
                                       pooled, pooled["popularity"], **stats)
    return results, samples
