"""The ``forgetting`` suite: how much a model still knows of each split's facts, after TOFU (arXiv 2401.06121) and
open-unlearning's implementation of its metrics (METHODS.md §9.4). Per split, with nll(a) = -mean_t log p(a_t | q,
a_<t) the mean token NLL of answer a to question q:

* ``exact_match``, ``refusal_rate``: of the greedy answer; ``wrong_rate`` = mean_i 1[neither right nor refused] (how
  GradAscent and NPO "forget": by answering wrongly, not by refusing); ``junk_rate`` = mean_i 1[the answer is
  degenerate] (``answers.is_degenerate``: unfinished at the token limit, or words repeated back to back);
  ``named_refusal_rate`` = mean_i 1[refused and the answer names the row's ``entity``, all its words in a row:
  "Burkina Faso"] (RULE's targeted refusal; NaN without a non-empty ``entity`` column); ``empty_rate`` =
  mean_i 1[nothing generated]; right answers are judged by the ``match`` rule against the completion, ``answer``
  and ``aliases``, refusals by the one matcher (``answers.is_refusal``: the refusals plus free-form hedges);
* ``rouge_l_recall`` = mean_i LCS(greedy answer, gold) / |gold| in words (``rouge-score``);
* ``answer_prob`` = mean_i exp(-nll(gold_i));
* ``truth_ratio``: per question TR = exp(-mean_j nll(perturbed_j)) / exp(-nll(paraphrased)) over the row's
  ``paraphrased_answer`` and ``perturbed_answers``; aggregated as ``truth_ratio_closer_to_1`` = mean_i min(TR_i,
  1/TR_i) (the forget split's ``truth_ratio``) and ``truth_ratio_true_better`` = mean_i max(0, 1 - TR_i) (the other
  splits');
* ``forget_quality`` (forget split) = p-value of the two-sample KS test between the forget split's TRs and those of
  a retain-only model read from ``retain_logs`` (an earlier ``posttrain eval`` output: its samples of the split of
  the same name), question by question (matched by ``fact_id``, or by prompt where the data has none); NaN without
  it; no standard error (a p-value);
* ``mia_auc`` = ROC AUC of telling the holdout split's facts (never trained on: non-members) from the split's facts
  (members) by the min-k% prob score of the gold answer, -mean of its lowest 40% token log-probs (Shi et al., arXiv
  2310.16789); 0.5 = no trace of training (and on the holdout split itself), NaN when the data has no holdout split.
  The holdout split need not be among the evaluated splits; only its prompts and completions are read.

Two splits have roles, named by ``forget_split`` (``--forget_split``, default ``forget``) and ``holdout_split``
(``--holdout_split``, default ``unseen``, the testbed's; TOFU's is e.g. ``holdout``): the forget split gets
``forget_quality`` and the ``closer_to_1`` truth ratio, the holdout split's facts are the non-members. A role named
by the user must be used, else a one-line error: a named forget split must be among the evaluated splits, a named
holdout split in the data, and ``retain_logs`` needs the forget split evaluated. The roles are recorded with the
suite's options in ``results.json``. Every answer scored (completion, paraphrased and perturbed answers, the
holdout split's completions) must be non-blank, ``perturbed_answers`` a non-empty list: one line otherwise.

Every mean over questions carries a ``_stderr`` (sample standard error; the truth-ratio aggregates are means of
per-question values too); ``mia_auc`` a bootstrap one (members and non-members resampled independently).
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import DatasetDict

from posttrain.core.data import split
from posttrain.core.errors import UsageError
from posttrain.core.phrases import ANSWER_STOP
from posttrain.evals import metrics
from posttrain.evals.common import first_rows, golds, greedy_answers, judged

VERSION = 4  # 2: answers cut at stop sequences; retain logs matched question by question; 3: wrong, junk and
# named-refusal rates; 4: the match rule and aliases, empty answers apart, multi-word names, the refusal matcher
GENERATION = {"n": 1, "temperature": 0.0}
COLUMNS = ("prompt", "completion", "paraphrased_answer", "perturbed_answers")
HIGHER_IS_BETTER = {"exact_match": None, "refusal_rate": None, "empty_rate": False, "wrong_rate": False,
                    "junk_rate": False,
                    "named_refusal_rate": None, "rouge_l_recall": None, "answer_prob": None,
                    "truth_ratio": None, "truth_ratio_closer_to_1": None, "truth_ratio_true_better": None,
                    "forget_quality": True, "mia_auc": None}  # lower on the forget split, higher on the others
MIN_K = 0.4
FORGET, HOLDOUT = "forget", "unseen"  # the default names of the forget split and of the holdout (non-member) split


def question_key(row: dict) -> str:
    """What matches a question across eval outputs: its ``fact_id`` (the testbed's), else its prompt."""
    return str(row["fact_id"]) if row.get("fact_id") is not None else row["prompt"]


def retain_truth_ratios(retain_logs: str | Path, forget_split: str = FORGET) -> dict[str, float]:
    """Question key -> truth ratio of the split ``forget_split`` in a retain-only model's eval output (its
    ``samples.jsonl``)."""
    path = Path(retain_logs)
    path = path if path.is_file() else path / "samples.jsonl"
    if not path.is_file():
        raise UsageError(f"retain logs not found: {path} (give the output directory of `posttrain eval`)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ratios = {question_key(r): r["truth_ratio"] for r in rows
              if r.get("suite") == "forgetting" and r.get("split") == forget_split}
    if not ratios:
        raise UsageError(f"retain logs {path} hold no forgetting-suite samples of the forget split {forget_split!r}")
    return ratios


def matched_ratios(reference: dict[str, float], rows, retain_logs) -> list[float]:
    """The reference truth ratios of ``rows`` (the forget questions evaluated now), in their order; a one-line
    error unless the logs hold exactly these questions (logs of another graph seed or ``--limit`` would make the
    KS test compare different facts)."""
    keys = [question_key(r) for r in rows]
    missing = [k for k in keys if k not in reference]
    if missing or len(reference) != len(keys):
        raise UsageError(f"retain logs {retain_logs} cover other forget questions than this eval: "
                         f"{len(keys) - len(missing)} of its {len(keys)} are among the logs' {len(reference)} (same "
                         "data and --limit needed)")
    return [reference[k] for k in keys]


def check(dd: DatasetDict, splits: list[str], limit: int | None = None, forget_split: str = FORGET,
          holdout_split: str = HOLDOUT, retain_logs: str | Path | None = None, named: tuple[str, ...] = ()):
    """Bad input as one line, before any model work; returns the retain model's truth ratios of the forget
    questions in their order (None without ``retain_logs``). ``named``: the roles the user named (``forget_split``,
    ``holdout_split``), each of which must be used (a named forget split among ``splits``, a named holdout split in
    ``dd``); ``retain_logs`` needs the forget split among ``splits``; every answer scored must be non-blank."""
    evaluated = ", ".join(splits)
    if "forget_split" in named and forget_split not in splits:
        raise UsageError(f"--forget_split {forget_split!r} is not among the evaluated splits ({evaluated}); the data "
                         f"has: {', '.join(dd)}")
    if "holdout_split" in named and holdout_split not in dd:
        raise UsageError(f"--holdout_split {holdout_split!r} is not a split of the data (it has: {', '.join(dd)})")
    reference = None
    if retain_logs is not None:
        if forget_split not in splits:
            raise UsageError(f"--retain_logs scores the forget split {forget_split!r}, which is not among the "
                             f"evaluated splits ({evaluated}); name yours with --forget_split")
        reference = matched_ratios(retain_truth_ratios(retain_logs, forget_split),
                                   first_rows(dd, [forget_split], limit)[forget_split], retain_logs)
    rows = first_rows(dd, splits, limit)
    for s in splits:
        check_answers(s, rows[s], COLUMNS[1:])
    if holdout_split in dd:
        split(dd, holdout_split, ("prompt", "completion"))
        check_answers(holdout_split, first_rows(dd, [holdout_split], limit)[holdout_split], ("completion",))
    return reference


def check_answers(name: str, ds, columns: tuple[str, ...]) -> None:
    """Each row's answers in ``columns`` (``perturbed_answers``: a non-empty list of them) are non-blank: an answer
    is scored by its mean token NLL, which an answer of no tokens does not have."""
    for column in columns:
        for i, value in enumerate(ds[column]):
            if column == "perturbed_answers" and (not isinstance(value, list) or not value):
                raise UsageError(f"split {name!r}, row {i}: perturbed_answers must be a list of at least one answer, "
                                 f"got {value!r}")
            if any(not isinstance(v, str) or not v.strip() for v in (value if isinstance(value, list) else [value])):
                raise UsageError(f"split {name!r}, row {i}: an empty {column} (each answer is scored by its mean "
                                 "token log-probability: give it some text)")


def score_groups(engine, prompts: list[str], groups: list[list[str]]) -> list[list[list[float]]]:
    """Per-token log-probs of every continuation in ``groups[i]`` after ``prompts[i]``, from one engine.score call."""
    flat = iter(engine.score([p for p, g in zip(prompts, groups) for _ in g], [c for g in groups for c in g]))
    return [[next(flat) for _ in g] for g in groups]


def nll(token_logprobs: list[float]) -> float:
    """Mean token negative log-likelihood of one answer."""
    return -sum(token_logprobs) / len(token_logprobs)


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, max_tokens: int = 24,
             stop=ANSWER_STOP, refusals=metrics.DEFAULT_REFUSALS, retain_logs: str | Path | None = None,
             forget_split: str = FORGET, holdout_split: str = HOLDOUT, match: str = "exact",
             bootstrap_iters: int = 1000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Results per split (``n``, ``exact_match``, ``refusal_rate``, ``rouge_l_recall``, ``answer_prob``,
    ``truth_ratio`` with both aggregates, ``forget_quality``, ``mia_auc``, with standard errors) and one sample per
    question. One engine.generate call and one engine.score call for all splits and the non-member questions (the
    ``holdout_split``'s); ``forget_split`` is the split compared with ``retain_logs``. Bad input (``check``) raises
    a ``UsageError`` before any engine call."""
    reference = check(dd, splits, limit, forget_split, holdout_split, retain_logs)
    answered = greedy_answers(engine, dd, splits, limit, max_tokens, stop)
    nonmembers = first_rows(dd, [holdout_split], limit)[holdout_split] if holdout_split in dd else None
    prompts, groups = [], []
    for ds, _ in answered.values():
        prompts += ds["prompt"]
        groups += [[c, pa, *pe] for c, pa, pe in zip(ds["completion"], ds["paraphrased_answer"],
                                                      ds["perturbed_answers"])]
    if nonmembers is not None:
        prompts += nonmembers["prompt"]
        groups += [[c] for c in nonmembers["completion"]]
    logprobs = iter(score_groups(engine, prompts, groups))
    per_split = {s: [next(logprobs) for _ in range(len(ds))] for s, (ds, _) in answered.items()}
    nonmember_scores = [metrics.min_k_prob_score(lp[0], MIN_K) for lp in logprobs]

    results, samples = {}, []
    for s, (ds, answers) in answered.items():
        gold, accepted = list(ds["completion"]), golds(ds)
        j = judged(answers, accepted, match, refusals)
        correct, refused = j["correct"], j["refused"]
        wrong = [not c and not r and not e for c, r, e in zip(correct, refused, j["empty"])]
        junk = [metrics.is_degenerate(a, stop) for a in answers]
        entities = ds["entity"] if "entity" in ds.column_names else None
        named = None
        if entities is not None and any(str(e).strip() for e in entities):
            named = [r and metrics.contains(a, str(e)) for a, r, e in zip(answers, refused, entities)]
        rouge = [metrics.rouge_l_recall(a, g) for a, g in zip(answers, gold)]
        prob = [metrics.geometric_mean_prob(lp[0]) for lp in per_split[s]]
        ratios = [metrics.truth_ratio(nll(lp[1]), [nll(x) for x in lp[2:]]) for lp in per_split[s]]
        min_k = [metrics.min_k_prob_score(lp[0], MIN_K) for lp in per_split[s]]
        closer, better = metrics.truth_ratio_items(ratios).values()
        quality = metrics.forget_quality(ratios, reference) if s == forget_split and reference else float("nan")
        r = {"n": len(ds)}
        for name, values in (("exact_match", correct), ("refusal_rate", refused), ("empty_rate", j["empty"]),
                             ("wrong_rate", wrong),
                             ("junk_rate", junk), ("rouge_l_recall", rouge),
                             ("answer_prob", prob), ("truth_ratio", closer if s == forget_split else better),
                             ("truth_ratio_closer_to_1", closer), ("truth_ratio_true_better", better)):
            r.update(metrics.mean_with_stderr(name, values))
        r.update(metrics.mean_with_stderr("named_refusal_rate", named) if named is not None
                 else {"named_refusal_rate": float("nan"), "named_refusal_rate_stderr": float("nan")})
        r["forget_quality"] = quality
        r["mia_auc"] = metrics.mia_auc(min_k, nonmember_scores) if nonmember_scores else float("nan")
        r["mia_auc_stderr"] = (metrics.bootstrap_stderr(metrics.mia_auc, (min_k,), (nonmember_scores,),
                                                        iters=bootstrap_iters, seed=seed)
                               if nonmember_scores else float("nan"))
        results[s] = r
        for i, row in enumerate(ds):
            samples.append({"split": s, "doc_id": i, "prompt": row["prompt"], "target": gold[i],
                            "response": answers[i], "exact_match": correct[i], "refused": refused[i], "junk": junk[i],
                            "rouge_l_recall": rouge[i], "truth_ratio": ratios[i], "answer_prob": prob[i],
                            "min_k_score": min_k[i], "fact_id": row.get("fact_id")})
    return results, samples
