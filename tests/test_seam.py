"""The seam between `posttrain train` and the methods: the registry's declarations, the prepared training set in
every run, and trainers importable without the training command or the eval stack."""

import json
import subprocess
import sys

import pytest
from datasets import load_from_disk

from posttrain.trainers import METHODS, ROLES, get_method


def test_every_registered_method_loads_and_declares_its_data():
    for name in METHODS:
        method = get_method(name)
        assert all(hasattr(method, k) for k in METHODS.contract) and callable(method.prepare), name
        reads = method.Trainer.reads
        assert set(reads.splits) | set(reads.optional) <= set(ROLES) and reads.splits, name
        assert "prompt" in reads.columns, name  # RL methods (rule) read prompts, no completions


@pytest.mark.slow
def test_trainers_import_neither_the_commands_nor_the_eval_stack():
    modules = list(METHODS.modules.values())
    commands = ", ".join(repr(f"posttrain.{c}") for c in ("cli", "gen", "train", "evaluate", "probe", "push", "demo",
                                                            "recipe"))
    code = (f"import sys; import {', '.join(modules)}; "
            f"print([m for m in sys.modules if m in ({commands}) or m.startswith('posttrain.evals')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sft_run_holds_its_training_set(tiny_run, tiny_kg):
    saved = load_from_disk(str(tiny_run / "train_data"))["train"]
    corpus = load_from_disk(str(tiny_kg))["corpus"]
    assert saved.column_names == ["prompt", "completion"] and saved["completion"] == corpus["completion"]
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["train_data"] == {"path": "train_data", "splits": {"train": "corpus"}, "rows": len(corpus)}


NEW_METHOD = '''
"""A method written outside posttrain: SFT on the train split's first half, with a refusal list it reports."""
from dataclasses import dataclass, field

from posttrain.trainers.base import Prepared, Reads
from posttrain.trainers.sft import SFTConfig, SFTTrainer


@dataclass
class Config(SFTConfig):
    refusals: list[str] = field(default_factory=lambda: ["Never heard of {s} ."])

    def eval_settings(self):
        return {"refusals": list(self.refusals)}


class Trainer(SFTTrainer):
    reads = Reads(optional=())


def prepare(data, args, model_name=""):
    half = data["train"].select(range(len(data["train"]) // 2))
    return Prepared(half, None, {"half": len(half)})
'''


def test_a_new_method_is_its_module_and_one_registry_line(tmp_path, monkeypatch, tiny_run, tiny_kg):
    """Nothing else in posttrain changes: `train` reads what the trainer declares and runs the module's data step,
    and `eval` judges the run with the settings its config reports."""
    from posttrain.evaluate import run_eval
    from posttrain.train import train

    (tmp_path / "my_method.py").write_text(NEW_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(METHODS.modules, "mine", "my_method")
    run = train("recipes/testbed/base.yaml", [
        "--method", "mine", "--from_scratch", "false", "--model_name_or_path", str(tiny_run), "--dataset_path",
        str(tiny_kg), "--output_dir", str(tmp_path / "run"), "--max_steps", "2"])
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["method"] == "mine" and info["train_data"]["half"] == len(load_from_disk(str(tiny_kg))[
        "corpus"]) // 2
    _, results, _ = run_eval(str(run), str(tiny_kg), ["qa"], ["unseen"], limit=4, engine="hf",
                             output=str(tmp_path / "eval"), progress=False)
    config = json.loads((tmp_path / "eval" / "results.json").read_text())["config"]
    assert "Never heard of {s} ." in config["trained_with"]["refusals"]
    assert set(results["qa"]) == {"unseen"}
