"""``HFEngine``: batched ``transformers`` inference, the reference engine."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, StoppingCriteria

from posttrain.core import modeling
from posttrain.core.answers import cut_at_stop
from posttrain.core.progress import bar
from posttrain.evals.engine_base import (batches, checkpoint_dtype, common_prefix, default_device, empty_prompt,
                                         groups_by_adapter, resolve_dtype)

SCORE_CHUNK_BYTES = 1 << 28  # fp32 log-softmax computed at most this many bytes at a time


def end_tokens(generation_eos, tokenizer_eos) -> list[int]:
    """Every token that ends an answer: the generation config's (a chat model's end-of-turn, often several) and the
    tokenizer's eos, as vLLM stops on both."""
    ids = generation_eos if isinstance(generation_eos, list) else [generation_eos]
    return list(dict.fromkeys(i for i in [*ids, tokenizer_eos] if i is not None))


class HFEngine:
    """Batched HF inference. Prompts are sorted by length and left-padded, so a batch wastes little padding.

    ``device`` None: cuda when available, else cpu. ``dtype``: ``resolve_dtype(dtype, device, checkpoint dtype)``.
    """

    name = "hf"

    def __init__(self, model: str, dtype: str | None = None, batch_size: int = 128, adapters: list[str] = (),
                 trust_remote_code: bool = False, progress: bool = False, device: str | None = None, **_):
        self.device = device or default_device()
        self.dtype = resolve_dtype(dtype, self.device, checkpoint_dtype(model, trust_remote_code))
        self.tok = modeling.load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model = modeling.load_model(model, self.dtype, trust_remote_code=trust_remote_code).to(self.device).eval()
        self.batch_size, self.progress = batch_size, progress
        self.eos = end_tokens(self.model.generation_config.eos_token_id, self.tok.eos_token_id)
        self._adapters: dict[str, str] = {}
        for a in adapters:
            self._use(a)

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
        return self.tok(texts, return_tensors="pt", padding=True).to(self.device)

    @torch.inference_mode()
    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, seed=0, adapter=None, stop=()):
        """``n`` completions per prompt, each cut after its first stop string and stripped. Greedy (temperature 0)
        decodes each prompt once; sampling expands prompt i to n rows, and row (i, j) draws its tokens with its own
        generator seeded from (seed, i, j) (``RowSampler``), so samples do not depend on batching."""
        sample = temperature > 0
        rows = [(i, j) for i in range(len(prompts)) for j in range(n if sample else 1)]
        texts: dict[tuple[int, int], str] = {}
        for ad, group in groups_by_adapter(adapter, len(prompts)):
            self._use(ad)
            members = set(group)
            mine = sorted((r for r in rows if r[0] in members), key=lambda r: len(prompts[r[0]]))
            for idx in bar(list(batches(mine, self.batch_size)), self.progress, desc="generate", unit="batch",
                           leave=False):
                enc = self._encode([prompts[i] for i, _ in idx], "left")
                empty = (enc["attention_mask"].sum(-1) == 0).nonzero()
                if len(empty):  # a prompt of no tokens: all padding
                    raise empty_prompt(idx[int(empty[0])][0])
                width = enc["input_ids"].shape[1]
                seqs = self.model.generate(
                    **enc, max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                    logits_processor=[RowSampler(temperature, [seed * 1_000_003 + i for i, _ in idx],
                                                 [j for _, j in idx])] if sample else None,
                    stopping_criteria=[StopStrings(self.tok, stop, width)] if stop else None,
                    pad_token_id=self.tok.pad_token_id, eos_token_id=self.eos,
                )
                for r, t in zip(idx, self.tok.batch_decode(seqs[:, width:], skip_special_tokens=True)):
                    texts[r] = cut_at_stop(t, stop).strip()
        return [[texts[i, j] for j in range(n)] if sample else [texts[i, 0]] * n for i in range(len(prompts))]

    @torch.inference_mode()
    def score(self, prompts, continuations, adapter=None):
        """log p(token | prefix) for each continuation token (the prompt/continuation boundary is where the
        tokenisations of the prompt and of prompt + continuation diverge)."""
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations differ in length")
        out: list[list[float]] = [[] for _ in prompts]
        for ad, group in groups_by_adapter(adapter, len(prompts)):
            self._use(ad)
            self._score(prompts, continuations, sorted(group, key=lambda i: len(prompts[i]) + len(continuations[i])),
                        out)
        return out

    def _score(self, prompts, continuations, order, out):
        """Left-padded batches (positions count real tokens only: cumsum(mask) - 1) with logits for the last K + 1
        positions, K the longest continuation; log-softmax over the vocabulary in row chunks of at most
        ``SCORE_CHUNK_BYTES`` of fp32. A continuation of c tokens is the last c of the K scored positions (the first
        token of a text, having no prefix, is never scored)."""
        for idx in bar(list(batches(order, self.batch_size)), self.progress, desc="score", unit="batch",
                       leave=False):
            full = [prompts[i] + continuations[i] for i in idx]
            ids = self.tok(full)["input_ids"]
            prompt_tokens = [self.tok(prompts[i])["input_ids"] for i in idx]
            if (i := next((i for i, p in zip(idx, prompt_tokens) if not p), None)) is not None:
                raise empty_prompt(i)
            lens = [len(f) - max(1, common_prefix(p, f)) for p, f in zip(prompt_tokens, ids)]
            k = max(1, *lens)
            enc = self._encode(full, "left")
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = self.model(**enc, position_ids=pos, logits_to_keep=k + 1).logits[:, :-1]
            targets = enc["input_ids"][:, enc["input_ids"].shape[1] - k:, None]
            rows = max(1, SCORE_CHUNK_BYTES // (k * logits.shape[-1] * 4))
            token_logp = torch.cat([torch.log_softmax(logits[r:r + rows].float(), -1).gather(-1, targets[r:r + rows])
                                    for r in range(0, len(idx), rows)])[..., 0].cpu()
            for j, i in enumerate(idx):
                out[i] = token_logp[j, k - lens[j]:].tolist()


class RowSampler(LogitsProcessor):
    """Temperature sampling, one generator per row: row r draws u ~ U[0, 1) from its generator, seeded
    ``(seeds[r] * 1_000_003 + samples[r]) mod 2**63``, and takes the first token whose cumulative probability
    (softmax(scores / temperature)) exceeds u times the total (1 up to rounding). Returns 0 for that token and -inf
    elsewhere, so greedy decoding emits it. One draw per row per step: a row's tokens depend on its seed and its
    own logits only."""

    def __init__(self, temperature: float, seeds: list[int], samples: list[int]):
        self.temperature = temperature
        self.gens = [torch.Generator().manual_seed((s * 1_000_003 + j) % 2**63) for s, j in zip(seeds, samples)]

    def __call__(self, input_ids, scores):
        cdf = torch.softmax(scores.float() / self.temperature, -1).cumsum(-1)
        u = torch.cat([torch.rand(1, generator=g) for g in self.gens]).to(scores.device)
        token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
        return torch.full_like(scores, -torch.inf).scatter_(1, token, 0.0)


class StopStrings(StoppingCriteria):
    """Stops a row once its generated text (tokens after column ``start``, decoded) contains a stop string."""

    def __init__(self, tok, stop, start: int):
        self.tok, self.stop, self.start = tok, stop, start

    def __call__(self, input_ids, scores, **_):
        texts = self.tok.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop if s) for t in texts], device=input_ids.device)


Engine = HFEngine  # the name the engine registry (engines.ENGINES) loads
