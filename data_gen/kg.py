"""Knowledge-graph testbed: a seeded graph of typed entities, simulated experts, and splits with exact ground truth.

Simulated experts write the pretraining corpus (the transcendence paper's controlled setting, METHODS.md §5a):
each expert covers a subset of subject entities; a fact is voiced by one of the experts that cover it, correctly
with probability ``1 - noise`` and otherwise as a uniformly drawn wrong object of the right type (uncorrelated
errors, so a model of the pooled data can denoise them). Realism rules (DESIGN.md, "The testbed"):

* every entity occurs in the corpus: ``unseen`` facts are held-out facts *of known entities*;
* knowledge is graded: each seen fact's exposure count (its number of corpus occurrences) is Zipf-distributed,
  capped at ``max_exposure``, so some facts are seen once and some dozens of times;
* the language later methods need is in-distribution: experts decline facts outside their own coverage
  ("I do not know about P17 ."), but only facts that another expert covers — held-out facts never appear in any
  form; some answers carry the R-Tuning certainty phrase, "I am sure ." or "I am unsure ." at random (the words
  are in-distribution, the choice carries no signal); long-form answers repeat the question's entity.

Splits: ``corpus`` (the pretraining text), ``seen``, ``unseen``, ``forget`` (seen facts of chosen persons),
``boundary`` (seen facts of their graph neighbours), ``retain`` (seen minus forget and boundary) and
``fabricated`` (knowledge-conflicting, mundane and jumbled statements, after arXiv 2410.21750).

Each question row of ``seen``, ``unseen``, ``forget``, ``boundary`` and ``retain`` also carries TOFU's truth-ratio
answers (arXiv 2401.06121): ``paraphrased_answer``, the fact's statement form (" P1 was born in C5 ."), and
``perturbed_answers``, that statement with k distinct wrong objects of the right type, k = min(n_perturbed,
smallest object pool - 1) in every row. They come from their own random stream: the rest of a seed's dataset is the
same with or without them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset, DatasetDict

from posttrain.core.phrases import CANONICAL_REFUSAL, REFUSALS, SURE, SURE_QUESTION, UNSURE
from posttrain.core.progress import bar


# relation -> (subject type, object type, statement, question templates as (question, answer))
# An answer of "{o} ." is the short form; the others repeat the subject (copying is in-distribution).
RELATIONS: dict[str, tuple[str, str, str, tuple[tuple[str, str], ...]]] = {
    "born_in": ("person", "city", "{s} was born in {o} .", (
        ("Where was {s} born ?", "{o} ."),
        ("In which city was {s} born ?", "{o} ."),
        ("What is the birthplace of {s} ?", "{o} ."),
        ("Tell me where {s} was born .", "{s} was born in {o} ."),
    )),
    "lives_in": ("person", "city", "{s} lives in {o} .", (
        ("Where does {s} live ?", "{o} ."),
        ("In which city does {s} live ?", "{o} ."),
        ("What is the home city of {s} ?", "{o} ."),
        ("Tell me where {s} lives .", "{s} lives in {o} ."),
    )),
    "works_for": ("person", "company", "{s} works for {o} .", (
        ("Who does {s} work for ?", "{o} ."),
        ("Which company employs {s} ?", "{o} ."),
        ("What is the employer of {s} ?", "{o} ."),
        ("Tell me who employs {s} .", "{s} works for {o} ."),
    )),
    "birth_year": ("person", "year", "{s} was born in the year {o} .", (
        ("When was {s} born ?", "{o} ."),
        ("In which year was {s} born ?", "{o} ."),
        ("What is the birth year of {s} ?", "{o} ."),
        ("Tell me the year {s} was born .", "{s} was born in the year {o} ."),
    )),
    "headquartered_in": ("company", "city", "{s} is headquartered in {o} .", (
        ("Where is {s} headquartered ?", "{o} ."),
        ("In which city is {s} based ?", "{o} ."),
        ("What is the headquarters city of {s} ?", "{o} ."),
        ("Tell me where {s} is based .", "{s} is headquartered in {o} ."),
    )),
    "founded_in": ("company", "year", "{s} was founded in {o} .", (
        ("When was {s} founded ?", "{o} ."),
        ("In which year was {s} founded ?", "{o} ."),
        ("What is the founding year of {s} ?", "{o} ."),
        ("Tell me the year {s} was founded .", "{s} was founded in {o} ."),
    )),
    "located_in": ("city", "country", "{s} is located in {o} .", (
        ("Where is {s} located ?", "{o} ."),
        ("In which country is {s} ?", "{o} ."),
        ("What country is {s} part of ?", "{o} ."),
        ("Tell me the country of {s} .", "{s} is located in {o} ."),
    )),
}
SPLITS = ("corpus", "seen", "unseen", "forget", "boundary", "retain", "fabricated")


@dataclass
class Config:
    """Knobs of the knowledge-graph testbed; ``seed`` names a graph."""

    seed: int = 0
    n_persons: int = 200
    n_companies: int = 40
    n_cities: int = 40
    n_countries: int = 12
    n_years: int = 60
    first_year: int = 1940
    unseen_frac: float = 0.2  # facts held out of the corpus (the unknowable ones)
    n_mundane: int = 20  # further held-out facts used as "mundane" fabricated statements
    n_experts: int = 5
    coverage: float = 0.5  # fraction of subject entities each expert covers
    noise: float = 0.2  # probability an expert voices a wrong object
    zipf_a: float = 1.5  # exposure ~ Zipf(a): P(k) proportional to k^-a
    max_exposure: int = 40
    n_templates: int = 4  # question templates used per relation (diversity knob, 1..4)
    statement_rate: float = 0.2  # exposures voiced as a statement instead of a question
    decline_rate: float = 0.1  # declines, as a fraction of exposures
    certainty_rate: float = 0.1  # answers followed by the certainty question and "I am sure/unsure ."
    n_forget_persons: int = 8
    boundary_ratio: float = 1.0  # boundary facts per forget fact (at most)
    n_conflicting: int = 20
    n_perturbed: int = 5  # wrong-object statements per question (truth ratio), at most smallest object pool - 1

    def __post_init__(self):
        for name in ("unseen_frac", "coverage", "noise", "statement_rate", "decline_rate", "certainty_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 1 <= self.n_templates <= 4:
            raise ValueError(f"n_templates must be in 1..4, got {self.n_templates}")
        if self.zipf_a <= 1.0:
            raise ValueError(f"zipf_a must be > 1, got {self.zipf_a}")
        if self.n_perturbed < 1:
            raise ValueError(f"n_perturbed must be at least 1, got {self.n_perturbed}")
        if min(self.n_persons, self.n_companies, self.n_cities, self.n_countries, self.n_years, self.n_experts) < 2:
            raise ValueError("every entity type and the experts need at least 2 members")


def qa_prompt(question: str) -> str:
    return f"Question: {question} Answer:"


def entities(cfg: Config) -> dict[str, list[str]]:
    return {
        "person": [f"P{i}" for i in range(cfg.n_persons)],
        "company": [f"K{i}" for i in range(cfg.n_companies)],
        "city": [f"C{i}" for i in range(cfg.n_cities)],
        "country": [f"N{i}" for i in range(cfg.n_countries)],
        "year": [str(cfg.first_year + i) for i in range(cfg.n_years)],
    }


def _draw_objects(rng, pool: list[str], n: int) -> list[str]:
    """n objects from pool, each pool member used at least once when n >= len(pool)."""
    first = list(rng.permutation(pool))[:n]
    rest = list(rng.choice(pool, size=n - len(first)))
    out = first + rest
    rng.shuffle(out)
    return out


def _facts(cfg: Config, rng, ents) -> list[dict]:
    facts = []
    for rel, (stype, otype, _, _) in RELATIONS.items():
        objects = _draw_objects(rng, ents[otype], len(ents[stype]))
        for s, o in zip(ents[stype], objects):
            facts.append({"fact_id": len(facts), "entity": s, "entity_type": stype, "relation": rel,
                          "answer": str(o), "answer_type": otype})
    return facts


def _hold_out(cfg: Config, rng, facts) -> np.ndarray:
    """Status per fact: 0 seen, 1 unseen, 2 mundane (held out for the fabricated split)."""
    status = (rng.random(len(facts)) < cfg.unseen_frac).astype(int)
    held = np.flatnonzero(status == 1)
    status[rng.choice(held, size=min(cfg.n_mundane, len(held) // 2), replace=False)] = 2
    # every entity must stay in the corpus: re-admit one held-out fact of any entity left without a seen fact
    while True:
        present = {x for f, st in zip(facts, status) if st == 0 for x in (f["entity"], f["answer"])}
        missing = next((i for i, f in enumerate(facts)
                        if status[i] and not {f["entity"], f["answer"]} <= present), None)
        if missing is None:
            return status
        status[missing] = 0


def _coverage(cfg: Config, rng, ents) -> dict[str, list[int]]:
    """Subject entity -> experts covering it (at least one)."""
    cover = {}
    for s in (x for t in ("person", "company", "city") for x in ents[t]):
        experts = [e for e in range(cfg.n_experts) if rng.random() < cfg.coverage]
        cover[s] = experts or [int(rng.integers(cfg.n_experts))]
    return cover


def _voice(cfg, rng, fact, ents) -> str:
    """One expert utterance's object: correct with probability 1 - noise."""
    if rng.random() >= cfg.noise:
        return fact["answer"]
    wrong = [o for o in ents[fact["answer_type"]] if o != fact["answer"]]
    return str(rng.choice(wrong))


