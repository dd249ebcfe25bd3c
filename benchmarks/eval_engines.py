"""vLLM against batched HF generation, side by side in one process, in the shapes the evaluators use.

    python benchmarks/eval_engines.py [--model runs/demo/base --data runs/demo/data] [--rounds 1]
    POSTTRAIN_CACHE=/work/cache python benchmarks/eval_engines.py --real [--prompts 256 --samples 8 --pairs 256]

Testbed (the default):

1. tiny: the testbed model, 512 greedy short answers (16 tokens) — the qa / hallucination / forgetting shape;
2. gen: a random-init ~30M-parameter Llama (hidden 512, 8 layers, vocabulary 4096), 256 prompts x 8 samples x 32
   tokens at temperature 1 — the pass@k / R-Tuning-U shape;
3. score: log-probs of 512 given 16-token continuations on the 30M model — the forgetting / confidence shape;
plus each engine's start-up. Without --model the testbed is made first (posttrain gen kg + the base recipe, ~4 min
on 2 cores). Rounds alternate HF and vLLM so that drift hits both; each figure is the best round. Ends with
`RESULT gen_speedup=<2> tiny_speedup=<1> score_speedup=<3> startup_s=<the first vLLM engine's start-up>`.

Real model (``--real``, or ``--model smollm2-135m-instruct``: an embedded model's name, resolved by
``posttrain.core.embedded.resolve_name``; SmolLM2-135M-Instruct, 134.5M parameters, fp32 on CPU), chat-templated world
capital questions (a one-line system turn, rendered with the tokenizer's ``apply_chat_template``, ~25-30 tokens):
1. gen: ``--prompts`` questions (default 256) x ``--samples`` (default 8) samples x ``--max-tokens`` (default 16)
   tokens at temperature 1 — the pass@k / R-Tuning-U shape;
2. score: log-probs of ``--pairs`` (default 256) given answers ("The capital of X is Y." and the end-of-turn) after
   their questions — the forgetting / confidence shape;
plus each engine's start-up (vLLM's includes its import). Before each regime both engines make one small untimed
call (vLLM's first prompt-log-prob call costs ~15 s once, which a single round would otherwise count); then the
same alternating rounds and best-of as the testbed. Also prints a few samples and the largest HF-vLLM difference of
a scored token log-prob (a check that both score the same tokens). Ends with
`RESULT model=<name> prompts=<N> samples=<n> gen_speedup=<1> score_speedup=<2> startup_s=<vLLM's start-up>`.
On 2 idle CPU cores the full 256 x 8 takes 4 min 36 s in all (with other jobs on the cores it ran past 10 minutes:
time it alone).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posttrain.core.modeling import build_word_tokenizer, scratch_llama
from posttrain.evals.hf_engine import HFEngine
from posttrain.evals.vllm_engine import VLLMEngine


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


# 64 countries and their capitals; x 4 question forms = 256 distinct questions
CAPITALS = (
    "France:Paris Germany:Berlin Italy:Rome Spain:Madrid Portugal:Lisbon Poland:Warsaw Austria:Vienna "
    "Hungary:Budapest Greece:Athens Sweden:Stockholm Norway:Oslo Finland:Helsinki Denmark:Copenhagen "
    "Ireland:Dublin Belgium:Brussels Netherlands:Amsterdam Switzerland:Bern Czechia:Prague Romania:Bucharest "
    "Bulgaria:Sofia Serbia:Belgrade Croatia:Zagreb Ukraine:Kyiv Russia:Moscow Turkey:Ankara Egypt:Cairo "
    "Kenya:Nairobi Nigeria:Abuja Ghana:Accra Ethiopia:Addis_Ababa Morocco:Rabat Algeria:Algiers Tunisia:Tunis "
    "Senegal:Dakar South_Africa:Pretoria Japan:Tokyo China:Beijing India:New_Delhi Pakistan:Islamabad "
    "Bangladesh:Dhaka Thailand:Bangkok Vietnam:Hanoi Indonesia:Jakarta Philippines:Manila Malaysia:Kuala_Lumpur "
    "South_Korea:Seoul Iran:Tehran Iraq:Baghdad Saudi_Arabia:Riyadh Israel:Jerusalem Australia:Canberra "
    "New_Zealand:Wellington Canada:Ottawa United_States:Washington Mexico:Mexico_City Cuba:Havana Brazil:Brasilia "
    "Argentina:Buenos_Aires Chile:Santiago Peru:Lima Colombia:Bogota Venezuela:Caracas Ecuador:Quito "
    "Uruguay:Montevideo"
)
QUESTION_FORMS = ("What is the capital of {}?", "Name the capital city of {}.", "Which city is the capital of {}?",
                  "Tell me the capital of {}.")


def capital_questions(tok, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` chat-templated capital questions (form-major: every country in one form, then the next) and
    their answers ("The capital of X is Y." closed by the end-of-turn token)."""
    pairs = [tuple(w.replace("_", " ") for w in item.split(":")) for item in CAPITALS.split()]
    prompts, answers = [], []
    for form in QUESTION_FORMS:
        for country, capital in pairs:
            messages = [{"role": "system", "content": "Answer in a few words."},
                        {"role": "user", "content": form.format(country)}]
            prompts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            answers.append(f"The capital of {country} is {capital}.{tok.eos_token}")
    if n > len(prompts):
        raise SystemExit(f"at most {len(prompts)} distinct questions, not {n}")
    return prompts[:n], answers[:n]


