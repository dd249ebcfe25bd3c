"""PDU on the seam: the logit-margin flattening loss against a hand computation, the trainer's Lagrangian and dual
step on a tiny batch, the warm-up, the dual variable surviving a checkpoint and resume, forgetting the forget answers
while the retain ones stay much closer (full fine-tuning and LoRA), and the settings it rejects."""

import json
import math

import pytest
import torch
from datasets import load_from_disk

from conftest import ROOT, max_weight_diff
from posttrain.core.modeling import load_model, load_tokenizer
from posttrain.train import train
from posttrain.trainers.pdu import PDUConfig, PDUTrainer, margin_flattening
from posttrain.trainers.unlearn import PairedCollator, prepare
from test_distributed import in_process, launch
from test_unlearn import LORA, _nll, _rejected, _unlearn


def test_margin_flattening_is_the_squared_gap_between_the_max_and_the_mean_logit():
    assert margin_flattening(torch.full((2, 3, 5), 1.7)).abs().max().item() == 0  # flat logits: uniform output
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]], [[-1.0, 5.0, -4.0], [2.0, 2.0, 2.0]]])
    # (3 − 2)², (6 − 2)², (5 − 0)², 0
    assert margin_flattening(logits).tolist() == [[1.0, 16.0], [25.0, 0.0]]
    assert margin_flattening(logits.bfloat16()).dtype == torch.float32


def _trainer(tiny_run, tiny_kg, tmp_path, **kw):
    kg, tok = load_from_disk(str(tiny_kg)), load_tokenizer(str(tiny_run))
    args = PDUConfig(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, **kw)
    trainer = PDUTrainer(load_model(str(tiny_run)), args, train_dataset=prepare(dict(kg), args).train,
                         processing_class=tok)
    trainer.model.train()  # as in a training step (the tiny model has no dropout)
    return trainer, PairedCollator(tok)([trainer.train_dataset[i] for i in range(4)])


def _by_hand(model, inputs):
    """L_f (over the positions whose next label is an answer token) and L_r of a paired batch, in plain torch."""
    forget = inputs["forget"]
    z = model(**forget).logits[:, :-1].float()
    keep = forget["labels"][:, 1:] != -100
    m2 = (z.max(-1).values - z.sum(-1) / z.shape[-1]) ** 2
    return (m2 * keep).sum().item() / keep.sum().item(), model(**inputs["retain"]).loss.item()


@pytest.mark.parametrize("gap, want", [(1.0, 3.5), (-1.0, 2.5), (-10.0, 0.0)], ids=["above", "below", "clamped"])
def test_compute_loss_is_the_lagrangian_and_the_dual_step_follows_the_retain_nll(tiny_run, tiny_kg, tmp_path, gap,
                                                                                 want):
    """loss = forget_weight·L_f + λ·(L_r − ε) at λ = retain_weight, then λ ← max(0, λ + η·(L_r − ε)): with the retain
    NLL 1 above ε, λ = 3 rises to 3.5 (η = 0.5); 1 below, it falls to 2.5; 10 below, to 0, not −2."""
    trainer, inputs = _trainer(tiny_run, tiny_kg, tmp_path, epsilon=1.0, forget_weight=0.5, retain_weight=3.0,
                               dual_lr=0.5, dual_warmup_epochs=0)
    with torch.no_grad():
        flat, retain = _by_hand(trainer.model, inputs)
    eps = retain - gap
    trainer.args.epsilon = eps
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
    assert loss.item() == pytest.approx(0.5 * flat + 3.0 * (retain - eps), rel=1e-5)
    assert trainer.retain_weight == pytest.approx(want, abs=1e-5)
    assert trainer._metrics["train"]["dual_lambda"] == [3.0]  # the λ that weighed this call
    assert trainer._metrics["train"]["flattening_loss"] == [pytest.approx(flat, rel=1e-5)]
    with torch.no_grad():
        second = trainer.compute_loss(trainer.model, inputs)  # the new λ weighs the next call
    assert second.item() == pytest.approx(0.5 * flat + want * (retain - eps), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kw", [{"dual_warmup_epochs": 2}, {"primal_dual": False, "dual_warmup_epochs": 0}],
                         ids=["warmup", "fixed"])
def test_lambda_stays_fixed_during_the_warmup_and_without_primal_dual(tiny_run, tiny_kg, tmp_path, kw):
    trainer, inputs = _trainer(tiny_run, tiny_kg, tmp_path, epsilon=0.0, retain_weight=2.0, **kw)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, inputs)
    assert trainer.retain_weight == 2.0
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, inputs)  # evaluation never moves λ
    assert trainer.retain_weight == 2.0


def test_the_dual_steps_start_at_the_first_epoch_end_past_the_warmup(tiny_run, tiny_kg, tmp_path):
    """Three epochs, warm-up 2: λ = retain_weight for every step of epochs 1 and 2, then it moves every step."""
    trainer, _ = _trainer(tiny_run, tiny_kg, tmp_path, epsilon=0.0, retain_weight=2.0, dual_warmup_epochs=2,
                          num_train_epochs=3, learning_rate=1e-4, logging_steps=1, save_strategy="no")
    trainer.train()
    per_epoch = math.ceil(len(trainer.train_dataset) / 4)
    lam = [h["dual_lambda"] for h in trainer.state.log_history if "dual_lambda" in h]
    assert len(lam) == 3 * per_epoch
    assert lam[: 2 * per_epoch + 1] == [2.0] * (2 * per_epoch + 1)  # the third epoch's first step still at 2
    assert all(b > a for a, b in zip(lam[2 * per_epoch:], lam[2 * per_epoch + 1:]))  # ε = 0: it only rises


