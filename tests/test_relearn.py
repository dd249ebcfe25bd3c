"""The relearning attack (``posttrain eval RUN --relearn N``): which rows it trains on and asks, determinism for a
seed, that it changes the model, the recovery's arithmetic, nothing left on disk, and bad input as one line."""

import json

import pytest
from datasets import DatasetDict, load_from_disk

from conftest import cli, max_weight_diff
from posttrain import relearn
from posttrain.core.errors import UsageError
from posttrain.evals.targets import resolve
from posttrain.evaluate import run_eval

FAST = dict(suites=["qa"], splits=["seen"], limit=4, engine="hf", bootstrap_iters=0, progress=False)
ATTACK = {"steps": 3, "lr": 1e-2, "batch_size": 2}


@pytest.fixture(scope="module")
def heldout_data(tiny_kg, tmp_path_factory):
    """The tiny graph with a ``heldout`` column on its forget split (rows 0, 2, 4, 6 held out) and a
    ``forget_train`` split of its other rows."""
    dd = load_from_disk(str(tiny_kg))
    forget = dd["forget"].add_column("heldout", [i % 2 == 0 for i in range(len(dd["forget"]))])
    out = tmp_path_factory.mktemp("relearn") / "heldout"
    DatasetDict({**dd, "forget": forget, "forget_train": forget.filter(lambda r: not r["heldout"])}).save_to_disk(
        str(out))
    return out


def test_heldout_rows_are_asked_and_the_others_relearned(heldout_data):
    dd = load_from_disk(str(heldout_data))
    rows = relearn.choose(DatasetDict({k: v for k, v in dd.items() if k != "forget_train"}), "forget", None, 0)
    assert (rows.split, rows.evaluated, rows.relearned, rows.chosen_by) == ("forget", [0, 2, 4, 6], [1, 3, 5, 7],
                                                                            "heldout")
    rows = relearn.choose(dd, "forget", None, 0)  # forget_train, when the data has it
    assert (rows.split, rows.evaluated, rows.relearned) == ("forget_train", [0, 2, 4, 6], [0, 1, 2, 3])
    asked = relearn.asked_rows(dd, rows)["forget"]
    assert asked["prompt"] == dd["forget"].select([0, 2, 4, 6])["prompt"]
    assert not set(relearn.training_rows(dd, rows)["prompt"]) & set(asked["prompt"])


def test_without_a_heldout_column_a_seeded_half_of_the_facts_is_asked(tiny_kg):
    dd = load_from_disk(str(tiny_kg))
    rows = relearn.choose(dd, "forget", None, 0)
    assert rows.chosen_by == "seeded half" and len(rows.evaluated) == len(rows.relearned) == len(dd["forget"]) // 2
    assert sorted(rows.evaluated + rows.relearned) == list(range(len(dd["forget"])))
    assert relearn.choose(dd, "forget", None, 0) == rows
    assert any(relearn.choose(dd, "forget", None, s).evaluated != rows.evaluated for s in range(1, 5))
    other = relearn.choose(dd, "forget", "boundary", 0)  # another split relearned: every forget row asked
    assert other.evaluated == list(range(len(dd["forget"]))) and other.relearned == list(range(len(dd["boundary"])))


def test_relearning_is_deterministic_for_a_seed_and_changes_the_model(tiny_run, tiny_lora, tiny_kg, tmp_path):
    data = relearn.training_rows(load_from_disk(str(tiny_kg)), relearn.choose(load_from_disk(str(tiny_kg)), "forget",
                                                                              None, 0))
    settings = relearn.attack(ATTACK)
    for run, kind in ((tiny_run, "model"), (tiny_lora, "adapter")):
        outs = [tmp_path / f"{kind}{i}" for i in range(3)]
        for out, seed in zip(outs, (0, 0, 1)):
            target, loss = relearn.fine_tune(resolve(str(run)), data, out, settings, seed)
            assert loss > 0 and (target.adapter is not None) == (kind == "adapter")
        assert max_weight_diff(outs[0], outs[1]) == 0 and max_weight_diff(outs[0], outs[2]) > 0  # another order
        assert max_weight_diff(run, outs[0]) > 0  # the relearned model is not the one given


