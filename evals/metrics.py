"""Pure metric functions. Each docstring gives the formula."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posttrain.core.answers import (HEDGES, MATCH_RULES, contains, exact_match, is_correct, is_degenerate,  # noqa: F401
                                    is_refusal, normalize, refusal_subject,
                                    rouge_l_recall)  # the suites' metrics: answers.py is where training reads them too

DEFAULT_REFUSALS = ("I do not know", *HEDGES)  # the testbed's phrase and chat models' free-form hedges
EXPOSURE_BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, None))


def answer_entropy(answers: Sequence[str]) -> float:
    """Shannon entropy (nats) of the empirical distribution of ``answers`` (exact strings):
    H = -sum_a (c_a / k) log(c_a / k), c_a the count of answer a among k (``scipy.stats.entropy`` of the counts)."""
    from collections import Counter

    from scipy.stats import entropy

    return float(entropy(list(Counter(answers).values()))) if answers else float("nan")


def mean(flags: Sequence[bool | float]) -> float:
    """sum(flags) / len(flags); NaN for no items."""
    return float(np.mean(flags)) if len(flags) else float("nan")


def stderr(values: Sequence[bool | float]) -> float:
    """Standard error of a mean over items: s / sqrt(N), s the sample standard deviation (ddof 1; for 0/1 flags
    the binomial sqrt(p (1 - p) / (N - 1))), ``scipy.stats.sem``; NaN under two items. lm-eval's ``mean_stderr``."""
    from scipy.stats import sem

    return float(sem(np.asarray(values, dtype=float))) if len(values) > 1 else float("nan")


def mean_with_stderr(name: str, values: Sequence[bool | float]) -> dict[str, float]:
    """{name: mean(values), name_stderr: stderr(values)}."""
    return {name: mean(values), f"{name}_stderr": stderr(values)}


