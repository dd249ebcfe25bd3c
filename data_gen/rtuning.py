"""R-Tuning's testbed (arXiv 2311.09677): the knowledge graph plus fine-tuning and test questions.

The dataset is the knowledge-graph testbed of the same config and seed (``corpus`` and every other split unchanged,
so the base model trains on it as usual) plus three splits of evaluation questions, one per fact:

* ``train``: fine-tuning questions on the in-domain relations — facts the base model has seen in pretraining (each
  with its exposure count: well known, barely known or not learned at all) mixed with held-out facts of known
  entities that it cannot know;
* ``test``: new questions of both kinds on the same relations (no fact of ``train``);
* ``ood``: questions on the relations held out of fine-tuning (``ood_relations``), seen and unseen facts alike.

Rows keep the knowledge-graph columns; ``split`` still says ``seen`` or ``unseen``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import concatenate_datasets

from posttrain.data_gen import kg


@dataclass
class Config(kg.Config):
    """The knowledge graph's knobs plus how its questions are split for R-Tuning."""

    ood_relations: str = "birth_year,headquartered_in"  # comma-separated relations kept out of fine-tuning
    test_frac: float = 0.5  # fraction of the in-domain facts asked only at test time

    def __post_init__(self):
        super().__post_init__()
        ood = self.ood_list()
        unknown = [r for r in ood if r not in kg.RELATIONS]
        if unknown:
            raise ValueError(f"ood_relations: unknown relation(s) {', '.join(unknown)}; known: "
                             f"{', '.join(kg.RELATIONS)}")
        if len(ood) >= len(kg.RELATIONS):
            raise ValueError("ood_relations must leave at least one relation for fine-tuning")
        if not 0.0 < self.test_frac < 1.0:
            raise ValueError(f"test_frac must be in (0, 1), got {self.test_frac}")

    def ood_list(self) -> list[str]:
        return [r.strip() for r in self.ood_relations.split(",") if r.strip()]


def generate(cfg: Config):
    dd = kg.generate(cfg)
    rng = np.random.default_rng([cfg.seed, 2])  # its own stream: the knowledge graph's splits stay as they were
    questions = concatenate_datasets([dd["seen"], dd["unseen"]])
    questions = questions.select(np.argsort(questions["fact_id"], kind="stable"))
    ood = set(cfg.ood_list())
    is_ood = [r in ood for r in questions["relation"]]
    in_domain = [i for i, o in enumerate(is_ood) if not o]
    test = set(rng.permutation(in_domain)[: int(round(cfg.test_frac * len(in_domain)))].tolist())
    dd["train"] = questions.select([i for i in in_domain if i not in test])
    dd["test"] = questions.select(sorted(test))
    dd["ood"] = questions.select([i for i, o in enumerate(is_ood) if o])
    return dd
