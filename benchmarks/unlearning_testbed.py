"""The forget-retain experiment of issue 13 on the testbed: RULE against GradAscent, GradDiff, NPO, SimNPO and IdkSFT,
each at the settings of a small sweep, over (base model, knowledge graph) pairs.

    python benchmarks/unlearning_testbed.py --pair BASE_RUN=KG_DATA [--pair ...] [--out DIR] [--jobs 2]
                                            [--method rule:--boundary_frac=0.5 ...] [--quick]

The default sweep: RULE at 40 steps with the paper's 8% boundary queries and with 50%, at 200 (the recipe) and 400
steps with 50%, LoRA at 200; each baseline as shipped and at a milder setting. Each --pair is a base model and the graph it was trained on (``benchmarks/testbed_base.py`` makes them; without
--pair the seed-0 testbed is made first). The forget target is the graph's ``forget`` persons (all their seen facts).
Per pair:

* ``posttrain gen boundary --kg_path KG`` (one per RULE data setting): RULE's training queries (12% of the forget
  queries — every forget fact asked with every template — plus synthesised boundary queries) and the evaluation
  splits;
* a retain-only model: the base recipe on the graph's corpus without any row about a forget fact (forget quality's
  reference, TOFU's "retain model");
* every method setting: ``posttrain train`` (RULE: the pipeline ``rule/testbed.yaml``, both stages, a setting's
  training flags going to its GRPO stage, ``--rebo.KEY``; the baselines: ``unlearn/<m>.yaml`` on the graph's forget
  and retain splits), then ``posttrain eval --suite forgetting`` on
  ``forget_heldout`` (forget queries RULE never trained on), ``boundary`` (the graph's, held out of RULE's boundary
  queries), ``retain`` and ``forget`` (for forget quality against the retain-only model and MIA).

Columns, per method setting, mean ± standard error over the pairs (the spread of the pair means; each cell's own
binomial standard error is in the per-run rows): ``forget`` = exact match on the graph's forget questions (one per
forget fact: what the baselines train on), ``forget_ho`` = exact match on the forget queries that no method
trained on (``forget_heldout`` without the graph's own forget questions, which the baselines train on), its refusal,
named-refusal, wrong-answer and junk rates, boundary and retain exact match and their drops from the base model,
forget quality (KS p-value) and MIA AUC on the forget split. A method setting *dominates* RULE when it is at least as
good on forget_ho (lower), boundary and retain (higher) and strictly better on one, beyond both standard errors.
``posttrain report`` draws the forget-vs-retain plot of every run of the first pair (``OUT/report``). Prints which
settings dominate each RULE setting, and ends with
``RESULT rule_forget_acc=.. rule_retain_drop=.. rule_boundary_drop=.. rule_named_refusal=.. rule_junk=..
dominated_by=none|method,...`` for the best RULE setting (lowest forget_ho among those within 3 points of retain,
else the lowest forget_ho).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
from datasets import load_from_disk

SPLITS = ("forget_heldout", "boundary", "retain", "forget")
SWEEP = ("rule:--max_steps=40", "rule:--boundary_frac=0.5,--max_steps=40", "rule:--boundary_frac=0.5",
         "rule:--boundary_frac=0.5,--max_steps=400", "rule_lora:--boundary_frac=0.5", "grad_ascent",
         "grad_ascent:--num_train_epochs=3", "grad_diff", "grad_diff:--learning_rate=3e-5", "npo",
         "npo:--learning_rate=3e-5", "simnpo", "idk_sft")
QUICK = ("rule:--boundary_frac=0.5", "grad_diff", "idk_sft")
RECIPES = {"rule": "rule/testbed.yaml", "rule_lora": "rule/testbed_lora.yaml"}  # the others: unlearn/<method>.yaml
GEN_FLAGS = ("--boundary_frac", "--forget_frac")  # RULE settings that belong to `posttrain gen boundary`


def posttrain(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"posttrain {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")


def flags(setting: str) -> tuple[str, list[str], list[str]]:
    """``method:--k=v,...`` -> (method, generator flags, training flags)."""
    method, _, rest = setting.partition(":")
    pairs = [o.split("=", 1) for o in rest.split(",") if o]
    gen = [x for k, v in pairs if k in GEN_FLAGS for x in (k, v)]
    return method, gen, [x for k, v in pairs if k not in GEN_FLAGS for x in (k, v)]


def slug(setting: str) -> str:
    return setting.replace(":--", "_").replace(",--", "_").replace("=", "")


def retain_only(kg: str, base: str, out: Path) -> Path:
    """The base recipe, seed and graph without the forget facts: its corpus rows about them (answers, statements,
    declines) dropped. The other splits stay, so the word vocabulary is the base model's."""
    if (out / "model" / "run.json").is_file():
        return out / "model"
    dd = load_from_disk(kg)
    forget = set(dd["forget"]["fact_id"])
    dd["corpus"] = dd["corpus"].filter(lambda r: r["fact_id"] not in forget)
    dd.save_to_disk(str(out / "kg"))
    seed = json.loads((Path(base) / "run.json").read_text())["seed"]
    posttrain("train", "testbed/base.yaml", "--dataset_path", out / "kg", "--output_dir", out / "model", "--seed", seed,
              "--overwrite_output_dir", "true")
    return out / "model"


