"""WGA: weighted gradient ascent (Wang, Zhou, Zhou, Shin, Han, Weinberger, "Rethinking LLM Unlearning Objectives: A
Gradient Perspective and Go Beyond", ICLR 2025, arXiv 2502.19301; open-unlearning's ``WGA``,
``src/trainer/unlearn/wga.py``, ``configs/trainer/WGA.yaml``; METHODS.md §9.5).

Gradient ascent with every forget answer token's term weighted by its own probability, raised to β and detached:
with p_t = π_θ(y_t | x, y_<t) over the positions A that predict the answer tokens,

    L_f = (1/|A|) Σ_{t∈A} sg(p_t)^β · log p_t,        L = forget_weight · L_f + retain_weight · CE(retain).

Its gradient is p^(β−1)·∇p per token: at β = 1 it lowers the mean token probability, and GA's 1/p blow-up on
tokens already forgotten is gone (they get weight p, near 0), so it stops where GA diverges. Defaults as
open-unlearning's yaml: β = 1, forget_weight (its γ) 1, retain_weight (α) 1, retain loss the mean token NLL.

What differs from ``GradDiffTrainer`` (open-unlearning's ``WGA``, which re-implements GradDiff's loss): ``forget_loss``
(the label log-probabilities in float32 from the forward pass that logs ``forget_nll``), normalised over the optimizer
step (``token_mean``) where open-unlearning takes each micro-batch's token mean (the same with one process and no
accumulation). Logged per step beside ``forget_nll``/``retain_nll``: ``wga_loss`` (L_f, the micro-batch's mean).
Rejected, because they would misapply it: ``beta <= 0`` (0 is GradDiff's loss; below 0 the weight grows without
bound as a token is forgotten, GA's blow-up made worse), and the shared checks of ``grad_diff.py`` and
``unlearn.py``. Left out: ``retain_loss_type: KL``, and the reference model open-unlearning builds and never uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from posttrain.core.errors import ConfigError
from posttrain.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from posttrain.trainers.unlearn import prepare

__all__ = ["WGAConfig", "WGATrainer", "label_logps", "prepare", "wga_weight"]


def label_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p_t(y_t) per position of a causal LM batch, float32, ``[B, T-1]``: position t's log-probability of label
    t+1, 0 where that label is -100."""
    return -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100,
                            reduction="none")


def wga_weight(logp: torch.Tensor, beta: float) -> torch.Tensor:
    """sg(p)^β from log p (detached: no gradient flows through the weight)."""
    return logp.detach().exp() ** beta


@dataclass
class WGAConfig(GradDiffConfig):
    beta: float = field(default=1.0, metadata={"help": "WGA's exponent β on the detached token probability."})

    def __post_init__(self):
        if not self.beta > 0:
            raise ConfigError(f"beta must be positive, got {self.beta}: at 0 WGA is GradDiff's loss (method: "
                              "grad_diff), below 0 the weight grows without bound as a token is forgotten")
        super().__post_init__()


class WGATrainer(GradDiffTrainer):
    """forget_weight x mean_A sg(p)^β·log p (forget) + retain_weight x the retain NLL; see the module docstring."""

    def forget_loss(self, model, batch, num_items_in_batch=None):
        """L_f of the forget half; logs ``wga_loss``."""
        _, outputs = self.nll(model, batch, "forget", num_items_in_batch)
        logp = label_logps(outputs.logits, batch["labels"])
        per_token = wga_weight(logp, self.args.beta) * logp
        self.record("wga_loss", self.token_mean(per_token.detach(), batch["labels"], "forget"))
        return self.token_mean(per_token, batch["labels"], "forget", num_items_in_batch), outputs


Config, Trainer = WGAConfig, WGATrainer  # the names the method registry loads
