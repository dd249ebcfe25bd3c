"""PDU: primal-dual unlearning, "Constrained Entropic Unlearning" (Entesari, Hatami, Khaziev, Ramakrishna, Fazlyab;
arXiv 2506.05314; open-unlearning's ``PDU`` and ``DualOptimizationCallback``, ``src/trainer/unlearn/pdu.py``,
``configs/trainer/PDU.yaml``, ``community/methods/PDU``; METHODS.md §9.5).

The problem is min L_f subject to L_r ≤ ε: forget by flattening the logits on the forget answers, under a bound on
the retain NLL. With z the logits at a position,

    m = max_v z_v − mean_v z_v,        L_f = mean of m² over the forget answers' positions

(no softmax: m = 0 iff the logits are flat, i.e. the output is uniform), L_r = GradDiff's retain NLL, and the loss is
the Lagrangian at the current dual variable λ,

    L = forget_weight · L_f + λ · (L_r − ε).

ε shifts the loss and not its gradient. λ is ``self.retain_weight``: it starts at ``retain_weight`` (open-unlearning's
α), and, in training once the warm-up is over, every ``compute_loss`` ends with a dual ascent step (open-unlearning's
``dual_update_upon: step``)

    λ ← max(0, λ + η · (L_r(micro-batch) − ε))

on that micro-batch's retain NLL, so the new λ weighs the next call. Under gradient accumulation that is one step per
micro-batch, as in open-unlearning; on several processes L_r is the micro-batch's token mean over all of them (the
logged ``retain_nll``), so that every process takes the same step and holds the same λ (open-unlearning steps each
process's λ on its own batch, so they drift apart). The warm-up: λ stays at ``retain_weight`` until the first epoch
end with epoch ≥ ``dual_warmup_epochs`` (from the start when it is 0). ``primal_dual: false`` keeps λ fixed.

λ and whether it moves yet are trainer state (``DualAscent``, a callback that is also transformers'
``ExportableState``): every checkpoint's ``trainer_state.json`` holds them (``stateful_callbacks``), and a run resumed
from it (``--resume_from_checkpoint``) takes them back, whatever ``restore_callback_states_from_checkpoint`` says —
without them a resumed run would start again from ``retain_weight`` and the warm-up.

What differs from ``GradDiffTrainer`` (open-unlearning's ``PDU(GradDiff)``): ``forget_loss`` (L_f, from the forward
pass that logs ``forget_nll``; float32), ``retain_loss`` (L_r − ε and the dual step) and ``retain_weight`` (λ, kept by
``DualAscent``). Logged per step beside ``forget_nll``/``retain_nll``: ``flattening_loss`` (L_f, the micro-batch's
mean) and ``dual_lambda`` (the λ that weighed the step's retain term). Defaults as open-unlearning's yaml:
forget_weight (its γ) 1, retain_weight (α) 1, ``dual_lr`` (η, its ``dual_step_size``) 1, ``dual_warmup_epochs`` 5,
``primal_dual`` on; ``epsilon`` (its ``retain_loss_eps``) has none there (``???``) and none here. Its README and
run.sh: choose ε a little above the model's retain loss before unlearning (TOFU 0.3; MUSE 0.1-1.5) and start λ high
(α 50-100), because L_f, a squared logit difference, is large.

Rejected, because they would misapply it: ``epsilon`` missing (a default bound would be wrong for almost every
model) or negative (a mean NLL never is: the constraint could not hold and λ would only grow), ``dual_lr <= 0`` with
``primal_dual`` (λ would never move, or move against the constraint), ``dual_warmup_epochs < 0``, and the shared
checks of ``grad_diff.py`` (``retain_weight <= 0``: so λ may reach 0 in training but not start there) and
``unlearn.py``.

Where open-unlearning differs, and what is done here: its L_f masks the *unshifted* labels over the unshifted logits,
so it flattens the positions of the answer tokens themselves — the EOS position (which predicts nothing that is
trained) included, the last prompt position (which predicts the first answer token) not. Here, as for every other
token loss of the chain, it is the positions that predict the answer tokens (the shifted labels), normalised over the
optimizer step (``token_mean``) where open-unlearning takes each micro-batch's mean: as many positions per answer,
one earlier. Left out: ``dual_update_upon: epoch`` (one dual step per epoch on a no-grad pass over the training
data), ``retain_loss_type: KL`` and ``loss_names``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from posttrain.core.errors import ConfigError
from posttrain.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from posttrain.trainers.sft import SFTTrainer
from posttrain.trainers.unlearn import answer_tokens, prepare

__all__ = ["DualAscent", "PDUConfig", "PDUTrainer", "margin_flattening", "prepare"]


def margin_flattening(logits: torch.Tensor) -> torch.Tensor:
    """Per position, (max_v z_v − mean_v z_v)² of the logits z (``[..., V]`` -> ``[...]``, float32): 0 iff the
    position's logits are all equal (a uniform output distribution)."""
    z = logits.float()
    return (z.max(dim=-1).values - z.mean(dim=-1)) ** 2


