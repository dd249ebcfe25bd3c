"""SatImp: saturation- and importance-weighted gradient ascent (Yang, Wang, Huang, Liu, Zhang, Han, "Exploring
Criteria of Loss Reweighting to Enhance LLM Unlearning", ICML 2025, arXiv 2505.11953; open-unlearning's ``SatImp``,
``src/trainer/unlearn/satimp.py``, ``configs/trainer/SatImp.yaml``; METHODS.md §9.5).

WGA with a second, detached weight: with p_t = π_θ(y_t | x, y_<t) over the positions A that predict the answer
tokens, the saturation weight sg(p)^β1 (a token already forgotten, p near 0, is left alone) times the importance
weight sg(1 − p)^β2 (a token the model is already sure of weighs less),

    L_f = (1/|A|) Σ_{t∈A} sg(p_t)^β1 · sg(1 − p_t)^β2 · log p_t,
    L = forget_weight · L_f + retain_weight · CE(retain).

Its gradient is p^(β1−1)·(1 − p)^β2·∇p per token; the weight peaks at p = β1/(β1 + β2), 5/6 at the defaults. Defaults
as open-unlearning's yaml, which Hydra applies over its class defaults: β1 = 5, β2 = 1, forget_weight (its γ) 0.1,
retain_weight (α) 1 — its class defaults and README have γ 1, α 0.1, the inverse ratio; the yaml is what runs.

What differs from ``GradDiffTrainer`` (open-unlearning's ``SatImp``, which re-implements GradDiff's loss):
``forget_loss``, as WGA's (``wga.py``: float32 label log-probabilities, normalised over the optimizer step where
open-unlearning takes each micro-batch's token mean), and the default ``forget_weight``. Logged per step beside
``forget_nll``/``retain_nll``: ``satimp_loss`` (L_f, the micro-batch's mean). Rejected, because they would misapply
it: a negative ``beta1`` or ``beta2`` (the weight would grow without bound as p goes to 0 or to 1), both 0
(GradDiff's loss: method grad_diff), ``beta2`` 0 alone (WGA: method wga, its β = beta1), and the shared checks of
``grad_diff.py`` and ``unlearn.py``. ``beta1`` 0 alone, the paper's importance-only ablation, is kept. Left out:
``retain_loss_type: KL``, and the reference model open-unlearning builds and never uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from posttrain.core.errors import ConfigError
from posttrain.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from posttrain.trainers.unlearn import prepare
from posttrain.trainers.wga import label_logps

__all__ = ["SatImpConfig", "SatImpTrainer", "prepare", "satimp_weight"]


def satimp_weight(logp: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """sg(p)^β1 · sg(1 − p)^β2 from log p (detached: no gradient flows through the weight)."""
    p = logp.detach().exp()
    return p ** beta1 * (1 - p) ** beta2


@dataclass
class SatImpConfig(GradDiffConfig):
    forget_weight: float = field(default=0.1, metadata={"help": "Weight of the forget term (open-unlearning's gamma)."})
    beta1: float = field(default=5.0, metadata={"help": "Exponent β1 of the saturation weight sg(p)."})
    beta2: float = field(default=1.0, metadata={"help": "Exponent β2 of the importance weight sg(1 - p)."})

    def __post_init__(self):
        if self.beta1 < 0 or self.beta2 < 0:
            raise ConfigError(f"beta1 and beta2 must be >= 0, got {self.beta1} and {self.beta2}: a negative exponent "
                              "makes the weight grow without bound as p goes to 0 (beta1) or to 1 (beta2)")
        if self.beta2 == 0:
            same = "GradDiff's (method: grad_diff)" if self.beta1 == 0 else f"WGA's (method: wga, beta {self.beta1})"
            raise ConfigError(f"beta2 is 0: without the importance weight SatImp's loss is {same}")
        super().__post_init__()


class SatImpTrainer(GradDiffTrainer):
    """forget_weight x mean_A sg(p)^β1·sg(1−p)^β2·log p (forget) + retain_weight x the retain NLL; see the module
    docstring."""

    def forget_loss(self, model, batch, num_items_in_batch=None):
        """L_f of the forget half; logs ``satimp_loss``."""
        _, outputs = self.nll(model, batch, "forget", num_items_in_batch)
        logp = label_logps(outputs.logits, batch["labels"])
        per_token = satimp_weight(logp, self.args.beta1, self.args.beta2) * logp
        self.record("satimp_loss", self.token_mean(per_token.detach(), batch["labels"], "forget"))
        return self.token_mean(per_token, batch["labels"], "forget", num_items_in_batch), outputs


Config, Trainer = SatImpConfig, SatImpTrainer  # the names the method registry loads
