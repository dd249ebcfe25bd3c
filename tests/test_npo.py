"""NPO on the seam: its loss against a hand computation, its value at the start (the model is its own reference,
r = 0), forgetting the forget answers while the retain ones stay much closer (full fine-tuning and LoRA), and the
settings it rejects."""

import math

import pytest
import torch
from datasets import load_from_disk
from peft import LoraConfig

from posttrain.core.modeling import load_model, load_tokenizer
from posttrain.trainers.base import answer_logps
from posttrain.trainers.npo import NPOConfig, NPOTrainer, npo_loss
from posttrain.trainers.unlearn import PairedCollator, prepare
from test_unlearn import LORA, _nll, _rejected, _unlearn


def test_answer_logps_sums_the_answer_tokens_only():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[-100, -100, 1, 2]])  # position t predicts label t+1: 0.8 (token 1), then 0.6 (token 2)
    logp, n = answer_logps(logits, labels)
    assert logp.dtype == torch.float64 and n.tolist() == [2]
    assert torch.allclose(logp, torch.tensor([math.log(0.8) + math.log(0.6)], dtype=torch.float64))


def test_npo_loss_is_the_papers_formula():
    r, beta = torch.tensor([0.0, -3.0, 2.5]), 0.1
    want = sum((2 / beta) * math.log(1 + math.exp(beta * x)) for x in r.tolist()) / 3  # (2/β)·log(1 + (π/π_ref)^β)
    assert npo_loss(r, beta).item() == pytest.approx(want, rel=1e-6)
    assert npo_loss(torch.zeros(4), 0.5).item() == pytest.approx(4 * math.log(2))
    assert npo_loss(torch.tensor([-100.0]), beta).item() < 1e-2  # forgotten: the loss fades out


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_at_step_0_the_forget_term_is_2_over_beta_log_2(tiny_run, tiny_kg, tmp_path, lora):
    kg, tok = load_from_disk(str(tiny_kg)), load_tokenizer(str(tiny_run))
    args = NPOConfig(output_dir=str(tmp_path), report_to="none", beta=0.25, forget_weight=2.0, retain_weight=0.5,
                     per_device_train_batch_size=4)
    peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if lora else None
    trainer = NPOTrainer(load_model(str(tiny_run)), args, train_dataset=prepare(dict(kg), args).train,
                         processing_class=tok, peft_config=peft)
    inputs = PairedCollator(tok)([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()  # as at the first step (the tiny model has no dropout)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
        retain = trainer.model(**inputs["retain"]).loss
    assert loss.item() == pytest.approx(2.0 * (2 / 0.25) * math.log(2) + 0.5 * retain.item(), rel=1e-5)
    assert trainer._metrics["train"]["log_ratio"] == [pytest.approx(0.0, abs=1e-4)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_npo_forgets_the_forget_answers_and_keeps_the_retain_ones_closer(tiny_run, tiny_kg, tmp_path, lora):
    before = {s: _nll(tiny_run, tiny_run, tiny_kg, s) for s in ("forget", "retain")}
    run = _unlearn("npo", tiny_run, tiny_kg, tmp_path / "npo", *(LORA if lora else []))
    assert (run / "adapter_config.json").is_file() == lora
    after = {s: _nll(run, tiny_run, tiny_kg, s) for s in ("forget", "retain")}
    gain = {s: after[s] - before[s] for s in after}
    # mean token NLL of the forget answers up by > 2 nats (their probability down by a factor > e^2); on this barely
    # trained model forget and retain answers share their format, so the retain NLL rises too, less
    assert gain["forget"] > 2.0 and gain["retain"] < 0.9 * gain["forget"], (before, after)


@pytest.mark.parametrize("flags, message", [
    (["--beta", "0"], "beta must be positive"),
    (["--beta", "-0.1"], "beta must be positive"),
    (["--retain_weight", "0"], "retain_weight must be positive"),
    (["--dataset_retain_split", ""], "npo reads a retain split"),
])
def test_settings_that_would_misapply_npo_exit_2_with_one_line(capsys, tiny_run, tiny_kg, tmp_path, flags, message):
    _rejected(capsys, "npo", tiny_run, tiny_kg, tmp_path / "run", flags, message)
