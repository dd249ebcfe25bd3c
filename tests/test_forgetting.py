import json
import math
import zlib

import numpy as np
import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from posttrain.core.errors import UsageError
from posttrain.data_gen import kg
from posttrain.evals import forgetting, report
from posttrain.gen import fingerprint

SMALL = dict(n_persons=40, n_companies=8, n_cities=8, n_countries=3, n_years=10, n_forget_persons=3)
NEW = ("paraphrased_answer", "perturbed_answers")
# fingerprint of kg.Config(**SMALL) without the truth-ratio columns, as generated before they existed: adding them
# must not move any other draw (the README's measured numbers depend on the seed's graph, corpus and splits)
SMALL_OLD_FINGERPRINT = "b8bfe1051a34abbcd38e34166a3acb4483f2d6a90def79c44172d9f9a0f662f7"


def without_new_columns(dd: DatasetDict) -> DatasetDict:
    return DatasetDict({s: d.remove_columns([c for c in NEW if c in d.column_names]) for s, d in dd.items()})


def test_kg_truth_ratio_answers_are_statements_with_wrong_objects_of_the_right_type():
    cfg = kg.Config(**SMALL)
    dd = kg.generate(cfg)
    ents = kg.entities(cfg)
    by_fact = {r["fact_id"]: r for r in dd["seen"]}
    for split in ("seen", "unseen", "forget", "boundary", "retain"):
        assert set(NEW) <= set(dd[split].column_names)
        for r in dd[split]:
            statement = " " + kg.RELATIONS[r["relation"]][2]
            assert r["paraphrased_answer"] == statement.format(s=r["entity"], o=r["answer"])
            wrong = {statement.format(s=r["entity"], o=o) for o in ents[r["answer_type"]] if o != r["answer"]}
            assert len(r["perturbed_answers"]) == 2  # 3 countries: at most 2 wrong ones, in every row
            assert len(set(r["perturbed_answers"])) == 2 and set(r["perturbed_answers"]) <= wrong
            if r["fact_id"] in by_fact:  # a fact has the same answers in every split that holds it
                assert r["perturbed_answers"] == by_fact[r["fact_id"]]["perturbed_answers"]
    assert fingerprint(without_new_columns(dd)) == SMALL_OLD_FINGERPRINT
    more = kg.generate(kg.Config(**{**SMALL, "n_countries": 8, "n_perturbed": 4}))
    assert {len(p) for p in more["seen"]["perturbed_answers"]} == {4}
    assert fingerprint(without_new_columns(kg.generate(kg.Config(**SMALL, n_perturbed=1)))) == SMALL_OLD_FINGERPRINT


def qa_rows(*rows):
    return Dataset.from_list([dict(zip(("prompt", "completion", "paraphrased_answer", "perturbed_answers", "fact_id"),
                                       r)) for r in rows])


# forget: q1 answered right; q2 refused. retain: q3 half right. unseen: non-members, scored only on their gold answer
DD = DatasetDict({
    "forget": qa_rows(("q1", " A .", " s A .", [" s B .", " s C ."], 1),
                      ("q2", " D .", " t D .", [" t E .", " t F ."], 2)),
    "retain": qa_rows(("q3", " X lives in Y .", " X lives in Y .", [" X lives in Z .", " X lives in W ."], 3)),
    "unseen": qa_rows(("u1", " G .", " G .", [" H .", " I ."], 4), ("u2", " J .", " J .", [" K .", " L ."], 5)),
})
ANSWERS = {"q1": "A .", "q2": "I do not know about t .", "q3": "X lives in Z ."}
LOGPROBS = {  # hand-set per-token log-probs of (question, continuation)
    ("q1", " A ."): [-0.1, -0.3], ("q1", " s A ."): [-1.0], ("q1", " s B ."): [-2.0], ("q1", " s C ."): [-4.0],
    ("q2", " D ."): [-0.2, -0.5], ("q2", " t D ."): [-2.0], ("q2", " t E ."): [-1.0], ("q2", " t F ."): [-1.0],
    ("q3", " X lives in Y ."): [-1.0, -1.0], ("q3", " X lives in Z ."): [-3.0], ("q3", " X lives in W ."): [-3.0],
    ("u1", " G ."): [-2.0, -0.1], ("u2", " J ."): [-0.4, -0.4],
}


