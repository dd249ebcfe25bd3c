"""benchmarks/rtuning_real.py: its figures' definitions on hand-made samples, and every step of it (gen world, probe,
four LoRA fine-tunings, merge, eval, tables, plots, RESULT) on a tiny random Llama with a chat template."""

import re
import sys
from pathlib import Path

import numpy as np
from datasets import load_from_disk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rtuning_real  # noqa: E402

from posttrain import cli  # noqa: E402


def _sample(correct, refused, sure, popularity):
    return {"exact_match": correct, "refused": refused, "empty": False, "popularity": popularity,
            "confidence_answer": sure, "confidence_answer_min": sure, "confidence_sure": sure,
            "confidence_mean": sure}


def test_scores_count_low_p_sure_as_abstaining_only_for_the_suffix_models_and_rank_refusals_last():
    # the refused item is the most confident: AP counts it last (confidence 0) or AP would be (1/2 + 2/3) / 2
    samples = [_sample(True, False, 0.9, 1), _sample(True, False, 0.4, 2), _sample(False, True, 0.95, 3),
               _sample(False, False, 0.2, 4)]
    base_right = [True, True, False, False]
    suffix = rtuning_real.scores(samples, base_right, suffix=True, bootstrap_iters=10)
    assert suffix["acc"] == 0.5 and suffix["answer_rate"] == 0.25 and suffix["answered_acc"] == 1.0
    assert suffix["known_acc"] == 0.5 and suffix["refusal_unknown"] == 1.0  # p(sure) 0.4 <= 0.5: abstained
    assert suffix["ap_sure"] == 1.0
    assert suffix["abstain_by_decile"] == [0, 1, 1, 1] and suffix["abstain_popularity_spearman"] > 0
    plain = rtuning_real.scores(samples, base_right, suffix=False, bootstrap_iters=10)
    assert plain["answer_rate"] == 0.75 and np.isclose(plain["answered_acc"], 2 / 3)
    assert plain["known_acc"] == 1.0 and plain["refusal_unknown"] == 0.5


def test_the_benchmark_runs_end_to_end_on_a_tiny_chat_model(monkeypatch, capsys, tiny_chat_model, tmp_path):
    def posttrain(*args):
        assert cli.main([str(a) for a in args]) == 0, args

    monkeypatch.setattr(rtuning_real, "posttrain", posttrain)
    out, plots = tmp_path / "bench", tmp_path / "plots"
    monkeypatch.setattr(sys, "argv", [
        "rtuning_real.py", "--seeds", "0", "--out", str(out), "--model", str(tiny_chat_model), "--engine", "hf",
        "--n_train", "16", "--n_test", "20", "--n_ood", "20", "--plots", str(plots),
        "--train", "--max_steps 1 --per_device_train_batch_size 4 --max_length 256"])
    rtuning_real.main()
    printed = capsys.readouterr().out
    result = dict(kv.split("=") for kv in printed.strip().splitlines()[-1].removeprefix("RESULT ").split())
    assert list(result) == ["ap_sft", "ap_rtuning", "ap_gain", "ood_ap_gain", "refusal_unknown", "known_acc_drop",
                            "abstain_popularity_spearman"]
    for name in ("vanilla", "r-tuning", "r-tuning-u", "refusal"):
        assert re.search(rf"^\| {name} \|", printed, re.M)
        assert (out / "seed0" / f"{name}-merged" / "model.safetensors").exists()  # the adapter, merged for vLLM
    train = load_from_disk(str(out / "seed0" / "r-tuning" / "train_data"))["train"]
    assert all(rtuning_real.SURE_QUESTION in c[-1]["content"] for c in train["completion"])
    assert train["prompt"][0][0] == {"role": "system", "content": "Answer briefly."}
    assert (plots / "abstention_by_popularity.png").exists() and (plots / "reliability_real.png").exists()
