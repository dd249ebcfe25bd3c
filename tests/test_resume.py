"""Checkpoints and resume: a run killed with SIGKILL leaves no run directory where a finished one would stand and
goes on from its last checkpoint (``--resume_from_checkpoint true``) to the weights of an uninterrupted run; every
trainer resumed from a checkpoint ends where the uninterrupted run ends; ``save_total_limit`` is honoured."""

import json
import signal
import subprocess
import sys
import time

import pytest
from datasets import DatasetDict, load_from_disk

from conftest import TINY_MODEL, cli, max_weight_diff, posttrain
from posttrain.gen import gen
from posttrain.train import train

# Resumed and uninterrupted runs take the same steps on the same batches from the same optimizer state; what is
# left is float noise from reloading (the weights round-trip exactly through safetensors).
ATOL = 1e-5


def losses(run) -> list[float]:
    return [h["loss"] for h in json.loads((run / "run.json").read_text())["log_history"] if "loss" in h]


def checkpoints(run) -> list[str]:
    return sorted(p.name for p in run.glob("checkpoint-*"))


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_runs_weights(tmp_path, tiny_kg):
    flags = ["--dataset_path", str(tiny_kg), *TINY_MODEL, "--per_device_train_batch_size", "8", "--max_steps", "80",
             "--save_strategy", "steps", "--save_steps", "10", "--save_total_limit", "2", "--logging_steps", "1",
             "--learning_rate", "5e-3", "--lr_scheduler_type", "linear"]
    whole = train("testbed/base.yaml", [*flags, "--output_dir", str(tmp_path / "whole")])
    out, partial = tmp_path / "run", tmp_path / ".run.partial"
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", "train", "testbed/base.yaml", *flags,
                             "--output_dir", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (partial / "checkpoint-10" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    # killed: nothing where the finished run would stand; the partial run holds at least one whole checkpoint
    assert not out.exists() and not (partial / "run.json").exists()
    assert (partial / "checkpoint-10" / "trainer_state.json").is_file()

    proc = posttrain("train", "testbed/base.yaml", *flags, "--output_dir", out, "--resume_from_checkpoint", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run", "whole"]
    info = json.loads((out / "run.json").read_text())
    assert info["resumed_from"].startswith(str(partial)) and info["train_metrics"]["epoch"] > 0
    assert checkpoints(out) == checkpoints(whole) == ["checkpoint-70", "checkpoint-80"]  # save_total_limit 2
    assert max_weight_diff(out, whole) < ATOL
    assert losses(out) == pytest.approx(losses(whole), abs=1e-4)  # the history before the kill comes back too


def test_resume_true_without_an_interrupted_run_is_one_line(capsys, tmp_path, tiny_kg):
    proc = cli(capsys, "train", "testbed/base.yaml", "--dataset_path", tiny_kg, "--output_dir", tmp_path / "run",
               *TINY_MODEL, "--max_steps", "1", "--resume_from_checkpoint", "true")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"posttrain: error: resume_from_checkpoint true: no interrupted run of {tmp_path / 'run'} with a saved "
        f"checkpoint (looked in {tmp_path / '.run.partial'})"]
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    for expected in ("is not a complete checkpoint directory", "holds the model only (saved with save_only_model)"):
        proc = cli(capsys, "train", "testbed/base.yaml", "--dataset_path", tiny_kg, "--output_dir",
                   tmp_path / "run", *TINY_MODEL, "--max_steps", "1", "--resume_from_checkpoint", ckpt)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr
        (ckpt / "trainer_state.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]


def test_a_failed_run_keeps_its_checkpoints_to_resume_from_and_one_without_leaves_nothing(monkeypatch, tmp_path,
                                                                                          tiny_kg):
    import transformers

    real = transformers.Trainer._save_checkpoint
    saved = []

    def save_then_fail(self, *args, **kwargs):
        if len(saved) == limit:
            raise KeyboardInterrupt  # Ctrl-C as the next checkpoint is due
        real(self, *args, **kwargs)
        saved.append(self.state.global_step)

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save_then_fail)
    flags = ["--dataset_path", str(tiny_kg), *TINY_MODEL, "--per_device_train_batch_size", "8", "--max_steps", "8",
             "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(tmp_path / "run")]
    limit = 2
    with pytest.raises(KeyboardInterrupt):
        train("testbed/base.yaml", flags)
    assert not (tmp_path / "run").exists()
    assert checkpoints(tmp_path / ".run.partial") == ["checkpoint-2", "checkpoint-4"]
    saved.clear()
    limit = 0
    with pytest.raises(KeyboardInterrupt):
        train("testbed/base.yaml", flags)  # a fresh run (no resume) clears the old partial one, saves nothing
    assert list(tmp_path.iterdir()) == []


# --- every trainer: resumed from an uninterrupted run's checkpoint, it ends where that run ends ---------------------

@pytest.fixture(scope="module")
def data(tiny_kg, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    kg = load_from_disk(str(tiny_kg))
    seen = kg["seen"].select(range(16)).select_columns(["prompt", "completion"])
    probe = seen.add_column("probe_correct", [i % 2 == 0 for i in range(16)]).add_column(
        "probe_entropy", [0.1 * i for i in range(16)])
    DatasetDict({"train": probe, "seen": seen}).save_to_disk(str(root / "qa"))
    return {"kg": tiny_kg, "qa": root / "qa",
            "boundary": gen("boundary", root / "boundary", ["--kg_path", str(tiny_kg), "--forget_frac", "0.5",
                                                            "--boundary_frac", "0.5"]),
            "reasoning": gen("reasoning", root / "mult", ["--task", "multiply", "--form", "direct", "--n_train",
                                                          "32", "--n_valid", "8", "--n_test", "8"])}


def method_flags(method, base, data) -> tuple[str, list[str]]:
    """Recipe and flags of a few-step run of ``method`` on the tiny testbed."""
    start = ["--model_name_or_path", str(base)]
    if method == "sft":
        return "testbed/base.yaml", ["--dataset_path", str(data["kg"]), *TINY_MODEL]
    if method in ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_sft"):
        return f"unlearn/{method}.yaml", [*start, "--dataset_path", str(data["kg"]), "--learning_rate", "5e-4"]
    if method == "rtuning":
        return "rtuning/testbed.yaml", [*start, "--dataset_path", str(data["qa"])]
    if method == "muscle":
        return "muscle/muscle.yaml", [*start, "--init_adapter", "", "--old_model", str(base), "--dataset_path",
                                      str(data["qa"]), "--dataset_train_split", "seen", "--use_peft", "false"]
    if method == "dco":
        return "dco/direct.yaml", ["--dataset_path", str(data["reasoning"]), *TINY_MODEL, "--dataset_eval_split",
                                   "", "--eval_strategy", "no", "--load_best_model_at_end", "false"]
    if method == "rule_rs":
        return "rule/rejection_steering.yaml", [*start, "--dataset_path", str(data["boundary"])]
    if method == "rule":
        return "rule/testbed.yaml", [*start, "--dataset_path", str(data["boundary"]), "--stage", "rebo",
                                     "--num_generations", "4", "--max_completion_length", "8"]
    raise AssertionError(method)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "rtuning", "grad_ascent", "grad_diff", "npo", "simnpo", "idk_sft",
                                    "rule_rs", "rule", "muscle", "dco"])
def test_every_trainer_resumes_from_a_checkpoint_to_the_same_weights(method, tiny_run, data, tmp_path):
    recipe, flags = method_flags(method, tiny_run, data)
    flags += ["--per_device_train_batch_size", "8", "--max_steps", "4", "--save_strategy", "steps", "--save_steps",
              "2", "--save_total_limit", "3", "--logging_steps", "1", "--seed", "3"]
    whole = train(recipe, [*flags, "--output_dir", str(tmp_path / "whole")])
    assert checkpoints(whole) == ["checkpoint-2", "checkpoint-4"]
    resumed = train(recipe, [*flags, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint",
                             str(whole / "checkpoint-2")])
    assert max_weight_diff(resumed, whole) < ATOL
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-4)


