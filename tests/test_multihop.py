"""Multi-hop problems on a small knowledge graph: each answer follows the chain through the graph's true facts, each
worked step is a true fact, the verifier accepts the answer and nothing else, splits are distinct and seeded, and the
generator is validated and reachable through ``posttrain gen``."""

import json
import re

import pytest
from datasets import DatasetDict, load_from_disk

from conftest import cli
from posttrain.core.errors import UsageError
from posttrain.data_gen import multihop
from posttrain.gen import fingerprint, gen

SMALL_KG = ["--n_persons", "40", "--n_companies", "10", "--n_cities", "10", "--n_countries", "5", "--n_years", "12"]
SMALL = dict(n_train=100, n_valid=20, n_test=20)
SPLITS = ("train", "valid", "test")
# the test's own phrase table and chain list, written out rather than imported
PHRASE = {"the birthplace of": "born_in", "the home city of": "lives_in", "the employer of": "works_for",
          "the headquarters city of": "headquartered_in", "the country of": "located_in",
          "the founding year of": "founded_in", "the birth year of": "birth_year"}
CHAINS = {"born_in,located_in", "lives_in,located_in", "works_for,headquartered_in", "works_for,founded_in",
          "headquartered_in,located_in", "works_for,headquartered_in,located_in"}


@pytest.fixture(scope="module")
def kg_dir(tmp_path_factory):
    return gen("kg", tmp_path_factory.mktemp("multihop") / "kg", SMALL_KG)


@pytest.fixture(scope="module")
def facts(kg_dir):
    """(entity, relation) -> answer from the graph's true fact rows."""
    source = load_from_disk(str(kg_dir))
    return {(r["entity"], r["relation"]): r["answer"] for s in ("seen", "unseen") for r in source[s]}


@pytest.fixture(scope="module")
def dd(kg_dir):
    return make(kg_dir)


def make(kg_dir, **kw) -> DatasetDict:
    return multihop.generate(multihop.Config(kg_path=str(kg_dir), **{**SMALL, **kw}))


def rows(dd):
    return [r for s in SPLITS for r in dd[s]]


def parse(prompt: str) -> tuple[list[str], str]:
    """(relations innermost first, start entity) from the prompt's words alone."""
    m = re.fullmatch(r"Question: What is (.*) ([A-Z]\d+) \? Answer:", prompt)
    nested, relations = m.group(1) + " ", []
    while nested:
        phrase = next(p for p in PHRASE if nested.startswith(p + " "))
        relations.insert(0, PHRASE[phrase])
        nested = nested[len(phrase) + 1:]
    return relations, m.group(2)


def count(facts, min_hops=2, max_hops=3) -> int:
    """Problems the graph allows: start entities of each chain whose every hop is a fact."""
    n = 0
    for chain in (c.split(",") for c in CHAINS):
        for (entity, relation) in facts:
            x = entity if relation == chain[0] and min_hops <= len(chain) <= max_hops else None
            for r in chain:
                x = facts.get((x, r))
            n += x is not None
    return n


def test_chains_are_the_typed_relation_paths():
    assert {",".join(c) for c in multihop.chains(2, 3)} == CHAINS and multihop.LONGEST == 3
    assert {",".join(c) for c in multihop.chains(3, 3)} == {"works_for,headquartered_in,located_in"}


def test_answers_follow_the_chain_through_true_facts(dd, facts):
    for r in rows(dd):
        chain, start = parse(r["prompt"])
        x = start
        for rel in chain:
            x = facts[x, rel]
        assert r["answer"] == x and r["chain"] == ",".join(chain) and r["hops"] == len(chain)
        *steps, final = r["completion"].strip().split(" . ")
        assert final == f"The answer is {x} ." and len(steps) == len(chain)
        subject = start
        for step, rel in zip(steps, chain):
            phrase = next(p for p, q in PHRASE.items() if q == rel)
            m = re.fullmatch(rf"{phrase[0].upper()}{phrase[1:]} (\S+) is (\S+)", step)
            assert m and m.group(1) == subject and facts[subject, rel] == m.group(2), step
            subject = m.group(2)
    assert set(dd["train"]["chain"]) == CHAINS  # chains drawn uniformly: every one shows up in 100 draws


