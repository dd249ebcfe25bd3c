"""MUSCLE: compatibility-preserving model updates (Echterhoff, Faghri, Vemulapalli, Hu, Li, Tuzel, Pouransari;
arXiv 2407.09435, Eq. 1 and 5; METHODS.md §3.3).

A base model is updated v1 -> v2; the task adapters T1 (on v1) and T2 (on v2) were trained with the same recipe.
The compatibility model starts from T2 — its LoRA adapter on base v2 (``init_adapter``), trained further, or T2
itself with full fine-tuning — and goes on with SFT on the task's training set, teacher-forced, with the paper's
masked distillation. Per loss token i with gold token y_i and the logits z (the model being trained), z^old (T1,
``old_model``) and z^new (T2: the model as it was before this training, ``reference.Reference`` — with LoRA a
frozen copy of T2's adapter toggled on the same base weights, not a second copy of them):

    m_i    = 1[argmax z_i != y_i]                   (the model being trained predicts token i wrong)
    L_comp = mean_i [ m_i · KL(σ(z^old_i / T) || σ(z_i / T)) + (1 − m_i) · KL(σ(z^new_i / T) || σ(z_i / T)) ]
    L      = λ · L_comp + (1 − λ) · CE

so where the model is wrong it learns the old model's distribution (its old behaviour, mistakes included), and the
new model's elsewhere. T = 2 (``temperature``), λ = ``distill_weight`` (1: the paper's main loss, no CE). The
ablation's other masks (Table 7) are ``mask`` choices: ``old_correct`` (m_i = 1[argmax z^old_i = y_i]),
``token_likelihood`` (m_i = 1[p(y_i) < p_old(y_i)]), ``sequence_likelihood`` (per sequence, m = 1[p(y) < p_old(y)]
over its loss tokens), and two plain-distillation baselines: ``old`` (m = 1: KL to T1 everywhere) and ``new``
(m = 0: self-distillation from T2).

What differs from posttrain's ``SFTTrainer``: ``compute_loss``. Both teachers run without gradients, in eval mode,
each only on batches where some token learns from it (or the mask is computed from it); T1 is loaded once
(``old_model``: a LoRA run directory, merged into the base its adapter config names, or a model directory) and is
the only extra model in memory. The loss tokens are those TRL's SFT trains on (the completion, as
for the task adapters; ``completion_only_loss: false`` gives the paper's context-and-answer tokens). Logged per step:
``muscle/old_frac`` (mean m), ``muscle/kd``, ``muscle/ce`` and TRL's ``mean_token_accuracy``. Rejected, because they
would misapply it: a temperature <= 0; λ outside (0, 1] (λ = 0 is plain SFT); a likelihood mask without CE (the
paper trains them only with it, App. A.4); an old model with another tokenizer (the KL would compare different
tokens); the Liger kernel (its loss returns no logits); a new LoRA adapter (``use_peft`` without ``init_adapter``,
or a ``peft_config``): the model would start from, and the new teacher would be, ``model_name_or_path`` with a
fresh adapter switched off — the bare base model, not T2 (start from T2's adapter with ``init_adapter``, or train a
full-model T2 with full fine-tuning); full fine-tuning under FSDP or DeepSpeed ZeRO-3 (``reference.Reference``
would deep-copy sharded parameters). Left out: the paper's model selection by validation loss after each epoch
(TRL's ``eval_strategy`` with ``load_best_model_at_end`` does it), Hinton's T² gradient scale (Eq. 1 has none) and
DeepSpeed ZeRO-3 / FSDP with LoRA (the old model is a plain module on each process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from posttrain.core import modeling
from posttrain.core.errors import ConfigError
from posttrain.trainers.reference import Reference
from posttrain.trainers.sft import SFTConfig, SFTTrainer, prepare

__all__ = ["MuscleConfig", "MuscleTrainer", "kd_per_token", "old_teacher_mask", "prepare"]

MASKS = ("student_wrong", "old_correct", "token_likelihood", "sequence_likelihood", "old", "new")
NEEDS_CE = ("token_likelihood", "sequence_likelihood")
READS_OLD = ("old_correct", *NEEDS_CE)  # masks computed from the old model's logits


def kd_per_token(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(σ(teacher / T) || σ(student / T)) per row of two (N, V) logit tensors, in float32."""
    s = F.log_softmax(student.float() / temperature, -1)
    t = F.log_softmax(teacher.float() / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="none").sum(-1)


def old_teacher_mask(mask: str, student: torch.Tensor, old: torch.Tensor | None, gold: torch.Tensor,
                     sequence: torch.Tensor) -> torch.Tensor:
    """m_i (True: distil token i from the old model) for the N loss tokens: ``student`` and ``old`` are their (N, V)
    logits (``old`` is read by the ``READS_OLD`` masks only), ``gold`` the (N,) gold ids, ``sequence`` the (N,)
    index of each token's sequence."""
    if mask == "student_wrong":
        return student.argmax(-1) != gold
    if mask == "old_correct":
        return old.argmax(-1) == gold
    if mask in ("old", "new"):
        return torch.full_like(gold, mask == "old", dtype=torch.bool)
    logp = F.log_softmax(student.float(), -1).gather(-1, gold[:, None])[:, 0]
    logp_old = F.log_softmax(old.float(), -1).gather(-1, gold[:, None])[:, 0]
    if mask == "token_likelihood":
        return logp < logp_old
    if mask == "sequence_likelihood":
        n = int(sequence.max()) + 1 if len(sequence) else 0
        seq, seq_old = (torch.zeros(n, device=gold.device).index_add_(0, sequence, x) for x in (logp, logp_old))
        return (seq < seq_old)[sequence]
    raise ValueError(f"unknown mask {mask!r}")


