"""Unlearning on your own forget/retain files in TOFU's layout (``question``, ``answer``, ``paraphrased_answer``,
``perturbed_answer``): ``dataset_path: forget=...,retain=...`` read by ``posttrain.core.data.load_data``, GradDiff, NPO and
IdkSFT trained on them, and ``posttrain eval --suite forgetting`` on the result.

The session's tiny testbed model knows only the testbed's words (its tokenizer is word-level), so TOFU text would be
unknown tokens to it; the base model here is the same tiny Llama built from scratch on the two TOFU files (its
vocabulary is their words and those of IdkSFT's refusal, as a real tokenizer's would hold them) and trained on
both, as a TOFU base model is fine-tuned on all of TOFU before unlearning.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from conftest import TINY_MODEL, cli
from posttrain.core.data import load_data
from posttrain.core.errors import UsageError
from posttrain.evals.hf_engine import HFEngine
from posttrain.train import train

DATA = Path(__file__).parent / "data"
FORGET, RETAIN = DATA / "tofu_forget.json", DATA / "tofu_retain.json"
SPEC = f"forget={FORGET},retain={RETAIN}"
REFUSAL = "I don't know."
FAST = ["--learning_rate", "1e-3", "--max_steps", "5", "--logging_steps", "1", "--per_device_train_batch_size", "4"]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tofu_base(tmp_path_factory):
    """A tiny Llama with a word-level tokenizer over the TOFU files (and the refusal: a ``text`` split, not trained
    on), trained from scratch on forget + retain."""
    tmp = tmp_path_factory.mktemp("tofu")
    both, words = tmp / "all.jsonl", tmp / "words.jsonl"
    both.write_text(FORGET.read_text() + RETAIN.read_text())
    words.write_text(json.dumps({"text": REFUSAL}) + "\n")
    return train("recipes/testbed/base.yaml", [
        "--dataset_path", f"all={both},words={words},{SPEC}", "--dataset_train_split", "all",
        "--output_dir", str(tmp / "base"), *TINY_MODEL, "--max_steps", "60", "--lr_scheduler_type", "constant",
        "--warmup_steps", "0"])


def nll(run: Path, split: str) -> float:
    """Mean per-token NLL under ``run`` of a TOFU split's answers to its questions."""
    ds = load_data(SPEC)[split]
    logps = HFEngine(str(run)).score(list(ds["prompt"]), list(ds["completion"]))
    return float(np.mean([-np.mean(lp) for lp in logps]))


def unlearn(capsys, method: str, base: Path, out: Path, *flags):
    """``posttrain train unlearn/<method>.yaml`` on the TOFU files, as a user runs it."""
    return cli(capsys, "train", f"unlearn/{method}.yaml", "--model_name_or_path", base, "--dataset_path", SPEC,
               "--dataset_forget_split", "forget", "--dataset_retain_split", "retain", "--output_dir", out, *flags)


