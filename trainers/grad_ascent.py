"""GradAscent: gradient ascent on the forget set (Jang et al., arXiv 2210.01504; TOFU's baseline, arXiv 2401.06121;
open-unlearning's ``GradAscent``; METHODS.md §9.2).

L = -forget_weight · CE(forget), CE the mean token cross-entropy of the forget answers (prompt masked). What differs
from ``UnlearnTrainer``: ``forget_loss``. It reads the forget split only (the base's ``reads``) and has no retain
term, so no ``retain_weight`` either: a recipe that sets one is an unknown key (GradDiff, ``method: grad_diff``, is
GradAscent with the retain term). Nothing holds the rest of the model's knowledge in place, so it collapses as the
forget loss grows without bound: stop it early (``max_steps``) or use GradDiff. Rejected: ``forget_weight <= 0``
(descent, not ascent). Left out: open-unlearning's "superloss" curriculum weighting.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.trainers.unlearn import UnlearnConfig, UnlearnTrainer, prepare

__all__ = ["GradAscentConfig", "GradAscentTrainer", "prepare"]


@dataclass
class GradAscentConfig(UnlearnConfig):
    pass


class GradAscentTrainer(UnlearnTrainer):
    """-forget_weight x the forget NLL; see the module docstring."""

    def forget_loss(self, model, batch, num_items_in_batch=None):
        """−CE(forget): the forget answers' mean token NLL, ascended."""
        nll, outputs = self.nll(model, batch, "forget", num_items_in_batch)
        return -nll, outputs


Config, Trainer = GradAscentConfig, GradAscentTrainer  # the names the method registry loads
