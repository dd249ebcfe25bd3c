"""What every forget/retain unlearning method shares (METHODS.md §9; open-unlearning's layout, TRL's style).

* ``prepare`` (the registry's data step) -> ``ForgetRetain``: open-unlearning's ``ForgetRetainDataset`` with
  ``anchor="forget"`` — item i is forget item i with a retain item drawn uniformly at random, afresh each epoch
  (from a generator seeded by ``(seed, epoch, i)``: ``data_seed``, else ``seed``), so the pairs are reproducible and
  the same on every process. ``posttrain train`` saves its two parts in the run (``train_data/forget``,
  ``train_data/retain``). A method without a retain split gets forget items only.
* ``PairedCollator``: the one collator of these methods, ``{"forget": batch, "retain": batch}`` with each batch's
  ``input_ids``, ``attention_mask`` and ``labels`` — prompt + completion + EOS tokenised as TRL's SFT does it, the
  loss on the completion tokens only (prompt positions and padding are -100). Conversational rows (TRL's
  prompt/completion message lists) go through the tokenizer's chat template as TRL's SFT does it
  (``sft.tokenize``): the loss on the assistant turn's tokens, its end-of-turn included.
* ``UnlearnConfig`` / ``UnlearnTrainer``: posttrain's SFT config and trainer (their device-aware precision and
  checkpointing kept) with TRL's dataset preparation switched off, the paired collator, ``nll`` (the mean token
  cross-entropy of one half) and, for methods that set ``uses_reference``, ``self.reference`` (``reference.py``).
  Their loss is ``forget_weight · forget_loss(forget half)``; a method overrides the ``forget_loss`` hook.

The family is open-unlearning's chain, config beside trainer:

    UnlearnTrainer                   forget_weight · forget_loss            reads forget
    ├── GradAscentTrainer            forget_loss = −CE(forget)
    └── GradDiffTrainer              + retain_weight · CE(retain)           reads forget, retain
        ├── NPOTrainer               forget_loss = L_NPO (a reference model)
        ├── SimNPOTrainer            forget_loss = L_SimNPO
        └── IdkSFTTrainer            forget_loss = CE(forget → refusal)

``retain_weight`` (its check) and the retain term belong to GradDiff (``grad_diff.py``), which the methods with a
retain term extend; GradAscent has neither, so a GradAscent recipe that sets ``retain_weight`` is an unknown key.
``Trainer.reads`` is the one place a method names the halves it reads.

Normalisation, as HF's Trainer does it for its own loss: a half's token mean is over every answer token of that half
in the optimizer step — all accumulated micro-batches, all processes (``average_tokens_across_devices``) — so that a
run on N processes (or with gradient accumulation) takes the same steps as one process with the whole batch, however
the answer lengths fall between them (a mean per process and micro-batch would weight a short answer's tokens more
where it shares a batch with short answers). The counts per half are ``num_items_in_batch``, a dict
``{"forget": n, "retain": n}`` that ``compute_loss`` passes on to ``nll``. Per-answer terms (NPO's, SimNPO's) are
means over a micro-batch's answers, which every process has the same number of: DDP's average over processes and
the Trainer's division by the accumulation steps make them the step's mean. Logged terms are the step's values over
all processes.

Difference from open-unlearning: its retain draw is unseeded (``torch.randint`` on every access); here it is a
function of the seed, the epoch and the index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback

from posttrain.core.errors import ConfigError
from posttrain.trainers.base import Prepared, Reads, check_max_length, tokenize
from posttrain.trainers.reference import Reference
from posttrain.trainers.sft import SFTConfig, SFTTrainer

PARTS = ("forget", "retain")


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
    docstring. ``parts``: the two datasets; ``set_epoch``: called at the start of every epoch (``NewPairsEachEpoch``;
    on one process the Trainer's data loader calls it too)."""

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


def row_key(prompt, completion) -> tuple[str, str]:
    """A prompt/completion pair as something hashable: plain strings as they are, chat messages as JSON."""
    return tuple(x if isinstance(x, str) else json.dumps(x, sort_keys=True) for x in (prompt, completion))


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
        pairs = {row_key(p, c) for p, c in zip(retain["prompt"], retain["completion"])}
        both = sum(row_key(p, c) in pairs for p, c in zip(forget["prompt"], forget["completion"]))
        if both:
            raise ConfigError(f"{both} forget item(s) are also in the retain split: they would be unlearned and "
                              "learned at once")
        stats["retain"] = len(retain)
    return Prepared(ForgetRetain(forget, retain, seed), None, stats)


class NewPairsEachEpoch(TrainerCallback):
    """Sets the paired set's epoch when an epoch begins. The Trainer's data loader was to do it, but accelerate's
    ``DataLoaderShard.set_epoch`` passes the epoch on to the dataset only when no sampler behind a sharded batch
    sampler takes it (an if/elif): on several processes the pairs of epoch 0 would be kept for good."""

    def __init__(self, dataset: ForgetRetain):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the epoch's number here (plus the part done, when a run resumes mid-epoch)
        self.dataset.set_epoch(int(state.epoch or 0))


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


def answer_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many tokens of a causal LM batch carry loss: labels other than -100, past the first position (position t
    predicts label t+1, so label 0 is never a target) — HF's count for ``num_items_in_batch``."""
    return labels[..., 1:].ne(-100).sum()


