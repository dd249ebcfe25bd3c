"""Inference engines behind one protocol: ``generate`` (n samples per prompt) and ``score`` (per-token log-probs).

``HFEngine`` is batched ``transformers`` generation, the reference every other engine is checked against.
A LoRA adapter is served without merging: it is loaded once per path and switched on per call.
"""

from __future__ import annotations

from typing import Protocol

import torch

from posttrain import modeling


class Engine(Protocol):
    def generate(self, prompts: list[str], n: int = 1, temperature: float = 0.0, max_tokens: int = 32,
                 seed: int = 0, adapter: str | None = None) -> list[list[str]]: ...

    def score(self, prompts: list[str], continuations: list[str], adapter: str | None = None) -> list[list[float]]:
        ...


def _batches(order: list[int], size: int):
    for i in range(0, len(order), size):
        yield order[i:i + size]


class HFEngine:
    """Batched HF inference. Prompts are sorted by length and left-padded, so a batch wastes little padding."""

    name = "hf"

    def __init__(self, model: str, dtype: str = "float32", batch_size: int = 128, trust_remote_code: bool = False):
        self.tok = modeling.load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model = modeling.load_model(model, dtype, trust_remote_code=trust_remote_code).eval()
        self.batch_size = batch_size
        self._adapters: dict[str, str] = {}

    def _use(self, adapter: str | None) -> None:
        if adapter is None:
            if self._adapters:
                self.model.disable_adapters()
            return
        if adapter not in self._adapters:
            name = f"adapter{len(self._adapters)}"
            self.model.load_adapter(adapter, adapter_name=name)
            self._adapters[adapter] = name
        self.model.set_adapter(self._adapters[adapter])
        self.model.enable_adapters()

    def _encode(self, texts: list[str], side: str):
        self.tok.padding_side = side
        return self.tok(texts, return_tensors="pt", padding=True)

    @torch.inference_mode()
    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, seed=0, adapter=None):
        self._use(adapter)
        out: list[list[str]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        gen = torch.Generator().manual_seed(seed)
        sample = temperature > 0
        for idx in _batches(order, max(1, self.batch_size // n)):
            enc = self._encode([prompts[i] for i in idx], "left")
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            seqs = self.model.generate(
                **enc, max_new_tokens=max_tokens, do_sample=sample, temperature=temperature if sample else None,
                top_p=None, top_k=None, num_return_sequences=n if sample else 1,
                pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
            )
            texts = self.tok.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            per = n if sample else 1
            for j, i in enumerate(idx):
                got = [t.strip() for t in texts[j * per:(j + 1) * per]]
                out[i] = got if sample else got * n
        return out

    @torch.inference_mode()
    def score(self, prompts, continuations, adapter=None):
        """log p(token | prefix) for each continuation token (the prompt/continuation boundary is where the
        tokenisations of the prompt and of prompt + continuation diverge)."""
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations differ in length")
        self._use(adapter)
        out: list[list[float]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
        for idx in _batches(order, self.batch_size):
            full = [prompts[i] + continuations[i] for i in idx]
            enc = self._encode(full, "right")
            starts = [_common_prefix(self.tok(prompts[i])["input_ids"], ids)
                      for i, ids in zip(idx, self.tok(full)["input_ids"])]
            logp = torch.log_softmax(self.model(**enc).logits.float(), dim=-1)
            token_logp = logp[:, :-1].gather(-1, enc["input_ids"][:, 1:, None])[..., 0]
            for j, i in enumerate(idx):
                end = int(enc["attention_mask"][j].sum())
                out[i] = token_logp[j, starts[j] - 1:end - 1].tolist()
        return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


ENGINES = {"hf": HFEngine}


def make_engine(kind: str, model: str, **kwargs) -> Engine:
    """``auto`` picks the fastest engine installed (vLLM lands in a later release; today that is ``hf``)."""
    kind = "hf" if kind == "auto" else kind
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}; available: auto, {', '.join(ENGINES)}")
    return ENGINES[kind](model, **kwargs)
