"""An existing output is never replaced without a word: `gen --out`, `probe --out`, `eval` (RUN/eval or --output)
and `report --output` refuse it with one line and exit 2, touching nothing, unless --overwrite_output_dir is given
(`train`'s output_dir: tests/test_train.py)."""

import json

import pytest

from conftest import TINY_KG, cli
from posttrain.core.runs import check_output


def _existing(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "keep.txt").write_text("mine")
    return path


def _refused(proc, path):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"posttrain: error: output directory {path} already exists; give --overwrite_output_dir to replace it"]
    assert (path / "keep.txt").read_text() == "mine" and [p.name for p in path.iterdir()] == ["keep.txt"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary sibling either


def test_check_output_refuses_a_non_empty_directory_or_a_file(tmp_path):
    check_output(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    for p in (_existing(tmp_path / "full"), tmp_path / "file"):
        with pytest.raises(Exception, match="already exists"):
            check_output(p)
        check_output(p, overwrite=True)


@pytest.mark.parametrize("flag", [["--overwrite_output_dir"], ["--overwrite_output_dir", "true"]])
def test_gen_replaces_an_existing_out_only_when_told(capsys, tmp_path, flag):
    out = _existing(tmp_path / "kg")
    _refused(cli(capsys, "gen", "kg", "--out", out, *TINY_KG), out)
    proc = cli(capsys, "gen", "kg", "--out", out, *flag, *TINY_KG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "manifest.json").is_file() and not (out / "keep.txt").exists()
    assert cli(capsys, "gen", "kg", "--out", out, "--overwrite_output_dir", "false", *TINY_KG).returncode == 2


def test_eval_refuses_an_existing_output_before_any_engine_starts(capsys, monkeypatch, tiny_run, tiny_kg, tmp_path):
    import posttrain.evals.targets as targets

    monkeypatch.setattr(targets, "make_engine", lambda *a, **kw: pytest.fail("an engine was started"))
    out = _existing(tmp_path / "eval")
    _refused(cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--output", out), out)


def test_eval_replaces_its_output_when_told(capsys, tiny_run, tiny_kg, tmp_path):
    out = _existing(tmp_path / "eval")
    proc = cli(capsys, "eval", tiny_run, "--data", tiny_kg, "--splits", "seen", "--limit", "8", "--engine", "hf",
               "--output", out, "--overwrite_output_dir")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "keep.txt").exists() and json.loads((out / "results.json").read_text())["n-samples"]


def test_eval_default_output_run_eval_is_refused_too(capsys, tiny_run, tiny_kg, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _existing(run / "eval")
    _refused(cli(capsys, "eval", run, "--data", tiny_kg), run / "eval")


def test_probe_refuses_an_existing_out(capsys, tiny_run, tiny_kg, tmp_path):
    out = _existing(tmp_path / "probe")
    _refused(cli(capsys, "probe", tiny_run, "--data", tiny_kg, "--splits", "seen", "--out", out, "--engine", "hf"),
             out)


def test_report_refuses_an_existing_output(capsys, tmp_path):
    out = _existing(tmp_path / "report")
    _refused(cli(capsys, "report", tmp_path, "--output", out), out)