# the gold answers' token stats (``Engine.token_stats``): teacher-forced argmax flags, and the vocabulary mean and
# std of log p (u2's std under the 1e-3 floor); per-parameter gradient norms; log-probs under a reference model
ARGMAX = {" A .": [True, True], " D .": [False, True], " X lives in Y .": [True, False], " G .": [False, False],
          " J .": [True, True]}
STD = {" A .": [0.1, 0.1], " D .": [1.0, 1.0], " X lives in Y .": [1.0, 1.0], " G .": [1.0, 1.0],
       " J .": [0.0005, 0.0005]}
NORMS = {" A .": [1.0, 3.0], " D .": [1.0], " X lives in Y .": [3.0], " G .": [4.0], " J .": [1.0, 2.0]}
REFERENCE = {" A .": [-3.0, -3.0], " D .": [-0.1, -0.1], " X lives in Y .": [-0.5, -0.5], " G .": [-1.0, -1.0],
             " J .": [-0.2, -0.2]}


class FakeEngine:
    def __init__(self, logprobs=LOGPROBS):
        self.calls, self.logprobs = [], logprobs

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=24, seed=0, stop=()):
        self.calls.append("generate")
        return [[ANSWERS[p]] * n for p in prompts]

    def score(self, prompts, continuations):
        self.calls.append("score")
        return [self.logprobs[pc] for pc in zip(prompts, continuations)]

    def token_stats(self, prompts, continuations):
        self.calls.append("token_stats")
        return [{"logprobs": LOGPROBS[p, c], "argmax": ARGMAX[c], "mean": [-1.0] * len(ARGMAX[c]), "std": STD[c]}
                for p, c in zip(prompts, continuations)]

    def grad_norms(self, prompts, continuations):
        self.calls.append("grad_norms")
        return [NORMS[c] for c in continuations]


class VLLMLike(FakeEngine):
    """What the vLLM engine gives: no vocabulary moments, no gradients."""

    grad_norms = None

    def token_stats(self, prompts, continuations):
        return [{**s, "mean": [math.nan] * len(s["mean"]), "std": [math.nan] * len(s["std"])}
                for s in super().token_stats(prompts, continuations)]


def write_retain_logs(path, rows):
    path.mkdir()
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_suite_numbers_equal_hand_computations(tmp_path):
    # the retain model's forget TRs (10, 20; matched by fact_id, whatever their order) both exceed the candidate's:
    # KS D = 1, exact p = 2 / C(4, 2) = 1/3; rows of other suites or splits must not count
    logs = write_retain_logs(tmp_path / "retain_eval", [
        *({"suite": "forgetting", "split": "forget", "doc_id": i, "fact_id": f, "truth_ratio": tr}
          for i, (f, tr) in enumerate(((2, 20), (1, 10)))),
        {"suite": "forgetting", "split": "retain", "doc_id": 0, "truth_ratio": 0.01},
        {"suite": "qa", "split": "forget", "doc_id": 0, "exact_match": True}])
    eng = FakeEngine()
    res, samples = forgetting.evaluate(eng, DD, ["forget", "retain"], retain_logs=logs)
    assert eng.calls == ["generate", "score", "token_stats", "grad_norms"]  # everything batched
    tr = [math.exp(1.0 - 3.0), math.exp(2.0 - 1.0)]  # exp(nll(paraphrased) - mean_j nll(perturbed_j))
    f, r = res["forget"], res["retain"]
    assert [s["truth_ratio"] for s in samples[:2]] == pytest.approx(tr)
    assert f["truth_ratio"] == f["truth_ratio_closer_to_1"] == pytest.approx((math.exp(-2) + math.exp(-1)) / 2)
    assert f["truth_ratio_true_better"] == pytest.approx((1 - math.exp(-2)) / 2)
    assert f["answer_prob"] == pytest.approx((math.exp(-0.2) + math.exp(-0.35)) / 2)
    assert f["forget_quality"] == pytest.approx(1 / 3)
    # min-k (k=0.4, 2 tokens -> the lowest 1): members 0.3, 0.5; non-members 2.0, 0.4 -> 3 of 4 pairs ordered
    assert f["mia_auc"] == pytest.approx(0.75)
    assert (f["exact_match"], f["refusal_rate"], f["rouge_l_recall"]) == (0.5, 0.5, 0.5)
    assert (f["wrong_rate"], f["junk_rate"], r["wrong_rate"], r["junk_rate"]) == (0.0, 0.0, 1.0, 0.0)
    assert math.isnan(f["named_refusal_rate"])  # no entity column
    assert r["truth_ratio"] == r["truth_ratio_true_better"] == pytest.approx(1 - math.exp(1.0 - 3.0))
    assert r["rouge_l_recall"] == pytest.approx(3 / 4) and r["answer_prob"] == pytest.approx(math.exp(-1))
    assert math.isnan(r["forget_quality"]) and r["mia_auc"] == 0.5  # member 1.0 vs 2.0, 0.4
    assert math.isnan(samples[2].pop("reference_score"))  # no reference model
    assert samples[2] == {"split": "retain", "doc_id": 0, "prompt": "q3", "target": " X lives in Y .",
                          "response": "X lives in Z .", "exact_match": False, "refused": False, "junk": False,
                          "rouge_l_recall": pytest.approx(0.75), "truth_ratio": pytest.approx(math.exp(-2)),
                          "answer_prob": pytest.approx(math.exp(-1)), "loss_score": 1.0,
                          "zlib_score": pytest.approx(1 / len(zlib.compress(b" X lives in Y ."))), "min_k_score": 1.0,
                          "min_k_plus_plus_score": 0.0, "gradnorm_score": pytest.approx(math.nan, nan_ok=True),
                          "extraction_strength": 0.5, "exact_memorization": 0.5, "fact_id": 3}
    res, _ = forgetting.evaluate(FakeEngine(), DatasetDict({"forget": DD["forget"]}), ["forget"])
    assert math.isnan(res["forget"]["forget_quality"]) and math.isnan(res["forget"]["mia_auc"])


