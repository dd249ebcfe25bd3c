"""``posttrain gen NAME --out DIR [--key value ...]``: run a data generator, save a DatasetDict and a manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from importlib import import_module
from pathlib import Path

from datasets import DatasetDict
from transformers import HfArgumentParser

from posttrain.errors import UsageError
from posttrain.runs import atomic_dir, check_output, write_json

GENERATORS = {"kg": "posttrain.data_gen.kg", "reasoning": "posttrain.data_gen.reasoning",
              "rtuning": "posttrain.data_gen.rtuning", "boundary": "posttrain.data_gen.boundary",
              "muscle": "posttrain.data_gen.muscle", "multihop": "posttrain.data_gen.multihop"}


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


def fingerprint(dd: DatasetDict) -> str:
    """sha256 over every split's rows, in order."""
    h = hashlib.sha256()
    for split in sorted(dd):
        h.update(split.encode())
        for row in dd[split]:
            h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()


def manifest(name: str, cfg, dd: DatasetDict) -> dict:
    """What made a dataset: generator, config, seed, and a fingerprint of its rows."""
    return {"generator": name, "config": asdict(cfg), "seed": cfg.seed, "fingerprint": fingerprint(dd),
            "num_rows": {k: len(v) for k, v in dd.items()}}


def gen(name: str, out: str | Path, args: list[str] = (), overwrite: bool = False) -> Path:
    """Generate dataset ``name`` into ``out`` (an existing one is replaced only with ``overwrite``)."""
    mod, cfg = parse_config(name, list(args))
    check_output(out, overwrite)
    dd = mod.generate(cfg)
    with atomic_dir(out) as tmp:
        dd.save_to_disk(str(tmp))
        write_json(tmp / "manifest.json", manifest(name, cfg, dd))
    return Path(out)
