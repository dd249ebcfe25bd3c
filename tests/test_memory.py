"""Memory features: gradient checkpointing with LoRA trains the adapter exactly as without it (the inputs of the
checkpointed layers require grad, so the frozen base passes gradients through to the adapter); QLoRA is refused,
in one line, where there is no CUDA GPU."""

import json

import pytest
import torch
import transformers.modeling_utils

from conftest import cli, max_weight_diff, run_weights
from posttrain.train import train

LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_dropout", "0", "--lora_target_modules", "q_proj", "v_proj",
        "--per_device_train_batch_size", "8", "--max_steps", "4", "--logging_steps", "1", "--learning_rate", "1e-2"]


def recipe(method, base, kg):
    if method == "sft":
        return "testbed/base.yaml", ["--from_scratch", "false", "--model_name_or_path", str(base), "--dataset_path",
                                     str(kg), "--dataset_train_split", "seen"]
    return f"unlearn/{method}.yaml", ["--model_name_or_path", str(base), "--dataset_path", str(kg)]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "grad_diff", "npo"])
def test_gradient_checkpointing_with_lora_trains_the_adapter_as_without_it(monkeypatch, method, tiny_run, tiny_kg,
                                                                          tmp_path):
    path, flags = recipe(method, tiny_run, tiny_kg)
    plain = train(path, [*flags, *LORA, "--output_dir", str(tmp_path / "plain")])
    calls = []
    real = transformers.modeling_utils.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)  # what HF's layers call
    ckpt = train(path, [*flags, *LORA, "--output_dir", str(tmp_path / "ckpt"), "--gradient_checkpointing", "true"])
    assert calls, "no layer was checkpointed"
    assert json.loads((ckpt / "run.json").read_text())["config"]["gradient_checkpointing"] is True
    b = run_weights(ckpt)
    trained = [k for k in b if "lora_B" in k]
    assert trained and all(b[k].abs().max() > 0 for k in trained)  # lora_B starts at zero: it got gradients
    assert max_weight_diff(plain, ckpt) < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("flag", ["--load_in_4bit", "--load_in_8bit"])
def test_qlora_is_refused_without_a_cuda_gpu(capsys, flag, tiny_run, tiny_kg, tmp_path):
    path, flags = recipe("sft", tiny_run, tiny_kg)
    proc = cli(capsys, "train", path, *flags, *LORA, flag, "true", "--output_dir", tmp_path / "run")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "needs a CUDA GPU (bitsandbytes)" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []
