"""What every forget/retain unlearning method shares (METHODS.md §9; open-unlearning's layout, TRL's style).

* ``prepare`` (the registry's data step) -> ``ForgetRetain``: open-unlearning's ``ForgetRetainDataset`` with
  ``anchor="forget"`` — item i is forget item i with a retain item drawn uniformly at random, afresh each epoch
  (from a generator seeded by ``(seed, epoch, i)``: ``data_seed``, else ``seed``), so the pairs are reproducible and
  the same on every process. ``posttrain train`` saves its two parts in the run (``train_data/forget``,
  ``train_data/retain``). A method without a retain split gets forget items only.
* ``PairedCollator``: the one collator of these methods, ``{"forget": batch, "retain": batch}`` with each batch's
  ``input_ids``, ``attention_mask`` and ``labels`` — prompt + completion + EOS tokenised as TRL's SFT does it, the
  loss on the completion tokens only (prompt positions and padding are -100).
* ``UnlearnConfig`` / ``UnlearnTrainer``: posttrain's SFT config and trainer (their device-aware precision and
  checkpointing kept) with TRL's dataset preparation switched off, the paired collator, ``nll`` (HF's mean token
  cross-entropy of one half) and, for methods that set ``uses_reference``, ``self.reference`` (``reference.py``).

Difference from open-unlearning: its retain draw is unseeded (``torch.randint`` on every access); here it is a
function of the seed, the epoch and the index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset

from posttrain.errors import ConfigError
from posttrain.trainers import Prepared
from posttrain.trainers.reference import Reference
from posttrain.trainers.sft import SFTConfig, SFTTrainer, check_max_length, tokenize

PARTS = ("forget", "retain")


def check_retain_weight(retain_weight: float, method: str) -> None:
    """A method with a retain term needs it: weight 0 would read the retain split and ignore it."""
    if retain_weight <= 0:
        raise ConfigError(f"retain_weight must be positive, got {retain_weight}: {method} reads the retain split "
                          "for its retain term")


@dataclass
class UnlearnConfig(SFTConfig):
    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget term (open-unlearning's gamma)."})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Must stay off: Trainer would strip the 'forget' and 'retain' items, which are no model inputs."})

    def __post_init__(self):
        if self.forget_weight <= 0:
            raise ConfigError(f"forget_weight must be positive, got {self.forget_weight}: the forget term is what "
                              "unlearns")
        if self.remove_unused_columns:
            raise ConfigError("remove_unused_columns must be false: Trainer would drop the forget/retain pairs")
        if self.packing or self.padding_free:
            raise ConfigError("packing and padding_free do not apply: the paired collator pads each half itself")
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__post_init__()


class ForgetRetain(torch.utils.data.Dataset):
    """``{"forget": forget[i], "retain": a seeded random retain item}`` for i < len(forget); see the module
    docstring. ``parts``: the two datasets; ``set_epoch``: called by the Trainer's data loader every epoch."""

    def __init__(self, forget: Dataset, retain: Dataset | None = None, seed: int = 0):
        self.parts = {"forget": forget} if retain is None else {"forget": forget, "retain": retain}
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.parts["forget"])

    def __getitem__(self, i: int) -> dict:
        item = {"forget": self.parts["forget"][i]}  # IndexError past the end
        if "retain" in self.parts:
            j = np.random.default_rng((self.seed, self.epoch, i)).integers(len(self.parts["retain"]))
            item["retain"] = self.parts["retain"][int(j)]
        return item


def prepare(data: dict[str, Dataset], args: UnlearnConfig, model_name: str = "") -> Prepared:
    """The forget (and retain) split as a ``ForgetRetain`` set, after checking that pairing them makes sense."""
    forget, retain = (d.select_columns(["prompt", "completion"]) if d is not None else None
                      for d in (data["forget"], data.get("retain")))
    if len(forget) == 0:
        raise ConfigError("the forget split is empty")
    seed = args.data_seed if args.data_seed is not None else args.seed
    stats = {"forget": len(forget), "pairing_seed": seed}
    if retain is not None:
        if len(retain) == 0:
            raise ConfigError("the retain split is empty")
        pairs = set(zip(retain["prompt"], retain["completion"]))
        both = sum((p, c) in pairs for p, c in zip(forget["prompt"], forget["completion"]))
        if both:
            raise ConfigError(f"{both} forget item(s) are also in the retain split: they would be unlearned and "
                              "learned at once")
        stats["retain"] = len(retain)
    return Prepared(ForgetRetain(forget, retain, seed), None, stats)


@dataclass
class PairedCollator:
    """``[{"forget": {prompt, completion}, "retain": {...}}, ...]`` -> ``{"forget": batch, "retain": batch}``."""

    tokenizer: object
    max_length: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
        return {part: self.batch([f[part] for f in features]) for part in PARTS if part in features[0]}

    def batch(self, items: list[dict]) -> dict[str, torch.Tensor]:
        rows = [tokenize(self.tokenizer, it["prompt"], it["completion"]) for it in items]
        if self.max_length is not None:
            rows = [(ids[: self.max_length], n) for ids, n in rows]
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, n_prompt) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
            labels[i, n_prompt: len(ids)] = torch.tensor(ids[n_prompt:], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class UnlearnTrainer(SFTTrainer):
    """Base of the forget/retain methods: a subclass sets ``parts`` (the halves its loss reads) and overrides
    ``compute_loss`` with ``self.nll``; ``uses_reference = True`` gives it ``self.reference``."""

    parts: tuple[str, ...] = ("forget",)
    uses_reference: bool = False

    def __init__(self, model, args: UnlearnConfig, train_dataset: ForgetRetain, eval_dataset=None,
                 processing_class=None, data_collator=None, **kwargs):
        name = type(self).__name__
        if not isinstance(args, UnlearnConfig):
            raise ConfigError(f"{name} needs an UnlearnConfig")
        if processing_class is None:
            raise TypeError(f"{name} needs processing_class (the tokenizer) for its paired collator")
        for part in self.parts:
            ds = getattr(train_dataset, "parts", {}).get(part)
            if ds is None:
                raise ConfigError(f"the training set has no {part!r} items: {name} needs a {part} split "
                                  f"(dataset_{part}_split), paired by posttrain.trainers.unlearn.prepare")
            check_max_length(processing_class, ds["prompt"], ds["completion"], args.max_length, f"a {part} answer")
        # TRL takes only a datasets.Dataset (it reads nothing from it with its preparation off); Trainer iterates
        # any torch Dataset, and its data loader calls our set_epoch
        super().__init__(model=model, args=args, train_dataset=train_dataset.parts["forget"],
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         data_collator=data_collator or PairedCollator(processing_class, args.max_length), **kwargs)
        self.train_dataset = train_dataset
        self.reference = Reference(self.model) if self.uses_reference else None

    def nll(self, model, batch: dict[str, torch.Tensor], name: str):
        """HF's mean cross-entropy over ``batch``'s completion tokens, and the outputs; logged as ``<name>_nll``."""
        outputs = model(**batch, use_cache=False)
        self.record(f"{name}_nll", outputs.loss)
        return outputs.loss, outputs
