"""Distributed training on the CPU: the ``posttrain train`` command a user runs, under ``accelerate launch`` with two
real processes (torchrun; accelerate's MULTI_CPU over gloo), against one process at the same global batch size.

How two processes are had without GPUs: ``accelerate launch --cpu --num_processes 2`` starts *one* process (its
launcher for the CPU spawns several only through mpirun), so the tests launch ``recipes/accelerate/multi_gpu.yaml``
with ``ACCELERATE_USE_CPU=true``: torchrun starts the two processes and accelerate joins them over gloo. Without
that variable each process would train alone and all would write the one run; ``posttrain train`` refuses it.

Why the runs must agree: accelerate shards each global batch of 8 between the processes (the seeded sampler's
same permutation on both; process k takes rows 4k..4k+3 of it), and the loss is normalised over the whole global
batch, as HF's Trainer does it — ``num_items_in_batch`` counts the answer tokens of every micro-batch of the step
on every process, each process divides its summed token losses by that count and multiplies by the number of
processes, which DDP's gradient average undoes. Two processes x 4 rows is then the same sum of per-token gradients
as one process x 8 rows (or x 4 rows with 2 accumulation steps), only added in another order.

Tolerances (float32): the sums in another order (gloo's all-reduce of two halves, 1 intra-op thread per process
against 2) differ by ~1e-7 relative, and 8 Adam steps keep that small. Measured, 2 processes against 1: logged
losses within 2e-7 relative (SFT) and 5e-7 absolute (GradDiff, whose loss passes near 0); final weights within
1.2e-7 (SFT) and 5e-6 (GradDiff, whose gradient ascent grows its gradients step by step) in max |difference|. The
tests allow 1e-4 relative (or 1e-5 absolute) on each logged loss and 1e-4 on every weight: 20x above the noise, and
far below what a per-process normalisation does — GradDiff with each process's own token mean (posttrain's before
this was fixed) logged a first loss 2.3% off and ended 1.5e-2 away in max |difference|, twice as far as its 8 steps
moved any weight (8e-3); with the token means fixed but the retain partners never redrawn on 2 processes (accelerate
passes the epoch to the dataset on one process only; now ``unlearn.NewPairsEachEpoch`` does), the losses parted
from step 2 and the weights ended 1.3e-2 apart.

FSDP and DeepSpeed ZeRO-3 run on GPUs only: accelerate 1.15 turns FSDP on only for GPU-like devices (with
``ACCELERATE_USE_CPU=true`` the FSDP launch trains as plain data parallel, MULTI_CPU) and ignores DeepSpeed on the
CPU, so their configs are checked by accelerate's own config loader and plugins instead.
"""

import json
import math
import os
import subprocess
import sys
from unittest import mock

import pytest

from posttrain.core.modeling import load_model

from conftest import ROOT, TINY_MODEL, cli, max_weight_diff

STEPS = 8
GLOBAL_BATCH = 8
LOSS_RTOL = 1e-4  # relative, on each logged loss (see the module docstring)
LOSS_ATOL = 1e-5  # and absolute, for a loss near 0 (GradDiff's crosses it): 1e-5 against a first loss 9e-3 off
WEIGHT_ATOL = 1e-4  # max |difference| of any final weight (see the module docstring)

SFT = ["testbed/base.yaml", *TINY_MODEL]
GRAD_DIFF = ["unlearn/grad_diff.yaml", "--learning_rate", "1e-3"]


