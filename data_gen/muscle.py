"""MUSCLE's model-update data (arXiv 2407.09435): two base corpora and two downstream tasks on one knowledge graph.

MUSCLE updates a base model v1 -> v2 and studies the task adapters trained on each (negative flips: what the v1
adapter got right and the v2 adapter gets wrong). Built on a graph written by ``posttrain gen kg`` (``kg_path``):

* base v1 pretrains on ``corpus_v1``, an earlier, smaller snapshot — a random ``v1_frac`` of the ``corpus`` rows, in
  corpus order; base v2 pretrains on the full ``corpus``, so it has seen more facts, and more often;
* the KG's ``seen`` facts split once into training and test facts (``test_frac`` held out), shared by both tasks:
  ``gen_train``/``gen_test`` teach answering any question template in a full sentence (the base does so only for the
  long-form template), ``mc_train``/``mc_test`` pick the true object among ``n_choices`` candidates of its type
  listed after the question (short-answer templates only; ``choices``, ``gold``). A training fact is asked with
  ``train_templates`` distinct templates, a test fact once, with a random template.

Task rows carry the fact's columns, ``exposure`` (its count in ``corpus``) and ``exposure_v1`` (in ``corpus_v1``),
to compare the two bases by how often each saw a fact. Every word of every task row occurs in ``corpus``: the testbed
tokenizer is built from all splits, and a word the base never saw would be an untrained embedding. ``corpus``,
``seen`` and ``unseen`` are kept unchanged (the flips suite builds its mistake-severity graph from them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk

from posttrain.core.errors import UsageError
from posttrain.data_gen import kg

KG_SPLITS = ("corpus", "seen", "unseen")
FACT_COLUMNS = ("fact_id", "entity", "entity_type", "relation", "answer", "answer_type", "exposure")


@dataclass
class Config:
    """Where the knowledge graph is, how old the old base's corpus is, and how the task questions are drawn."""

    kg_path: str = ""  # a directory written by `posttrain gen kg`
    seed: int = 0
    v1_frac: float = 0.8  # fraction of the corpus rows in the old base's snapshot
    test_frac: float = 0.5  # fraction of the seen facts held out as the tasks' test facts
    train_templates: int = 2  # distinct templates per training fact (multiple choice: capped at its 3)
    n_choices: int = 4  # candidates per multiple-choice question

    def __post_init__(self):
        if not 0.0 < self.v1_frac <= 1.0:
            raise ValueError(f"v1_frac must be in (0, 1], got {self.v1_frac}")
        if not 0.0 < self.test_frac < 1.0:
            raise ValueError(f"test_frac must be in (0, 1), got {self.test_frac}")
        if not 1 <= self.train_templates <= 4:
            raise ValueError(f"train_templates must be in 1..4, got {self.train_templates}")
        if self.n_choices < 2:
            raise ValueError(f"n_choices must be at least 2, got {self.n_choices}")


def _load(path: str) -> tuple[DatasetDict, int]:
    """The graph's corpus and fact splits, and its number of question templates (manifest, else 4)."""
    if not path or not (Path(path) / "dataset_dict.json").is_file():
        raise UsageError(f"gen muscle: kg_path is not a `posttrain gen kg` directory: {path!r}")
    dd = load_from_disk(path)
    missing = [s for s in KG_SPLITS if s not in dd]
    if missing:
        raise UsageError(f"gen muscle: {path} lacks the knowledge-graph split(s) {', '.join(missing)}")
    if len(dd["seen"]) < 2:
        raise UsageError(f"gen muscle: {path} has fewer than 2 seen facts to split into train and test")
    manifest = Path(path) / "manifest.json"
    n_templates = json.loads(manifest.read_text()).get("config", {}).get("n_templates", 4) if manifest.is_file() else 4
    return DatasetDict({s: dd[s] for s in KG_SPLITS}), int(n_templates)


def _words(texts) -> set[str]:
    return {w for t in texts for w in t.split()}


