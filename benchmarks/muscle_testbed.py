"""The negative-flip experiment of issue 14 on the testbed: MUSCLE against the updates a user would try first.

    python benchmarks/muscle_testbed.py [--seeds 0 1] [--out DIR] [--jobs 2] [--setting NAME=METHOD:--k=v,...]

Per seed s (a graph seed; every step below is the `posttrain` command a user runs):

* ``gen kg --seed s`` and ``gen muscle`` (corpus_v1 = 80% of the corpus rows; the generative and multiple-choice
  tasks on a 50/50 split of the seen facts);
* base v1 = ``muscle/base_v1.yaml`` (the base recipe on corpus_v1, seed 2s), base v2 = ``muscle/base_v2.yaml``
  (the whole corpus, seed 2s+1), both evaluated on the seen facts (``--suite qa``): v2 must be the stronger;
* per task (gen, mc): T1 and T2 = ``muscle/task.yaml`` on v1 and on v2 (LoRA, the same recipe), then every setting
  started from T2's adapter with the same recipe: ``muscle`` (the paper's loss on the answer tokens, the recipe),
  ``muscle_context`` (on the context and answer tokens, as the paper), ``muscle_ce`` (with CE, λ = 0.5),
  ``kd_old`` (CE + KL to T1 on every token: no mask, λ = 0.5) and ``more_epochs`` (T2's SFT for as many more
  epochs); each against T1 on the task's test facts, ``posttrain eval --suite flips --reference T1``.

Prints, per task, each setting's accuracy, NFR, PFR, inconsistency flips (multiple choice) or ROUGE-L flips with
their mean gain / regression (generative), and the mistake severity of the negative flips, as mean ± standard
error over the seeds (the spread of the seed means); the share of T2's negative flips whose fact the old base
answers and the new one does not (greedy, on the ``seen`` question), and how many training tokens each MUSCLE
setting distilled from T1; then MUSCLE's training step time over plain SFT's (``step_time_ratio``). Ends with two
lines, the multiple-choice task's and then the generative task's:
``RESULT_MC nfr_plain=.. nfr_muscle=.. nfr_ratio=.. acc_gap=.. step_time_ratio=..`` and
``RESULT nfr_plain=.. nfr_muscle=.. nfr_ratio=.. acc_gap=.. step_time_ratio=..``
(plain = T2, acc_gap = MUSCLE's accuracy minus T2's, the step time with the recipe's mask). Finished steps are
reused when their output exists.
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
from itertools import islice
from pathlib import Path

import numpy as np
from datasets import load_from_disk

TASKS = ("mc", "gen")
SETTINGS = {  # name -> (recipe, flags); every one starts from T2's adapter
    "muscle": ("muscle/muscle.yaml", []),
    "muscle_context": ("muscle/muscle.yaml", ["--completion_only_loss", "false"]),
    "muscle_ce": ("muscle/muscle.yaml", ["--distill_weight", "0.5"]),
    "kd_old": ("muscle/muscle.yaml", ["--mask", "old", "--distill_weight", "0.5"]),
    "more_epochs": ("muscle/task.yaml", []),
}


def posttrain(*args, env=None) -> None:
    proc = subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        sys.exit(f"posttrain {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")


def trained(run: Path, *args, env=None) -> Path:
    if not (run / "run.json").is_file():
        posttrain("train", *args, "--output_dir", run, "--overwrite_output_dir", "true", env=env)
    return run


def results(run: Path, data: Path, suite: str, splits: str, *flags) -> dict:
    out = run / f"eval-{suite}-{splits}"
    if not (out / "results.json").is_file():
        posttrain("eval", run, "--data", data, "--suite", suite, "--splits", splits, "--engine", "hf", "--output",
                  out, "--overwrite_output_dir", *flags)
    return json.loads((out / "results.json").read_text())["results"][f"{suite}/{splits}"]


def samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def one_seed(seed: int, out: Path, settings: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    root = out / f"seed{seed}"
    kg, data = root / "kg", root / "data"
    if not (data / "dataset_dict.json").is_file():
        posttrain("gen", "kg", "--out", kg, "--seed", seed, "--overwrite_output_dir")
        posttrain("gen", "muscle", "--kg_path", kg, "--out", data, "--seed", seed, "--overwrite_output_dir")
    d = ["--dataset_path", data]
    bases = {v: trained(root / f"base_{v}", f"muscle/base_{v}.yaml", *d, "--seed", 2 * seed + i, env=env)
             for i, v in enumerate(("v1", "v2"))}
    row = {f"seen_{v}": results(run, data, "qa", "seen")["exact_match"] for v, run in bases.items()}
    knows = {v: {s["fact_id"]: s["exact_match"] for s in samples(run / "eval-qa-seen")} for v, run in bases.items()}
    for task in TASKS:
        split = ["--dataset_train_split", f"{task}_train"]
        t1, t2 = (trained(root / f"{task}_t{i + 1}", "muscle/task.yaml", *d, *split, "--model_name_or_path",
                          bases[v], "--seed", seed, env=env) for i, v in enumerate(("v1", "v2")))
        runs = {"t2": t2}
        for name, (recipe, flags) in settings.items():
            old = ["--old_model", t1] if recipe == "muscle/muscle.yaml" else []
            runs[name] = trained(root / f"{task}_{name}", recipe, *d, *split, "--model_name_or_path", bases["v2"],
                                 "--init_adapter", t2, *old, "--seed", seed, *flags, env=env)
        for name, run in runs.items():
            row[f"{task}/{name}"] = results(run, data, "flips", f"{task}_test", "--reference", t1)
            log = json.loads((run / "run.json").read_text())["log_history"]
            row[f"{task}/{name}"]["old_frac"] = np.mean([h.get("muscle/old_frac", np.nan) for h in log if "loss" in h])
        # T2's negative flips that the bases already show: the old base answers the fact's question, the new not
        facts = load_from_disk(str(data))[f"{task}_test"]["fact_id"]
        flips = [facts[s["doc_id"]] for s in samples(t2 / f"eval-flips-{task}_test") if s["flip"] == "negative"]
        row[f"{task}/t2"]["base_flip"] = np.mean([knows["v1"][f] and not knows["v2"][f] for f in flips])
        print(f"seed {seed}: {task} done", flush=True)
    return row


def step_time_ratio(root: Path, task: str, steps: int = 80) -> float:
    """Median time of a MUSCLE training step (forward + backward, the teachers' forwards included: T1's only on a
    batch with a wrong token) over plain SFT's, LoRA from T2's adapter, on the same batches (the first ``steps`` of
    the training set, each given to both in turn, after 2 warm-up steps)."""
    from posttrain.core.data import load_data
    from posttrain.recipe import parse
    from posttrain.train import build_model, prepare, split_names
    from posttrain.trainers import get_method

    data, tmp = root / "data", tempfile.mkdtemp()
    flags = ["--dataset_path", str(data), "--dataset_train_split", f"{task}_train", "--model_name_or_path",
             str(root / "base_v2"), "--init_adapter", str(root / f"{task}_t2"), "--output_dir", tmp]
    old, trainers = ["--old_model", str(root / f"{task}_t1")], {}
    for name, recipe, extra in (("sft", "muscle/task.yaml", []), ("muscle", "muscle/muscle.yaml", old)):
        r = parse(recipe, [*flags, *extra])
        _, cls, method = get_method(r.method)
        dd = load_data(r.data.dataset_path)
        prepared = prepare(r, method, dd, split_names(r, method))
        model, tok, peft = build_model(r, dd)
        trainers[name] = cls(model=model, args=r.train, train_dataset=prepared.train, processing_class=tok,
                             peft_config=peft)
        trainers[name].current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by training_step
    batches = list(islice(trainers["sft"].get_train_dataloader(), steps + 2))
    times = {name: [] for name in trainers}
    for i, batch in enumerate(batches):
        for name, t in trainers.items():
            start = time.perf_counter()
            t.training_step(t.model, dict(batch))
            if i >= 2:
                times[name].append(time.perf_counter() - start)
            t.model.zero_grad(set_to_none=True)
    return float(np.median(times["muscle"]) / np.median(times["sft"]))


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


COLUMNS = {"mc": ("candidate_exact_match", "negative_flip_rate", "positive_flip_rate", "inconsistency_flip_rate",
                  "nf_graph_distance"),
           "gen": ("candidate_exact_match", "negative_flip_rate", "positive_flip_rate", "rouge_negative_flip_rate",
                   "rouge_mean_gain", "rouge_mean_regression", "nf_same_type")}
SHORT = {"candidate_exact_match": "acc", "negative_flip_rate": "NFR", "positive_flip_rate": "PFR",
         "inconsistency_flip_rate": "incons. NFR", "rouge_negative_flip_rate": "ROUGE NFR",
         "rouge_mean_gain": "ROUGE gain", "rouge_mean_regression": "ROUGE regr.", "nf_same_type": "NF same type",
         "nf_graph_distance": "NF graph dist."}


def table(rows: list[dict], task: str, names: list[str]) -> None:
    cols = COLUMNS[task]
    t1 = mean_se([r[f"{task}/t2"]["reference_exact_match"] for r in rows])
    print(f"\n{task}: T1's accuracy {t1[0]:.3f} ± {t1[1]:.3f}")
    print("| setting | " + " | ".join(SHORT[c] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in names:
        cells = [mean_se([r[f"{task}/{name}"][c] for r in rows]) for c in cols]
        print(f"| {name} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in cells) + " |")
    explained = mean_se([r[f"{task}/t2"]["base_flip"] for r in rows])
    print(f"T2's negative flips on facts the old base answers and the new one does not: {explained[0]:.2f} ± "
          f"{explained[1]:.2f}; tokens MUSCLE distilled from T1: " + ", ".join(
              f"{n} {mean_se([r[f'{task}/{n}']['old_frac'] for r in rows])[0]:.3f}" for n in names
              if not np.isnan(rows[0][f"{task}/{n}"]["old_frac"]) and rows[0][f"{task}/{n}"]["old_frac"] < 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "posttrain-muscle-bench")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--setting", action="append", default=[],
                    help="another setting from T2: NAME=RECIPE:--k=v,... (e.g. lr3=muscle/muscle.yaml:--lr=3e-3)")
    a = ap.parse_args()
    settings = dict(SETTINGS)
    for s in a.setting:
        name, _, rest = s.partition("=")
        recipe, _, flags = rest.partition(":")
        settings[name] = (recipe, [x for o in flags.split(",") if o for x in o.split("=", 1)])
    start = time.time()
    threads = max(1, (os.cpu_count() or 2) // a.jobs)
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(one_seed, a.seeds, [a.out] * len(a.seeds), [settings] * len(a.seeds),
                             [threads] * len(a.seeds)))
    names = ["t2", *settings]
    print("\nbases (seen exact match): " + ", ".join(
        f"seed {s}: v1 {r['seen_v1']:.3f} -> v2 {r['seen_v2']:.3f}" for s, r in zip(a.seeds, rows)))
    for task in TASKS:
        table(rows, task, names)
    ratios = {task: step_time_ratio(a.out / f"seed{a.seeds[0]}", task) for task in TASKS}
    print("\nMUSCLE's step time over plain SFT's (LoRA, the same batches): " + ", ".join(
        f"{t} {r:.2f}" for t, r in ratios.items()))
    print(f"wall time {time.time() - start:.0f} s")
    for task in TASKS:
        plain = mean_se([r[f"{task}/t2"]["negative_flip_rate"] for r in rows])[0]
        muscle = mean_se([r[f"{task}/muscle"]["negative_flip_rate"] for r in rows])[0]
        gap = mean_se([r[f"{task}/muscle"]["candidate_exact_match"] - r[f"{task}/t2"]["candidate_exact_match"]
                       for r in rows])[0]
        print(f"{'RESULT_MC' if task == 'mc' else 'RESULT'} nfr_plain={plain:.3f} nfr_muscle={muscle:.3f} "
              f"nfr_ratio={muscle / plain if plain else float('nan'):.2f} acc_gap={gap:+.3f} "
              f"step_time_ratio={ratios[task]:.2f}")


if __name__ == "__main__":
    main()