def launch(out, args):
    """``posttrain train ARGS --output_dir OUT`` under ``accelerate launch`` on two CPU processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(ROOT / "recipes/accelerate/multi_gpu.yaml"), "--num_processes", "2",
           "--main_process_port", "0",  # a free port: another launch on the machine may hold 29500
           "-m", "posttrain", "train", *map(str, args), "--output_dir", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def in_process(out, args):
    from posttrain.train import train

    return train(str(args[0]), [*map(str, args[1:]), "--output_dir", str(out)])


def info(run):
    return json.loads((run / "run.json").read_text())


def losses(run, key="loss"):
    return [h[key] for h in info(run)["log_history"] if key in h and "train_runtime" not in h]


def files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def check_written_once_by_the_main_process(run, reference, rows):
    """Only the finished run is left beside it (no ``.run.partial``, no swapped-out or temporary directory), with the
    same files as the one-process run's (no process's extra), and a ``run.json`` of the two processes together: one
    log entry per global step, their count and the data seen as one global batch of 8 per step (two processes each
    training alone would have seen 4 rows a step)."""
    assert [p.name for p in run.parent.iterdir()] == [run.name]
    assert files(run) == files(reference)
    got = info(run)
    assert got["distributed"] == {"type": "MULTI_CPU", "num_processes": 2}
    assert info(reference)["distributed"] == {"type": "NO", "num_processes": 1}
    logged = [h for h in got["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == list(range(1, STEPS + 1))
    assert sum("train_runtime" in h for h in got["log_history"]) == 1
    assert logged[-1]["epoch"] == pytest.approx(STEPS / math.ceil(rows / GLOBAL_BATCH))


def check_same_training(one, two):
    """The logged losses step by step and the final weights of two runs agree within the stated tolerances."""
    l1, l2 = losses(one), losses(two)
    assert len(l1) == len(l2) == STEPS
    assert l2 == pytest.approx(l1, rel=LOSS_RTOL, abs=LOSS_ATOL), (l1, l2)
    diff = max_weight_diff(one, two)
    assert diff < WEIGHT_ATOL, diff
    return diff


@pytest.mark.slow
def test_sft_on_two_processes_matches_one_process_at_the_same_global_batch(tmp_path, tiny_kg):
    args = [*SFT, "--dataset_path", tiny_kg, "--max_steps", STEPS, "--logging_steps", 1]
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = in_process(tmp_path / "one" / "run", [*args, "--per_device_train_batch_size", GLOBAL_BATCH])
    two = launch(tmp_path / "two" / "run", [*args, "--per_device_train_batch_size", GLOBAL_BATCH // 2])

    rows = info(one)["train_data"]["rows"]
    check_written_once_by_the_main_process(two, one, rows)
    loss = losses(two)
    assert sum(loss[-2:]) / 2 < 0.85 * loss[0], loss  # from scratch: the loss falls within 8 steps
    check_same_training(one, two)
    model = load_model(str(two))  # a plain model directory: loads without accelerate
    assert type(model).__name__ == "LlamaForCausalLM"


@pytest.mark.slow
def test_grad_diff_on_two_processes_matches_one_process_and_accumulation(tmp_path, tiny_kg, tiny_run):
    """GradDiff: paired forget/retain batches, each half's token mean over the global batch. The forget split has 8
    items, one global batch: every step is an epoch, with fresh retain partners drawn each epoch (a fixed function of
    the seed, the epoch and the item, so the same on every process)."""
    args = [*GRAD_DIFF, "--model_name_or_path", tiny_run, "--dataset_path", tiny_kg, "--max_steps", STEPS,
            "--logging_steps", 1]
    for name in ("one", "accumulated", "two"):
        (tmp_path / name).mkdir()
    one = in_process(tmp_path / "one" / "run", [*args, "--per_device_train_batch_size", GLOBAL_BATCH])
    accumulated = in_process(tmp_path / "accumulated" / "run",
                             [*args, "--per_device_train_batch_size", GLOBAL_BATCH // 2,
                              "--gradient_accumulation_steps", 2])
    two = launch(tmp_path / "two" / "run", [*args, "--per_device_train_batch_size", GLOBAL_BATCH // 2])

    rows = info(one)["train_data"]["rows"]
    assert rows == GLOBAL_BATCH
    check_written_once_by_the_main_process(two, one, rows)
    loss, forget = losses(two), losses(two, "forget_nll")
    assert loss[-1] < loss[0] - 1 and forget[-1] > forget[0] + 1, (loss, forget)  # unlearning: forget NLL up
    for part in ("forget_nll", "retain_nll"):  # logged over both processes' halves, as one process logs them
        assert losses(two, part) == pytest.approx(losses(one, part), rel=LOSS_RTOL, abs=LOSS_ATOL)
    check_same_training(one, two)
    check_same_training(one, accumulated)
    assert WEIGHT_ATOL < 0.02 * max_weight_diff(one, tiny_run)  # small against what the training changed


def test_processes_that_would_each_train_alone_are_refused(capsys, monkeypatch, tmp_path, tiny_kg):
    """torchrun's WORLD_SIZE says 2 processes, but accelerate (no GPU, no ACCELERATE_USE_CPU) runs each alone."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    out = tmp_path / "run"
    proc = cli(capsys, "train", *SFT, "--dataset_path", tiny_kg, "--output_dir", out, "--max_steps", 1)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "posttrain: error: 2 processes were launched, but each would train alone (no GPU found): on a machine "
        "without GPUs set ACCELERATE_USE_CPU=true (or use_cpu: true)"]
    assert not list(tmp_path.iterdir())


