"""The model as it was before training, for losses that compare against it (NPO's π_ref, MUSCLE's new teacher).

A trainer asks for it by setting ``uses_reference = True`` (see ``unlearn.UnlearnTrainer``) or by building a
``Reference`` of its model after ``Trainer.__init__`` (the model is then wrapped in its adapter and on its device).
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from trl.trainer.utils import use_adapter

from posttrain.core.errors import ConfigError

REF = "ref"  # the frozen copy of a pretrained adapter (TRL's name for it in GRPO)


def sharding(state=None) -> str | None:
    """"FSDP" or "DeepSpeed ZeRO-3" when the launch shards the model's parameters, else None — read as HF's Trainer
    and TRL read it: accelerate's state (``distributed_type`` FSDP, or DEEPSPEED with a ``deepspeed_plugin`` at
    ``zero_stage`` 3) and transformers' ``is_deepspeed_zero3_enabled()`` (a ZeRO-3 config in the TrainingArguments).
    ``state``: an ``AcceleratorState`` (or any object with those attributes); default: this process's, which the
    Trainer's Accelerator has set up by the time a reference is built."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType
    from transformers.integrations import is_deepspeed_zero3_enabled

    kind = getattr(state, "distributed_type", None) if state is not None else PartialState().distributed_type
    if kind == DistributedType.FSDP:
        return "FSDP"
    if kind == DistributedType.DEEPSPEED:
        plugin = getattr(state if state is not None else AcceleratorState(), "deepspeed_plugin", None)
        if plugin is not None and plugin.zero_stage == 3:
            return "DeepSpeed ZeRO-3"
    return "DeepSpeed ZeRO-3" if is_deepspeed_zero3_enabled() else None


def fresh_adapter(model: PeftModel) -> bool:
    """True when the model's LoRA adapter is still a no-op (every ``lora_B`` zero, as LoRA initialises it)."""
    b = [p for n, p in model.named_parameters() if ".lora_B." in n]
    return bool(b) and not any(p.detach().any() for p in b)


class Reference:
    """``reference(**inputs)``: the pre-training model's forward pass, without gradients.

    With LoRA it is the trained model itself, in eval mode for the call, on the same frozen base weights — no
    second copy of them. A fresh adapter (a no-op at the start) is switched off (PEFT's ``disable_adapter()``);
    an adapter that starts from trained weights (``init_adapter``: MUSCLE's new task adapter, an unlearning run
    continued) is copied now into a frozen second adapter ``ref`` and switched to for the call, as TRL's GRPO does —
    with the adapter off, the reference would be the bare base model. With full fine-tuning it is a deep copy taken
    now: eval mode, ``requires_grad`` off, moved to the trained model's device when that moves, and its modules' own
    ``forward`` — TRL's SFTTrainer replaces the model's with a closure over the original model's bound ``forward``,
    which a deep copy would keep calling: the *trained* weights — dropped for their class's. Rejected (a
    ``ConfigError``): full fine-tuning under FSDP or DeepSpeed ZeRO-3 (``sharding``), whose sharded parameters a
    deep copy neither gathers nor shards; LoRA keeps no copy and is not affected.
    """

    def __init__(self, model: torch.nn.Module, state=None):
        self.model, self.frozen, self.adapter = model, None, None
        if not isinstance(model, PeftModel):
            if (how := sharding(state)) is not None:
                raise ConfigError(f"full fine-tuning under {how} is not supported: the reference model (the model "
                                  f"before training) is a deep copy that {how} does not shard; train a LoRA "
                                  f"(use_peft: true) or launch without {how} (e.g. multi_gpu.yaml)")
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
            for module in self.frozen.modules():
                module.__dict__.pop("forward", None)
        elif not fresh_adapter(model):
            self.adapter = REF
            model.add_adapter(REF, model.peft_config[model.active_adapter])
            trained = dict(model.named_parameters())
            for name, param in trained.items():
                if f".{model.active_adapter}." in name:
                    trained[name.replace(f".{model.active_adapter}.", f".{REF}.")].data.copy_(param.data)

    @torch.no_grad()
    def __call__(self, **inputs):
        if self.frozen is None:
            training = self.model.training
            self.model.eval()
            try:
                with use_adapter(self.model, self.adapter):
                    return self.model(**inputs)
            finally:
                self.model.train(training)
        device = next(self.model.parameters()).device
        if next(self.frozen.parameters()).device != device:
            self.frozen.to(device)
        return self.frozen(**inputs)
