"""`posttrain eval` on what users point it at: LoRA runs, --adapter, --reference and --retain_logs, with the bad
cases stopped by one line and exit 2 before any engine starts; `posttrain report` over several evals."""

import json

import pytest

from conftest import cli, posttrain
from posttrain.core.modeling import build_word_tokenizer, scratch_llama


def _scratch(path, texts, hidden=128):
    tok = build_word_tokenizer(texts)
    scratch_llama(tok, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=hidden // 64,
                  intermediate_size=256).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _results(out):
    return json.loads((out / "results.json").read_text())["results"]


@pytest.mark.slow
def test_a_lora_run_is_evaluated_on_its_base_with_flips_against_the_base(tiny_lora, tiny_run, tiny_kg, tmp_path):
    """vLLM serves the adapter and the reference base model from one engine."""
    out = tmp_path / "eval"
    proc = posttrain("eval", tiny_lora, "--data", tiny_kg, "--suite", "qa,flips", "--reference", tiny_run,
                     "--splits", "seen,unseen", "--limit", "24", "--engine", "vllm", "--output", out, check=True)
    assert "negative_flip_rate" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["adapter"] == str(tiny_lora) and doc["config"]["model"] == str(tiny_run)
    assert doc["engine"] == "vllm"
    flips, qa = doc["results"]["flips/seen"], doc["results"]["qa/seen"]
    assert flips["candidate_exact_match"] == pytest.approx(qa["exact_match"])
    assert flips["agreement"] < 1.0  # the adapter changed some answers, so it was applied (and not to the base)
    base = tmp_path / "base"
    posttrain("eval", tiny_run, "--data", tiny_kg, "--suite", "qa", "--splits", "seen", "--limit", "24",
              "--engine", "hf", "--output", base, check=True)
    assert flips["reference_exact_match"] == pytest.approx(_results(base)["qa/seen"]["exact_match"])


@pytest.mark.slow
def test_adapter_flag_equals_evaluating_the_lora_run(tiny_lora, tiny_run, tiny_kg, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--data", tiny_kg, "--splits", "seen", "--limit", "16", "--engine", "hf"]
    posttrain("eval", tiny_run, "--adapter", tiny_lora, *common, "--output", a, check=True)
    posttrain("eval", tiny_lora, *common, "--output", b, check=True)
    assert _results(a) == _results(b)


@pytest.mark.slow
def test_forget_quality_against_retain_logs(tiny_run, tiny_kg, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--data", tiny_kg, "--suite", "forgetting", "--splits", "forget,retain", "--engine", "hf"]
    posttrain("eval", tiny_run, *common, "--output", first, check=True)
    assert _results(first)["forgetting/forget"]["forget_quality"] != _results(first)["forgetting/forget"][
        "forget_quality"]  # NaN without retain logs
    posttrain("eval", tiny_run, *common, "--retain_logs", first, "--output", second, check=True)
    assert _results(second)["forgetting/forget"]["forget_quality"] == pytest.approx(1.0)  # same model: same TRs

    report = tmp_path / "report"
    proc = posttrain("report", first, second, "--output", report, check=True)
    table, diff = proc.stdout.split("## differences from")
    assert table.count(str(first)) == 3  # one row per split of the first run, and its cross-split row (utility)
    assert "| forgetting | forget | exact_match |" in diff and "| no |" in diff  # the same model: no difference
    assert (report / "forget_vs_retain.png").stat().st_size > 1000
    assert "forget_vs_retain.png" in (report / "report.md").read_text()


@pytest.mark.parametrize("case, message", [
    ("wrong_base", "does not fit model"),
    ("not_adapter", "not a LoRA adapter directory"),
    ("missing_reference", "reference not found"),
    ("other_tokenizer", "different tokenizer"),
    ("no_reference", "flips suite needs --reference"),
    ("bad_retain_logs", "retain logs not found"),
    ("bad_engine", "invalid choice"),
])
def test_bad_targets_exit_2_and_write_nothing(capsys, case, message, tiny_run, tiny_lora, tiny_kg, tmp_path):
    args = {
        "wrong_base": lambda: [_scratch(tmp_path / "m", ["a b c"], hidden=256), "--adapter", tiny_lora],
        "not_adapter": lambda: [tiny_run, "--adapter", tmp_path],
        "missing_reference": lambda: [tiny_run, "--suite", "flips", "--reference", tmp_path / "none"],
        "other_tokenizer": lambda: [tiny_run, "--suite", "flips", "--reference", _scratch(tmp_path / "m", ["a b"])],
        "no_reference": lambda: [tiny_run, "--suite", "flips"],
        "bad_retain_logs": lambda: [tiny_run, "--suite", "forgetting", "--retain_logs", tmp_path / "none"],
        "bad_engine": lambda: [tiny_run, "--engine", "nope"],
    }[case]()
    out = tmp_path / "out"
    proc = cli(capsys, "eval", *args, "--data", tiny_kg, "--output", out)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_report_of_a_missing_eval_exits_2(capsys, tmp_path):
    proc = cli(capsys, "report", tmp_path, "--output", tmp_path / "r")
    assert proc.returncode == 2 and "no eval results" in proc.stderr and not (tmp_path / "r").exists()


def test_plot_labels_drop_the_runs_common_directories():
    from posttrain.evals.report import labels

    assert labels(["/tmp/b/pair0/base-eval", "/tmp/b/pair0/rule/eval", "/tmp/b/pair0/npo/eval"]) == [
        "base-eval", "rule", "npo"]
    assert labels(["runs/a/eval"]) == ["runs/a"] and labels(["a/x", "b/x"]) == ["a/x", "b/x"]
