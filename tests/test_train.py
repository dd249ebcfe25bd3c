import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from posttrain.core.errors import ConfigError

from conftest import ROOT, TINY_MODEL, cli


def test_sft_steps_lower_the_loss_and_write_a_complete_run(tiny_run):
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["config"]["method"] == "sft" and info["seed"] == 0
    assert info["versions"]["trl"] and info["wall_time_s"] > 0 and info["command"]
    assert (tiny_run / "model.safetensors").is_file() and (tiny_run / "tokenizer.json").is_file()
    assert not list(tiny_run.parent.glob(".*partial*"))
    losses = [h["loss"] for h in info["log_history"] if "loss" in h]
    assert len(losses) >= 5 and losses[-1] < 0.7 * losses[0]
    assert load_file(tiny_run / "model.safetensors")


def _recipe(tmp_path, **extra):
    base = yaml.safe_load((ROOT / "recipes/testbed/base.yaml").read_text())
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({**base, **extra}))
    return p


@pytest.mark.parametrize("case", ["unknown_key", "missing_data", "unknown_method", "unknown_split"])
def test_bad_input_exits_2_with_one_line_and_no_run_dir(capsys, tmp_path, tiny_kg, case):
    out = tmp_path / "run"
    args = {"unknown_key": [_recipe(tmp_path, dataset_path=str(tiny_kg), bogus_key=1)],
            "missing_data": [_recipe(tmp_path, dataset_path=str(tmp_path / "nowhere"))],
            "unknown_method": [_recipe(tmp_path, dataset_path=str(tiny_kg), method="nope")],
            "unknown_split": [_recipe(tmp_path, dataset_path=str(tiny_kg), dataset_train_split="nope")]}[case]
    proc = cli(capsys, "train", *args, "--output_dir", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posttrain: error:"), proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def _train_args(tiny_kg, out, *extra):
    return ["train", "testbed/base.yaml", "--dataset_path", tiny_kg, "--output_dir", out, *TINY_MODEL,
            "--max_steps", "1", "--report_to", "none", *extra]


def test_an_existing_output_dir_is_refused_unless_overwrite_output_dir(capsys, tmp_path, tiny_kg):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cli(capsys, *_train_args(tiny_kg, out))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"posttrain: error: output directory {out} already exists; give --overwrite_output_dir to replace it"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and (out / "keep.txt").read_text() == "mine"
    proc = cli(capsys, *_train_args(tiny_kg, out, "--overwrite_output_dir", "true"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "keep.txt").exists() and (out / "run.json").is_file()
    assert json.loads((out / "run.json").read_text())["config"]["overwrite_output_dir"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("error, code", [(ValueError, None), (ConfigError, 2)])
def test_only_a_trainer_config_error_is_bad_input(monkeypatch, capsys, tmp_path, tiny_kg, error, code):
    """A ValueError raised inside TRL (here: its dataset tokenisation) is a bug: it keeps its traceback instead of
    becoming a one-line 'bad input'; a trainer's own ConfigError is one line and exit 2."""
    import trl

    def broken(self, *args, **kwargs):
        raise error("tokenization went wrong")

    monkeypatch.setattr(trl.SFTTrainer, "_prepare_dataset", broken)
    out = tmp_path / "run"
    if code is None:
        with pytest.raises(ValueError, match="tokenization went wrong") as info:
            cli(capsys, *_train_args(tiny_kg, out))
        assert type(info.value) is ValueError and any(entry.name == "broken" for entry in info.traceback)
    else:
        proc = cli(capsys, *_train_args(tiny_kg, out))
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            "posttrain: error: sft: tokenization went wrong"]
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_accelerate_launch_runs_the_same_command(tmp_path, tiny_kg):
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes/accelerate/single.yaml"), "-m", "posttrain", "train", "testbed/base.yaml",
           "--dataset_path", str(tiny_kg), "--output_dir", str(out), *TINY_MODEL, "--max_steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "run.json").is_file()


def test_lora_training_saves_only_an_adapter(tiny_lora):
    assert (tiny_lora / "adapter_model.safetensors").is_file() and not (tiny_lora / "model.safetensors").exists()
    cfg = json.loads((tiny_lora / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and set(cfg["target_modules"]) == {"q_proj", "v_proj"}


def test_hf_engine_serves_the_adapter_unmerged(tiny_lora, tiny_run):
    import torch
    from peft import PeftModel

    from posttrain.core.modeling import load_model
    from posttrain.evals.hf_engine import HFEngine

    eng = HFEngine(str(tiny_run))
    prompts, conts = ["Question: Where was P1 born ? Answer:"], [" C1 ."]
    (base,) = eng.score(prompts, conts)
    (tuned,) = eng.score(prompts, conts, adapter=str(tiny_lora))
    assert tuned != pytest.approx(base, abs=1e-4)
    assert eng.score(prompts, conts)[0] == pytest.approx(base, abs=1e-6)  # switched off again, not merged
    ref = PeftModel.from_pretrained(load_model(str(tiny_run)), str(tiny_lora)).eval()
    ids = eng.tok(prompts[0] + conts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(ref(ids).logits[0], -1)
    n = len(eng.tok(prompts[0])["input_ids"])
    assert tuned == pytest.approx([logp[i - 1, ids[0, i]].item() for i in range(n, ids.shape[1])], abs=1e-5)


def test_a_finished_run_keeps_no_pickle(tiny_run, tiny_lora):
    """The Trainer's ``training_args.bin`` (a pickle) is dropped: the resolved config is in run.json."""
    for run in (tiny_run, tiny_lora):
        assert not (run / "training_args.bin").exists() and not list(run.glob("*.bin"))
        assert json.loads((run / "run.json").read_text())["config"]["learning_rate"] > 0


def _from(tiny_run, tiny_kg, out, *extra):
    return ["train", "testbed/base.yaml", "--from_scratch", "false", "--model_name_or_path", tiny_run,
            "--dataset_path", tiny_kg, "--output_dir", out, "--max_steps", "1", *extra]


@pytest.mark.parametrize("flags, message", [
    (TINY_MODEL, "num_hidden_layers 1, intermediate_size 256: the scratch model's sizes apply only with "
                 "from_scratch: true"),
    (["--max_position_embeddings", "64"], "max_position_embeddings 64: the scratch model's sizes apply only"),
])
def test_scratch_sizes_without_from_scratch_are_refused(capsys, tmp_path, tiny_run, tiny_kg, flags, message):
    out = tmp_path / "run"
    proc = cli(capsys, *_from(tiny_run, tiny_kg, out, *flags))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"posttrain: error: {message}"), \
        proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags, message", [
    (["--use_peft", "true", "--lora_r", "8"], "lora_r 8 would be ignored: init_adapter {} is trained with its own "
                                              "LoRA settings (r 4); drop them"),
    (["--lora_target_modules", "all-linear"], "lora_target_modules all-linear would be ignored"),
    (["--lora_dropout", "0.1", "--use_dora", "true"], "lora_dropout 0.1, use_dora True would be ignored"),
])
def test_lora_settings_an_init_adapter_would_override_are_refused(capsys, tmp_path, tiny_run, tiny_kg, tiny_lora,
                                                                 flags, message):
    out = tmp_path / "run"
    proc = cli(capsys, *_from(tiny_run, tiny_kg, out, "--init_adapter", tiny_lora, *flags))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"posttrain: error: {message.format(tiny_lora)}"), lines[0]
    assert not list(tmp_path.iterdir())


def test_lora_settings_the_init_adapter_has_are_accepted(capsys, tmp_path, tiny_run, tiny_kg, tiny_lora):
    """The recipe that made the adapter, given again with it (as a continued run does): nothing is ignored."""
    out = tmp_path / "run"
    proc = cli(capsys, *_from(tiny_run, tiny_kg, out, "--init_adapter", tiny_lora, "--use_peft", "true",
                              "--lora_r", "4", "--lora_target_modules", "v_proj", "q_proj"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
