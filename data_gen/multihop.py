"""Multi-hop reasoning on the knowledge graph: chains of relations from an entity, with a verifier (pass@N, DCO).

A problem is a start entity and a chain of ``min_hops``..``max_hops`` relations, each relation's subject type the
previous one's object type (person -works_for-> company -headquartered_in-> city -located_in-> country, person
-born_in-> city -located_in-> country, company -founded_in-> year, ...); every chain the ``kg.RELATIONS`` table allows
is enumerated. Each hop's value is the graph's true fact (the ``seen`` and ``unseen`` rows of a ``posttrain gen kg``
directory, ``kg_path``, not its noisy corpus); a problem exists only if every hop's fact does. The question nests one
noun phrase per relation, in words of the KG's question templates ("the employer of P3"):

    prompt:      "Question: What is the country of the headquarters city of the employer of P3 ? Answer:"
    completion:  " The employer of P3 is K7 . The headquarters city of K7 is C2 . The country of C2 is N4 .
                  The answer is N4 ."                                                        (form "cot")
    completion:  " The answer is N4 ."                                                       (form "direct")

Problems are drawn without replacement by ``seed``: a chain uniformly among those with problems left, then a start
entity uniformly (so long chains, with fewer problems, are not swamped). Splits ``train``, ``valid`` and ``test``
(``n_train``, ``n_valid``, ``n_test`` rows) hold distinct problems, with columns prompt, completion, answer, hops and
chain ("works_for,headquartered_in,located_in"); ``verify`` (the reasoning testbed's) checks a response's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_from_disk

from posttrain.core.answers import verify  # noqa: F401  (the verifier of every reasoning generator)
from posttrain.core.errors import UsageError
from posttrain.data_gen import kg

FORMS = ("cot", "direct")
SPLITS = ("train", "valid", "test")
PHRASES = {"born_in": "the birthplace of", "lives_in": "the home city of", "works_for": "the employer of",
           "headquartered_in": "the headquarters city of", "located_in": "the country of",
           "founded_in": "the founding year of", "birth_year": "the birth year of"}
Chain = tuple[str, ...]


def chains(min_hops: int, max_hops: int) -> list[Chain]:
    """Every relation chain of min_hops..max_hops relations whose types connect, in RELATIONS order."""
    out, frontier = [], [(r,) for r in kg.RELATIONS]
    for hops in range(1, max_hops + 1):
        out += [c for c in frontier if hops >= min_hops]
        frontier = [c + (r,) for c in frontier for r, (stype, *_) in kg.RELATIONS.items()
                    if stype == kg.RELATIONS[c[-1]][1]]
    return out


LONGEST = max(len(c) for c in chains(1, len(kg.RELATIONS)))


@dataclass
class Config:
    """Where the knowledge graph is, the solution form, the chain lengths and the split sizes."""

    kg_path: str = ""  # a directory written by `posttrain gen kg`
    seed: int = 0
    form: str = "cot"  # "cot": one sentence per hop, then the answer; "direct": the answer only
    min_hops: int = 2
    max_hops: int = 3
    n_train: int = 800
    n_valid: int = 100
    n_test: int = 100

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if not 2 <= self.min_hops <= self.max_hops <= LONGEST:
            raise ValueError(f"need 2 <= min_hops <= max_hops <= {LONGEST} (the longest relation chain), "
                             f"got {self.min_hops} and {self.max_hops}")
        if self.n_train < 1 or min(self.n_valid, self.n_test) < 0:
            raise ValueError(f"need n_train >= 1 and n_valid, n_test >= 0, got {self.n_train}, {self.n_valid}, "
                             f"{self.n_test}")


def true_facts(path: str) -> dict[tuple[str, str], str]:
    """(entity, relation) -> answer over the graph's ``seen`` and ``unseen`` rows (its true facts)."""
    if not path or not (Path(path) / "dataset_dict.json").is_file():
        raise UsageError(f"gen multihop: kg_path is not a `posttrain gen kg` directory: {path!r}")
    dd = load_from_disk(path)
    if missing := [s for s in ("seen", "unseen") if s not in dd]:
        raise UsageError(f"gen multihop: {path} lacks the knowledge-graph split(s) {', '.join(missing)}")
    facts: dict[tuple[str, str], str] = {}
    rows = (r for s in ("seen", "unseen") for r in dd[s].select_columns(["fact_id", "entity", "relation", "answer"]))
    for r in sorted(rows, key=lambda r: r["fact_id"]):
        if facts.setdefault((r["entity"], r["relation"]), r["answer"]) != r["answer"]:
            raise UsageError(f"gen multihop: {path} gives {r['entity']} {r['relation']} two answers")
    return facts


def problems(facts: dict[tuple[str, str], str], chain: Chain) -> list[tuple[str, list[str]]]:
    """(start entity, the value after each hop) for every start entity whose every hop is a fact, in graph order."""
    out = []
    for entity, relation in facts:
        if relation != chain[0]:
            continue
        values = [entity]
        for r in chain:
            if (values[-1], r) not in facts:
                break
            values.append(facts[values[-1], r])
        else:
            out.append((entity, values[1:]))
    return out


def row(start: str, chain: Chain, values: list[str], form: str) -> dict:
    """One problem's row: the nested question, and the hops' sentences (innermost first) before the answer."""
    phrases = [f"{PHRASES[r]} {s}" for r, s in zip(chain, [start, *values])]  # each hop asked of its own subject
    question = start
    for r in chain:
        question = f"{PHRASES[r]} {question}"
    steps = [f"{p[0].upper()}{p[1:]} is {v} ." for p, v in zip(phrases, values)] if form == "cot" else []
    return {"prompt": kg.qa_prompt(f"What is {question} ?"),
            "completion": " " + " ".join(steps + [f"The answer is {values[-1]} ."]), "answer": values[-1],
            "hops": len(chain), "chain": ",".join(chain)}


def generate(cfg: Config) -> DatasetDict:
    facts = true_facts(cfg.kg_path)
    pools = {c: p for c in chains(cfg.min_hops, cfg.max_hops) if (p := problems(facts, c))}
    n, total = cfg.n_train + cfg.n_valid + cfg.n_test, sum(map(len, pools.values()))
    if n > total:
        raise UsageError(f"gen multihop: n_train + n_valid + n_test = {n} exceeds the {total} problems of "
                         f"{cfg.min_hops}..{cfg.max_hops} hops that {cfg.kg_path}'s graph allows")
    rng, rows = np.random.default_rng(cfg.seed), []
    for _ in range(n):  # a chain uniformly among those with problems left, then a start entity, without replacement
        live = [c for c, p in pools.items() if p]
        chain = live[int(rng.integers(len(live)))]
        start, values = pools[chain].pop(int(rng.integers(len(pools[chain]))))
        rows.append(row(start, chain, values, cfg.form))
    data, cuts = Dataset.from_list(rows), np.cumsum([0, cfg.n_train, cfg.n_valid, cfg.n_test])
    # a list, not a range: datasets rejects an empty range that starts at the end
    return DatasetDict({s: data.select(list(range(a, b))) for s, a, b in zip(SPLITS, cuts, cuts[1:])})
