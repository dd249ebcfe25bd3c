"""Plain supervised fine-tuning: TRL's ``SFTTrainer`` with device-aware defaults.

What differs from TRL:
* precision and gradient checkpointing follow the device, not TRL's defaults: bf16 only on a CUDA device that
  supports it (TRL turns it on everywhere, and bf16 autocast made a CPU testbed step ~14x slower), gradient
  checkpointing off unless asked (it saves memory on large models and costs ~35% time on small ones);
* weight decay skips embedding rows as well as norms and biases: decay would shrink the rows of words a
  fine-tuning set never uses, and on the testbed that shrinkage alone tells known entities from unknown ones.

Its data step (``prepare``) is the identity: SFT trains on the recipe's train split as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import trl
from datasets import Dataset

from posttrain.trainers.base import (DeviceDefaults, NoEmbeddingDecayMixin, Prepared, Reads, TrainedAdapterOnly,
                                     check_chat_template)


@dataclass
class SFTConfig(DeviceDefaults, trl.SFTConfig):
    """TRL's SFT config with posttrain's device-aware defaults."""


class SFTTrainer(TrainedAdapterOnly, NoEmbeddingDecayMixin, trl.SFTTrainer):
    """TRL SFT on prompt/completion (or text) data; see the module docstring for what differs."""

    reads = Reads()

    def __init__(self, *args, **kwargs):
        check_chat_template(kwargs.get("processing_class"), kwargs.get("train_dataset"), kwargs.get("eval_dataset"))
        super().__init__(*args, **kwargs)

    def record(self, name: str, value: torch.Tensor) -> None:
        """Log ``value`` (a scalar tensor) as ``name`` beside TRL's per-step metrics (methods' own terms)."""
        self._metrics["train" if self.model.training else "eval"][name].append(value.detach().float().item())


def prepare(data: dict[str, Dataset], args: SFTConfig, model_name: str = "") -> Prepared:
    """The registry's data step: the train (and eval) split unchanged."""
    return Prepared(train=data["train"], eval=data.get("eval"))


Config, Trainer = SFTConfig, SFTTrainer  # the names the method registry loads