def generate(cfg: Config) -> DatasetDict:
    dd, n_templates = _load(cfg.kg_path)
    rng = np.random.default_rng(cfg.seed)
    corpus = dd["corpus"]
    vocab = _words(corpus["prompt"]) | _words(corpus["completion"])
    # the old snapshot: a random subset of the (already shuffled) corpus, kept in corpus order
    keep = np.sort(rng.choice(len(corpus), size=max(1, round(cfg.v1_frac * len(corpus))), replace=False))
    corpus_v1 = corpus.select(keep)
    voiced = np.array(corpus["kind"][:]) != "decline"  # exposure counts a fact's voicings, not the declines of it
    facts = sorted(dd["seen"].select_columns(list(FACT_COLUMNS)), key=lambda f: f["fact_id"])
    ids = np.array(corpus["fact_id"][:])[keep][voiced[keep]]
    exposure_v1 = np.bincount(ids, minlength=max(f["fact_id"] for f in facts) + 1)
    # one fact split for both tasks
    n_test = min(max(1, round(cfg.test_frac * len(facts))), len(facts) - 1)
    is_test = np.zeros(len(facts), bool)
    is_test[rng.permutation(len(facts))[:n_test]] = True
    # candidate objects per type: the graph's entities of that type that the corpus voices
    rows = list(dd["seen"]) + list(dd["unseen"])
    pools = {r["answer_type"]: set() for r in rows}
    for r in rows:
        pools[r["answer_type"]].add(r["answer"])
        pools.get(r["entity_type"], set()).add(r["entity"])
    pools = {t: sorted(p & vocab) for t, p in pools.items()}
    if cfg.n_choices > min(map(len, pools.values())):
        raise UsageError(f"gen muscle: n_choices {cfg.n_choices} exceeds {cfg.kg_path}'s smallest object pool, "
                         f"{min(map(len, pools.values()))}")
    if cfg.train_templates > n_templates:
        raise UsageError(f"gen muscle: train_templates {cfg.train_templates} exceeds the {n_templates} question "
                         f"templates of {cfg.kg_path}")
    templates = {"gen": n_templates, "mc": min(n_templates, 3)}  # multiple choice: short-answer templates only
    out = {k: [] for k in ("gen_train", "gen_test", "mc_train", "mc_test")}
    for f, test in zip(facts, is_test):
        base = {**f, "exposure_v1": int(exposure_v1[f["fact_id"]])}
        statement = kg.RELATIONS[f["relation"]][2].format(s=f["entity"], o=f["answer"])
        for task, n in templates.items():
            split = f"{task}_{'test' if test else 'train'}"
            for t in rng.choice(n, size=1 if test else min(cfg.train_templates, n), replace=False):
                question = kg.RELATIONS[f["relation"]][3][t][0].format(s=f["entity"])
                if task == "gen":
                    out[split].append({**base, "prompt": kg.qa_prompt(question), "completion": " " + statement,
                                       "template": int(t)})
                    continue
                wrong = [o for o in pools[f["answer_type"]] if o != f["answer"]]
                options = [str(o) for o in rng.choice(wrong, size=cfg.n_choices - 1, replace=False)]
                gold = int(rng.integers(cfg.n_choices))
                options.insert(gold, f["answer"])
                choices = [f" {o} ." for o in options]
                out[split].append({**base, "prompt": kg.qa_prompt(f"{question} {' , '.join(options)}"),
                                   "completion": choices[gold], "template": int(t), "choices": choices,
                                   "gold": gold})
    new = sorted(_words(r[c] for rs in out.values() for r in rs for c in ("prompt", "completion")) - vocab)
    if new:
        raise UsageError(f"gen muscle: {cfg.kg_path}'s corpus lacks the word(s) {' '.join(new[:5])} the tasks need")
    return DatasetDict({"corpus": corpus, "corpus_v1": corpus_v1, "seen": dd["seen"], "unseen": dd["unseen"],
                        **{k: Dataset.from_list(v) for k, v in out.items()}})
