"""``posttrain gen NAME --out DIR [--key value ...]``: run a data generator, save a DatasetDict and a manifest."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from transformers import HfArgumentParser

from posttrain.errors import UsageError
from posttrain.runs import atomic_dir, write_json

GENERATORS = {"kg": "posttrain.data_gen.kg", "reasoning": "posttrain.data_gen.reasoning"}


def generator(name: str):
    if name not in GENERATORS:
        raise UsageError(f"unknown generator {name!r}; known generators: {', '.join(sorted(GENERATORS))}")
    return import_module(GENERATORS[name])


def parse_config(name: str, args: list[str]):
    mod = generator(name)
    try:
        (cfg,) = HfArgumentParser(mod.Config).parse_args_into_dataclasses(args=args)
    except ValueError as e:
        raise UsageError(f"gen {name}: {str(e).splitlines()[0]}") from None
    return mod, cfg


def gen(name: str, out: str | Path, args: list[str] = ()) -> Path:
    mod, cfg = parse_config(name, list(args))
    dd = mod.generate(cfg)
    with atomic_dir(out) as tmp:
        dd.save_to_disk(str(tmp))
        write_json(tmp / "manifest.json", mod.manifest(cfg, dd))
    return Path(out)
