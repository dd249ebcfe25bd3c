"""Datasets on disk: load a ``posttrain gen`` directory, pick a split, read what a probe recorded in it.

The data layer of DESIGN.md's arrows (data → trainers → runs; evals read data too): trainers, ``posttrain probe``
and ``posttrain eval`` import from here, so a trainer never pulls in ``posttrain.train`` or the eval stack.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

from posttrain.errors import UsageError


def load_data(path: str | None) -> DatasetDict:
    if not path:
        raise UsageError("no dataset: set dataset_path (a directory written by `posttrain gen`)")
    if not (Path(path) / "dataset_dict.json").is_file():
        raise UsageError(f"dataset directory not found or not a saved DatasetDict: {path}")
    return load_from_disk(path)


def split(dd: DatasetDict, name: str, columns: tuple[str, ...] = ()) -> Dataset:
    if name not in dd:
        raise UsageError(f"unknown split {name!r}; the dataset has: {', '.join(dd)}")
    missing = [c for c in columns if c not in dd[name].column_names]
    if missing:
        raise UsageError(f"split {name!r} lacks column(s) {', '.join(missing)}")
    return dd[name]


def probed_model(ds: Dataset) -> str | None:
    """The model a probed split was labelled with (recorded in its dataset info by ``posttrain probe``), or None."""
    try:
        return json.loads(ds.info.description or "{}").get("probe", {}).get("model")
    except (json.JSONDecodeError, AttributeError):
        return None
