"""Metrics against hand-made cases and independent references."""

import itertools
import math
import zlib

import numpy as np
import pytest

from posttrain.evals import metrics as m


def test_average_precision_by_hand_and_by_the_precision_at_each_hit():
    assert m.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    rng = np.random.default_rng(0)
    y, s = rng.random(200) < 0.4, rng.random(200)  # continuous scores: no ties
    order = np.argsort(-s)
    hits = np.cumsum(y[order])
    by_hand = np.sum((hits / np.arange(1, 201))[y[order]]) / y.sum()
    assert m.average_precision(y, s) == pytest.approx(by_hand)
    assert math.isnan(m.average_precision([0, 0], [0.1, 0.2]))


def test_ece_and_reliability_bins_on_a_hand_case():
    correct, conf = [0, 1, 1, 1], [0.15, 0.25, 0.85, 0.95]
    assert m.expected_calibration_error(correct, conf) == pytest.approx((0.15 + 0.75 + 0.15 + 0.05) / 4)
    bins = m.reliability_bins(correct, conf)
    assert [(b["lo"], b["n"], b["accuracy"]) for b in bins] == [(0.1, 1, 0.0), (0.2, 1, 1.0), (0.8, 1, 1.0),
                                                                (0.9, 1, 1.0)]
    assert m.expected_calibration_error([1, 1], [1.0, 1.0]) == 0.0  # confidence 1.0 falls in the last bin


def test_pass_at_k_matches_the_formula_and_brute_force():
    for n, c in [(5, 0), (5, 2), (6, 3), (4, 4), (10, 1)]:
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
            formula = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert m.pass_at_k(n, c, k) == pytest.approx(brute) == pytest.approx(formula)
    assert m.pass_at_k(200, 13, 1) == pytest.approx(13 / 200)
    with pytest.raises(ValueError):
        m.pass_at_k(3, 4, 1)