def test_the_other_attacks_memorization_privleak_and_utility_equal_hand_computations(tmp_path):
    """Members q1, q2 (forget) and q3 (retain) against the non-members u1, u2, per attack (higher = less likely a
    member; AUC = the share of (member, non-member) pairs the non-member scores higher in, ties half)."""
    logs = write_retain_logs(tmp_path / "retain_eval", [
        {"suite": "forgetting", "split": "forget", "doc_id": i, "fact_id": f, "truth_ratio": 1.0}
        for i, f in enumerate((1, 2))])
    (logs / "results.json").write_text(json.dumps({"results": {"forgetting/forget": {"mia_auc": 0.4,
                                                                                     "mia_min_k_auc": 0.6}}}))
    reference = FakeEngine({pc: REFERENCE[pc[1]] for pc in LOGPROBS if pc[1] in REFERENCE})
    res, samples = forgetting.evaluate(FakeEngine(), DD, ["forget", "retain"], retain_logs=logs, reference=reference)
    assert reference.calls == ["score"]
    f, r = res["forget"], res["retain"]
    # loss: members 0.2, 0.35 | 1.0; non-members 1.05, 0.4
    assert (f["mia_loss_auc"], r["mia_loss_auc"]) == (1.0, 0.5)
    zl = {c: -sum(LOGPROBS[q, c]) / 2 / len(zlib.compress(c.encode())) for q, c in
          (("q1", " A ."), ("q2", " D ."), ("u1", " G ."), ("u2", " J ."))}
    want = sum((zl[u] > zl[m]) + (zl[u] == zl[m]) / 2 for m in (" A .", " D .") for u in (" G .", " J .")) / 4
    assert f["mia_zlib_auc"] == want and [s["zlib_score"] for s in samples[:2]] == [zl[" A ."], zl[" D ."]]
    # min-k++ (mean -1): z = (lp + 1) / std, the lowest of 2 tokens: q1 7/0.1 -> -7, q2 -0.5; u1 1.0, u2 -0.6/1e-3
    assert [s["min_k_plus_plus_score"] for s in samples[:2]] == pytest.approx([-7.0, -0.5])
    assert f["mia_min_k_plus_plus_auc"] == 0.5
    # gradnorm = mean per-parameter norm: members 2, 1; non-members 4, 1.5; the forget split's alone (a backward
    # pass per answer), NaN on the others
    assert f["mia_gradnorm_auc"] == 0.75 and math.isnan(r["mia_gradnorm_auc"])
    assert math.isnan(samples[2]["gradnorm_score"]) and samples[0]["gradnorm_score"] == 2.0
    # reference = loss - reference loss: members -2.8, 0.25 | 0.5; non-members 0.05, 0.2
    assert f["mia_reference_auc"] == 0.5 and r["mia_reference_auc"] == 0.0
    assert f["mia_min_k_auc"] == f["mia_auc"] == 0.75 and f["mia_min_k_auc_stderr"] == f["mia_auc_stderr"]
    assert all(f[f"mia_{a}_auc_stderr"] >= 0 for a in forgetting.ATTACKS)
    # privleak from the min-k AUC against the retain model's forget AUC (results.json), else 0.5
    assert f["privleak_reference_auc"] == 0.6 and f["privleak"] == pytest.approx((0.25 - 0.4) / 0.4 * 100)
    assert f["privleak_stderr"] == pytest.approx(100 / 0.4 * f["mia_min_k_auc_stderr"])
    assert r["privleak_reference_auc"] == 0.5 and r["privleak"] == pytest.approx((0.5 - 0.5) / 0.5 * 100)
    # argmax flags: q1 all -> ES 1, EM 1; q2 the last -> ES 1/2, EM 1/2; q3 the first only -> ES 1/2 (k = T - 1)
    assert (f["extraction_strength"], f["exact_memorization"]) == (0.75, 0.75)
    assert (r["extraction_strength"], r["exact_memorization"]) == (0.5, 0.5)
    assert f["perplexity"] == pytest.approx(math.exp((0.2 + 0.35) / 2)) and r["perplexity"] == pytest.approx(math.e)
    # model utility: the retain split alone (not the forget split): its answer_prob, ROUGE-L recall, true_better
    values = [r["answer_prob"], r["rouge_l_recall"], r["truth_ratio_true_better"]]
    assert res["all"]["model_utility"] == pytest.approx(1 / np.mean(1 / np.array(values)))
    assert res["all"]["n"] == 1 and math.isnan(res["all"]["model_utility_stderr"])  # one question: no error
    extra = qa_rows(*(tuple(DD[s][0].values()) for s in ("retain", "forget")))  # q3 and q1 again, a 2-row split
    dd = DatasetDict({**DD, "extra": extra})
    more, _ = forgetting.evaluate(FakeEngine(), dd, ["forget", "retain", "extra"])
    extra_values = [more["extra"][k] for k in ("answer_prob", "rouge_l_recall", "truth_ratio_true_better")]
    assert more["all"]["model_utility"] == pytest.approx(1 / np.mean(1 / np.array(values + extra_values)))
    assert more["all"]["n"] == 3 and math.isnan(more["all"]["model_utility_stderr"])  # retain: one question
    two, _ = forgetting.evaluate(FakeEngine(), dd, ["forget", "extra"])
    assert two["all"]["model_utility"] == pytest.approx(1 / np.mean(1 / np.array(extra_values)))
    assert two["all"]["model_utility_stderr"] > 0
    held, _ = forgetting.evaluate(FakeEngine(), dd, ["forget", "retain", "extra"], holdout_split="retain")
    assert held["all"]["model_utility"] == pytest.approx(1 / np.mean(1 / np.array(extra_values)))  # no holdout
    assert set(forgetting.HIGHER_IS_BETTER) >= {k for x in res.values() for k in x if not k.endswith("_stderr")} - {
        "n", "privleak_reference_auc"}


