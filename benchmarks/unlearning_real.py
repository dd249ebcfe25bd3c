"""Unlearning a real model (issue 27): RULE against GradAscent, GradDiff, NPO, SimNPO and IdkSFT on real countries
SmolLM2-135M-Instruct knows (RWKU-style), all with LoRA, over several target sets.

    python benchmarks/unlearning_real.py [--seeds 0 1] [--out runs/bench-unlearning-real] [--sweep] [--relearn 10]
                                         [--methods rule ga ...]

Every step is a user's CLI call:

* once: ``posttrain gen world --candidates true`` and ``posttrain probe`` of the base model on the candidates (every
  country relation x phrasing of the most populous countries);
* per seed (one target set each): ``posttrain gen world --known PROBE --seed S`` (targets drawn among the countries
  whose facts the probe found known; their forget probes, 12% of them trained on, neighbour, retain, holdout and
  utility splits, the adversarial probes and RULE's rows), the base model's eval, then per method ``posttrain train``
  (RULE: the pipeline ``rule/hub.yaml``; the baselines ``unlearn/<m>.yaml`` on ``forget_train`` and
  ``retain_train``), and ``posttrain eval --suite forgetting --relearn N`` of the run (the HF engine: it gives every
  MIA score).

Columns, per method, mean ± standard error over the seeds (the spread of the seed means): ``forget_ho`` = accuracy
on the forget probes asked in held-out phrasings (never trained by anyone), ``forget`` on all forget probes,
``fill_blank`` / ``reverse`` / ``choice`` / ``context`` on the adversarial probes, the refusal, named-refusal,
wrong-answer and junk rates of the forget answers, ``neighbour`` (boundary), ``retain`` and ``utility`` accuracy
and their drops from the base model, the retain answers' perplexity, the MIA AUCs of the forget split against the
holdout split (0.5 = indistinguishable), and ``relearned`` = held-out forget accuracy after N relearning steps on
the trained forget rows. A method *dominates* RULE when it is at least as good on forget_ho (lower), neighbour and
retain (higher) and better on one by more than both standard errors. ``--sweep`` runs seed 0 with every setting of
``SWEEP`` and prints the table the chosen ``SETTINGS`` come from (per method the lowest
forget_ho among the settings within 0.1 of the base model's retain accuracy, else the smallest retain drop); the
main run reuses those runs. Writes the forget-vs-retain plot
(``--plot``), and ends with ``RESULT rule_forget_acc=.. rule_neighbour_drop=.. rule_retain_drop=..
rule_named_refusal=.. rule_junk=.. relearn_recovery=.. dominated_by=none|method,...``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from datasets import load_from_disk

from posttrain.data_gen.world_unlearn import REFUSALS
from posttrain.evals import report
from unlearning_testbed import mean_se, posttrain  # benchmarks/ is on sys.path when run as a script
from rtuning_testbed import table

MODEL = "smollm2-135m-instruct"
SYSTEM = "Answer briefly."
ADVERSARIAL = ("fill_blank", "reverse", "choice", "context")
SPLITS = ("forget", "boundary", "retain", "utility", *(f"forget_{a}" for a in ADVERSARIAL))
GEN = ["--n_neighbours", "1", "--n_retain", "4", "--n_utility", "50"]  # evaluation sets of about two minutes
LORA = ["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0",
        "--lora_target_modules", "all-linear", "--max_length", "128", "--per_device_train_batch_size", "8"]
BASELINES = {"ga": "grad_ascent", "grad_diff": "grad_diff", "npo": "npo", "simnpo": "simnpo", "idk_sft": "idk_sft"}
RETAIN = {"grad_diff", "npo", "simnpo", "idk_sft"}  # the methods with a retain term
EPOCHS = ["--num_train_epochs", "20"]  # forget_train holds 6 rows: one step an epoch
SETTINGS = {  # method -> its flags, chosen from the sweep (recipes/unlearn/README.md, "The real model")
    "ga": ["--learning_rate", "1e-4", *EPOCHS],
    "grad_diff": ["--learning_rate", "1e-4", *EPOCHS],
    "npo": ["--learning_rate", "1e-4", *EPOCHS],
    "simnpo": ["--learning_rate", "1e-4", *EPOCHS],
    "idk_sft": ["--learning_rate", "1e-4", *EPOCHS],
    "rule": ["--rs.num_train_epochs", "5", "--rs.rejection_only", "false", "--rebo.max_steps", "20"],
}
SWEEP = {  # method -> the settings tried on seed 0 (the session's budget: RULE first, two rates for most baselines)
    "rule": [["--rebo.max_steps", "5"], ["--rebo.max_steps", "20"],  # rule/hub.yaml: 20 epochs, then 20 steps
             *(["--rs.num_train_epochs", e, "--rebo.max_steps", "20"] for e in ("5", "10")),
             *(["--rs.num_train_epochs", e, "--rs.rejection_only", "false", "--rebo.max_steps", "20"]
               for e in ("5", "20"))],  # stage 1 with the boundary rows answered too
    "ga": [["--learning_rate", "1e-4", *EPOCHS]],
    **{m: [["--learning_rate", lr, *EPOCHS] for lr in ("1e-4", "5e-4")] for m in ("grad_diff", "npo")},
    **{m: [["--learning_rate", lr, *EPOCHS] for lr in ("5e-5", "1e-4")] for m in ("simnpo", "idk_sft")},
}
COLUMNS = ("forget_ho", "forget", *ADVERSARIAL, "refusal", "named", "wrong", "junk", "neighbour", "retain", "utility",
           "neighbour_drop", "retain_drop", "utility_drop", "perplexity", "mia_loss", "mia_zlib", "mia_min_k",
           "mia_min_k_plus_plus", "mia_gradnorm", "relearned", "recovery")
BETTER = {"forget_ho": -1, "neighbour": 1, "retain": 1}
RELEARN_LR = "1e-5"  # the attack's: at 1e-4 ten Adam steps on six true answers wreck even a model that knows them


def train(method: str, flags: list[str], data: Path, run: Path, seed: int, model: str) -> None:
    common = ["--model_name_or_path", model, "--dataset_path", data, "--output_dir", run, "--seed", seed,
              "--overwrite_output_dir", "true"]
    if method == "rule":  # the recipe's own LoRA and stage settings; the flags are its GRPO stage's
        posttrain("train", "rule/hub.yaml", *common, *flags)
        return
    splits = ["--dataset_forget_split", "forget_train", *(["--dataset_retain_split", "retain_train"]
                                                          if method in RETAIN else [])]
    refusals = ["--refusals", json.dumps(list(REFUSALS))] if method == "idk_sft" else []
    posttrain("train", f"unlearn/{BASELINES[method]}.yaml", *common, *splits, *LORA, *refusals, *flags)


def evaluate(run, data: Path, out: Path, seed: int, relearn: int) -> dict:
    """One model's figures (the module docstring's columns) from ``posttrain eval --suite forgetting`` (with the
    relearning attack of ``relearn`` steps, unless 0)."""
    if not (out / "results.json").is_file():
        attack = ["--relearn", relearn, "--relearn_lr", RELEARN_LR] if relearn else []
        posttrain("eval", run, "--data", data, "--suite", "forgetting", "--splits", ",".join(SPLITS), "--engine", "hf",
                  "--holdout_split", "holdout", "--output", out, "--seed", seed, "--bootstrap_iters", "200",
                  *attack, "--overwrite_output_dir")
    doc = json.loads((out / "results.json").read_text())
    res = {k.split("/", 1)[1]: v for k, v in doc["results"].items() if k.startswith("forgetting/")}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    heldout = {r["fact_id"] for r in load_from_disk(str(data))["forget"] if r["heldout"]}
    held = [s["exact_match"] for s in samples if s.get("suite", "forgetting") == "forgetting"
            and s["split"] == "forget" and s["fact_id"] in heldout]
    f = res["forget"]
    row = {"forget_ho": float(np.mean(held)), "forget": f["exact_match"], "refusal": f["refusal_rate"],
           "named": f["named_refusal_rate"], "wrong": f["wrong_rate"], "junk": f["junk_rate"],
           "neighbour": res["boundary"]["exact_match"], "retain": res["retain"]["exact_match"],
           "utility": res["utility"]["exact_match"],
           "perplexity": float(np.exp(np.mean([s["loss_score"] for s in samples if s["split"] == "retain"]))),
           **{a: res[f"forget_{a}"]["exact_match"] for a in ADVERSARIAL},
           **{m: f.get(f"{m}_auc", float("nan")) for m in ("mia_loss", "mia_zlib", "mia_min_k",
                                                           "mia_min_k_plus_plus", "mia_gradnorm")}}
    attack = doc.get("relearn", {})
    row["relearned"] = attack.get("accuracy_after", float("nan"))
    row["recovery"] = attack.get("relearn_recovery", float("nan"))
    return row


def run_seed(seed: int, root: Path, probe: Path, settings: dict[str, list[list[str]]], model: str,
             relearn: int) -> dict[str, dict]:
    d = root / f"seed{seed}"
    data = d / "data"
    if not (data / "dataset_dict.json").is_file():
        posttrain("gen", "world", "--out", data, "--known", probe, "--seed", seed, "--system", SYSTEM, *GEN,
                  "--overwrite_output_dir")
    t = time.time()
    rows = {"base": evaluate(model, data, d / "eval-base", seed, 0)}
    print(f"seed {seed}: base model evaluated in {time.time() - t:.0f}s", flush=True)
    for method, variants in settings.items():
        for flags in variants:
            setting = ",".join(flags).replace("--", "")
            name = method if len(variants) == 1 else f"{method}:{setting}"
            t, run = time.time(), d / f"{method}_{setting.replace(',', '_')}"  # a sweep's run is the main run's
            if not (run / "run.json").is_file():
                train(method, flags, data, run, seed, model)
            rows[name] = evaluate(run, data, run / "eval", seed, relearn)
            print(f"seed {seed}: {name} trained and evaluated in {time.time() - t:.0f}s", flush=True)
    for r in rows.values():
        for c in ("neighbour", "retain", "utility"):
            r[f"{c}_drop"] = rows["base"][c] - r[c]
    return rows


def dominates(a: dict, b: dict) -> bool:
    """a at least as good as b on forget_ho, neighbour and retain, and better on one beyond both standard errors."""
    diff = {c: BETTER[c] * (a[c][0] - b[c][0]) for c in BETTER}
    margin = {c: np.nan_to_num(np.hypot(a[c][1], b[c][1])) for c in BETTER}
    return all(diff[c] >= 0 for c in BETTER) and any(diff[c] > margin[c] for c in BETTER)


def main() -> None:
    start = time.time()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="runs/bench-unlearning-real")
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--relearn", type=int, default=10, help="relearning steps of the attack (0: none)")
    ap.add_argument("--methods", nargs="+", choices=list(SETTINGS), help="only these (default: all)")
    ap.add_argument("--sweep", action="store_true", help="seed 0, every setting of SWEEP")
    ap.add_argument("--plot", default="recipes/unlearn/forget_vs_retain_real.png", help="'' for none")
    args = ap.parse_args()
    root = Path(args.out)
    candidates, probe = root / "candidates", root / "probe"
    if not (probe / "dataset_dict.json").is_file():
        posttrain("gen", "world", "--out", candidates, "--candidates", "true", "--system", SYSTEM,
                  "--overwrite_output_dir")
        posttrain("probe", args.model, "--data", candidates, "--splits", "candidates", "--out", probe, "--k", "2",
                  "--engine", "hf", "--overwrite_output_dir")
    settings = {m: v for m, v in (SWEEP if args.sweep else {m: [f] for m, f in SETTINGS.items()}).items()
                if m in (args.methods or SETTINGS)}
    seeds = [0] if args.sweep else args.seeds
    per_seed = {s: run_seed(s, root, probe, settings, args.model, args.relearn) for s in seeds}
    names = list(per_seed[seeds[0]])
    for s in seeds:
        print(f"\nseed {s}:")
        print(table(["method", *COLUMNS], [[n, *(per_seed[s][n][c] for c in COLUMNS)] for n in names]))
    agg = {n: {c: mean_se([per_seed[s][n][c] for s in seeds]) for c in COLUMNS} for n in names}
    print(f"\nmean ± standard error over seeds {seeds}:")
    print(table(["method", *COLUMNS], [[n, *(f"{agg[n][c][0]:.3f} ± {agg[n][c][1]:.3f}" for c in COLUMNS)]
                                       for n in names]))
    if args.sweep:  # the rule SETTINGS follow: the lowest forget_ho within 0.1 of the base's retain accuracy, else
        for method in settings:  # the smallest retain drop
            tried = [n for n in names if n.split(":")[0] == method]
            kept = [n for n in tried if agg[n]["retain_drop"][0] <= 0.1]
            best = (min(kept, key=lambda n: agg[n]["forget_ho"][0]) if kept
                    else min(tried, key=lambda n: agg[n]["retain_drop"][0]))
            print(f"chosen for {method}: {best}")
    if args.plot:
        report.forget_retain_scatter(Path(args.plot), {n: (agg[n]["retain"][0], agg[n]["forget_ho"][0])
                                                       for n in names}, "accuracy")
    rule = [n for n in names if n.startswith("rule")]
    if not rule:
        return
    best = min(rule, key=lambda n: agg[n]["forget_ho"][0])
    dominated = [n for n in names if n not in ("base", *rule) and dominates(agg[n], agg[best])]
    print(f"\n{best} dominated by: {', '.join(dominated) or 'none'}; {time.time() - start:.0f}s in all")
    r = agg[best]
    print(f"RESULT rule_forget_acc={r['forget_ho'][0]:.3f} rule_neighbour_drop={r['neighbour_drop'][0]:.3f} "
          f"rule_retain_drop={r['retain_drop'][0]:.3f} rule_named_refusal={r['named'][0]:.3f} "
          f"rule_junk={r['junk'][0]:.3f} relearn_recovery={r['recovery'][0]:.3f} "
          f"dominated_by={','.join(dominated) or 'none'}")


if __name__ == "__main__":
    main()
