"""Bring your own eval data: ``posttrain.core.data.load_eval_data`` on files, directories and NAME=PATH pairs, TOFU's
layout, column mappings, and one line of error for each kind of bad input."""

import json
import math
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from posttrain.core.data import load_eval_data, parse_columns, split
from posttrain.core.errors import UsageError
from posttrain.evals import forgetting, qa

DATA = Path(__file__).parent / "data"
TOFU = DATA / "tofu_forget.json"
QA = DATA / "qa.csv"


def listing(path: Path) -> dict:
    """Every file under ``path`` with its size and mtime: what loading must leave as it was."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def tofu_rows() -> list[dict]:
    return [json.loads(line) for line in TOFU.read_text().splitlines()]


def test_tofu_file_gets_the_forgetting_suites_columns():
    before = listing(DATA)
    dd = load_eval_data(str(TOFU))
    assert list(dd) == ["tofu_forget"]
    ds = split(dd, "tofu_forget", forgetting.COLUMNS)
    rows = tofu_rows()
    assert len(ds) == len(rows) == 4
    for got, raw in zip(ds, rows):
        assert got["prompt"] == raw["question"]
        assert got["completion"] == " " + raw["answer"]
        assert got["paraphrased_answer"] == " " + raw["paraphrased_answer"]
        assert got["perturbed_answers"] == [" " + a for a in raw["perturbed_answer"]]
        assert len(got["perturbed_answers"]) == 3
    assert listing(DATA) == before


def test_qa_csv_with_a_column_mapping():
    dd = load_eval_data(str(QA), parse_columns("prompt=question, completion=answer"))
    ds = split(dd, "qa", qa.COLUMNS)
    assert ds["prompt"] == ["What is the capital of France?", "How many legs does a spider have?",
                            "Who wrote Hamlet?"]
    assert ds["completion"] == [" Paris", " 8", " William Shakespeare"]
    assert ds["id"] == ["q1", "q2", "q3"]  # other columns stay


def test_parse_columns():
    assert parse_columns("prompt=question,completion=answer") == {"prompt": "question", "completion": "answer"}
    for bad in ("prompt", "prompt=", "=question", "prompt=question,,completion=answer"):
        with pytest.raises(UsageError, match="bad column mapping"):
            parse_columns(bad)


def test_jsonl_json_array_and_parquet_files_and_a_directory_of_them(tmp_path):
    (tmp_path / "plain.jsonl").write_text(
        json.dumps({"prompt": "Q: 1+1?\nA:", "completion": " 2", "fact_id": 7}) + "\n"
        + json.dumps({"prompt": "Q: 2+2?\nA:", "completion": " 4", "fact_id": 8}) + "\n")
    (tmp_path / "array.json").write_text(json.dumps(tofu_rows()[:2]))
    Dataset.from_dict({"q": ["Capital of Italy?", "Capital of Spain?\n"], "a": ["Rome", "Madrid"]}).to_parquet(
        tmp_path / "table.parquet")
    (tmp_path / "notes.txt").write_text("not data")
    before = listing(tmp_path)

    plain = load_eval_data(str(tmp_path / "plain.jsonl"))["plain"]
    assert plain.to_list() == [{"prompt": "Q: 1+1?\nA:", "completion": " 2", "fact_id": 7},
                               {"prompt": "Q: 2+2?\nA:", "completion": " 4", "fact_id": 8}]
    array = load_eval_data(str(tmp_path / "array.json"))["array"]
    assert array["completion"] == [" " + r["answer"] for r in tofu_rows()[:2]]
    table = load_eval_data(str(tmp_path / "table.parquet"), {"prompt": "q", "completion": "a"})["table"]
    assert table["completion"] == [" Rome", "Madrid"]  # no space after a prompt that ends with whitespace

    dd = load_eval_data(str(tmp_path))
    assert sorted(dd) == ["array", "plain", "table"]  # notes.txt is not data
    assert dd["plain"]["completion"] == [" 2", " 4"]
    assert listing(tmp_path) == before


def test_saved_datasetdict_and_dataset_directories(tmp_path):
    gen = DatasetDict({s: Dataset.from_dict({"prompt": [f"Question: {s} ? Answer:"], "completion": [" C1 ."]})
                       for s in ("seen", "forget")})
    gen.save_to_disk(tmp_path / "gen")
    one = Dataset.from_dict({"question": ["Who?"], "answer": ["Me"], "perturbed_answer": [["You", " Them"]]})
    one.save_to_disk(tmp_path / "mine")
    before = listing(tmp_path)

    dd = load_eval_data(str(tmp_path / "gen"))
    assert sorted(dd) == ["forget", "seen"]
    assert dd["forget"][0] == {"prompt": "Question: forget ? Answer:", "completion": " C1 ."}
    mine = load_eval_data(str(tmp_path / "mine"))["mine"]
    assert (mine[0]["prompt"], mine[0]["completion"], mine[0]["perturbed_answers"]) == ("Who?", " Me",
                                                                                        [" You", " Them"])
    assert listing(tmp_path) == before  # mapping a saved dataset leaves no cache file beside it


def test_name_path_pairs(tmp_path):
    (tmp_path / "retain.jsonl").write_text(json.dumps({"question": "Where is X?", "answer": "Y"}) + "\n")
    Dataset.from_dict({"prompt": ["Q:"], "completion": [" A"]}).save_to_disk(tmp_path / "saved")
    dd = load_eval_data(f"forget={TOFU},retain={tmp_path / 'retain.jsonl'},extra={tmp_path / 'saved'}")
    assert list(dd) == ["forget", "retain", "extra"]
    assert len(split(dd, "forget", forgetting.COLUMNS)) == 4
    assert dd["retain"][0]["completion"] == " Y"
    assert dd["extra"][0]["completion"] == " A"


@pytest.mark.parametrize("make, match", [
    (lambda d: f"{d}/nope.json", "data not found: .*nope.json"),
    (lambda d: f"forget={d}/nope.json", "data not found: .*nope.json"),
    (lambda d: "forget=", "expected a path or NAME=PATH"),
    (lambda d: (d / "x.txt").write_text("hi") and f"{d}/x.txt", r"cannot read .*x.txt: expected a \.jsonl/"),
    (lambda d: (d / "x.json").touch() or f"{d}/x.json", "empty data file: .*x.json"),
    (lambda d: (d / "x.csv").write_text("question,answer\n") and f"{d}/x.csv", "cannot read .*x.csv: no rows"),
    (lambda d: (d / "x.json").write_text("{bad") and f"{d}/x.json", "cannot read .*x.json: JSON parse error"),
    (lambda d: (d / "x.parquet").write_text("junk") and f"{d}/x.parquet", "cannot read .*x.parquet: Parquet"),
    (lambda d: f"{d}", "no data in"),
])
def test_bad_data_is_a_usage_error(tmp_path, make, match):
    with pytest.raises(UsageError, match=match) as e:
        load_eval_data(make(tmp_path))
    assert "\n" not in str(e.value)


def test_a_missing_mapped_column_names_it_the_split_and_the_columns():
    with pytest.raises(UsageError) as e:
        load_eval_data(str(QA), {"prompt": "question", "completion": "reply", "fact_id": "key"})
    assert str(e.value) == "split 'qa' has no column(s) reply, key; it has: id, question, answer"


@pytest.mark.slow
def test_forgetting_suite_on_a_tofu_file(tiny_run):
    from posttrain.evals.hf_engine import HFEngine

    dd = load_eval_data(f"forget={TOFU}")
    results, samples = forgetting.evaluate(HFEngine(str(tiny_run)), dd, ["forget"])
    assert results["forget"]["n"] == len(samples) == 4
    assert [s["doc_id"] for s in samples] == [0, 1, 2, 3]
    assert all(math.isfinite(s["truth_ratio"]) and s["truth_ratio"] > 0 for s in samples)
    assert math.isfinite(results["forget"]["truth_ratio"])
