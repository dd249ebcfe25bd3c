from collections import deque

import pytest
from conftest import cli
from datasets import load_from_disk

from posttrain.core.errors import UsageError
from posttrain.evals import flips


class Scripted:
    """A fake engine: the gold completion to every question of the split, except the hand-set answers."""

    def __init__(self, split, answers: dict[str, str]):
        self.gold = {p: c.strip() for p, c in zip(split["prompt"], split["completion"])}
        self.answers = answers

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=24, seed=0, stop=()):
        return [[self.answers.get(p, self.gold[p])] * n for p in prompts]


def bfs_distance(dd, source: str, target: str) -> int:
    """Edges between two entities in the graph of the seen and unseen facts (entity — answer), by breadth-first
    search."""
    adj = {}
    for s in ("seen", "unseen"):
        for e, a in zip(dd[s]["entity"], dd[s]["answer"]):
            adj.setdefault(e, set()).add(a)
            adj.setdefault(a, set()).add(e)
    dist, queue = {source: 0}, deque([source])
    while queue:
        u = queue.popleft()
        for v in adj[u] - dist.keys():
            dist[v] = dist[u] + 1
            queue.append(v)
    return dist[target]


def test_named_entity_skips_the_repeated_subject():
    types = {"P1": "person", "C5": "city", "1950": "year"}
    assert flips.named_entity("P1 was born in C5 .", "P1", types) == "C5"
    assert flips.named_entity("C5 .", "P1", types) == "C5"
    assert flips.named_entity("I do not know about P1 .", "P1", types) is None  # a refusal names no object
    assert flips.named_entity("the moon .", "P1", types) is None


def test_hand_made_flips_give_exact_rates_and_mistake_severity(tiny_kg):
    dd = load_from_disk(str(tiny_kg))
    rows = list(dd["seen"])
    n = len(rows)
    short = [r for r in rows if r["answer_type"] == "city" and r["completion"].split()[0] == r["answer"]]
    c = next(r for r in rows if r["answer_type"] == "city" and r["completion"].split()[0] == r["entity"])
    a, b, f, d, e = short[:5]
    cities = sorted({r["answer"] for r in rows if r["answer_type"] == "city"})
    wrong_a = next(x for x in cities if x != a["answer"])
    wrong_c = next(x for x in cities if x != c["answer"])
    year = next(r["answer"] for r in rows if r["answer_type"] == "year")
    other = [x for x in cities if x not in (d["answer"], e["answer"])]
    candidate = Scripted(dd["seen"], {
        a["prompt"]: f"{wrong_a} .",  # negative flip, a city at a known distance
        b["prompt"]: "I do not know .",  # negative flip, no entity
        c["prompt"]: c["completion"].strip().replace(c["answer"], wrong_c),  # negative, long form
        f["prompt"]: f"{year} .",  # negative flip, an entity of the wrong type
        e["prompt"]: f"{other[0]} .",  # both wrong, differently: an inconsistency flip, not a negative one
    })
    reference = Scripted(dd["seen"], {d["prompt"]: f"{other[0]} .", e["prompt"]: f"{other[1]} ."})  # d: a positive flip

    results, samples = flips.evaluate(candidate, dd, ["seen"], reference=reference)
    r = results["seen"]
    assert r["n"] == n
    assert r["candidate_exact_match"] == pytest.approx((n - 5) / n)
    assert r["reference_exact_match"] == pytest.approx((n - 2) / n)
    assert r["negative_flip_rate"] == pytest.approx(4 / n)
    assert r["positive_flip_rate"] == pytest.approx(1 / n)
    assert r["inconsistency_flip_rate"] == pytest.approx(5 / n)
    assert r["agreement"] == pytest.approx((n - 6) / n)
    # ROUGE-L recall: 1 for a right answer, 0 for a wrong short one, (k-1)/k for the long one with k words
    k = len(c["completion"].split()) - 1
    assert r["rouge_negative_flip_rate"] == pytest.approx(4 / n)
    assert r["rouge_positive_flip_rate"] == pytest.approx(1 / n)
    assert r["rouge_mean_gain"] == pytest.approx(1.0)
    assert r["rouge_mean_regression"] == pytest.approx((3 + 1 / k) / 4)
    # severity over the 4 negative flips: 2 of the gold type, 1 naming no entity, 3 at graph distances
    distances = [bfs_distance(dd, wrong_a, a["answer"]), bfs_distance(dd, wrong_c, c["answer"]),
                 bfs_distance(dd, year, f["answer"])]
    assert r["nf_same_type"] == pytest.approx(2 / 4)
    assert r["nf_not_entity"] == pytest.approx(1 / 4)
    assert r["nf_graph_distance"] == pytest.approx(sum(distances) / 3)
    assert r["nf_unreachable"] == 0.0

    by_prompt = {s["prompt"]: s for s in samples}
    assert len(samples) == n and samples[0]["doc_id"] == 0
    assert by_prompt[c["prompt"]]["named_entity"] == wrong_c
    assert by_prompt[c["prompt"]]["graph_distance"] == distances[1]
    assert by_prompt[b["prompt"]]["flip"] == "negative" and by_prompt[b["prompt"]]["named_entity"] is None
    assert by_prompt[b["prompt"]]["graph_distance"] is None
    assert by_prompt[f["prompt"]]["same_type"] is False
    assert by_prompt[d["prompt"]]["flip"] == "positive" and "named_entity" not in by_prompt[d["prompt"]]
    assert by_prompt[e["prompt"]]["flip"] is None and by_prompt[e["prompt"]]["reference_response"] == f"{other[1]} ."


