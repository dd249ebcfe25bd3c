"""Method registry: ``method:`` in a recipe names an entry here, which says where the method's code lives and what
data it reads. One method, one module; the module is imported only when the method is used.

The seam between ``posttrain train`` and a method: ``train`` reads the splits the entry names (each *role* R's split
is the recipe key ``dataset_R_split``), keeps the entry's columns, hands them to the module's data step
``prepare(data, args, model_name) -> Prepared`` — which may reject the settings with a ``ConfigError`` — saves the
prepared training set in the run directory with its stats, and builds the trainer on it. Adding a method is one
line here; ``posttrain.train`` does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module

ROLES = ("train", "eval", "forget", "retain")  # recipe keys dataset_<role>_split


@dataclass(frozen=True)
class Method:
    """``module``: the method's module; ``config``, ``trainer``, ``prepare``: names of its TRL config, its trainer
    and its data step in that module; ``splits``: the roles it needs; ``optional``: roles it reads when the recipe
    names a split for them; ``columns``: what each of those splits must have (only these are kept); ``before``: a
    function of the module that ``posttrain train`` calls with the recipe before anything else (RULE's first
    stage), which may change it."""

    module: str
    config: str
    trainer: str
    splits: tuple[str, ...] = ("train",)
    optional: tuple[str, ...] = ("eval",)
    columns: tuple[str, ...] = ("prompt", "completion")
    prepare: str = "prepare"
    before: str | None = None  # a function of the module run first: (recipe, posttrain.train.train) -> None

    def load(self, name: str):
        return getattr(import_module(self.module), name)


@dataclass
class Prepared:
    """A method's training data, as its trainer takes it. ``posttrain train`` saves ``splits()`` in the run
    (``RUN/train_data``) and puts ``stats`` into ``run.json`` beside the training set's size."""

    train: object  # a datasets.Dataset, or a torch Dataset whose ``parts`` are datasets
    eval: object | None = None  # a dataset, or a dict of them (several eval splits)
    stats: dict = field(default_factory=dict)

    def splits(self) -> dict:
        """What the run keeps: ``train`` (or its ``parts``) and ``eval`` (``eval_<split>`` for each of several)."""
        out = dict(getattr(self.train, "parts", {"train": self.train}))
        if isinstance(self.eval, dict):
            return {**out, **{f"eval_{name}": ds for name, ds in self.eval.items()}}
        return out if self.eval is None else {**out, "eval": self.eval}


METHODS: dict[str, Method] = {
    "sft": Method("posttrain.trainers.sft", "SFTConfig", "SFTTrainer"),
    "rtuning": Method("posttrain.trainers.rtuning", "RTuningConfig", "RTuningTrainer",
                      columns=("prompt", "completion", "probe_correct", "probe_entropy")),
    "grad_ascent": Method("posttrain.trainers.grad_ascent", "GradAscentConfig", "GradAscentTrainer",
                          splits=("forget",), optional=()),
    "grad_diff": Method("posttrain.trainers.grad_diff", "GradDiffConfig", "GradDiffTrainer",
                        splits=("forget", "retain"), optional=()),
    "npo": Method("posttrain.trainers.npo", "NPOConfig", "NPOTrainer", splits=("forget", "retain"), optional=()),
    "simnpo": Method("posttrain.trainers.simnpo", "SimNPOConfig", "SimNPOTrainer", splits=("forget", "retain"),
                     optional=()),
    "idk_sft": Method("posttrain.trainers.idk_sft", "IdkSFTConfig", "IdkSFTTrainer", splits=("forget", "retain"),
                      optional=(), columns=("prompt", "completion", "entity")),
    "rule_rs": Method("posttrain.trainers.rule", "RejectionSteeringConfig", "RejectionSteeringTrainer",
                      columns=("prompt", "completion", "kind"), prepare="prepare_rs"),
    "muscle": Method("posttrain.trainers.muscle", "MuscleConfig", "MuscleTrainer"),
    "dco": Method("posttrain.trainers.dco", "DCOConfig", "DCOTrainer"),
    "rule": Method("posttrain.trainers.rule", "RULEConfig", "RULETrainer", optional=(),
                   columns=("prompt", "kind", "target", "gold"), before="run_stage_one"),
}


def get_method(name: str) -> tuple[type, type, Method]:
    """(config class, trainer class, registry entry) of a method; KeyError names the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    method = METHODS[name]
    return method.load(method.config), method.load(method.trainer), method
