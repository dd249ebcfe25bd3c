"""MUSCLE's model-update data on a small knowledge graph: the old base's corpus is an in-order subset of the new
one's, one fact split serves both tasks, multiple-choice rows point at the true object among distinct candidates of
its type, no task row needs a word the corpus lacks, and the generator is seeded, validated and reachable through
``posttrain gen``."""

import json
from collections import Counter

import pytest
from datasets import load_from_disk

from conftest import cli
from posttrain.data_gen import kg, muscle
from posttrain.gen import fingerprint, gen

SMALL_KG = ["--n_persons", "40", "--n_companies", "10", "--n_cities", "10", "--n_countries", "5", "--n_years", "12"]
TASKS = ("gen_train", "gen_test", "mc_train", "mc_test")


@pytest.fixture(scope="module")
def kg_dir(tmp_path_factory):
    return gen("kg", tmp_path_factory.mktemp("muscle") / "kg", SMALL_KG)


@pytest.fixture(scope="module")
def dd(kg_dir):
    return make(kg_dir)


def make(kg_dir, **kw):
    return muscle.generate(muscle.Config(kg_path=str(kg_dir), **kw))


def voiced(rows) -> Counter:
    """Per fact, its corpus voicings (a decline is not an exposure)."""
    return Counter(r["fact_id"] for r in rows if r["kind"] != "decline")


def test_kg_splits_unchanged_and_corpus_v1_an_in_order_subset(dd, kg_dir):
    source = load_from_disk(str(kg_dir))
    assert set(dd) == {"corpus", "corpus_v1", "seen", "unseen", *TASKS}
    for s in ("corpus", "seen", "unseen"):
        assert dd[s][:] == source[s][:]
    corpus, v1 = list(dd["corpus"]), list(dd["corpus_v1"])
    assert len(v1) == round(0.8 * len(corpus))
    rest = iter(corpus)  # a subsequence: each v1 row is found after the previous one's match
    assert all(any(r == c for c in rest) for r in v1)
    assert len(make(kg_dir, v1_frac=1.0)["corpus_v1"]) == len(corpus)


def test_exposures_count_the_corpus_voicings(dd):
    full, old = voiced(dd["corpus"]), voiced(dd["corpus_v1"])
    assert all(full[f["fact_id"]] == f["exposure"] for f in dd["seen"])
    for split in TASKS:
        for r in dd[split]:
            assert r["exposure_v1"] == old[r["fact_id"]] <= r["exposure"]
    rows = [r for s in TASKS for r in dd[s]]
    assert any(r["exposure_v1"] < r["exposure"] for r in rows) and any(r["exposure_v1"] == 0 for r in rows)


def test_one_fact_split_for_both_tasks(dd):
    seen = set(dd["seen"]["fact_id"])
    for task in ("gen", "mc"):
        train, test = dd[f"{task}_train"]["fact_id"], dd[f"{task}_test"]["fact_id"]
        assert not set(train) & set(test) and set(train) | set(test) == seen
        assert len(test) == len(set(test)) == round(0.5 * len(seen))  # each test fact once
    assert set(dd["gen_test"]["fact_id"]) == set(dd["mc_test"]["fact_id"])


@pytest.mark.parametrize("n", [2, 4])
def test_train_facts_have_distinct_templates(kg_dir, dd, n):
    out = dd if n == 2 else make(kg_dir, train_templates=n)
    for task, cap in (("gen", 4), ("mc", 3)):
        per_fact = {}
        for r in out[f"{task}_train"]:
            per_fact.setdefault(r["fact_id"], []).append(r["template"])
        assert all(len(t) == len(set(t)) == min(n, cap) for t in per_fact.values())
        assert set(out[f"{task}_test"]["template"]) <= set(range(cap))


def test_rows_ask_and_answer_the_fact(dd):
    facts = {f["fact_id"]: f for f in dd["seen"]}
    pools = {}
    for r in list(dd["seen"]) + list(dd["unseen"]):
        pools.setdefault(r["answer_type"], set()).add(r["answer"])
        pools.setdefault(r["entity_type"], set()).add(r["entity"])
    for split in TASKS:
        for r in dd[split]:
            f = facts[r["fact_id"]]
            assert {c: r[c] for c in muscle.FACT_COLUMNS} == {c: f[c] for c in muscle.FACT_COLUMNS}
            question = kg.RELATIONS[f["relation"]][3][r["template"]][0].format(s=f["entity"])
            if split.startswith("gen"):
                assert r["prompt"] == kg.qa_prompt(question)
                assert r["completion"] == " " + kg.RELATIONS[f["relation"]][2].format(s=f["entity"], o=f["answer"])
                continue
            options = [c.strip()[:-2] for c in r["choices"]]
            assert r["choices"] == [f" {o} ." for o in options] and len(set(options)) == len(options) == 4
            assert options[r["gold"]] == f["answer"] and r["completion"] == r["choices"][r["gold"]]
            assert set(options) <= pools[f["answer_type"]]
            assert r["prompt"] == f"Question: {question} {' , '.join(options)} Answer:"
    golds = Counter(dd["mc_train"]["gold"][:] + dd["mc_test"]["gold"][:])
    assert set(golds) == {0, 1, 2, 3}


def test_no_word_the_corpus_lacks(dd):
    vocab = {w for c in ("prompt", "completion") for t in dd["corpus"][c] for w in t.split()}
    assert "," in vocab and "Sorry , I do not know" in " ".join(dd["corpus"]["completion"])
    for split in TASKS:
        words = {w for c in ("prompt", "completion") for t in dd[split][c] for w in t.split()}
        assert words <= vocab, words - vocab


def test_seeded(kg_dir, dd):
    assert fingerprint(make(kg_dir)) == fingerprint(dd)
    other = make(kg_dir, seed=1)
    assert other["corpus_v1"][:] != dd["corpus_v1"][:]
    assert all(other[s][:] != dd[s][:] for s in TASKS)


def test_gen_cli(capsys, kg_dir, tmp_path):
    out = tmp_path / "muscle"
    proc = cli(capsys, "gen", "muscle", "--kg_path", kg_dir, "--out", out, "--seed", "2", "--n_choices", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data, manifest = load_from_disk(str(out)), json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "muscle" and manifest["fingerprint"] == fingerprint(data)
    assert manifest["num_rows"] == {k: len(v) for k, v in data.items()}
    assert {len(c) for c in data["mc_test"]["choices"]} == {3}


@pytest.mark.parametrize("bad", [["--v1_frac", "0"], ["--n_choices", "1"], ["--test_frac", "1"],
                                 ["--train_templates", "5"], ["--n_choices", "6"], ["--kg_path", "missing"], []])
def test_bad_config_exits_2_with_one_line_and_writes_nothing(capsys, kg_dir, tmp_path, bad):
    out = tmp_path / "muscle"
    args = bad if "--kg_path" in bad or not bad else ["--kg_path", kg_dir, *bad]
    proc = cli(capsys, "gen", "muscle", "--out", out, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("posttrain: error: gen muscle"), lines
    assert (bad[0].lstrip("-") if bad and bad[0] != "--kg_path" else "kg_path") in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())
