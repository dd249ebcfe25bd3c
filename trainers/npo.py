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
α) = 1, retain loss the mean token NLL. What differs from ``UnlearnTrainer``: ``compute_loss`` and the reference
model (``uses_reference``); logged per step beside ``forget_nll``/``retain_nll``: ``npo_loss`` (L_NPO) and
``log_ratio`` (mean r). Rejected, because they would silently misapply it: ``beta <= 0`` (no preference
optimisation: the loss is undefined or rewards the forget answers), ``retain_weight <= 0`` (the paper's plain NPO
without the retain term is not offered: the recipe's retain split would be read and ignored), and the shared
checks of ``unlearn.py``. Left out: open-unlearning's ``retain_loss_type: KL``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from posttrain.core.errors import ConfigError
from posttrain.trainers.base import Reads
from posttrain.trainers.unlearn import UnlearnConfig, UnlearnTrainer, check_retain_weight, prepare

__all__ = ["NPOConfig", "NPOTrainer", "answer_logps", "npo_loss", "prepare"]


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of its answer tokens (labels != -100; position t predicts label
    t+1) and how many there are, as float32."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    token = -F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    mask = labels != -100
    return (token * mask).sum(-1), mask.sum(-1).float()


def npo_loss(log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β) · mean log σ(−β·r) over the batch."""
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(f"beta must be positive, got {beta}: it is the inverse temperature of the preference loss "
                          "(beta <= 0 leaves it undefined or rewards the forget answers)")


@dataclass
class NPOConfig(UnlearnConfig):
    beta: float = field(default=0.1, metadata={"help": "NPO's inverse temperature β."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain NLL (open-unlearning's alpha)."})

    def __post_init__(self):
        check_beta(self.beta)
        check_retain_weight(self.retain_weight, "NPO")
        super().__post_init__()


class NPOTrainer(UnlearnTrainer):
    """forget_weight x L_NPO(forget) + retain_weight x the retain NLL; see the module docstring."""

    reads = Reads(splits=("forget", "retain"), optional=())
    uses_reference = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = inputs["forget"]
        _, outputs = self.nll(model, batch, "forget", num_items_in_batch)
        logp, _ = answer_logps(outputs.logits, batch["labels"])
        ref, _ = answer_logps(self.reference(**batch, use_cache=False).logits, batch["labels"])
        log_ratio = logp - ref
        forget = npo_loss(log_ratio, self.args.beta)
        retain, _ = self.nll(model, inputs["retain"], "retain", num_items_in_batch)
        self.record("npo_loss", forget)
        self.record("log_ratio", log_ratio.mean())
        loss = self.args.forget_weight * forget + self.args.retain_weight * retain
        return (loss, outputs) if return_outputs else loss


Config, Trainer = NPOConfig, NPOTrainer  # the names the method registry loads
