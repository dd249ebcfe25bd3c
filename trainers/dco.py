"""DCO: Direct Coverage Optimization, a confidence-limited loss for pass@N (Chen, Raventós, Cheng, Ganguli,
Druckmann; arXiv 2502.07154; METHODS.md §4).

pass@N succeeds on a problem when any of N independent samples is correct; with p the model's probability of the
correct answer that is 1 − (1 − p)^N, and DCO minimises its negative log per training problem:

    ℓ_N = −log(1 − (1 − p)^N),   ∇ℓ_N = F(N, p) · ∇ℓ_CE,   F(N, p) = N (1 − p)^(N−1) p / (1 − (1 − p)^N)

with ℓ_CE = −log p the sequence-level cross-entropy (ℓ_1 = ℓ_CE, F(1, p) = 1). F falls from 1 (p → 0) towards 0
once p ≳ 1/N: problems the model already solves with N tries stop pulling its confidence up, which CE keeps doing
(the paper's cause of pass@N falling with longer CE training).

``p_estimate: sequence`` (the paper's direct-answer DCO): p = exp(s), s = Σ_t log p(y_t | x, y_<t) over the
completion's tokens (the answer given the problem; with one correct answer string, exactly what pass@N samples).
The loss is computed in float64 in log space (s too: ``base.answer_logps``) — log(1 − e^x) by the two-branch
log1mexp, s capped just below 0 (a float32 log-softmax can round a sure token to log p = 0), and ℓ_N = −log N − s
where N·p < e^−40 (there 1 − (1 − p)^N = N·p to float64 precision; the other branch is fed a harmless value so its
gradient is never inf).

``p_estimate: sampled`` (the paper's DCO_a, for worked solutions, where p — a sum over every trace that reaches the
answer — has no closed form): before each step, ``p_samples`` completions are sampled per problem from the model
being trained (temperature ``sample_temperature``) and p̂ = the fraction that ``verifier(sample, gold completion)``
accepts; the loss is F(N, p̂) · ℓ_CE(gold trace), F detached (F(N, 0) = 1, F(N, 1) = 0 for N > 1).

What differs from posttrain's ``SFTTrainer``: ``compute_loss`` (one loss per sequence, averaged over the batch,
as the authors' code; SFT averages over tokens); the Trainer divides it by the gradient-accumulation steps. The
loss's p includes the EOS token TRL appends (the model learns to stop); for conversational rows (chat messages,
through the tokenizer's chat template as TRL's SFT does it) p is that of the assistant turn's tokens, its
end-of-turn included. With eval splits, evaluation reports ``exact_pass@k`` for k in ``eval_pass_at`` (so pass@k
can be followed over training, ``eval_strategy: steps``): the mean over problems of 1 − (1 − p)^k, p the probability
of the gold completion without its EOS (and what a chat template writes after it) — pass@k itself for
direct answers, a lower bound for worked solutions (other traces may reach the answer). Logged per step:
``dco/logp`` (mean s), ``dco/weight`` (mean F), ``dco/nll``, ``dco/p_hat`` (sampled) and ``mean_token_accuracy``.
``n: 1`` is sequence-level CE, the paper's baseline.

Rejected, because they would misapply it: N < 1; ``completion_only_loss: false`` (p would include the prompt);
packing and padding-free batches (one row would hold several problems); the Liger kernel (no logits); a
``max_length`` that cuts an answer; ``p_samples`` < 1. Left out: the authors' replacement of examples whose F falls
below a threshold by other examples (to keep the effective batch size; the threshold is unpublished), their Padé
form of F for small N·p (not needed in log space) and DCO_step, the per-step variant for proof search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import import_module

import numpy as np
import torch

from posttrain.core.errors import ConfigError
from posttrain.trainers.base import answer_logps, check_max_length
from posttrain.trainers.sft import SFTConfig, SFTTrainer, prepare

__all__ = ["DCOConfig", "DCOTrainer", "coverage_weight", "dco_loss", "log1mexp", "prepare"]

ESTIMATES = ("sequence", "sampled")
TINY = -40.0  # s + log N below this: 1 − (1 − p)^N = N·p in float64


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − e^x) for x < 0: log(−expm1(x)) near 0, log1p(−e^x) below −log 2 (Mächler 2012). Each branch is fed
    −1 where the other is taken, so neither puts an inf into the gradient."""
    near = x > -math.log(2)
    one = torch.full_like(x, -1.0)
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, x, one))),
                       torch.log1p(-torch.exp(torch.where(near, one, x))))


