"""Evaluation output: ``results.json`` after lm-evaluation-harness's schema, ``samples.jsonl``, ``report.md`` and
PNG plots."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from posttrain.core.errors import UsageError
from posttrain.core.runs import atomic_dir, check_output, git_hash, package_versions, write_json

# the few metrics per suite that fit one screen; the full set is in results.json and report.md
SUMMARY = {
    "qa": ("n", "exact_match", "refusal_rate"),
    "hallucination": ("n", "accuracy", "refusal_rate", "hallucination_rate", "answer_rate", "answered_accuracy",
                      "ap_answer", "ap_sure", "ap_mean", "ece_answer"),
    "forgetting": ("n", "exact_match", "refusal_rate", "rouge_l_recall", "truth_ratio", "forget_quality", "mia_auc",
                   "privleak", "model_utility"),
    "flips": ("n", "candidate_exact_match", "reference_exact_match", "negative_flip_rate", "positive_flip_rate",
              "nf_same_type", "nf_graph_distance"),
    "reasoning": ("n", "mean_correct", "pass@1", "pass@4", "pass@8", "pass@16"),
}


Z = 1.96  # a difference "exceeds its error" when |difference| > Z x its standard error (95%, two-sided)


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; floats with 3 decimals."""
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def cell(result: dict, key: str):
    """A metric's value, as "value ± stderr" where the result has a finite standard error for it."""
    v, se = result.get(key, ""), result.get(f"{key}_stderr")
    return f"{v:.3f} ± {se:.3f}" if isinstance(v, float) and isinstance(se, float) and math.isfinite(se) else v


def metric_keys(results: list[dict], keys=None) -> list[str]:
    """The scalar metrics (stderrs folded into their metric's cell), in order; only ``keys`` when given."""
    found = [k for r in results for k, v in r.items() if isinstance(v, (int, float)) and not k.endswith("_stderr")]
    found = list(dict.fromkeys(found))
    return [k for k in keys if k in found] if keys is not None else found


def split_table(results: dict) -> str:
    """One row per split, one column per scalar metric ("value ± stderr")."""
    keys = metric_keys(list(results.values()))
    return table(["split", *keys], [[s, *(cell(r, k) for k in keys)] for s, r in results.items()])


def popularity_table(by_popularity: list[dict]) -> str:
    """The knowledge curve: accuracy per popularity decile ("value ± stderr")."""
    return table(["decile", "popularity", "n", "accuracy"],
                 [[b["decile"], f"{b['lo']:,.0f}-{b['hi']:,.0f}", b["n"],
                   cell({"m": b["accuracy"], "m_stderr": b["stderr"]}, "m")] for b in by_popularity])


def exposure_table(by_exposure: dict) -> str:
    rows = [[b, v["n"], cell({"m": v["accuracy"], "m_stderr": v["stderr"]}, "m")] for b, v in by_exposure.items()]
    return table(["exposure", "n", "exact_match"], rows)


def summary(results: dict[str, dict]) -> str:
    """One compact table per suite: a row per split, the suite's ``SUMMARY`` metrics that it reported, each as
    "value ± standard error"."""
    parts = []
    for suite, res in results.items():
        keys = metric_keys(list(res.values()), SUMMARY.get(suite, ()))
        parts.append(f"{suite}:\n" + table(["split", *keys], [[s, *(cell(r, k) for k in keys)]
                                                                for s, r in res.items()]))
    return "\n\n".join(parts)


def difference(a: dict, b: dict, key: str) -> tuple[float, float, float] | None:
    """b - a for one metric of two independent evaluations, its standard error sqrt(se_a^2 + se_b^2) and
    z = difference / standard error; None without finite values and standard errors in both."""
    va, vb, sa, sb = a.get(key), b.get(key), a.get(f"{key}_stderr"), b.get(f"{key}_stderr")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (va, vb, sa, sb)):
        return None
    se = math.hypot(sa, sb)
    d = vb - va
    return d, se, (d / se if se > 0 else math.copysign(math.inf, d) if d else 0.0)


def differences(by_suite: dict[str, dict[str, dict]], runs: list[str]) -> str:
    """Each run against the first, per suite, split and summary metric: the difference, its standard error and
    whether |difference| > Z x standard error. The standard error treats the two evaluations as independent; on the
    same items the paired one is usually smaller, so this test errs towards "within error"."""
    rows = []
    for suite, per_run in by_suite.items():
        base = per_run.get(runs[0], {})
        for run in runs[1:]:
            for split, r in per_run.get(run, {}).items():
                if split not in base:
                    continue
                for key in metric_keys([base[split], r], SUMMARY.get(suite)):
                    d = difference(base[split], r, key)
                    if d is not None:
                        rows.append([suite, split, key, run, f"{d[0]:+.3f}", f"{d[1]:.3f}", f"{d[2]:+.1f}",
                                     "yes" if abs(d[2]) > Z else "no"])
    if not rows:
        return ""
    return (f"## differences from {runs[0]}\n\nA difference exceeds its error when |difference| > {Z} x its "
            "standard error (two independent evaluations).\n\n" +
            table(["suite", "split", "metric", "run", "difference", "stderr", "z", f"exceeds {Z} SE"], rows))


