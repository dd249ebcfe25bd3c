"""The pass@N experiment of issue 15 on the testbed: DCO against CE on direct-answer multiplication.

    python benchmarks/dco_testbed.py [--seeds 0 1] [--ns 1 4 16 64] [--samples 128] [--out DIR] [--jobs 2]
                                     [--set max_steps=100 eval_steps=50 ...]

Per seed s (every step is the `posttrain` command a user runs): ``gen reasoning --task multiply --form direct
--seed s`` (2-digit x 2-digit, digit tokens: 2,000 training, 200 validation and 200 test problems), then
``train dco/direct.yaml --n N --seed s`` from scratch for each N (N = 1 is sequence-level CE, the baseline): the
same model, data, steps and learning rate, only the loss differs. Every ``eval_steps`` the trainer reports exact
pass@k on the validation and test problems (1 − (1 − p)^k, p the probability of the one correct answer string),
keeps the checkpoint that is best on validation pass@64 and the last one. Both are evaluated on the test problems
with ``posttrain eval --suite reasoning --n SAMPLES --temperature 1`` (sampled, unbiased pass@k). The seeds after
the first train N = 1 and N = 64 only (the goal's pair; N = 4 and 16 are the first seed's).

Prints a table per N (mean ± standard error over the seeds where there are two or more): test pass@1 / @16 / @64
of the final model (the same training budget) and of the best-on-validation checkpoint, its step, and pass@64's
fall from its peak over training to the end; the paired bootstrap of DCO(64) − CE on the test problems' pass@64
(per seed, 2,000 resamples of the problems: mean and 95% interval); the sampled-vs-exact cross-check; and writes a
plot (pass@k against k, pass@64 against training steps). Ends with
``RESULT ce_pass1=.. dco_pass1=.. ce_pass64=.. dco_pass64=.. lead64=.. lead64_best=..`` (the final models, sampled,
mean over seeds; DCO at N = 64; lead64_best compares the best-on-validation checkpoints). Finished steps are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from posttrain.evals.metrics import pass_at_k

RECIPE = "dco/direct.yaml"
KS = (1, 16, 64)


def posttrain(*args, env=None) -> None:
    proc = subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        sys.exit(f"posttrain {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")


def one_run(seed: int, n: int, out: Path, samples: int, threads: int, overrides: list[str]) -> dict:
    """Train one (seed, N), evaluate its best and last checkpoints; returns their per-problem correct counts and
    the run's evaluation log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    data, run = out / f"seed{seed}" / "data", out / f"seed{seed}" / f"n{n}"
    if not (run / "run.json").is_file():
        posttrain("train", RECIPE, "--n", n, "--seed", seed, "--dataset_path", data, "--output_dir", run,
                  "--dataset_eval_split", "valid,test", "--metric_for_best_model", "valid_exact_pass@64",
                  "--overwrite_output_dir", "true", *overrides, env=env)
    info = json.loads((run / "run.json").read_text())
    last = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))  # the last step's (kept)
    counts = {}
    for name, model in (("best", run), ("final", last)):
        ev = run / f"eval-{name}-n{samples}"
        if not (ev / "results.json").is_file():
            posttrain("eval", model, "--data", data, "--suite", "reasoning", "--splits", "test", "--n", samples,
                      "--temperature", 1.0, "--max_tokens", 10, "--engine", "hf", "--batch_size", 1024,
                      "--seed", seed, "--output", ev, "--overwrite_output_dir", env=env)
        rows = [json.loads(line) for line in (ev / "samples.jsonl").read_text().splitlines()]
        counts[name] = np.array([r["n_correct"] for r in sorted(rows, key=lambda r: r["doc_id"])])
    by_step: dict[int, dict] = {}  # the Trainer logs each eval split's metrics apart: one entry per step here
    for h in info["log_history"]:
        if any(k.startswith("eval_") for k in h):
            by_step.setdefault(h["step"], {}).update(h)
    evals = [by_step[step] for step in sorted(by_step)]
    print(f"seed {seed} N {n}: done ({info['wall_time_s']:.0f} s training)", flush=True)
    return {"seed": seed, "n": n, "counts": counts, "evals": evals, "train_s": info["wall_time_s"]}


def per_problem(counts: np.ndarray, k: int, samples: int) -> np.ndarray:
    return np.array([pass_at_k(samples, int(c), k) for c in counts])


def summary(r: dict, samples: int) -> dict:
    """The table's numbers for one run."""
    evals = r["evals"]
    best = max(evals, key=lambda h: h["eval_valid_exact_pass@64"])  # the first of ties, as the Trainer keeps it
    peak = max(h["eval_test_exact_pass@64"] for h in evals)
    out = {"best_step": best["step"], "drop64": peak - evals[-1]["eval_test_exact_pass@64"]}
    for name in ("final", "best"):
        for k in KS:
            out[f"{name}_pass{k}"] = float(per_problem(r["counts"][name], k, samples).mean())
    out["exact_final"] = {k: evals[-1][f"eval_test_exact_pass@{k}"] for k in (1, 4, 16, 64)}
    return out