def test_eval_relearn_section(monkeypatch, tiny_run, heldout_data, tmp_path):
    trained = []

    def recording(target, data, out, settings, seed):
        trained.extend(data["prompt"])
        return fine_tune(target, data, out, settings, seed)

    fine_tune = relearn.fine_tune
    monkeypatch.setattr(relearn, "fine_tune", recording)
    docs = []
    for name in ("a", "b"):
        out, _, _ = run_eval(str(tiny_run), str(heldout_data), output=str(tmp_path / name), seed=3, relearn=ATTACK,
                             **FAST)
        docs.append(json.loads((out / "results.json").read_text()))
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the relearned model is gone
    section = docs[0]["relearn"]
    assert {k: section[k] for k in ("steps", "lr", "batch_size", "seed", "split", "n_relearn", "n_evaluated")} == {
        "steps": 3, "lr": 1e-2, "batch_size": 2, "seed": 3, "split": "forget_train", "n_relearn": 4, "n_evaluated": 4}
    assert section == docs[1]["relearn"]  # the same seed, the same attack and answers
    assert section["relearn_recovery"] == pytest.approx(section["accuracy_after"] - section["accuracy_before"])
    assert section["accuracy_before"] == section["before"]["exact_match"]
    assert section["before"]["answer_prob"] != section["after"]["answer_prob"]  # relearning moved the model
    samples = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    asked = load_from_disk(str(heldout_data))["forget"].filter(lambda r: r["heldout"])["prompt"]
    for phase in ("before", "after"):
        rows = [s for s in samples if s["suite"] == "relearn" and s["phase"] == phase]
        assert [s["prompt"] for s in rows] == asked
        assert section[f"accuracy_{phase}"] == pytest.approx(sum(s["exact_match"] for s in rows) / len(rows))
    assert len(trained) == 8 and not set(trained) & set(asked)  # two runs of the four training rows
    assert "## relearn" in (tmp_path / "a" / "report.md").read_text()


def test_cli_prints_the_relearn_summary(capsys, tiny_lora, tiny_kg, tmp_path):
    proc = cli(capsys, "eval", tiny_lora, "--data", tiny_kg, "--splits", "seen", "--limit", "2", "--engine", "hf",
               "--bootstrap_iters", "0", "--relearn", "2", "--relearn_batch_size", "4", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "relearn: 2 steps on 4 rows of 'forget'" in proc.stdout and "its LoRA adapter" in proc.stdout
    assert "relearn_recovery" in proc.stdout
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["relearn"]["evaluated_rows"] == "seeded half" and doc["relearn"]["lr"] == 1e-5


@pytest.mark.parametrize("given, message", [
    ({"steps": 0}, "--relearn must be at least 1"),
    ({"lr": 1e-3}, "--relearn_lr applies only with --relearn"),
    ({"split": "forget"}, "--relearn_split applies only with --relearn"),
    ({"steps": 2, "lr": 0.0}, "--relearn_lr must be positive"),
    ({"steps": 2, "batch_size": 0}, "--relearn_batch_size must be at least 1"),
])
def test_bad_settings_are_usage_errors(given, message):
    with pytest.raises(UsageError, match=message):
        relearn.attack(given)


@pytest.mark.parametrize("args, message", [
    (["--relearn", "0"], "--relearn must be at least 1"),
    (["--relearn_lr", "1e-3"], "--relearn_lr applies only with --relearn"),
    (["--relearn", "2", "--forget_split", "nope"], "no split 'nope'"),
    (["--relearn", "2", "--relearn_split", "nope"], "unknown split 'nope'"),
    (["--relearn", "2", "--forget_split", "seen", "--relearn_split", "forget"], "no rows to relearn on"),
    (["--relearn", "2", "--forget_split", "fabricated", "--relearn_split", "seen"], "lacks column"),
])
def test_bad_input_exits_2_before_any_work(capsys, tiny_run, tiny_kg, tmp_path, args, message):
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--output", tmp_path / "out", *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_a_split_without_heldout_rows_is_an_error(heldout_data):
    dd = load_from_disk(str(heldout_data))
    dd["forget"] = dd["forget"].map(lambda r: {"heldout": False}, keep_in_memory=True)
    with pytest.raises(UsageError, match="has no heldout rows"):
        relearn.choose(dd, "forget", None, 0)
    dd["forget"] = dd["forget"].select([0])
    with pytest.raises(UsageError, match="fewer than two facts"):
        relearn.choose(DatasetDict({"forget": dd["forget"].remove_columns("heldout")}), "forget", None, 0)
