"""compare, report and blend over small fake run folders (no training, no TensorFlow)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import snapshot
from sklearn.metrics import roc_auc_score

from melanoma import cli
from melanoma.core import io_utils, metrics, tables
from melanoma.core.config import load_config
from melanoma.core.errors import DataError
from melanoma.evaluate import blend, compare, report, statistics

FOLDS = 5
ROWS = 500
TEST_ROWS = 60
PNG = b"\x89PNG\r\n\x1a\n"


def truth() -> pd.DataFrame:
    """The images every fake run scored: patients grouped into folds, ~20% malignant."""
    rng = np.random.default_rng(2020)
    patient = rng.integers(0, 100, ROWS)
    return pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(ROWS)],
                         "patient_id": [f"IP_{p:04d}" for p in patient],
                         "target": (rng.random(ROWS) < 0.2).astype(int), "fold": patient % FOLDS})


TEST_IDS = [f"ISIC_9{i:06d}" for i in range(TEST_ROWS)]


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.outputs = root / "outputs"
        self.submissions = root / "submissions"
        self.configs = root / "configs"
        self.configs.mkdir(parents=True)
        self.sample = root / "sample_submission.csv"
        pd.DataFrame({"image_name": TEST_IDS, "target": 0}).to_csv(self.sample, index=False)

    def make_run(self, name: str, quality: float, seed: int, folds_done=range(FOLDS), whole_oof=True,
                 backbone="efficientnet-b0", image_size=256, external=(), tta=0, history=True) -> str:
        """Write configs/<name>.yaml and outputs/<name>/ as training would; returns the config path."""
        settings = {"name": name, "output_dir": str(self.outputs), "submission_dir": str(self.submissions),
                    "data": {"sample_submission": str(self.sample), "folds": FOLDS, "image_size": image_size,
                             "external_files": list(external)},
                    "model": {"backbone": backbone}, "tta": {"steps": tta}}
        config_path = self.configs / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        config = load_config(config_path)
        run = self.outputs / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
        rng = np.random.default_rng(seed)
        oof = truth()
        noise = rng.normal(0, 1, ROWS)
        oof["pred"] = 1 / (1 + np.exp(-(quality * (2 * oof["target"] - 1) + noise - 1.5)))
        oof = oof[["image_name", "patient_id", "target", "pred", "fold"]]
        for fold in folds_done:
            folder = run / f"fold{fold}"
            folder.mkdir()
            oof[oof["fold"] == fold].to_csv(folder / "oof.csv", index=False)
            pd.DataFrame({"image_name": TEST_IDS, "pred": rng.random(TEST_ROWS)}).to_csv(folder / "test.csv",
                                                                                         index=False)
            (folder / "test.json").write_text(json.dumps({"tta": config.tta.to_dict(), "image_size": image_size}))
            if history and fold != 4:
                epochs = np.arange(6)
                table = pd.DataFrame({"epoch": epochs, "loss": 0.6 / (epochs + 1), "auc": 0.6 + 0.05 * epochs,
                                      "val_loss": 0.7 / (epochs + 1), "val_auc": 0.55 + 0.05 * epochs,
                                      "lr": 1e-4 * 0.8 ** epochs})
                if fold == 1:
                    table = table.drop(columns=["val_auc", "lr"])  # a history without some metrics
                table.to_csv(folder / "history.csv", index=False)
        if whole_oof and set(folds_done) == set(range(FOLDS)):
            oof.to_csv(run / "oof.csv", index=False)
        return str(config_path)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return Project(tmp_path)


def oof_of(project: Project, name: str) -> pd.DataFrame:
    return tables.read_oof(str(project.outputs / name / "oof.csv"))


# --------------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------------

def test_compare_ranks_complete_runs_and_shows_incomplete_ones_apart(project, capsys):
    project.make_run("good", 2.0, seed=1, backbone="efficientnet-b3", image_size=384,
                     external=["input/isic2019-384/*.tfrec"], tta=8)
    project.make_run("medium", 0.9, seed=2)
    project.make_run("poor", 0.3, seed=3)
    project.make_run("halfway", 3.0, seed=4, folds_done=[0, 1])      # better AUC, but only 2 folds
    project.make_run("no-top-oof", 1.2, seed=5, whole_oof=False)     # folds all done, oof.csv not yet joined
    broken = project.outputs / "broken"
    broken.mkdir()
    (broken / "oof.csv").write_text("image_name,patient_id,target,pred,fold\nA,P,1,nan,0\nB,P,0,0.2,0\n")

    rows = compare.compare_runs(str(project.outputs), bootstrap=200, seed=0)
    names = [row["name"] for row in rows]
    assert names == ["good", "no-top-oof", "medium", "poor", "halfway", "broken"]
    by_name = {row["name"]: row for row in rows}

    good = by_name["good"]
    assert good["auc"] == roc_auc_score(oof_of(project, "good")["target"], oof_of(project, "good")["pred"])
    assert good["rank"] == 1 and good["delta_best"] == 0 and good["p_best"] is None
    assert (good["backbone"], good["image_size"], good["external"], good["tta"]) == ("efficientnet-b3", 384,
                                                                                   True, 8)
    assert good["ci95"][0] < good["auc"] < good["ci95"][1] and good["folds_done"] == 5
    assert by_name["medium"]["external"] is False

    poor = by_name["poor"]
    assert poor["delta_best"] < -0.1 and poor["p_best"] < 1e-3 and poor["n_common"] == ROWS
    good_oof, poor_oof = oof_of(project, "good"), oof_of(project, "poor")
    _, _, p_value = statistics.clustered_delong_test(good_oof["target"], good_oof["pred"], poor_oof["pred"],
                                                     good_oof["patient_id"])
    assert poor["p_best"] == float(f"{p_value:.3g}")  # DeLong clustered by patient (compare --test patient)

    halfway = by_name["halfway"]
    assert halfway["status"] == "incomplete" and halfway["auc"] is None and halfway["rank"] is None
    assert halfway["auc_partial"] > good["auc"] and (halfway["folds_done"], halfway["folds"]) == (2, 5)
    assert by_name["no-top-oof"]["status"] == "complete"
    assert by_name["broken"]["status"] == "error" and "NaN" in by_name["broken"]["note"]

    assert cli.main(["compare", str(project.outputs), "--bootstrap", "50"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["#", "name", "backbone"]
    assert lines[1].split()[1] == "good" and "incomplete" in table and "*" in table and "2/5" in table

    assert cli.main(["compare", str(project.outputs), "--json", "--bootstrap", "0"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listed] == names and listed[0]["ci95"] is None


def test_compare_on_chosen_folds_ranks_one_fold_runs_and_tests_them(project, capsys):
    """compare --fold 0: runs trained on fold 0 alone are complete there, ranked and tested on fold 0's images."""
    project.make_run("recipe", 1.0, seed=1, folds_done=[0])
    project.make_run("change", 0.2, seed=2, folds_done=[0])
    project.make_run("whole", 1.0, seed=3)            # every fold: scored on fold 0 alone too
    project.make_run("elsewhere", 2.0, seed=4, folds_done=[1])

    plain = {row["name"]: row for row in compare.compare_runs(str(project.outputs), bootstrap=0)}
    assert plain["recipe"]["status"] == plain["change"]["status"] == "incomplete"
    assert plain["recipe"]["p_best"] is None and plain["whole"]["rank"] == 1

    rows = compare.compare_runs(str(project.outputs), bootstrap=0, folds=[0])
    by_name = {row["name"]: row for row in rows}
    fold0 = truth()["fold"] == 0
    recipe, change = (oof_of_fold(project, name, 0) for name in ("recipe", "change"))
    assert by_name["recipe"]["auc"] == roc_auc_score(recipe["target"], recipe["pred"])
    assert {by_name[name]["status"] for name in ("recipe", "change", "whole")} == {"complete"}
    assert by_name["whole"]["n"] == by_name["change"]["n"] == int(fold0.sum())
    assert by_name["elsewhere"]["status"] == "incomplete" and "partial" in by_name["elsewhere"]["note"]
    best = rows[0]
    other = by_name["change"]
    assert best["name"] != "change" and other["rank"] == 3 and other["n_common"] == int(fold0.sum())
    best_oof = oof_of_fold(project, best["name"], 0)
    _, _, p_value = statistics.clustered_delong_test(best_oof["target"], best_oof["pred"], change["pred"],
                                                     best_oof["patient_id"])
    assert other["p_best"] == float(f"{p_value:.3g}")

    assert cli.main(["compare", str(project.outputs), "--fold", "0", "--bootstrap", "0"]) == 0
    captured = capsys.readouterr()
    assert "1/1" in captured.out and "fold(s) 0 alone" in captured.err
    for bad in ("x", "0,-1"):
        assert cli.main(["compare", str(project.outputs), "--fold", bad]) == 2
        assert "--fold" in capsys.readouterr().err


