import itertools
import json
import math
import re

import pytest
from datasets import Dataset, DatasetDict, load_from_disk

from conftest import TINY_MODEL, posttrain
from posttrain.core.errors import UsageError
from posttrain.data_gen import reasoning
from posttrain.evals import reasoning as suite
from posttrain.gen import fingerprint

SMALL = dict(n_train=300, n_test=60)
APPLY = {"add": lambda x, b: x + b, "minus": lambda x, b: x - b, "times": lambda x, b: x * b}
SYMBOL = {"add": "+", "minus": "-", "times": "*"}


def small(**kw):
    return reasoning.generate(reasoning.Config(**{**SMALL, **kw}))


def recompute(prompt: str) -> tuple[int, int, list[tuple[str, int]]]:
    """(answer, modulus, operations) from the prompt's words alone: the whole expression, reduced once at the end."""
    m = re.fullmatch(r"Question: start at (\d+) , (.*) , mod (\d+) \. Answer:", prompt)
    ops = [(op, int(b)) for op, b in (clause.split() for clause in m.group(2).split(" , "))]
    x = int(m.group(1))
    for op, b in ops:
        x = APPLY[op](x, b)
    return x % int(m.group(3)), int(m.group(3)), ops


@pytest.mark.parametrize("kw", [{}, dict(modulus=11, min_steps=1, max_steps=4, min_operand=0, max_operand=9)])
def test_completions_are_correct_worked_solutions(kw):
    dd = small(**kw)
    for row in (r for s in ("train", "test") for r in dd[s]):
        answer, modulus, ops = recompute(row["prompt"])
        assert row["answer"] == str(answer) and row["steps"] == len(ops)
        assert reasoning.verify(row["completion"], row["answer"])
        *steps, final = row["completion"].strip().split(" . ")
        assert final == f"The answer is {answer} ." and len(steps) == len(ops)
        x = int(row["prompt"].split()[3])
        for step, (op, b) in zip(steps, ops):
            a, sym, b2, _, r, _, m, _, y = step.split()
            assert (int(a), sym, int(b2), int(m)) == (x, SYMBOL[op], b, modulus)
            assert int(r) == APPLY[op](x, b) and int(y) == int(r) % modulus
            x = int(y)


def test_splits_disjoint_and_seeded():
    dd = small(seed=3)
    assert (len(dd["train"]), len(dd["test"])) == (300, 60)
    assert not set(dd["train"]["prompt"]) & set(dd["test"]["prompt"])
    assert len(set(dd["train"]["prompt"])) == 300
    assert fingerprint(dd) == fingerprint(small(seed=3))
    assert fingerprint(dd) != fingerprint(small(seed=4))
    assert {r["steps"] for r in dd["train"]} == {2, 3}


def test_config_rejects_impossible_problem_counts():
    with pytest.raises(ValueError, match="distinct problems"):
        reasoning.Config(modulus=2, min_steps=1, max_steps=1, max_operand=1, n_train=5, n_test=2)
    dd = reasoning.generate(reasoning.Config(modulus=2, min_steps=1, max_steps=1, max_operand=2, n_train=9,
                                             n_test=3))  # exactly all 2 * 3 * 2 = 12 problems
    assert len(set(dd["train"]["prompt"]) | set(dd["test"]["prompt"])) == 12


def test_verifier():
    good = " 3 + 5 = 8 mod 7 = 1 . The answer is 1 ."
    assert reasoning.verify(good, "1") and reasoning.verify("The answer is 1", "1")
    assert not reasoning.verify(good, "2")
    assert not reasoning.verify("3 + 5 = 8 mod 7 = 1 .", "1")  # no final answer
    assert not reasoning.verify("", "1") and not reasoning.verify("The answer is", "1")
    assert not reasoning.verify("The answer is 2 . The answer is 1 .", "1")  # the first answer counts
    assert not reasoning.verify("The answer is 12 .", "1")
    # digit sequences: every digit, and the "." that ends them
    assert reasoning.verify("The answer is 3 9 0 1 . more", "3 9 0 1")
    assert reasoning.verify("The answer is 3 9 0 1.", "3 9 0 1")
    assert not reasoning.verify("The answer is 3 9 0 .", "3 9 0 1")
    assert not reasoning.verify("The answer is 3 9 0 1 2 .", "3 9 0 1")
    assert reasoning.same_answer("The answer is 4 .", " 1 + 3 = 4 . The answer is 4 .")
    assert not reasoning.same_answer("The answer is 4 .", " 1 + 3 = 4 .")  # a reference without an answer