def test_a_model_against_itself_has_no_flips(tiny_run, tiny_kg):
    from posttrain.evals.hf_engine import HFEngine

    dd = load_from_disk(str(tiny_kg))
    results, samples = flips.evaluate(HFEngine(str(tiny_run)), dd, ["seen", "unseen"], limit=20,
                                      reference=HFEngine(str(tiny_run)))
    for r in results.values():
        assert r["negative_flip_rate"] == r["positive_flip_rate"] == r["inconsistency_flip_rate"] == 0.0
        assert r["rouge_negative_flip_rate"] == r["rouge_positive_flip_rate"] == 0.0
        assert r["agreement"] == 1.0
        assert r["candidate_exact_match"] == r["reference_exact_match"]
    assert all(s["response"] == s["reference_response"] and s["flip"] is None for s in samples)


def test_the_suite_needs_a_reference(tiny_kg):
    dd = load_from_disk(str(tiny_kg))
    with pytest.raises(UsageError, match="--reference"):
        flips.evaluate(Scripted(dd["seen"], {}), dd, ["seen"])


# --- multiple-choice splits ----------------------------------------------------------------------------------------

class Chooser(Scripted):
    """A fake engine that also scores: of each question's choices, the hand-set one (else the gold completion) gets
    log-probs [-0.5, -0.5], every other one [-1.0, -2.0]. Counts its engine calls."""

    def __init__(self, split, answers: dict[str, str], choose: dict[str, str]):
        super().__init__(split, answers)
        self.choose, self.calls = choose, []
        self.completion = dict(zip(split["prompt"], split["completion"]))

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=24, seed=0, stop=()):
        self.calls.append("generate")
        return super().generate(prompts, n, temperature, max_tokens, seed, stop)

    def score(self, prompts, continuations):
        self.calls.append("score")
        return [[-0.5, -0.5] if c == self.choose.get(p, self.completion[p]) else [-1.0, -2.0]
                for p, c in zip(prompts, continuations)]


def mc_split(rows: list[dict], cities: list[str]):
    """Multiple-choice rows from city questions: 4 options " C .", the gold one at position i % 4."""
    from datasets import Dataset

    out = []
    for i, r in enumerate(rows):
        wrong = [c for c in cities if c != r["answer"]][:3]
        choices = [f" {c} ." for c in wrong]
        choices.insert(i % 4, r["completion"])
        out.append({k: r[k] for k in ("prompt", "completion", "entity", "answer", "answer_type")}
                   | {"choices": choices, "gold": i % 4})
    return Dataset.from_list(out)


def city_rows(dd):
    """The short-answer city questions of ``seen`` (completion " C3 .") and the city names."""
    rows = [r for r in dd["seen"] if r["answer_type"] == "city" and r["completion"].split()[0] == r["answer"]]
    return rows, sorted({r["answer"] for r in dd["seen"] if r["answer_type"] == "city"})


def with_split(dd, name, ds):
    from datasets import DatasetDict

    return DatasetDict({**dd, name: ds})


