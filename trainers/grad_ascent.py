"""GradAscent: gradient ascent on the forget set (Jang et al., arXiv 2210.01504; TOFU's baseline, arXiv 2401.06121;
open-unlearning's ``GradAscent``; METHODS.md §9.2).

L = -forget_weight · CE(forget), CE the mean token cross-entropy of the forget answers (prompt masked). What differs
from ``SFTTrainer``: the paired data and collator of ``unlearn.py`` (forget rows only: GradAscent reads no retain
split) and ``compute_loss``. Nothing holds the rest of the model's knowledge in place, so it collapses as the
forget loss grows without bound: stop it early (``max_steps``) or use GradDiff. Rejected: ``forget_weight <= 0``
(descent, not ascent). Left out: open-unlearning's "superloss" curriculum weighting.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.trainers.base import Reads
from posttrain.trainers.unlearn import UnlearnConfig, UnlearnTrainer, prepare

__all__ = ["GradAscentConfig", "GradAscentTrainer", "prepare"]


@dataclass
class GradAscentConfig(UnlearnConfig):
    pass


class GradAscentTrainer(UnlearnTrainer):
    """-forget_weight x the forget NLL; see the module docstring."""

    reads = Reads(splits=("forget",), optional=())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget, outputs = self.nll(model, inputs["forget"], "forget", num_items_in_batch)
        loss = -self.args.forget_weight * forget
        return (loss, outputs) if return_outputs else loss


Config, Trainer = GradAscentConfig, GradAscentTrainer  # the names the method registry loads