def test_rouge_l_recall_is_lcs_over_target_length():
    assert m.rouge_l_recall("the cat on mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert m.rouge_l_recall("P3 was born in C2", "C2") == 1.0
    assert m.rouge_l_recall("I do not know", "C2") == 0.0


def test_truth_ratio_and_its_aggregates():
    tr = m.truth_ratio(1.0, [2.0, 3.0])
    pbar = lambda nll: math.exp(-nll)  # noqa: E731
    assert tr == pytest.approx(math.sqrt(pbar(2.0) * pbar(3.0)) / pbar(1.0))
    items = m.truth_ratio_items([0.5, 2.0])
    assert list(items["truth_ratio_closer_to_1"]) == [0.5, 0.5] and list(items["truth_ratio_true_better"]) == [0.5, 0]


def test_forget_quality_is_the_ks_p_value():
    assert m.forget_quality([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    # fully separated samples of 5 and 5: exact two-sided p = 2 / C(10, 5)
    assert m.forget_quality([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / math.comb(10, 5))


def test_min_k_prob_and_mia_auc():
    assert m.min_k_prob_score([-1, -2, -3, -4, -5], k=0.4) == pytest.approx(4.5)
    assert m.min_k_prob_score([-1.0], k=0.4) == pytest.approx(1.0)
    assert m.mia_auc([1, 2], [3, 4]) == 1.0 and m.mia_auc([3, 4], [1, 2]) == 0.0
    assert m.mia_auc([1, 3], [2, 2]) == pytest.approx(0.5)


def test_flip_rates_on_a_hand_case():
    ref_ok, cand_ok = [1, 1, 0, 0, 1], [1, 0, 1, 0, 0]
    ref, cand = ["a", "b", "x", "y", "c"], ["a", "z", "c", "w", "c "]
    out = {k: m.mean(v) for k, v in m.flip_items(ref_ok, cand_ok, ref, cand).items()}
    # item 1 and 4 are negative flips; item 4 repeats the reference answer, so it is no inconsistency flip
    assert out == {"negative_flip_rate": 0.4, "positive_flip_rate": 0.2, "inconsistency_flip_rate": 0.4,
                   "agreement": 0.4}


def test_similarity_flips_on_a_hand_case():
    out = {k: m.mean(v) for k, v in m.similarity_flip_items([0.5, 0.5, 0.5, 0.5], [0.9, 0.3, 0.5, 0.4]).items()}
    assert out["positive_flip_rate"] == 0.25 and out["negative_flip_rate"] == 0.5
    assert out["mean_gain"] == pytest.approx(0.4) and out["mean_regression"] == pytest.approx(0.15)


def test_hallucination_rates_and_confidences():
    items = m.hallucination_items(correct=[1, 0, 0, 0], refused=[0, 0, 1, 1], known=[1, 1, 1, 0])
    out = {k: m.mean(v) for k, v in items.items()}
    assert out == {"accuracy": 0.25, "refusal_rate": 0.5, "empty_rate": 0.0, "hallucination_rate": 0.25,
                   "laziness": pytest.approx(1 / 3)}
    # an empty answer is neither right nor a hallucination
    items = m.hallucination_items(correct=[1, 0, 0, 0], refused=[0, 0, 1, 1], known=[1, 1, 1, 0], empty=[0, 1, 0, 0])
    assert m.mean(items["hallucination_rate"]) == 0.0 and m.mean(items["empty_rate"]) == 0.25
    assert m.sure_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert m.geometric_mean_prob([math.log(0.5), math.log(0.125)]) == pytest.approx(0.25)


def test_contains_matches_whole_words():
    assert m.contains("C15 .", "C15")
    assert m.contains("P3 was born in C15 .", "C15")
    assert not m.contains("C15 .", "C1")  # a plain substring test would count it
    assert m.contains("born in New York .", "new york")
    assert not m.contains("anything .", "")


def test_answer_entropy_is_scipys_entropy_of_the_answer_counts():
    from scipy.stats import entropy

    assert m.answer_entropy(["a"] * 5) == 0.0
    assert m.answer_entropy(["a", "a", "b", "c", "a"]) == pytest.approx(entropy([3, 1, 1]))
    assert m.answer_entropy(list("abcde")) == pytest.approx(np.log(5))


def test_vectorised_ap_ece_and_auc_agree_with_sklearn_on_ties_and_rows():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 40))
        y, p = rng.random(n) < 0.4, np.round(rng.random(n), 1)  # rounded: many tied confidences
        if y.any():
            assert m.average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
        if y.any() and (~y).any():
            assert m.mia_auc(p[~y], p[y]) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        bins = m.reliability_bins(y, p)
        assert m.expected_calibration_error(y, p) == pytest.approx(
            sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins), abs=1e-12)
    rows_y, rows_p = rng.random((3, 20)) < 0.5, rng.random((3, 20))
    assert m.average_precision(rows_y, rows_p) == pytest.approx([m.average_precision(a, b)
                                                                 for a, b in zip(rows_y, rows_p)])


def test_stderr_is_the_binomial_one_for_flags_and_nan_for_one_item():
    flags = [1] * 30 + [0] * 70
    assert m.stderr(flags) == pytest.approx(math.sqrt(0.3 * 0.7 / 99))
    assert math.isnan(m.stderr([1])) and m.mean_with_stderr("x", [1, 0])["x_stderr"] == pytest.approx(0.5)


def test_bootstrap_stderr_matches_the_analytic_one_for_a_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    se = m.bootstrap_stderr(lambda a: a.mean(1), (x,), iters=4000, seed=0)
    assert se == pytest.approx(m.stderr(x), rel=0.05)
    assert m.bootstrap_stderr(lambda a: a.mean(1), (x,), iters=200, seed=3) == \
        m.bootstrap_stderr(lambda a: a.mean(1), (x,), iters=200, seed=3)
    assert math.isnan(m.bootstrap_stderr(lambda a: a.mean(1), (x,), iters=0))
    # AP's error shrinks with more items, and resamples without a correct item are left out
    y, p = rng.random(1000) < 0.3, rng.random(1000)
    small = m.bootstrap_stderr(m.average_precision, (y[:100], p[:100]))
    assert m.bootstrap_stderr(m.average_precision, (y, p)) < small


def _softmax_logp(logits):
    z = np.asarray(logits, float)
    return z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)


