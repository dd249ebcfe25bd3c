"""The unlearning baselines on the testbed over seeds: forget / boundary / retain exact match before and after each
recipe, as shipped or with overrides.

    python benchmarks/unlearn_testbed.py --pair BASE_RUN=KG_DATA [--pair ...] [--out /tmp/bench-unlearn]
                                          [--method npo:--learning_rate=3e-5 ...]

Each --pair is a base model and the knowledge graph it was trained on (one per graph and training seed; without
--pair the seed-0 testbed is made first, ~4 min). Each --method is a recipe in recipes/unlearn/ with optional
overrides after ':' (comma-separated --key=value); default: grad_diff, npo, simnpo, idk_sft as shipped. Every run
is `posttrain train unlearn/<m>.yaml --model_name_or_path BASE --dataset_path KG --seed S` then `posttrain eval
RUN --data KG --suite forgetting --splits forget,boundary,retain --engine hf`. Prints one row per run and, per
method, the mean ± spread (half the range) over the pairs of the drop in forget and retain exact match. Ends with
`RESULT <method>_forget_drop=<mean> <method>_retain_drop=<mean> ...`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SPLITS = ("forget", "boundary", "retain")
DEFAULT = ("grad_diff", "npo", "simnpo", "idk_sft")


def posttrain(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"posttrain {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")


def exact_match(run: Path, data: str, out: Path) -> dict[str, float]:
    posttrain("eval", run, "--data", data, "--suite", "forgetting", "--splits", ",".join(SPLITS), "--engine", "hf",
              "--output", out, "--overwrite_output_dir")
    results = json.loads((out / "results.json").read_text())["results"]
    return {s: results[f"forgetting/{s}"]["exact_match"] for s in SPLITS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", action="append", default=[], help="BASE_RUN=KG_DATA")
    ap.add_argument("--method", action="append", default=[], help="recipe[:--key=value,...]")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-unlearn-"))
    pairs = [tuple(p.split("=", 1)) for p in args.pair]
    if not pairs:
        sys.path.insert(0, str(Path(__file__).parent))
        from eval_engines import testbed

        pairs = [testbed(out / "testbed")]
    methods = args.method or list(DEFAULT)
    rows, drops = [], {m: [] for m in methods}
    for k, (base, data) in enumerate(pairs):
        seed = json.loads((Path(base) / "run.json").read_text())["seed"]
        before = exact_match(Path(base), data, out / f"pair{k}" / "base-eval")
        rows.append((k, "base model", before))
        for m in methods:
            recipe, _, overrides = m.partition(":")
            run = out / f"pair{k}" / m.replace(":", "_").replace("=", "").replace("--", "").replace(",", "_")
            posttrain("train", f"unlearn/{recipe}.yaml", "--model_name_or_path", base, "--dataset_path", data,
                      "--output_dir", run, "--seed", seed, "--overwrite_output_dir", "true",
                      *[x for o in overrides.split(",") if o for x in o.split("=", 1)])
            after = exact_match(run, data, run / "eval")
            rows.append((k, m, after))
            drops[m].append((before["forget"] - after["forget"], before["retain"] - after["retain"]))
            print(f"pair {k}: {m} done", flush=True)
    print("| pair | run | " + " | ".join(SPLITS) + " |\n|---|---|" + "---|" * len(SPLITS))
    for k, name, em in rows:
        print(f"| {k} | {name} | " + " | ".join(f"{em[s]:.3f}" for s in SPLITS) + " |")
    print(f"\nexact-match drop, mean ± spread (half the range) over {len(pairs)} pair(s):")
    result = []
    for m, d in drops.items():
        f, r = np.array(d).T
        print(f"{m}: forget {f.mean():.3f} ± {np.ptp(f) / 2:.3f}, retain {r.mean():.3f} ± {np.ptp(r) / 2:.3f}")
        key = m.split(":")[0] + ("_" + m.split(":")[1].replace("--", "").replace("=", "").replace(",", "_")
                                 if ":" in m else "")
        result += [f"{key}_forget_drop={f.mean():.3f}", f"{key}_retain_drop={r.mean():.3f}"]
    print("RESULT " + " ".join(result))


if __name__ == "__main__":
    main()
