"""RULE's training data (arXiv 2506.07171): a few forget queries, refused, plus synthesised boundary queries.

Built on a knowledge graph written by ``posttrain gen kg`` (``kg_path``). Its forget targets are the persons of its
``forget`` split; the forget query pool is every forget fact asked with every question template. RULE trains on a
small part of it (``forget_frac``, the paper's 12%, sampled per target so that every target is present) answered
with a refusal that names the target, plus boundary queries (``boundary_frac`` of the pool, the paper's 8%) that must
still be answered: seen facts of the targets' graph neighbours — persons sharing an object with a target, and the
targets' objects themselves — asked like the forget questions they mirror (same relation and template when a
neighbour person has one). A boundary query is never a forget fact, never one of the knowledge graph's ``boundary``
split (kept for evaluation) and never shares a prompt with the forget pool.

Splits: ``rule`` (the training rows, shuffled), ``forget_trained`` and ``forget_heldout`` (the pool's queries used
and not used in ``rule``, with the forgetting suite's columns and gold answers), and the knowledge graph's ``seen``,
``unseen``, ``forget``, ``boundary`` and ``retain`` unchanged, so one directory serves training and evaluation.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, load_from_disk

from posttrain.core.errors import UsageError
from posttrain.core.phrases import REFUSALS
from posttrain.data_gen import kg

KG_SPLITS = ("seen", "unseen", "forget", "boundary", "retain")
QUERY_COLUMNS = ("prompt", "completion", "paraphrased_answer", "perturbed_answers", "fact_id", "entity", "relation",
                 "template")


@dataclass
class Config:
    """Where the knowledge graph is and how much of its forget pool RULE trains on."""

    kg_path: str = ""  # a directory written by `posttrain gen kg`
    seed: int = 0
    forget_frac: float = 0.12  # fraction of each target's forget queries trained on (refused)
    boundary_frac: float = 0.08  # boundary queries, as a fraction of the whole forget query pool
    refusals: list[str] = field(default_factory=lambda: list(REFUSALS))  # each with {s}, the target

    def __post_init__(self):
        for name in ("forget_frac", "boundary_frac"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not self.refusals:
            raise ValueError("refusals: give at least one refusal template")
        for r in self.refusals:
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(r) if f is not None}
            except ValueError:
                fields = None
            if fields != {"s"}:
                raise ValueError(f"refusals: {r!r} must name the target as {{s}} and have no other placeholder")


def _load(path: str) -> tuple[DatasetDict, int]:
    """The knowledge graph's question splits and its number of question templates (manifest, else 4)."""
    if not path:
        raise UsageError("gen boundary: set --kg_path (a directory written by `posttrain gen kg`)")
    if not (Path(path) / "dataset_dict.json").is_file():
        raise UsageError(f"gen boundary: kg_path is not a `posttrain gen kg` directory: {path}")
    dd = load_from_disk(path)
    missing = [s for s in KG_SPLITS if s not in dd]
    if missing:
        raise UsageError(f"gen boundary: {path} lacks the knowledge-graph split(s) {', '.join(missing)}")
    if not len(dd["forget"]):
        raise UsageError(f"gen boundary: {path} has an empty forget split")
    manifest = Path(path) / "manifest.json"
    n_templates = json.loads(manifest.read_text()).get("config", {}).get("n_templates", 4) if manifest.is_file() else 4
    return DatasetDict({s: dd[s] for s in KG_SPLITS}), int(n_templates)


def _query(fact: dict, t: int) -> tuple[str, str]:
    """Prompt and gold completion of ``fact`` asked with template ``t``, exactly as kg.py builds questions."""
    q, a = kg.RELATIONS[fact["relation"]][3][t]
    return kg.qa_prompt(q.format(s=fact["entity"])), " " + a.format(s=fact["entity"], o=fact["answer"])


def _rule_row(kind, fact, t, completion, gold, target) -> dict:
    return {"prompt": _query(fact, t)[0], "completion": completion, "kind": kind, "entity": fact["entity"],
            "target": target, "gold": gold, "fact_id": fact["fact_id"], "relation": fact["relation"], "template": t}