def one_line_error(proc, message: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("posttrain:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("posttrain: error:") and message in lines[0], lines[0]


def test_load_data_reads_tofu_files_as_prompt_completion_splits(tmp_path):
    dd = load_data(SPEC)
    assert list(dd) == ["forget", "retain"]
    for name, path in (("forget", FORGET), ("retain", RETAIN)):
        raw = rows(path)
        assert dd[name]["prompt"] == [r["question"] for r in raw]
        assert dd[name]["completion"] == [" " + r["answer"] for r in raw]
        assert dd[name]["perturbed_answers"] == [[" " + a for a in r["perturbed_answer"]] for r in raw]
        assert dd[name]["entity"] == [""] * len(raw)  # TOFU names no subject
    assert list(load_data(str(FORGET))) == ["tofu_forget"]  # one file: one split named after it
    for bad, match in ((None, "no dataset: set dataset_path"), (f"forget={tmp_path}/nope.json", "data not found"),
                       (str(tmp_path), "no data in")):
        with pytest.raises(UsageError, match=match) as e:
            load_data(bad)
        assert "\n" not in str(e.value)


def test_grad_diff_on_tofu_files_unlearns_the_forget_answers_and_evaluates(capsys, tofu_base, tmp_path):
    before = {s: nll(tofu_base, s) for s in ("forget", "retain")}
    assert before["forget"] < 1.0 and before["retain"] < 1.0, before  # the base model learned both
    run = tmp_path / "grad_diff"
    proc = unlearn(capsys, "grad_diff", tofu_base, run, *FAST)
    assert proc.returncode == 0, proc.stderr
    after = {s: nll(run, s) for s in ("forget", "retain")}
    assert after["forget"] > before["forget"] + 1.0, (before, after)
    assert after["retain"] - before["retain"] < after["forget"] - before["forget"], (before, after)

    saved = load_from_disk(str(run / "train_data"))  # the TOFU rows, as prompt/completion
    for name, path in (("forget", FORGET), ("retain", RETAIN)):
        assert saved[name].to_list() == [{"prompt": r["question"], "completion": " " + r["answer"]}
                                         for r in rows(path)]
    info = json.loads((run / "run.json").read_text())
    assert info["train_data"]["splits"] == {"forget": "forget", "retain": "retain"}
    assert info["config"]["dataset_path"] == SPEC

    proc = cli(capsys, "eval", run, "--data", SPEC, "--suite", "forgetting", "--engine", "hf", "--output",
               tmp_path / "eval", "--bootstrap_iters", "0")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert results["forgetting/forget"]["n"] == 4 and results["forgetting/retain"]["n"] == 6
    assert results["forgetting/forget"]["answer_prob"] < results["forgetting/retain"]["answer_prob"], results


def test_npo_on_tofu_files_raises_the_forget_nll(capsys, tofu_base, tmp_path):
    proc = unlearn(capsys, "npo", tofu_base, tmp_path / "npo", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert nll(tmp_path / "npo", "forget") > nll(tofu_base, "forget") + 0.5


def test_idk_sft_on_tofu_files_with_a_refusal_naming_no_subject(capsys, tofu_base, tmp_path):
    forget = rows(FORGET)
    run = tmp_path / "idk"
    proc = unlearn(capsys, "idk_sft", tofu_base, run, "--refusals", REFUSAL, *FAST, "--max_steps", "20")
    assert proc.returncode == 0, proc.stderr
    saved = load_from_disk(str(run / "train_data"))["forget"]
    assert saved["completion"] == [" " + REFUSAL] * len(forget)
    assert saved["original_completion"] == [" " + r["answer"] for r in forget]
    engine = HFEngine(str(run))
    answers = [a[0] for a in engine.generate([r["question"] for r in forget + rows(RETAIN)], max_tokens=12)]
    assert all(a.strip().startswith(REFUSAL) for a in answers[:len(forget)]), answers  # the forget questions refused
    retain = [(a.strip(), r["answer"]) for a, r in zip(answers[len(forget):], rows(RETAIN))]
    assert not any(REFUSAL in a for a, _ in retain), answers
    assert sum(a == gold for a, gold in retain) >= len(retain) // 2, answers  # the retain questions still answered


def test_idk_sft_refusals_naming_the_subject_need_an_entity(capsys, tofu_base, tmp_path):
    # the recipe's refusals say "{s}"; TOFU's rows have no entity to fill it with
    one_line_error(unlearn(capsys, "idk_sft", tofu_base, tmp_path / "idk"), "forget item 0 has no entity")
    # a prompt/completion file has no entity column at all: the split and the column are named
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"prompt": r["question"], "completion": " " + r["answer"]}) + "\n"
                             for r in rows(FORGET)))
    proc = cli(capsys, "train", "unlearn/idk_sft.yaml", "--model_name_or_path", tofu_base, "--dataset_path",
               f"forget={plain},retain={RETAIN}", "--output_dir", tmp_path / "plain_run", "--refusals", "No idea.")
    one_line_error(proc, "split 'forget' lacks column(s) entity")
    assert not (tmp_path / "idk").exists() and not (tmp_path / "plain_run").exists()