@pytest.mark.parametrize("digits", [(2, 2), (3, 1), (1, 3)])
def test_multiplication_is_correct_long_multiplication(digits):
    da, db = digits
    dd = reasoning.generate(reasoning.Config(task="multiply", digits_a=da, digits_b=db, n_train=40, n_valid=5,
                                             n_test=5))
    assert {k: len(v) for k, v in dd.items()} == {"train": 40, "valid": 5, "test": 5}
    assert len({p for s in dd.values() for p in s["prompt"]}) == 50
    for row in (r for s in dd.values() for r in s):
        m = re.fullmatch(r"Question: ([\d ]+) \* ([\d ]+) = \? Answer:", row["prompt"])
        a, b = (int(g.replace(" ", "")) for g in m.groups())
        assert (len(str(a)), len(str(b))) == digits and row["answer"] == " ".join(str(a * b))
        assert reasoning.verify(row["completion"], row["answer"])
        assert not reasoning.verify(row["completion"], " ".join(str(a * b + 1)))
        *steps, final = row["completion"].strip().split(" . ")
        assert final == f"The answer is {row['answer']} ." and len(steps) == row["steps"] == 2 * db - 1
        for i, step in enumerate(steps[:db]):  # a * (digit i of b, shifted) = its partial product
            left, product = step.split(" = ")
            x, y = (int(t.replace(" ", "")) for t in left.split(" * "))
            assert x == a and y == int(str(b)[::-1][i]) * 10 ** i and int(product.replace(" ", "")) == x * y
        total = 0
        for step in steps[db:]:  # running sums end at a * b
            left, s = step.split(" = ")
            total = sum(int(t.replace(" ", "")) for t in left.split(" + "))
            assert int(s.replace(" ", "")) == total
        assert db == 1 or total == a * b


def test_direct_form_is_the_answer_alone():
    for task in reasoning.TASKS:
        cot = reasoning.generate(reasoning.Config(task=task, n_train=20, n_test=5))
        direct = reasoning.generate(reasoning.Config(task=task, form="direct", n_train=20, n_test=5))
        assert cot["test"]["prompt"] == direct["test"]["prompt"] and cot["test"]["answer"] == direct["test"]["answer"]
        assert all(r["completion"] == f" The answer is {r['answer']} ." for r in direct["test"])
    assert reasoning.n_problems(reasoning.Config(task="multiply", n_train=1)) == 90 * 90
    with pytest.raises(ValueError, match="exceeds the 81"):
        reasoning.Config(task="multiply", digits_a=1, digits_b=1, n_train=80, n_test=2)
    for bad, match in ((dict(task="divide"), "task must be"), (dict(form="long"), "form must be"),
                       (dict(digits_a=0), "digits_a"), (dict(n_valid=-1), "n_valid")):
        with pytest.raises(ValueError, match=match):
            reasoning.Config(**bad)


class FakeEngine:
    """Hand-set samples per prompt; records its calls."""

    def __init__(self, responses: dict[str, list[str]]):
        self.responses, self.calls = responses, []

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, seed=0, adapter=None, stop=()):
        self.calls.append((list(prompts), n, temperature))
        return [self.responses[p][:n] for p in prompts]


