"""The unlearning splits of ``posttrain gen world`` (RWKU-style, METHODS.md §2 and §9; ``world``'s module docstring
documents every split and column): the targets and their neighbours, retain and holdout countries, the training
rows of the baselines and of RULE, the adversarial probes, the utility questions, and TOFU's layout of them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from posttrain.core.answers import contains
from posttrain.core.errors import UsageError
from posttrain.data_gen import world as w

# refusals naming the target ({s}): each holds a hedge of answers.HEDGES ("i don t know"), so answers.is_refusal
# recognises it; a RULE recipe on this data gives them as its `refusals`
REFUSALS = ("I'm sorry, but I don't know about {s}.", "I don't know anything about {s}.",
            "Sorry, I don't know about {s}.")
# a fact as a statement, {o} its answer: the fill-in-the-blank probe ({o} = "___") and the context probe's prefix
STATEMENTS = {"capital": "The capital of {s} is {o}.", "continent": "{s} is on the continent of {o}.",
              "currency": "The currency of {s} is the {o}.", "language": "The official language of {s} is {o}.",
              "border": "{s} shares a border with {o}."}
# reverse questions, {o} the answer: only the capital's inverse is unique (a currency, continent, language or border
# names several countries), and only for a capital no other country's capital shares a name with ("Kingston")
REVERSE = {"capital": ("{o} is the capital of which country?", "Which country has {o} as its capital?",
                       "Of which country is {o} the capital?")}
BLANK = "___"
CHOICE = "{question}\n{options}\nAnswer with the number of the correct option."
N_OPTIONS = 4
TOFU_ONLY_TRAINING = ("forget_train", "retain_train", "rule")  # not written in TOFU's layout


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def _statement(fact: dict, answer: str) -> str:
    return _sentence(STATEMENTS[fact["relation"]].format(s=fact["subject"], o=answer))


def _phrasings(relation: str, trained_only: bool = False) -> list[int]:
    return [t for t, (_, heldout) in enumerate(w.PHRASINGS[relation][1]) if not (trained_only and heldout)]


def _country_facts() -> dict[str, list[dict]]:
    """ISO code -> the country's facts of every country relation."""
    by_iso: dict[str, list[dict]] = {}
    for r in w.COUNTRY_RELATIONS:
        for f in w._world()[r]:
            by_iso.setdefault(f["key"].split(":")[1], []).append(f)
    return by_iso


def _probed(cfg, by_iso: dict[str, list[dict]]) -> dict[str, float]:
    """Fact key ("capital:FR") -> the base model's accuracy (``probe_correct``) over the fact's candidate questions,
    every phrasing, in the ``posttrain probe`` output ``known``; a fact whose questions the probe does not all hold
    is left out."""
    from datasets import load_from_disk

    if not (Path(cfg.known) / "dataset_dict.json").is_file():
        raise UsageError(f"gen world: known is not a `posttrain probe` output directory: {cfg.known}")
    dd = load_from_disk(cfg.known)
    if "candidates" not in dd or not {"fact_id", "probe_correct"} <= set(dd["candidates"].column_names):
        raise UsageError(f"gen world: {cfg.known} has no probed candidates split (write one with `posttrain probe "
                         "BASE --data W0 --splits candidates`, W0 from `posttrain gen world --candidates true`)")
    correct = dict(zip(dd["candidates"]["fact_id"], dd["candidates"]["probe_correct"]))
    out = {}
    for facts in by_iso.values():
        for f in facts:
            ids = [f"{f['key']}:{t}" for t in _phrasings(f["relation"])]
            if all(i in correct for i in ids):
                out[f["key"]] = sum(bool(correct[i]) for i in ids) / len(ids)
    if not out:
        raise UsageError(f"gen world: {cfg.known} holds no country's candidate questions in full")
    return out


def known_facts(cfg, by_iso: dict[str, list[dict]], accuracy: dict[str, float]) -> dict[str, list[dict]]:
    """ISO code -> the country's facts the base model knows: probed accuracy >= ``min_known`` over the fact's
    phrasings (every fact without ``known``). Unlearning a fact the model never knew measures nothing, and would
    count for every method as forgotten."""
    if not cfg.known:
        return by_iso
    return {iso: [f for f in facts if accuracy.get(f["key"], -1.0) >= cfg.min_known] for iso, facts in by_iso.items()}


def _draw(rng, pool: list, n: int) -> list:
    return [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]


def _shuffled(rng, rows: list) -> list:
    return [rows[i] for i in rng.permutation(len(rows))]