def evaluate(run: Path, data: Path, out: Path, retain_logs: Path | None = None) -> dict:
    if not (out / "results.json").is_file():
        posttrain("eval", run, "--data", data, "--suite", "forgetting", "--splits", ",".join(SPLITS), "--engine", "hf",
                  "--output", out, "--overwrite_output_dir", *(["--retain_logs", retain_logs] if retain_logs else []))
    res = json.loads((out / "results.json").read_text())["results"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    trained_by_all = {s["prompt"] for s in samples if s["split"] == "forget"}  # the graph's forget questions
    held = [s for s in samples if s["split"] == "forget_heldout" and s["prompt"] not in trained_by_all]
    f, fh = res["forgetting/forget"], res["forgetting/forget_heldout"]
    return {"forget": f["exact_match"], "forget_ho": np.mean([s["exact_match"] for s in held]),
            "refusal": fh["refusal_rate"],
            "named": fh["named_refusal_rate"], "wrong": fh["wrong_rate"], "junk": fh["junk_rate"],
            "boundary": res["forgetting/boundary"]["exact_match"], "retain": res["forgetting/retain"]["exact_match"],
            "forget_quality": f["forget_quality"], "mia": f["mia_auc"], "n_ho": len(held)}


def run_pair(k: int, base: str, kg: str, settings: list[str], out: Path) -> dict[str, dict]:
    seed = json.loads((Path(base) / "run.json").read_text())["seed"]
    pair = out / f"pair{k}"
    reference = retain_only(kg, base, pair / "retain-only")
    data_dirs = {}
    for setting in settings:
        gen = tuple(flags(setting)[1])
        if gen not in data_dirs:
            data_dirs[gen] = pair / ("data" + "".join(gen).replace("--", "_"))
            if not (data_dirs[gen] / "dataset_dict.json").is_file():
                posttrain("gen", "boundary", "--kg_path", kg, "--seed", seed, *gen, "--out", data_dirs[gen],
                          "--overwrite_output_dir")
    data = data_dirs[()] if () in data_dirs else next(iter(data_dirs.values()))
    ref_logs = pair / "retain-only" / "eval"
    evaluate(reference, data, ref_logs)
    rows = {"base model": evaluate(Path(base), data, pair / "base-eval", ref_logs)}
    for setting in settings:
        method, gen, train_flags = flags(setting)
        run = pair / slug(setting)
        if not (run / "run.json").is_file():
            if method in RECIPES:  # RULE's settings are its GRPO stage's (rebo); the shared keys reach both
                rebo = [f"--rebo.{x[2:]}" if x.startswith("--") else x for x in train_flags]
                posttrain("train", RECIPES[method], "--model_name_or_path", base, "--dataset_path",
                          data_dirs[tuple(gen)], "--output_dir", run, "--seed", seed, "--overwrite_output_dir", "true",
                          *rebo)
            else:
                posttrain("train", f"unlearn/{method}.yaml", "--model_name_or_path", base, "--dataset_path", kg,
                          "--output_dir", run, "--seed", seed, "--overwrite_output_dir", "true", *train_flags)
        rows[setting] = evaluate(run, data_dirs.get(tuple(gen), data), run / "eval", ref_logs)
        print(f"pair {k}: {setting} done", flush=True)
    return rows


COLUMNS = ("forget", "forget_ho", "refusal", "named", "wrong", "junk", "boundary", "retain", "forget_quality", "mia")
BETTER = {"forget_ho": -1, "boundary": 1, "retain": 1}


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def dominates(a: dict, b: dict) -> bool:
    """a at least as good as b on forget_ho, boundary and retain, and better on one beyond both standard errors."""
    diff = {c: BETTER[c] * (a[c][0] - b[c][0]) for c in BETTER}
    margin = {c: np.nan_to_num(np.hypot(a[c][1], b[c][1])) for c in BETTER}
    return all(diff[c] >= 0 for c in BETTER) and any(diff[c] > margin[c] for c in BETTER)


def fmt(column: str, m: float, s: float | None = None) -> str:
    spec = ".2g" if column == "forget_quality" else ".3f"  # a p-value: its size, not three decimals of it
    return f"{m:{spec}}" if s is None else f"{m:{spec}} ± {s:{spec}}"


def main() -> None:
    start = time.time()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", action="append", default=[], help="BASE_RUN=KG_DATA")
    ap.add_argument("--method", action="append", default=[], help="method[:--key=value,...]")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--jobs", type=int, default=2, help="pairs run at once (each command on one thread)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by every posttrain command: one core per pair
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-unlearning-"))
    pairs = [tuple(p.split("=", 1)) for p in args.pair]
    if not pairs:
        sys.path.insert(0, str(Path(__file__).parent))
        from eval_engines import testbed

        pairs = [testbed(out / "testbed")]
    settings = args.method or list(QUICK if args.quick else SWEEP)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        per_pair = list(pool.map(run_pair, range(len(pairs)), *zip(*pairs), repeat(settings), repeat(out)))
    names = list(per_pair[0])
    print("\n| pair | run | " + " | ".join(COLUMNS) + " |\n|---|---|" + "---|" * len(COLUMNS))
    for k, rows in enumerate(per_pair):
        for name in names:
            print(f"| {k} | {name} | " + " | ".join(fmt(c, rows[name][c]) for c in COLUMNS) + " |")
    table = {n: {c: mean_se([rows[n][c] for rows in per_pair]) for c in COLUMNS} for n in names}
    for n in names[1:]:
        for c in ("boundary", "retain"):
            table[n][c + "_drop"] = mean_se([rows["base model"][c] - rows[n][c] for rows in per_pair])
    print(f"\nmean ± standard error over {len(per_pair)} pair(s) (forget_ho: {per_pair[0]['base model']['n_ho']} "
          "questions in pair 0):\n\n| run | " + " | ".join(COLUMNS) + " | boundary drop | retain drop |\n|---|"
          + "---|" * (len(COLUMNS) + 2))
    for n in names:
        cells = [(c, *table[n][c]) for c in COLUMNS] + [(c, *table[n].get(c, (0.0, 0.0)))
                                                         for c in ("boundary_drop", "retain_drop")]
        print(f"| {n} | " + " | ".join(fmt(*cell) for cell in cells) + " |")
    runs = [str(out / "pair0" / ("base-eval" if n == "base model" else f"{slug(n)}/eval")) for n in names]
    posttrain("report", *runs, "--output", out / "report", "--overwrite_output_dir")
    rules = [n for n in names if n.split(":")[0] in RECIPES]
    if not rules:
        return
    for n in rules:
        by = [m for m in names[1:] if m not in rules and dominates(table[m], table[n])]
        print(f"{n} dominated by: {', '.join(by) or 'none'}")
    ok = [n for n in rules if table[n]["retain_drop"][0] <= 0.03] or rules
    best = min(ok, key=lambda n: table[n]["forget_ho"][0])
    beaten = [n for n in names[1:] if n not in rules and dominates(table[n], table[best])]
    print(f"\nbest RULE setting: {best}; plot and report: {out / 'report'}; {time.time() - start:.0f} s")
    t = table[best]
    print(f"RESULT rule_forget_acc={t['forget_ho'][0]:.3f} rule_retain_drop={t['retain_drop'][0]:.3f} "
          f"rule_boundary_drop={t['boundary_drop'][0]:.3f} rule_named_refusal={t['named'][0]:.3f} "
          f"rule_junk={t['junk'][0]:.3f} dominated_by={','.join(slug(n) for n in beaten) or 'none'}")


if __name__ == "__main__":
    main()
