"""What every posttrain trainer shares: the data a method reads (``Reads``) and hands its trainer (``Prepared``),
device-aware defaults for any TRL config, weight decay that spares embeddings, saving the trained adapter only,
tokenising a prompt/completion pair as TRL's SFT does (plain text or a chat template), and the log-probability of a
batch's answers (``answer_logps``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.trainer_pt_utils import get_parameter_names
from trl.data_utils import common_prefix_length, is_conversational

from posttrain.core.answers import answer_text  # noqa: F401 (the trainers' name for it)
from posttrain.core.errors import ConfigError
from posttrain.trainers.reference import REF


@dataclass(frozen=True)
class Reads:
    """What a method reads, declared on its trainer class (``Trainer.reads``): ``splits``, the roles it needs
    (recipe keys ``dataset_<role>_split``); ``optional``, roles it reads when the recipe names a split for them;
    ``columns``, what each of those splits must have (only these are kept)."""

    splits: tuple[str, ...] = ("train",)
    optional: tuple[str, ...] = ("eval",)
    columns: tuple[str, ...] = ("prompt", "completion")


@dataclass
class Prepared:
    """A method's training data, as its trainer takes it. ``posttrain train`` saves ``splits()`` in the run
    (``RUN/train_data``) and puts ``stats`` into ``run.json`` beside the training set's size."""

    train: object  # a datasets.Dataset, or a torch Dataset whose ``parts`` are datasets
    eval: object | None = None  # a dataset, or a dict of them (several eval splits)
    stats: dict = field(default_factory=dict)

    def splits(self) -> dict:
        """What the run keeps: ``train`` (or its ``parts``) and ``eval`` (``eval_<split>`` for each of several)."""
        out = dict(getattr(self.train, "parts", {"train": self.train}))
        if isinstance(self.eval, dict):
            return {**out, **{f"eval_{name}": ds for name, ds in self.eval.items()}}
        return out if self.eval is None else {**out, "eval": self.eval}


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

    def eval_settings(self) -> dict:
        """What ``posttrain eval`` must know to judge this run as it was trained, written into its ``run.json``
        (``eval_settings``): a suite option name -> value. None by default; a method whose model answers in a way of
        its own says so (the refusals it learned, a certainty suffix, a verifier)."""
        return {}


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


def check_chat_template(tokenizer, *datasets) -> None:
    """Conversational rows need a tokenizer with a chat template: reject them in one line otherwise. ``datasets``:
    those to check (``None``s and empty ones skipped; a dict of them is checked value by value)."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None):
        return
    for ds in datasets:
        for part in (ds.values() if isinstance(ds, dict) else [ds]):
            if part is not None and len(part) and is_conversational(part[0]):
                name = getattr(tokenizer, "name_or_path", "") or "the model"
                raise ConfigError(f"the data is conversational (prompt/completion as chat messages) but the tokenizer "
                                  f"of {name} has no chat template: use a chat model, or plain-text prompt/completion")


def with_answer(completion, text: str):
    """``completion`` with its answer replaced by ``text``: a string is ``text`` itself; a conversational completion
    keeps its messages, the last one's (the assistant turn's) content set to ``text``."""
    if isinstance(completion, str):
        return text
    return [*completion[:-1], {**completion[-1], "content": text}]


def tokenize(tokenizer, prompt, completion) -> tuple[list[int], int]:
    """A prompt/completion pair as TRL's SFT tokenises it, and the number of leading prompt tokens, which carry no
    loss (the completion starts where the prompt's tokens and the pair's diverge, TRL's ``common_prefix_length``).

    * plain text: ``prompt + completion + EOS`` in one call (BOS as the tokenizer adds it);
    * conversational (message lists): ``tokenizer.apply_chat_template(prompt + completion)`` against the prompt
      rendered with ``add_generation_prompt=True``, so the loss covers the assistant turn's tokens — its content and
      the template's end-of-turn (and whatever the template writes after it: ChatML's newline) — and no EOS is added
      beyond the template's. A tokenizer without a chat template is rejected (``ConfigError``)."""
    if not isinstance(prompt, str):
        check_chat_template(tokenizer, [{"prompt": prompt, "completion": completion}])
        prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True,
                                                   add_generation_prompt=True)["input_ids"]
        ids = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=True,
                                            return_dict=True)["input_ids"]
        return list(ids), common_prefix_length(list(prompt_ids), list(ids))
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


def answer_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a causal LM batch: the summed log-probability of its answer tokens (labels other than -100;
    position t predicts label t+1), in float64, and how many there are (int64).

    float64 because the callers take differences and exponentials of these sums: DCO's 1 − p of a near-sure answer
    (a float32 log-softmax rounds log p of a token with p > 1 − 6e-8 to 0, and 1 − p with it; its weights need the
    sums to float64 precision, ``dco.py``), NPO's log-ratio of two near-equal sums. Only the answer positions are
    upcast (the log-softmax of an [answer tokens, vocabulary] matrix), not every position of the batch."""
    gold = labels[:, 1:]
    keep = gold != -100
    token = F.log_softmax(logits[:, :-1][keep].double(), -1).gather(-1, gold[keep][:, None])[:, 0]
    rows = torch.arange(len(gold), device=gold.device)[:, None].expand_as(gold)[keep]
    return torch.zeros(len(gold), dtype=torch.float64, device=logits.device).index_add(0, rows, token), keep.sum(-1)
