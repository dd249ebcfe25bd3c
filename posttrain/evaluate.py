"""``posttrain eval``: one engine for the whole run, each suite over the chosen splits, reports on disk."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.evals import hallucination, qa, report
from posttrain.evals.engines import make_engine
from posttrain.runs import atomic_dir
from posttrain.train import load_data, split

SUITES = {"qa": qa, "hallucination": hallucination}
DEFAULT_SPLITS = ("seen", "unseen", "forget", "boundary", "retain")


def check_model(path: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise UsageError(f"not a model directory (no config.json): {path}")


def run_eval(model: str, data: str, suites: list[str] = ("qa",), splits: list[str] | None = None,
             limit: int | None = None, engine: str = "auto", output: str | None = None,
             batch_size: int = 128) -> tuple[Path, dict]:
    """Evaluate ``model`` on ``suites`` x ``splits`` with one engine; results per suite and split."""
    for suite in suites:
        if suite not in SUITES:
            raise UsageError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
    check_model(model)
    dd = load_data(data)
    splits = list(splits or [s for s in DEFAULT_SPLITS if s in dd])
    columns = sorted({c for suite in suites for c in SUITES[suite].COLUMNS})
    for s in splits:
        if len(split(dd, s, columns)) == 0:
            raise UsageError(f"split {s!r} is empty")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    out = Path(output or Path(model) / "eval")
    start = time.time()
    eng = make_engine(engine, model, batch_size=batch_size)
    results, samples = {}, {}
    for suite in suites:
        results[suite], samples[suite] = SUITES[suite].evaluate(eng, dd, splits, limit=limit)
    config = {"model": model, "data": data, "suites": list(suites), "splits": splits, "limit": limit,
              "engine": eng.name, "command": sys.argv, "wall_time_s": round(time.time() - start, 3)}
    with atomic_dir(out) as tmp:
        report.write(tmp, results, samples, config)
    return out, results
