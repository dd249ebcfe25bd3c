"""Run directories: written in a temporary sibling, renamed into place only when complete; run metadata."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from posttrain.core.errors import UsageError

PACKAGES = ("posttrain", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers", "vllm")
OVERWRITE = "--overwrite_output_dir"  # the flag (HF's name) that lets a command replace an existing output
STATE = "trainer_state.json"  # written last into a checkpoint: a checkpoint without it is incomplete


def partial_dir(final: Path) -> Path:
    """Where a run is written until it is complete (one fixed name: every process of a distributed launch writes
    there, and an interrupted run is found there to resume)."""
    return final.parent / f".{final.name}.partial"


def complete_checkpoints(folder: Path) -> list[Path]:
    """The checkpoints in ``folder`` that were saved whole, by step (a run killed while saving leaves one without
    its trainer state)."""
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit() and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def check_output(final: str | Path, overwrite: bool = False) -> None:
    """Refuse an existing output (a non-empty directory, or a file) unless ``overwrite``: called by every command
    before it does any work, so that a refusal leaves everything as it was. An empty directory is simply used."""
    final = Path(final)
    if overwrite or not (final.exists() or final.is_symlink()):
        return
    if final.is_dir() and not final.is_symlink() and not any(final.iterdir()):
        return
    raise UsageError(f"output directory {final} already exists; give {OVERWRITE} to replace it")


@contextmanager
def atomic_dir(final: str | Path, tmp_name: str | None = None, main: bool = True, resume: bool = False,
               keep_if=None):
    """Yield a temporary directory beside ``final``; on success it replaces ``final`` (an existing one is swapped
    out and deleted), on any exception it is removed, so ``final`` is either the old one or the complete new one.
    Whether an existing ``final`` may be replaced is the caller's decision, made earlier (``check_output``).

    In a distributed run every process passes the same ``tmp_name`` and only the main process (``main``) clears,
    renames and cleans up. ``resume``: a temporary directory left by an interrupted run is used as it is, not
    cleared; ``keep_if(tmp)``: on an exception, keep the temporary directory when this says so (a run that has
    saved checkpoints to resume from).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / (tmp_name or f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    if main and not resume:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(exist_ok=True)
    try:
        yield tmp
    except BaseException:
        if main and not (keep_if and keep_if(tmp)):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not main:
        return
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists() or old.is_symlink():
        old.unlink()


def write_json(path: str | Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_hash() -> str | None:
    """The commit of the posttrain source tree, when it is a git checkout."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_info(command: list[str], config: dict, seed: int | None, wall_time_s: float) -> dict:
    return {
        "command": command,
        "config": config,
        "seed": seed,
        "wall_time_s": round(wall_time_s, 3),
        "versions": package_versions(),
        "git_hash": git_hash(),
        "cwd": os.getcwd(),
    }