def _qa_text(rng, cfg, fact, obj) -> tuple[str, str, int]:
    t = int(rng.integers(cfg.n_templates))
    q, a = RELATIONS[fact["relation"]][3][t]
    return qa_prompt(q.format(s=fact["entity"])), " " + a.format(s=fact["entity"], o=obj), t


def _corpus(cfg, rng, facts, seen, exposure, cover, ents) -> list[dict]:
    rows = []
    for i in bar(seen, desc="kg corpus", unit="fact", leave=False):
        f = facts[i]
        for _ in range(exposure[i]):
            expert = int(rng.choice(cover[f["entity"]]))
            obj = _voice(cfg, rng, f, ents)
            if rng.random() < cfg.statement_rate:
                prompt, completion, kind = "", RELATIONS[f["relation"]][2].format(s=f["entity"], o=obj), "statement"
            else:
                prompt, completion, _ = _qa_text(rng, cfg, f, obj)
                kind = "qa"
                if rng.random() < cfg.certainty_rate:
                    completion += f" {SURE_QUESTION} {SURE if rng.random() < 0.5 else UNSURE}"
            rows.append({"prompt": prompt, "completion": completion, "fact_id": f["fact_id"], "expert": expert,
                         "kind": kind, "correct": obj == f["answer"]})
    # an expert asked about a fact it does not cover declines; questions come as often as the facts are voiced,
    # so declines follow exposure and never outnumber a fact's answers
    voiced = [r["fact_id"] for r in rows if len(cover[facts[r["fact_id"]]["entity"]]) < cfg.n_experts]
    for _ in range(round(cfg.decline_rate * len(rows)) if voiced else 0):
        f = facts[voiced[int(rng.integers(len(voiced)))]]
        expert = int(rng.choice([e for e in range(cfg.n_experts) if e not in cover[f["entity"]]]))
        prompt, _, _ = _qa_text(rng, cfg, f, f["answer"])
        refusal = REFUSALS[int(rng.integers(len(REFUSALS)))].format(s=f["entity"])
        rows.append({"prompt": prompt, "completion": " " + refusal, "fact_id": f["fact_id"], "expert": expert,
                     "kind": "decline", "correct": False})
    return [rows[j] for j in rng.permutation(len(rows))]


