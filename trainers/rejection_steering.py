"""RULE's stage 1, rejection steering (Zhang et al., arXiv 2506.07171; METHODS.md §2; ``trainers/rule.py`` has
stage 2, and ``rule/testbed.yaml`` runs the two as a pipeline): plain SFT (posttrain's ``SFTTrainer``, loss on the
completion) from the forget queries of ``posttrain gen boundary``'s ``rule`` split to their refusals;
``rejection_only: false`` adds the boundary queries with their answers (DESIGN.md's variant; the paper's
``reject_target.json`` holds refusals only).
What differs from ``SFTTrainer``: the data step only. Rejected: a training set without RULE's columns or forget
queries, and kinds other than forget / boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset

from posttrain.core.errors import ConfigError
from posttrain.trainers.base import Prepared, Reads
from posttrain.trainers.sft import SFTConfig, SFTTrainer

KINDS = ("forget", "boundary")


def check_columns(ds: Dataset, need: tuple[str, ...], what: str) -> None:
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise ConfigError(f"the training set has no {', '.join(map(repr, missing))} column: {what} trains on the "
                          "'rule' split of `posttrain gen boundary`")
    kinds = set(ds["kind"])
    if not kinds <= set(KINDS):
        raise ConfigError(f"unknown kind(s) {sorted(kinds - set(KINDS))} in the training set (known: forget, boundary)")


@dataclass
class RejectionSteeringConfig(SFTConfig):
    rejection_only: bool = field(default=True, metadata={
        "help": "Train on the forget queries' refusals only (the paper); false adds the boundary queries' answers."})


class RejectionSteeringTrainer(SFTTrainer):
    """Stage 1: posttrain's SFT on ``prepare``'s rows, unchanged."""

    reads = Reads(columns=("prompt", "completion", "kind"))


def prepare(data: dict[str, Dataset], args: RejectionSteeringConfig, model_name: str = "") -> Prepared:
    """Stage 1's data: the forget rows (and, unless ``rejection_only``, the boundary rows) as prompt/completion."""
    train = data["train"]
    check_columns(train, ("prompt", "completion", "kind"), "rejection steering")
    keep = [i for i, k in enumerate(train["kind"]) if k == "forget" or not args.rejection_only]
    n_forget = list(train["kind"]).count("forget")
    if not n_forget:
        raise ConfigError("the training set has no forget queries to refuse")
    out = train.select(keep).select_columns(["prompt", "completion"])
    return Prepared(out, data.get("eval"), {"forget": n_forget, "boundary": len(keep) - n_forget})


Config, Trainer = RejectionSteeringConfig, RejectionSteeringTrainer  # the names the method registry loads