def oof_of_fold(project: Project, name: str, fold: int) -> pd.DataFrame:
    return tables.read_oof(str(project.outputs / name / f"fold{fold}" / "oof.csv"))


def test_compare_of_an_empty_or_missing_folder(project, capsys):
    project.outputs.mkdir()
    assert cli.main(["compare", str(project.outputs)]) == 0
    assert "no runs" in capsys.readouterr().err
    assert cli.main(["compare", str(project.root / "absent")]) == 2


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

def test_cutoff_table_on_a_small_example():
    target = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.5, 0.3, 0.1, 0.1, 0.05])
    table = report.cutoff_table(target, pred, cutoffs=[0.5], sensitivities=[0.75, 0.9]).set_index("rule")
    at_75 = table.loc["sensitivity >= 75%"]
    assert at_75["cutoff"] == 0.6 and (at_75["tp"], at_75["fp"], at_75["tn"], at_75["fn"]) == (3, 1, 5, 1)
    assert at_75["specificity"] == pytest.approx(5 / 6) and at_75["precision"] == pytest.approx(0.75)
    at_90 = table.loc["sensitivity >= 90%"]          # needs all four malignant images: cutoff at 0.2
    assert at_90["cutoff"] == 0.2 and at_90["sensitivity"] == 1 and at_90["fp"] == 3
    fixed = table.loc["fixed 0.5"]
    assert (fixed["tp"], fixed["fp"], fixed["tn"], fixed["fn"]) == (3, 2, 4, 1)
    assert "max Youden J" in table.index


