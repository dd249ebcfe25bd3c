import pytest
from datasets import load_from_disk

from posttrain.core import phrases
from posttrain.core.errors import UsageError
from posttrain.data_gen import kg
from posttrain.gen import fingerprint, gen

SMALL = dict(n_persons=40, n_companies=8, n_cities=8, n_countries=3, n_years=10, n_forget_persons=3)


def small(**kw):
    return kg.generate(kg.Config(**{**SMALL, **kw}))


def test_same_seed_same_fingerprint_other_seed_other_graph():
    assert fingerprint(small(seed=3)) == fingerprint(small(seed=3))
    a, b = small(seed=3), small(seed=4)
    assert fingerprint(a) != fingerprint(b)
    assert list(a["seen"]["answer"]) != list(b["seen"]["answer"])


def test_gen_cli_writes_dataset_and_manifest(tmp_path):
    out = gen("kg", tmp_path / "kg", ["--seed", "5", "--n_persons", "30"])
    dd = load_from_disk(str(out))
    manifest = (out / "manifest.json").read_text()
    assert '"generator": "kg"' in manifest and fingerprint(dd) in manifest
    assert '"n_persons": 30' in manifest and '"seed": 5' in manifest
    assert set(kg.SPLITS) == set(dd)
    with pytest.raises(UsageError, match="n_experts2"):
        gen("kg", tmp_path / "bad", ["--n_experts2", "3"])
    with pytest.raises(UsageError, match="noise"):
        gen("kg", tmp_path / "bad", ["--noise", "1.5"])
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("flags, message", [
    (["--n_persons", "abc"], "gen kg: argument --n_persons/--n-persons: invalid int value: 'abc'"),
    (["--noise", "x"], "gen kg: argument --noise: invalid float value: 'x'"),
    (["--n_persons"], "gen kg: argument --n_persons/--n-persons: expected one argument"),
    (["--n_", "3"], "gen kg: ambiguous option: --n_ could match --n_persons"),
])
def test_a_badly_typed_gen_flag_is_one_line_and_exit_2(capsys, tmp_path, flags, message):
    from conftest import cli

    proc = cli(capsys, "gen", "kg", "--out", tmp_path / "kg", *flags)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"posttrain: error: {message}"), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_splits_are_disjoint_and_partition_seen():
    dd = small()
    ids = {s: set(dd[s]["fact_id"]) for s in ("seen", "unseen", "forget", "boundary", "retain")}
    assert not ids["forget"] & ids["retain"] and not ids["forget"] & ids["boundary"]
    assert not ids["boundary"] & ids["retain"]
    assert ids["forget"] | ids["boundary"] | ids["retain"] == ids["seen"]
    assert not ids["seen"] & ids["unseen"]
    assert ids["forget"] and ids["boundary"] and ids["unseen"]
    assert all(list(dd["unseen"]["exposure"])[i] == 0 for i in range(len(dd["unseen"])))
    assert not any(list(dd["unseen"]["known"])) and all(list(dd["seen"]["known"]))


def test_unseen_facts_never_appear_in_the_corpus_in_any_form():
    dd = small()
    texts = set(list(dd["corpus"]["prompt"])) | set(list(dd["corpus"]["completion"]))
    corpus_ids = set(list(dd["corpus"]["fact_id"]))
    for f in dd["unseen"]:
        assert f["fact_id"] not in corpus_ids
        _, _, statement, templates = kg.RELATIONS[f["relation"]]
        forms = {kg.qa_prompt(q.format(s=f["entity"])) for q, _ in templates}
        assert not forms & texts  # not even as a question that an expert declined
        assert statement.format(s=f["entity"], o=f["answer"]) not in {t.strip() for t in texts}


def test_every_entity_occurs_in_the_corpus():
    cfg = kg.Config(**SMALL)
    dd = kg.generate(cfg)
    words = {w for t in list(dd["corpus"]["prompt"]) + list(dd["corpus"]["completion"]) for w in t.split()}
    for names in kg.entities(cfg).values():
        assert set(names) <= words


def test_exposure_counts_are_the_corpus_occurrences_and_long_tailed():
    dd = small()
    voiced = [fid for fid, kind in zip(list(dd["corpus"]["fact_id"]), list(dd["corpus"]["kind"])) if kind != "decline"]
    for f in dd["seen"]:
        assert voiced.count(f["fact_id"]) == f["exposure"]
    exposure = list(dd["seen"]["exposure"])
    assert exposure.count(1) > len(exposure) / 5  # many facts seen exactly once
    assert max(exposure) >= 10  # and some seen often


def test_declines_only_by_non_covering_experts_of_facts_others_cover():
    dd = small()
    seen = {f["fact_id"]: f for f in dd["seen"]}
    declines = [r for r in dd["corpus"] if r["kind"] == "decline"]
    assert declines
    for r in declines:
        f = seen[r["fact_id"]]  # KeyError would mean a decline of a held-out fact
        assert r["expert"] not in f["experts"] and f["experts"]
        assert "I do not know" in r["completion"] and f["entity"] in r["completion"]
    answers = [r for r in dd["corpus"] if r["kind"] == "qa"]
    assert all(r["expert"] in seen[r["fact_id"]]["experts"] for r in answers)


def test_noise_rate_and_language_coverage():
    dd = small(seed=2, noise=0.3)
    voiced = [r for r in dd["corpus"] if r["kind"] != "decline"]
    wrong = 1 - sum(r["correct"] for r in voiced) / len(voiced)
    assert 0.25 < wrong < 0.35
    text = " ".join(list(dd["corpus"]["completion"]))
    assert phrases.SURE in text and phrases.UNSURE in text and phrases.SURE_QUESTION in text
    assert any(r["entity"] in r["completion"] for r in dd["seen"])  # long answers repeat the entity
    assert {"conflicting", "mundane", "jumbled"} == set(list(dd["fabricated"]["kind"]))
    assert not set(list(dd["fabricated"].filter(lambda r: r["kind"] == "mundane")["fact_id"])) & set(list(dd["corpus"]["fact_id"]))


def test_expert_answers_follow_coverage_and_noise():
    cfg = kg.Config(**SMALL, noise=0.0)
    dd = kg.generate(cfg)
    import numpy as np

    rng = np.random.default_rng(0)
    row = dd["seen"][0]
    inside, outside = row["experts"][0], next(e for e in range(cfg.n_experts + 1) if e not in row["experts"])
    assert kg.expert_answer(cfg, inside, row, rng) == row["answer"]
    if outside < cfg.n_experts:
        assert "I do not know" in kg.expert_answer(cfg, outside, row, rng)
