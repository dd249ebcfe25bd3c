"""Method registry: ``method:`` in a recipe names a module here, which defines a TRL config and trainer.

One method, one file. Each entry is ``name -> (module, config class, trainer class, dataset columns)``; the
module is imported only when the method is used.
"""

from __future__ import annotations

from importlib import import_module

METHODS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "sft": ("posttrain.trainers.sft", "SFTConfig", "SFTTrainer", ("prompt", "completion")),
    "rtuning": ("posttrain.trainers.rtuning", "RTuningConfig", "RTuningTrainer",
                ("prompt", "completion", "probe_correct", "probe_entropy")),
}


def get_method(name: str):
    """(config class, trainer class, columns) of a registered method; KeyError names the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    module, config, trainer, columns = METHODS[name]
    mod = import_module(module)
    return getattr(mod, config), getattr(mod, trainer), columns
