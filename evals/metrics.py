"""Pure metric functions. Each docstring gives the formula."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_REFUSALS = ("i do not know",)
EXPOSURE_BUCKETS = ((0, 0), (1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, None))


def normalize(text: str) -> str:
    """Lower-case, whitespace collapsed."""
    return " ".join(text.lower().split())


def answer_span(text: str) -> str:
    """The answer part of a generation: everything up to and including the first '.' (the testbed's answers end
    there; a certainty phrase may follow)."""
    cut = text.find(".")
    return text if cut < 0 else text[: cut + 1]


def exact_match(prediction: str, gold: str) -> bool:
    """EM = 1[normalize(answer_span(prediction)) == normalize(answer_span(gold))]."""
    return normalize(answer_span(prediction)) == normalize(answer_span(gold))


def is_refusal(text: str, phrases: Sequence[str] = DEFAULT_REFUSALS) -> bool:
    """1[some refusal phrase occurs in normalize(text)]."""
    t = normalize(text)
    return any(normalize(p) in t for p in phrases)


def mean(flags: Sequence[bool | float]) -> float:
    """sum(flags) / len(flags); NaN for no items."""
    return float(np.mean(flags)) if len(flags) else float("nan")


def bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")


def accuracy_by_bucket(values: Sequence[int], correct: Sequence[bool],
                       buckets=EXPOSURE_BUCKETS) -> dict[str, dict[str, float]]:
    """For each bucket [lo, hi] of ``values`` (e.g. exposure counts): n and mean(correct) over its items."""
    v, c = np.asarray(values), np.asarray(correct, dtype=float)
    out = {}
    for lo, hi in buckets:
        m = (v >= lo) & (v <= (hi if hi is not None else np.inf))
        if m.any():
            out[bucket_label(lo, hi)] = {"n": int(m.sum()), "accuracy": float(c[m].mean())}
    return out
