"""Experiment logging and progress bars: ``report_to: tensorboard`` writes its event files inside the run directory,
and every long step draws a tqdm bar on stderr that ``TQDM_DISABLE=1`` turns off."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_KG, TINY_MODEL, cli

BAR = "%|"  # what every tqdm bar line holds ("eval: 100%|█████| 1/1 ...")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _posttrain(*args, cwd, **env):
    """``posttrain ARGS`` in a subprocess with a controlled environment (tqdm reads ``TQDM_*`` when imported)."""
    proc = subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=_env(**env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_tensorboard_event_files_land_in_the_run_directory_and_match_the_log_history(capsys, monkeypatch, tmp_path,
                                                                                    tiny_kg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # a logging dir resolved against the working directory would land here too
    run = tmp_path / "run"
    proc = cli(capsys, "train", "testbed/base.yaml", "--dataset_path", tiny_kg, "--output_dir", run, *TINY_MODEL,
               "--max_steps", "3", "--logging_steps", "1", "--report_to", "tensorboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = sorted(run.rglob("events.out.tfevents*"))
    assert events, f"no event files under {run}: {sorted(p.name for p in run.rglob('*'))}"
    assert sorted(tmp_path.rglob("events.out.tfevents*")) == events  # none outside the run directory
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # nothing else created beside it (no .partial left)

    history = json.loads((run / "run.json").read_text())["log_history"]
    logged = {h["step"]: h["loss"] for h in history if "loss" in h}
    assert sorted(logged) == [1, 2, 3]
    scalars = {}
    for directory in sorted({p.parent for p in events}):
        acc = EventAccumulator(str(directory))
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            scalars.update({e.step: e.value for e in acc.Scalars("train/loss")})
    assert sorted(scalars) == sorted(logged)
    assert [scalars[s] for s in sorted(scalars)] == pytest.approx([logged[s] for s in sorted(logged)], rel=1e-6)


def test_eval_draws_its_bars_on_stderr_and_progress_false_hides_them(capsys, tiny_run, tiny_kg, tmp_path):
    from posttrain.evaluate import run_eval

    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--engine", "hf", "--suite", "qa", "--splits", "seen",
               "--limit", "8", "--output", tmp_path / "on")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval:" in proc.stderr and "generate:" in proc.stderr and BAR in proc.stderr
    assert BAR not in proc.stdout  # the summary stays clean
    capsys.readouterr()
    run_eval(str(tiny_run), str(tiny_kg), ["qa"], ["seen"], limit=8, engine="hf", output=str(tmp_path / "off"),
             progress=False)
    err = capsys.readouterr().err  # (transformers' own "Loading weights" bar is TQDM_DISABLE's to hide)
    assert "eval:" not in err and "generate:" not in err


def test_gen_draws_bars_and_fingerprints_as_before(capsys, tmp_path):
    """gen's bars (the knowledge graph's corpus, the fingerprint) go to stderr; the fingerprint, now read a batch
    at a time, is still the row-by-row sha256."""
    import hashlib

    from datasets import load_from_disk

    from posttrain.gen import fingerprint

    proc = cli(capsys, "gen", "kg", "--out", tmp_path / "kg", *TINY_KG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kg corpus" in proc.stderr and "fingerprint" in proc.stderr and BAR not in proc.stdout
    dd = load_from_disk(str(tmp_path / "kg"))
    h = hashlib.sha256()
    for split in sorted(dd):
        h.update(split.encode())
        for row in dd[split]:
            h.update(json.dumps(row, sort_keys=True).encode())
    manifest = json.loads((tmp_path / "kg" / "manifest.json").read_text())
    assert manifest["fingerprint"] == h.hexdigest() == fingerprint(dd)


def test_a_bad_input_error_is_one_line_with_bars_on(capsys, tiny_run, tiny_kg, tmp_path):
    """Input is checked before any bar starts: a bad multiple-choice split of the flips suite is one line, before
    the engine loads."""
    from datasets import load_from_disk

    dd = load_from_disk(str(tiny_kg))
    dd["mc"] = dd["seen"].select([0]).add_column("choices", [[" C1 .", " C2 ."]])  # no gold column
    dd.save_to_disk(str(tmp_path / "data"))
    proc = cli(capsys, "eval", tiny_run, "--data", tmp_path / "data", "--suite", "flips", "--splits", "mc",
               "--reference", tiny_run, "--engine", "hf", "--output", tmp_path / "e")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "posttrain: error: split 'mc' has a choices column but no gold column (the index of the right choice)"]
    assert not (tmp_path / "e").exists()


def test_tqdm_disable_silences_a_bar_and_a_bar_shows_on_a_pipe_otherwise(tmp_path):
    """The switch itself, in a bare interpreter (fast): ``bar`` writes to stderr even when it is not a terminal,
    ``enabled=False`` hides it, and ``TQDM_DISABLE=1`` hides the ones left enabled (tqdm, HF Trainer, vLLM alike)."""
    code = ("from posttrain.core.progress import bar\n"
            "from tqdm.auto import tqdm\n"
            "list(bar(range(3), desc='mine'))\n"
            "list(bar(range(3), enabled=False, desc='hidden'))\n"
            "list(tqdm(range(3), desc='plain'))\n")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    assert "mine:" in shown.stderr and "plain:" in shown.stderr and "hidden" not in shown.stderr and not shown.stdout
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(TQDM_DISABLE="1"),
                         cwd=ROOT)
    assert off.returncode == 0 and off.stderr == "" and off.stdout == "", off.stderr


@pytest.mark.slow
@pytest.mark.parametrize("disable", [False, True])
def test_posttrain_commands_show_bars_unless_tqdm_disable(tmp_path, tiny_run, tiny_kg, disable):
    """``posttrain gen``, ``eval --engine hf`` and ``train`` (the HF Trainer's own bar) as a user runs them: bars
    on stderr, none at all with ``TQDM_DISABLE=1``."""
    env = {"TQDM_DISABLE": "1"} if disable else {}
    gen = _posttrain("gen", "kg", "--out", tmp_path / "kg", *TINY_KG, cwd=tmp_path, **env)
    ev = _posttrain("eval", tiny_run, "--data", tiny_kg, "--engine", "hf", "--splits", "seen", "--limit", "8",
                    "--output", tmp_path / "eval", cwd=tmp_path, **env)
    tr = _posttrain("train", "testbed/base.yaml", "--dataset_path", tmp_path / "kg", "--output_dir", tmp_path / "run",
                    *TINY_MODEL, "--max_steps", "2", cwd=tmp_path, **env)
    for proc, names in ((gen, ("kg corpus", "fingerprint")), (ev, ("eval:", "generate:")), (tr, ("2/2",))):
        if disable:
            assert BAR not in proc.stderr, proc.stderr[-2000:]
        else:
            assert all(n in proc.stderr for n in names) and BAR in proc.stderr, proc.stderr[-2000:]
        assert BAR not in proc.stdout


def test_report_to_a_tracker_that_is_not_installed_is_one_line(capsys, tmp_path, tiny_kg):
    from transformers.integrations import get_available_reporting_integrations

    if "wandb" in get_available_reporting_integrations():
        pytest.skip("wandb is installed here")
    proc = cli(capsys, "train", "testbed/base.yaml", "--dataset_path", tiny_kg, "--output_dir", tmp_path / "run",
               *TINY_MODEL, "--max_steps", "1", "--report_to", "wandb")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "posttrain: error: report_to wandb: wandb is not installed (pip install wandb)"]
    assert list(tmp_path.iterdir()) == []
