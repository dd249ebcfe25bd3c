"""vLLM against batched HF generation, side by side in one process, in the shapes the evaluators use.

    python benchmarks/eval_engines.py [--model runs/demo/base --data runs/demo/data] [--rounds 1]

1. tiny: the testbed model, 512 greedy short answers (16 tokens) — the qa / hallucination / forgetting shape;
2. gen: a random-init ~30M-parameter Llama (hidden 512, 8 layers, vocabulary 4096), 256 prompts x 8 samples x 32
   tokens at temperature 1 — the pass@k / R-Tuning-U shape;
3. score: log-probs of 512 given 16-token continuations on the 30M model — the forgetting / confidence shape;
plus each engine's start-up. Without --model the testbed is made first (posttrain gen kg + the base recipe, ~4 min
on 2 cores). Rounds alternate HF and vLLM so that drift hits both; each figure is the best round. Ends with
`RESULT gen_speedup=<2> tiny_speedup=<1> score_speedup=<3> startup_s=<the first vLLM engine's start-up>`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posttrain.evals.hf_engine import HFEngine
from posttrain.evals.vllm_engine import VLLMEngine
from posttrain.modeling import build_word_tokenizer, scratch_llama


def testbed(work: Path) -> tuple[str, str]:
    from posttrain.gen import gen
    from posttrain.train import train

    data = gen("kg", work / "kg", ["--seed", "0"])
    return str(train("recipes/testbed/base.yaml", ["--dataset_path", str(data), "--output_dir",
                                                    str(work / "base")])), str(data)


def random_llama(path: Path, tok=None, vocab: int = 4096) -> str:
    """A seeded random ~30M-parameter Llama (head size 64 for vLLM's CPU attention) with tokenizer ``tok``, by
    default a word tokenizer over w0..w{vocab-5}."""
    tok = tok or build_word_tokenizer([" ".join(f"w{i}" for i in range(vocab - 4))])
    model = scratch_llama(tok, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=1408,
                          max_position_embeddings=256)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    print(f"random Llama: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocabulary {len(tok)}")
    return str(path)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="testbed model (default: train one)")
    ap.add_argument("--data", default=None, help="its knowledge-graph data")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    model, data = (args.model, args.data) if args.model else testbed(work)
    from datasets import load_from_disk

    dd = load_from_disk(data)
    questions = (list(dd["seen"]["prompt"]) + list(dd["unseen"]["prompt"]))[:512]
    big = random_llama(work / "random30m")
    rng = np.random.default_rng(0)
    words = lambda k: " ".join(f"w{i}" for i in rng.integers(0, 4092, size=k))  # noqa: E731
    prompts = [words(int(rng.integers(16, 33))) for _ in range(256)]
    pairs = ([words(24) for _ in range(512)], [" " + words(16) for _ in range(512)])

    start = {}
    engines = {}
    for name, cls in (("hf", HFEngine), ("vllm", VLLMEngine)):
        for m in (model, big):
            start[name, m] = timed(lambda: engines.__setitem__((name, m), cls(m)))
    print(f"start-up: HF {start['hf', model]:.1f} s, vLLM {start['vllm', model]:.1f} s (first engine: import and "
          f"engine set-up); a second vLLM engine in the process (30M model) {start['vllm', big]:.1f} s; torch threads "
          f"{torch.get_num_threads()}")

    work_items = {
        "tiny": lambda e: e[model].generate(questions, max_tokens=16),
        "gen": lambda e: e[big].generate(prompts, n=8, temperature=1.0, max_tokens=32, seed=0),
        "score": lambda e: e[big].score(*pairs),
    }
    best = {}
    for regime, fn in work_items.items():
        for _ in range(args.rounds):
            for name in ("hf", "vllm"):
                t = timed(lambda: fn({m: engines[name, m] for m in (model, big)}))
                best[regime, name] = min(t, best.get((regime, name), float("inf")))
        ratio = best[regime, "hf"] / best[regime, "vllm"]
        print(f"{regime:>5}: HF {best[regime, 'hf']:7.2f} s  vLLM {best[regime, 'vllm']:7.2f} s  "
              f"vLLM speed-up {ratio:.2f}x")
    speed = {r: best[r, "hf"] / best[r, "vllm"] for r in work_items}
    print(f"RESULT gen_speedup={speed['gen']:.2f} tiny_speedup={speed['tiny']:.2f} "
          f"score_speedup={speed['score']:.2f} startup_s={start['vllm', model]:.1f}")


if __name__ == "__main__":
    main()
