"""Method registry: ``method:`` in a recipe names an entry here, the module that implements the method. One method,
one module, imported only when the method is used (``core.registry``).

The seam between ``posttrain train`` and a method. Every method module defines ``Config`` (its TRL config),
``Trainer`` (its trainer, whose ``reads`` says which splits and columns it reads: ``base.Reads``) and ``prepare(data,
args, model_name) -> base.Prepared``, its data step, which may reject the settings with a ``ConfigError``. ``train``
reads the splits ``Trainer.reads`` names (each *role* R's split is the recipe key ``dataset_R_split``), keeps its
columns, runs ``prepare``, saves the prepared training set in the run directory with its stats, and builds the
trainer on it. Adding a method is its module and one line here; ``posttrain train`` does not change.
"""

from __future__ import annotations

from types import ModuleType

from posttrain.core.registry import Registry

ROLES = ("train", "eval", "forget", "retain")  # recipe keys dataset_<role>_split

METHODS = Registry("method", {
    "sft": "posttrain.trainers.sft",
    "rtuning": "posttrain.trainers.rtuning",
    "grad_ascent": "posttrain.trainers.grad_ascent",
    "grad_diff": "posttrain.trainers.grad_diff",
    "npo": "posttrain.trainers.npo",
    "simnpo": "posttrain.trainers.simnpo",
    "idk_sft": "posttrain.trainers.idk_sft",
    "pdu": "posttrain.trainers.pdu",
    "wga": "posttrain.trainers.wga",
    "satimp": "posttrain.trainers.satimp",
    "rule_rs": "posttrain.trainers.rejection_steering",
    "rule": "posttrain.trainers.rule",
    "muscle": "posttrain.trainers.muscle",
    "dco": "posttrain.trainers.dco",
}, contract=("Config", "Trainer", "prepare"))


def get_method(name: str) -> ModuleType:
    """The module of method ``name`` (``Config``, ``Trainer``, ``prepare``); an unknown name is a ``UsageError``
    naming the known ones."""
    return METHODS.load(name)
