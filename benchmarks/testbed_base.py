"""The testbed's base model over seeds: does ``recipes/testbed/base.yaml`` learn the graph on every seed and machine?

For each graph seed (``posttrain gen kg --seed G``) it trains the base recipe with several training seeds, plus one
run of the first graph and training seed with another number of threads (another floating-point summation order, as
on another machine: 1 thread, or torch's default when ``--threads`` is given), and evaluates each model greedily on
``seen`` and ``unseen`` (``posttrain eval --suite qa``). Per run it prints frequent (exposure >= 8) / seen / unseen
exact match, the final training loss and the training wall time.

    python benchmarks/testbed_base.py [--graphs 0 1 --seeds 0 1 2 --threads N --recipe testbed/base.yaml --set k=v ...]

``--set`` overrides recipe keys for every run (a sweep point). spread_seen is the largest max - min of seen accuracy
over the training seeds of one graph. Goal (issue 11): min frequent >= 0.90, min seen >= 0.50, spread_seen <= 0.05,
unseen <= 0.10. The last line is ``RESULT min_frequent_acc=.. min_seen_acc=.. spread_seen=.. max_unseen_acc=..
median_train_s=..``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def posttrain(*args, env=None) -> None:
    proc = subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        sys.exit(f"posttrain {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")


def one_run(data: Path, out: Path, recipe: str, seed: int, overrides: list[str], threads: int | None,
            reuse: bool = False) -> dict:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    train = ["train", recipe, "--dataset_path", data, "--output_dir", out, "--overwrite_output_dir", "true",
             "--seed", seed, "--logging_steps", 50, *overrides]
    done = out / "eval" / "results.json"
    if not (reuse and done.is_file()
            and json.loads((out / "run.json").read_text())["command"] == ["posttrain", *map(str, train)]):
        posttrain(*train, env=env)
        posttrain("eval", out, "--data", data, "--suite", "qa", "--splits", "seen,unseen", "--engine", "hf",
                  "--output", out / "eval", "--overwrite_output_dir")
    info = json.loads((out / "run.json").read_text())
    res = json.loads((out / "eval" / "results.json").read_text())["results"]
    qa = {s: res[f"qa/{s}"] for s in ("seen", "unseen")}
    losses = [h["loss"] for h in info["log_history"] if "loss" in h]
    return {"frequent": qa["seen"]["frequent_exact_match"], "seen": qa["seen"]["exact_match"],
            "unseen": qa["unseen"]["exact_match"], "loss": losses[-1] if losses else float("nan"),
            "train_s": info["wall_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipe", default="testbed/base.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides for every run")
    ap.add_argument("--threads", type=int, default=None, help="threads per run (default: torch's)")
    ap.add_argument("--no_other_threads", action="store_true", help="skip the run with another thread count")
    ap.add_argument("--out", default="runs/bench-base")
    ap.add_argument("--reuse", action="store_true", help="keep a finished run made by the same command (e.g. by "
                    "another invocation working through other seeds at the same time)")
    args = ap.parse_args()
    overrides = [x for kv in args.set for x in ("--" + kv.split("=", 1)[0], kv.split("=", 1)[1])]
    root = Path(args.out)
    start = time.time()
    runs = []  # (graph, seed, threads, result)
    plan = [(g, s, args.threads) for g in args.graphs for s in args.seeds]
    if not args.no_other_threads:
        plan.append((args.graphs[0], args.seeds[0], None if args.threads else 1))
    print(f"recipe {args.recipe} {' '.join(args.set)}")
    print("| graph | seed | threads | frequent | seen | unseen | final loss | train s |\n|---|---|---|---|---|---|---|---|")
    for g, s, threads in plan:
        data = root / f"kg{g}"
        if not (data / "manifest.json").is_file():
            shutil.rmtree(data, ignore_errors=True)
            posttrain("gen", "kg", "--out", data, "--seed", g)
        other = threads != args.threads
        r = one_run(data, root / (f"g{g}-s{s}" + (f"-t{threads or 'all'}" if other else "")), args.recipe, s,
                    overrides, threads, args.reuse)
        runs.append((g, s, other, r))
        print(f"| {g} | {s} | {threads or 'all'} | {r['frequent']:.3f} | {r['seen']:.3f} | {r['unseen']:.3f} | "
              f"{r['loss']:.3f} | {r['train_s']:.0f} |", flush=True)
    spread = max(np.ptp([r["seen"] for gg, _, other, r in runs if gg == g and not other]) for g in args.graphs)
    result = {"min_frequent_acc": min(r["frequent"] for *_, r in runs),
              "min_seen_acc": min(r["seen"] for *_, r in runs), "spread_seen": spread,
              "max_unseen_acc": max(r["unseen"] for *_, r in runs),
              "median_train_s": float(np.median([r["train_s"] for *_, r in runs]))}
    seen = [r["seen"] for *_, r in runs]
    print(f"\nseen accuracy over {len(runs)} runs: mean {np.mean(seen):.3f}, std {np.std(seen, ddof=1):.3f}, "
          f"standard error {np.std(seen, ddof=1) / np.sqrt(len(seen)):.3f}; {time.time() - start:.0f}s in all")
    print("RESULT " + " ".join(f"{k}={v:.3f}" if k != "median_train_s" else f"{k}={v:.0f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
