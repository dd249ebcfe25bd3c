"""SimNPO: simple, reference-free NPO (Fan, Liu, Lin, Jia, Zhang, Mei, Liu; arXiv 2410.07163; open-unlearning's
``SimNPO``; METHODS.md §9.2).

Per forget item, the length-normalised log-probability of its answer, lp = log π_θ(y|x) / |y| (sum over the answer
tokens, prompt masked, divided by their number), and L = forget_weight · L_SimNPO + retain_weight · CE(retain), with

    L_SimNPO = −(2/β) · mean log σ(−β·lp − δ).

No reference model: NPO's π_ref is replaced by the length normalisation, and δ is a reward margin (the paper's γ;
named ``delta`` here, as in open-unlearning, because γ is already ``forget_weight``). Defaults are
open-unlearning's: β = 4.5, δ = 0, forget_weight = 0.125 (its γ, "npo_coeff"), retain_weight = 1 (its α), retain
loss the mean token NLL. β sets where it stops pushing: the gradient is weighted by 2·σ(β·lp + δ), about 1e-4 at
β = 4.5 for answers whose mean token log-probability is −2 already.
The margin is applied as in the paper, after scaling; open-unlearning writes σ(β·(−lp − δ)), i.e. β·δ — the same at
the default δ = 0. What differs from ``GradDiffTrainer`` (open-unlearning's ``SimNPO(GradDiff)``): ``forget_loss``
(lp from the float64 sums of ``base.answer_logps``, the loss float32) and the default ``forget_weight``; logged per
step beside ``forget_nll`` and ``retain_nll``: ``simnpo_loss`` (L_SimNPO). Rejected, because they would silently
misapply it: ``beta <= 0``, ``retain_weight <= 0`` (the retain split would be read and ignored), and the shared
checks of ``grad_diff.py`` and ``unlearn.py``.
Left out: open-unlearning's ``retain_loss_type: KL``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from posttrain.trainers.base import answer_logps
from posttrain.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from posttrain.trainers.npo import check_beta
from posttrain.trainers.unlearn import prepare

__all__ = ["SimNPOConfig", "SimNPOTrainer", "prepare", "simnpo_loss"]


def simnpo_loss(logp: torch.Tensor, length: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """−(2/β) · mean log σ(−β·logp/length − δ) over the batch."""
    return -(2.0 / beta) * F.logsigmoid(-beta * logp / length - delta).mean()


@dataclass
class SimNPOConfig(GradDiffConfig):
    forget_weight: float = field(default=0.125, metadata={
        "help": "Weight of the forget term (open-unlearning's gamma, 'npo_coeff')."})
    beta: float = field(default=4.5, metadata={"help": "SimNPO's inverse temperature β."})
    delta: float = field(default=0.0, metadata={"help": "SimNPO's reward margin (the paper's γ)."})

    def __post_init__(self):
        check_beta(self.beta)
        super().__post_init__()


class SimNPOTrainer(GradDiffTrainer):
    """forget_weight x L_SimNPO(forget) + retain_weight x the retain NLL; see the module docstring."""

    def forget_loss(self, model, batch, num_items_in_batch=None):
        """L_SimNPO of the forget half; logs ``simnpo_loss``."""
        _, outputs = self.nll(model, batch, "forget", num_items_in_batch)
        logp, length = answer_logps(outputs.logits, batch["labels"])
        loss = simnpo_loss(logp, length.clamp(min=1), self.args.beta, self.args.delta).float()
        self.record("simnpo_loss", loss)
        return loss, outputs


Config, Trainer = SimNPOConfig, SimNPOTrainer  # the names the method registry loads
