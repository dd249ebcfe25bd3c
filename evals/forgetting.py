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
* membership inference (open-unlearning's attacks, ``src/evals/metrics/mia/``, locuslab/open-unlearning d3d7cf9):
  ``mia_{attack}_auc`` = ROC AUC of telling the holdout split's facts (never trained on: non-members, label 1) from
  the split's facts (members, label 0) by a score of the gold answer that is higher the less likely a member:
  ``loss`` = nll(a); ``zlib`` = nll(a) / len(zlib.compress(a)); ``min_k`` = -mean of the lowest 40% of its token
  log-probs (Shi et al., arXiv 2310.16789; also reported as ``mia_auc``, its name before version 5);
  ``min_k_plus_plus`` = the same over z_t = (log p(a_t) - mu_t) / sigma_t, mu_t and sigma_t the mean and standard
  deviation of log p under p at that position (arXiv 2404.02936; the HF engine's, NaN on vLLM, which has no
  vocabulary distribution); ``gradnorm`` = the mean over parameters of ||d nll(a) / dw||_2 (HF engine only, NaN
  otherwise; on the forget split alone, NaN on the others: a backward pass per answer costs as much as the rest of
  the suite); ``reference`` = nll(a) - nll_ref(a) under the ``reference`` model (``posttrain eval --reference``),
  NaN without one. 0.5 = no trace of training (and on the holdout split itself), NaN when the data has no holdout
  split. The holdout split need not be among the evaluated splits; only its prompts and completions are read;
* ``privleak`` = ((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) x 100 from ``mia_min_k_auc`` (open-unlearning
  ``privacy.py``): AUC_ref (``privleak_reference_auc``) the retain-only model's AUC of the split of the same name,
  read from the ``results.json`` beside ``retain_logs``, else 0.5 (open-unlearning's default); 0 = as leaky as the
  retain model, negative = more (under-unlearning);
* over the gold answer's T tokens, teacher-forced (open-unlearning ``memorization.py``): ``exact_memorization`` =
  mean_i (1/T) sum_t 1[argmax p(. | q, a_<t) = a_t]; ``extraction_strength`` = mean_i 1 - k/T, k the first
  position from which every argmax equals the label (T - 1 when none does: at least 1/T, as theirs);
  ``perplexity`` = exp(mean_i nll(gold_i)) (``metrics.perplexity``);
* ``model_utility`` (the extra results entry ``all``, beside the splits, with ``n`` the questions it aggregates) =
  the harmonic mean of ``answer_prob``, ``rouge_l_recall`` and ``truth_ratio_true_better`` of every evaluated split
  but the forget and holdout splits (TOFU's ``hm_aggregate``, open-unlearning ``utility.py``, over its retain,
  real-authors and world-facts splits; TOFU takes the latter two's probability normalised over the perturbed answers
  and their original answer as the true one in the truth ratio, here every split is scored alike); no entry
  without such a split.

Two splits have roles, named by ``forget_split`` (``--forget_split``, default ``forget``) and ``holdout_split``
(``--holdout_split``, default ``unseen``, the testbed's; TOFU's is e.g. ``holdout``): the forget split gets
``forget_quality`` and the ``closer_to_1`` truth ratio, the holdout split's facts are the non-members. A role named
by the user must be used, else a one-line error: a named forget split must be among the evaluated splits, a named
holdout split in the data, and ``retain_logs`` needs the forget split evaluated. The roles are recorded with the
suite's options in ``results.json``. Every answer scored (completion, paraphrased and perturbed answers, the
holdout split's completions) must be non-blank, ``perturbed_answers`` a non-empty list: one line otherwise.

Every mean over questions carries a ``_stderr`` (sample standard error; the truth-ratio aggregates are means of
per-question values too); the AUCs a bootstrap one (members and non-members resampled independently), privleak
that one scaled by 100 / (1 - AUC_ref), ``model_utility`` a bootstrap one (each split's questions resampled).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from posttrain.core.data import split
from posttrain.core.errors import UsageError
from posttrain.core.phrases import ANSWER_STOP
from posttrain.evals import metrics
from posttrain.evals.common import first_rows, golds, greedy_answers, judged

VERSION = 5  # 2: answers cut at stop sequences; retain logs matched question by question; 3: wrong, junk and
# named-refusal rates; 4: the match rule and aliases, empty answers apart, multi-word names, the refusal matcher;
# 5: open-unlearning's other MIA attacks, privleak, extraction strength, exact memorization, perplexity, model utility
GENERATION = {"n": 1, "temperature": 0.0}
COLUMNS = ("prompt", "completion", "paraphrased_answer", "perturbed_answers")
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm", "reference")  # result keys mia_{attack}_auc
# None: lower on the forget split, higher on the others (privleak: nearest 0 best, the retain model's leak)
HIGHER_IS_BETTER = {"exact_match": None, "refusal_rate": None, "empty_rate": False, "wrong_rate": False,
                    "junk_rate": False,
                    "named_refusal_rate": None, "rouge_l_recall": None, "answer_prob": None,
                    "truth_ratio": None, "truth_ratio_closer_to_1": None, "truth_ratio_true_better": None,
                    "forget_quality": True, "mia_auc": None, **{f"mia_{a}_auc": None for a in ATTACKS},
                    "privleak": None, "extraction_strength": None, "exact_memorization": None, "perplexity": None,
                    "model_utility": True}
MIN_K = 0.4  # open-unlearning's k for min-k% and Min-K%++ (configs/eval/tofu_metrics/mia_min_k*.yaml)
FORGET, HOLDOUT = "forget", "unseen"  # the default names of the forget split and of the holdout (non-member) split
ALL = "all"  # the results entry of what is computed across splits (model_utility)


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
    if ALL in splits:
        raise UsageError(f"a split named {ALL!r} clashes with the forgetting suite's cross-split results entry; "
                         "rename it")
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


def retain_aucs(retain_logs: str | Path) -> dict[str, float]:
    """Split -> the min-k% MIA AUC of a retain-only model, from the ``results.json`` beside its ``samples.jsonl``
    (``mia_min_k_auc``, ``mia_auc`` in outputs of suite versions before 5); empty without that file."""
    path = Path(retain_logs)
    path = (path.parent if path.is_file() else path) / "results.json"
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text())["results"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UsageError(f"retain logs {path} are not a `posttrain eval` results file ({e!r})") from None
    return {key.split("/", 1)[1]: r.get("mia_min_k_auc", r.get("mia_auc")) for key, r in results.items()
            if key.startswith("forgetting/") and isinstance(r, dict) and "mia_auc" in r}


def grad_norms(engine, prompts: list[str], continuations: list[str], which: list[int]) -> list | None:
    """The engine's per-parameter gradient norms of the continuations at the indices ``which`` (a backward pass
    each), None at the others; None for an engine without ``grad_norms``."""
    fn = getattr(engine, "grad_norms", None)
    norms = fn([prompts[i] for i in which], [continuations[i] for i in which]) if fn else None
    if norms is None:  # no gradients (``Served`` of a vLLM engine says so with None)
        return None
    got, keep = iter(norms), set(which)
    return [next(got) if i in keep else None for i in range(len(prompts))]


def attack_scores(stats: list[dict], texts: list[str], norms: list[list[float]] | None = None,
                  reference_logprobs: list[list[float]] | None = None) -> dict[str, list[float]]:
    """Attack -> each answer's membership score (higher = less likely a member), from its ``token_stats``, its text,
    its per-parameter gradient norms and its token log-probs under the reference model; NaN for every answer where
    those are None (an engine without gradients, no reference model)."""
    none = [float("nan")] * len(stats)
    return {
        "loss": [metrics.loss_score(x["logprobs"]) for x in stats],
        "zlib": [metrics.zlib_score(x["logprobs"], t) for x, t in zip(stats, texts)],
        "min_k": [metrics.min_k_prob_score(x["logprobs"], MIN_K) for x in stats],
        "min_k_plus_plus": [metrics.min_k_plus_plus_score(x["logprobs"], x["mean"], x["std"], MIN_K) for x in stats],
        "gradnorm": none if norms is None else [float("nan") if n is None else metrics.grad_norm_score(n)
                                                for n in norms],
        "reference": none if reference_logprobs is None else [metrics.reference_score(x["logprobs"], r)
                                                              for x, r in zip(stats, reference_logprobs)],
    }


def auc_with_stderr(name: str, members: list[float], nonmembers: list[float] | None, iters: int,
                    seed: int) -> dict[str, float]:
    """{name: mia_auc(members, nonmembers), name_stderr: its bootstrap standard error}; both NaN without
    non-members or where a score is NaN."""
    if not nonmembers or np.isnan(members).any() or np.isnan(nonmembers).any():
        return {name: float("nan"), f"{name}_stderr": float("nan")}
    return {name: metrics.mia_auc(members, nonmembers),
            f"{name}_stderr": metrics.bootstrap_stderr(metrics.mia_auc, (members,), (nonmembers,), iters=iters,
                                                       seed=seed)}


def utility(columns: dict[str, tuple[list[float], ...]], iters: int, seed: int) -> dict:
    """The cross-split entry: ``n`` (questions of the splits aggregated) and ``model_utility`` = the harmonic mean
    of each split's mean ``answer_prob``, ``rouge_l_recall`` and ``truth_ratio_true_better`` (``columns``: split ->
    those three per-question columns), with a bootstrap standard error (each split's questions resampled
    independently, the three columns together)."""
    def statistic(*cols):
        return metrics.model_utility(np.stack([c.mean(-1) for c in cols], -1))

    return {"n": sum(len(c[0]) for c in columns.values()),
            "model_utility": metrics.model_utility([metrics.mean(c) for cs in columns.values() for c in cs]),
            "model_utility_stderr": metrics.bootstrap_stderr(statistic, *columns.values(), iters=iters, seed=seed)}


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, max_tokens: int = 24,
             stop=ANSWER_STOP, refusals=metrics.DEFAULT_REFUSALS, retain_logs: str | Path | None = None,
             forget_split: str = FORGET, holdout_split: str = HOLDOUT, match: str = "exact", reference=None,
             bootstrap_iters: int = 1000, seed: int = 0) -> tuple[dict, list[dict]]:
    """Results per split (the module docstring's metrics, with standard errors), the cross-split ``all`` entry
    (``model_utility``) and one sample per question. One engine.generate call (the greedy answers), one
    engine.score call (paraphrased and perturbed answers), one engine.token_stats call and one engine.grad_norms
    call (where the engine has it) on the gold answers of all splits and of the non-members (the
    ``holdout_split``'s); ``reference`` (an engine bound to a reference model, ``posttrain eval --reference``) scores
    those gold answers once more for the reference attack. ``forget_split`` is the split compared with
    ``retain_logs``. Bad input (``check``) raises a ``UsageError`` before any engine call."""
    retain_ratios = check(dd, splits, limit, forget_split, holdout_split, retain_logs)
    retain_auc = retain_aucs(retain_logs) if retain_logs is not None else {}
    answered = greedy_answers(engine, dd, splits, limit, max_tokens, stop)
    nonmembers = first_rows(dd, [holdout_split], limit)[holdout_split] if holdout_split in dd else None
    prompts, groups = [], []
    for ds, _ in answered.values():
        prompts += ds["prompt"]
        groups += [[pa, *pe] for pa, pe in zip(ds["paraphrased_answer"], ds["perturbed_answers"])]
    logprobs = iter(score_groups(engine, prompts, groups))
    gold_prompts, gold = list(prompts), [c for ds, _ in answered.values() for c in ds["completion"]]
    if nonmembers is not None:
        gold_prompts += nonmembers["prompt"]
        gold += nonmembers["completion"]
    stats = engine.token_stats(gold_prompts, gold)
    sizes = [len(ds) for ds, _ in answered.values()]
    starts = dict(zip(answered, np.cumsum([0, *sizes[:-1]])))  # the forget split's and the non-members' answers
    which = [*(range(starts[forget_split], starts[forget_split] + len(answered[forget_split][0]))
               if forget_split in answered else ()), *range(len(prompts), len(gold))]
    scores = attack_scores(stats, gold, grad_norms(engine, gold_prompts, gold, which),
                           reference.score(gold_prompts, gold) if reference is not None else None)
    n_members = len(prompts)
    outside = {a: v[n_members:] or None for a, v in scores.items()}

    results, samples, useful, start = {}, [], {}, 0
    for s, (ds, answers) in answered.items():
        mine = range(start, start + len(ds))
        start += len(ds)
        gold_s, accepted = list(ds["completion"]), golds(ds)
        j = judged(answers, accepted, match, refusals)
        correct, refused = j["correct"], j["refused"]
        wrong = [not c and not r and not e for c, r, e in zip(correct, refused, j["empty"])]
        junk = [metrics.is_degenerate(a, stop) for a in answers]
        entities = ds["entity"] if "entity" in ds.column_names else None
        named = None
        if entities is not None and any(str(e).strip() for e in entities):
            named = [r and metrics.contains(a, str(e)) for a, r, e in zip(answers, refused, entities)]
        rouge = [metrics.rouge_l_recall(a, g) for a, g in zip(answers, gold_s)]
        prob = [metrics.geometric_mean_prob(stats[i]["logprobs"]) for i in mine]
        ratios = [metrics.truth_ratio(metrics.loss_score(lp[0]), [metrics.loss_score(x) for x in lp[1:]])
                  for lp in (next(logprobs) for _ in mine)]
        member = {a: v[mine.start:mine.stop] for a, v in scores.items()}
        extraction = [metrics.extraction_strength(stats[i]["argmax"]) for i in mine]
        memorized = [metrics.exact_memorization(stats[i]["argmax"]) for i in mine]
        closer, better = metrics.truth_ratio_items(ratios).values()
        r = {"n": len(ds)}
        for name, values in (("exact_match", correct), ("refusal_rate", refused), ("empty_rate", j["empty"]),
                             ("wrong_rate", wrong),
                             ("junk_rate", junk), ("rouge_l_recall", rouge),
                             ("answer_prob", prob), ("truth_ratio", closer if s == forget_split else better),
                             ("truth_ratio_closer_to_1", closer), ("truth_ratio_true_better", better),
                             ("extraction_strength", extraction), ("exact_memorization", memorized)):
            r.update(metrics.mean_with_stderr(name, values))
        r.update(metrics.perplexity(member["loss"]))
        r.update(metrics.mean_with_stderr("named_refusal_rate", named) if named is not None
                 else {"named_refusal_rate": float("nan"), "named_refusal_rate_stderr": float("nan")})
        r["forget_quality"] = (metrics.forget_quality(ratios, retain_ratios) if s == forget_split and retain_ratios
                               else float("nan"))
        for a in ATTACKS:
            r.update(auc_with_stderr(f"mia_{a}_auc", member[a], outside[a], bootstrap_iters, seed))
        r["mia_auc"], r["mia_auc_stderr"] = r["mia_min_k_auc"], r["mia_min_k_auc_stderr"]
        r["privleak_reference_auc"] = ref = retain_auc.get(s, 0.5)
        r["privleak"] = metrics.privleak(r["mia_min_k_auc"], ref)
        r["privleak_stderr"] = abs(100 / ((1 - ref) + 1e-10)) * r["mia_min_k_auc_stderr"]
        results[s] = r
        if s not in (forget_split, holdout_split):
            useful[s] = (prob, rouge, list(better))
        for i, row in enumerate(ds):
            samples.append({"split": s, "doc_id": i, "prompt": row["prompt"], "target": gold_s[i],
                            "response": answers[i], "exact_match": correct[i], "refused": refused[i], "junk": junk[i],
                            "rouge_l_recall": rouge[i], "truth_ratio": ratios[i], "answer_prob": prob[i],
                            **{f"{a}_score": member[a][i] for a in ATTACKS},
                            "extraction_strength": extraction[i], "exact_memorization": memorized[i],
                            "fact_id": row.get("fact_id")})
    if useful:
        results[ALL] = utility(useful, bootstrap_iters, seed)
    return results, samples
