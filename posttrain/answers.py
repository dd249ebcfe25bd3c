"""Reading an answer: the pure text functions that training (RULE's reward) and evaluation (the suites) share, so
that a trainer judges a completion exactly as the evaluation will, without importing the eval stack."""

from __future__ import annotations

from collections.abc import Sequence


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to and including the earliest occurrence of any stop string (all of it when none occurs)."""
    ends = [i + len(s) for s in stop if s and (i := text.find(s)) >= 0]
    return text[:min(ends)] if ends else text


def normalize(text: str) -> str:
    """Lower-case, whitespace collapsed."""
    return " ".join(text.lower().split())


def exact_match(prediction: str, gold: str) -> bool:
    """EM = 1[normalize(prediction) == normalize(gold)]. The prediction is the generation as the engine cut it at
    the suite's stop sequences (the testbed's " ." kept), so a certainty phrase after the answer is not part of it."""
    return normalize(prediction) == normalize(gold)


def refusal_subject(text: str, templates: Sequence[str]) -> str | None:
    """Who a well-formed refusal names: for the first template T (``{s}`` marks the subject) with
    normalize(text) == normalize(T) once ``{s}`` is read as one or more words, those words (``""`` for a template
    without ``{s}``); None when no template matches in full. A full match, not a search: "I do not know not know"
    and "I Question: ." are no refusals (partial phrases are how a loose check gets gamed, METHODS.md §2.4)."""
    t = normalize(text)
    for template in templates:
        head, sep, tail = normalize(template).partition("{s}")
        if not sep:
            if t == head:
                return ""
            continue
        if t.startswith(head) and t.endswith(tail) and len(t) > len(head) + len(tail):
            subject = t[len(head): len(t) - len(tail)].strip()
            if subject:
                return subject
    return None


def is_degenerate(text: str, stop: Sequence[str] = (), max_ngram: int = 3) -> bool:
    """Junk: 1[text is empty, or (with ``stop``) does not end in a stop string — it ran to the token limit — or some
    run of n <= ``max_ngram`` words is repeated back to back ("know know", "not know not know")]. Words are those of
    normalize(text)."""
    words = normalize(text).split()
    if not words or (stop and not any(text.rstrip().endswith(s.strip()) for s in stop if s.strip())):
        return True
    return any(words[i: i + n] == words[i + n: i + 2 * n]
               for n in range(1, max_ngram + 1) for i in range(len(words) - 2 * n + 1))
