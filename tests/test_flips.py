from collections import deque

import pytest
from datasets import load_from_disk

from posttrain.errors import UsageError
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
