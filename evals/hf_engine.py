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
        return [v[:, 0].tolist() for v in self._per_token(prompts, continuations, adapter, token_logprobs)]

    @torch.inference_mode()
    def token_stats(self, prompts, continuations, adapter=None):
        """Per continuation, over the tokens ``score`` scores (from the same forward pass): ``logprobs``, ``argmax``
        (the token is the first argmax of p, as ``torch.argmax``), ``mean`` and ``std`` of log p under p
        (``vocab_stats``)."""
        return [{"logprobs": v[:, 0].tolist(), "argmax": v[:, 1].bool().tolist(), "mean": v[:, 2].tolist(),
                 "std": v[:, 3].tolist()} for v in self._per_token(prompts, continuations, adapter, vocab_stats)]

    def _per_token(self, prompts, continuations, adapter, stats) -> list[torch.Tensor]:
        """Per continuation, a (tokens, m) tensor of ``stats`` of its tokens, batched by adapter."""
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations differ in length")
        out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        for ad, group in groups_by_adapter(adapter, len(prompts)):
            self._use(ad)
            self._score(prompts, continuations, sorted(group, key=lambda i: len(prompts[i]) + len(continuations[i])),
                        out, stats)
        return out

    def _score(self, prompts, continuations, order, out, stats):
        """Left-padded batches (positions count real tokens only: cumsum(mask) - 1) with logits for the last K + 1
        positions, K the longest continuation; log-softmax over the vocabulary in row chunks of at most
        ``SCORE_CHUNK_BYTES`` of fp32, each reduced by ``stats(log_softmax, targets)`` to (rows, K, m) values. A
        continuation of c tokens is the last c of the K scored positions (the first token of a text, having no
        prefix, is never scored)."""
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
            values = torch.cat([stats(torch.log_softmax(logits[r:r + rows].float(), -1), targets[r:r + rows])
                                for r in range(0, len(idx), rows)]).cpu()
            for j, i in enumerate(idx):
                out[i] = values[j, k - lens[j]:]

    def grad_norms(self, prompts, continuations, adapter=None) -> list[list[float]]:
        """Per continuation, ||dL/dw_j||_2 for each parameter w_j that gets a gradient, L = -mean_t log p(x_t |
        x_<t) over the tokens ``score`` scores, one sample per backward pass (open-unlearning's GradNorm attack,
        ``src/evals/metrics/mia/gradnorm.py``, whose score is the mean of these). The parameters: all of the base
        model, or an adapter's own LoRA weights when one is served (those PEFT trains, the base frozen). Unlike
        open-unlearning the model stays in eval mode (no dropout: deterministic; Llama-family models have none);
        nothing is left behind: no ``.grad``, every ``requires_grad`` as it was."""
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations differ in length")
        out: list[list[float]] = [[] for _ in prompts]
        flags = {w: w.requires_grad for w in self.model.parameters()}
        try:
            for ad, group in groups_by_adapter(adapter, len(prompts)):
                self._use(ad)
                own = None if ad is None else f".{self._adapters[ad]}."
                weights = [w for n, w in self.model.named_parameters() if own is None or own in f".{n}."]
                for w in flags:
                    w.requires_grad_(False)
                for w in weights:
                    w.requires_grad_(True)
                for i in group:
                    out[i] = self._grad_norms(prompts[i], continuations[i], i, weights)
        finally:
            for w, flag in flags.items():
                w.requires_grad_(flag)
        return out

    def _grad_norms(self, prompt: str, continuation: str, i: int, weights) -> list[float]:
        ids = self.tok(prompt + continuation)["input_ids"]
        prompt_tokens = self.tok(prompt)["input_ids"]
        if not prompt_tokens:
            raise empty_prompt(i)
        start = max(1, common_prefix(prompt_tokens, ids))
        with torch.enable_grad():
            logits = self.model(torch.tensor([ids], device=self.device)).logits[0, start - 1:-1].float()
            targets = torch.tensor(ids[start:], device=self.device)[:, None]
            loss = -torch.log_softmax(logits, -1).gather(-1, targets).mean()
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
        return [g.norm(2).item() for g in grads if g is not None]


def token_logprobs(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(x_t) per position: (rows, K, 1) from log-probs (rows, K, V) and targets (rows, K, 1)."""
    return logp.gather(-1, targets)


def vocab_stats(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per position (rows, K, 4): log p(x_t), 1[x_t = argmax_v p(v)], mu_t = sum_v p(v) log p(v) and sigma_t =
    sqrt(max(0, sum_v p(v) log^2 p(v) - mu_t^2)) (0 log 0 = 0), Min-K%++'s moments (open-unlearning
    ``mia/min_k_plus_plus.py``)."""
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, 0.0)
    mu = plogp.sum(-1)
    var = torch.where(p > 0, plogp * logp, 0.0).sum(-1) - mu.square()
    best = (logp.argmax(-1) == targets[..., 0]).float()
    return torch.stack([logp.gather(-1, targets)[..., 0], best, mu, var.clamp(min=0).sqrt()], -1)


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