def test_pass_at_k_matches_brute_force_over_k_subsets():
    right, wrong = "The answer is 1 .", "The answer is 2 ."
    patterns = {"a": [1, 0, 0, 1, 0], "b": [0, 0, 0, 0, 0], "c": [1, 1, 1, 1, 1], "d": [0, 0, 0, 0, 1],
                "e": [0, 1, 0, 0, 0]}
    splits = {"x": ["a", "b", "c"], "y": ["d", "e"]}
    dd = DatasetDict({s: Dataset.from_list([{"prompt": p, "answer": "1"} for p in ps]) for s, ps in splits.items()})
    engine = FakeEngine({p: [right if c else wrong for c in bits] for p, bits in patterns.items()})
    results, samples = suite.evaluate(engine, dd, ["x", "y"], n=5, temperature=0.5)
    assert engine.calls == [(["a", "b", "c", "d", "e"], 5, 0.5)]  # one call over all splits
    for s, ps in splits.items():
        r = results[s]
        assert (r["n"], r["samples_per_problem"]) == (len(ps), 5)
        assert r["mean_correct"] == pytest.approx(sum(sum(patterns[p]) for p in ps) / (5 * len(ps)))
        for k in range(1, 6):
            brute = [sum(any(sub) for sub in itertools.combinations(patterns[p], k)) / math.comb(5, k) for p in ps]
            assert r[f"pass@{k}"] == pytest.approx(sum(brute) / len(ps))
        curve = [r[f"pass@{k}"] for k in range(1, 6)]
        assert curve == sorted(curve) and "pass@6" not in r
    assert [(x["split"], x["doc_id"], x["n_correct"]) for x in samples] == [
        ("x", 0, 2), ("x", 1, 0), ("x", 2, 5), ("y", 0, 1), ("y", 1, 1)]
    assert samples[0]["correct"] == [True, False, False, True, False] and samples[0]["target"] == "1"
    json.dumps([results, samples])
    # a verifier of the gold completion (DCO's): here the completion says 2, so the "wrong" samples are right
    dd = DatasetDict({"y": dd["y"].add_column("completion", [" The answer is 2 ."] * 2)})
    flipped = suite.evaluate(engine, dd, ["y"], n=5, verifier="posttrain.core.answers:same_answer")[0]
    assert flipped["y"]["mean_correct"] == pytest.approx(8 / 10)
    with pytest.raises(UsageError, match="not an importable"):
        suite.evaluate(engine, dd, ["y"], n=5, verifier="nowhere:f")


def test_a_dco_runs_verifier_reaches_the_reasoning_suite(tmp_path):
    from posttrain.evals.targets import Target
    from posttrain.evaluate import trained_settings

    from posttrain.trainers.dco import DCOConfig

    config = DCOConfig(output_dir=str(tmp_path / "out"), report_to="none", verifier="pkg.mod:check")
    (tmp_path / "run.json").write_text(json.dumps({"eval_settings": config.eval_settings()}))
    assert trained_settings(Target(str(tmp_path)))["verifier"] == "pkg.mod:check"


@pytest.mark.slow
def test_gen_train_and_evaluate_end_to_end(tmp_path):
    from posttrain.evals.hf_engine import HFEngine
    from posttrain.train import train

    data = tmp_path / "reasoning"
    posttrain("gen", "reasoning", "--out", data, "--seed", "2", "--n_train", "200", "--n_test", "20", check=True)
    manifest = json.loads((data / "manifest.json").read_text())
    dd = load_from_disk(str(data))
    assert manifest["generator"] == "reasoning" and manifest["fingerprint"] == fingerprint(dd)
    assert manifest["num_rows"] == {"train": 200, "test": 20}
    run = train("recipes/testbed/reasoning.yaml", ["--dataset_path", str(data), "--output_dir", str(tmp_path / "m"),
                                                   *TINY_MODEL, "--max_steps", "5"])
    results, samples = suite.evaluate(HFEngine(str(run)), dd, ["train", "test"], limit=6, n=4, max_tokens=40)
    for s in ("train", "test"):
        curve = [results[s][f"pass@{k}"] for k in range(1, 5)]
        assert results[s]["n"] == 6 and all(0.0 <= p <= 1.0 for p in curve) and curve == sorted(curve)
    assert len(samples) == 12 and all(len(x["responses"]) == 4 for x in samples)
