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


def _run(tmp_path, tiny_run, **rtuning):
    """The tiny run with the run.json an R-Tuning run of ``rtuning`` settings writes."""
    from posttrain.trainers.rtuning import RTuningConfig

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, dirs_exist_ok=True)
    config = RTuningConfig(output_dir=str(tmp_path / "out"), report_to="none", **rtuning)
    (run / "run.json").write_text(json.dumps({"eval_settings": config.eval_settings()}))
    return run


def test_the_runs_refusals_and_certainty_suffix_come_from_its_run_json(tmp_path, tiny_run):
    refusal = _run(tmp_path, tiny_run, variant="refusal", refusals=["There is no known case ."],
                   sure_question="Sure ?")
    got = trained_settings(Target(str(refusal)))
    assert got["refusals"] == (*metrics.DEFAULT_REFUSALS, "There is no known case .")
    assert got["certainty_suffix"] is False and got["sure_question"] == "Sure ?"
    suffix = trained_settings(Target(str(_run(tmp_path, tiny_run, variant="suffix", refusals=["x"],
                                              sure_question="Sure ?"))))
    assert suffix["certainty_suffix"] is True and "refusals" not in suffix  # the suffix variant learned none
    (refusal / "run.json").write_text("{}")  # a run of a method with nothing of its own to say
    assert trained_settings(Target(str(refusal))) == {"certainty_suffix": False}
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
    run = _run(tmp_path, tiny_run, variant="refusal", refusals=[word])
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


TOFU = f"forget={DATA / 'tofu_forget.json'},retain={DATA / 'tofu_retain.json'}"


def _doc(out):
    return json.loads((out / "results.json").read_text())


def test_a_holdout_split_named_by_holdout_split_gives_the_mia_auc(capsys, tmp_path, tiny_run):
    """TOFU's non-members are its holdout split: it counts once --holdout_split names it (used, not evaluated)."""
    data = f"{TOFU},holdout={DATA / 'tofu_retain.json'}"
    common = ["--data", data, "--suite", "forgetting", "--engine", "hf", "--bootstrap_iters", "20"]
    plain = cli(capsys, "eval", tiny_run, *common, "--output", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert math.isnan(_doc(tmp_path / "plain")["results"]["forgetting/forget"]["mia_auc"])
    named = cli(capsys, "eval", tiny_run, *common, "--holdout_split", "holdout", "--output", tmp_path / "named")
    assert named.returncode == 0, named.stderr[-2000:]
    doc = _doc(tmp_path / "named")
    assert set(doc["results"]) == {"forgetting/forget", "forgetting/retain", "forgetting/all"}
    forget, retain = doc["results"]["forgetting/forget"], doc["results"]["forgetting/retain"]
    assert math.isfinite(forget["mia_auc"]) and math.isfinite(forget["mia_auc_stderr"])
    assert retain["mia_auc"] == 0.5  # the holdout file is the retain file here: the same scores
    options = doc["configs"]["forgetting"]["options"]
    assert (options["forget_split"], options["holdout_split"]) == ("forget", "holdout")


def test_a_forget_split_named_by_forget_split_is_evaluated_against_the_retain_logs(capsys, tmp_path, tiny_run):
    data = f"forget10={DATA / 'tofu_forget.json'},retain={DATA / 'tofu_retain.json'}"
    common = ["--data", data, "--suite", "forgetting", "--engine", "hf", "--forget_split", "forget10"]
    first = cli(capsys, "eval", tiny_run, *common, "--output", tmp_path / "first")
    assert first.returncode == 0, first.stderr[-2000:]
    doc = _doc(tmp_path / "first")
    forget = doc["results"]["forgetting/forget10"]  # evaluated by default with the usual retain split
    assert forget["truth_ratio"] == forget["truth_ratio_closer_to_1"] and "forgetting/retain" in doc["results"]
    assert doc["configs"]["forgetting"]["options"]["forget_split"] == "forget10"
    again = cli(capsys, "eval", tiny_run, *common, "--retain_logs", tmp_path / "first", "--output", tmp_path / "again")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _doc(tmp_path / "again")["results"]["forgetting/forget10"]["forget_quality"] == pytest.approx(1.0)


@pytest.mark.parametrize("args, message", [
    (["--splits", "retain", "--retain_logs", "x"],
     "--retain_logs scores the forget split 'forget', which is not among the evaluated splits (retain)"),
    (["--holdout_split", "unseen"], "--holdout_split 'unseen' is not a split of the data (it has: forget, retain)"),
    (["--forget_split", "forget10"], "--forget_split 'forget10' is not among the evaluated splits (forget, retain)"),
    (["--splits", "retain", "--forget_split", "forget"],
     "--forget_split 'forget' is not among the evaluated splits (retain)"),
])
def test_a_split_role_that_would_be_ignored_is_an_error(capsys, tmp_path, tiny_run, args, message):
    out = tmp_path / "eval"
    proc = cli(capsys, "eval", tiny_run, "--data", TOFU, "--suite", "forgetting", "--output", out, *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not out.exists()
    proc = cli(capsys, "eval", tiny_run, "--data", TOFU, "--suite", "qa", "--holdout_split", "forget")
    assert proc.returncode == 2 and "--holdout_split is not an option of suite(s) qa" in proc.stderr


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_an_empty_answer_is_one_line_before_any_engine_starts(capsys, tmp_path, tiny_run):
    rows = [{"question": "Where was P1 born ?", "answer": "", "paraphrased_answer": "C1 .",
             "perturbed_answer": ["C2 ."]}]
    out = tmp_path / "eval"
    proc = cli(capsys, "eval", tiny_run, "--data", _jsonl(tmp_path / "forget.jsonl", rows), "--suite", "forgetting",
               "--engine", "vllm", "--output", out)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "posttrain: error: split 'forget', row 0: an empty completion (each answer is scored by its mean token "
        "log-probability: give it some text)"]
    assert not out.exists()


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_an_empty_prompt_without_a_bos_token_is_one_line_before_any_engine_starts(capsys, tmp_path, tiny_chat_model,
                                                                                 engine):
    """The chat model's tokenizer adds no BOS: an empty prompt outside the template has no token (vLLM refused it
    with a traceback; HF answered from padding alone)."""
    rows = [{"prompt": "Which country is Lyon in?", "completion": " France."}, {"prompt": "", "completion": " Paris."}]
    out = tmp_path / "eval"
    proc = cli(capsys, "eval", tiny_chat_model, "--data", _jsonl(tmp_path / "qa.jsonl", rows),
               "--apply_chat_template", "false", "--engine", engine, "--output", out)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "posttrain: error: split 'qa', row 1: an empty prompt (the model's tokenizer gives it no token to condition "
        "on: give every prompt some text)"]
    assert not out.exists()


