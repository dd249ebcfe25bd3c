"""``HFEngine``: batched ``transformers`` inference, the reference engine."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from posttrain import modeling
from posttrain.evals.engines import batches, common_prefix, groups_by_adapter


class HFEngine:
    """Batched HF inference. Prompts are sorted by length and left-padded, so a batch wastes little padding."""

    name = "hf"

    def __init__(self, model: str, dtype: str = "float32", batch_size: int = 128, adapters: list[str] = (),
                 trust_remote_code: bool = False, progress: bool = False, **_):
        self.tok = modeling.load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model = modeling.load_model(model, dtype, trust_remote_code=trust_remote_code).eval()
        self.batch_size, self.progress = batch_size, progress
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
        return self.tok(texts, return_tensors="pt", padding=True)

    @torch.inference_mode()
    def generate(self, prompts, n=1, temperature=0.0, max_tokens=32, seed=0, adapter=None):
        out: list[list[str]] = [[] for _ in prompts]
        gen = torch.Generator().manual_seed(seed)
        for ad, group in groups_by_adapter(adapter, len(prompts)):
            self._use(ad)
            self._generate(prompts, sorted(group, key=lambda i: len(prompts[i])), out, n, temperature, max_tokens,
                           gen)
        return out

    def _generate(self, prompts, order, out, n, temperature, max_tokens, gen):
        sample = temperature > 0
        chunks = list(batches(order, max(1, self.batch_size // n)))
        for idx in tqdm(chunks, desc="generate", unit="batch", leave=False, disable=not self.progress):
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
        chunks = list(batches(order, self.batch_size))
        for idx in tqdm(chunks, desc="score", unit="batch", leave=False, disable=not self.progress):
            full = [prompts[i] + continuations[i] for i in idx]
            enc = self._encode(full, "right")
            starts = [common_prefix(self.tok(prompts[i])["input_ids"], ids)
                      for i, ids in zip(idx, self.tok(full)["input_ids"])]
            logp = torch.log_softmax(self.model(**enc).logits.float(), dim=-1)
            token_logp = logp[:, :-1].gather(-1, enc["input_ids"][:, 1:, None])[..., 0]
            for j, i in enumerate(idx):
                end = int(enc["attention_mask"][j].sum())
                out[i] = token_logp[j, starts[j] - 1:end - 1].tolist()
