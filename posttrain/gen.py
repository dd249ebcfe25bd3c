"""``posttrain gen NAME --out DIR [--key value ...]``: run a data generator, save a DatasetDict and a manifest."""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from datasets import DatasetDict
from transformers import HfArgumentParser

from posttrain.core.errors import UsageError
from posttrain.core.progress import bar
from posttrain.core.registry import Registry
from posttrain.core.runs import atomic_dir, check_output, write_json

GENERATORS = Registry("generator", {
    "kg": "posttrain.data_gen.kg", "reasoning": "posttrain.data_gen.reasoning", "rtuning": "posttrain.data_gen.rtuning",
    "boundary": "posttrain.data_gen.boundary", "muscle": "posttrain.data_gen.muscle",
    "multihop": "posttrain.data_gen.multihop", "world": "posttrain.data_gen.world",
}, contract=("Config", "generate"))  # generate(Config) -> DatasetDict


def generator(name: str):
    return GENERATORS.load(name)


class _Parser(HfArgumentParser):
    """An ``HfArgumentParser`` whose errors are raised, not printed with the usage and exited on (argparse reports
    an ambiguous abbreviation through ``error`` even with ``exit_on_error=False``)."""

    def error(self, message):
        raise argparse.ArgumentError(None, message)


def parse_config(name: str, args: list[str]):
    """The generator's module and its ``Config`` from ``--key value`` flags; a bad flag or value (unknown, badly
    typed, missing its value, out of range) is one line (a ``UsageError``)."""
    mod = generator(name)
    try:
        (cfg,) = _Parser(mod.Config, exit_on_error=False).parse_args_into_dataclasses(args=args)
    except (ValueError, argparse.ArgumentError) as e:
        raise UsageError(f"gen {name}: {str(e).strip().splitlines()[0]}") from None
    return mod, cfg


def fingerprint(dd: DatasetDict, progress: bool = False) -> str:
    """sha256 over every split's rows, in order (each row's JSON with sorted keys). Rows are read a batch of
    columns at a time (the same values as row by row, several times faster)."""
    h = hashlib.sha256()
    with bar(total=sum(len(d) for d in dd.values()), enabled=progress, desc="fingerprint", unit="row",
             leave=False) as pbar:
        for split in sorted(dd):
            h.update(split.encode())
            for batch in dd[split].iter(batch_size=1000):
                columns = list(batch.values())
                for values in zip(*columns):
                    h.update(json.dumps(dict(zip(batch, values)), sort_keys=True).encode())
                pbar.update(len(columns[0]) if columns else 0)
    return h.hexdigest()


def manifest(name: str, cfg, dd: DatasetDict, progress: bool = False) -> dict:
    """What made a dataset: generator, config, seed, and a fingerprint of its rows."""
    return {"generator": name, "config": asdict(cfg), "seed": cfg.seed, "fingerprint": fingerprint(dd, progress),
            "num_rows": {k: len(v) for k, v in dd.items()}}


def gen(name: str, out: str | Path, args: list[str] = (), overwrite: bool = False, progress: bool = True) -> Path:
    """Generate dataset ``name`` into ``out`` (an existing one is replaced only with ``overwrite``); ``progress``:
    a bar while the rows are fingerprinted (the knowledge graph's generator draws its own while it writes the
    corpus). Both start once the config and ``out`` are checked."""
    mod, cfg = parse_config(name, list(args))
    check_output(out, overwrite)
    dd = mod.generate(cfg)
    with atomic_dir(out) as tmp:
        dd.save_to_disk(str(tmp))
        write_json(tmp / "manifest.json", manifest(name, cfg, dd, progress))
    return Path(out)