def test_report_writes_figures_and_the_cutoff_table(project, capsys):
    config = project.make_run("exp", 1.5, seed=7)
    assert cli.main(["report", config, "--bootstrap", "100"]) == 0
    folder = project.outputs / "exp" / "report"
    for name in ["roc.png", "histograms.png", "training_curves.png"]:
        assert (folder / name).read_bytes()[:8] == PNG and (folder / name).stat().st_size > 5000
    table = pd.read_csv(folder / "cutoffs.csv")
    assert list(table.columns) == report.CUTOFF_COLUMNS
    oof = oof_of(project, "exp")
    positives = int(oof["target"].sum())
    for wanted in (0.90, 0.95):
        row = table[table["rule"] == f"sensitivity >= {wanted:.0%}"].iloc[0]
        assert row["sensitivity"] >= wanted and row["tp"] + row["fn"] == positives
        assert row["tp"] + row["fp"] + row["tn"] + row["fn"] == ROWS
        stricter = oof["pred"][oof["pred"] > row["cutoff"]].min()  # the next cutoff up loses sensitivity
        assert ((oof["pred"] >= stricter) & (oof["target"] == 1)).sum() / positives < wanted
    score = json.loads((folder / "score.json").read_text())
    assert score["auc"] == roc_auc_score(oof["target"], oof["pred"]) and score["complete"] is True
    out = capsys.readouterr().out
    assert "OOF AUC" in out and "sensitivity >= 95%" in out and "wrote" in out and "roc.png" in out


def test_report_uses_set_overrides_and_copes_with_missing_history(project, capsys):
    config = project.make_run("exp", 1.5, seed=7)
    project.make_run("exp-no-history", 1.0, seed=8, history=False)
    assert cli.main(["report", config, "--set", "name=exp-no-history", "--bootstrap", "0"]) == 0
    folder = project.outputs / "exp-no-history" / "report"
    assert (folder / "roc.png").exists() and not (folder / "training_curves.png").exists()
    assert "training curves left out" in capsys.readouterr().err


def test_report_of_an_incomplete_run_says_so(project, capsys):
    config = project.make_run("partial", 1.5, seed=9, folds_done=[0, 2])
    assert cli.main(["report", config, "--bootstrap", "0"]) == 0
    assert "incomplete run: only folds 0,2 of 5" in capsys.readouterr().err
    assert (project.outputs / "partial" / "report" / "roc.png").exists()


def test_report_of_a_run_that_was_never_trained_exits_2(project, capsys):
    config = project.configs / "untrained.yaml"
    config.write_text(f"output_dir: {project.outputs}\n")
    assert cli.main(["report", str(config)]) == 2
    assert "run folder not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# blend
# --------------------------------------------------------------------------------------------------

