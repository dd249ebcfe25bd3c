"""`posttrain eval` with vLLM against HF, whole-command wall time (what a user waits for), side by side.

    python benchmarks/eval_suites.py [--model /tmp/bench-base/g0-s0 --data /tmp/bench-base/kg0] [--rounds 2]
                                     [--suite qa,hallucination,forgetting] [--limit N] [--random_llama]

Each round runs `posttrain eval MODEL --data DATA --suite SUITES --engine E --overwrite_output_dir` as a subprocess
once per engine, the engine that goes first alternating between rounds so that drift hits both; each figure is the
best round. Without --model the testbed is made first (posttrain gen kg + the base recipe, ~4 min on 2 cores).
--random_llama evaluates a random-init ~26M-parameter Llama (hidden 512, 8 layers) with the model's tokenizer
instead: its answers run to the token limit, a bigger model's cost. The machine's load average is printed before
and after: other work on it slows both engines. Ends with
`RESULT vllm_s=<best> hf_s=<best> default_over_best=<the time of the engine --engine auto picks / the faster one>`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eval_engines import random_llama, testbed  # benchmarks/ is on sys.path when run as a script
from posttrain.core.modeling import load_tokenizer
from posttrain.evals.engines import default_engine

ENGINES = ("vllm", "hf")


def eval_seconds(engine: str, model: str, data: str, suites: str, limit: int | None, out: Path) -> float:
    cmd = [sys.executable, "-m", "posttrain", "eval", model, "--data", data, "--suite", suites, "--engine", engine,
           "--output", str(out / engine), "--overwrite_output_dir", *(["--limit", str(limit)] if limit else [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="testbed model (default: train one)")
    ap.add_argument("--data", default=None, help="its knowledge-graph data")
    ap.add_argument("--suite", default="qa,hallucination,forgetting")
    ap.add_argument("--limit", type=int, default=None, help="questions per split (default: all)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--random_llama", action="store_true", help="evaluate a random ~26M Llama instead of the model")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-suites-"))
    model, data = (args.model, args.data) if args.model else testbed(work)
    if args.random_llama:
        model = random_llama(work / "random-llama", load_tokenizer(model))
    print(f"posttrain eval {model} --data {data} --suite {args.suite}" + (f" --limit {args.limit}" if args.limit
          else "") + f"; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {load()}")
    best = dict.fromkeys(ENGINES, float("inf"))
    for r in range(args.rounds):
        times = {}
        for engine in ENGINES[::-1] if r % 2 else ENGINES:
            times[engine] = eval_seconds(engine, model, data, args.suite, args.limit, work)
            best[engine] = min(best[engine], times[engine])
        print(f"round {r + 1}: vLLM {times['vllm']:6.1f} s  HF {times['hf']:6.1f} s  vLLM / HF "
              f"{times['vllm'] / times['hf']:.2f}")
    default = default_engine()
    fastest = min(best.values())
    print(f"best: vLLM {best['vllm']:.1f} s  HF {best['hf']:.1f} s  vLLM / HF {best['vllm'] / best['hf']:.2f}; "
          f"--engine auto runs {default}; load average {load()}")
    print(f"RESULT vllm_s={best['vllm']:.1f} hf_s={best['hf']:.1f} default_over_best={best[default] / fastest:.2f}")


if __name__ == "__main__":
    main()
