"""Answers that used to mislead now say what is true: score on a run folder points at oof.csv, shift's usage
lists the pairs it compares, bad validation weights name their images, and a single part is not answered
with "set data.folds to at most 1"."""
from __future__ import annotations

import pytest

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import preflight, validation_weights


def test_score_on_a_run_folder_points_at_its_oof(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "oof.csv", "blend.json"):
        (run / name).write_text("x\n")
    assert cli.main(["score", str(run)]) == 2
    assert f"give {run / 'oof.csv'}?" in capsys.readouterr().err


def test_shifts_usage_lists_the_pairs_it_compares(capsys):
    with pytest.raises(SystemExit):
        cli.main(["shift", "--help"])
    out = capsys.readouterr().out
    assert "train,test | competition,external" in out and "{train,test,competition,external}" not in out


def test_likeness_out_of_range_names_the_images(tmp_path):
    path = tmp_path / "test_likeness.csv"
    path.write_text("image_name,set,likeness\nISIC_1,train,0.2\nISIC_2,train,1.5\nISIC_3,test,0.9\n")
    with pytest.raises(DataError, match=r"\(images ISIC_2\)"):
        validation_weights.read_likeness(str(path))


def test_one_part_is_not_answered_with_at_most_one_fold(tmp_path):
    (tmp_path / "train00-5.tfrec").write_bytes(b"")
    config = config_lib.load_config("configs/demo.yaml", [f"data.train_files={tmp_path}/train*.tfrec", "data.folds=2"])
    with pytest.raises(ConfigError) as refused:
        preflight.check_folds(config, [0, 1])
    assert "at most 1" not in str(refused.value) and "build records with more parts" in str(refused.value)


def test_serve_on_a_blend_folder_says_a_blend_has_no_model_and_names_its_member_runs(tmp_path, capsys):
    """A blend (or a seeds' mean) holds predictions, not a model: serve names the runs to serve instead of
    advising to train the blend's folder (said before the serve extra is looked for: installing it would
    not help)."""
    import json

    blend = tmp_path / "outputs" / "blend-mean-a-b"
    blend.mkdir(parents=True)
    runs = [str(tmp_path / "outputs" / name) for name in ("a", "b")]
    (blend / "blend.json").write_text(json.dumps({"method": "mean", "members": [
        {"name": "a", "path": runs[0], "auc": 0.8}, {"name": "b", "path": runs[1], "auc": 0.7}]}))
    (blend / "oof.csv").write_text("image_name,patient_id,target,pred,fold\n")
    assert cli.main(["serve", "--config", str(blend)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a blend" in err and "not a model" in err, err
    assert runs[0] in err and runs[1] in err and f"serve --config {runs[0]}" in err and "train.py" not in err