def test_hand_made_multiple_choice_flips(tiny_kg):
    dd = load_from_disk(str(tiny_kg))
    rows, cities = city_rows(dd)
    mc = mc_split(rows[:4], cities)
    dd = with_split(dd, "mc", mc)
    wrong = lambda i, k=0: [c for j, c in enumerate(mc[i]["choices"]) if j != mc[i]["gold"]][k]  # noqa: E731
    p = mc["prompt"]
    # reference right on 0, 1; candidate right on 1, 2; item 3 both wrong with the same choice
    reference = Chooser(dd["seen"], {}, {p[2]: wrong(2), p[3]: wrong(3)})
    candidate = Chooser(dd["seen"], {}, {p[0]: wrong(0), p[3]: wrong(3)})

    results, samples = flips.evaluate(candidate, dd, ["mc"], reference=reference)
    r = results["mc"]
    assert r["n"] == 4
    assert r["candidate_exact_match"] == r["reference_exact_match"] == 0.5
    assert r["negative_flip_rate"] == 0.25 and r["positive_flip_rate"] == 0.25
    # item 0 only: item 2 differs but the candidate is right, item 3 is wrong but the same choice as the reference's
    assert r["inconsistency_flip_rate"] == 0.25
    assert r["agreement"] == 0.5  # items 1 and 3
    assert not [k for k in r if k.startswith("rouge_")]
    # the one negative flip (item 0) chose another city
    assert r["nf_same_type"] == 1.0 and r["nf_not_entity"] == 0.0
    assert r["nf_graph_distance"] == bfs_distance(dd, wrong(0).split()[0], rows[0]["answer"])
    assert candidate.calls == reference.calls == ["score"]

    s = samples[0]
    assert s["kind"] == "multiple_choice" and s["flip"] == "negative"
    assert s["target"] == mc[0]["completion"] and s["response"] == wrong(0)
    assert s["reference_response"] == mc[0]["completion"]
    assert s["choice"] == [j for j, c in enumerate(mc[0]["choices"]) if c == wrong(0)][0]
    assert s["reference_choice"] == mc[0]["gold"]
    assert s["loglikelihoods"][s["choice"]] == -1.0 and sorted(s["loglikelihoods"]) == [-3.0, -3.0, -3.0, -1.0]
    assert s["named_entity"] == wrong(0).split()[0]
    assert [x["flip"] for x in samples] == ["negative", None, "positive", None]


def test_a_tie_of_log_likelihoods_picks_the_first_choice():
    from datasets import Dataset, DatasetDict

    class Flat:
        def score(self, prompts, continuations):  # " a" and " b c" tie at -2, " d" is worse
            return [{" a": [-2.0], " b c": [-1.5, -0.5], " d": [-3.0]}[c] for c in continuations]

    dd = DatasetDict({"mc": Dataset.from_dict({"prompt": ["Q1", "Q2"], "choices": [[" d", " a", " b c"],
                                                                                   [" b c", " a", " d"]]})})
    ds, pred, ll = flips.choice_answers(Flat(), dd, ["mc"])["mc"]
    assert pred == [1, 0]
    assert ll == [[-3.0, -2.0, -2.0], [-2.0, -2.0, -3.0]]


def test_multiple_choice_and_generative_splits_together(tiny_kg):
    dd = load_from_disk(str(tiny_kg))
    rows, cities = city_rows(dd)
    dd = with_split(dd, "mc", mc_split(rows[:6], cities))
    candidate, reference = Chooser(dd["seen"], {}, {}), Chooser(dd["seen"], {}, {})

    results, samples = flips.evaluate(candidate, dd, ["seen", "mc"], limit=5, reference=reference)
    assert candidate.calls == reference.calls == ["generate", "score"]
    assert results["mc"]["n"] == results["seen"]["n"] == 5
    assert not [k for k in results["mc"] if k.startswith("rouge_")]
    assert results["seen"]["rouge_negative_flip_rate"] == 0.0
    for r in results.values():
        assert r["candidate_exact_match"] == r["agreement"] == 1.0 and r["negative_flip_rate"] == 0.0
        assert "negative_flip_rate_stderr" in r
    assert {(s["split"], s["kind"]) for s in samples} == {("seen", "generative"), ("mc", "multiple_choice")}


class NoCalls:
    def generate(self, *a, **k):
        raise AssertionError("an engine was called")

    score = generate


@pytest.mark.parametrize("fault, message", [
    (lambda ds: ds.remove_columns("gold"), "no gold column"),
    (lambda ds: ds.map(lambda r, i: {"gold": 4 if i == 1 else r["gold"]}, with_indices=True), "row 1: gold 4"),
    (lambda ds: ds.map(lambda r: {"choices": r["choices"][:1], "gold": 0}), "row 0: choices"),
])
def test_a_bad_multiple_choice_split_is_a_usage_error(tiny_kg, fault, message):
    dd = load_from_disk(str(tiny_kg))
    rows, cities = city_rows(dd)
    dd = with_split(dd, "bad_mc", fault(mc_split(rows[:3], cities)))
    with pytest.raises(UsageError, match=f"split 'bad_mc'.*{message}"):
        flips.evaluate(NoCalls(), dd, ["seen", "bad_mc"], reference=NoCalls())


