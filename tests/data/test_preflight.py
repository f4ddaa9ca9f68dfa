"""Checks before any work (data/preflight.py): input files and records folders, folds against the parts,
writable folders; each problem named with its key, exit status 2, nothing written."""
from __future__ import annotations

import shutil

import reliability_helpers as helpers
from conftest import write_config

from melanoma import cli
from melanoma.data import record_format


def test_training_refuses_a_records_folder_that_is_not_complete(tiny_data, tmp_path, capsys, monkeypatch):
    from melanoma.model import network as model

    monkeypatch.setattr(model, "build_model", helpers.build_tiny_model)
    path = write_config(tmp_path, tiny_data)
    # what an earlier version left after a kill: finished parts, one half-written part, no CSV
    partial = tmp_path / "partial"
    partial.mkdir()
    parts = sorted(tiny_data["records"].glob("train*.tfrec"))
    for part in parts[:3]:
        shutil.copy(part, partial / part.name)
    (partial / f".{parts[3].stem}.tmp-0123abcd.tfrec").write_bytes(parts[3].read_bytes()[:500])
    assert cli.main(["train", "--config", str(path), "--set", f"data.train_files={partial}/train*.tfrec"]) == 2
    err = capsys.readouterr().err
    assert f"folder {partial}" in err and "half-written" in err and "records" in err
    # a manifest that lists a part that is not there
    listed = tmp_path / "listed"
    shutil.copytree(tiny_data["records"], listed)
    record_format.write_manifest(str(listed))
    (listed / parts[5].name).unlink()
    assert cli.main(["train", "--config", str(path), "--set", f"data.train_files={listed}/train*.tfrec"]) == 2
    err = capsys.readouterr().err
    assert f"folder {listed}" in err and parts[5].name in err
    assert not (tmp_path / "outputs").exists()