def dco_loss(logp: torch.Tensor, n: int) -> torch.Tensor:
    """ℓ_N = −log(1 − (1 − p)^N) per sequence, from s = log p, in float64 (see the module docstring)."""
    s = logp.double()
    if n == 1:
        return -s
    s = s.clamp(max=-1e-12)
    tiny = s + math.log(n) < TINY
    safe = torch.where(tiny, torch.full_like(s, -1.0), s)
    return torch.where(tiny, -math.log(n) - s, -log1mexp(n * log1mexp(safe)))


def coverage_weight(p: torch.Tensor, n: int) -> torch.Tensor:
    """F(N, p) = N (1 − p)^(N−1) p / (1 − (1 − p)^N) for p in [0, 1], in float64; F(N, 0) = 1 (its limit), F(1, p) = 1.
    Computed in log space, so it neither overflows nor divides 0 by 0."""
    p = p.double()
    if n == 1:
        return torch.ones_like(p)
    inner = p.clamp(1e-300, 1 - 1e-16)
    l1p = torch.log1p(-inner)  # log(1 − p)
    f = torch.exp(math.log(n) + (n - 1) * l1p + torch.log(inner) - log1mexp(n * l1p))
    return torch.where(p <= 0, 1.0, torch.where(p >= 1, 0.0, f))


@dataclass
class DCOConfig(SFTConfig):
    n: int = field(default=16, metadata={"help": "N of pass@N the loss optimises (1: sequence-level CE)."})
    p_estimate: str = field(default="sequence", metadata={
        "help": f"How p is had: one of {ESTIMATES} (sequence: the completion's probability, for direct answers; "
                "sampled: the verified fraction of sampled completions, DCO_a for worked solutions)."})
    p_samples: int = field(default=8, metadata={"help": "Samples per problem for p_estimate: sampled."})
    sample_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for p_estimate: sampled."})
    max_new_tokens: int = field(default=96, metadata={"help": "Longest sampled completion (p_estimate: sampled)."})
    verifier: str = field(default="posttrain.core.answers:same_answer", metadata={
        "help": "module:function(sample, gold completion) -> bool, for p_estimate: sampled."})
    eval_pass_at: list[int] = field(default_factory=lambda: [1, 4, 16, 64], metadata={
        "help": "k of the exact_pass@k evaluation reports."})

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"n must be at least 1, got {self.n}")
        if self.p_estimate not in ESTIMATES:
            raise ConfigError(f"p_estimate must be one of {', '.join(ESTIMATES)}, got {self.p_estimate!r}")
        if self.p_samples < 1 or self.sample_temperature <= 0:
            raise ConfigError("p_samples must be at least 1 and sample_temperature positive")
        if not self.completion_only_loss and self.completion_only_loss is not None:
            raise ConfigError("completion_only_loss must be on: p is the answer's probability given the problem")
        if self.packing or self.padding_free:
            raise ConfigError("packing and padding_free must be off: the loss needs one problem per row")
        if self.use_liger_kernel:
            raise ConfigError("use_liger_kernel must be off: its loss returns no logits")
        if any(k < 1 for k in self.eval_pass_at):
            raise ConfigError(f"eval_pass_at must hold k >= 1, got {self.eval_pass_at}")
        super().__post_init__()

    def eval_settings(self) -> dict:
        return {"verifier": self.verifier}  # the reasoning suite checks samples as the confidence weights did