def _countries(cfg, rng, by_iso: dict, known: dict) -> dict:
    """Who is what: ``targets``, ``boundary`` ((iso, target name, link) triples), ``holdout``, ``retain``,
    ``retain_train`` (ISO codes), ``near`` (targets, boundary countries and the targets' border neighbours) and
    ``names`` (every alias of every target). Only targets are asked about the targets: a country whose name
    contains a target's ("Sudan" in "South Sudan") is none of the others."""
    countries = w._countries()
    ranked = sorted(by_iso, key=lambda iso: (-countries[iso]["population"], iso))
    eligible = [iso for iso in ranked[: cfg.target_pool] if not cfg.known or len(known[iso]) >= cfg.min_known_facts]
    if cfg.targets:
        targets = cfg.target_list()
    elif len(eligible) < cfg.n_targets:
        raise UsageError(f"gen world: only {len(eligible)} of the {cfg.target_pool} most populous countries have "
                         f"{cfg.min_known_facts} facts of probed accuracy >= {cfg.min_known} in {cfg.known}, "
                         f"n_targets is {cfg.n_targets}")
    else:
        targets = _draw(rng, eligible, cfg.n_targets)
    names = [a for t in targets for a in countries[t]["aliases"]]

    def clear(iso):
        return not any(contains(countries[iso]["subject"], a) for a in names)

    pool = sorted(ranked[: cfg.country_pool])
    taken, boundary = set(targets), []
    for target in targets:
        t, mine = countries[target], 0
        tiers = (("border", sorted(n for n in t["neighbours"] if n in by_iso)),
                 ("currency", [iso for iso in pool if countries[iso]["currencycode"] == t["currencycode"]]),
                 ("continent", [iso for iso in pool if countries[iso]["continent"] == t["continent"]]))
        for link, candidates in tiers:
            free = [iso for iso in candidates if iso not in taken and clear(iso)]
            for i in rng.permutation(len(free))[: cfg.n_neighbours - mine]:
                taken.add(free[i])
                boundary.append((free[i], t["name"], link))
                mine += 1
    near = taken | {n for t in targets for n in countries[t]["neighbours"]}
    free = [iso for iso in eligible if iso not in near and clear(iso)]
    if len(free) < len(targets):
        raise UsageError(f"gen world: {len(free)} countries left for the holdout split ({len(targets)} needed, as "
                         f"many as targets) among the {cfg.target_pool} most populous"
                         + (f" with {cfg.min_known_facts} known facts" if cfg.known else ""))
    holdout = _draw(rng, free, len(targets))
    far = [iso for iso in pool if iso not in near and iso not in holdout and clear(iso)]
    if cfg.n_retain + cfg.n_retain_train > len(far):
        raise UsageError(f"gen world: n_retain {cfg.n_retain} + n_retain_train {cfg.n_retain_train} exceed the "
                         f"{len(far)} countries left for retain among the {cfg.country_pool} most populous")
    retain = _draw(rng, far, cfg.n_retain)
    retain_train = _draw(rng, [iso for iso in far if iso not in retain], cfg.n_retain_train)
    return {"targets": targets, "boundary": boundary, "holdout": holdout, "retain": retain,
            "retain_train": retain_train, "near": near, "names": names}


def _unique_capitals() -> set[str]:
    """ISO codes of the countries whose capital shares no name with another country's capital."""
    owners: dict[tuple, set] = {}
    for f in w._world()["capital"]:
        for a in f["aliases"]:
            owners.setdefault(w._key(a), set()).add(f["key"])
    return {f["key"].split(":")[1] for f in w._world()["capital"]
            if all(owners[w._key(a)] == {f["key"]} for a in f["aliases"])}


