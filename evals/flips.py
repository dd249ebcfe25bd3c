"""The ``flips`` suite: a candidate model against a reference (old) model on the same questions.

A negative flip is a question the reference answers right and the candidate wrong; a positive flip the reverse.
Flip rates after MUSCLE (arXiv 2407.09435; METHODS.md §3.2): by exact match, and by a similarity S = ROUGE-L recall
of the generated answer against the gold completion. How bad a negative flip is follows the mistake-severity idea
of "Making Better Mistakes" (arXiv 1912.09393): a wrong answer of the gold answer's type, close to it in the
knowledge graph, is a milder mistake than a far or non-entity one.

Two kinds of split:

* generative (the usual one): each model's greedy answer (``GENERATION``), right when it matches the gold completion
  exactly; metrics: exact match, the flip rates, the ROUGE-L similarity flips (``rouge_*``) and the severity
  (``nf_*``) of the negative flips.
* multiple-choice (a split with the columns ``choices``, a list of continuations of ``prompt``, and ``gold``, the index
  of the right one): scored, not generated, as lm-evaluation-harness's ``acc``: each model's choice is the one of
  highest log-likelihood (the sum of its token log-probs after the prompt; the first on ties), right when it is the
  gold one. Metrics: exact match (= accuracy), the flip rates by the chosen option's text and the severity of the
  negative flips; no ``rouge_*`` (MUSCLE scores similarity flips for generative tasks only).

The two kinds carry the same metric names, so callers read them alike; each sample says its split's ``kind``.
Mistake severity needs the testbed's knowledge graph (its ``seen`` / ``unseen`` splits with the fact columns,
``graph_splits``) and the split's ``entity``, ``answer`` and ``answer_type``; other data gets no ``nf_*``.
"""

from __future__ import annotations

import numpy as np
from datasets import DatasetDict

from posttrain.core.errors import UsageError
from posttrain.core.phrases import ANSWER_STOP
from posttrain.evals import metrics
from posttrain.evals.common import first_rows, golds, greedy_answers

VERSION = 4  # 4: the match rule and aliases; 3: multiple-choice splits (choices, gold) scored by log-likelihood;
# 2: stop sequences
GENERATION = {"n": 1, "temperature": 0.0}  # the generative splits' (multiple-choice splits are scored)
HIGHER_IS_BETTER = {"candidate_exact_match": True, "reference_exact_match": True, "negative_flip_rate": False,
                    "positive_flip_rate": True, "inconsistency_flip_rate": False, "agreement": None,
                    "rouge_positive_flip_rate": True, "rouge_negative_flip_rate": False, "rouge_mean_gain": True,
                    "rouge_mean_regression": False, "nf_same_type": True, "nf_not_entity": False,
                    "nf_graph_distance": False, "nf_unreachable": False}
COLUMNS = ("prompt",)  # and a generative split's completion, or a multiple-choice split's choices and gold
SEVERITY_COLUMNS = ("entity", "answer", "answer_type")  # the testbed's: mistake severity needs the graph
GRAPH_SPLITS = ("seen", "unseen")  # the QA splits whose facts make the knowledge graph
FACT_COLUMNS = ("fact_id", "entity", "entity_type", "answer", "answer_type")


def graph_splits(dd: DatasetDict) -> list[str]:
    """The testbed's QA splits present with the fact columns: a user's own split named ``seen`` or ``unseen``
    (prompt and completion only) holds no graph, and the suite then reports no mistake severity."""
    return [s for s in GRAPH_SPLITS if s in dd and set(FACT_COLUMNS) <= set(dd[s].column_names)]


def _facts(dd: DatasetDict) -> list[dict]:
    """The fact rows (``FACT_COLUMNS``) of the QA splits (``graph_splits``), one per fact_id."""
    facts = {}
    for s in graph_splits(dd):
        for row in dd[s].select_columns(list(FACT_COLUMNS)):
            facts.setdefault(row["fact_id"], row)
    return list(facts.values())


def entity_types(dd: DatasetDict) -> dict[str, str]:
    """Entity name -> type, from the (entity, entity_type) and (answer, answer_type) columns of the QA splits."""
    types = {}
    for f in _facts(dd):
        types[f["entity"]] = f["entity_type"]
        types[f["answer"]] = f["answer_type"]
    return types