class DCOTrainer(SFTTrainer):
    """Sequence-level −log(1 − (1 − p)^N) instead of token CE; see the module docstring."""

    def __init__(self, model, args: DCOConfig, train_dataset=None, processing_class=None, **kwargs):
        if not isinstance(args, DCOConfig):
            raise ConfigError("DCOTrainer needs a DCOConfig")
        if train_dataset is not None and "completion" not in train_dataset.column_names:
            raise ConfigError("the training split needs prompt and completion columns")
        if train_dataset is not None and processing_class is not None:
            check_max_length(processing_class, train_dataset["prompt"], train_dataset["completion"], args.max_length,
                             "an answer")
        if args.p_estimate == "sampled":
            module, _, name = args.verifier.partition(":")
            try:
                self.verify = getattr(import_module(module), name)
            except (ImportError, AttributeError, ValueError):
                raise ConfigError(f"verifier {args.verifier!r} is not an importable module:function") from None
        eos = processing_class.eos_token_id if processing_class is not None else None
        # the gold answer without its end: EOS (a chat template's end-of-turn) and whatever the template puts after it
        kwargs.setdefault("preprocess_logits_for_metrics", lambda logits, labels: answer_logps(
            logits, labels.masked_fill((labels == eos).cumsum(-1) > 0, -100))[0])
        kwargs.setdefault("compute_metrics", self.exact_pass_at_k)
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         **kwargs)
        self.loss_is_scaled_for_ga = False  # a mean per sequence: the Trainer divides by the accumulation steps

    def exact_pass_at_k(self, prediction) -> dict:
        """exact_pass@k = mean over problems of 1 − (1 − p)^k, p = exp(s) of the gold completion without its EOS
        (a sample that starts with the completion verifies, whatever follows)."""
        s = torch.as_tensor(np.asarray(prediction.predictions), dtype=torch.float64)
        log1m = torch.log1p(-torch.exp(s).clamp(max=1.0))
        return {f"exact_pass@{k}": float((-torch.expm1(k * log1m)).mean()) for k in self.args.eval_pass_at}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask")}
        outputs = model(**forward, use_cache=False)
        s, _ = answer_logps(outputs.logits, labels)
        n = self.args.n
        if self.args.p_estimate == "sampled" and model.training:
            weight = coverage_weight(self.sampled_p(model, inputs), n)
            loss = weight * -s
        else:
            loss = dco_loss(s, n)
            weight = coverage_weight(s.detach().exp(), n)
        gold = labels[:, 1:]
        keep = gold != -100
        for name, value in (("dco/logp", s), ("dco/weight", weight), ("dco/nll", -s),
                            ("mean_token_accuracy", (outputs.logits[:, :-1][keep].argmax(-1) == gold[keep]).float())):
            self.record(name, value.detach().mean())
        loss = loss.mean().float()
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def sampled_p(self, model, inputs) -> torch.Tensor:
        """p̂ per row: the fraction of ``p_samples`` completions of its prompt, sampled from the model being trained,
        that the verifier accepts against the row's gold completion."""
        tok, ids, mask = self.processing_class, inputs["input_ids"], inputs["labels"] != -100  # the completion
        prompt = inputs["attention_mask"].bool() & ~mask
        width = int(prompt.sum(-1).max())
        left = torch.full((len(ids), width), tok.pad_token_id, dtype=ids.dtype, device=ids.device)
        attention = torch.zeros_like(left)
        for i, row in enumerate(ids):
            p = row[prompt[i]]
            left[i, width - len(p):], attention[i, width - len(p):] = p, 1
        k = self.args.p_samples
        unwrapped = self.accelerator.unwrap_model(model)
        unwrapped.eval()
        try:
            out = unwrapped.generate(input_ids=left, attention_mask=attention, do_sample=True,
                                     temperature=self.args.sample_temperature, top_k=0, top_p=1.0,
                                     max_new_tokens=self.args.max_new_tokens, num_return_sequences=k,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        finally:
            unwrapped.train()
        samples = tok.batch_decode(out[:, width:], skip_special_tokens=True)
        golds = [tok.decode(row[mask[i]], skip_special_tokens=True) for i, row in enumerate(ids)]
        right = [bool(self.verify(samples[i * k + j], golds[i])) for i in range(len(ids)) for j in range(k)]
        p = torch.tensor(right, dtype=torch.float64, device=ids.device).view(len(ids), k).mean(-1)
        self.record("dco/p_hat", p.mean())
        return p


Config, Trainer = DCOConfig, DCOTrainer  # the names the method registry loads
