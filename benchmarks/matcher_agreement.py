"""posttrain's answer matcher against lm-evaluation-harness's on the same greedy answers, item by item.

    python3 -m venv /work/lmeval-venv && /work/lmeval-venv/bin/pip install "lm-eval>=0.4,<0.5"
    python benchmarks/matcher_agreement.py --samples /tmp/ev_cap/samples.jsonl \
        --lmeval_python /work/lmeval-venv/bin/python [--suite qa]

Reads the ``--suite`` rows of a `posttrain eval` samples.jsonl (``response`` = the model's generation, ``target`` =
the gold, ``aliases`` if a row has them; golds = [target, *aliases]) and judges every response twice per rule:

- posttrain: ``posttrain.core.answers.is_correct(response, golds, match)``, match ``exact`` (lower-cased,
  whitespace-collapsed equality) and ``contains`` (the words() of a gold — accents folded, lower-cased, every
  punctuation character a space — as a contiguous run of the response's words).
- lm-eval (run in ``--lmeval_python``, a separate venv, so posttrain's needs no lm-eval), its own functions:
  ``exact``: ``lm_eval.api.metrics.exact_match_hf_evaluate`` (the ``exact_match`` metric) with ``ignore_case=True,
  ignore_punctuation=True`` on the raw response, golds as a task's multiple targets (``ConfigurableTask`` with
  multiple_target: predictions=[response]*len(golds), references=golds, correct when the mean > 0) — triviaqa's
  metric config. ``contains`` (lm-eval has no contains metric): the filter pipeline a task YAML would write,
  ``filter: [{function: regex, regex_pattern: "(?i)\\b(alias1|alias2)\\b", group_select: 0}, {function:
  take_first}]`` — ``lm_eval.filters.extraction.RegexFilter`` (default fallback "[invalid]"), one per item since
  the pattern is that item's golds, each ``re.escape``d, longest first — then the same exact_match against the golds.

Prints n, each side's accuracy, the items agreeing and every disagreeing item, then a few constructed probes (not in
the RESULT) that show where the two rules part, and ends with
``RESULT n=.. exact_agree=.. contains_agree=.. posttrain_contains=.. lmeval_regex=..`` (accuracies as fractions).

Where and why they differ (the probes show each; on SmolLM2-135M-Instruct's 86 capital answers none of these occur,
so the two agree on every item):
- exact: lm-eval deletes ASCII punctuation (string.punctuation) before comparing, posttrain keeps it, so "Paris."
  is right for lm-eval, wrong for posttrain; posttrain collapses runs of whitespace, lm-eval does not ("New  Delhi",
  and the contains regex does not either).
  On sentence answers ("The capital of China is Beijing.") both say wrong: neither extracts an answer.
- contains, accents: posttrain folds them ("Bogotá" contains "Bogota", "Sao Tome" contains "São Tomé"); the regex
  matches characters as written ("á" is not "a"), so no match.
- contains, punctuation inside names: posttrain reads every punctuation mark as a word break on both sides, so
  "Port au Prince" contains "Port-au-Prince"; the escaped regex wants the hyphens. A gold that ends in punctuation
  ("Washington, D.C.") can never match \\b...\\b (the closing \\b after "." needs a word character next), so lm-eval
  says wrong even for "Washington, D.C." itself. A gold "Washington" is found in "Washington, D.C." by both.
- Neither finds "Sanaa" in "Sana'a": posttrain reads it as the words "sana a", the regex as written; an alias fixes
  it for both. Wrong answers and spelling variants ("Kiev" for Kyiv) are wrong for both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from posttrain.core.answers import is_correct

# Run by --lmeval_python: reads [{"response", "golds"}] on stdin, writes [{"exact", "regex", "extracted"}].
LMEVAL_JUDGE = r'''
import json, re, sys
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.filters.extraction import RegexFilter
from lm_eval.filters.selection import TakeFirstFilter

EM = dict(ignore_case=True, ignore_punctuation=True)

def em(prediction, golds):  # ConfigurableTask.process_results, multiple_target, metric exact_match
    scores = exact_match_hf_evaluate(predictions=[prediction] * len(golds), references=golds, **EM)
    return float(scores["exact_match"]) > 0

out = []
for item in json.load(sys.stdin):
    golds = [g for g in item["golds"] if g.strip()]
    pattern = r"(?i)\b(" + "|".join(re.escape(g) for g in sorted(golds, key=len, reverse=True)) + r")\b"
    filtered = RegexFilter(regex_pattern=pattern, group_select=0).apply([[item["response"]]], [{}])
    extracted = list(TakeFirstFilter().apply(filtered, [{}]))[0]
    out.append({"exact": em(item["response"], golds), "regex": em(extracted, golds), "extracted": extracted})
json.dump({"version": __import__("importlib.metadata").metadata.version("lm_eval"), "items": out}, sys.stdout)
'''

# (response, gold): constructed to show each difference the docstring names.
PROBES = [("Paris.", "Paris"), ("New  Delhi", "New Delhi"), ("The capital of Colombia is Bogotá.", "Bogota"),
          ("The capital is Sao Tome.", "São Tomé"), ("The capital of Haiti is Port au Prince.", "Port-au-Prince"),
          ("The capital is Washington, D.C.", "Washington, D.C."), ("The capital is Washington, D.C.", "Washington"),
          ("The capital of Yemen is Sana'a.", "Sanaa")]


def lmeval_judge(python: str, items: list[dict]) -> tuple[str, list[dict]]:
    proc = subprocess.run([python, "-c", LMEVAL_JUDGE], input=json.dumps(items), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{python} -c LMEVAL_JUDGE failed:\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout)
    return got["version"], got["items"]


def compare(items: list[dict], lm: list[dict]) -> dict:
    """Per rule: posttrain's and lm-eval's accuracy, the agreeing count, the disagreeing items."""
    report = {}
    for rule, lm_key in (("exact", "exact"), ("contains", "regex")):
        ours = [is_correct(it["response"], it["golds"], rule) for it in items]
        theirs = [j[lm_key] for j in lm]
        diff = [(it, o, t, j["extracted"]) for it, o, t, j in zip(items, ours, theirs, lm) if o != t]
        report[rule] = {"posttrain": sum(ours) / len(items), "lmeval": sum(theirs) / len(items),
                        "agree": len(items) - len(diff), "diff": diff}
    return report


def show(report: dict, n: int) -> None:
    print(f"{'rule':<10}{'n':>4}{'posttrain':>11}{'lm-eval':>9}{'agree':>7}   lm-eval's side")
    for rule, side in (("exact", "exact_match(ignore_case, ignore_punctuation)"),
                       ("contains", "regex (?i)\\b(golds)\\b + take_first + exact_match")):
        r = report[rule]
        print(f"{rule:<10}{n:>4}{r['posttrain']:>11.3f}{r['lmeval']:>9.3f}{r['agree']:>4}/{n:<3}  {side}")
    for rule in ("exact", "contains"):
        for it, ours, theirs, extracted in report[rule]["diff"]:
            print(f"  {rule} differs: response={it['response']!r} golds={it['golds']} posttrain={ours} "
                  f"lmeval={theirs} (regex extracted {extracted!r})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", required=True, help="a posttrain eval samples.jsonl")
    ap.add_argument("--lmeval_python", required=True, help="python of a venv with lm-eval 0.4.x installed")
    ap.add_argument("--suite", default="qa", help="the suite whose rows to read")
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.samples).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("suite") == args.suite]
    if not rows:
        raise SystemExit(f"no {args.suite!r} rows in {args.samples}")
    items = [{"response": r["response"], "golds": [r["target"], *r.get("aliases", [])]} for r in rows]
    probes = [{"response": p, "golds": [g]} for p, g in PROBES]
    version, judged = lmeval_judge(args.lmeval_python, items + probes)
    lm, lm_probes = judged[:len(items)], judged[len(items):]

    print(f"{args.samples}: {len(items)} {args.suite} rows; lm-eval {version} via {args.lmeval_python}")
    report = compare(items, lm)
    show(report, len(items))
    if all("exact_match" in r for r in rows):  # the eval's own verdict: match=contains for a chat model
        same = sum(bool(r["exact_match"]) == is_correct(it["response"], it["golds"], "contains")
                   for r, it in zip(rows, items))
        print(f"  (the samples' stored exact_match field, the eval's verdict, agrees with posttrain contains on "
              f"{same}/{len(items)})")

    print("\nconstructed probes (not in RESULT):")
    for (p, g), j in zip(PROBES, lm_probes):
        print(f"  response={p!r:<42} gold={g!r:<19} exact: posttrain={is_correct(p, [g], 'exact')!s:<5} "
              f"lmeval={j['exact']!s:<5} contains: posttrain={is_correct(p, [g], 'contains')!s:<5} "
              f"lmeval_regex={j['regex']!s:<5} (extracted {j['extracted']!r})")

    ex, co = report["exact"], report["contains"]
    print(f"RESULT n={len(items)} exact_agree={ex['agree']} contains_agree={co['agree']} "
          f"posttrain_contains={co['posttrain']:.3f} lmeval_regex={co['lmeval']:.3f}")


if __name__ == "__main__":
    main()
