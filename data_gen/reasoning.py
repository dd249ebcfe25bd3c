"""Reasoning testbed: generated problems with a worked solution (or the answer alone) and a verifier (pass@N, DCO).

Two tasks (``task``), every word whitespace-separated so that a word-level tokenizer sees each number, digit and
operator as one token:

* ``modular``: a start value x_0 in [0, modulus) and ``steps`` operations (op_i, b_i), op in {add, minus, times},
  b_i in [min_operand, max_operand]; the answer is x_steps, where x_i = (x_{i-1} op_i b_i) mod modulus. Reducing
  after every step keeps every number in the chain small, so each step is one of a small, fixed set of arithmetic
  facts; the final value equals the whole expression taken mod ``modulus``. Few answers (``modulus``): pass@N for
  large N is trivial.

      prompt:      "Question: start at 3 , add 5 , times 2 , mod 7 . Answer:"
      completion:  " 3 + 5 = 8 mod 7 = 1 . 1 * 2 = 2 mod 7 = 2 . The answer is 2 ."

* ``multiply``: a ``digits_a``-digit times a ``digits_b``-digit number, numbers written digit by digit, so the
  answer is a sequence of 3-4 digit tokens out of thousands of possible answers (the DCO paper's setting: pass@N
  stays informative up to large N). The worked solution is long multiplication: one partial product per digit of
  the second factor, then their running sum.

      prompt:      "Question: 4 7 * 8 3 = ? Answer:"
      completion:  " 4 7 * 3 = 1 4 1 . 4 7 * 8 0 = 3 7 6 0 . 1 4 1 + 3 7 6 0 = 3 9 0 1 . The answer is 3 9 0 1 ."

``form: direct`` keeps the last sentence only (" The answer is 3 9 0 1 ."): then the answer string is the only
correct completion, and pass@k = 1 - (1 - p)^k exactly, p the model's probability of that completion.
Splits ``train``, ``valid`` (when ``n_valid`` > 0) and ``test`` hold distinct problems (columns prompt,
completion, answer, steps); ``verify`` checks a response's final answer (for every reasoning generator, KG
multi-hop included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset, DatasetDict

# the verifier of every reasoning generator (and DCO's, named "posttrain.data_gen.reasoning:same_answer" by older runs)
from posttrain.core.answers import final_answer, same_answer, verify  # noqa: F401

OPS = {"add": ("+", lambda x, b: x + b), "minus": ("-", lambda x, b: x - b), "times": ("*", lambda x, b: x * b)}
Problem = tuple  # modular: (start, ((op, operand), ...)); multiply: (a, b)
TASKS = ("modular", "multiply")
FORMS = ("cot", "direct")


@dataclass
class Config:
    """Knobs of the problems; ``seed`` names a data set. ``modulus`` .. ``max_operand``: the modular task's;
    ``digits_a``, ``digits_b``: the multiplication task's factor lengths."""

    seed: int = 0
    task: str = "modular"
    form: str = "cot"
    modulus: int = 7
    min_steps: int = 2
    max_steps: int = 3
    min_operand: int = 1
    max_operand: int = 6
    digits_a: int = 2
    digits_b: int = 2
    n_train: int = 4000
    n_valid: int = 0
    n_test: int = 200

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if min(self.digits_a, self.digits_b) < 1:
            raise ValueError(f"digits_a and digits_b must be at least 1, got {self.digits_a} and {self.digits_b}")
        if self.modulus < 2:
            raise ValueError(f"modulus must be at least 2, got {self.modulus}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError(f"need 0 <= min_operand <= max_operand, got {self.min_operand} and {self.max_operand}")
        if min(self.n_train, self.n_test) < 1 or self.n_valid < 0:
            raise ValueError("n_train and n_test must be at least 1, n_valid at least 0")
        total = self.n_train + self.n_valid + self.n_test
        if total > n_problems(self):
            raise ValueError(f"n_train + n_valid + n_test = {total} exceeds the {n_problems(self)} distinct "
                             "problems these knobs allow")


def n_problems(cfg: Config) -> int:
    """Distinct problems. modular: modulus * sum_{s=min_steps}^{max_steps} (|OPS| * n_operands)^s; multiply:
    9·10^(digits_a − 1) · 9·10^(digits_b − 1)."""
    if cfg.task == "multiply":
        return 81 * 10 ** (cfg.digits_a + cfg.digits_b - 2)
    per_step = len(OPS) * (cfg.max_operand - cfg.min_operand + 1)
    return cfg.modulus * sum(per_step ** s for s in range(cfg.min_steps, cfg.max_steps + 1))


def spell(n: int) -> str:
    """A number digit by digit: 3901 -> "3 9 0 1"."""
    return " ".join(str(n))


def multiply(a: int, b: int) -> tuple[str, int]:
    """Long multiplication of a by b (one "a * d0..0 = p ." per digit d of b, then "s + p = s' ." running sums)
    and a·b."""
    partials = [(str(d) + " 0" * i, a * d * 10 ** i) for i, d in enumerate(int(c) for c in reversed(str(b)))]
    sentences = [f"{spell(a)} * {m} = {spell(p)} ." for m, p in partials]
    total = partials[0][1]
    for _, p in partials[1:]:
        sentences.append(f"{spell(total)} + {spell(p)} = {spell(total + p)} .")
        total += p
    return " ".join(sentences + [f"The answer is {spell(total)} ."]), total


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
    if cfg.task == "multiply":
        return tuple(int(rng.integers(10 ** (d - 1), 10 ** d)) for d in (cfg.digits_a, cfg.digits_b))
    steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
    names = list(OPS)
    return int(rng.integers(cfg.modulus)), tuple(
        (names[int(rng.integers(len(names)))], int(rng.integers(cfg.min_operand, cfg.max_operand + 1)))
        for _ in range(steps))


def _row(cfg: Config, problem: Problem) -> dict:
    if cfg.task == "multiply":
        a, b = problem
        prompt, (completion, answer) = f"Question: {spell(a)} * {spell(b)} = ? Answer:", multiply(a, b)
        answer, steps = spell(answer), 2 * len(str(b)) - 1
    else:
        start, ops = problem
        clauses = " , ".join([f"start at {start}", *(f"{op} {b}" for op, b in ops), f"mod {cfg.modulus}"])
        prompt, (completion, answer), steps = f"Question: {clauses} . Answer:", solve(start, ops, cfg.modulus), len(ops)
    if cfg.form == "direct":
        completion = f"The answer is {answer} ."
    return {"prompt": prompt, "completion": " " + completion, "answer": str(answer), "steps": steps}


def generate(cfg: Config) -> DatasetDict:
    rng = np.random.default_rng(cfg.seed)
    problems: dict[Problem, None] = {}  # an insertion-ordered set: distinct problems in the order drawn
    while len(problems) < cfg.n_train + cfg.n_valid + cfg.n_test:
        problems.setdefault(_problem(cfg, rng), None)
    rows = [_row(cfg, p) for p in problems]
    cuts = {"train": (0, cfg.n_train), "valid": (cfg.n_train, cfg.n_train + cfg.n_valid),
            "test": (cfg.n_train + cfg.n_valid, len(rows))}
    return DatasetDict({k: Dataset.from_list(rows[i:j]) for k, (i, j) in cuts.items() if j > i})
