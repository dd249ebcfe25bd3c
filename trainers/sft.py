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

from dataclasses import dataclass, field

import torch
import trl
from datasets import Dataset
from torch import nn
from transformers.trainer_pt_utils import get_parameter_names
from trl.data_utils import common_prefix_length

from posttrain.errors import ConfigError
from posttrain.trainers import Prepared
from posttrain.trainers.reference import REF


def cuda_bf16() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass
class DeviceDefaults:
    """posttrain's defaults for any TRL config (mixed in before it): precision and checkpointing follow the device,
    and an existing output directory is refused unless ``overwrite_output_dir``."""

    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass (memory for time)."}
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on for a CUDA device that supports it."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace an existing output_dir (posttrain train refuses one otherwise)."}
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = cuda_bf16() and not self.fp16
        super().__post_init__()


@dataclass
class SFTConfig(DeviceDefaults, trl.SFTConfig):
    """TRL's SFT config with posttrain's device-aware defaults."""


class NoEmbeddingDecayMixin:
    """Exclude ``nn.Embedding`` weights (with norms and biases) from weight decay."""

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
        return get_parameter_names(model, [nn.LayerNorm, nn.Embedding], patterns)


class TrainedAdapterOnly:
    """Save the trained adapter only: a frozen copy of the starting adapter (``ref``, kept beside it by TRL's GRPO
    and by ``reference.Reference``) is no part of the run."""

    def _save(self, output_dir=None, state_dict=None):
        model = self.accelerator.unwrap_model(self.model)
        if REF in getattr(model, "peft_config", {}):
            model.save_pretrained(output_dir or self.args.output_dir, selected_adapters=[model.active_adapter])
            return
        super()._save(output_dir, state_dict)


class SFTTrainer(TrainedAdapterOnly, NoEmbeddingDecayMixin, trl.SFTTrainer):
    """TRL SFT on prompt/completion (or text) data; see the module docstring for what differs."""

    def record(self, name: str, value: torch.Tensor) -> None:
        """Log ``value`` (a scalar tensor) as ``name`` beside TRL's per-step metrics (methods' own terms)."""
        self._metrics["train" if self.model.training else "eval"][name].append(value.detach().float().item())


def prepare(data: dict[str, Dataset], args: SFTConfig, model_name: str = "") -> Prepared:
    """The registry's data step: the train (and eval) split unchanged."""
    return Prepared(train=data["train"], eval=data.get("eval"))


def tokenize(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """A prompt/completion pair as TRL's SFT tokenises it: ``prompt + completion + EOS`` in one call (BOS as the
    tokenizer adds it), and the number of leading prompt tokens, which carry no loss."""
    eos = tokenizer.eos_token
    text = prompt + completion if completion.endswith(eos) else prompt + completion + eos
    ids = tokenizer(text)["input_ids"]
    return ids, common_prefix_length(tokenizer(prompt)["input_ids"], ids)


def check_max_length(tokenizer, prompts, completions, max_length: int | None, what: str) -> None:
    """Reject a ``max_length`` that would cut the longest example (``what`` says what would be lost)."""
    if max_length is None or tokenizer is None:
        return
    longest = max((len(tokenize(tokenizer, p, c)[0]) for p, c in zip(prompts, completions)), default=0)
    if longest > max_length:
        raise ConfigError(f"max_length {max_length} would cut {what} off the longest example ({longest} tokens)")