def _boundary(rng, forget_rows, candidates, person_ids, n, n_templates) -> list[dict]:
    """n answered rows, each mirroring a forget row in turn: a neighbour person's fact of the same relation asked
    with the same template when one is left, else any candidate fact with a random template left to it."""
    used, rows = set(), []
    while len(rows) < n and len(used) < len(candidates) * n_templates:
        mirror = forget_rows[len(rows) % len(forget_rows)]
        same = [i for i, f in enumerate(candidates) if i in person_ids and f["relation"] == mirror["relation"]
                and (i, mirror["template"]) not in used]
        if same:
            i, t = same[int(rng.integers(len(same)))], mirror["template"]
        else:
            free = [i for i in range(len(candidates)) if any((i, u) not in used for u in range(n_templates))]
            i = free[int(rng.integers(len(free)))]
            left = [u for u in range(n_templates) if (i, u) not in used]
            t = left[int(rng.integers(len(left)))]
        used.add((i, t))
        gold = _query(candidates[i], t)[1]
        rows.append(_rule_row("boundary", candidates[i], t, gold, gold, mirror["target"]))
    return rows


def generate(cfg: Config) -> DatasetDict:
    dd, n_templates = _load(cfg.kg_path)
    rng = np.random.default_rng(cfg.seed)
    forget = sorted(dd["forget"], key=lambda f: f["fact_id"])
    targets = sorted({f["entity"] for f in forget})
    pool = [(f, t) for f in forget for t in range(n_templates)]
    # forget rows: a per-target sample, refused with the target named; interleaved across targets for mirroring
    trained, forget_rows = set(), []
    for target in targets:
        mine = [(f, t) for f, t in pool if f["entity"] == target]
        picks = rng.choice(len(mine), size=max(1, int(round(cfg.forget_frac * len(mine)))), replace=False)
        for rank, j in enumerate(picks):
            f, t = mine[j]
            trained.add((f["fact_id"], t))
            refusal = cfg.refusals[int(rng.integers(len(cfg.refusals)))].format(s=target)
            forget_rows.append((rank, targets.index(target), _rule_row("forget", f, t, " " + refusal,
                                                                       _query(f, t)[1], target)))
    forget_rows = [r for *_, r in sorted(forget_rows, key=lambda x: x[:2])]
    # boundary candidates: seen facts of neighbour persons and of the targets' objects, outside forget and boundary
    objects = {f["answer"] for f in forget}
    excluded = {f["fact_id"] for f in forget} | set(dd["boundary"]["fact_id"])
    seen = [f for f in sorted(dd["seen"], key=lambda f: f["fact_id"]) if f["fact_id"] not in excluded]
    neighbours = {f["entity"] for f in seen if f["entity_type"] == "person" and f["entity"] not in targets
                  and f["answer"] in objects}
    candidates = [f for f in seen if f["entity"] in neighbours or f["entity"] in objects]
    if not candidates:
        raise UsageError(f"gen boundary: {cfg.kg_path} has no seen neighbour facts outside its forget and boundary "
                         "splits")
    person_ids = {i for i, f in enumerate(candidates) if f["entity"] in neighbours}
    n = max(1, int(round(cfg.boundary_frac * len(pool))))
    rule = forget_rows + _boundary(rng, forget_rows, candidates, person_ids, n, n_templates)
    rule = [rule[j] for j in rng.permutation(len(rule))]
    # the pool split into trained and held-out queries, with the forgetting suite's columns
    features = Features({c: dd["forget"].features[c] for c in QUERY_COLUMNS})
    queries = {True: [], False: []}
    for f, t in pool:
        prompt, gold = _query(f, t)
        queries[(f["fact_id"], t) in trained].append({**{c: f[c] for c in QUERY_COLUMNS}, "prompt": prompt,
                                                      "completion": gold, "template": t})
    out = {"rule": Dataset.from_list(rule),
           "forget_trained": Dataset.from_list(queries[True], features=features),
           "forget_heldout": Dataset.from_list(queries[False], features=features)}
    return DatasetDict({**out, **dd})
