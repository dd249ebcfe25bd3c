import json
import math

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


class FakeEngine:
    def __init__(self):
        self.calls = []

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=24, seed=0, stop=()):
        self.calls.append("generate")
        return [[ANSWERS[p]] * n for p in prompts]

    def score(self, prompts, continuations):
        self.calls.append("score")
        return [LOGPROBS[pc] for pc in zip(prompts, continuations)]


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
    assert eng.calls == ["generate", "score"]  # everything batched
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
    assert samples[2] == {"split": "retain", "doc_id": 0, "prompt": "q3", "target": " X lives in Y .",
                          "response": "X lives in Z .", "exact_match": False, "refused": False, "junk": False,
                          "rouge_l_recall": pytest.approx(0.75), "truth_ratio": pytest.approx(math.exp(-2)),
                          "answer_prob": pytest.approx(math.exp(-1)), "min_k_score": 1.0, "fact_id": 3}
    res, _ = forgetting.evaluate(FakeEngine(), DatasetDict({"forget": DD["forget"]}), ["forget"])
    assert math.isnan(res["forget"]["forget_quality"]) and math.isnan(res["forget"]["mia_auc"])


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
    # a model compared with itself as the retain reference: identical forget TRs, forget quality 1
    out = tmp_path / "eval"
    out.mkdir()
    config = {"version": forgetting.VERSION, "splits": list(res), "generation": {}, "options": {}}
    report.write(out, {"forgetting": res}, {"forgetting": samples}, {"model": str(tiny_run)}, {"forgetting": config},
                 {})
    again, _ = forgetting.evaluate(eng, dd, ["forget"], max_tokens=8, retain_logs=out)
    assert again["forget"]["forget_quality"] == pytest.approx(1.0)


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
