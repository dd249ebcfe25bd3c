"""SimNPO on the seam: its loss against a hand computation (length-normalised, margin after scaling), no reference
model, forgetting the forget answers while the retain ones stay much closer (full fine-tuning and LoRA), and the
settings it rejects."""

import math

import pytest
import torch
from datasets import load_from_disk

from posttrain.core.modeling import load_model, load_tokenizer
from posttrain.trainers.base import answer_logps
from posttrain.trainers.simnpo import SimNPOConfig, SimNPOTrainer, simnpo_loss
from posttrain.trainers.unlearn import PairedCollator, prepare
from test_unlearn import LORA, _nll, _rejected, _unlearn


def test_simnpo_loss_is_the_papers_formula():
    logp, n = torch.tensor([-2.0, -9.0, -0.3]), torch.tensor([2.0, 3.0, 1.0])
    beta, delta = 4.5, 0.7

    def one(lp, k):  # −(2/β)·log σ(−β·lp/|y| − δ)
        return -(2 / beta) * math.log(1 / (1 + math.exp(beta * lp / k + delta)))

    want = sum(one(a, b) for a, b in zip(logp.tolist(), n.tolist())) / 3
    assert simnpo_loss(logp, n, beta, delta).item() == pytest.approx(want, rel=1e-6)
    # length-normalised: an answer twice as long with twice the log-probability costs the same
    assert simnpo_loss(torch.tensor([-4.0]), torch.tensor([4.0]), beta).item() == pytest.approx(
        simnpo_loss(torch.tensor([-2.0]), torch.tensor([2.0]), beta).item())


def test_the_trainer_computes_it_on_the_models_own_logprobs_without_a_reference(tiny_run, tiny_kg, tmp_path):
    kg, tok = load_from_disk(str(tiny_kg)), load_tokenizer(str(tiny_run))
    args = SimNPOConfig(output_dir=str(tmp_path), report_to="none", beta=2.0, delta=0.5, retain_weight=0.5,
                        per_device_train_batch_size=4)
    assert args.forget_weight == 0.125  # open-unlearning's default
    trainer = SimNPOTrainer(load_model(str(tiny_run)), args, train_dataset=prepare(dict(kg), args).train,
                            processing_class=tok)
    assert trainer.reference is None
    inputs = PairedCollator(tok)([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
        logp, n = answer_logps(trainer.model(**inputs["forget"]).logits, inputs["forget"]["labels"])
        retain = trainer.model(**inputs["retain"]).loss.item()
    terms = [-(2 / 2.0) * math.log(1 / (1 + math.exp(2.0 * a / b + 0.5))) for a, b in zip(logp.tolist(), n.tolist())]
    forget = sum(terms) / 4
    assert loss.item() == pytest.approx(0.125 * forget + 0.5 * retain, rel=1e-5)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_simnpo_forgets_the_forget_answers_and_keeps_the_retain_ones_closer(tiny_run, tiny_kg, tmp_path, lora):
    # β = 1 and forget_weight = 1: this barely trained model's answers have a mean token
    # log-probability near −2, where β = 4.5 leaves σ(β·lp) ≈ 1e-4 of the gradient — to SimNPO it has forgotten them
    before = {s: _nll(tiny_run, tiny_run, tiny_kg, s) for s in ("forget", "retain")}
    run = _unlearn("simnpo", tiny_run, tiny_kg, tmp_path / "simnpo", *(LORA if lora else []), "--beta", "1",
                   "--forget_weight", "1")
    assert (run / "adapter_config.json").is_file() == lora
    after = {s: _nll(run, tiny_run, tiny_kg, s) for s in ("forget", "retain")}
    gain = {s: after[s] - before[s] for s in after}
    assert gain["forget"] > 0.4 and gain["retain"] < 0.5 * gain["forget"], (before, after)


@pytest.mark.parametrize("flags, message", [
    (["--beta", "0"], "beta must be positive"),
    (["--retain_weight", "-1"], "retain_weight must be positive"),
    (["--forget_weight", "0"], "forget_weight must be positive"),
])
def test_settings_that_would_misapply_simnpo_exit_2_with_one_line(capsys, tiny_run, tiny_kg, tmp_path, flags,
                                                                   message):
    _rejected(capsys, "simnpo", tiny_run, tiny_kg, tmp_path / "run", flags, message)