def test_blend_weights_are_fitted_on_other_folds_and_judged_on_the_held_out_one():
    rng = np.random.default_rng(0)
    rows = 200
    folds = np.arange(rows) % 5
    target = (rng.random(rows) < 0.3).astype(int)
    row_id = np.arange(rows) / rows                      # column 0 identifies the rows a fit was given
    preds = np.column_stack([row_id, rng.random(rows), rng.random(rows)])
    calls = []

    def recording_fit(train_preds, train_target):
        calls.append(set(np.round(train_preds[:, 0] * rows).astype(int)))
        weights = np.array([0.0, len(calls), 1.0])
        return weights / weights.sum()

    blended, weights = blend.cross_validated_blend(preds, target, folds, fit=recording_fit, show_progress=False)
    assert len(calls) == 5
    for fold, seen in zip(range(5), calls):
        assert seen == set(np.flatnonzero(folds != fold))           # never the held-out fold's rows
        held_out = folds == fold
        np.testing.assert_allclose(blended[held_out], preds[held_out] @ weights[fold])


def test_cross_validated_blend_auc_is_not_optimistic():
    rng = np.random.default_rng(0)
    rows = 400
    target = (rng.random(rows) < 0.3).astype(int)
    noise = rng.random((rows, 12))                       # twelve models that know nothing
    blended, _ = blend.cross_validated_blend(noise, target, np.arange(rows) % 5, show_progress=False)
    in_sample = metrics.auc(target, noise @ blend.fit_weights(noise, target))
    cross_validated = metrics.auc(target, blended)
    assert in_sample > cross_validated + 0.03
    assert abs(cross_validated - 0.5) < 0.06


def test_fit_weights_prefers_the_informative_model():
    rng = np.random.default_rng(1)
    target = (rng.random(600) < 0.3).astype(int)
    good = target + rng.normal(0, 0.6, 600)
    weights = blend.fit_weights(np.column_stack([rng.random(600), good, rng.random(600)]), target)
    assert weights.sum() == pytest.approx(1) and weights[1] == weights.max() and (weights >= 0).all()


def test_blend_command_writes_a_run_and_a_submission(project, capsys):
    first = project.make_run("alpha", 1.4, seed=11)
    second = project.make_run("beta", 1.0, seed=12, backbone="efficientnet-b2")
    third = project.make_run("gamma", 0.5, seed=13)
    assert cli.main(["blend", first, second, third, "--method", "weights", "--name", "trio"]) == 0
    out = capsys.readouterr().out
    assert "cross-validated OOF AUC" in out and "optimistic" in out
    folder = project.outputs / "blend-trio"
    summary = json.loads((folder / "blend.json").read_text())
    oof = tables.read_oof(str(folder / "oof.csv"))
    assert len(oof) == ROWS and summary["auc"] == metrics.auc(oof["target"], oof["pred"])
    assert sorted(summary["fold_weights"]) == [str(fold) for fold in range(FOLDS)]
    assert sum(summary["weights"].values()) == pytest.approx(1)
    assert summary["auc_in_sample"] >= summary["auc"] - 0.01
    assert summary["fitted_on"] == "ranks"
    ranks = np.column_stack([blend.rank_scale(oof_of(project, name).set_index("image_name").loc[oof["image_name"],
                                                                                            "pred"].to_numpy())
                             for name in ("alpha", "beta", "gamma")])
    for fold, weights in summary["fold_weights"].items():  # each fold: its weights on the runs' ranks
        rows = (oof["fold"] == int(fold)).to_numpy()
        np.testing.assert_allclose(oof["pred"].to_numpy()[rows], ranks[rows] @ list(weights.values()), atol=1e-6)
    submission = project.submissions / "blend-trio.csv"
    record = json.loads((project.submissions / "blend-trio.json").read_text())
    assert record["run"] == str(folder) and record["folds"] == list(range(FOLDS)) and record["partial"] is False
    assert record["family"] == "blend" and record["members"] == ["alpha", "beta", "gamma"]
    from melanoma.predict.submission import sha256_of, validate_submission

    assert record["sha256"] == sha256_of(str(submission))

    validated = validate_submission(str(submission), str(project.sample))
    assert len(validated) == TEST_ROWS

    rows = {row["name"]: row for row in compare.compare_runs(str(project.outputs), bootstrap=0)}
    assert rows["blend-trio"]["status"] == "complete"
    assert rows["blend-trio"]["backbone"] == "blend: alpha+beta+gamma"

    # The same blend again leaves the submission alone; a different one backs the old file up.
    assert cli.main(["blend", first, second, third, "--method", "weights", "--name", "trio"]) == 0
    assert "left unchanged" in capsys.readouterr().err
    assert cli.main(["blend", first, second, "--method", "mean", "--name", "trio"]) == 0
    assert "moved the old one" in capsys.readouterr().err
    assert len(list(project.submissions.glob("blend-trio.*.csv"))) == 1