def mean_se(values, digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    se = f" ± {np.std(v, ddof=1) / np.sqrt(len(v)):.{digits}f}" if len(v) > 1 else ""
    return f"{v.mean():.{digits}f}{se}"


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int, iters: int = 2000) -> tuple[float, float, float]:
    """Mean of b − a over problems and its 95% percentile interval over resamples of the problems."""
    d = b - a
    idx = np.random.default_rng(seed).integers(0, len(d), (iters, len(d)))
    lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def plot(runs: list[dict], samples: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ks = np.arange(1, samples + 1)
    colors = {1: "black", 4: "tab:blue", 16: "tab:orange", 64: "tab:red"}
    for r in runs:
        label = "CE" if r["n"] == 1 else f"DCO N={r['n']}"
        style = "-" if r["seed"] == runs[0]["seed"] else "--"
        curve = [per_problem(r["counts"]["final"], k, samples).mean() for k in ks]
        left.plot(ks, curve, style, color=colors.get(r["n"]), label=f"{label}, seed {r['seed']}")
        right.plot([h["step"] for h in r["evals"]], [h["eval_test_exact_pass@64"] for h in r["evals"]], style,
                   color=colors.get(r["n"]), label=f"{label}, seed {r['seed']}")
    left.set(xscale="log", xlabel="k", ylabel="test pass@k (sampled, final model)", title="pass@k after training")
    right.set(xlabel="training step", ylabel="test pass@64 (exact)", title="pass@64 over training")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "posttrain-dco-bench")
    ap.add_argument("--plot", type=Path, default=Path(__file__).resolve().parents[1] / "recipes/dco/pass_at_k.png")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides for every run")
    a = ap.parse_args()
    overrides = [x for kv in a.set for x in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
    if not {1, 64} <= set(a.ns):
        ap.error("--ns must include 1 (CE) and 64 (the goal's DCO)")
    start = time.time()
    for seed in a.seeds:
        data = a.out / f"seed{seed}" / "data"
        if not (data / "dataset_dict.json").is_file():
            posttrain("gen", "reasoning", "--task", "multiply", "--form", "direct", "--n_train", 2000, "--n_valid",
                      200, "--n_test", 200, "--seed", seed, "--out", data, "--overwrite_output_dir")
    jobs = [(s, n) for s in a.seeds for n in a.ns if s == a.seeds[0] or n in (1, 64)]
    threads = max(1, (os.cpu_count() or 2) // a.jobs)
    with ThreadPoolExecutor(a.jobs) as pool:
        runs = list(pool.map(lambda job: one_run(*job, a.out, a.samples, threads, overrides), jobs))
    stats = {(r["seed"], r["n"]): summary(r, a.samples) for r in runs}

    print(f"\ntest pass@k, {a.samples} samples per problem at temperature 1 (seeds {a.seeds}; mean ± SE over seeds)")
    cols = [f"final_pass{k}" for k in KS] + [f"best_pass{k}" for k in KS] + ["best_step", "drop64"]
    print("| loss | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for n in a.ns:
        rows = [stats[s, n] for s in a.seeds if (s, n) in stats]
        name = "CE (N=1)" if n == 1 else f"DCO N={n}"
        cells = [mean_se([x[c] for x in rows], 0 if c == "best_step" else 3) for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\npaired bootstrap over the test problems, DCO(64) − CE, pass@64 (mean [95% interval]):")
    leads = {"final": [], "best": []}
    for s in a.seeds:
        ce, dco = (next(r for r in runs if (r["seed"], r["n"]) == (s, n)) for n in (1, 64))
        for name in leads:
            m, lo, hi = paired_bootstrap(per_problem(ce["counts"][name], 64, a.samples),
                                         per_problem(dco["counts"][name], 64, a.samples), seed=s)
            leads[name].append(m)
            print(f"  seed {s}, {name}: {m:+.3f} [{lo:+.3f}, {hi:+.3f}]")

    worst = max(abs(stats[key][f"final_pass{k}"] - stats[key]["exact_final"][k]) for key in stats for k in KS)
    print(f"\nsampled vs exact pass@k (1, 16, 64; final models): largest difference {worst:.3f}")
    plot(runs, a.samples, a.plot)
    print(f"plot: {a.plot}; wall time {time.time() - start:.0f} s")
    ce = {k: np.mean([stats[s, 1][f"final_pass{k}"] for s in a.seeds]) for k in (1, 64)}
    dco = {k: np.mean([stats[s, 64][f"final_pass{k}"] for s in a.seeds]) for k in (1, 64)}
    print(f"RESULT ce_pass1={ce[1]:.3f} dco_pass1={dco[1]:.3f} ce_pass64={ce[64]:.3f} dco_pass64={dco[64]:.3f} "
          f"lead64={np.mean(leads['final']):+.3f} lead64_best={np.mean(leads['best']):+.3f}")


if __name__ == "__main__":
    main()