@pytest.mark.slow
def test_a_two_stage_rule_run_resumes_in_the_stage_it_was_interrupted_in(monkeypatch, tiny_run, data, tmp_path):
    import transformers

    from posttrain.trainers.rejection_steering import RejectionSteeringTrainer
    from posttrain.trainers.rule import RULETrainer

    real = transformers.Trainer._save_checkpoint
    stop = [RejectionSteeringTrainer, 4]  # the trainer and step after whose checkpoint the run is interrupted

    def interrupt(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if isinstance(self, stop[0]) and self.state.global_step == stop[1]:
            raise KeyboardInterrupt

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", interrupt)
    _, flags = method_flags("rule", tiny_run, data)
    flags = [*flags[:-6], "--rebo.num_generations", "4", "--rebo.max_completion_length", "8",
             "--rebo.per_device_train_batch_size", "8", "--rebo.max_steps", "4", "--save_strategy", "steps",
             "--save_steps", "2", "--output_dir", str(tmp_path / "rule")]
    with pytest.raises(KeyboardInterrupt):  # in stage 1
        train("rule/testbed.yaml", flags)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rule-rs.partial"]
    assert checkpoints(tmp_path / ".rule-rs.partial") == ["checkpoint-2", "checkpoint-4"]
    stop[:] = [RULETrainer, 2]
    with pytest.raises(KeyboardInterrupt):  # stage 1 resumed and finished, then stage 2 interrupted
        train("rule/testbed.yaml", [*flags, "--resume_from_checkpoint", "true"])
    rs = json.loads((tmp_path / "rule-rs" / "run.json").read_text())
    assert rs["resumed_from"].endswith("checkpoint-4") and rs["pipeline"]["stage"] == "rs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".rule.partial", "rule-rs"]
    assert checkpoints(tmp_path / ".rule.partial") == ["checkpoint-2"]
    stamp = (tmp_path / "rule-rs" / "run.json").stat().st_mtime_ns
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", real)
    run = train("rule/testbed.yaml", [*flags, "--resume_from_checkpoint", "true"])  # stage 1 reused, stage 2 resumed
    assert (tmp_path / "rule-rs" / "run.json").stat().st_mtime_ns == stamp
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from"].endswith("checkpoint-2") and info["pipeline"]["stage"] == "rebo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rule", "rule-rs"]
