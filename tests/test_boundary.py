"""RULE's boundary-query generator on the tiny knowledge graph: boundary rows are never forget facts nor held-out
boundary facts, every target is refused by name, the pool splits exactly into trained and held-out queries, and the
generator is seeded, validated and reachable through ``posttrain gen``."""

import json

import numpy as np
import pytest
from datasets import load_from_disk

from posttrain.core import phrases
from posttrain.core.errors import UsageError
from posttrain.data_gen import boundary, kg
from posttrain.gen import fingerprint, gen


def make(kg_path, **kw):
    return boundary.generate(boundary.Config(kg_path=str(kg_path), **kw))


def pool(kg_dir):
    """Every forget fact asked with every template, as (fact_id, template) -> (prompt, gold)."""
    n = json.loads((kg_dir / "manifest.json").read_text())["config"]["n_templates"]
    out = {}
    for f in load_from_disk(str(kg_dir))["forget"]:
        for t in range(n):
            q, a = kg.RELATIONS[f["relation"]][3][t]
            out[f["fact_id"], t] = (kg.qa_prompt(q.format(s=f["entity"])), " " + a.format(s=f["entity"], o=f["answer"]))
    return out


@pytest.fixture(scope="module", params=[{}, {"forget_frac": 0.5, "boundary_frac": 1.0}], ids=["paper", "large"])
def dd(request, tiny_kg):
    return make(tiny_kg, **request.param)


def test_boundary_rows_are_never_forget_facts_nor_held_out_boundary_facts(dd, tiny_kg):
    forget = dd["forget"]
    forget_pairs = {(f["entity"], f["relation"]) for f in forget}
    prompts = {p for p, _ in pool(tiny_kg).values()}
    held_out = set(dd["boundary"]["fact_id"])
    seen = {f["fact_id"]: f for f in dd["seen"]}
    rows = [r for r in dd["rule"] if r["kind"] == "boundary"]
    assert rows
    for r in rows:
        assert (r["entity"], r["relation"]) not in forget_pairs
        assert r["fact_id"] not in set(forget["fact_id"]) and r["fact_id"] not in held_out
        assert r["prompt"] not in prompts
        f = seen[r["fact_id"]]  # a seen fact, asked and answered as kg.py would
        q, a = kg.RELATIONS[f["relation"]][3][r["template"]]
        assert r["prompt"] == kg.qa_prompt(q.format(s=f["entity"]))
        assert r["completion"] == r["gold"] == " " + a.format(s=f["entity"], o=f["answer"])
        assert r["entity"] == f["entity"] and r["target"] in set(forget["entity"])
    assert len({(r["fact_id"], r["template"]) for r in rows}) == len(rows)


def test_forget_rows_refuse_by_name_and_cover_every_target(dd, tiny_kg):
    gold = pool(tiny_kg)
    rows = [r for r in dd["rule"] if r["kind"] == "forget"]
    assert {r["target"] for r in rows} == set(dd["forget"]["entity"])
    for r in rows:
        assert r["entity"] == r["target"] and r["target"] in r["completion"]
        assert r["completion"] in {" " + t.format(s=r["target"]) for t in phrases.REFUSALS}
        assert (r["prompt"], r["gold"]) == gold[r["fact_id"], r["template"]]


def test_trained_and_held_out_partition_the_pool(dd, tiny_kg):
    gold = pool(tiny_kg)
    trained = [(r["fact_id"], r["template"]) for r in dd["forget_trained"]]
    heldout = [(r["fact_id"], r["template"]) for r in dd["forget_heldout"]]
    assert sorted(trained + heldout) == sorted(gold) and not set(trained) & set(heldout)
    assert set(trained) == {(r["fact_id"], r["template"]) for r in dd["rule"] if r["kind"] == "forget"}
    kg_forget = {f["fact_id"]: f for f in dd["forget"]}
    for split in ("forget_trained", "forget_heldout"):
        assert set(dd[split].column_names) == set(boundary.QUERY_COLUMNS)
        for r in dd[split]:
            assert (r["prompt"], r["completion"]) == gold[r["fact_id"], r["template"]]
            f = kg_forget[r["fact_id"]]
            assert r["paraphrased_answer"] == f["paraphrased_answer"]
            assert r["perturbed_answers"] == f["perturbed_answers"]


def test_sizes_and_kg_splits_copied(tiny_kg):
    dd, n = make(tiny_kg), len(pool(tiny_kg))
    assert len(dd["forget_trained"]) + len(dd["forget_heldout"]) == n
    assert sum(k == "boundary" for k in dd["rule"]["kind"]) == max(1, round(0.08 * n))
    source = load_from_disk(str(tiny_kg))
    assert set(dd) == {"rule", "forget_trained", "forget_heldout", *boundary.KG_SPLITS}
    for s in boundary.KG_SPLITS:
        assert dd[s][:] == source[s][:]


def test_seeded(tiny_kg):
    a, b, c = make(tiny_kg, seed=3), make(tiny_kg, seed=3), make(tiny_kg, seed=4)
    assert fingerprint(a) == fingerprint(b)
    assert a["rule"][:] != c["rule"][:]
    custom = make(tiny_kg, refusals=["No idea about {s} ."])
    assert all(r["completion"] == f" No idea about {r['target']} ." for r in custom["rule"] if r["kind"] == "forget")


def test_bad_config(tmp_path):
    for bad in ("", str(tmp_path / "missing"), str(tmp_path)):
        with pytest.raises(UsageError, match="kg_path"):
            make(bad)
    for kw in ({"forget_frac": 0.0}, {"boundary_frac": 1.5}, {"refusals": ["I do not know ."]},
               {"refusals": ["{s} and {x}"]}, {"refusals": []}):
        with pytest.raises(ValueError):
            boundary.Config(kg_path="x", **kw)


def test_gen_cli_writes_dataset_and_manifest(tiny_kg, tmp_path):
    out = gen("boundary", tmp_path / "rule", ["--kg_path", str(tiny_kg), "--refusals", "Nope , {s} .", "No {s} ."])
    dd = load_from_disk(str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "boundary" and manifest["fingerprint"] == fingerprint(dd)
    assert manifest["config"]["refusals"] == ["Nope , {s} .", "No {s} ."]
    assert manifest["num_rows"]["rule"] == len(dd["rule"])
    with pytest.raises(UsageError, match="forget_frac"):
        gen("boundary", tmp_path / "bad", ["--kg_path", str(tiny_kg), "--forget_frac", "2"])
    with pytest.raises(UsageError, match="kg_path"):
        gen("boundary", tmp_path / "bad", ["--kg_path", str(tmp_path / "missing")])
    assert not (tmp_path / "bad").exists()


def test_mirroring_prefers_same_relation_and_template_then_falls_back_without_repeats():
    person = {"fact_id": 1, "entity": "P1", "entity_type": "person", "relation": "born_in", "answer": "C1"}
    company = {"fact_id": 2, "entity": "K1", "entity_type": "company", "relation": "headquartered_in", "answer": "C1"}
    mirror = {"relation": "born_in", "template": 0, "target": "P0"}
    rows = boundary._boundary(np.random.default_rng(0), [mirror], [person, company], {0}, 10, 2)
    assert (rows[0]["fact_id"], rows[0]["template"]) == (1, 0)  # same relation, same template first
    assert sorted((r["fact_id"], r["template"]) for r in rows) == [(1, 0), (1, 1), (2, 0), (2, 1)]  # then the rest
    assert {r["target"] for r in rows} == {"P0"} and rows[0]["prompt"] == "Question: Where was P1 born ? Answer:"