def test_verifier(dd, facts):
    for r in rows(dd):
        assert multihop.verify(r["completion"], r["answer"])
        other = min(a for a in facts.values() if a != r["answer"] and a[0] == r["answer"][0])  # same type
        assert not multihop.verify(r["completion"], other)
        first_hop = r["completion"].split(" is ")[1].split()[0]  # an intermediate entity is not the answer
        assert not multihop.verify(r["completion"], first_hop)
        assert not multihop.verify(r["completion"].replace(f"The answer is {r['answer']}", "The answer is"),
                                   r["answer"])


def test_direct_form(kg_dir, dd):
    direct = make(kg_dir, form="direct")
    for cot, d in zip(rows(dd), rows(direct)):
        assert d["completion"] == f" The answer is {d['answer']} ."
        assert {k: v for k, v in d.items() if k != "completion"} == {k: v for k, v in cot.items() if k != "completion"}


def test_splits_distinct_and_seeded(kg_dir, dd):
    assert [len(dd[s]) for s in SPLITS] == [100, 20, 20]
    prompts = [r["prompt"] for r in rows(dd)]
    assert len(set(prompts)) == len(prompts)
    assert fingerprint(make(kg_dir)) == fingerprint(dd)
    assert fingerprint(make(kg_dir, seed=1)) != fingerprint(dd)
    assert {r["hops"] for r in rows(dd)} == {2, 3}
    assert {r["hops"] for r in rows(make(kg_dir, min_hops=3, n_train=20, n_valid=3, n_test=3))} == {3}
    assert {r["hops"] for r in rows(make(kg_dir, max_hops=2))} == {2}
    empty = make(kg_dir, n_valid=0)["valid"]
    assert len(empty) == 0 and empty.column_names == dd["valid"].column_names


def test_every_problem_can_be_drawn_and_no_more(kg_dir, facts):
    n = count(facts)
    every = make(kg_dir, n_train=n - 2, n_valid=1, n_test=1)
    assert len({r["prompt"] for r in rows(every)}) == n
    with pytest.raises(UsageError, match=rf"^gen multihop: .* = {n + 1} exceeds the {n} problems"):
        make(kg_dir, n_train=n - 1, n_valid=1, n_test=1)
    assert len(rows(make(kg_dir, min_hops=3, n_train=count(facts, 3), n_valid=0, n_test=0))) == count(facts, 3)


def test_a_graph_that_is_not_a_function_is_rejected(kg_dir, tmp_path):
    source = load_from_disk(str(kg_dir))
    row = dict(source["seen"][0])
    other = next(a for a in source["seen"]["answer"] if a != row["answer"])
    bad = DatasetDict({**source, "unseen": source["unseen"].add_item({**row, "answer": other})})
    bad.save_to_disk(str(tmp_path / "kg"))
    with pytest.raises(UsageError, match="two answers"):
        multihop.generate(multihop.Config(kg_path=str(tmp_path / "kg")))


@pytest.mark.parametrize("kw", [dict(form="sketch"), dict(min_hops=1), dict(max_hops=4),
                                dict(min_hops=3, max_hops=2), dict(n_train=0), dict(n_test=-1)])
def test_config_rejects_bad_values_in_one_line(kw):
    with pytest.raises(ValueError) as e:
        multihop.Config(**kw)
    assert len(str(e.value).splitlines()) == 1


def test_gen_cli(capsys, kg_dir, tmp_path, facts):
    out = tmp_path / "multihop"
    proc = cli(capsys, "gen", "multihop", "--kg_path", kg_dir, "--out", out, "--seed", "2", "--form", "direct",
               "--n_train", "30", "--n_valid", "5", "--n_test", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data, manifest = load_from_disk(str(out)), json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "multihop" and manifest["fingerprint"] == fingerprint(data)
    assert manifest["num_rows"] == {"train": 30, "valid": 5, "test": 5}
    assert fingerprint(data) == fingerprint(make(kg_dir, seed=2, form="direct", n_train=30, n_valid=5, n_test=5))


@pytest.mark.parametrize("bad", [["--kg_path", "missing"], [], ["--form", "sketch"], ["--min_hops", "1"],
                                 ["--max_hops", "4"], ["--n_train", "0"], ["--n_train", "100000"]])
def test_bad_config_exits_2_with_one_line_and_writes_nothing(capsys, kg_dir, tmp_path, bad):
    out = tmp_path / "multihop"
    args = bad if not bad or bad[0] == "--kg_path" else ["--kg_path", kg_dir, *bad]
    proc = cli(capsys, "gen", "multihop", "--out", out, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("posttrain: error: gen multihop"), lines
    assert (bad[0].lstrip("-") if bad else "kg_path") in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())
