"""``posttrain demo``: the whole loop on the embedded testbed — generate the knowledge graph, train the base model
from scratch, evaluate it, and compare it with the simulated experts whose corpus it was trained on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from datasets import load_from_disk

from posttrain.core.embedded import resolve_name
from posttrain.data_gen import kg
from posttrain.evals import metrics, report
from posttrain.evals.common import FREQUENT
from posttrain.evaluate import run_eval
from posttrain.gen import gen
from posttrain.train import train


def expert_accuracy(data: Path, split: str = "seen", seed: int = 0) -> list[dict]:
    """Each simulated expert answering every question of ``split`` once (declining outside its coverage):
    its accuracy overall, on the facts it covers, and on the frequently seen facts it covers."""
    cfg = kg.Config(**json.loads((data / "manifest.json").read_text())["config"])
    rows = list(load_from_disk(str(data))[split])
    rng = np.random.default_rng(seed)
    out = []
    for e in range(cfg.n_experts):
        correct = [kg.expert_answer(cfg, e, r, rng) == r["answer"] for r in rows]
        covered = [i for i, r in enumerate(rows) if e in r["experts"]]
        frequent = [i for i in covered if rows[i]["exposure"] >= FREQUENT]
        out.append({"expert": e, "accuracy": metrics.mean(correct), "covered": covered, "frequent": frequent,
                    "covered_accuracy": metrics.mean([correct[i] for i in covered]),
                    "frequent_accuracy": metrics.mean([correct[i] for i in frequent])})
    return out


def demo(out: str = "runs/demo", seed: int = 0) -> dict:
    """Gen, train and eval into ``out``; a rerun replaces the previous demo's outputs there."""
    out = Path(out)
    t0 = time.time()
    data = gen("kg", out / "data", ["--seed", str(seed)], overwrite=True)
    t1 = time.time()
    run = train("testbed/base.yaml", ["--dataset_path", str(data), "--output_dir", str(out / "base"),
                                      "--seed", str(seed), "--logging_steps", "250", "--overwrite_output_dir", "true"],
                command=["posttrain", "demo"])
    t2 = time.time()
    _, results, samples = run_eval(str(run), str(data), overwrite=True)
    results = results["qa"]
    t3 = time.time()
    seen_ok = [s["exact_match"] for s in samples["qa"] if s["split"] == "seen"]
    experts = expert_accuracy(data, seed=seed)
    best = max(experts, key=lambda x: x["accuracy"])
    model_on = {k: metrics.mean([seen_ok[i] for i in best[k]]) for k in ("covered", "frequent")}

    seen = results["seen"]
    print("\nper split (greedy exact match):")
    print(report.split_table(results))
    print(f"\nseen facts by exposure count (corpus occurrences; frequent = at least {FREQUENT}):")
    print(report.exposure_table(seen["by_exposure"]))
    print("\nsimulated experts on the seen split (each declines outside its coverage):")
    print(report.table(["expert", "accuracy", "covered", "accuracy on covered", "on frequent covered"],
                       [[e["expert"], e["accuracy"], len(e["covered"]), e["covered_accuracy"], e["frequent_accuracy"]]
                        for e in experts]))
    print(f"\nbest expert {best['expert']}: {best['accuracy']:.3f} on all seen facts, "
          f"{best['covered_accuracy']:.3f} on the {len(best['covered'])} it covers, "
          f"{best['frequent_accuracy']:.3f} on the {len(best['frequent'])} frequent ones among them; the model: "
          f"{seen['exact_match']:.3f}, {model_on['covered']:.3f}, {model_on['frequent']:.3f}")
    print(f"time: gen {t1 - t0:.0f}s, train {t2 - t1:.0f}s, eval {t3 - t2:.0f}s; outputs in {out}/")
    summary = {"frequent_acc": seen["frequent_exact_match"], "seen_acc": seen["exact_match"],
               "unseen_acc": results["unseen"]["exact_match"], "best_expert_acc": best["accuracy"]}
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in summary.items()))
    return summary


def world_demo(model: str, out: str = "runs/demo-world", seed: int = 0, limit: int = 200) -> dict:
    """A real model's knowledge curve: fetch ``model`` (an embedded name or a model directory), ``gen world``, and
    the hallucination suite on ``limit`` questions of its in-domain test split (capitals and cities' countries
    of every popularity), through the chat template; prints accuracy by popularity decile, AP and ECE."""
    out = Path(out)
    t0 = time.time()
    path = resolve_name(model)
    data = gen("world", out / "data", ["--seed", str(seed)], overwrite=True)
    t1 = time.time()
    _, results, _ = run_eval(path, str(data), ["hallucination"], ["test"], limit=limit, output=str(out / "eval"),
                             batch_size=32, seed=seed, overwrite=True)
    t2 = time.time()
    r = results["hallucination"]["test"]
    print(f"\n{model} on {r['n']} world questions (chat template, greedy, answers judged by `contains`):")
    print(report.popularity_table(r["by_popularity"]))
    print(report.table(["metric", "value"], [[k, report.cell(r, k)] for k in (
        "accuracy", "empty_rate", "refusal_rate", "hallucination_rate", "ap_answer", "ap_answer_min", "ece_answer")]))
    print(f"time: fetch + gen {t1 - t0:.0f}s, eval {t2 - t1:.0f}s; report and plot in {out / 'eval'}/")
    bins = r["by_popularity"]
    summary = {"n": r["n"], "accuracy": r["accuracy"], "top_decile": bins[-1]["accuracy"],
               "bottom_decile": bins[0]["accuracy"], "ap_answer": r["ap_answer"], "ece_answer": r["ece_answer"]}
    print("RESULT " + " ".join(f"{k}={v}" if isinstance(v, int) else f"{k}={v:.3f}" for k, v in summary.items()))
    return summary