def _probes(cfg, rng, who: dict, by_iso: dict, known: dict, accuracy: dict) -> dict[str, list[dict]]:
    """The adversarial probes of every target fact the model knows (RWKU's): fill in the blank, reverse, multiple
    choice, and the question after a true neighbour fact."""
    countries, unique = w._countries(), _unique_capitals()
    out = {f"forget_{p}": [] for p in ("fill_blank", "reverse", "choice", "context")}

    def probe(fact, kind, n, question, answer, aliases, perturbed, phrasing=0, context=""):
        row = w._row(cfg, fact, phrasing)
        return {**row, **w.qa_row(cfg, question, answer, perturbed), "aliases": list(aliases), "phrasing": n,
                "heldout": True, "fact_id": f"{kind}:{fact['key']}:{n}", "probe_type": kind, "context": context,
                "probed_accuracy": accuracy.get(fact["key"], math.nan)}

    for iso in who["targets"]:
        country, name = countries[iso], countries[iso]["name"]
        neighbours = [b for b, of, _ in who["boundary"] if of == name]
        for f in known.get(iso, ()):
            perturbed = w.fact_perturbed(cfg, f)
            out["forget_fill_blank"].append(probe(f, "fill_blank", 0, f"Fill in the blank: {_statement(f, BLANK)}",
                                                  f["answer"], f["aliases"], perturbed))
            if f["relation"] in REVERSE and iso in unique:
                wrong = w._perturbed(cfg.seed, cfg.n_perturbed, "border", "reverse:" + f["key"],
                                     (*country["aliases"], *f["aliases"]))
                for n, template in enumerate(REVERSE[f["relation"]]):
                    out["forget_reverse"].append(probe(f, "reverse", n, _sentence(template.format(o=f["answer"])),
                                                       name, country["aliases"], wrong))
            # the prefix: a fact the boundary split (else the retain split) asks, its true statement naming no
            # target and no answer of this fact, of the same relation where one is left
            leaks = [*who["names"], *f["aliases"]]
            for tier in (neighbours, who["retain"]):
                facts = [g for b in tier for g in by_iso.get(b, ()) if not _names(g, who)
                         and not any(contains(_statement(g, g["answer"]), a) for a in leaks)]
                facts = [g for g in facts if g["relation"] == f["relation"]] or facts
                if facts:
                    break
            for t in _phrasings(f["relation"]):
                question = w._question(f["relation"], t, f["subject"])
                wrong = list(perturbed if len(perturbed) >= N_OPTIONS - 1 else w.fact_perturbed(cfg, f, N_OPTIONS - 1))
                wrong = [wrong[i] for i in sorted(rng.choice(len(wrong), N_OPTIONS - 1, replace=False))]
                options = [f["answer"], *wrong]
                options = [options[i] for i in rng.permutation(N_OPTIONS)]
                k = options.index(f["answer"]) + 1
                listed = "\n".join(f"{i}. {o}" for i, o in enumerate(options, 1))
                text = CHOICE.format(question=question, options=listed)
                out["forget_choice"].append(probe(f, "choice", t, text, f["answer"],
                                                  [*f["aliases"], f"{k}. {f['answer']}", str(k)], wrong, t))
                if facts:
                    g = facts[int(rng.integers(len(facts)))]
                    prefix = _statement(g, g["answer"])
                    out["forget_context"].append(probe(f, "context", t, f"{prefix} {question}", f["answer"],
                                                       f["aliases"], perturbed, t, prefix))
    return {name: _shuffled(rng, rows) for name, rows in out.items()}


def _rule(cfg, rng, forget: list[dict], boundary: list[dict], targets: dict[str, str]) -> tuple[set, list[dict]]:
    """The fact_ids trained (``forget_train``'s and rule's boundary queries) and RULE's rows: a ``forget_frac`` of
    each target's forget rows, among its training phrasings, refused with the target named; ``boundary_frac`` as
    many boundary rows (at least one per target that has a neighbour), training phrasings, with their answers."""
    rows = []
    for name, subject in targets.items():
        mine = [r for r in forget if r["entity"] == name]
        pool = [r for r in mine if not r["heldout"]]
        n = min(len(pool), max(1, round(cfg.forget_frac * len(mine))))
        for i in sorted(rng.choice(len(pool), n, replace=False)):
            refusal = REFUSALS[int(rng.integers(len(REFUSALS)))].format(s=subject)
            rows.append(_rule_row(cfg, pool[i], "forget", refusal, name))
    pools = {name: [r for r in boundary if r["neighbour_of"] == name and not r["heldout"]] for name in targets}
    capacity = [len(p) for p in pools.values()]
    n = min(sum(capacity), max(len(targets), round(cfg.boundary_frac * len(forget))))
    for (name, pool), m in zip(pools.items(), w._allot(n, capacity, "boundary queries")):
        for i in sorted(rng.choice(len(pool), m, replace=False)):
            rows.append(_rule_row(cfg, pool[i], "boundary", pool[i]["answer"], name))
    return {r["fact_id"] for r in rows}, _shuffled(rng, rows)


def _rule_row(cfg, row: dict, kind: str, text: str, target: str) -> dict:
    return {"prompt": row["prompt"], "completion": w.qa_row(cfg, row["question"], text, ())["completion"],
            "kind": kind, "target": target, "gold": row["paraphrased_answer"], "entity": row["entity"],
            "fact_id": row["fact_id"], "relation": row["relation"], "phrasing": row["phrasing"]}