@dataclass
class PDUConfig(GradDiffConfig):
    epsilon: float | None = field(default=None, metadata={
        "help": "The bound ε on the retain NLL (open-unlearning's retain_loss_eps); required: a little above the "
                "model's retain NLL before unlearning."})
    dual_lr: float = field(default=1.0, metadata={"help": "Step size η of the dual ascent (its dual_step_size)."})
    dual_warmup_epochs: int = field(default=5, metadata={
        "help": "λ stays at retain_weight until the first epoch end with epoch >= this (0: it moves from the start)."})
    primal_dual: bool = field(default=True, metadata={
        "help": "Move λ by dual ascent; false keeps it at retain_weight."})

    def __post_init__(self):
        if self.epsilon is None:
            raise ConfigError("epsilon is required: the bound on the retain NLL in PDU's constraint L_r <= epsilon; "
                              "set it a little above the model's retain NLL before unlearning (its retain_nll at step "
                              "0), as open-unlearning's PDU README advises")
        if self.epsilon < 0:
            raise ConfigError(f"epsilon must be >= 0, got {self.epsilon}: it bounds a mean NLL, which is never "
                              "negative (the constraint could not hold and the dual variable would only grow)")
        if self.primal_dual and self.dual_lr <= 0:
            raise ConfigError(f"dual_lr must be positive with primal_dual, got {self.dual_lr}: the dual variable "
                              "would never move, or move against the constraint (primal_dual false keeps it fixed)")
        if self.dual_warmup_epochs < 0:
            raise ConfigError(f"dual_warmup_epochs must be >= 0, got {self.dual_warmup_epochs}")
        super().__post_init__()


class DualAscent(TrainerCallback, ExportableState):
    """PDU's dual variable λ (``dual_lambda``) and whether it moves yet (``updating``: the warm-up is over) — trainer
    state. The Trainer saves ``state()`` in each checkpoint's ``trainer_state.json``; ``on_train_begin`` takes it back
    from there (on a fresh run, the state it had when training began), and ``on_epoch_end`` ends the warm-up."""

    def __init__(self, dual_lambda: float = 1.0, updating: bool = False):
        self.dual_lambda, self.updating = float(dual_lambda), bool(updating)

    def state(self) -> dict:
        return {"args": {"dual_lambda": self.dual_lambda, "updating": self.updating}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)
        if saved:
            self.dual_lambda, self.updating = float(saved["args"]["dual_lambda"]), bool(saved["args"]["updating"])

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.epoch >= args.dual_warmup_epochs:
            self.updating = True


class PDUTrainer(GradDiffTrainer):
    """forget_weight x L_f(forget) + λ x (the retain NLL − ε), λ by dual ascent; see the module docstring."""

    def __init__(self, *args, callbacks=None, **kwargs):
        super().__init__(*args, callbacks=[*(callbacks or []), DualAscent()], **kwargs)  # GradDiff sets λ
        self.dual.updating = self.args.dual_warmup_epochs == 0

    @property
    def dual(self) -> DualAscent:
        """The trainer's ``DualAscent`` (looked up: the Trainer replaces it when it restores callback states)."""
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, DualAscent))

    @property
    def retain_weight(self) -> float:
        """λ, the retain term's weight (GradDiff's ``retain_weight``)."""
        return self.dual.dual_lambda

    @retain_weight.setter
    def retain_weight(self, value: float) -> None:
        self.dual.dual_lambda = float(value)

    def forget_loss(self, model, batch, num_items_in_batch=None):
        """L_f of the forget half, over the positions that predict its answer tokens; logs ``flattening_loss``."""
        _, outputs = self.nll(model, batch, "forget", num_items_in_batch)
        margin = margin_flattening(outputs.logits[:, :-1])
        self.record("flattening_loss", self.token_mean(margin.detach(), batch["labels"], "forget"))
        return self.token_mean(margin, batch["labels"], "forget", num_items_in_batch), outputs

    def retain_loss(self, model, batch, num_items_in_batch=None):
        """L_r − ε on the retain half; logs ``dual_lambda`` and, in training once the warm-up is over, takes the dual
        step on this micro-batch's retain NLL over all processes. GradDiff's ``compute_loss`` has read λ
        (``retain_weight``) before calling this, so the new λ weighs the next call."""
        loss, outputs = self.nll(model, batch, "retain", num_items_in_batch)
        SFTTrainer.record(self, "dual_lambda", torch.tensor(self.retain_weight))  # the same on every process
        if model.training and self.args.primal_dual and self.dual.updating:
            n = num_items_in_batch.get("retain") if isinstance(num_items_in_batch, dict) else None
            tokens = answer_tokens(batch["labels"])
            summed = outputs.loss.detach().float() * (tokens if n is None else n)  # as nll logs it
            total = self.accelerator.reduce(torch.stack([summed, tokens.float()]), "sum")
            retain = (total[0] / total[1].clamp(min=1)).item()
            self.retain_weight = max(0.0, self.retain_weight + self.args.dual_lr * (retain - self.args.epsilon))
        return loss - self.args.epsilon


Config, Trainer = PDUConfig, PDUTrainer  # the names the method registry loads
