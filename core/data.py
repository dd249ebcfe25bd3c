"""Datasets on disk: load a ``posttrain gen`` directory or a user's own data (files, TOFU's layout), pick a split,
read what a probe recorded in it.

The data layer of DESIGN.md's arrows (data → trainers → runs; evals read data too): trainers, ``posttrain probe``
and ``posttrain eval`` import from here, so a trainer never pulls in ``posttrain.train`` or the eval stack.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk
from datasets.exceptions import DatasetGenerationError

from posttrain.core.errors import UsageError


def load_data(path: str | None) -> DatasetDict:
    """The training data ``path`` (a recipe's ``dataset_path``) names: a ``posttrain gen`` directory (any saved
    DatasetDict) or anything else ``load_eval_data`` reads — a saved Dataset, a ``.jsonl``/``.json``/``.csv``/
    ``.parquet`` file or a directory of them, or ``NAME=PATH[,NAME=PATH...]`` — with its columns: a TOFU-layout split
    (``question``, ``answer``, ``paraphrased_answer``, ``perturbed_answer``) gets ``prompt`` = question and
    ``completion`` = " " + answer, so ``forget=tofu/forget10.json,retain=tofu/retain90.json`` with
    ``dataset_forget_split: forget`` and ``dataset_retain_split: retain`` trains any unlearning method. A split with
    ``question`` and ``answer`` and no ``entity`` column also gets ``entity`` = "" (TOFU names no subject): IdkSFT then
    runs with refusals without ``{s}`` (``--refusals "I don't know."``) and rejects, in one line, those that need a
    subject. Bad input raises a one-line ``UsageError``."""
    if not path:
        raise UsageError("no dataset: set dataset_path (a `posttrain gen` directory, a data file or directory, or "
                         "NAME=PATH[,NAME=PATH...])")
    dd = load_eval_data(path)
    return DatasetDict({name: with_entity(ds) for name, ds in dd.items()})


def with_entity(ds: Dataset) -> Dataset:
    """A TOFU-layout split (``question`` and ``answer``) without an ``entity`` column gets an empty one."""
    if not {"question", "answer"} <= set(ds.column_names) or "entity" in ds.column_names:
        return ds
    return ds.add_column("entity", [""] * len(ds))


READERS = {".jsonl": Dataset.from_json, ".json": Dataset.from_json, ".csv": Dataset.from_csv,
           ".parquet": Dataset.from_parquet}
ANSWERS = ("completion", "paraphrased_answer", "perturbed_answers")  # continuations the engines append to ``prompt``
TOFU = {"prompt": "question", "completion": "answer", "paraphrased_answer": "paraphrased_answer",
        "perturbed_answers": "perturbed_answer"}


def parse_columns(text: str) -> dict[str, str]:
    """``"prompt=question,completion=answer"`` -> ``{"prompt": "question", "completion": "answer"}``."""
    pairs = [p.partition("=") for p in text.split(",")]
    if not all(t.strip() and s.strip() for t, _, s in pairs):
        raise UsageError(f"bad column mapping {text!r}: expected TARGET=SOURCE[,TARGET=SOURCE...], "
                         "e.g. prompt=question,completion=answer")
    return {t.strip(): s.strip() for t, _, s in pairs}


def load_eval_data(spec: str, columns: dict[str, str] | None = None) -> DatasetDict:
    """The eval data ``spec`` names, as a DatasetDict in the suites' columns. ``spec`` is one of

    * a ``posttrain gen`` directory (any saved DatasetDict): its splits;
    * a saved ``Dataset`` directory, or a ``.jsonl``, ``.json`` (JSON lines or an array of records), ``.csv`` or
      ``.parquet`` file: one split, named after the directory or the file's stem;
    * a directory of such files: one split per file, named after its stem;
    * ``NAME=PATH[,NAME=PATH...]``, each PATH a file or a saved Dataset: those splits (the forgetting suite's roles
      are named by its ``forget_split`` and ``holdout_split``), e.g.
      ``forget=tofu/forget10.json,retain=tofu/retain90.json``.

    Columns, per split: ``columns`` ({target: source}) copies each source column to its target (the source stays).
    A split with ``question`` and ``answer`` but neither ``prompt`` nor ``completion`` is TOFU-shaped and gets
    ``prompt`` = question, ``completion`` = answer, ``paraphrased_answer`` = itself and ``perturbed_answers`` =
    perturbed_answer (those present), under ``columns``. The engines score ``prompt + completion`` as written, so
    every mapped answer column (``completion``, ``paraphrased_answer``, ``perturbed_answers`` element-wise) gets a
    leading space, as in the testbed (``"Question: Where was P1 born ? Answer:"`` + ``" C1 ."``), unless it already
    starts with whitespace or the row's prompt ends with it. Files load through the ``datasets`` loaders (local,
    no network) with their cache in a temporary directory and the rows in memory: nothing is written next to the
    data. Bad input (a path not found, a file type not read, an empty or unreadable file, a mapped column missing)
    raises a one-line ``UsageError``."""
    if not Path(spec).exists() and "=" in spec.split(",")[0]:
        pairs = [p.partition("=") for p in spec.split(",")]
        if not all(n.strip() and p.strip() for n, _, p in pairs):
            raise UsageError(f"bad data {spec!r}: expected a path or NAME=PATH[,NAME=PATH...]")
        dd = DatasetDict({n.strip(): read_split(Path(p.strip())) for n, _, p in pairs})
    else:
        dd = read_data(Path(spec))
    return DatasetDict({name: map_columns(ds, name, columns) for name, ds in dd.items()})


def read_data(path: Path) -> DatasetDict:
    """A saved DatasetDict, a directory of data files (one split each), or one file or saved Dataset (one split)."""
    if (path / "dataset_dict.json").is_file():
        return load_from_disk(str(path))
    if path.is_dir() and not (path / "state.json").is_file():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in READERS)
        if not files:
            raise UsageError(f"no data in {path}: expected a `posttrain gen` directory, a saved dataset or "
                             f"{'/'.join(READERS)} files")
        stems = [f.stem for f in files]
        if len(set(stems)) < len(stems):
            raise UsageError(f"two files in {path} give the same split name: {', '.join(map(str, files))}")
        return DatasetDict({f.stem: read_split(f) for f in files})
    return DatasetDict({path.stem if path.is_file() else path.absolute().name: read_split(path)})


def read_split(path: Path) -> Dataset:
    """One split: a saved Dataset directory or a data file (read into memory)."""
    if (path / "state.json").is_file():
        return load_from_disk(str(path))
    if not path.exists():
        raise UsageError(f"data not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if not path.is_file() or reader is None:
        raise UsageError(f"cannot read {path}: expected a {'/'.join(READERS)} file or a saved dataset")
    if path.stat().st_size == 0:
        raise UsageError(f"empty data file: {path}")
    with tempfile.TemporaryDirectory() as cache:
        try:
            ds = reader(str(path), cache_dir=cache, keep_in_memory=True)
        except (DatasetGenerationError, ValueError) as e:  # ValueError: pyarrow's ArrowInvalid, or no rows
            why = "no rows" if "corresponds to no data" in str(e) else " ".join(str(e.__cause__ or e).split())
            raise UsageError(f"cannot read {path}: {why}") from None
    if not len(ds):
        raise UsageError(f"cannot read {path}: no rows")
    return ds


def map_columns(ds: Dataset, name: str, columns: dict[str, str] | None) -> Dataset:
    """``ds`` with the mapped columns of ``load_eval_data`` (TOFU's by default) and their answers' leading space."""
    have = ds.column_names
    tofu = {"question", "answer"} <= set(have) and not {"prompt", "completion"} & set(have)
    mapping = {**({t: s for t, s in TOFU.items() if s in have} if tofu else {}), **(columns or {})}
    if not mapping:
        return ds
    missing = [s for s in dict.fromkeys(mapping.values()) if s not in have]
    if missing:
        raise UsageError(f"split {name!r} has no column(s) {', '.join(missing)}; it has: {', '.join(have)}")

    def mapped(row: dict) -> dict:
        out = {t: row[s] for t, s in mapping.items()}
        joined = str(out.get("prompt", row.get("prompt")) or "")[-1:].isspace()
        return {**out, **{t: lead(out[t], joined) for t in ANSWERS if t in out}}

    return ds.map(mapped, keep_in_memory=True)  # in memory: no cache file beside a saved dataset


def lead(answer, joined: bool):
    """``answer`` with a leading space, unless it starts with whitespace or ``joined`` (its prompt ends with it);
    lists element by element, None as is."""
    if isinstance(answer, list):
        return [lead(a, joined) for a in answer]
    if answer is None:
        return None
    text = str(answer)
    return text if joined or text[:1].isspace() else " " + text


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