def test_an_empty_prompt_after_a_bos_token_is_evaluated(capsys, tmp_path, tiny_run):
    """The testbed's tokenizer starts every text with <s>: an empty prompt conditions on it, a legitimate request."""
    rows = [{"prompt": "", "completion": " C1 ."}, {"prompt": "Question: Where was P1 born ? Answer:",
                                                     "completion": " C1 ."}]
    proc = cli(capsys, "eval", tiny_run, "--data", _jsonl(tmp_path / "qa.jsonl", rows), "--engine", "hf",
               "--output", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _doc(tmp_path / "eval")["results"]["qa/qa"]["n"] == 2


@pytest.mark.parametrize("content", ['{"a": 1}', "[1, 2]", "not json", '{"results": {"qa": {"n": 1}}}',
                                     '{"results": {"qa/seen": 3}}'])
def test_report_of_a_file_that_is_not_a_results_file_is_one_line(capsys, tmp_path, content):
    (tmp_path / "x.json").write_text(content)
    out = tmp_path / "report"
    proc = cli(capsys, "report", tmp_path / "x.json", "--output", out)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"posttrain: error: {tmp_path / 'x.json'} is not a `posttrain eval` results file (no results by suite/split)"]
    assert not out.exists()


def test_report_plots_the_forget_split_each_eval_named(capsys, tmp_path):
    """forget vs retain reads each eval's forget split from its configs (not only a split named forget); a
    hallucination result without a reliability diagram is reported without one (it was a KeyError)."""
    def results(name, forget, em):
        path = tmp_path / name
        path.mkdir()
        (path / "results.json").write_text(json.dumps({
            "results": {f"forgetting/{forget}": {"n": 4, "exact_match": em}, "forgetting/retain": {"n": 4,
                                                                                                 "exact_match": 0.9},
                        "hallucination/seen": {"n": 4, "accuracy": 0.5}},
            "configs": {"forgetting": {"options": {"forget_split": forget}}}}))
        return path

    proc = cli(capsys, "report", results("a", "forget10", 0.8), results("b", "forget10", 0.1), "--output",
               tmp_path / "report")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "report" / "forget_vs_retain.png").is_file()
    assert not (tmp_path / "report" / "reliability.png").exists()
