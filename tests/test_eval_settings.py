"""`posttrain eval`'s settings: what a run was trained with (run.json), options a suite does not take, data of the
user's own (files, column mappings, TOFU's layout), and a comparison that says whether differences exceed their
error."""

import json
import math
import shutil
from pathlib import Path

import pytest

from conftest import cli
from posttrain.evals import metrics, qa, report
from posttrain.evals.targets import Target
from posttrain.evaluate import trained_settings

DATA = Path(__file__).parent / "data"


def _run(tmp_path, tiny_run, config):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "run.json").write_text(json.dumps({"config": config}))
    return run


def test_the_runs_refusals_and_certainty_suffix_come_from_its_run_json(tmp_path, tiny_run):
    refusal = _run(tmp_path, tiny_run, {"method": "rtuning", "variant": "refusal",
                                        "refusals": ["There is no known case ."], "sure_question": "Sure ?"})
    got = trained_settings(Target(str(refusal)))
    assert got["refusals"] == (*metrics.DEFAULT_REFUSALS, "There is no known case .")
    assert got["certainty_suffix"] is False and got["sure_question"] == "Sure ?"
    (refusal / "run.json").write_text(json.dumps({"config": {"method": "rtuning", "variant": "suffix",
                                                             "refusals": ["x"], "sure_question": "Sure ?"}}))
    suffix = trained_settings(Target(str(refusal)))
    assert suffix["certainty_suffix"] is True and "refusals" not in suffix  # the suffix variant learned none
    (refusal / "run.json").unlink()
    assert trained_settings(Target(str(refusal))) == {}


@pytest.mark.slow
def test_eval_reads_the_refusals_of_the_run_and_the_command_line_wins(capsys, tmp_path, tiny_run, tiny_kg):
    """The tiny model answers "I do not know about ..." to unseen facts: a run.json that lists a phrase only its
    answers contain makes those refusals; --refusal on the command line replaces the run's phrases."""
    common = ["--data", tiny_kg, "--splits", "unseen", "--limit", "16", "--engine", "hf"]
    plain = cli(capsys, "eval", tiny_run, *common, "--output", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-2000:]
    answers = [json.loads(x)["response"] for x in (tmp_path / "plain" / "samples.jsonl").read_text().splitlines()]
    word = next(a.split()[0] for a in answers if not metrics.is_refusal(a))
    run = _run(tmp_path, tiny_run, {"method": "rtuning", "variant": "refusal", "refusals": [word]})
    read = cli(capsys, "eval", run, *common, "--output", tmp_path / "read")
    doc = json.loads((tmp_path / "read" / "results.json").read_text())
    assert doc["config"]["trained_with"]["refusals"][-1] == word
    before = json.loads((tmp_path / "plain" / "results.json").read_text())["results"]["qa/unseen"]["refusal_rate"]
    assert doc["results"]["qa/unseen"]["refusal_rate"] > before, read.stdout
    over = cli(capsys, "eval", run, *common, "--refusal", "zzz", "--output", tmp_path / "over")
    assert over.returncode == 0
    assert json.loads((tmp_path / "over" / "results.json").read_text())["results"]["qa/unseen"]["refusal_rate"] == 0


@pytest.mark.parametrize("args, message", [
    (["--suite", "qa", "--n", "4"], "--n is not an option of suite(s) qa (suites that take it: reasoning)"),
    (["--suite", "qa,forgetting", "--sure_question", "ok ?"], "--sure_question is not an option of suite(s) qa,"),
    (["--suite", "qa", "--retain_logs", "x"], "--retain_logs is not an option"),
    (["--suite", "hallucination", "--reference", "x"], "--reference is not an option"),
    (["--suite", "qa", "--max_tokens", "0"], "--max_tokens must be at least 1"),
])
def test_an_option_no_chosen_suite_takes_is_an_error(capsys, tmp_path, tiny_run, tiny_kg, args, message):
    out = tmp_path / "eval"
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--output", out, *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_suites_take_no_unknown_keyword():
    with pytest.raises(TypeError, match="refusal"):
        qa.evaluate(None, {}, [], refusal=("x",))  # a misspelling of refusals is not swallowed


@pytest.mark.slow
def test_a_tofu_shaped_file_runs_the_forgetting_suite_and_a_csv_the_qa_suite(capsys, tmp_path, tiny_run):
    out = tmp_path / "tofu"
    proc = cli(capsys, "eval", tiny_run, "--data", f"forget={DATA / 'tofu_forget.json'}", "--suite", "forgetting",
               "--engine", "hf", "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((out / "results.json").read_text())["results"]["forgetting/forget"]
    assert r["n"] == 4 and math.isfinite(r["truth_ratio"]) and math.isfinite(r["truth_ratio_stderr"])
    assert math.isnan(r["mia_auc"])  # no unseen split: no non-members
    out = tmp_path / "qa"
    proc = cli(capsys, "eval", tiny_run, "--data", DATA / "qa.csv", "--columns", "prompt=question,completion=answer",
               "--engine", "hf", "--stop", "", "--max_tokens", "4", "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["results"]["qa/qa"]["n"] == 3 and doc["configs"]["qa"]["generation"]["stop"] == []
    assert doc["config"]["columns"] == {"prompt": "question", "completion": "answer"}


def test_missing_columns_name_the_columns(capsys, tmp_path, tiny_run):
    proc = cli(capsys, "eval", tiny_run, "--data", DATA / "qa.csv", "--columns", "prompt=query", "--output",
               tmp_path / "e")
    assert proc.returncode == 2 and "no column(s) query" in proc.stderr


def _results(path, **splits):
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"results": {f"qa/{s}": r for s, r in splits.items()}}))
    return str(path)


def test_report_says_whether_a_difference_exceeds_its_error(tmp_path):
    """R-Tuning's +0.007 AP on 333 items is within its error; a 0.2 gain with 0.02 errors is not."""
    a = _results(tmp_path / "a", seen={"n": 333, "exact_match": 0.60, "exact_match_stderr": 0.02},
                 unseen={"n": 333, "exact_match": 0.300, "exact_match_stderr": 0.025})
    b = _results(tmp_path / "b", seen={"n": 333, "exact_match": 0.80, "exact_match_stderr": 0.02},
                 unseen={"n": 333, "exact_match": 0.307, "exact_match_stderr": 0.025})
    text = report.compare([a, b], str(tmp_path / "report"))
    rows = {line.split("|")[2].strip(): line for line in text.split("## differences from")[1].splitlines()
            if line.startswith("| qa |")}
    assert "+0.200" in rows["seen"] and rows["seen"].rstrip(" |").endswith("yes")
    assert "+0.007" in rows["unseen"] and rows["unseen"].rstrip(" |").endswith("no")
    assert "0.600 ± 0.020" in text
    d, se, z = report.difference({"m": 0.3, "m_stderr": 0.03}, {"m": 0.36, "m_stderr": 0.04}, "m")
    assert (d, se, z) == pytest.approx((0.06, 0.05, 1.2))