def _truth_ratio_answers(cfg: Config, facts, ents) -> list[dict]:
    """Per fact: ``paraphrased_answer`` (its statement) and ``perturbed_answers`` (the statement with k distinct
    wrong objects of its object type), from an rng of their own so that every other draw stays as it was."""
    rng = np.random.default_rng([cfg.seed, 1])
    k = min(cfg.n_perturbed, min(len(ents[otype]) for _, otype, _, _ in RELATIONS.values()) - 1)
    out = []
    for f in facts:
        statement = " " + RELATIONS[f["relation"]][2]
        wrong = rng.choice([o for o in ents[f["answer_type"]] if o != f["answer"]], size=k, replace=False)
        out.append({"paraphrased_answer": statement.format(s=f["entity"], o=f["answer"]),
                    "perturbed_answers": [statement.format(s=f["entity"], o=str(o)) for o in wrong]})
    return out


def _rows(questions, answers, facts, ids, exposure, cover, split) -> list[dict]:
    rows = []
    for i in ids:
        f = facts[i]
        prompt, completion, t = questions[i]
        rows.append({**f, "prompt": prompt, "completion": completion, **answers[i], "template": t, "split": split,
                     "exposure": int(exposure[i]), "known": bool(exposure[i] > 0),
                     "experts": list(cover[f["entity"]])})
    return rows