def test_min_k_plus_plus_against_a_direct_computation_from_a_softmax():
    rng = np.random.default_rng(0)
    logp = _softmax_logp(rng.normal(size=(7, 11)) * 3)  # 7 positions, a vocabulary of 11
    tokens = rng.integers(0, 11, size=7)
    lp = logp[np.arange(7), tokens]
    p = np.exp(logp)
    mu = (p * logp).sum(-1)
    sigma = np.sqrt((p * logp**2).sum(-1) - mu**2)
    z = np.sort([(lp[t] - mu[t]) / sigma[t] for t in range(7)])
    for k, lowest in ((0.4, 2), (0.2, 1), (1.0, 7), (0.01, 1)):
        assert m.min_k_plus_plus_score(lp, mu, sigma, k) == pytest.approx(-z[:lowest].mean())
    # a (near-)one-hot distribution: sigma under open-unlearning's floor sqrt(1e-6)
    assert m.min_k_plus_plus_score([-0.5], [-1.0], [1e-9], k=0.4) == pytest.approx(-0.5 / 1e-3)
    assert math.isnan(m.min_k_plus_plus_score([-1.0, -2.0], [-1.0, float("nan")], [1.0, float("nan")]))


def test_loss_zlib_reference_grad_norm_and_perplexity_scores():
    lp = [-0.5, -1.5, -1.0]
    assert m.loss_score(lp) == pytest.approx(1.0) and m.perplexity([1.0])["perplexity"] == pytest.approx(math.e)
    ppl = m.perplexity([1.0, 3.0])  # the geometric mean of e and e^3; delta-method error e^2 * sem
    assert ppl == pytest.approx({"perplexity": math.e ** 2, "perplexity_stderr": math.e ** 2 * 1.0})
    text = "Paris is the capital of France. " * 3
    assert m.zlib_score(lp, text) == pytest.approx(1.0 / len(zlib.compress(text.encode("utf-8"))))
    assert len(zlib.compress(text.encode("utf-8"))) < len(text)  # compressed, not the raw length
    assert m.reference_score(lp, [-2.0, -2.0]) == pytest.approx(1.0 - 2.0)
    assert m.grad_norm_score([3.0, 4.0, 2.0]) == pytest.approx(3.0)  # a mean of norms, not sqrt(9 + 16 + 4)


def test_privleak_on_given_aucs():
    assert m.privleak(0.5) == pytest.approx(0.0) and m.privleak(0.75) == pytest.approx(-50.0)
    assert m.privleak(0.25) == pytest.approx(50.0) and m.privleak(1.0) == pytest.approx(-100.0)
    assert m.privleak(0.9, reference_auc=0.8) == pytest.approx((0.1 - 0.2) / 0.2 * 100)
    assert m.privleak(0.8, reference_auc=0.8) == pytest.approx(0.0)
    assert m.privleak(0.9, reference_auc=1.0) == pytest.approx(0.1 / 1e-10 * 100)  # open-unlearning's epsilon


def test_extraction_strength_and_exact_memorization_on_hand_flags():
    T, F = True, False
    for flags, es, em in (([T, T, T, T], 1.0, 1.0), ([F, T, T, T], 0.75, 0.75), ([T, F, T, T], 0.5, 0.75),
                          ([T, T, T, F], 0.25, 0.75), ([F, F, F, F], 0.25, 0.0), ([F], 1.0, 0.0), ([T], 1.0, 1.0),
                          ([F, T], 0.5, 0.5), ([T, F, F], 1 / 3, 1 / 3)):
        # ES = 1 - k/T, k the first suffix start matched to the end, T - 1 when none (open-unlearning's loop)
        assert m.extraction_strength(flags) == pytest.approx(es), flags
        assert m.exact_memorization(flags) == pytest.approx(em), flags


def test_model_utility_is_the_harmonic_mean():
    x = [0.9, 0.5, 0.2, 0.7]
    assert m.model_utility(x) == pytest.approx(1 / np.mean(1 / np.array(x)))
    assert m.model_utility([0.4, 0.0, 0.9]) == 0.0
    rows = np.array([[0.5, 1.0], [0.25, 1.0]])
    assert m.model_utility(rows) == pytest.approx([2 / 3, 0.4])