def test_an_engine_without_moments_or_gradients_gives_nan_for_those_attacks_only():
    """vLLM: no vocabulary distribution (Min-K%++), no gradients (GradNorm); nothing raises."""
    res, samples = forgetting.evaluate(VLLMLike(), DD, ["forget", "retain"])
    f = res["forget"]
    for key in ("mia_min_k_plus_plus_auc", "mia_gradnorm_auc", "mia_reference_auc"):
        assert math.isnan(f[key]) and math.isnan(f[f"{key}_stderr"])
    assert math.isnan(samples[0]["min_k_plus_plus_score"]) and math.isnan(samples[0]["gradnorm_score"])
    assert f["mia_loss_auc"] == 1.0 and f["mia_min_k_auc"] == 0.75 and f["privleak"] == pytest.approx(-50.0)
    assert f["extraction_strength"] == 0.75  # the argmax flags need no vocabulary moments
    res, _ = forgetting.evaluate(FakeEngine(), DatasetDict({"forget": DD["forget"]}), ["forget"])
    assert all(math.isnan(res["forget"][f"mia_{a}_auc"]) for a in forgetting.ATTACKS)  # no holdout split
    assert math.isnan(res["forget"]["privleak"]) and "all" not in res  # no utility split


def test_retain_aucs_of_older_outputs_and_a_split_named_all(tmp_path):
    logs = write_retain_logs(tmp_path / "old", [])
    assert forgetting.retain_aucs(logs) == {}  # no results.json: privleak against 0.5
    (logs / "results.json").write_text(json.dumps({"results": {"forgetting/forget": {"mia_auc": 0.7},
                                                               "qa/forget": {"exact_match": 1.0}}}))
    assert forgetting.retain_aucs(logs / "samples.jsonl") == {"forget": 0.7}  # version 4 named it mia_auc
    (logs / "results.json").write_text("not json")
    with pytest.raises(UsageError, match="not a `posttrain eval` results file"):
        forgetting.retain_aucs(logs)
    with pytest.raises(UsageError, match="a split named 'all' clashes"):
        forgetting.evaluate(FakeEngine(), DatasetDict({"all": DD["retain"]}), ["all"])