class UnlearnTrainer(SFTTrainer):
    """Base of the forget/retain methods: the loss is ``forget_weight · forget_loss``, and a subclass overrides the
    ``forget_loss`` hook (with ``self.nll(model, batch, "forget", num_items_in_batch)`` for a mean token NLL) and, to
    read more than the forget half, ``reads``; ``uses_reference = True`` gives it ``self.reference``. See the module
    docstring for the family and for how the loss is normalised."""

    reads = Reads(splits=("forget",), optional=())
    uses_reference: bool = False
    # the Trainer divides every loss by the accumulation steps: nll undoes it for its token sums (see nll), and the
    # per-answer terms are micro-batch means that need the division
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: UnlearnConfig, train_dataset: ForgetRetain, eval_dataset=None,
                 processing_class=None, data_collator=None, **kwargs):
        name = type(self).__name__
        if not isinstance(args, UnlearnConfig):
            raise ConfigError(f"{name} needs an UnlearnConfig")
        if processing_class is None:
            raise TypeError(f"{name} needs processing_class (the tokenizer) for its paired collator")
        for part in self.reads.splits:
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
        self.add_callback(NewPairsEachEpoch(train_dataset))
        self.reference = Reference(self.model) if self.uses_reference else None

    def _get_num_items_in_batch(self, batch_samples: list, device) -> dict[str, torch.Tensor] | None:
        """HF's ``num_items_in_batch`` for each half of the paired batches: ``{"forget": n, "retain": n}``, n the
        answer tokens of that half in all of ``batch_samples`` (the optimizer step's micro-batches), summed over the
        processes when ``average_tokens_across_devices`` (HF's default)."""
        parts = [p for p in PARTS if batch_samples and isinstance(batch_samples[0].get(p), dict)]
        if not parts:
            return super()._get_num_items_in_batch(batch_samples, device)
        counts = torch.stack([sum(answer_tokens(b[p]["labels"]) for b in batch_samples) for p in parts]).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, "sum")
        return dict(zip(parts, counts))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        forget, outputs = self.forget_loss(model, inputs["forget"], num_items_in_batch)
        loss = self.args.forget_weight * forget
        return (loss, outputs) if return_outputs else loss

    def forget_loss(self, model, batch: dict[str, torch.Tensor], num_items_in_batch=None):
        """The method's forget term on the forget half ``batch`` (before ``forget_weight``), and the model's outputs
        on it."""
        raise NotImplementedError(f"{type(self).__name__} defines no forget_loss")

    def nll(self, model, batch: dict[str, torch.Tensor], name: str, num_items_in_batch: dict | None = None):
        """The mean token cross-entropy of ``batch``'s answers (half ``name``), and the outputs; logged as
        ``<name>_nll``.

        With ``num_items_in_batch`` (``compute_loss``'s), this process's share of the mean over the optimizer step,
        as HF's Trainer computes its own loss: the summed token losses over the step's count, times the number of
        processes (DDP averages their gradients) and the accumulation steps (the Trainer divides by them, see
        ``loss_is_scaled_for_ga``) — summed over micro-batches and averaged over processes it is the step's mean.
        Without it (a direct call), the mean over ``batch``."""
        n = num_items_in_batch.get(name) if isinstance(num_items_in_batch, dict) else None
        outputs = model(**batch, use_cache=False, **({} if n is None else {"num_items_in_batch": n}))
        tokens = answer_tokens(batch["labels"])
        loss = outputs.loss
        if n is not None:
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
            if model.training:
                loss = loss * self.current_gradient_accumulation_steps
        # logged: this micro-batch's token mean over all processes
        summed = outputs.loss.detach() * (tokens if n is None else n)
        total = self.accelerator.reduce(torch.stack([summed.float(), tokens.float()]), "sum")
        SFTTrainer.record(self, f"{name}_nll", total[0] / total[1].clamp(min=1))
        return loss, outputs

    def token_mean(self, per_token: torch.Tensor, labels: torch.Tensor, name: str, num_items_in_batch=None,
                   keep: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of a per-position loss over the answer tokens of half ``name``, normalised over the optimizer
        step as ``nll`` normalises its cross-entropy (so a token-level method takes the same steps on N processes or
        with gradient accumulation as on one with the whole batch).

        ``per_token``: [B, T-1], position t's loss for label t+1 (the shifted labels ``labels[:, 1:]``); ``keep``:
        the positions counted (default: shifted labels other than -100). With ``num_items_in_batch`` the sum over
        ``keep`` / the step's count of half ``name`` x processes x accumulation steps; without it, the micro-batch's
        mean over ``keep``. The step's count is of ``answer_tokens``: a method whose ``keep`` is narrower counts its
        own positions in ``_get_num_items_in_batch``."""
        keep = labels[:, 1:] != -100 if keep is None else keep
        total = per_token.masked_fill(~keep, 0).sum()
        n = num_items_in_batch.get(name) if isinstance(num_items_in_batch, dict) else None
        if n is None:
            return total / keep.sum().clamp(min=1)
        loss = total / n
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        if self.model.training:
            loss = loss * self.current_gradient_accumulation_steps
        return loss

    def record(self, name: str, value: torch.Tensor) -> None:
        """Log ``value`` (a scalar tensor) as ``name``, averaged over the processes (their micro-batches are of
        one size, so this is the mean over the step's global batch)."""
        super().record(name, self.accelerator.reduce(value.detach().float(), "mean"))
