"""GradDiff: gradient ascent on the forget set, descent on the retain set (TOFU, Maini et al., arXiv 2401.06121;
open-unlearning's ``GradDiff``; METHODS.md §9.2).

L = -forget_weight · CE(forget) + retain_weight · CE(retain), each CE the mean token cross-entropy of that half's
answers (prompt masked); each forget item is paired with a random retain item (``unlearn.prepare``). What differs
from ``UnlearnTrainer``: ``reads`` (the retain split too), ``retain_weight`` and the retain term added to the base's
loss; the forget term is GradAscent's. As in open-unlearning, the methods with a retain term (NPO, SimNPO, IdkSFT)
extend GradDiff and override only its ``forget_loss``; the retain term is the ``retain_loss`` hook (RMU's is on
activations) times ``self.retain_weight`` (``retain_weight`` at the start; PDU's dual variable moves it). Rejected, because they would silently make it another
method: ``retain_weight <= 0`` (the retain split read and ignored: for GradDiff that is GradAscent, or worse),
``forget_weight <= 0``, a recipe without a forget or retain split, and forget items that are also retain items.
Left out: open-unlearning's ``retain_loss_type: KL`` (KL to the model before unlearning on the retain half; the
reference it needs is ``reference.py``'s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from posttrain.core.errors import ConfigError
from posttrain.trainers.base import Reads
from posttrain.trainers.grad_ascent import GradAscentTrainer
from posttrain.trainers.unlearn import UnlearnConfig, UnlearnTrainer, prepare

__all__ = ["GradDiffConfig", "GradDiffTrainer", "prepare"]


@dataclass
class GradDiffConfig(UnlearnConfig):
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain NLL (open-unlearning's alpha)."})

    def __post_init__(self):
        if self.retain_weight <= 0:
            method = type(self).__name__.removesuffix("Config")
            raise ConfigError(f"retain_weight must be positive, got {self.retain_weight}: {method} reads the retain "
                              "split for its retain term")
        super().__post_init__()


class GradDiffTrainer(UnlearnTrainer):
    """-forget_weight x the forget NLL + retain_weight x the retain NLL; see the module docstring."""

    reads = Reads(splits=("forget", "retain"), optional=())
    forget_loss = GradAscentTrainer.forget_loss  # −CE(forget)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.retain_weight = self.args.retain_weight  # the retain term's weight (a method may move it: PDU's dual)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        loss = loss + self.retain_weight * self.retain_loss(model, inputs["retain"], num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def retain_loss(self, model, batch: dict[str, torch.Tensor], num_items_in_batch=None) -> torch.Tensor:
        """The retain term on the retain half ``batch`` (before ``retain_weight``): its mean token NLL."""
        return self.nll(model, batch, "retain", num_items_in_batch)[0]


Config, Trainer = GradDiffConfig, GradDiffTrainer  # the names the method registry loads