def _lambdas(run):
    return [h["dual_lambda"] for h in json.loads((run / "run.json").read_text())["log_history"] if "dual_lambda" in h]


def _saved(checkpoint):
    return json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["DualAscent"]["args"]


@pytest.mark.parametrize("restore", ["false", "true"], ids=["default", "restore_callback_states"])
def test_a_resumed_run_takes_lambda_back_from_its_checkpoint(tiny_run, tiny_kg, tmp_path, restore):
    """λ is trainer state: a run resumed from a checkpoint goes on from the λ saved there, to the same λ as the run
    that was not interrupted — whether or not the Trainer also restores callbacks (then it replaces DualAscent)."""
    flags = ["--restore_callback_states_from_checkpoint", restore, "--model_name_or_path", str(tiny_run), "--dataset_path", str(tiny_kg), "--learning_rate", "5e-4",
             "--epsilon", "0.5", "--dual_warmup_epochs", "0", "--per_device_train_batch_size", "8", "--max_steps",
             "4", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1", "--seed", "3"]
    whole = train("unlearn/pdu.yaml", [*flags, "--output_dir", str(tmp_path / "whole")])
    mid = _saved(whole / "checkpoint-2")
    assert mid["updating"] and mid["dual_lambda"] != 1.0  # it has moved by the checkpoint
    resumed = train("unlearn/pdu.yaml", [*flags, "--output_dir", str(tmp_path / "resumed"),
                                         "--resume_from_checkpoint", str(whole / "checkpoint-2")])
    assert _saved(resumed / "checkpoint-4") == pytest.approx(_saved(whole / "checkpoint-4"), abs=1e-5)
    assert _lambdas(resumed) == pytest.approx(_lambdas(whole), abs=1e-5)
    assert len(set(_lambdas(whole))) == 4


@pytest.mark.slow
def test_on_two_processes_lambda_follows_the_retain_nll_of_the_global_batch(tiny_run, tiny_kg, tmp_path):
    """Two processes x 4 rows take the dual steps of one process x 8 rows — each on the retain NLL over both
    processes' halves, so both hold one λ — and end at its weights (the 8 forget items are one global batch)."""
    args = ["unlearn/pdu.yaml", "--model_name_or_path", tiny_run, "--dataset_path", tiny_kg, "--learning_rate",
            "5e-4", "--epsilon", "0.5", "--dual_warmup_epochs", "0", "--max_steps", "4", "--logging_steps", "1"]
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = in_process(tmp_path / "one" / "run", [*args, "--per_device_train_batch_size", "8"])
    two = launch(tmp_path / "two" / "run", [*args, "--per_device_train_batch_size", "4"])
    assert len(set(_lambdas(one))) == 4
    assert _lambdas(two) == pytest.approx(_lambdas(one), rel=1e-4)
    assert max_weight_diff(one, two) < 1e-4


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_pdu_forgets_the_forget_answers_and_keeps_the_retain_ones_closer(tiny_run, tiny_kg, tmp_path, lora):
    # ε 0.1 above the retain NLL before, λ from 30 (the README starts it at 50-100: L_f, a squared logit gap, is
    # large), no warm-up, 10 steps: on this barely trained model forget and retain answers share their format, and
    # with λ = 1 or 5 steps the flattening takes the retain answers with it
    before = {s: _nll(tiny_run, tiny_run, tiny_kg, s) for s in ("forget", "retain")}
    run = _unlearn("pdu", tiny_run, tiny_kg, tmp_path / "pdu", *(LORA if lora else []), "--dual_warmup_epochs", "0",
                   "--epsilon", f"{before['retain'] + 0.1:.3f}", "--retain_weight", "30", "--max_steps", "10")
    assert (run / "adapter_config.json").is_file() == lora
    after = {s: _nll(run, tiny_run, tiny_kg, s) for s in ("forget", "retain")}
    gain = {s: after[s] - before[s] for s in after}
    assert gain["forget"] > 0.5 and gain["retain"] < 0.5 * gain["forget"], (before, after)


@pytest.mark.parametrize("flags, message", [
    (["--epsilon", "-0.1"], "epsilon must be >= 0"),
    (["--dual_lr", "0"], "dual_lr must be positive with primal_dual"),
    (["--dual_warmup_epochs", "-1"], "dual_warmup_epochs must be >= 0"),
    (["--retain_weight", "0"], "retain_weight must be positive"),
    (["--forget_weight", "0"], "forget_weight must be positive"),
    (["--dataset_retain_split", ""], "pdu reads a retain split"),
])
def test_settings_that_would_misapply_pdu_exit_2_with_one_line(capsys, tiny_run, tiny_kg, tmp_path, flags, message):
    _rejected(capsys, "pdu", tiny_run, tiny_kg, tmp_path / "run", flags, message)


def test_a_recipe_without_epsilon_is_an_error_that_says_how_to_choose_it(capsys, tiny_run, tiny_kg, tmp_path):
    recipe = tmp_path / "pdu.yaml"
    shipped = (ROOT / "recipes/unlearn/pdu.yaml").read_text()
    recipe.write_text("".join(line for line in shipped.splitlines(True) if not line.startswith("epsilon:")))
    _rejected(capsys, str(recipe), tiny_run, tiny_kg, tmp_path / "run", [], "epsilon is required")
    _rejected(capsys, str(recipe), tiny_run, tiny_kg, tmp_path / "run", ["--primal_dual", "false"],
              "a little above the model's retain NLL before unlearning")
