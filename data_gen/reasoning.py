"""Reasoning testbed: multi-step modular arithmetic with a chain of thought and a verifier (pass@N, DCO).

A problem is a start value x_0 in [0, modulus) and ``steps`` operations (op_i, b_i), op in {add, minus, times},
b_i in [min_operand, max_operand]; its answer is x_steps, where x_i = (x_{i-1} op_i b_i) mod modulus. Every word is
whitespace-separated, so a word-level tokenizer sees each number and operator as one token:

    prompt:      "Question: start at 3 , add 5 , times 2 , mod 7 . Answer:"
    completion:  " 3 + 5 = 8 mod 7 = 1 . 1 * 2 = 2 mod 7 = 2 . The answer is 2 ."

Reducing after every step keeps every number in the chain small (|r| < modulus * (max_operand + 1)), so each step
is one of a small, fixed set of arithmetic facts that the training data covers; the final value equals the whole
expression taken mod ``modulus`` (reduction commutes with +, - and *). Splits ``train`` and ``test`` hold distinct
problems (columns prompt, completion, answer, steps); ``verify`` checks a response's final answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from datasets import Dataset, DatasetDict

OPS = {"add": ("+", lambda x, b: x + b), "minus": ("-", lambda x, b: x - b), "times": ("*", lambda x, b: x * b)}
ANSWER = re.compile(r"The answer is\s+(\S+)")
Problem = tuple[int, tuple[tuple[str, int], ...]]  # (start, ((op, operand), ...))


@dataclass
class Config:
    """Knobs of the modular-arithmetic problems; ``seed`` names a data set."""

    seed: int = 0
    modulus: int = 7
    min_steps: int = 2
    max_steps: int = 3
    min_operand: int = 1
    max_operand: int = 6
    n_train: int = 4000
    n_test: int = 200

    def __post_init__(self):
        if self.modulus < 2:
            raise ValueError(f"modulus must be at least 2, got {self.modulus}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError(f"need 0 <= min_operand <= max_operand, got {self.min_operand} and {self.max_operand}")
        if min(self.n_train, self.n_test) < 1:
            raise ValueError("n_train and n_test must be at least 1")
        if self.n_train + self.n_test > n_problems(self):
            raise ValueError(f"n_train + n_test = {self.n_train + self.n_test} exceeds the {n_problems(self)} "
                             "distinct problems these knobs allow")


def n_problems(cfg: Config) -> int:
    """Distinct problems: modulus * sum_{s=min_steps}^{max_steps} (|OPS| * n_operands)^s."""
    per_step = len(OPS) * (cfg.max_operand - cfg.min_operand + 1)
    return cfg.modulus * sum(per_step ** s for s in range(cfg.min_steps, cfg.max_steps + 1))


def solve(start: int, ops: tuple[tuple[str, int], ...], modulus: int) -> tuple[str, int]:
    """The worked solution (one "x op b = r mod m = y ." sentence per step, then "The answer is y .") and y."""
    x, sentences = start, []
    for op, b in ops:
        symbol, f = OPS[op]
        r = f(x, b)
        sentences.append(f"{x} {symbol} {b} = {r} mod {modulus} = {r % modulus} .")
        x = r % modulus
    return " ".join(sentences + [f"The answer is {x} ."]), x


def _problem(cfg: Config, rng) -> Problem:
    steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
    names = list(OPS)
    return int(rng.integers(cfg.modulus)), tuple(
        (names[int(rng.integers(len(names)))], int(rng.integers(cfg.min_operand, cfg.max_operand + 1)))
        for _ in range(steps))


def _row(cfg: Config, start: int, ops: tuple[tuple[str, int], ...]) -> dict:
    clauses = " , ".join([f"start at {start}", *(f"{op} {b}" for op, b in ops), f"mod {cfg.modulus}"])
    completion, answer = solve(start, ops, cfg.modulus)
    return {"prompt": f"Question: {clauses} . Answer:", "completion": " " + completion, "answer": str(answer),
            "steps": len(ops)}


def generate(cfg: Config) -> DatasetDict:
    rng = np.random.default_rng(cfg.seed)
    problems: dict[Problem, None] = {}  # an insertion-ordered set: distinct problems in the order drawn
    while len(problems) < cfg.n_train + cfg.n_test:
        problems.setdefault(_problem(cfg, rng), None)
    rows = [_row(cfg, start, ops) for start, ops in problems]
    return DatasetDict({"train": Dataset.from_list(rows[: cfg.n_train]),
                        "test": Dataset.from_list(rows[cfg.n_train:])})


def verify(response: str, answer: str) -> bool:
    """1[the word after the first "The answer is" in ``response``, less a trailing ".", equals ``answer``]."""
    m = ANSWER.search(response)
    return m is not None and m.group(1).rstrip(".") == str(answer).strip()