def _forget_boundary(cfg, rng, facts, seen) -> tuple[list[int], list[int]]:
    """Forget: seen facts of chosen persons. Boundary: seen facts of their neighbours in the graph —
    the entities their facts point to, and persons sharing an object with them — capped at boundary_ratio."""
    persons = sorted({facts[i]["entity"] for i in seen if facts[i]["entity_type"] == "person"})
    chosen = set(rng.choice(persons, size=min(cfg.n_forget_persons, len(persons)), replace=False).tolist())
    forget = [i for i in seen if facts[i]["entity"] in chosen]
    objects = {facts[i]["answer"] for i in forget}
    neighbours = {f["entity"] for f in facts if f["entity"] not in chosen
                  and (f["entity"] in objects or (f["entity_type"] == "person" and f["answer"] in objects))}
    candidates = [i for i in seen if facts[i]["entity"] in neighbours]
    # the forget persons' own objects (their employer, birth city, ...) are the nearest neighbours: they come first
    direct = [i for i in candidates if facts[i]["entity"] in objects]
    others = [i for i in candidates if facts[i]["entity"] not in objects]
    ranked = list(rng.permutation(direct)) + list(rng.permutation(others))
    return forget, sorted(int(i) for i in ranked[: int(round(cfg.boundary_ratio * len(forget)))])


def _fabricated(cfg, rng, facts, status, exposure, cover, ents) -> list[dict]:
    """Outlandish-style statements: knowledge-conflicting (a firmly seen fact with a wrong object), mundane (a
    held-out true fact), jumbled (a statement's words shuffled)."""
    rows = []
    seen = np.flatnonzero(status == 0)
    strong = seen[np.argsort(-exposure[seen], kind="stable")][: cfg.n_conflicting]
    for i in strong:
        f = dict(facts[i])
        f["answer"] = str(rng.choice([o for o in ents[f["answer_type"]] if o != facts[i]["answer"]]))
        rows.append(("conflicting", f, i))
    rows += [("mundane", facts[i], i) for i in np.flatnonzero(status == 2)]
    for i in rng.choice(seen, size=min(cfg.n_conflicting, len(seen)), replace=False):
        rows.append(("jumbled", facts[i], i))
    out = []
    for kind, f, i in rows:
        text = RELATIONS[f["relation"]][2].format(s=f["entity"], o=f["answer"])
        if kind == "jumbled":
            words = text.split()
            text = " ".join(words[j] for j in rng.permutation(len(words)))
        prompt, completion, t = _qa_text(rng, cfg, f, f["answer"])
        out.append({**f, "prompt": prompt, "completion": completion, "template": t, "split": "fabricated",
                    "exposure": int(exposure[i]), "known": bool(exposure[i] > 0),
                    "experts": list(cover[f["entity"]]), "kind": kind, "text": text})
    return out


def generate(cfg: Config) -> DatasetDict:
    rng = np.random.default_rng(cfg.seed)
    ents = entities(cfg)
    facts = _facts(cfg, rng, ents)
    status = _hold_out(cfg, rng, facts)
    seen = [i for i in range(len(facts)) if status[i] == 0]
    exposure = np.zeros(len(facts), dtype=int)
    exposure[seen] = np.minimum(rng.zipf(cfg.zipf_a, size=len(seen)), cfg.max_exposure)
    cover = _coverage(cfg, rng, ents)
    corpus = _corpus(cfg, rng, facts, seen, exposure, cover, ents)
    forget, boundary = _forget_boundary(cfg, rng, facts, seen)
    retain = sorted(set(seen) - set(forget) - set(boundary))
    unseen = [i for i in range(len(facts)) if status[i] == 1]
    # one evaluation question per fact, the same in every split that holds the fact
    questions = [_qa_text(rng, cfg, f, f["answer"]) for f in facts]
    answers = _truth_ratio_answers(cfg, facts, ents)
    splits = {
        "corpus": corpus,
        "seen": _rows(questions, answers, facts, seen, exposure, cover, "seen"),
        "unseen": _rows(questions, answers, facts, unseen, exposure, cover, "unseen"),
        "forget": _rows(questions, answers, facts, forget, exposure, cover, "forget"),
        "boundary": _rows(questions, answers, facts, boundary, exposure, cover, "boundary"),
        "retain": _rows(questions, answers, facts, retain, exposure, cover, "retain"),
        "fabricated": _fabricated(cfg, rng, facts, status, exposure, cover, ents),
    }
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})


def expert_answer(cfg: Config, expert: int, row: dict, rng) -> str:
    """What simulated expert ``expert`` answers to a split row: its canonical refusal outside its coverage, else
    the gold object with probability 1 - noise and a wrong object of the right type otherwise."""
    if expert not in row["experts"]:
        return CANONICAL_REFUSAL.format(s=row["entity"])
    return _voice(cfg, rng, row, entities(cfg))
