"""`melanoma sweep`: a grid of settings as runs, each trained and predicted once (finished ones skipped on a rerun),
then the group's comparison; everything the user can get wrong refused before any training."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pandas as pd
import pytest
import reliability_helpers as helpers
import yaml
from conftest import REPO, tiny_trees, write_config

from melanoma import cli
from melanoma.evaluate import sweep

TREE_GRID = ["--grid", "trees.learning_rate=0.05,0.2", "trees.max_leaf_nodes=3,7"]
TREE_RUNS = [f"tiny-learning_rate={rate}-max_leaf_nodes={leaves}" for rate in ("0.05", "0.2") for leaves in (3, 7)]


def files_and_times(folder) -> dict:
    """Every file under `folder` with its modification time: what a skipped run must leave as it was."""
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_a_tree_grid_trains_each_combination_then_a_rerun_skips_them(tiny_data, tmp_path, capsys):
    path = str(write_config(tmp_path, tiny_data, tiny_trees()))
    outputs, submissions = tmp_path / "outputs", tmp_path / "submissions"
    assert cli.main(["sweep", "--config", path, *TREE_GRID, "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    for index, name in enumerate(TREE_RUNS, start=1):
        assert f"sweep {index}/4: {name}: training" in printed
        assert (outputs / name / "oof.csv").is_file() and (submissions / f"{name}.csv").is_file()
    table = printed[printed.index("#  run"):]
    assert all(name in table for name in TREE_RUNS) and "clustered by patient" in table
    folder = next(outputs.glob("sweep-tiny-*"))
    rows = pd.read_csv(folder / "sweep.csv")
    assert sorted(rows["run"]) == sorted(TREE_RUNS) and rows["rank"].tolist() == [1, 2, 3, 4]
    assert rows["p_best"].isna().tolist() == [True, False, False, False]  # each run against the best
    assert set(rows.loc[rows["run"] == TREE_RUNS[1], ["trees.learning_rate", "trees.max_leaf_nodes"]]
               .itertuples(index=False, name=None)) == {(0.05, 7)}
    facts = json.loads((folder / "sweep.json").read_text())
    assert [combo["name"] for combo in facts["combinations"]] == TREE_RUNS and len(facts["rows"]) == 4
    assert cli.main(["compare", str(outputs), "--bootstrap", "0", "--json"]) == 0  # the sweep folder is no run
    assert sorted(row["name"] for row in json.loads(capsys.readouterr().out)) == sorted(TREE_RUNS)

    # a rerun trains and predicts nothing: every run is finished, every file as it was
    before = files_and_times(tmp_path)
    assert cli.main(["sweep", "--config", path, *TREE_GRID, "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    assert [f"sweep {i}/4: {name}: skipped: finished" in printed for i, name in enumerate(TREE_RUNS, 1)] == [True] * 4
    after = files_and_times(tmp_path)
    assert {name: time for name, time in after.items() if "sweep-tiny-" not in name} == \
        {name: time for name, time in before.items() if "sweep-tiny-" not in name}

    # a half-finished run (a fold lost, its submission not written) trains that fold alone, then predicts
    half = outputs / TREE_RUNS[2]
    (half / "fold1" / "oof.csv").unlink()
    (submissions / f"{TREE_RUNS[2]}.json").unlink()
    kept = (half / "fold0" / "model.joblib").stat().st_mtime_ns
    assert cli.main(["sweep", "--config", path, *TREE_GRID, "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"sweep 3/4: {TREE_RUNS[2]}: training" in printed and printed.count("skipped: finished") == 3
    assert "fold 0: already finished" in printed and (half / "fold1" / "oof.csv").is_file()
    assert (half / "fold0" / "model.joblib").stat().st_mtime_ns == kept

    # the same names under another config: refused before any work, naming the run
    before = files_and_times(tmp_path)
    assert cli.main(["sweep", "--config", path, *TREE_GRID, "--set", "trees.max_iter=9"]) == 2
    error = capsys.readouterr().err
    assert f"run '{TREE_RUNS[0]}' was trained with another config" in error and "trees.max_iter" in error
    assert files_and_times(tmp_path) == before


def test_a_tree_grid_on_one_fold_writes_no_submission_and_names_the_command_that_would(tiny_data, tmp_path,
                                                                                        capsys):
    """The trees predict their test rows while they train; a screen still writes no submission, and the
    printed command writes the partial one."""
    path = str(write_config(tmp_path, tiny_data, tiny_trees()))
    assert cli.main(["sweep", "--config", path, "--grid", "trees.max_leaf_nodes=3,7", "--fold", "0",
                     "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    for index, leaves in enumerate((3, 7), start=1):
        name = f"tiny-max_leaf_nodes={leaves}"
        assert (tmp_path / "outputs" / name / "fold0" / "oof.csv").is_file()
        assert not (tmp_path / "outputs" / name / "fold1").exists()
        assert not list((tmp_path / "submissions").glob(f"{name}*.csv"))
        assert (f"sweep {index}/2: {name}: no submission written (fold(s) 0 of 2: a screen compares OOF); to "
                f"write one: python -m melanoma infer --config {path} --set trees.max_leaf_nodes={leaves} "
                f"name={name} --allow-partial") in printed
    assert cli.main(["infer", "--config", path, "--set", "trees.max_leaf_nodes=3", "name=tiny-max_leaf_nodes=3",
                     "--allow-partial"]) == 0
    assert (tmp_path / "submissions" / "tiny-max_leaf_nodes=3-folds0.csv").is_file()


def test_a_screen_with_seeds_names_one_working_command_per_seed_run(tiny_data, tmp_path, capsys):
    """`--fold 0 --seeds 2`: each seed run holds fold 0 alone, no submission is written, and the line names
    one infer command per seed run (its own name and seed); each of them, run as printed, writes that seed
    run's partial submission."""
    path = str(write_config(tmp_path, tiny_data, tiny_trees()))
    assert cli.main(["sweep", "--config", path, "--grid", "trees.max_leaf_nodes=3", "--seeds", "2", "--fold", "0",
                     "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    names = [f"tiny-max_leaf_nodes=3-s{index}" for index in (0, 1)]
    for name in names:
        assert (tmp_path / "outputs" / name / "fold0" / "oof.csv").is_file()
        assert not (tmp_path / "outputs" / name / "fold1").exists()
    assert not list((tmp_path / "submissions").glob("*.csv"))
    line = next(line for line in printed.splitlines() if "no submission written" in line)
    commands = [shlex.split(text) for text in line.split("to write one: ", 1)[1].split("; ")]
    assert len(commands) == 2
    base_seed = yaml.safe_load((tmp_path / "outputs" / names[0] / "config.yaml").read_text())["seed"]
    for index, (name, words) in enumerate(zip(names, commands)):
        assert words[:4] == ["python", "-m", "melanoma", "infer"]
        assert f"name={name}" in words and f"seed={base_seed + index}" in words
        assert cli.main(words[3:]) == 0
        assert (tmp_path / "submissions" / f"{name}-folds0.csv").is_file()


def test_seeds_make_each_combination_a_seed_group_compared_on_seed_means(tiny_data, tmp_path, capsys):
    path = str(write_config(tmp_path, tiny_data, tiny_trees()))
    assert cli.main(["sweep", "--config", path, "--grid", "trees.max_leaf_nodes=3,7", "--seeds", "2",
                     "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    for leaves in (3, 7):
        for seed in (0, 1):
            assert (tmp_path / "outputs" / f"tiny-max_leaf_nodes={leaves}-s{seed}" / "oof.csv").is_file()
    assert "seed means' test" in printed and "seed groups" in printed
    rows = json.loads(next((tmp_path / "outputs").glob("sweep-tiny-*/sweep.json")).read_text())["rows"]
    assert sorted(row["name"] for row in rows) == ["tiny-max_leaf_nodes=3", "tiny-max_leaf_nodes=7"]
    assert all(row["kind"] == "seeds" and len(row["runs"]) == 2 for row in rows)
    second = next(row for row in rows if row["rank"] == 2)
    assert second["p_test"] == "seeds" and second["p_best"] is not None


def test_a_cnn_grid_on_one_fold_trains_and_ranks_that_fold_without_predicting(tiny_data, tmp_path, monkeypatch,
                                                                               capsys):
    helpers.install_tiny_model(monkeypatch)
    path = str(write_config(tmp_path, tiny_data))
    assert cli.main(["sweep", "--config", path, "--grid", "train.lr_peak_per_image=1e-6,1e-5", "--fold", "0",
                     "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    names = ["tiny-lr_peak_per_image=1e-6", "tiny-lr_peak_per_image=1e-5"]
    for index, name in enumerate(names, start=1):
        assert f"sweep {index}/2: {name}: training" in printed
        assert (tmp_path / "outputs" / name / "fold0" / "model.keras").is_file()
        assert not (tmp_path / "outputs" / name / "fold1").exists()
        # a screen is no submission: none is written, the CNN predicts no test images, and the line says how
        assert not (tmp_path / "submissions" / f"{name}-folds0.csv").exists()
        assert not (tmp_path / "outputs" / name / "fold0" / "test.csv").exists()
        assert (f"sweep {index}/2: {name}: no submission written (fold(s) 0 of 2: a screen compares OOF); to "
                f"write one: python -m melanoma infer --config {path} --set "
                f"train.lr_peak_per_image={name.rsplit('=', 1)[1]} name={name} --allow-partial") in printed
    assert all(name in printed[printed.index("#  run"):] for name in names)
    rows = json.loads(next((tmp_path / "outputs").glob("sweep-tiny-*/sweep.json")).read_text())["rows"]
    assert sorted(row["rank"] for row in rows) == [1, 2] and {row["folds"] for row in rows} == {1}
    assert cli.main(["sweep", "--config", path, "--grid", "train.lr_peak_per_image=1e-6,1e-5", "--fold", "0",
                     "--bootstrap", "0"]) == 0
    assert capsys.readouterr().out.count("skipped: finished") == 2

    # a fold that stopped after its last epoch but before its OOF: resumed from its state, as train --resume does
    (tmp_path / "outputs" / names[0] / "fold0" / "oof.csv").unlink()
    assert cli.main(["sweep", "--config", path, "--grid", "train.lr_peak_per_image=1e-6,1e-5", "--fold", "0",
                     "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"sweep 1/2: {names[0]}: training (resuming an interrupted fold)" in printed
    assert "fold 0: resuming after epoch 1 of 1" in printed
    assert "skipped: finished" in printed and (tmp_path / "outputs" / names[0] / "fold0" / "oof.csv").is_file()

    # the printed command predicts the screen's fold as a partial submission
    assert cli.main(["infer", "--config", path, "--set", "train.lr_peak_per_image=1e-6", f"name={names[0]}",
                     "--allow-partial"]) == 0
    assert (tmp_path / "submissions" / f"{names[0]}-folds0.csv").is_file()  # the partial ensemble of fold 0


@pytest.mark.parametrize("grid, message", [
    (["trees.learnig_rate=0.05,0.1"], "--grid trees.learnig_rate=0.05: unknown config key "
                                      "'trees.learnig_rate'; did you mean 'trees.learning_rate'?"),
    (["tabular.learning_rate=0.05,0.1"], "--grid tabular.learning_rate=0.05: config key 'tabular' was renamed: use "
                                         "'trees'"),
    (["trees.max_leaf_nodes=7,many"], "--grid trees.max_leaf_nodes=many: config key 'trees.max_leaf_nodes' "
                                        "must be int"),
    (["trees.learning_rate=0.05,5e-2"], "tiny-learning_rate=0.05 (trees.learning_rate=0.05) and "
                                          "tiny-learning_rate=5e-2 (trees.learning_rate=5e-2) resolve to the same"),
    (["train.verbose=0,1"], "resolve to the same config"),
    (["trees.max_leaf_nodes=7,7"], "gives trees.max_leaf_nodes=7 twice"),
    (["train.checkpoint=best_auc,bets"],
     "--grid train.checkpoint=bets: config key 'train.checkpoint' is 'bets'; choose one of"),
    (["trees.max_iter=5,9"], "trees.max_iter is given both in --grid and in --set"),
    (["name=a,b"], "give the runs' common prefix with --set name="),
    (["trees.max_iter"], "--grid takes KEY=V1,V2"),
])
def test_mistakes_are_refused_before_any_training(tiny_data, tmp_path, capsys, grid, message):
    path = str(write_config(tmp_path, tiny_data, tiny_trees()))
    assert cli.main(["sweep", "--config", path, "--grid", *grid, "--set", "trees.max_iter=4"]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_the_command_line_refuses_an_unknown_key_in_one_line(tmp_path):
    """From the shell: exit status 2, one line, no traceback, and no run folder."""
    result = subprocess.run([sys.executable, "-m", "melanoma", "sweep", "--config", "configs/tabular.yaml", "--grid",
                             "trees.learning_rate=0.05,0.1", "trees.max_leavs=7,15",
                             "--set", f"output_dir={tmp_path / 'outputs'}"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --grid trees.max_leavs=7: unknown config key 'trees.max_leavs'; did you mean "
        "'trees.max_leaf_nodes'?"]
    assert not (tmp_path / "outputs").exists()


def test_run_names_are_short_safe_and_distinct():
    assert sweep.short_keys(["train.dropout", "model.dropout", "train.epochs"]) == {
        "train.dropout": "train.dropout", "model.dropout": "model.dropout", "train.epochs": "epochs"}
    assert sweep.split_values("[a,b],[c], 'x,y' ,2") == ["[a,b]", "[c]", "'x,y'", "2"]
    assert sweep.value_label("2.5e-5") == "2.5e-5"
    unsafe = [sweep.value_label(text) for text in ("in/a*.tfrec", "in_a_.tfrec", "in:a?.tfrec")]
    assert len(set(unsafe)) == 3 and all("/" not in label and "*" not in label for label in unsafe)
    name = sweep.run_label("demo", {"data.train_files": "x" * 300}, {"data.train_files": "train_files"})
    assert len(name) == sweep.LONGEST_NAME