def graph_distances(dd: DatasetDict) -> tuple[dict[str, int], np.ndarray]:
    """The knowledge graph's entity index and all-pairs shortest-path lengths (in edges): the graph is undirected,
    one edge entity — answer per fact of the QA splits; ``inf`` where no path joins two entities
    (``scipy.sparse.csgraph.shortest_path``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    facts = _facts(dd)
    index = {e: i for i, e in enumerate(sorted({x for f in facts for x in (f["entity"], f["answer"])}))}
    rows = [index[f["entity"]] for f in facts]
    cols = [index[f["answer"]] for f in facts]
    graph = coo_matrix((np.ones(len(facts)), (rows, cols)), shape=(len(index), len(index))).tocsr()
    return index, shortest_path(graph, directed=False, unweighted=True)


def named_entity(answer: str, subject: str, types: dict[str, str]) -> str | None:
    """The entity an answer names: the last token of the answer (its '.' dropped) that is a known entity
    name other than the question's subject (a long-form answer repeats it: "P1 was born in C5 ." names C5; a
    refusal "I do not know about P1 ." names none); None when it names none."""
    named = [t for t in answer.rstrip(".").split() if t in types and t != subject]
    return named[-1] if named else None


def severity(answers: list[str], subjects: list[str], golds: list[str], gold_types: list[str],
             types: dict[str, str], index: dict[str, int], dist: np.ndarray) -> tuple[dict, list[dict]]:
    """Mistake severity of wrong answers (the negative flips), with e_i = named_entity(answer_i) and g_i the gold
    answer: nf_same_type = mean 1[type(e_i) = type(g_i)]; nf_not_entity = mean 1[e_i is None];
    over the answers naming an entity, nf_graph_distance = mean of the finite d(e_i, g_i) (shortest path in the
    graph) and nf_unreachable = mean 1[d(e_i, g_i) = inf]; returned as the per-answer values each mean averages.
    Also per answer: named_entity, same_type and graph_distance (None when it names no entity or no path leads to
    the gold answer)."""
    per = []
    for a, s, g, gt in zip(answers, subjects, golds, gold_types):
        e = named_entity(a, s, types)
        d = float(dist[index[e], index[g]]) if e is not None and g in index else float("inf")
        per.append({"named_entity": e, "same_type": e is not None and types[e] == gt,
                    "graph_distance": None if e is None or np.isinf(d) else int(d)})
    named = [p for p in per if p["named_entity"] is not None]
    return {"nf_same_type": [p["same_type"] for p in per],
            "nf_not_entity": [p["named_entity"] is None for p in per],
            "nf_graph_distance": [p["graph_distance"] for p in named if p["graph_distance"] is not None],
            "nf_unreachable": [p["graph_distance"] is None for p in named]}, per


def is_multiple_choice(ds) -> bool:
    """A split with a ``choices`` column is multiple-choice."""
    return "choices" in ds.column_names


def check_choices(dd: DatasetDict, splits: list[str]) -> None:
    """Every multiple-choice split needs a ``gold`` column and, per row, at least 2 choices and a gold index among
    them; else a one-line ``UsageError`` naming the split."""
    for s in splits:
        if "gold" not in dd[s].column_names:
            raise UsageError(f"split {s!r} has a choices column but no gold column (the index of the right choice)")
        for i, (choices, gold) in enumerate(zip(dd[s]["choices"], dd[s]["gold"])):
            if not isinstance(choices, list) or len(choices) < 2:
                raise UsageError(f"split {s!r}, row {i}: choices must be a list of at least 2 continuations")
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise UsageError(f"split {s!r}, row {i}: gold {gold!r} is not an index of its {len(choices)} "
                                 "choices")


def choice_answers(engine, dd: DatasetDict, splits: list[str], limit: int | None = None) -> dict:
    """Split -> (its first ``limit`` rows, the index of each row's chosen continuation, the log-likelihoods of
    each row's choices). The log-likelihood of a choice is the sum of its token log-probs after the prompt; the
    chosen one is its argmax, the first on ties (lm-eval's ``acc``). All splits' (prompt, choice) pairs in one
    engine.score call."""
    rows = first_rows(dd, splits, limit)
    pairs = [(p, c) for s in splits for p, cs in zip(rows[s]["prompt"], rows[s]["choices"]) for c in cs]
    logprobs = iter(engine.score([p for p, _ in pairs], [c for _, c in pairs]) if pairs else [])
    out = {}
    for s in splits:
        lls = [[float(sum(next(logprobs))) for _ in cs] for cs in rows[s]["choices"]]
        out[s] = (rows[s], [int(np.argmax(ll)) for ll in lls], lls)
    return out


def evaluate(engine, dd: DatasetDict, splits: list[str], limit: int | None = None, max_tokens: int = 24,
             stop=ANSWER_STOP, reference=None, match: str = "exact") -> tuple[dict, list[dict]]:
    """Per split: ``n``, both models' exact match (generative splits: under the ``match`` rule against the completion,
    ``answer`` and ``aliases``), the means of ``metrics.flip_items`` (by exact match) and the
    mistake severity (``nf_*``) of the negative flips; generative splits also ``rouge_*`` = the means of
    ``metrics.similarity_flip_items`` with S = ROUGE-L recall of the answer against the gold completion.
    Multiple-choice splits (``choices`` and ``gold`` columns) are scored, not generated: a model's answer is its
    highest-log-likelihood choice (``choice_answers``), right when it is the gold one; no ``rouge_*`` for them.
    One sample per question, with its split's ``kind`` (multiple-choice samples add both models' chosen indices and
    per-choice log-likelihoods). Each model answers all generative splits in one engine.generate call and all
    multiple-choice splits in one engine.score call. Every rate carries a ``_stderr`` (sample standard error over
    the questions it averages). Bad multiple-choice splits raise ``UsageError`` before any engine call."""
    if reference is None:
        raise UsageError("the flips suite needs --reference RUN")
    mc = [s for s in splits if is_multiple_choice(dd[s])]
    check_choices(dd, mc)
    gen = [s for s in splits if s not in mc]
    for s in gen:
        if "completion" not in dd[s].column_names:
            raise UsageError(f"split {s!r} has neither a completion column (generative) nor choices and gold "
                             "(multiple-choice)")
    graph = (entity_types(dd), *graph_distances(dd)) if graph_splits(dd) else None
    answered = {}
    if gen:
        cand = greedy_answers(engine, dd, gen, limit, max_tokens, stop)
        ref = greedy_answers(reference, dd, gen, limit, max_tokens, stop)
        answered.update({s: (cand[s][0], cand[s][1], ref[s][1]) for s in gen})
    if mc:
        picks, ref_picks = choice_answers(engine, dd, mc, limit), choice_answers(reference, dd, mc, limit)
        answered.update({s: (picks[s], ref_picks[s]) for s in mc})
    results, samples = {}, []
    for s in splits:
        if s in mc:
            (ds, pred, ll), (_, ref_pred, ref_ll) = answered[s]
            choices = list(ds["choices"])
            gold = [c[g] for c, g in zip(choices, ds["gold"])]
            answers, ref_answers = ([c[i] for c, i in zip(choices, p)] for p in (pred, ref_pred))
            cc, rc = ([i == g for i, g in zip(p, ds["gold"])] for p in (pred, ref_pred))
            similarity = {}
            extra = [{"kind": "multiple_choice", "choice": p, "reference_choice": r, "loglikelihoods": lc,
                      "reference_loglikelihoods": lr} for p, r, lc, lr in zip(pred, ref_pred, ll, ref_ll)]
        else:
            ds, answers, ref_answers = answered[s]
            gold, accepted = list(ds["completion"]), golds(ds)
            cc, rc = ([metrics.is_correct(a, g, match) for a, g in zip(ans, accepted)]
                      for ans in (answers, ref_answers))
            sim = [[metrics.rouge_l_recall(a, g) for a, g in zip(ans, gold)] for ans in (ref_answers, answers)]
            similarity = {f"rouge_{k}": v for k, v in metrics.similarity_flip_items(*sim).items()}
            extra = [{"kind": "generative"}] * len(ds)
        flips = ["negative" if r and not c else "positive" if c and not r else None for r, c in zip(rc, cc)]
        neg = [i for i, f in enumerate(flips) if f == "negative"]
        sev, per = {}, []
        if graph is not None and set(SEVERITY_COLUMNS) <= set(ds.column_names):
            columns = (answers, *(list(ds[c]) for c in SEVERITY_COLUMNS))
            sev, per = severity(*([col[i] for i in neg] for col in columns), *graph)
        items = {"candidate_exact_match": cc, "reference_exact_match": rc,
                 **metrics.flip_items(rc, cc, ref_answers, answers), **similarity, **sev}
        results[s] = {"n": len(ds)}
        for name, values in items.items():
            results[s].update(metrics.mean_with_stderr(name, values))
        severity_of = dict(zip(neg, per))
        for i, row in enumerate(ds):
            samples.append({"split": s, "doc_id": i, "prompt": row["prompt"], "target": gold[i],
                            "response": answers[i], "reference_response": ref_answers[i], "exact_match": cc[i],
                            "reference_exact_match": rc[i], "flip": flips[i], **extra[i],
                            **severity_of.get(i, {})})
    return results, samples