def launcher_env(config: str):
    """What ``accelerate launch --config_file CONFIG`` puts in the processes' environment (its own parsing and
    checks), and the parsed launch arguments."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = str(ROOT / "recipes/accelerate" / config)
    args = launch_command_parser().parse_args(["--config_file", path, "-m", "posttrain", "train", "RECIPE"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before its DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(
            [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_precision_from_config else [])])
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def test_fsdp_config_is_fsdp2_wrapping_each_decoder_layer_and_saving_a_full_model():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from transformers import LlamaForCausalLM

    path = ROOT / "recipes/accelerate/fsdp.yaml"
    assert "accelerate launch --config_file recipes/accelerate/fsdp.yaml -m posttrain train" in path.read_text()
    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.FSDP and config.mixed_precision == "no"
    assert config.fsdp_config["fsdp_version"] == 2
    args, env = launcher_env("fsdp.yaml")
    assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()  # as the Accelerator builds it in each process
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # save_model gathers a plain model.safetensors
    assert not plugin.cpu_ram_efficient_loading  # every process has the real weights for a reference copy
    # the testbed's model (and the hub recipes'): a LlamaForCausalLM, whose decoder layer class is this one
    assert plugin.transformer_cls_names_to_wrap == LlamaForCausalLM._no_split_modules == ["LlamaDecoderLayer"]


def test_zero3_config_is_stage_3_saving_a_full_model_with_the_trainers_batch_settings():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    path = ROOT / "recipes/accelerate/zero3.yaml"
    assert "accelerate launch --config_file recipes/accelerate/zero3.yaml -m posttrain train" in path.read_text()
    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.DEEPSPEED and config.mixed_precision == "no"
    args, env = launcher_env("zero3.yaml")
    assert args.use_deepspeed and env["ACCELERATE_USE_DEEPSPEED"] == "true"
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()  # builds without deepspeed installed
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # a plain saved model
    assert ds["zero_optimization"]["offload_param"]["device"] == "none"
    assert ds["gradient_accumulation_steps"] == ds["gradient_clipping"] == ds["train_micro_batch_size_per_gpu"] \
        == "auto"  # filled in from the trainer config
    assert plugin.zero3_init_flag is False


# --- the reference model (trainers/reference.py) under FSDP / ZeRO-3 ---------------------------------------------

def _state(kind, zero_stage=None):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage else None
    return SimpleNamespace(distributed_type=DistributedType[kind], deepspeed_plugin=plugin)


def test_sharding_is_read_from_the_accelerate_state_as_the_trainer_reads_it():
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from posttrain.trainers.reference import sharding

    assert sharding() is None  # this process: no launch
    assert sharding(_state("FSDP")) == "FSDP"
    assert sharding(_state("DEEPSPEED", 3)) == "DeepSpeed ZeRO-3"
    assert sharding(_state("DEEPSPEED", 2)) is None and sharding(_state("MULTI_CPU")) is None
    _, env = launcher_env("zero3.yaml")  # the plugin the shipped ZeRO-3 config gives each process
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    state = _state("DEEPSPEED")
    state.deepspeed_plugin = plugin
    assert state.distributed_type == DistributedType.DEEPSPEED and sharding(state) == "DeepSpeed ZeRO-3"


@pytest.mark.parametrize("kind, stage, how", [("FSDP", None, "FSDP"), ("DEEPSPEED", 3, "DeepSpeed ZeRO-3")])
def test_a_full_fine_tuning_reference_is_refused_under_fsdp_and_zero3(tiny_run, kind, stage, how):
    """A deep copy of the model is no sharded reference; with LoRA the reference is the adapter toggled on the
    trained model itself, which is not refused."""
    from peft import LoraConfig, get_peft_model

    from posttrain.core.errors import ConfigError
    from posttrain.trainers.reference import Reference

    with pytest.raises(ConfigError, match=f"full fine-tuning under {how} is not supported: the reference model"):
        Reference(load_model(str(tiny_run)), state=_state(kind, stage))
    lora = get_peft_model(load_model(str(tiny_run)), LoraConfig(r=4, task_type="CAUSAL_LM"))
    Reference(lora, state=_state(kind, stage))


def test_npo_under_fsdp_is_refused_in_one_line(capsys, monkeypatch, tiny_run, tiny_kg, tmp_path):
    """The trainer's check, as a launch with FSDP would reach it (the state stood in for: accelerate turns FSDP on
    only on GPUs)."""
    import posttrain.trainers.reference as reference

    monkeypatch.setattr(reference, "sharding", lambda state=None: "FSDP")
    out = tmp_path / "run"
    proc = cli(capsys, "train", "unlearn/npo.yaml", "--model_name_or_path", tiny_run, "--dataset_path", tiny_kg,
               "--output_dir", out, "--max_steps", 1)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("posttrain:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines == ["posttrain: error: npo: full fine-tuning under FSDP is not supported: the reference model (the "
                     "model before training) is a deep copy that FSDP does not shard; train a LoRA (use_peft: true) "
                     "or launch without FSDP (e.g. multi_gpu.yaml)"]
    assert not list(tmp_path.iterdir())
