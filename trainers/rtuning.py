"""R-Tuning: refusal-aware instruction tuning (Zhang et al., arXiv 2311.09677; METHODS.md §1).

Plain SFT on the fine-tuning set, with the data rewritten by what the model being tuned already knows. The
questions must first be probed on that very model (``posttrain probe``: a greedy answer and k sampled answers per
question); then each item is certain or uncertain:

* ``split: correctness`` (R-Tuning): certain when the model's greedy answer contains the gold answer;
* ``split: entropy`` (R-Tuning-U): certain for the lowest-entropy half of the k sampled answers (floor(N/2)
  items; ties keep the data order), no gold labels involved.

and its completion becomes:

* ``variant: suffix``: the gold answer, always kept, followed by the certainty question and "I am sure." or
  "I am unsure." — at test time p(sure) after "... I am" is the model's confidence;
* ``variant: refusal`` (the reference code's ``unknown`` method): certain items unchanged, uncertain ones answered
  with a refusal drawn at random from ``refusals``, seeded by ``data_seed``, else ``seed`` (as the unlearning
  methods draw their retain partners).

Conversational rows (TRL's prompt/completion message lists, for chat models) keep their messages and the chat
template: the certainty question and its answer follow the answer inside the assistant turn's content ("Paris Are
you sure ...? I am sure."), and a refusal replaces that content.

The rewrite is the method's data step (``prepare``): ``posttrain train`` saves the rewritten set, with its
``certain`` labels, in the run (``RUN/train_data``) and records the certain fraction in ``run.json``. What differs
from ``SFTTrainer``: only ``__init__``, which takes that prepared set (it rejects one that was not) and checks it.
Defaults follow the reference code: its templates and 16 refusals, and the loss on the whole text (LMFlow
``text_only``), so ``completion_only_loss`` is off unless set. Rejected, because they would misapply the method
silently: labels probed on another model than the one being tuned (R-Tuning's split is the tuned model's own
knowledge gap; a from-scratch model has none), and a ``max_length`` that would cut the certainty phrase off the
longest example. Left out: the reference's multiple-choice (MMLU) and context (HotpotQA) prompt formats — they are
a matter of the dataset's ``prompt`` column here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset

from posttrain.core.data import probed_model
from posttrain.core.embedded import resolve_name
from posttrain.core.errors import ConfigError
from posttrain.core.phrases import RTUNING_REFUSALS, RTUNING_SURE, RTUNING_SURE_QUESTION, RTUNING_UNSURE
from posttrain.trainers.base import Prepared, Reads, answer_text, check_max_length, with_answer
from posttrain.trainers.sft import SFTConfig, SFTTrainer

SPLITS = {"correctness": "probe_correct", "entropy": "probe_entropy"}
VARIANTS = ("suffix", "refusal")


@dataclass
class RTuningConfig(SFTConfig):
    split: str = field(default="correctness", metadata={
        "help": "How items are labelled certain: 'correctness' (greedy answer right; R-Tuning) or 'entropy' "
                "(lowest-entropy half of the sampled answers; R-Tuning-U)."})
    variant: str = field(default="suffix", metadata={
        "help": "'suffix': gold answer + certainty question + sure/unsure; 'refusal': uncertain items are "
                "answered with a refusal."})
    sure_question: str = field(default=RTUNING_SURE_QUESTION, metadata={"help": "The certainty question."})
    sure: str = field(default=RTUNING_SURE, metadata={"help": "Answer to the certainty question on certain items."})
    unsure: str = field(default=RTUNING_UNSURE, metadata={
        "help": "Answer to the certainty question on uncertain items."})
    refusals: list[str] = field(default_factory=lambda: list(RTUNING_REFUSALS), metadata={
        "help": "Refusal completions for the refusal variant (one drawn per uncertain item)."})
    completion_only_loss: bool | None = field(default=False, metadata={
        "help": "Loss on the completion only; off by default: R-Tuning trains on the whole text."})

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.variant == "refusal" and not [r for r in self.refusals if r.strip()]:
            raise ConfigError("variant 'refusal' needs at least one non-empty refusal")
        if self.variant == "suffix" and self.sure.strip() == self.unsure.strip():
            raise ConfigError("sure and unsure must differ")
        super().__post_init__()

    def eval_settings(self) -> dict:
        """The certainty question and answers; the suffix variant's model asks it itself (``certainty_suffix``),
        the refusal variant's refusals count as refusals."""
        certainty = {"sure_question": self.sure_question, "sure": self.sure, "unsure": self.unsure}
        if self.variant == "suffix":
            return {"certainty_suffix": True, **certainty}
        return {"refusals": list(self.refusals), **certainty}