def test_named_refusals_and_junk_are_counted_per_answer():
    forget = DD["forget"].add_column("entity", ["s", "t"])
    eng = FakeEngine()
    res, _ = forgetting.evaluate(eng, DatasetDict({"forget": forget}), ["forget"])
    assert res["forget"]["named_refusal_rate"] == 0.5  # q2's refusal names t
    junk = {"q1": "A A A", "q2": "I do not know about s ."}  # unfinished + repeated; names the wrong one
    eng.generate = lambda prompts, **kw: [[junk[p]] for p in prompts]
    res, _ = forgetting.evaluate(eng, DatasetDict({"forget": forget}), ["forget"])
    f = res["forget"]
    assert (f["junk_rate"], f["named_refusal_rate"], f["wrong_rate"]) == (0.5, 0.0, 0.5)


def test_bad_retain_logs_fail_before_any_model_work(tmp_path):
    empty = write_retain_logs(tmp_path / "qa_only", [{"suite": "qa", "split": "forget", "doc_id": 0}])
    for logs, match in ((tmp_path / "missing", "retain logs not found"), (empty, "no forgetting-suite samples")):
        eng = FakeEngine()
        with pytest.raises(UsageError, match=match):
            forgetting.evaluate(eng, DD, ["forget"], retain_logs=logs)
        assert eng.calls == []


def test_retain_logs_of_other_questions_are_one_line_errors(tmp_path):
    """Logs of another graph seed or --limit hold other facts: a KS p-value over them would compare nothing."""
    def logs(name, facts):
        return write_retain_logs(tmp_path / name, [{"suite": "forgetting", "split": "forget", "doc_id": i,
                                                    "fact_id": f, "truth_ratio": 1.0} for i, f in enumerate(facts)])

    for name, facts in (("other_seed", (1, 7)), ("more", (1, 2, 3)), ("fewer", (1,))):
        with pytest.raises(UsageError, match="cover other forget questions"):
            forgetting.evaluate(FakeEngine(), DD, ["forget"], retain_logs=logs(name, facts))


@pytest.mark.slow
def test_tiny_model_knows_its_training_facts_and_matches_itself_as_retain_reference(tiny_run, tiny_kg, tmp_path):
    from posttrain.evals.hf_engine import HFEngine

    eng = HFEngine(str(tiny_run))
    dd = load_from_disk(str(tiny_kg))
    res, samples = forgetting.evaluate(eng, dd, ["forget", "retain", "boundary", "unseen"], max_tokens=8)
    assert [res[s]["n"] for s in ("forget", "retain", "boundary")] == [len(dd[s]) for s in ("forget", "retain",
                                                                                               "boundary")]
    assert res["forget"]["answer_prob"] > res["unseen"]["answer_prob"]
    assert res["retain"]["answer_prob"] > res["unseen"]["answer_prob"]
    assert res["retain"]["mia_auc"] > 0.5 and res["unseen"]["mia_auc"] == 0.5
    assert all(0 <= s["answer_prob"] <= 1 and s["truth_ratio"] > 0 for s in samples)
    for a in ("loss", "zlib", "min_k_plus_plus", "gradnorm"):  # every attack but the reference one runs on HF
        assert math.isfinite(res["forget"][f"mia_{a}_auc"]), a
    for a in ("loss", "zlib", "min_k_plus_plus"):  # gradnorm: the forget split's alone
        assert res["unseen"][f"mia_{a}_auc"] == 0.5 and math.isfinite(res["retain"][f"mia_{a}_auc"]), a
    assert math.isnan(res["retain"]["mia_gradnorm_auc"])
    assert math.isnan(res["retain"]["mia_reference_auc"]) and 0 < res["all"]["model_utility"] < 1
    assert 0 < res["retain"]["extraction_strength"] <= 1 and res["retain"]["perplexity"] > 1
    # a model compared with itself as the retain reference: identical forget TRs, forget quality 1
    out = tmp_path / "eval"
    out.mkdir()
    config = {"version": forgetting.VERSION, "splits": list(res), "generation": {}, "options": {}}
    report.write(out, {"forgetting": res}, {"forgetting": samples}, {"model": str(tiny_run)}, {"forgetting": config},
                 {})
    again, _ = forgetting.evaluate(eng, dd, ["forget"], max_tokens=8, retain_logs=out)
    assert again["forget"]["forget_quality"] == pytest.approx(1.0)
    assert again["forget"]["privleak_reference_auc"] == res["forget"]["mia_min_k_auc"]  # from its results.json
    assert again["forget"]["privleak"] == pytest.approx(0.0, abs=1e-6)


