import json

import pytest
import torch

from conftest import cli
from posttrain.evals import metrics
from posttrain.evals.hf_engine import HFEngine


def test_exact_match_compares_the_whole_normalised_answer():
    assert metrics.exact_match("  c5  .", "C5 .")
    assert not metrics.exact_match("C50 .", "C5 .")
    assert metrics.exact_match("P1 was born in C5 .", " P1 was born in C5 .")
    assert not metrics.exact_match("C5", "C5 .")
    assert metrics.exact_match("the U.S.", "The U.S.")  # no cut at a "." inside an answer
    assert not metrics.exact_match("C5 . Are you sure ? I am sure .", " C5 .")  # the engine's stop cuts it first


def test_cut_at_stop_keeps_the_earliest_stop_string():
    from posttrain.core.answers import cut_at_stop

    assert cut_at_stop("C5 . Are you sure ? I am sure .", (" .",)) == "C5 ."
    assert cut_at_stop("3.5 is it . more", (" .",)) == "3.5 is it ."
    assert cut_at_stop("a b\nc d", ("\n", " b")) == "a b"
    assert cut_at_stop("no stop here", (" .",)) == "no stop here"
    assert cut_at_stop("x . y", ()) == "x . y"


def test_refusal_detection_is_configurable():
    assert metrics.is_refusal("Sorry , I do not know about P3 .")
    assert not metrics.is_refusal("C5 .")
    assert metrics.is_refusal("no idea", ["No idea"])


def test_accuracy_by_bucket_on_a_hand_made_case():
    out = metrics.accuracy_by_bucket([0, 1, 1, 3, 4, 20], [False, True, False, True, True, True])
    assert {k: (v["n"], v["accuracy"]) for k, v in out.items()} == {"0": (1, 0.0), "1": (2, 0.5), "3-4": (2, 1.0),
                                                                     "17+": (1, 1.0)}
    assert out["1"]["stderr"] == pytest.approx(0.5)  # sd of (1, 0) is 0.707, over sqrt(2)
    assert metrics.mean([]) != metrics.mean([])  # NaN for no items


def test_hf_engine_scores_match_a_direct_forward(tiny_run):
    eng = HFEngine(str(tiny_run), batch_size=2)
    prompts = ["Question: Where was P1 born ? Answer:", "Question: When was K2 founded ? Answer:", "P3"]
    conts = [" C1 .", " 1941 .", " was born in C2 ."]
    got = eng.score(prompts, conts)
    for p, c, lp in zip(prompts, conts, got):
        ids = eng.tok(p + c, return_tensors="pt")["input_ids"]
        n = len(eng.tok(p)["input_ids"])
        with torch.no_grad():
            ref = torch.log_softmax(eng.model(ids).logits[0], -1)
        want = [ref[i - 1, ids[0, i]].item() for i in range(n, ids.shape[1])]
        assert len(lp) == len(c.split()) and lp == pytest.approx(want, abs=1e-5)


def test_hf_engine_batched_greedy_equals_one_by_one(tiny_run):
    eng = HFEngine(str(tiny_run), batch_size=8)
    prompts = [f"Question: Where was P{i} born ? Answer:" for i in range(6)] + ["Question: Tell me where P2 was born ."]
    batched = eng.generate(prompts, max_tokens=8)
    eng.batch_size = 1
    assert batched == eng.generate(prompts, max_tokens=8)
    samples = eng.generate(prompts[:2], n=4, temperature=1.0, max_tokens=8, seed=1)
    assert [len(s) for s in samples] == [4, 4] and samples == eng.generate(prompts[:2], n=4, temperature=1.0,
                                                                           max_tokens=8, seed=1)


def test_hf_engine_reads_a_tokenizer_saved_without_a_decoder_alike(tiny_run, tmp_path):
    """Testbed models saved before the tokenizer had a decoder (tokenizers' WordLevel, words joined by spaces) give
    the same answers: the engines strip what they decode."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    spec = json.loads((old / "tokenizer.json").read_text())
    spec["decoder"] = None
    spec["model"] = {"type": "WordLevel", "vocab": spec["model"]["vocab"], "unk_token": "<unk>"}
    (old / "tokenizer.json").write_text(json.dumps(spec))
    prompts = [f"Question: Where was P{i} born ? Answer:" for i in range(8)]
    new_eng, old_eng = HFEngine(str(tiny_run)), HFEngine(str(old))
    assert old_eng.tok.decode(old_eng.tok(prompts[0])["input_ids"], skip_special_tokens=True) == prompts[0]
    assert old_eng.generate(prompts, max_tokens=6) == new_eng.generate(prompts, max_tokens=6)


def test_eval_cli_writes_results_and_report(capsys, tiny_run, tiny_kg, tmp_path):
    out = tmp_path / "eval"
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--splits", "seen,unseen", "--output", out, "--engine",
               "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| seen |" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {"qa/seen", "qa/unseen"} and res["n-samples"]["qa/seen"] > 0
    for key in ("configs", "versions", "config", "git_hash", "date", "engine", "seeds"):
        assert key in res
    seen = res["results"]["qa/seen"]
    assert 0.0 <= seen["exact_match"] <= 1.0 and seen["by_exposure"]
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == res["n-samples"]["qa/seen"] + res["n-samples"]["qa/unseen"]
    # the saved samples agree with the reported accuracy
    seen_rows = [json.loads(x) for x in lines if json.loads(x)["split"] == "seen"]
    assert sum(r["exact_match"] for r in seen_rows) / len(seen_rows) == pytest.approx(seen["exact_match"])
    assert "exact match by exposure" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--splits", "nope"], "unknown split 'nope'"),
    (["--suite", "nope"], "unknown suite"),
    (["--limit", "0"], "--limit"),
])
def test_eval_bad_input_exits_2(capsys, tiny_run, tiny_kg, tmp_path, args, message):
    out = tmp_path / "eval"
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--output", out, *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_eval_missing_model_or_data_exits_2(capsys, tiny_run, tmp_path):
    assert "neither a model directory" in cli(capsys, "eval", tmp_path, "--data", tmp_path).stderr
    assert "model not found" in cli(capsys, "eval", tmp_path / "none", "--data", tmp_path).stderr
    proc = cli(capsys, "eval", tiny_run, "--data", tmp_path / "none")
    assert proc.returncode == 2 and "data not found" in proc.stderr


@pytest.mark.parametrize("change, message", [
    (lambda ds: ds.filter(lambda r: False), "split 'seen' is empty"),
    (lambda ds: ds.remove_columns("completion"), "split 'seen' lacks column(s) completion"),
])
def test_eval_empty_split_or_missing_column_exits_2(capsys, tiny_run, tiny_kg, tmp_path, change, message):
    from datasets import load_from_disk

    dd = load_from_disk(str(tiny_kg))
    dd["seen"] = change(dd["seen"])
    dd.save_to_disk(str(tmp_path / "data"))
    proc = cli(capsys, "eval", tiny_run, "--data", tmp_path / "data", "--splits", "seen", "--output", tmp_path / "e")
    assert proc.returncode == 2 and message in proc.stderr and not (tmp_path / "e").exists()