def certain(ds: Dataset, split: str = "correctness") -> list[bool]:
    """Which items are certain: the probe's correctness, or the lowest-entropy floor(N/2) items."""
    if split == "correctness":
        return [bool(c) for c in ds["probe_correct"]]
    order = np.argsort(np.asarray(ds["probe_entropy"], dtype=float), kind="stable")
    out = np.zeros(len(ds), dtype=bool)
    out[order[: len(ds) // 2]] = True
    return out.tolist()


def build(ds: Dataset, args: RTuningConfig) -> Dataset:
    """The refusal-aware data: columns prompt, completion and certain (see the module docstring)."""
    labels = certain(ds, args.split)
    rng = np.random.default_rng(args.data_seed if args.data_seed is not None else args.seed)
    refusals = [r.strip() for r in args.refusals if r.strip()]
    completions = []
    for c, ok in zip(ds["completion"], labels):
        # a conversational completion keeps its messages: the assistant turn's content is what is rewritten
        text = answer_text(c)
        if args.variant == "suffix":
            answer = (args.sure if ok else args.unsure).strip()
            completions.append(with_answer(c, f"{text.rstrip()} {args.sure_question.strip()} {answer}"))
        elif ok:
            completions.append(c)
        else:
            refusal = refusals[int(rng.integers(len(refusals)))]
            completions.append(" " + refusal if isinstance(c, str) else with_answer(c, refusal))
    return Dataset.from_dict({"prompt": list(ds["prompt"]), "completion": completions, "certain": labels})


def _same_model(a: str, b: str) -> bool:
    """Whether two model names or paths name one model (an embedded model's name is its directory)."""
    pa, pb = Path(resolve_name(a)), Path(resolve_name(b))
    return pa.resolve() == pb.resolve() if pa.exists() and pb.exists() else a == b


def prepare(data: dict[str, Dataset], args: RTuningConfig, model_name: str = "") -> Prepared:
    """The registry's data step: the refusal-aware rewrite of the probed train split (and of the eval split, when
    it carries the probe's labels), after checking that the labels are the tuned model's own."""
    train, need = data["train"], SPLITS[args.split]
    if need not in train.column_names:
        raise ConfigError(f"the training set has no {need!r} column: label it first with `posttrain probe`")
    probed = probed_model(train)
    if probed is not None and not _same_model(probed, model_name):
        raise ConfigError(f"the training set was probed on {probed}, but the model being tuned is "
                          f"{model_name or 'a new, untrained model'}: R-Tuning splits the data by the tuned model's "
                          "own knowledge, so probe this model")
    out = build(train, args)
    ev = data.get("eval")
    ev = build(ev, args) if ev is not None and need in ev.column_names else ev
    return Prepared(out, ev, {"certain": sum(out["certain"]), "certain_fraction": float(np.mean(out["certain"]))})


class RTuningTrainer(SFTTrainer):
    """SFT on R-Tuning's refusal-aware rewrite (``prepare``'s output); see the module docstring."""

    reads = Reads(columns=("prompt", "completion", "probe_correct", "probe_entropy"))

    def __init__(self, model, args: RTuningConfig, train_dataset: Dataset, eval_dataset: Dataset | None = None,
                 processing_class=None, **kwargs):
        if not isinstance(args, RTuningConfig):
            raise ConfigError("RTuningTrainer needs an RTuningConfig")
        if "certain" not in train_dataset.column_names:
            raise ConfigError("the training set is not R-Tuning's rewrite (no 'certain' column): build it with "
                              "posttrain.trainers.rtuning.prepare")
        train_dataset = train_dataset.remove_columns("certain")
        if eval_dataset is not None and "certain" in eval_dataset.column_names:
            eval_dataset = eval_dataset.remove_columns("certain")
        check_max_length(processing_class, train_dataset["prompt"], train_dataset["completion"], args.max_length,
                         "the certainty phrase or refusal")
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)


Config, Trainer = RTuningConfig, RTuningTrainer  # the names the method registry loads
