"""The model as it was before training, for losses that compare against it (NPO's π_ref, MUSCLE's teacher).

A trainer asks for it by setting ``uses_reference = True`` (see ``unlearn.UnlearnTrainer``) or by building a
``Reference`` of its model after ``Trainer.__init__`` (the model is then wrapped in its adapter and on its device).
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel


class Reference:
    """``reference(**inputs)``: the pre-training model's forward pass, without gradients.

    With LoRA it is the trained model itself with the adapter switched off (PEFT's ``disable_adapter()``), in eval
    mode for the call — the base weights are frozen, so no second copy is needed. With full fine-tuning it is a deep
    copy taken now: eval mode, ``requires_grad`` off, moved to the trained model's device when that moves, and its
    modules' own ``forward`` — TRL's SFTTrainer replaces the model's with a closure over the original model's bound
    ``forward``, which a deep copy would keep calling: the *trained* weights — dropped for their class's. Left out:
    DeepSpeed ZeRO-3 and FSDP, whose sharded parameters a deep copy does not gather.
    """

    def __init__(self, model: torch.nn.Module):
        self.model, self.frozen = model, None
        if not isinstance(model, PeftModel):
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
            for module in self.frozen.modules():
                module.__dict__.pop("forward", None)

    @torch.no_grad()
    def __call__(self, **inputs):
        if self.frozen is None:
            training = self.model.training
            self.model.eval()
            try:
                with self.model.disable_adapter():
                    return self.model(**inputs)
            finally:
                self.model.train(training)
        device = next(self.model.parameters()).device
        if next(self.frozen.parameters()).device != device:
            self.frozen.to(device)
        return self.frozen(**inputs)