@dataclass
class MuscleConfig(SFTConfig):
    old_model: str | None = field(default=None, metadata={
        "help": "The old task model T1: a LoRA run directory (on its base) or a model directory."})
    mask: str = field(default="student_wrong", metadata={"help": f"Which tokens learn from T1: one of {MASKS}."})
    temperature: float = field(default=2.0, metadata={"help": "Distillation temperature T."})
    distill_weight: float = field(default=1.0, metadata={"help": "λ: L = λ·L_comp + (1 − λ)·CE."})

    def __post_init__(self):
        if self.mask not in MASKS:
            raise ConfigError(f"mask must be one of {', '.join(MASKS)}, got {self.mask!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.distill_weight <= 1:
            raise ConfigError(f"distill_weight must be in (0, 1], got {self.distill_weight} (0 would be plain SFT: "
                              "method sft)")
        if self.mask in NEEDS_CE and self.distill_weight == 1:
            raise ConfigError(f"mask {self.mask} needs the CE term (distill_weight < 1): the paper trains likelihood "
                              "masks only with it (App. A.4)")
        if self.use_liger_kernel:
            raise ConfigError("use_liger_kernel must be off: its loss returns no logits to distil")
        super().__post_init__()


def old_tokenizer(path: str):
    """The old model's tokenizer: its own, else (an adapter saved without one) its base model's."""
    base = modeling.adapter_base(path)
    return modeling.load_tokenizer(base if base and not (Path(path) / "tokenizer_config.json").is_file() else path)


class MuscleTrainer(SFTTrainer):
    """SFT with MUSCLE's masked distillation from the old (T1) and new (T2) task models; see the module docstring."""

    def __init__(self, model, args: MuscleConfig, processing_class=None, **kwargs):
        if not isinstance(args, MuscleConfig):
            raise ConfigError("MuscleTrainer needs a MuscleConfig")
        if kwargs.get("peft_config") is not None:
            raise ConfigError("use_peft without init_adapter would add a fresh LoRA adapter: the model would start "
                              "from, and the new teacher would be, the bare base model instead of T2; start from T2's "
                              "adapter (init_adapter: T2_RUN), or for a full-model T2 use full fine-tuning")
        if not args.old_model:
            raise ConfigError("set old_model: the old task model T1 (a LoRA run or a model directory)")
        if not (Path(args.old_model) / "config.json").is_file() and \
                not (Path(args.old_model) / "adapter_config.json").is_file():
            raise ConfigError(f"old_model is neither a model nor a LoRA run directory: {args.old_model}")
        if processing_class is None:
            raise TypeError("MuscleTrainer needs processing_class (the tokenizer) to check the old model's")
        if old_tokenizer(args.old_model).get_vocab() != processing_class.get_vocab():
            raise ConfigError(f"old_model {args.old_model} has a different tokenizer: the distillation compares the "
                              "two models' distributions token by token")
        super().__init__(model=model, args=args, processing_class=processing_class, **kwargs)
        dtype = next(self.model.parameters()).dtype
        self.old = modeling.load_frozen(args.old_model, str(dtype).removeprefix("torch.")).to(self.accelerator.device)
        self.reference = Reference(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask")}
        forward["use_cache"] = False
        outputs = model(**forward)
        gold = labels[:, 1:]
        keep = gold != -100
        y = gold[keep]
        z = outputs.logits[:, :-1][keep]
        sequence = torch.arange(len(gold), device=gold.device)[:, None].expand_as(gold)[keep]

        def logits(teacher):
            with torch.no_grad():
                return teacher(**forward).logits[:, :-1][keep]

        # each teacher runs only when some token learns from it (or when the mask is computed from it)
        old = logits(self.old) if self.args.mask in READS_OLD else None
        m = old_teacher_mask(self.args.mask, z.detach(), old, y, sequence)
        if old is None and m.any():
            old = logits(self.old)
        new = logits(self.reference) if old is None or not m.all() else None
        teacher = new if old is None else old if new is None else torch.where(m[:, None], old, new)
        kd = kd_per_token(z, teacher, self.args.temperature)
        ce = F.cross_entropy(z.float(), y, reduction="none")
        # TRL's normalisation: per token of the whole (accumulated, all-process) batch when Trainer counts them
        tokens = torch.as_tensor(num_items_in_batch if num_items_in_batch is not None else len(y)).clamp(min=1)
        lam = self.args.distill_weight
        loss = (lam * kd.sum() + (1 - lam) * ce.sum()) / tokens
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if len(y):
            for name, value in (("muscle/old_frac", m.float()), ("muscle/kd", kd), ("muscle/ce", ce),
                                ("mean_token_accuracy", (z.detach().argmax(-1) == y).float())):
                self.record(name, value.mean())
        return (loss, outputs) if return_outputs else loss


Config, Trainer = MuscleConfig, MuscleTrainer  # the names the method registry loads