def real(args) -> None:
    from posttrain.core.embedded import resolve_name

    name = args.model or "smollm2-135m-instruct"
    path = resolve_name(name)
    start, engines = {}, {}
    for eng, cls in (("hf", HFEngine), ("vllm", VLLMEngine)):
        extra = {"max_model_len": 512} if eng == "vllm" else {}
        start[eng] = timed(lambda: engines.__setitem__(eng, cls(path, **extra)))
    tok = engines["hf"].tok
    prompts, _ = capital_questions(tok, args.prompts)
    sp, sa = capital_questions(tok, args.pairs)
    n_params = sum(p.numel() for p in engines["hf"].model.parameters())
    lens = [len(ids) for ids in tok(prompts)["input_ids"]]
    print(f"{name}: {n_params / 1e6:.1f}M parameters, dtype HF {engines['hf'].dtype} / vLLM {engines['vllm'].dtype}; "
          f"{len(prompts)} prompts ({min(lens)}-{max(lens)} tokens) x {args.samples} samples x {args.max_tokens} "
          f"tokens, {len(sp)} scored pairs; torch threads {torch.get_num_threads()}")
    print(f"start-up: HF {start['hf']:.1f} s, vLLM {start['vllm']:.1f} s (import and engine set-up)")
    work_items = {
        "gen": lambda e: e.generate(prompts, n=args.samples, temperature=1.0, max_tokens=args.max_tokens, seed=0),
        "score": lambda e: e.score(sp, sa),
    }
    warm_items = {  # vLLM's first prompt-log-prob call costs ~15 s once; untimed, as are HF's first calls
        "gen": lambda e: e.generate(prompts[:4], n=2, temperature=1.0, max_tokens=4, seed=1),
        "score": lambda e: e.score(sp[:4], sa[:4]),
    }
    best, sample = {}, {}
    for regime, fn in work_items.items():
        warm = timed(lambda: [warm_items[regime](engines[eng]) for eng in ("hf", "vllm")])
        print(f"{regime:>5}: warm-up (4 prompts, both engines, untimed) {warm:.1f} s", flush=True)
        for _ in range(args.rounds):
            for eng in ("hf", "vllm"):
                t0 = time.perf_counter()
                out = fn(engines[eng])
                t = time.perf_counter() - t0
                sample[regime, eng] = out
                best[regime, eng] = min(t, best.get((regime, eng), float("inf")))
        ratio = best[regime, "hf"] / best[regime, "vllm"]
        print(f"{regime:>5}: HF {best[regime, 'hf']:7.2f} s  vLLM {best[regime, 'vllm']:7.2f} s  "
              f"vLLM speed-up {ratio:.2f}x")
    for eng in ("hf", "vllm"):
        print(f"  {eng} sample: {sample['gen', eng][0][:3]}")
    diff = max(abs(a - b) for x, y in zip(sample["score", "hf"], sample["score", "vllm"]) for a, b in zip(x, y))
    print(f"  score: max |HF - vLLM| token log-prob {diff:.2e}; mean answer log-prob HF "
          f"{np.mean([sum(x) for x in sample['score', 'hf']]):.2f}")
    speed = {r: best[r, "hf"] / best[r, "vllm"] for r in work_items}
    print(f"RESULT model={name} prompts={len(prompts)} samples={args.samples} gen_speedup={speed['gen']:.2f} "
          f"score_speedup={speed['score']:.2f} startup_s={start['vllm']:.1f}")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="testbed model (default: train one), or an embedded model's name "
                                                  "(smollm2-135m-instruct): the real-model benchmark")
    ap.add_argument("--data", default=None, help="its knowledge-graph data")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--real", action="store_true", help="the real model (smollm2-135m-instruct unless --model)")
    ap.add_argument("--prompts", type=int, default=256, help="real model: questions to sample")
    ap.add_argument("--samples", type=int, default=8, help="real model: samples per question")
    ap.add_argument("--max-tokens", type=int, default=16, help="real model: tokens per sample")
    ap.add_argument("--pairs", type=int, default=256, help="real model: question/answer pairs to score")
    args = ap.parse_args()
    from posttrain.core.embedded import MODELS

    if args.real or args.model in MODELS:
        return real(args)
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