def _plot(path: Path, draw, **axes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    draw(ax)
    ax.set(**axes)
    n = len(ax.get_legend_handles_labels()[1])
    if n > 6:  # many runs: the legend beside the axes, not over the points
        fig.set_size_inches(4.5 + 3.5, 4.5)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7)
    else:
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_diagram(path: Path, bins_by_line: dict[str, list[dict]]) -> None:
    """Accuracy against mean confidence per confidence bin, one line per split (or run), with the diagonal."""
    def draw(ax):
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="calibrated")
        for name, bins in bins_by_line.items():
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=name)

    _plot(path, draw, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="reliability")


def decile_curve(path: Path, curves: dict[str, list[dict]], ylabel: str, title: str) -> None:
    """A rate per popularity decile with its standard error (``accuracy_by_decile``'s points: the rate under
    ``accuracy``), one line per split (or run)."""
    def draw(ax):
        for name, bins in curves.items():
            ax.errorbar([b["decile"] for b in bins], [b["accuracy"] for b in bins],
                        yerr=[b["stderr"] for b in bins], marker="o", capsize=3, label=name)

    _plot(path, draw, xlabel="popularity decile (1 = least populous)", ylabel=ylabel, ylim=(0, 1), title=title)


def knowledge_curve(path: Path, curves: dict[str, list[dict]]) -> None:
    """Accuracy per popularity decile with its standard error, one line per split (or run)."""
    decile_curve(path, curves, "accuracy", "knowledge by popularity")


def pass_at_k_curve(path: Path, curves: dict[str, dict[int, float]]) -> None:
    """pass@k against k (log scale), one line per split (or run)."""
    def draw(ax):
        for name, curve in curves.items():
            ax.plot(list(curve), list(curve.values()), marker=".", label=name)
        ax.set_xscale("log", base=2)

    _plot(path, draw, xlabel="k (samples)", ylabel="pass@k", ylim=(0, 1), title="pass@k")


