"""R-Tuning on the testbed: vanilla SFT vs R-Tuning, R-Tuning-U and the refusal variant (arXiv 2311.09677).

Per seed: ``posttrain gen rtuning`` (knowledge graph + train / test / ood questions), the testbed's base model on its
corpus, ``posttrain probe`` of the base model on the fine-tuning questions, four fine-tunings of the base model on
them with the same hyperparameters (recipes/rtuning/), and ``posttrain eval --suite hallucination`` of the base model
and each fine-tuned one on ``test`` (new in-domain questions) and ``ood`` (relations held out of fine-tuning).

Definitions (over a split's questions; every run through the CLI a user has):
* correct: greedy answer = gold (exact match); known: exposure >= 8 in pretraining; unknown: held-out fact;
* abstained: a refusal ("I do not know"), or, for the models tuned with the certainty suffix, p(sure) <= 0.5
  (R-Tuning's "unwilling to answer"); the base model and vanilla SFT were never taught to abstain;
* AP: average precision of correctness ranked by R-Tuning's confidence 0.5 * answer probability + 0.5 * p(sure), an
  abstention ranking last (confidence 0);
* known acc: correct and not abstained, over known facts; refusal on unknown: abstained, over unknown facts.

    python benchmarks/rtuning_testbed.py [--seeds 0 1] [--out runs/bench-rtuning]

Prints a table per seed, the mean and spread over seeds, the per-exposure table, and one RESULT line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from posttrain.evals import metrics

METHODS = {  # name -> (recipe, overrides, tuned with the certainty suffix)
    "vanilla": ("rtuning/vanilla.yaml", [], False),
    "r-tuning": ("rtuning/testbed.yaml", ["--split", "correctness", "--variant", "suffix"], True),
    "r-tuning-u": ("rtuning/testbed.yaml", ["--split", "entropy", "--variant", "suffix"], True),
    "refusal": ("rtuning/testbed.yaml", ["--split", "correctness", "--variant", "refusal"], False),
}
BUCKETS = (("unknown", 0, 0), ("1-2", 1, 2), ("3-7", 3, 7), ("known 8+", 8, None))
COLUMNS = ("acc", "answer_rate", "answered_acc", "known_acc", "refusal_unknown", "ap")


def posttrain(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"posttrain {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")


def scores(samples: list[dict], suffix: bool) -> dict:
    correct = np.array([s["exact_match"] for s in samples], dtype=bool)
    exposure = np.array([s["exposure"] for s in samples])
    abstain = np.array([s["refused"] or (suffix and s["confidence_sure"] <= 0.5) for s in samples], dtype=bool)
    conf = np.where([s["refused"] for s in samples], 0.0, [s["confidence_mean"] for s in samples])
    known, unknown, answered = exposure >= 8, exposure == 0, ~abstain
    out = {"acc": correct.mean(), "answer_rate": answered.mean(),
           "answered_acc": correct[answered].mean() if answered.any() else float("nan"),
           "known_acc": (correct & answered)[known].mean(), "refusal_unknown": abstain[unknown].mean(),
           "ap": metrics.average_precision(correct, conf)}
    for name, lo, hi in BUCKETS:
        m = (exposure >= lo) & (exposure <= (hi if hi is not None else exposure.max()))
        out[f"{name}/acc"], out[f"{name}/abstain"], out[f"{name}/n"] = correct[m].mean(), abstain[m].mean(), m.sum()
    return {k: float(v) for k, v in out.items()}


def run_seed(seed: int, root: Path) -> dict:
    d = root / f"seed{seed}"
    data, base, probe = d / "data", d / "base", d / "probe"
    t = time.time()
    # a rerun replaces the previous run's outputs
    posttrain("gen", "rtuning", "--out", data, "--seed", seed, "--overwrite_output_dir")
    posttrain("train", "testbed/base.yaml", "--dataset_path", data, "--output_dir", base, "--seed", seed,
              "--logging_steps", "1000", "--overwrite_output_dir", "true")
    posttrain("probe", base, "--data", data, "--out", probe, "--seed", seed, "--overwrite_output_dir")
    print(f"seed {seed}: data, base model and probe in {time.time() - t:.0f}s", flush=True)
    results = {}
    for name, (recipe, overrides, suffix) in {"base": (None, [], False), **METHODS}.items():
        t = time.time()
        run = base
        if recipe:
            run = d / name
            posttrain("train", recipe, "--model_name_or_path", base, "--dataset_path", probe, "--output_dir", run,
                      "--seed", seed, "--overwrite_output_dir", "true", *overrides)
        out = d / "eval" / name
        posttrain("eval", run, "--data", data, "--suite", "hallucination", "--splits", "test,ood", "--output", out,
                  "--seed", seed, "--overwrite_output_dir")
        samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        results[name] = {split: scores([s for s in samples if s["split"] == split], suffix)
                         for split in ("test", "ood")}
        print(f"seed {seed}: {name} trained and evaluated in {time.time() - t:.0f}s", flush=True)
    return results


def ms(values: list[float]) -> tuple[float, float, float, int]:
    """Mean, std, min and count over the seeds where the value is defined (answered_acc is NaN where a model answers
    nothing)."""
    v = np.array(values, dtype=float)
    v = v[~np.isnan(v)]
    return (float(v.mean()), float(v.std()), float(v.min()), len(v)) if len(v) else (float("nan"),) * 3 + (0,)


def pm(mean: float, std: float, _min: float, n: int, seeds: int) -> str:
    if n == 0:
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if n == seeds else f"{mean:.3f} ({n} of {seeds} seeds)"


def table(headers, rows) -> str:
    fmt = lambda v: ("–" if np.isnan(v) else f"{v:.3f}") if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="runs/bench-rtuning")
    args = ap.parse_args()
    start = time.time()
    per_seed = {s: run_seed(s, Path(args.out)) for s in args.seeds}
    names = list(next(iter(per_seed.values())))
    for s, res in per_seed.items():
        for split in ("test", "ood"):
            print(f"\nseed {s}, {split}:")
            print(table(["method", *COLUMNS], [[n, *(res[n][split][c] for c in COLUMNS)] for n in names]))
    agg = {(n, split, k): ms(v)
           for n in names for split in ("test", "ood") for k in per_seed[args.seeds[0]][n][split]
           for v in [[per_seed[s][n][split][k] for s in args.seeds]]}
    for split, title in (("test", "in-domain (test)"), ("ood", "out-of-domain (ood)")):
        print(f"\n{title}, mean ± std over seeds {args.seeds}:")
        print(table(["method", *COLUMNS], [[n, *(pm(*agg[n, split, c], len(args.seeds)) for c in COLUMNS)]
                                                for n in names]))
    print("\nin-domain by exposure in pretraining (mean over seeds): accuracy / abstention rate")
    print(table(["method", *(f"{b} (n={agg[names[0], 'test', f'{b}/n'][0]:.0f})" for b, _, _ in BUCKETS)],
                [[n, *(f"{agg[n, 'test', f'{b}/acc'][0]:.2f} / {agg[n, 'test', f'{b}/abstain'][0]:.2f}"
                       for b, _, _ in BUCKETS)] for n in names]))
    result = {
        "ap_sft": agg["vanilla", "test", "ap"][0], "ap_rtuning": agg["r-tuning", "test", "ap"][0],
        "ap_gain": agg["r-tuning", "test", "ap"][0] - agg["vanilla", "test", "ap"][0],
        "ood_ap_gain": agg["r-tuning", "ood", "ap"][0] - agg["vanilla", "ood", "ap"][0],
        "refusal_unknown": agg["r-tuning", "test", "refusal_unknown"][2],  # the worst seed
        "known_acc_drop": agg["vanilla", "test", "known_acc"][0] - agg["r-tuning", "test", "known_acc"][0],
    }
    print(f"\n{len(args.seeds)} seeds in {time.time() - start:.0f}s; refusal_unknown is R-Tuning's worst seed")
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
