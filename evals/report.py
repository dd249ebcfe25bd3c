"""Evaluation output: ``results.json`` after lm-evaluation-harness's schema, ``samples.jsonl``, ``report.md`` and
PNG plots."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from posttrain.runs import git_hash, package_versions, write_json


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; floats with 3 decimals."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def split_table(results: dict) -> str:
    """One row per split, one column per scalar metric."""
    keys = [k for k, v in next(iter(results.values())).items() if isinstance(v, (int, float))]
    return table(["split", *keys], [[s, *(r[k] for k in keys)] for s, r in results.items()])


def exposure_table(by_exposure: dict) -> str:
    return table(["exposure", "n", "exact_match"], [[b, v["n"], v["accuracy"]] for b, v in by_exposure.items()])


def reliability_diagram(path: Path, bins_by_split: dict[str, list[dict]]) -> None:
    """Accuracy against mean confidence per confidence bin, one line per split, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="calibrated")
    for split, bins in bins_by_split.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=split)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, results: dict[str, dict], samples: dict[str, list[dict]], config: dict) -> None:
    """Write results, samples, report and plots of every suite into ``out`` (a directory that exists)."""
    doc = {
        "results": {f"{suite}/{split}": r for suite, res in results.items() for split, r in res.items()},
        "configs": {suite: {"splits": list(res), "generation": {"temperature": 0.0, "n": 1}}
                    for suite, res in results.items()},
        "versions": {suite: 1 for suite in results},
        "n-samples": {f"{suite}/{split}": r["n"] for suite, res in results.items() for split, r in res.items()},
        "config": config,
        "git_hash": git_hash(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_versions": package_versions(),
    }
    write_json(out / "results.json", doc)
    with open(out / "samples.jsonl", "w") as f:
        for suite, rows in samples.items():
            for s in rows:
                f.write(json.dumps({"suite": suite, **s}) + "\n")
    parts = [f"# evaluation", f"model: `{config.get('model')}`  data: `{config.get('data')}`  "
             f"engine: {config.get('engine')}"]
    for suite, res in results.items():
        parts += ["", f"## {suite}", "", split_table(res)]
        for split, r in res.items():
            if r.get("by_exposure"):
                parts += ["", f"### {split}: exact match by exposure count", "", exposure_table(r["by_exposure"])]
        bins = {split: r["reliability_answer"] for split, r in res.items() if r.get("reliability_answer")}
        if bins:
            reliability_diagram(out / f"{suite}_reliability.png", bins)
            parts += ["", f"![reliability]({suite}_reliability.png)"]
    (out / "report.md").write_text("\n".join(parts) + "\n")