def _tofu(splits: dict[str, list[dict]], n_forget: int, n_retain: int) -> dict[str, list[dict]]:
    """The splits in TOFU's layout: forget, retain and holdout named as TOFU's (forget01, retain99, holdout01: the
    percentage of the forget and retain countries each holds), every row with ``question``, ``answer``,
    ``paraphrased_answer`` (the answer) and ``perturbed_answer`` and no ``prompt``, ``completion``,
    ``perturbed_answers`` or ``trained``; the training splits TOFU does without are left out."""
    p = min(99, max(1, round(100 * n_forget / max(1, n_forget + n_retain))))
    names = {"forget": f"forget{p:02d}", "retain": f"retain{100 - p:02d}", "holdout": f"holdout{p:02d}"}
    drop = {"prompt", "completion", "perturbed_answers", "trained"}
    return {names.get(name, name): [{**{k: v for k, v in r.items() if k not in drop}, "paraphrased_answer": r["answer"],
                                     "perturbed_answer": [a.lstrip() for a in r["perturbed_answers"]]} for r in rows]
            for name, rows in splits.items() if name not in TOFU_ONLY_TRAINING}


def unlearning(cfg) -> dict[str, list[dict]]:
    """The unlearning splits, in ``world.SPLITS``' order (TOFU's names with ``layout`` tofu), then ``candidates``."""
    rng = np.random.default_rng([cfg.seed, 3])
    countries, by_iso = w._countries(), _country_facts()
    accuracy = _probed(cfg, by_iso) if cfg.known else {}
    known = known_facts(cfg, by_iso, accuracy)
    who = _countries(cfg, rng, by_iso, known)

    def rows(members, trained_only=False, facts=by_iso, forget=False):
        return [{**w._row(cfg, f, t, *extra), "probed_accuracy": accuracy.get(f["key"], math.nan)}
                for iso, *extra in members for f in facts.get(iso, ()) if forget or not _names(f, who)
                for t in _phrasings(f["relation"], trained_only)]

    forget, boundary = rows([(iso,) for iso in who["targets"]], facts=known, forget=True), rows(who["boundary"])
    trained, rule = _rule(cfg, rng, forget, boundary, {countries[t]["name"]: countries[t]["subject"]
                                                      for t in who["targets"]})
    forget, boundary = ([{**r, "trained": r["fact_id"] in trained} for r in split] for split in (forget, boundary))
    splits = {"forget": _shuffled(rng, forget), "forget_train": _shuffled(rng, [r for r in forget if r["trained"]]),
              "boundary": _shuffled(rng, boundary), "retain": _shuffled(rng, rows([(iso,) for iso in who["retain"]])),
              "retain_train": _shuffled(rng, rows([(iso,) for iso in who["retain_train"]], trained_only=True)),
              "holdout": _shuffled(rng, rows([(iso,) for iso in who["holdout"]], facts=known)), "rule": rule,
              **_probes(cfg, rng, who, by_iso, known, accuracy), "utility": _utility(cfg, rng, who)}
    if cfg.layout == "tofu":
        splits = _tofu(splits, len(who["targets"]), cfg.n_retain)
    if cfg.candidates:
        ranked = sorted(by_iso, key=lambda iso: (-countries[iso]["population"], iso))[: cfg.target_pool]
        splits["candidates"] = [w._row(cfg, f, t) for iso in ranked for f in by_iso[iso]
                                for t in _phrasings(f["relation"])]
    return splits


def _names(fact: dict, who: dict) -> bool:
    """Whether an accepted answer of ``fact`` names a target ("Which country borders Libya?": Egypt among them):
    answering it is the target's knowledge asked from the other side, so no neighbour, retain or holdout split
    asks it."""
    return any(contains(a, name) for a in fact["aliases"] for name in who["names"])


def _utility(cfg, rng, who: dict) -> list[dict]:
    """``n_utility`` city_country questions (one per city, any phrasing; cities log-uniform over population bands)
    of cities outside the targets, the boundary countries and the targets' border neighbours, whose name holds no
    target's name nor its capital's."""
    iso_of = {c["name"]: iso for iso, c in w._countries().items()}
    capitals = [a for f in w._world()["capital"] if f["key"].split(":")[1] in who["targets"] for a in f["aliases"]]
    banned = {w._key(a) for a in [*who["names"], *capitals]}
    cities = [f for f in w._world()["city_country"] if iso_of[f["answer"]] not in who["near"]
              and not any(contains(f["subject"], " ".join(k)) for k in banned)]
    return [w._row(cfg, f, w._phrasing(rng, "city_country", False))
            for f in w._sample(rng, cities, cfg.n_utility, "city_country")]