def test_mean_and_rank_blends(project):
    first = project.make_run("alpha", 1.4, seed=11)
    second = project.make_run("beta", 1.0, seed=12)
    summary = blend.blend([first, second], method="mean")
    assert summary["name"] == "blend-mean-alpha-beta"
    blended = tables.read_oof(str(project.outputs / summary["name"] / "oof.csv")).set_index("image_name")
    alpha = oof_of(project, "alpha").set_index("image_name")
    beta = oof_of(project, "beta").set_index("image_name")
    np.testing.assert_allclose(blended["pred"], (alpha["pred"] + beta["pred"]).loc[blended.index] / 2)
    submission = pd.read_csv(project.submissions / f"{summary['name']}.csv").set_index("image_name")
    tests = [pd.concat([pd.read_csv(project.outputs / name / f"fold{k}" / "test.csv").set_index("image_name")
                        for k in range(FOLDS)], axis=1).mean(axis=1) for name in ("alpha", "beta")]
    np.testing.assert_allclose(submission["target"], ((tests[0] + tests[1]) / 2).loc[submission.index])

    ranked = blend.blend([project.outputs / "alpha", project.outputs / "beta"], method="rank")
    rank_oof = tables.read_oof(str(project.outputs / ranked["name"] / "oof.csv"))
    assert rank_oof["pred"].between(0, 1).all()
    assert ranked["auc"] == pytest.approx(metrics.auc(rank_oof["target"], rank_oof["pred"]))


def test_weights_fitted_on_ranks_do_not_depend_on_a_runs_scale(project):
    """A run whose probabilities live on another scale (a class-weighted CNN beside trees trained on the
    prior) blends exactly as it would on the same scale: the weights are fitted on ranks."""
    first = project.make_run("alpha", 1.4, seed=11)
    second = project.make_run("beta", 1.0, seed=12)
    before = blend.blend([first, second], method="weights", name="before")
    for path in [project.outputs / "beta" / "oof.csv"] + list((project.outputs / "beta").glob("fold*/oof.csv")):
        frame = pd.read_csv(path)
        frame["pred"] = 0.05 * frame["pred"] ** 3  # the same order, another scale
        frame.to_csv(path, index=False)
    after = blend.blend([first, second], method="weights", name="after")
    assert after["auc"] == before["auc"] and after["fold_weights"] == before["fold_weights"]
    np.testing.assert_allclose(oof_of(project, "blend-after")["pred"], oof_of(project, "blend-before")["pred"])


def test_a_blend_below_its_best_member_says_so(project, capsys):
    good = project.make_run("good", 3.0, seed=11)
    noise = project.make_run("noise", 0.0, seed=12)
    assert cli.main(["blend", good, noise, "--method", "mean", "--name", "worse"]) == 0
    err = capsys.readouterr().err
    summary = json.loads((project.outputs / "blend-worse" / "blend.json").read_text())
    assert summary["below_best_member"] is True and summary["auc"] < summary["members"][0]["auc"]
    assert "below its best member's, good" in err and "submit that run alone" in err
    assert cli.main(["blend", good, project.make_run("good2", 3.0, seed=13), "--name", "fine"]) == 0
    assert "below its best member" not in capsys.readouterr().err


def test_blend_of_a_run_with_folds_missing_follows_the_partial_rule(project, capsys):
    first = project.make_run("alpha", 1.4, seed=11)
    partial = project.make_run("partial", 1.0, seed=12, folds_done=[0, 1, 2])
    assert cli.main(["blend", first, partial, "--name", "pair"]) == 2  # the user's input: a run not finished
    err = capsys.readouterr().err
    assert "partial is incomplete" in err and "--allow-partial" in err
    assert not list(project.outputs.glob("blend-*")) and not project.submissions.exists()
    assert cli.main(["blend", first, partial, "--name", "pair", "--allow-partial"]) == 0
    assert "partial ensemble: folds [3, 4]" in capsys.readouterr().err
    folder = project.outputs / "blend-pair-folds0_1_2"
    assert sorted(set(oof_of(project, folder.name)["fold"])) == [0, 1, 2]
    record = json.loads((project.submissions / "blend-pair-folds0_1_2.json").read_text())
    assert record["partial"] is True and record["folds"] == [0, 1, 2] and record["folds_expected"] == FOLDS
    assert not (project.submissions / "blend-pair.csv").exists()
    rows = {row["name"]: row for row in compare.compare_runs(str(project.outputs), bootstrap=0)}
    assert rows["blend-pair-folds0_1_2"]["status"] != "complete"


