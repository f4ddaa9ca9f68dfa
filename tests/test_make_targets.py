"""The make targets find a run as the Python commands do (the config's name, output_dir, SET) and take a
CONFIG path with a space; `make tensorboard` on a folder that is not there says so."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from melanoma import cli

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(*argv: str) -> subprocess.CompletedProcess:
    # the test's own Python stands in for .venv's (INSTALLED: nothing to install)
    return subprocess.run(["make", "-s", *argv, f"PY={sys.executable}", f"INSTALLED={Path(__file__)}", "CI="],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})


def test_run_dir_follows_name_output_dir_and_set(tmp_path, capsys):
    config = tmp_path / "my configs" / "c.yaml"
    config.parent.mkdir()
    config.write_text(f"name: named\noutput_dir: {tmp_path / 'runs'}\n")
    assert cli.main(["run-dir", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "runs" / "named")
    assert cli.main(["run-dir", "--config", str(config), "--set", "name=cx"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "runs" / "cx")


def test_make_score_scores_the_run_that_set_names_in_a_path_with_a_space(tmp_path):
    config = tmp_path / "my configs" / "c.yaml"
    config.parent.mkdir()
    config.write_text(f"output_dir: {tmp_path / 'runs'}\n")
    run = tmp_path / "runs" / "cx"
    run.mkdir(parents=True)
    (run / "oof.csv").write_text("image_name,patient_id,target,pred,fold\na,1,0,0.1,0\nb,2,1,0.8,0\n"
                                 "c,3,0,0.3,1\nd,4,1,0.6,1\n")
    done = make("score", f"CONFIG={config}", "SET=name=cx")
    assert done.returncode == 0 and "OOF AUC 1.0000" in done.stdout and f"{run}/oof.csv" in done.stdout, done.stderr
    done = make("score", f"CONFIG={config}")  # the stem's run (c) is not trained: the score says which file
    assert done.returncode != 0 and f"{tmp_path / 'runs' / 'c' / 'oof.csv'}" in done.stderr, done
    assert "unrecognized arguments" not in done.stderr


def test_make_tensorboard_on_a_folder_that_is_not_there_says_so(tmp_path):
    done = make("tensorboard", f"LOGDIR={tmp_path / 'nothing-here'}")
    assert done.returncode == 2 and "nothing-here is not a folder" in done.stdout + done.stderr, done