def test_multiple_choice_flips_end_to_end(tiny_run, tiny_kg, tmp_path):
    """``run_eval`` on a dataset on disk with a multiple-choice split, the model against itself: no flips, and the
    log-likelihoods are the engine's summed token log-probs."""
    import json

    from posttrain.evals.hf_engine import HFEngine
    from posttrain.evaluate import run_eval

    dd = load_from_disk(str(tiny_kg))
    rows, cities = city_rows(dd)
    data = tmp_path / "data"
    with_split(dd, "mc", mc_split(rows[:8], cities)).save_to_disk(str(data))

    out, results, samples = run_eval(str(tiny_run), str(data), suites=["flips"], splits=["unseen", "mc"], limit=8,
                                     engine="hf", reference=str(tiny_run), output=str(tmp_path / "eval"),
                                     progress=False)
    r = results["flips"]["mc"]
    assert r["n"] == 8 and not [k for k in r if k.startswith("rouge_")]
    assert r["negative_flip_rate"] == r["positive_flip_rate"] == r["inconsistency_flip_rate"] == 0.0
    assert r["agreement"] == 1.0 and r["candidate_exact_match"] == r["reference_exact_match"]
    assert "rouge_negative_flip_rate" in results["flips"]["unseen"]
    mc = [s for s in samples["flips"] if s["kind"] == "multiple_choice"]
    assert len(mc) == 8 and all(s["loglikelihoods"] == s["reference_loglikelihoods"] for s in mc)
    first = mc_split(rows[:1], cities)[0]
    direct = HFEngine(str(tiny_run)).score([first["prompt"]] * 4, first["choices"])
    assert mc[0]["loglikelihoods"] == pytest.approx([sum(lp) for lp in direct], abs=1e-4)
    assert mc[0]["choice"] == max(range(4), key=lambda j: mc[0]["loglikelihoods"][j])
    assert r["candidate_exact_match"] == pytest.approx(sum(s["choice"] == i % 4 for i, s in enumerate(mc)) / 8)
    doc = json.loads((out / "results.json").read_text())
    assert doc["results"]["flips/mc"]["agreement"] == 1.0


def test_an_lm_eval_style_multiple_choice_split_needs_no_testbed_columns(capsys, tiny_run, tmp_path):
    import json as _json

    rows = [{"prompt": "Question: Where was P1 born ? Answer:", "choices": [" C1 .", " C2 ."], "gold": 0},
            {"prompt": "Question: Where was P2 born ? Answer:", "choices": [" C3 .", " C1 .", " C2 ."], "gold": 2}]
    (tmp_path / "mc.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "e"
    proc = cli(capsys, "eval", tiny_run, "--data", tmp_path / "mc.jsonl", "--suite", "flips", "--reference", tiny_run,
               "--output", out)
    assert proc.returncode == 0, proc.stderr
    r = _json.loads((out / "results.json").read_text())["results"]["flips/mc"]
    # the same model on both sides: no flips, full agreement, and no mistake severity without a graph
    assert r["n"] == 2 and r["negative_flip_rate"] == 0.0 and r["agreement"] == 1.0
    assert not any(k.startswith("nf_") for k in r)


def test_user_splits_named_seen_and_unseen_are_evaluated_without_mistake_severity(capsys, tiny_run, tmp_path):
    """The testbed's graph splits are named seen / unseen: a user's own splits of those names (no fact columns) used
    to crash building the graph (datasets' select_columns); they hold no graph, so no nf_* metrics."""
    import json as _json

    gen = [{"prompt": "Question: Where was P1 born ? Answer:", "completion": " C1 ."},
           {"prompt": "Question: Where was P2 born ? Answer:", "completion": " C2 ."}]
    mc = [{"prompt": "Question: Where was P1 born ? Answer:", "choices": [" C1 .", " C2 ."], "gold": 0}]
    for name, rows in (("seen", gen), ("unseen", mc)):
        (tmp_path / f"{name}.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "e"
    proc = cli(capsys, "eval", tiny_run, "--data", f"seen={tmp_path / 'seen.jsonl'},unseen={tmp_path / 'unseen.jsonl'}",
               "--suite", "flips", "--reference", tiny_run, "--engine", "hf", "--output", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = _json.loads((out / "results.json").read_text())["results"]
    assert {k: r["n"] for k, r in results.items()} == {"flips/seen": 2, "flips/unseen": 1}
    assert all(r["agreement"] == 1.0 and not any(k.startswith("nf_") for k in r) for r in results.values())
