"""NPO: Negative Preference Optimization (Zhang, Lin, Bai, Mei; arXiv 2404.05868; open-unlearning's ``NPO``;
METHODS.md §9.2).

Per forget item, the log-ratio of the model to the model before unlearning (``reference.py``'s ``Reference``: with
LoRA the same weights with the adapter off, with full fine-tuning a frozen copy)

    r = log π_θ(y|x) − log π_ref(y|x)          (sums over the answer tokens, prompt masked)

and L = forget_weight · L_NPO + retain_weight · CE(retain), with

    L_NPO = −(2/β) · mean log σ(−β·r) = (2/β) · mean log(1 + (π_θ/π_ref)^β).

At the start r = 0 and L_NPO = (2/β)·log 2; its gradient is GradAscent's (on summed, not averaged, token
log-probs) weighted by 2·σ(β·r), which fades as the forget answers become unlikely — so it does not run away as
GradAscent does. Defaults are open-unlearning's: β = 0.1 (``beta``), forget_weight (its γ) = 1, retain_weight (its
α) = 1, retain loss the mean token NLL. What differs from ``GradDiffTrainer`` (open-unlearning's ``NPO(GradDiff)``):
``forget_loss`` and the reference model (``uses_reference``); the sums r is made of are float64
(``base.answer_logps``), the loss float32. Logged per step beside ``forget_nll``/``retain_nll``: ``npo_loss``
(L_NPO) and ``log_ratio`` (mean r). Rejected, because they would silently misapply it: ``beta <= 0`` (no
preference optimisation: the loss is undefined or rewards the forget answers), ``retain_weight <= 0`` (the paper's
plain NPO without the retain term is not offered: the recipe's retain split would be read and ignored), and the
shared checks of ``grad_diff.py`` and ``unlearn.py``, and full fine-tuning under FSDP or ZeRO-3 (its frozen
reference copy is not supported sharded; ``reference.py``). Left out: open-unlearning's ``retain_loss_type: KL``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from posttrain.core.errors import ConfigError
from posttrain.trainers.base import answer_logps
from posttrain.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from posttrain.trainers.unlearn import prepare

__all__ = ["NPOConfig", "NPOTrainer", "npo_loss", "prepare"]


def npo_loss(log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β) · mean log σ(−β·r) over the batch."""
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(f"beta must be positive, got {beta}: it is the inverse temperature of the preference loss "
                          "(beta <= 0 leaves it undefined or rewards the forget answers)")


@dataclass
class NPOConfig(GradDiffConfig):
    beta: float = field(default=0.1, metadata={"help": "NPO's inverse temperature β."})

    def __post_init__(self):
        check_beta(self.beta)
        super().__post_init__()


class NPOTrainer(GradDiffTrainer):
    """forget_weight x L_NPO(forget) + retain_weight x the retain NLL; see the module docstring."""

    uses_reference = True

    def forget_loss(self, model, batch, num_items_in_batch=None):
        """L_NPO of the forget half, r against ``self.reference``; logs ``npo_loss`` and ``log_ratio``."""
        _, outputs = self.nll(model, batch, "forget", num_items_in_batch)
        logp, _ = answer_logps(outputs.logits, batch["labels"])
        ref, _ = answer_logps(self.reference(**batch, use_cache=False).logits, batch["labels"])
        log_ratio = logp - ref
        loss = npo_loss(log_ratio, self.args.beta).float()
        self.record("npo_loss", loss)
        self.record("log_ratio", log_ratio.mean())
        return loss, outputs


Config, Trainer = NPOConfig, NPOTrainer  # the names the method registry loads
