import json

import pytest
import torch

from conftest import cli
from posttrain.evals import hallucination
from posttrain.evals.hf_engine import HFEngine


def test_answer_confidence_from_engine_scores_equals_the_generation_time_max_probs(tiny_run, tiny_kg):
    """R-Tuning's confidence is the geometric mean of each generated token's max probability, read off
    generate(); the suite computes it from engine.score on the greedy answer: the two must agree."""
    from datasets import load_from_disk

    eng = HFEngine(str(tiny_run))
    prompts = list(load_from_disk(str(tiny_kg))["seen"]["prompt"][:6])
    answers = [a[0] for a in eng.generate(prompts, max_tokens=8, stop=(" .",))]
    conf = hallucination.confidences(eng, prompts, answers)
    for p, a, c in zip(prompts, answers, conf["answer"]):
        span = a.strip()
        if not span:
            assert c == 0.0
            continue
        enc = eng.tok(p, return_tensors="pt")
        n_tokens = len(eng.tok(p + " " + span)["input_ids"]) - enc["input_ids"].shape[1]
        out = eng.model.generate(**enc, max_new_tokens=n_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=eng.tok.pad_token_id)
        max_probs = [torch.softmax(s[0], -1).max().item() for s in out.scores]
        assert c == pytest.approx(torch.tensor(max_probs).log().mean().exp().item(), rel=1e-4)
    assert all(0.0 <= x <= 1.0 for k in hallucination.CONFIDENCES for x in conf[k])


def test_eval_runs_several_suites_with_one_engine(capsys, tiny_run, tiny_kg, tmp_path):
    out = tmp_path / "eval"
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--suite", "qa,hallucination", "--splits", "seen,unseen",
               "--output", out, "--engine", "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hallucination:" in proc.stdout and "ap_sure" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert {"qa/seen", "qa/unseen", "hallucination/seen", "hallucination/unseen", "hallucination/all"} == set(
        res["results"])
    pooled, unseen = res["results"]["hallucination/all"], res["results"]["hallucination/unseen"]
    h = res["results"]["hallucination/seen"]
    assert pooled["n"] == h["n"] + unseen["n"]
    assert pooled["accuracy"] == pytest.approx((h["accuracy"] * h["n"] + unseen["accuracy"] * unseen["n"])
                                               / pooled["n"])
    assert h["accuracy"] == pytest.approx(res["results"]["qa/seen"]["exact_match"])
    # every answer is right, refused, or a hallucination (a gold answer is never a refusal)
    assert h["hallucination_rate"] + h["refusal_rate"] + h["accuracy"] == pytest.approx(1.0)
    assert (out / "hallucination_reliability.png").stat().st_size > 1000
    assert "hallucination_reliability.png" in (out / "report.md").read_text()
    suites = {json.loads(x)["suite"] for x in (out / "samples.jsonl").read_text().splitlines()}
    assert suites == {"qa", "hallucination"}
    # error bars, the lm-eval way: a standard error beside every mean, direction and settings per suite
    assert 0 < h["accuracy_stderr"] < 0.2 and 0 < h["ap_answer_stderr"] < 0.5
    assert res["higher_is_better"]["hallucination"]["hallucination_rate"] is False
    assert res["higher_is_better"]["qa"]["exact_match"] is True
    assert res["configs"]["qa"]["generation"] == {"n": 1, "temperature": 0.0, "max_tokens": 24, "stop": [" ."]}
    assert res["versions"] == {"qa": 3, "hallucination": 4}
    assert res["configs"]["hallucination"]["options"]["bootstrap_iters"] == 1000
    assert " ± " in proc.stdout and " ± " in (out / "report.md").read_text()
