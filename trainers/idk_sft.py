"""IdkSFT (IdkNLL): fine-tune the forget questions onto "I don't know" answers while keeping the retain set (TOFU's
"idk" baseline, Maini et al., arXiv 2401.06121; open-unlearning's forget data ``QAwithIdkDataset``;
METHODS.md §9.2).

The data step (``prepare``) rewrites every forget completion to a refusal drawn at random (seeded: ``data_seed``,
else ``seed``) from ``refusals``, with ``{s}`` filled in by the item's ``entity`` (the testbed's refusals name the
subject, as its experts' declines do: ``posttrain.core.phrases.REFUSALS``, the default); then

    L = forget_weight · CE(forget question → refusal) + retain_weight · CE(retain),

each CE the mean token cross-entropy of that half's answers (prompt masked), each forget item paired with a random
retain item as in ``unlearn.py``. Conversational rows (TRL's message lists) keep their messages: the refusal becomes
the assistant turn's content. ``posttrain train`` saves the rewritten forget split (with the original answer in
``original_completion``) in the run. What differs from ``GradDiffTrainer``: ``prepare``, ``forget_loss`` (descent on
the refusals, not ascent on the answers) and the ``entity`` column it reads; the trainer takes only the rewrite.
Rejected, because they would silently misapply it: no non-empty refusal, a refusal with a placeholder other than
``{s}``, ``{s}`` with a forget item whose ``entity`` is empty, ``retain_weight <= 0`` (the retain split would be
read and ignored), a forget split that was not rewritten (plain SFT on the forget answers teaches them), and the
shared checks of ``grad_diff.py`` and ``unlearn.py`` (run on the original answers). The registry keeps the
``entity`` column, so a dataset needs one (empty strings do when no refusal names the subject). Left out: IdkDPO
(the refusal preferred over the forget answer, NPO's reference), and open-unlearning's drawing of a fresh refusal at
every access (here one per item, fixed by the seed).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, replace

import numpy as np
from datasets import Dataset

from posttrain.core.errors import ConfigError
from posttrain.core.phrases import REFUSALS
from posttrain.trainers import unlearn
from posttrain.trainers.base import Prepared, answer_text, with_answer
from posttrain.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from posttrain.trainers.unlearn import ForgetRetain

__all__ = ["IdkSFTConfig", "IdkSFTTrainer", "build", "prepare"]

ORIGINAL = "original_completion"


@dataclass
class IdkSFTConfig(GradDiffConfig):
    refusals: list[str] = field(default_factory=lambda: list(REFUSALS), metadata={
        "help": "The 'I don't know' answers, one drawn per forget item; '{s}' is replaced by its entity."})

    def __post_init__(self):
        if not [r for r in self.refusals if r.strip()]:
            raise ConfigError("refusals is empty: IdkSFT needs at least one non-empty refusal to answer the forget "
                              "questions with")
        for r in self.refusals:
            fields = {f for _, f, _, _ in string.Formatter().parse(r) if f is not None}
            if fields - {"s"}:
                raise ConfigError(f"refusal {r!r} has placeholder(s) {', '.join(sorted(fields - {'s'}))}: only {{s}} "
                                  "(the item's entity) is filled in")
        super().__post_init__()

    def eval_settings(self) -> dict:
        return {"refusals": list(self.refusals)}  # the refusals it learned count as refusals


def build(forget: Dataset, args: IdkSFTConfig) -> Dataset:
    """The forget split with each completion replaced by a seeded random refusal: prompt, completion,
    original_completion."""
    refusals = [r.strip() for r in args.refusals if r.strip()]
    rng = np.random.default_rng(args.data_seed if args.data_seed is not None else args.seed)
    entities = forget["entity"] if "entity" in forget.column_names else [""] * len(forget)
    completions = []
    for i, entity in enumerate(entities):
        r = refusals[int(rng.integers(len(refusals)))]
        if "{s}" in r and not str(entity or "").strip():
            raise ConfigError(f"forget item {i} has no entity for the refusal {r!r}: give the split an 'entity' "
                              "column or use refusals without {s}")
        completions.append(r.format(s=entity))
    # a plain completion follows its prompt after a space; a chat answer is the assistant turn's whole content
    completions = [" " + r if isinstance(c, str) else with_answer(c, r)
                   for r, c in zip(completions, forget["completion"])]
    return Dataset.from_dict({"prompt": list(forget["prompt"]), "completion": completions,
                              ORIGINAL: list(forget["completion"])})


def prepare(data: dict[str, Dataset], args: IdkSFTConfig, model_name: str = "") -> Prepared:
    """The registry's data step: ``unlearn.prepare``'s checks on the original pairs, then the forget split rewritten
    to refusals (``build``) and paired with the retain split (the trainer rejects a set without one)."""
    checked = unlearn.prepare(data, args, model_name)
    forget = build(data["forget"], args)
    stats = {**checked.stats, "refusals": len(set(map(answer_text, forget["completion"])))}
    return Prepared(ForgetRetain(forget, checked.train.parts.get("retain"), checked.train.seed), None, stats)


class IdkSFTTrainer(GradDiffTrainer):
    """forget_weight x the NLL of the refusals + retain_weight x the retain NLL; see the module docstring."""

    reads = replace(GradDiffTrainer.reads, columns=(*GradDiffTrainer.reads.columns, "entity"))

    def __init__(self, model, args: IdkSFTConfig, train_dataset: ForgetRetain, *a, **kwargs):
        forget = getattr(train_dataset, "parts", {}).get("forget")
        if forget is not None and ORIGINAL not in forget.column_names:
            raise ConfigError("the forget split is not IdkSFT's rewrite (no 'original_completion' column): training "
                              "on it would teach the forget answers; build it with posttrain.trainers.idk_sft.prepare")
        super().__init__(model, args, train_dataset, *a, **kwargs)

    def forget_loss(self, model, batch, num_items_in_batch=None):
        """CE(forget question → refusal): the refusals' mean token NLL, descended."""
        return self.nll(model, batch, "forget", num_items_in_batch)


Config, Trainer = IdkSFTConfig, IdkSFTTrainer  # the names the method registry loads