def test_blend_refuses_different_images(project, capsys):
    first = project.make_run("alpha", 1.4, seed=11)
    other = project.make_run("other", 1.0, seed=13)
    oof = pd.read_csv(project.outputs / "other" / "oof.csv")
    oof.iloc[:-3].to_csv(project.outputs / "other" / "oof.csv", index=False)
    with pytest.raises(DataError, match="different images"):
        blend.blend([first, other])
    assert cli.main(["blend", first]) == 2
    assert cli.main(["blend", first, other, "--name", "../../elsewhere"]) == 2  # a name inside output_dir
    assert "one folder name inside output_dir" in capsys.readouterr().err
    assert not list(project.outputs.glob("blend-*"))


def test_blend_over_a_folder_it_did_not_write_is_refused_and_nothing_is_deleted(project, capsys):
    """A blend replaces only a blend's folder: a trained run's folder or the user's own under the blend's name
    is exit 2, before any work, and left as it was; a blend's own folder is replaced whole."""
    first = project.make_run("alpha", 1.4, seed=11)
    second = project.make_run("beta", 1.0, seed=12)
    run = project.outputs / "blend-mine"  # a run trained under a name that starts like a blend's
    shutil.copytree(project.outputs / "alpha", run)
    notes = project.outputs / "blend-notes"
    notes.mkdir()
    (notes / "ideas.md").write_text("keep me")
    for folder, name in ((run, "mine"), (notes, "notes")):
        before = snapshot(folder)
        assert cli.main(["blend", first, second, "--name", name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(folder) in err and "another --name" in err and "Traceback" not in err
        assert snapshot(folder) == before
        assert not (project.submissions / f"blend-{name}.csv").exists()
    assert cli.main(["blend", first, second, "--name", "ours"]) == 0
    (project.outputs / "blend-ours" / "stale.csv").write_text("from an earlier version\n")
    assert cli.main(["blend", first, second, "--name", "ours", "--method", "rank"]) == 0  # its own: replaced whole
    written = sorted(p.name for p in (project.outputs / "blend-ours").iterdir())
    assert written == [".written-by", "blend.json", "oof.csv"]
    assert io_utils.writer_of(str(project.outputs / "blend-ours")) == "blend"


def test_report_writes_its_folder_whole_and_refuses_one_it_did_not_write(project, capsys):
    config = project.make_run("exp", 1.2, seed=1)
    report_folder = project.outputs / "exp" / "report"
    report_folder.mkdir()
    (report_folder / "my-notes.md").write_text("keep me")
    assert cli.main(["report", config, "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "my-notes.md" in err and "move that folder aside" in err, err
    assert [p.name for p in report_folder.iterdir()] == ["my-notes.md"]
    (report_folder / "my-notes.md").unlink()
    (report_folder / "roc.png").write_bytes(b"an earlier report's")  # from before the marker: its own
    assert cli.main(["report", config, "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {report_folder / 'roc.png'}" in out and io_utils.writer_of(str(report_folder)) == "report"
    assert (report_folder / "roc.png").read_bytes() != b"an earlier report's"
    assert not [p for p in report_folder.parent.iterdir() if p.name.startswith(".report")]  # no temporary left


@pytest.mark.parametrize("change, test, note", [
    ({"target": [1, 0, 1, 1]}, "patient", "targets differ from the best run's on shared images; no p-value"),
    ({"patient_id": ["P1", "P1", "P2", "P3"]}, "patient",
     "patient ids differ from the best run's on shared images; no p-value"),
    ({"patient_id": ["P1", "P1", "P2", "P3"]}, "image", None),  # per image, the patients do not matter
])
def test_compare_says_why_two_runs_get_no_p_value(change, test, note):
    best = pd.DataFrame({"image_name": list("ABCD"), "patient_id": ["P1", "P2", "P2", "P3"], "target": [1, 0, 0, 1],
                         "pred": [0.9, 0.2, 0.4, 0.7]})
    other = best.assign(pred=[0.6, 0.5, 0.3, 0.8], **change)
    row: dict = {}
    compare._test_against(row, best, other, test)
    assert row.get("note") == note and (("p_best" in row) == (note is None))
