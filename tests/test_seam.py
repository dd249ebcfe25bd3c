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