def test_the_forget_and_holdout_splits_are_the_ones_named(tmp_path):
    """TOFU names its non-members holdout: with holdout_split naming it, the MIA AUC and forget quality are those of
    the testbed names (hand-computed above); without, the holdout split does not count (NaN)."""
    logs = write_retain_logs(tmp_path / "retain_eval", [
        {"suite": "forgetting", "split": "forget10", "doc_id": i, "fact_id": f, "truth_ratio": tr}
        for i, (f, tr) in enumerate(((2, 20), (1, 10)))])
    dd = DatasetDict({"forget10": DD["forget"], "retain": DD["retain"], "holdout": DD["unseen"]})
    res, samples = forgetting.evaluate(FakeEngine(), dd, ["forget10", "retain"], retain_logs=logs,
                                       forget_split="forget10", holdout_split="holdout")
    f = res["forget10"]
    assert f["mia_auc"] == pytest.approx(0.75) and f["forget_quality"] == pytest.approx(1 / 3)
    assert f["truth_ratio"] == f["truth_ratio_closer_to_1"] and res["retain"]["mia_auc"] == 0.5
    res, _ = forgetting.evaluate(FakeEngine(), dd, ["forget10", "retain"])
    assert math.isnan(res["forget10"]["mia_auc"]) and math.isnan(res["forget10"]["forget_quality"])
    assert res["forget10"]["truth_ratio"] == res["forget10"]["truth_ratio_true_better"]  # not the forget split


def test_retain_logs_without_the_forget_split_evaluated_are_an_error(tmp_path):
    logs = write_retain_logs(tmp_path / "retain_eval", [
        {"suite": "forgetting", "split": "forget", "doc_id": 0, "fact_id": 1, "truth_ratio": 1.0}])
    eng = FakeEngine()
    with pytest.raises(UsageError, match="--retain_logs scores the forget split 'forget', which is not among the "
                                         r"evaluated splits \(retain\); name yours with --forget_split"):
        forgetting.evaluate(eng, DD, ["retain"], retain_logs=logs)
    assert eng.calls == []


def _with(ds, column, value, row=0):
    return ds.map(lambda r, i: {column: value} if i == row else {}, with_indices=True)


@pytest.mark.parametrize("split, column, value, message", [
    ("forget", "completion", "", "split 'forget', row 0: an empty completion"),
    ("retain", "paraphrased_answer", "  ", "split 'retain', row 0: an empty paraphrased_answer"),
    ("forget", "perturbed_answers", [" s B .", ""], "split 'forget', row 0: an empty perturbed_answers"),
    ("forget", "perturbed_answers", [], "perturbed_answers must be a list of at least one answer"),
    ("unseen", "completion", "", "split 'unseen', row 0: an empty completion"),  # the holdout's, not evaluated
])
def test_an_empty_answer_is_a_one_line_error_before_any_model_work(split, column, value, message):
    """An answer of no tokens has no mean NLL (it was a ZeroDivisionError, or a silent NaN answer_prob)."""
    dd = DatasetDict({**DD, split: _with(DD[split], column, value)})
    eng = FakeEngine()
    with pytest.raises(UsageError, match=message):
        forgetting.evaluate(eng, dd, ["forget", "retain"])
    assert eng.calls == []
