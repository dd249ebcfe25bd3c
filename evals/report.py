"""Evaluation output: ``results.json`` after lm-evaluation-harness's schema, ``samples.jsonl`` and ``report.md``."""

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
    rows = [[s, r["n"], r["exact_match"], r["refusal_rate"]] for s, r in results.items()]
    return table(["split", "n", "exact_match", "refusal_rate"], rows)


def exposure_table(by_exposure: dict) -> str:
    return table(["exposure", "n", "exact_match"], [[b, v["n"], v["accuracy"]] for b, v in by_exposure.items()])


def write(out: Path, suite: str, results: dict, samples: list[dict], config: dict) -> None:
    """Write the three files into ``out`` (a directory that exists)."""
    doc = {
        "results": {f"{suite}/{split}": r for split, r in results.items()},
        "configs": {suite: {"splits": list(results), "generation": {"temperature": 0.0, "n": 1}}},
        "versions": {suite: 1},
        "n-samples": {f"{suite}/{split}": r["n"] for split, r in results.items()},
        "config": config,
        "git_hash": git_hash(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_versions": package_versions(),
    }
    write_json(out / "results.json", doc)
    with open(out / "samples.jsonl", "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    parts = [f"# {suite} evaluation", f"model: `{config.get('model')}`  data: `{config.get('data')}`  "
             f"engine: {config.get('engine')}", "", split_table(results)]
    for split, r in results.items():
        if r.get("by_exposure"):
            parts += ["", f"## {split}: exact match by exposure count", "", exposure_table(r["by_exposure"])]
    (out / "report.md").write_text("\n".join(parts) + "\n")
