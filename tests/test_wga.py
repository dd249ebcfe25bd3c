"""WGA on the seam: the weighted log-probability against a hand computation (the weight detached), the trainer's
loss on a tiny batch, forgetting the forget answers while the retain ones stay much closer (full fine-tuning and
LoRA), and the settings it rejects."""

import pytest
import torch
import torch.nn.functional as F
from datasets import load_from_disk

from posttrain.core.modeling import load_model, load_tokenizer
from posttrain.trainers.unlearn import PairedCollator, prepare
from posttrain.trainers.wga import WGAConfig, WGATrainer, label_logps, wga_weight
from test_unlearn import LORA, _nll, _rejected, _unlearn


def test_label_logps_are_the_log_softmax_at_each_next_label_and_zero_off_the_answer():
    logits = torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, 3, 5, -100], [-100, -100, 1, 6]])
    want = torch.zeros(2, 3)
    for b, t in [(0, 0), (0, 1), (1, 1), (1, 2)]:
        want[b, t] = F.log_softmax(logits[b, t], -1)[labels[b, t + 1]]
    assert torch.allclose(label_logps(logits, labels), want, atol=1e-6)


def test_the_weight_is_p_to_the_beta_and_carries_no_gradient():
    logp = torch.log(torch.tensor([0.9, 0.5, 0.01])).requires_grad_()
    assert wga_weight(logp, 2.0).tolist() == pytest.approx([0.81, 0.25, 1e-4], rel=1e-5)
    (wga_weight(logp, 2.0) * logp).sum().backward()
    # d/d log p of sg(p)^β·log p is p^β: a token already forgotten (p 0.01) barely pulls, where GA's pull is 1
    assert logp.grad.tolist() == pytest.approx([0.81, 0.25, 1e-4], rel=1e-5)


def test_the_trainer_loss_is_the_weighted_token_mean_plus_the_retain_nll(tiny_run, tiny_kg, tmp_path):
    kg, tok = load_from_disk(str(tiny_kg)), load_tokenizer(str(tiny_run))
    args = WGAConfig(output_dir=str(tmp_path), report_to="none", beta=2.0, forget_weight=0.5, retain_weight=3.0,
                     per_device_train_batch_size=4)
    trainer = WGATrainer(load_model(str(tiny_run)), args, train_dataset=prepare(dict(kg), args).train,
                         processing_class=tok)
    inputs = PairedCollator(tok)([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
        forget = inputs["forget"]
        logp = F.log_softmax(trainer.model(**forget).logits[:, :-1].float(), -1)
        keep = forget["labels"][:, 1:] != -100
        token = logp[keep].gather(-1, forget["labels"][:, 1:][keep][:, None])[:, 0]
        by_hand = (token.exp() ** 2 * token).mean().item()
        retain = trainer.model(**inputs["retain"]).loss.item()
    assert loss.item() == pytest.approx(0.5 * by_hand + 3.0 * retain, rel=1e-5)
    assert trainer._metrics["train"]["wga_loss"] == [pytest.approx(by_hand, rel=1e-5)]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_wga_forgets_the_forget_answers_and_keeps_the_retain_ones_closer(tiny_trained, tiny_kg, tmp_path, lora):
    """On a base that knows its answers (weight p about 0.5); on ``tiny_run`` (p about 0.13) WGA barely moves. LoRA
    (rank 4 on q/v) takes 10 steps to forget as much as a full fine-tune in 5."""
    before = {s: _nll(tiny_trained, tiny_trained, tiny_kg, s) for s in ("forget", "retain")}
    run = _unlearn("wga", tiny_trained, tiny_kg, tmp_path / "wga", *(LORA + ["--max_steps", "10"] if lora else []))
    assert (run / "adapter_config.json").is_file() == lora
    after = {s: _nll(run, tiny_trained, tiny_kg, s) for s in ("forget", "retain")}
    gain = {s: after[s] - before[s] for s in after}
    assert gain["forget"] > 0.4 and gain["retain"] < 0.5 * gain["forget"], (before, after)


@pytest.mark.parametrize("flags, message", [
    (["--beta", "0"], "at 0 WGA is GradDiff's loss"),
    (["--beta", "-1"], "beta must be positive"),
    (["--retain_weight", "0"], "retain_weight must be positive"),
    (["--forget_weight", "0"], "forget_weight must be positive"),
    (["--dataset_retain_split", ""], "wga reads a retain split"),
])
def test_settings_that_would_misapply_wga_exit_2_with_one_line(capsys, tiny_run, tiny_kg, tmp_path, flags, message):
    _rejected(capsys, "wga", tiny_run, tiny_kg, tmp_path / "run", flags, message)