def bootstrap_stderr(statistic, *samples: tuple, iters: int = 1000, seed: int = 0) -> float:
    """Bootstrap standard error of ``statistic``: the sample standard deviation of statistic(resample) over
    ``iters`` resamples. Each sample (a tuple of equally long columns, e.g. (correct, confidence)) is resampled by
    item with replacement, its columns together, independently of the other samples; ``statistic`` takes every
    sample's columns in order, each as an (iters, N) array, and returns one value per resample. Resamples where
    the statistic is undefined (NaN, e.g. AP of a resample without a correct item) are left out. NaN for
    ``iters`` 0 or under two items."""
    rng = np.random.default_rng(seed)
    columns = []
    for cols in samples:
        n = len(cols[0])
        if iters < 2 or n < 2:
            return float("nan")
        idx = rng.integers(0, n, size=(iters, n))
        columns += [np.asarray(c, dtype=float)[idx] for c in cols]
    values = np.asarray(statistic(*columns), dtype=float)
    values = values[~np.isnan(values)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")


def accuracy_by_bucket(values: Sequence[int], correct: Sequence[bool],
                       buckets=EXPOSURE_BUCKETS) -> dict[str, dict[str, float]]:
    """For each bucket [lo, hi] of ``values`` (e.g. exposure counts): n, mean(correct) over its items and its
    standard error."""
    v, c = np.asarray(values), np.asarray(correct, dtype=float)
    out = {}
    for lo, hi in buckets:
        m = (v >= lo) & (v <= (hi if hi is not None else np.inf))
        if m.any():
            out[bucket_label(lo, hi)] = {"n": int(m.sum()), "accuracy": float(c[m].mean()), "stderr": stderr(c[m])}
    return out


def accuracy_by_decile(values: Sequence[float], correct: Sequence[bool], n: int = 10) -> list[dict]:
    """Items sorted by ``values`` (e.g. an entity's population, ascending) and cut into ``n`` groups of (nearly)
    equal size (``numpy.array_split``; ties broken by order): per group, its value range, n, mean(correct) and the
    standard error — the points of a knowledge curve. Fewer groups when there are fewer than ``n`` items."""
    order = np.argsort(np.asarray(values, dtype=float), kind="stable")
    v, c = np.asarray(values, dtype=float)[order], np.asarray(correct, dtype=float)[order]
    return [{"decile": b + 1, "lo": float(g[0]), "hi": float(g[-1]), "n": len(g), "accuracy": float(c[i].mean()),
             "stderr": stderr(c[i])}
            for b, (i, g) in enumerate((i, v[i]) for i in np.array_split(np.arange(len(v)), min(n, len(v))))
            if len(i)]


# --- hallucination -------------------------------------------------------------------------------------------------

def hallucination_items(correct: Sequence[bool], refused: Sequence[bool], known: Sequence[bool],
                        empty: Sequence[bool] | None = None) -> dict[str, list[bool]]:
    """The per-question flags whose means are the hallucination rates, over N questions:
    accuracy = mean(correct); refusal_rate = mean(refused); empty_rate = mean(empty)   (nothing answered);
    hallucination_rate = mean(not refused and not empty and not correct)   (answered, and wrong);
    laziness = mean(refused | known)                           (refused although the fact is known to the model)."""
    c, r, k = (np.asarray(x, dtype=bool) for x in (correct, refused, known))
    e = np.zeros_like(c) if empty is None else np.asarray(empty, dtype=bool)
    return {"accuracy": list(c), "refusal_rate": list(r), "empty_rate": list(e),
            "hallucination_rate": list(~r & ~e & ~c), "laziness": list(r[k])}


def average_precision(correct, confidence):
    """AP of correctness ranked by confidence (descending): sum_n (R_n - R_{n-1}) * P_n, with precision P_n and
    recall R_n at the n-th distinct confidence threshold (tied items enter together), as
    ``sklearn.metrics.average_precision_score``. NaN without a correct item. Rows of 2-D inputs (bootstrap
    resamples) are scored independently."""
    y, p = np.atleast_2d(np.asarray(correct, dtype=float)), np.atleast_2d(np.asarray(confidence, dtype=float))
    order = np.argsort(-p, axis=1, kind="stable")
    y, p = np.take_along_axis(y, order, 1), np.take_along_axis(p, order, 1)
    n = y.shape[1]
    # every item takes the precision at the end of its group of tied confidences
    last = np.append(p[:, 1:] != p[:, :-1], np.ones((len(p), 1), bool), axis=1)
    end = np.minimum.accumulate(np.where(last, np.arange(n), n)[:, ::-1], axis=1)[:, ::-1]
    precision = np.take_along_axis(np.cumsum(y, axis=1), end, 1) / (end + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (y * precision).sum(1) / y.sum(1)
    return float(ap[0]) if np.ndim(correct) == 1 else ap


def reliability_bins(correct: Sequence[bool], confidence: Sequence[float], n_bins: int = 10) -> list[dict]:
    """Equal-width confidence bins B_b = [b/n, (b+1)/n) (the last one closed): n, accuracy and mean confidence of
    the items in each non-empty bin — the points of a reliability diagram."""
    c, p = np.asarray(correct, dtype=float), np.asarray(confidence, dtype=float)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    return [{"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": int((idx == b).sum()),
             "accuracy": float(c[idx == b].mean()), "confidence": float(p[idx == b].mean())}
            for b in range(n_bins) if (idx == b).any()]


def expected_calibration_error(correct, confidence, n_bins: int = 10):
    """ECE = sum_b |B_b|/N * |accuracy(B_b) - mean confidence(B_b)| over the equal-width bins of
    ``reliability_bins`` = (1/N) sum_b |sum_{i in B_b} (c_i - p_i)|. Rows of 2-D inputs are scored independently."""
    c, p = np.atleast_2d(np.asarray(correct, dtype=float)), np.atleast_2d(np.asarray(confidence, dtype=float))
    rows, n = c.shape
    if n == 0:
        return float("nan")
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1) + n_bins * np.arange(rows)[:, None]
    gap = np.bincount(idx.ravel(), (c - p).ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
    ece = np.abs(gap).sum(1) / n
    return float(ece[0]) if np.ndim(correct) == 1 else ece


def geometric_mean_prob(token_logprobs: Sequence[float]) -> float:
    """(prod_t p_t)^(1/T) = exp(mean_t log p_t): R-Tuning's answer confidence from the generated tokens'
    (maximum) probabilities."""
    return float(np.exp(np.mean(token_logprobs))) if len(token_logprobs) else float("nan")


def sure_probability(logp_sure: float, logp_unsure: float) -> float:
    """p(sure) / (p(sure) + p(unsure)) from the two next-token log-probabilities after "... I am"."""
    return float(1.0 / (1.0 + np.exp(logp_unsure - logp_sure)))


# --- forgetting ----------------------------------------------------------------------------------------------------

def truth_ratio(paraphrased_nll: float, perturbed_nll: Sequence[float]) -> float:
    """TR = exp(-mean_j nll(perturbed_j)) / exp(-nll(paraphrased)), nll = mean token NLL of an answer: the geometric
    mean of the perturbed answers' normalised probabilities over the paraphrased answer's (open-unlearning)."""
    return float(np.exp(paraphrased_nll - np.mean(perturbed_nll)))


def truth_ratio_items(ratios: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-question scores whose means are the truth-ratio aggregates:
    truth_ratio_closer_to_1 = min(TR_i, 1/TR_i) (forget set: mean near 1 = the model cannot tell true from false);
    truth_ratio_true_better = max(0, 1 - TR_i) (retain set: high = the true answer is clearly preferred)."""
    r = np.asarray(ratios, dtype=float)
    return {"truth_ratio_closer_to_1": np.minimum(r, 1.0 / r), "truth_ratio_true_better": np.maximum(0.0, 1.0 - r)}


def forget_quality(ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """p-value of the two-sample Kolmogorov-Smirnov test between the candidate's forget-set truth ratios and those
    of a reference model never trained on the forget set (``scipy.stats.ks_2samp``); high = indistinguishable."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(ratios, reference_ratios).pvalue)


def min_k_prob_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-k% prob membership score: -mean of the lowest max(1, floor(k*T)) token log-probs (higher = less likely a
    training member)."""
    lp = np.sort(np.asarray(token_logprobs, dtype=float))
    return float(-lp[: max(1, int(k * len(lp)))].mean())


def mia_auc(member_scores, nonmember_scores):
    """ROC AUC of telling non-members (label 1) from members (label 0) by the score:
    P(score(non-member) > score(member)) + P(tie) / 2 = (sum of the non-members' ranks - n1 (n1 + 1) / 2) / (n0 n1)
    with ties given their mean rank (Mann-Whitney U); 0.5 = no membership signal. Rows of 2-D inputs are scored
    independently."""
    from scipy.stats import rankdata

    m, x = np.atleast_2d(np.asarray(member_scores, float)), np.atleast_2d(np.asarray(nonmember_scores, float))
    n0, n1 = m.shape[1], x.shape[1]
    ranks = rankdata(np.concatenate([m, x], axis=1), axis=1)[:, n0:]
    auc = (ranks.sum(1) - n1 * (n1 + 1) / 2) / (n0 * n1)
    return float(auc[0]) if np.ndim(member_scores) == 1 else auc


# Membership-inference scores after open-unlearning (locuslab/open-unlearning d3d7cf9, ``src/evals/metrics/mia/``):
# each signed so that higher = less likely a training member, as the loss; ``mia_auc`` of members against
# non-members is then open-unlearning's ``mia_auc`` (``mia/utils.py``: roc_auc_score with the holdout labelled 1).

def loss_score(token_logprobs: Sequence[float]) -> float:
    """LOSS attack (Yeom et al. 2018): the mean token NLL, -mean_t log p(x_t | x_<t) (open-unlearning
    ``mia/loss.py``: ``evaluate_probability``'s ``avg_loss``)."""
    return float(-np.mean(token_logprobs))


def zlib_score(token_logprobs: Sequence[float], text: str) -> float:
    """zlib attack (Carlini et al. 2021): loss_score / len(zlib.compress(text.encode("utf-8"))), the mean token NLL
    over the byte length of the answer text compressed at zlib's default level (open-unlearning ``mia/zlib.py``)."""
    import zlib

    return loss_score(token_logprobs) / len(zlib.compress(text.encode("utf-8")))


MIN_SIGMA = 1e-3  # open-unlearning clamps the variance at 1e-6 before its square root


def min_k_plus_plus_score(token_logprobs: Sequence[float], mu: Sequence[float], sigma: Sequence[float],
                          k: float = 0.4) -> float:
    """Min-K%++ (Zhang et al., arXiv 2404.02936): per token z_t = (log p(x_t) - mu_t) / max(sigma_t, 1e-3), with
    mu_t = sum_v p(v) log p(v) and sigma_t = sqrt(sum_v p(v) log^2 p(v) - mu_t^2) under the model's next-token
    distribution p at position t (the max is open-unlearning's clamp of sigma_t^2 at 1e-6); the score is -mean of the
    lowest max(1, floor(k T)) of the z_t (open-unlearning ``mia/min_k_plus_plus.py``). NaN where a sigma_t or mu_t
    is (an engine without the vocabulary distribution)."""
    z = (np.asarray(token_logprobs, float) - np.asarray(mu, float)) / np.maximum(np.asarray(sigma, float), MIN_SIGMA)
    if np.isnan(z).any():
        return float("nan")
    return float(-np.sort(z)[: max(1, int(k * len(z)))].mean())


def reference_score(token_logprobs: Sequence[float], reference_logprobs: Sequence[float]) -> float:
    """Reference attack: loss_score under the target model - loss_score under a reference model on the same tokens
    (open-unlearning ``mia/reference.py``: target ``avg_loss`` - reference ``avg_loss``)."""
    return loss_score(token_logprobs) - loss_score(reference_logprobs)


def grad_norm_score(param_grad_norms: Sequence[float]) -> float:
    """GradNorm attack (arXiv 2402.17012): mean_j ||g_j||_2 over the parameters j that get a gradient g_j of the
    sample's mean token NLL, each parameter's norm apart, not one norm over all (open-unlearning ``mia/gradnorm.py``,
    p = 2 as its configs set; its score is this mean, positive, whatever its docstring says)."""
    return float(np.mean(param_grad_norms))


def privleak(auc: float, reference_auc: float = 0.5) -> float:
    """privleak = ((1 - AUC) - (1 - AUC_ref)) / ((1 - AUC_ref) + 1e-10) * 100, AUC the min-k% MIA AUC of the model,
    AUC_ref a retain-only model's, 0.5 without one (open-unlearning ``src/evals/metrics/privacy.py``, ``privleak``
    with ``ref_value`` 0.5 of ``configs/eval/tofu_metrics/privleak.yaml``): 0 = the retain model's leak; negative =
    members easier to tell from non-members than under the retain model (under-unlearning), positive = harder."""
    return ((1 - auc) - (1 - reference_auc)) / ((1 - reference_auc) + 1e-10) * 100


def exact_memorization(argmax_matches: Sequence[bool]) -> float:
    """EM = (1/T) sum_t 1[argmax_v p(v | x_<t) = x_t] over the T answer tokens, teacher-forced (open-unlearning
    ``src/evals/metrics/memorization.py``, ``exact_memorization``)."""
    return float(np.mean(np.asarray(argmax_matches, dtype=bool)))


def extraction_strength(argmax_matches: Sequence[bool]) -> float:
    """ES = 1 - k/T over the T answer tokens, k the smallest k in 0..T-1 such that the teacher-forced argmax equals
    the label at every token from k on; k = T - 1 when there is none (open-unlearning ``memorization.py``,
    ``extraction_strength``: its loop ends there), so ES is at least 1/T and 1 when every token matches."""
    m = [bool(x) for x in argmax_matches]
    k = next((k for k in range(len(m)) if all(m[k:])), len(m) - 1)
    return 1 - k / len(m)


def model_utility(values: Sequence[float]) -> float:
    """The harmonic mean n / sum_i 1/x_i of non-negative values (0 if one is 0; ``scipy.stats.hmean``): TOFU's
    model utility over its utility metrics (open-unlearning ``src/evals/metrics/utility.py``, ``hm_aggregate``).
    Rows of a 2-D input (bootstrap resamples) are aggregated independently."""
    from scipy.stats import hmean

    out = hmean(np.asarray(values, dtype=float), axis=-1)
    return float(out) if np.ndim(values) == 1 else out


def perplexity(nlls: Sequence[float]) -> dict[str, float]:
    """{perplexity: exp(mean_i nll_i), perplexity_stderr: exp(mean_i nll_i) * stderr(nll)} over answers i, nll_i the
    answer's mean token NLL (``loss_score``): the geometric mean of the answers' own perplexities exp(nll_i), whose
    arithmetic mean one unlikely answer would swamp; the standard error by the delta method."""
    ppl = float(np.exp(np.mean(nlls))) if len(nlls) else float("nan")
    return {"perplexity": ppl, "perplexity_stderr": ppl * stderr(nlls)}


# --- flips ---------------------------------------------------------------------------------------------------------

def flip_items(ref_correct: Sequence[bool], cand_correct: Sequence[bool], ref_answers: Sequence[str],
               cand_answers: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-item flags against a reference (old) model on the same N items; the rates are their means:
    negative_flip_rate = (1/N) sum 1[ref right and candidate wrong];
    positive_flip_rate = (1/N) sum 1[ref wrong and candidate right];
    inconsistency_flip_rate = (1/N) sum 1[candidate wrong and candidate answer != reference answer];
    agreement = (1/N) sum 1[candidate answer == reference answer] (answers compared after normalize)."""
    rc, cc = np.asarray(ref_correct, dtype=bool), np.asarray(cand_correct, dtype=bool)
    same = np.array([normalize(a) == normalize(b) for a, b in zip(ref_answers, cand_answers)], dtype=bool)
    return {"negative_flip_rate": rc & ~cc, "positive_flip_rate": ~rc & cc, "inconsistency_flip_rate": ~cc & ~same,
            "agreement": same}


def similarity_flip_items(ref_similarity: Sequence[float], cand_similarity: Sequence[float]) -> dict[str, np.ndarray]:
    """Flips of generated text scored by a similarity S to the target, D_i = S(candidate_i) - S(reference_i); the
    metrics are the means of these per-item values:
    positive_flip_rate = (1/N) sum 1[D_i > 0]; negative_flip_rate = (1/N) sum 1[D_i < 0];
    mean_gain = mean of D_i over D_i > 0; mean_regression = mean of |D_i| over D_i < 0 (NaN when none)."""
    d = np.asarray(cand_similarity, dtype=float) - np.asarray(ref_similarity, dtype=float)
    return {"positive_flip_rate": d > 0, "negative_flip_rate": d < 0, "mean_gain": d[d > 0],
            "mean_regression": -d[d < 0]}


# --- reasoning -----------------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, the Codex paper):
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) for numerical stability."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
