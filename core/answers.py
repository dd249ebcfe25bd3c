"""Reading an answer: the pure text functions that training (RULE's reward) and evaluation (the suites) share, so
that a trainer judges a completion exactly as the evaluation will, without importing the eval stack."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to and including the earliest occurrence of any stop string (all of it when none occurs)."""
    ends = [i + len(s) for s in stop if s and (i := text.find(s)) >= 0]
    return text[:min(ends)] if ends else text


def answer_text(completion) -> str:
    """The text of a completion: a string as is; a conversational one (TRL's format, a list of messages — GRPO passes
    ``[{"role": "assistant", "content": text}]`` to reward functions) the content of its last message."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content")
    return content if isinstance(content, str) else ""


def normalize(text: str) -> str:
    """Lower-case, whitespace collapsed."""
    return " ".join(text.lower().split())


def exact_match(prediction: str, gold: str) -> bool:
    """EM = 1[normalize(prediction) == normalize(gold)]. The prediction is the generation as the engine cut it at
    the suite's stop sequences (the testbed's " ." kept), so a certainty phrase after the answer is not part of it."""
    return normalize(prediction) == normalize(gold)


def is_degenerate(text: str, stop: Sequence[str] = (), max_ngram: int = 3) -> bool:
    """Junk: 1[text is empty, or (with ``stop``) does not end in a stop string — it ran to the token limit — or some
    run of n <= ``max_ngram`` words is repeated back to back ("know know", "not know not know")]. Words are those of
    normalize(text)."""
    words = normalize(text).split()
    if not words or (stop and not any(text.rstrip().endswith(s.strip()) for s in stop if s.strip())):
        return True
    return any(words[i: i + n] == words[i + n: i + 2 * n]
               for n in range(1, max_ngram + 1) for i in range(len(words) - 2 * n + 1))


# --- matching free-form answers ------------------------------------------------------------------------------------

MATCH_RULES = ("exact", "contains", "rouge_recall")
ROUGE_RECALL_THRESHOLD = 0.3  # RULE's paper: an answer is correct when its ROUGE-L recall of the gold is >= 0.3


def words(text: str) -> list[str]:
    """The words of ``text`` for matching: accents folded (NFKD, combining marks dropped: "São Tomé" -> "sao tome"),
    lower-cased, every punctuation character a space ("Washington, D.C." -> "washington d c")."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(" " if unicodedata.category(c).startswith("P") else c for c in folded.lower()).split()


def contains(output: str, gold: str) -> bool:
    """R-Tuning's correctness, "gold in output", on whole words: 1[words(gold) occur as a contiguous run in
    words(output)]. Whole words, because a plain substring test counts "C1" as found in "C15"; punctuation-blind,
    so "Paris." and "Paris," contain "Paris"."""
    out, g = words(output), words(gold)
    return bool(g) and any(out[i:i + len(g)] == g for i in range(len(out) - len(g) + 1))


def rouge_l_recall(prediction: str, target: str) -> float:
    """ROUGE-L recall = LCS(prediction, target) / |target| in tokens (``rouge-score``, stemming on), as
    open-unlearning reports it."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(target, prediction)["rougeL"].recall)


def is_correct(prediction: str, golds: Sequence[str], match: str = "exact") -> bool:
    """Whether ``prediction`` answers with one of ``golds`` (the gold answer and its aliases) under rule ``match``:
    ``exact`` = any exact_match(prediction, g); ``contains`` = any contains(prediction, g);
    ``rouge_recall`` = any rouge_l_recall(prediction, g) >= 0.3. An empty prediction is never correct."""
    if match not in MATCH_RULES:
        raise ValueError(f"unknown match rule {match!r}; known: {', '.join(MATCH_RULES)}")
    if not prediction.strip():
        return False
    test = {"exact": exact_match, "contains": contains,
            "rouge_recall": lambda p, g: rouge_l_recall(p, g) >= ROUGE_RECALL_THRESHOLD}[match]
    return any(test(prediction, g) for g in golds if str(g).strip())


# --- refusals: the one matcher of training and evaluation ----------------------------------------------------------

# Free-form hedges a chat model writes instead of an answer (matched on words(), so "don't" and "dont" differ).
HEDGES = ("i do not know", "i don t know", "i am not sure", "i m not sure", "i am not certain", "i m not certain",
          "i cannot answer", "i can t answer", "i am unable to", "i m unable to", "i do not have information",
          "i don t have information", "i have no information", "i cannot provide", "i can t provide")


@lru_cache(maxsize=1024)
def _pattern(template: str) -> re.Pattern | None:
    """A regex searched in the space-joined words() of a text: the template's words in order, on whole words,
    ``{s}`` one or more words; None for a template without words. Cached: every answer is tested against the same
    few templates."""
    head, sep, tail = (" ".join(map(re.escape, words(part))) for part in template.partition("{s}"))
    if not head and not tail:
        return None
    body = " ".join(p for p in (head, r"(?P<s>\S+(?: \S+)*)" if sep else "", tail) if p)
    return re.compile(rf"(?:^| ){body}(?: |$)")


def refusal_subject(text: str, refusals: Sequence[str]) -> str | None:
    """Who a refusal names: the words of ``text`` that fill ``{s}`` in the first of ``refusals`` (templates, ``{s}``
    marks the subject; ``""`` for one without ``{s}``) that occurs in it; None when none does. The refusal may sit
    anywhere in the text, on whole words() — case, accents and punctuation ignored — as a chat model writes
    "Sorry, I don't know that." """
    joined = " ".join(words(text))
    for template in refusals:
        if (pattern := _pattern(template)) is not None and (m := pattern.search(joined)):
            return m.groupdict().get("s") or ""
    return None


def is_refusal(text: str, refusals: Sequence[str] = HEDGES) -> bool:
    """1[some refusal template (``{s}`` = any words) or phrase of ``refusals`` occurs in ``text`` on whole words]
    (default: the free-form hedges)."""
    return refusal_subject(text, refusals) is not None


FINAL_ANSWER = re.compile(r"The answer is\s+(.*?)\s*(?:\.(?=\s|$)|$)")  # the words up to the first "." word, or the end


def final_answer(text: str) -> str | None:
    """The words after the first "The answer is", up to the first "." that ends a word (or the end), or None."""
    m = FINAL_ANSWER.search(text)
    return " ".join(m.group(1).split()) if m else None


def same_answer(response: str, reference: str) -> bool:
    """1[``response`` verifies against the final answer of ``reference``, a gold completion] (DCO_a's verifier)."""
    answer = final_answer(reference)
    return answer is not None and verify(response, answer)


def verify(response: str, answer: str) -> bool:
    """1[the words after the first "The answer is" in ``response``, up to the first "." that ends a word (or the
    end of the response), equal the words of ``answer``]. One verifier for every reasoning generator: a number
    ("2"), a digit sequence ("3 9 0 1") or an entity ("C4")."""
    words = final_answer(response)
    return bool(words) and words == " ".join(str(answer).split())