def forget_retain_scatter(path: Path, points: dict[str, tuple[float, float]], metric: str) -> None:
    """Forget-set against retain-set ``metric``, one point per run: lower right is better (forgot, kept the rest)."""
    def draw(ax):
        for i, (name, (retain, forget)) in enumerate(points.items()):
            ax.scatter([retain], [forget], label=name, marker="os^Dv<>P"[i // 10 % 8])  # 10 colours, then a new shape

    _plot(path, draw, xlabel=f"retain {metric}", ylabel=f"forget {metric}", xlim=(0, 1), ylim=(0, 1),
          title="forget vs retain")


def pass_at_k(result: dict) -> dict[int, float]:
    return {int(k.split("@")[1]): v for k, v in result.items() if k.startswith("pass@") and not k.endswith("_stderr")}


def write(out: Path, results: dict[str, dict], samples: dict[str, list[dict]], config: dict, configs: dict,
          higher_is_better: dict, sections: dict[str, tuple[dict, str]] | None = None) -> None:
    """Write results, samples, report and plots of every suite into ``out`` (a directory that exists). ``configs``:
    per suite its version, splits, generation settings and options; ``higher_is_better``: per suite, per metric;
    ``sections``: further top-level keys of ``results.json`` (e.g. ``relearn``), each with its Markdown for the
    report."""
    sections = sections or {}
    doc = {
        "results": {f"{suite}/{split}": r for suite, res in results.items() for split, r in res.items()},
        "configs": configs,
        "versions": {suite: c["version"] for suite, c in configs.items()},
        "higher_is_better": higher_is_better,
        "n-samples": {f"{suite}/{split}": r["n"] for suite, res in results.items() for split, r in res.items()},
        "config": config,
        "engine": config.get("engine"),
        "seeds": {"seed": config.get("seed")},
        "git_hash": git_hash(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_versions": package_versions(),
        **{name: content for name, (content, _) in sections.items()},
    }
    write_json(out / "results.json", doc)
    with open(out / "samples.jsonl", "w") as f:
        for suite, rows in samples.items():
            for s in rows:
                f.write(json.dumps({"suite": suite, **s}) + "\n")
    parts = ["# evaluation", f"model: `{config.get('model')}`  data: `{config.get('data')}`  "
             f"engine: {config.get('engine')}", "", "Each mean is given as value ± standard error (sample standard "
             f"error over items; AP, ECE and AUC by bootstrap over items, {config.get('bootstrap_iters')} resamples)."]
    for suite, res in results.items():
        c = configs[suite]
        parts += ["", f"## {suite} (version {c['version']})", "", f"generation: {json.dumps(c['generation'])}", "",
                  split_table(res)]
        for split, r in res.items():
            if r.get("by_exposure"):
                parts += ["", f"### {split}: exact match by exposure count", "", exposure_table(r["by_exposure"])]
        popular = {split: r["by_popularity"] for split, r in res.items() if r.get("by_popularity")}
        for split, bins in popular.items():
            parts += ["", f"### {split}: accuracy by popularity decile", "", popularity_table(bins)]
        if popular:
            knowledge_curve(out / f"{suite}_popularity.png", popular)
            parts += ["", f"![knowledge by popularity]({suite}_popularity.png)"]
        bins = {split: r["reliability_answer"] for split, r in res.items() if r.get("reliability_answer")}
        if bins:
            reliability_diagram(out / f"{suite}_reliability.png", bins)
            parts += ["", f"![reliability]({suite}_reliability.png)"]
        curves = {split: pass_at_k(r) for split, r in res.items() if pass_at_k(r)}
        if curves:
            pass_at_k_curve(out / f"{suite}_pass_at_k.png", curves)
            parts += ["", f"![pass@k]({suite}_pass_at_k.png)"]
    for name, (_, markdown) in sections.items():
        parts += ["", f"## {name}", "", markdown]
    (out / "report.md").write_text("\n".join(parts) + "\n")


def _load(run: str) -> dict:
    """An eval output's ``results.json`` (``run`` is the file, its directory or a run holding ``eval/``); a one-line
    error unless it is JSON with ``results``: ``suite/split`` -> a dict of metrics."""
    p = Path(run)
    for f in (p / "results.json", p / "eval" / "results.json", p):
        if f.is_file():
            try:
                doc = json.loads(f.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            results = doc.get("results") if isinstance(doc, dict) else None
            if not isinstance(results, dict) or not all(isinstance(k, str) and "/" in k and isinstance(v, dict)
                                                        for k, v in results.items()):
                raise UsageError(f"{f} is not a `posttrain eval` results file (no results by suite/split)")
            return doc
    raise UsageError(f"no eval results (results.json) in {run}")


def forget_split(doc: dict) -> str:
    """The forget split an eval output's forgetting suite ran with (``--forget_split``, in its ``configs``)."""
    configs = doc.get("configs")
    options = configs.get("forgetting", {}).get("options", {}) if isinstance(configs, dict) else {}
    return options.get("forget_split", "forget") if isinstance(options, dict) else "forget"


def labels(runs: list[str]) -> list[str]:
    """Plot labels: the runs' paths without their common leading directories and a trailing ``eval``."""
    parts = [[p for p in Path(r).parts if p] for r in runs]
    parts = [p[:-1] if len(p) > 1 and p[-1] == "eval" else p for p in parts]
    common = 0
    while len(runs) > 1 and all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ["/".join(p[common:]) for p in parts]


def compare(runs: list[str], output: str, overwrite: bool = False) -> str:
    """``posttrain report``: several eval outputs side by side — one table per suite (a row per run and split, the
    suite's summary metrics with standard errors), each run's differences from the first with whether they exceed
    their error, and overlaid plots (forget vs retain, pass@k, reliability). Returns the text. An existing
    ``output`` is replaced only with ``overwrite``."""
    check_output(output, overwrite)
    docs = {run: _load(run) for run in runs}
    by_suite: dict[str, dict[str, dict]] = {}
    for run, doc in docs.items():
        for key, r in doc["results"].items():
            suite, split = key.split("/", 1)
            by_suite.setdefault(suite, {}).setdefault(run, {})[split] = r
    parts = []
    for suite, per_run in by_suite.items():
        keys = metric_keys([r for res in per_run.values() for r in res.values()], SUMMARY.get(suite, ("n",)))
        rows = [[run, split, *(cell(r, k) for k in keys)] for run, res in per_run.items() for split, r in res.items()]
        parts.append(f"## {suite}\n\n" + table(["run", "split", *keys], rows))
    if len(runs) > 1 and (diff := differences(by_suite, list(runs))):
        parts.append(diff)
    with atomic_dir(output) as tmp:
        forgetting, per_run = {}, by_suite.get("forgetting", {})
        for label, (run, res) in zip(labels(list(per_run)), per_run.items()):
            points = [res.get(s, {}).get("exact_match") for s in ("retain", forget_split(docs[run]))]
            if all(isinstance(v, (int, float)) for v in points):
                forgetting[label] = tuple(points)
        if forgetting:
            forget_retain_scatter(tmp / "forget_vs_retain.png", forgetting, "exact match")
            parts.append("![forget vs retain](forget_vs_retain.png)")
        curves = {f"{run} {split}": pass_at_k(r) for run, res in by_suite.get("reasoning", {}).items()
                  for split, r in res.items() if pass_at_k(r)}
        if curves:
            pass_at_k_curve(tmp / "pass_at_k.png", curves)
            parts.append("![pass@k](pass_at_k.png)")
        bins = {run: b for run, res in by_suite.get("hallucination", {}).items()
                if (b := (res.get("all") or next(iter(res.values()))).get("reliability_answer"))}
        if bins:
            reliability_diagram(tmp / "reliability.png", bins)
            parts.append("![reliability](reliability.png)")
        text = "# eval comparison\n\n" + "\n\n".join(parts) + "\n"
        (tmp / "report.md").write_text(text)
        write_json(tmp / "runs.json", {"runs": list(runs)})
    return text
