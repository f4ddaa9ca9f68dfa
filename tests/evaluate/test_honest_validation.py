"""Honest validation: the unselected OOF AUC, the patient-aware comparison, the high-sensitivity metric.

No training here (see test_end_to_end.py and test_resume.py for val_epochs.csv written by training).
"""
from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from sklearn.metrics import roc_auc_score
from test_compare_report_blend import FOLDS, Project, truth

from melanoma import cli
from melanoma.core import metrics, tables
from melanoma.core.config import ConfigError, load_config
from melanoma.evaluate import compare, report, scoring, selection, statistics

# --------------------------------------------------------------------------------------------------
# pauc_tpr80, sens_at_spec90, spec_at_sens95
# --------------------------------------------------------------------------------------------------

def isic2024_pauc(target, pred, min_tpr=0.8) -> float:
    """The ISIC 2024 challenge's score: scikit-learn's standardised partial AUC of the flipped problem
    (benign as the positive class, 1 - pred as its score) up to FPR 1 - min_tpr, turned back into the
    raw area (0 .. 1 - min_tpr)."""
    max_fpr = 1 - min_tpr
    scaled = roc_auc_score(1 - np.asarray(target), 1 - np.asarray(pred), max_fpr=max_fpr)
    return 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [1, 2, None])
def test_pauc_tpr80_is_the_isic_2024_formula_with_ties(seed, decimals):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(40, 400))
    target = (rng.random(rows) < rng.uniform(0.05, 0.5)).astype(int)
    target[:2] = [0, 1]
    pred = np.clip(rng.normal(0.35 + rng.uniform(0, 0.4) * target, 0.2), 0, 1)
    if decimals is not None:
        pred = np.round(pred, decimals)  # ties within and across the classes
        assert len(np.unique(pred)) < rows
    value = metrics.partial_auc_above_tpr(target, pred)
    assert value == pytest.approx(isic2024_pauc(target, pred), abs=1e-12)
    assert 0.0 <= value <= 0.2


def test_pauc_tpr80_limits():
    target = np.array([0, 0, 0, 1, 1])
    assert metrics.partial_auc_above_tpr(target, [0.1, 0.2, 0.3, 0.8, 0.9]) == pytest.approx(0.2)
    assert metrics.partial_auc_above_tpr(target, [0.9, 0.8, 0.7, 0.2, 0.1]) == pytest.approx(0.0)
    assert metrics.partial_auc_above_tpr(target, [0.5] * 5) == pytest.approx(isic2024_pauc(target, [0.5] * 5))


def test_operating_points_on_a_small_example():
    # 10 benign, 4 malignant; cutoffs call pred >= cutoff malignant
    benign = [0.05, 0.1, 0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.9]
    malignant = [0.2, 0.55, 0.7, 0.95]
    target = np.r_[np.zeros(10), np.ones(4)].astype(int)
    points = scoring.operating_points(target, np.r_[benign, malignant])
    # specificity >= 90% allows one benign image called (the 0.9): the lowest such cutoff, 0.7, calls
    # two of the four malignant; 0.6 would call a second benign image
    assert points["sens_at_spec90"] == pytest.approx(0.5)
    # sensitivity >= 95% needs all four malignant: cutoff 0.2 calls 7 benign (0.2 .. 0.9)
    assert points["spec_at_sens95"] == pytest.approx(3 / 10)
    table = report.cutoff_table(target, np.r_[benign, malignant], cutoffs=[], sensitivities=[0.95])
    assert table.iloc[0]["specificity"] == pytest.approx(points["spec_at_sens95"])


def one_class_fold_oof() -> pd.DataFrame:
    frame = truth()
    rng = np.random.default_rng(5)
    frame["pred"] = np.round(rng.random(len(frame)) * 0.6 + 0.3 * frame["target"], 2)
    frame.loc[frame["fold"] == 2, "target"] = 0
    return frame


def test_score_json_has_the_high_sensitivity_metrics_and_a_nan_fold(tmp_path, capsys):
    frame = one_class_fold_oof()
    path = tmp_path / "oof.csv"
    frame.to_csv(path, index=False)
    assert cli.main(["score", str(path), "--json", "--bootstrap", "0"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["pauc_tpr80"] == pytest.approx(isic2024_pauc(frame["target"], frame["pred"]), abs=1e-12)
    for fold, rows in frame.groupby("fold"):
        value = result["folds_pauc_tpr80"][str(fold)]
        if fold == 2:
            assert value is None
        else:
            assert value == pytest.approx(isic2024_pauc(rows["target"], rows["pred"]), abs=1e-12)
    assert "fold 2 has only benign images" in captured.err and "pauc_tpr80" in captured.err
    assert 0 <= result["sens_at_spec90"] <= 1 and 0 <= result["spec_at_sens95"] <= 1
    assert result["auc_unselected"] is None and "val_epochs.csv" in result["unselected_reason"]
    assert cli.main(["score", str(path), "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    assert "pauc_tpr80" in table and "sens_at_spec90" in table and "auc_unselected -" in table


# --------------------------------------------------------------------------------------------------
# Comparing two runs: DeLong clustered by patient
# --------------------------------------------------------------------------------------------------

def patient_layout(rng, patients: int = 150, mean_images: int = 19):
    """Patient ids and targets shaped like the competition: about 19 images a patient; a fifth of the
    patients have melanoma, in about one image in eight of theirs (at least one)."""
    counts = rng.poisson(mean_images - 1, patients) + 1
    patient = np.repeat(np.arange(patients), counts)
    melanoma = rng.random(patients) < 0.2
    target = melanoma[patient] & (rng.random(len(patient)) < 0.12)
    target[np.r_[0, np.cumsum(counts)[:-1]][melanoma]] = True
    return patient, target.astype(int)


def run_pairs(rng, patient, target, pairs: int, gap: float):
    """`pairs` pairs of runs' scores: both see the same patient effect; each has its own patient-level
    error (shared by that run's images of a patient) and image noise. Run b separates the classes less
    by `gap` (0: equal expected AUC)."""
    patients = patient.max() + 1
    common = rng.normal(0, 1.0, (pairs, patients))[:, patient]

    def run(separation):
        return (separation * target + common + rng.normal(0, 1.0, (pairs, patients))[:, patient]
                + rng.normal(0, 1.0, (pairs, len(patient))))

    return run(2.0), run(2.0 - gap)


def rejection_rates(seed: int, gap: float, layouts: int = 4, pairs: int = 50) -> dict:
    rng = np.random.default_rng(seed)
    rejected = {"patient": [], "image": [], "difference": []}
    for _ in range(layouts):
        patient, target = patient_layout(rng)
        a, b = run_pairs(rng, patient, target, pairs, gap)
        auc_a, auc_b, p_values = statistics.delong_pvalues(target, a, b, patient)
        rejected["patient"].append(p_values < 0.05)
        rejected["image"].append(statistics.delong_pvalues(target, a, b)[2] < 0.05)
        rejected["difference"].append(auc_a - auc_b)
    return {key: float(np.mean(np.concatenate(values))) for key, values in rejected.items()}


def test_patient_clustered_delong_is_calibrated_and_keeps_its_power(capsys):
    started = time.time()
    null = rejection_rates(seed=2020, gap=0.0)       # 200 pairs of equal expected AUC
    real = rejection_rates(seed=2021, gap=0.8)       # 200 pairs, run b about 0.1 AUC lower
    seconds = time.time() - started
    with capsys.disabled():
        print(f"\n[calibration] 200 null pairs, rejection at p<0.05: clustered by patient {null['patient']:.3f}, "
              f"per image {null['image']:.3f}; power on 200 pairs whose AUCs differ by "
              f"{real['difference']:.3f} on average: clustered {real['patient']:.3f}, per image "
              f"{real['image']:.3f} ({seconds:.1f} s)")
    assert 0.02 <= null["patient"] <= 0.09
    assert null["image"] > 0.12  # the per-image test calls equal runs different far too often
    assert 0.08 <= real["difference"] <= 0.12
    assert real["patient"] >= 0.5


def test_clustered_delong_counts_a_patient_once_however_many_copies():
    """Three identical copies of every image, clustered by original image, give (nearly) the per-image
    test of the original images; the per-image test on the copies is far too sure."""
    rng = np.random.default_rng(4)
    target = (rng.random(300) < 0.2).astype(int)
    a = rng.normal(target, 1.0)
    b = rng.normal(0.8 * target, 1.0)
    _, _, p_original = statistics.delong_test(target, a, b)
    copies = (np.repeat(target, 3), np.repeat(a, 3), np.repeat(b, 3))
    _, _, p_clustered = statistics.clustered_delong_test(*copies, np.repeat(np.arange(300), 3))
    _, _, p_naive = statistics.delong_test(*copies)
    assert p_clustered == pytest.approx(p_original, rel=0.05)
    assert p_naive < p_original / 5
    # one image per patient: the clustered test is DeLong's up to small-sample factors
    auc_a, auc_b, p_single = statistics.clustered_delong_test(target, a, b, np.arange(300))
    assert p_single == pytest.approx(p_original, rel=0.05)
    assert (auc_a, auc_b) == pytest.approx(statistics.delong_test(target, a, b)[:2])
    assert statistics.clustered_delong_test(target, a, a, np.arange(300))[2] == 1.0


def test_batched_pvalues_equal_one_pair_at_a_time():
    rng = np.random.default_rng(8)
    patient, target = patient_layout(rng, patients=40)
    a, b = run_pairs(rng, patient, target, 5, 0.3)
    _, _, batched = statistics.delong_pvalues(target, a, b, patient)
    for row in range(5):
        assert batched[row] == pytest.approx(statistics.clustered_delong_test(target, a[row], b[row], patient)[2])


# --------------------------------------------------------------------------------------------------
# auc_unselected from val_epochs.csv
# --------------------------------------------------------------------------------------------------

EPOCHS = 6


def add_val_epochs(run_dir, oof: pd.DataFrame, seed: int, folds=range(FOLDS), epochs: int = EPOCHS) -> None:
    """fold<K>/val_epochs.csv for a fake run: the signal grows then fades, with noise per fold and epoch."""
    rng = np.random.default_rng(seed)
    for fold in folds:
        rows = oof[oof["fold"] == fold]
        tables = []
        for epoch in range(1, epochs + 1):
            strength = 1.5 - 0.12 * (epoch - 3.5) ** 2 + rng.normal(0, 0.3)
            pred = 1 / (1 + np.exp(-(strength * (2 * rows["target"] - 1) + rng.normal(0, 1, len(rows)))))
            tables.append(pd.DataFrame({"image_name": rows["image_name"], "epoch": epoch, "pred": pred}))
        folder = run_dir / f"fold{fold}"
        folder.mkdir(exist_ok=True)
        pd.concat(tables).sample(frac=1, random_state=fold).to_csv(folder / "val_epochs.csv", index=False)


def recompute_unselected(oof: pd.DataFrame, run_dir) -> tuple[float, float, dict]:
    """The unselected and own-best OOF AUC, written out plainly from the files."""
    folds = sorted(oof["fold"].unique())
    preds = {k: pd.read_csv(run_dir / f"fold{k}" / "val_epochs.csv") for k in folds}
    auc = {}
    for k in folds:
        merged = preds[k].merge(oof[["image_name", "target"]], on="image_name")
        for epoch, rows in merged.groupby("epoch"):
            auc[k, epoch] = (roc_auc_score(rows["target"], rows["pred"]) if rows["target"].nunique() == 2
                             else np.nan)
    epochs = sorted({epoch for _, epoch in auc})
    chosen, own = {}, {}
    for k in folds:
        mean_others = [np.nanmean([auc[j, e] for j in folds if j != k]) for e in epochs]
        chosen[k] = epochs[int(np.nanargmax(mean_others))]
        own_aucs = [auc[k, e] for e in epochs]
        own[k] = None if np.isnan(own_aucs).all() else epochs[int(np.nanargmax(own_aucs))]

    def pooled(pick):
        if None in pick.values():
            return None
        rows = pd.concat([preds[k][preds[k]["epoch"] == pick[k]] for k in folds])
        rows = rows.merge(oof[["image_name", "target"]], on="image_name")
        return roc_auc_score(rows["target"], rows["pred"])

    return pooled(chosen), pooled(own), chosen


def test_auc_unselected_takes_each_fold_at_the_epoch_best_on_the_other_folds(tmp_path, capsys):
    project = Project(tmp_path)
    project.make_run("run", 1.5, seed=1)
    run_dir = project.outputs / "run"
    oof = pd.read_csv(run_dir / "oof.csv")
    add_val_epochs(run_dir, oof, seed=11)
    unselected, own_best, chosen = recompute_unselected(oof, run_dir)

    assert cli.main(["score", str(run_dir / "oof.csv"), "--json", "--bootstrap", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["auc_unselected"] == pytest.approx(unselected, abs=1e-12)
    assert result["auc_own_best"] == pytest.approx(own_best, abs=1e-12)
    assert result["selection_gain"] == pytest.approx(own_best - unselected, abs=1e-12)
    assert {int(k): v["epoch_unselected"] for k, v in result["epoch_selection"].items()} == chosen
    assert result["auc"] == roc_auc_score(oof["target"], oof["pred"])  # the OOF AUC itself is unchanged
    assert result["warnings"] == []
    assert cli.main(["score", str(run_dir / "oof.csv"), "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    assert f"auc_unselected {unselected:.4f}" in table and "selection_gain" in table


def test_auc_unselected_with_a_one_class_fold_and_with_missing_files(tmp_path):
    frame = one_class_fold_oof()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    add_val_epochs(run_dir, frame, seed=3)
    prepared = tables.prepare_oof(frame)
    chosen = selection.epoch_selection(prepared, str(run_dir))
    unselected, _, epochs = recompute_unselected(frame, run_dir)
    assert chosen.auc_unselected == pytest.approx(unselected, abs=1e-12)
    assert chosen.folds[2]["epoch_own_best"] is None and chosen.folds[2]["epoch_unselected"] == epochs[2]
    assert chosen.selection_gain is None and any("selection_gain left out" in n for n in chosen.notes)

    (run_dir / "fold1" / "val_epochs.csv").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scoring.ScoreWarning)
        result = scoring.score_oof(frame, bootstrap=0, run_dir=str(run_dir))
    assert result["auc_unselected"] is None and "fold(s) 1" in result["unselected_reason"]
    assert any("auc_unselected left out" in note for note in result["warnings"])

    (run_dir / "fold0" / "val_epochs.csv").write_text("image_name,epoch,pred\nISIC_0000000,1,nan\n")
    (run_dir / "fold1" / "val_epochs.csv").write_text("image_name,epoch,pred\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scoring.ScoreWarning)
        result = scoring.score_oof(frame, bootstrap=0, run_dir=str(run_dir))
    assert result["auc_unselected"] is None and result["auc"] is not None  # the OOF still scores


# --------------------------------------------------------------------------------------------------
# compare and report
# --------------------------------------------------------------------------------------------------

def test_compare_shows_unselected_and_pauc_and_ranks_by_unselected(tmp_path, capsys):
    project = Project(tmp_path)
    project.make_run("strong", 2.0, seed=1)
    project.make_run("weaker", 1.2, seed=2)
    project.make_run("no-epochs", 1.0, seed=3)
    for name, seed in (("strong", 21), ("weaker", 22)):
        add_val_epochs(project.outputs / name, pd.read_csv(project.outputs / name / "oof.csv"), seed=seed)

    rows = {row["name"]: row for row in compare.compare_runs(str(project.outputs), bootstrap=0)}
    strong = pd.read_csv(project.outputs / "strong" / "oof.csv")
    weaker = pd.read_csv(project.outputs / "weaker" / "oof.csv")
    assert rows["strong"]["auc_unselected"] == pytest.approx(
        recompute_unselected(strong, project.outputs / "strong")[0], abs=1e-12)
    assert rows["strong"]["pauc_tpr80"] == pytest.approx(isic2024_pauc(strong["target"], strong["pred"]), abs=1e-12)
    assert rows["no-epochs"]["auc_unselected"] is None and rows["no-epochs"]["rank"] == 3
    _, _, p_patient = statistics.clustered_delong_test(strong["target"], strong["pred"], weaker["pred"],
                                                    strong["patient_id"])
    assert rows["weaker"]["p_best"] == float(f"{p_patient:.3g}") and rows["weaker"]["p_test"] == "patient"

    by_image = {row["name"]: row for row in compare.compare_runs(str(project.outputs), bootstrap=0, test="image")}
    _, _, p_image = statistics.delong_test(strong["target"], strong["pred"], weaker["pred"])
    assert by_image["weaker"]["p_best"] == float(f"{p_image:.3g}")

    ranked = compare.compare_runs(str(project.outputs), bootstrap=0, by="unselected")
    assert [row["name"] for row in ranked] == sorted(["strong", "weaker"],
                                                     key=lambda n: -rows[n]["auc_unselected"]) + ["no-epochs"]
    assert ranked[2]["rank"] is None and "not ranked" in ranked[2]["note"]
    assert ranked[1]["delta_best"] == pytest.approx(ranked[1]["auc_unselected"] - ranked[0]["auc_unselected"],
                                                    abs=1e-6)

    assert cli.main(["compare", str(project.outputs), "--bootstrap", "0", "--by", "unselected"]) == 0
    table = capsys.readouterr().out
    assert "unselected" in table.splitlines()[0] and "pAUC80" in table.splitlines()[0]
    assert "clustered by patient" in table
    with pytest.raises(SystemExit) as exit_status:  # argparse: usage and status 2
        cli.main(["compare", str(project.outputs), "--by", "nonsense"])
    assert exit_status.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_report_draws_validation_auc_per_epoch_with_the_chosen_epochs(tmp_path, capsys):
    project = Project(tmp_path)
    config = project.make_run("run", 1.5, seed=1)
    run_dir = project.outputs / "run"
    oof = pd.read_csv(run_dir / "oof.csv")
    add_val_epochs(run_dir, oof, seed=5)
    for fold in range(FOLDS):
        (run_dir / f"fold{fold}" / "state.json").write_text(json.dumps({"epoch": EPOCHS, "best_epoch": 2}))
    _, _, chosen = recompute_unselected(oof, run_dir)
    result = report.make_report(str(run_dir), bootstrap=0)
    figure = run_dir / "report" / "epoch_selection.png"
    assert str(figure) in result["files"] and figure.read_bytes().startswith(b"\x89PNG")
    marks = {(fold, kind): epoch for fold, kind, epoch, _ in result["epoch_marks"]}
    assert {fold: marks[fold, "others"] for fold in range(FOLDS)} == chosen
    assert all(marks[fold, "kept"] == 2 for fold in range(FOLDS))
    assert cli.main(["report", config, "--bootstrap", "0"]) == 0
    assert "epoch_selection.png" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# train.checkpoint: epoch
# --------------------------------------------------------------------------------------------------

def test_checkpoint_epoch_is_validated(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochs: 4\n  checkpoint: epoch\n  checkpoint_epoch: 3\n")
    assert load_config(path).train.checkpoint_epoch == 3
    bad = {"train.checkpoint_epoch=5": "must be in 1..train.epochs (4), got 5",
           "train.checkpoint_epoch=0": "must be in 1..train.epochs",
           "train.checkpoint_epoch=null": "set train.checkpoint_epoch",
           "train.checkpoint_epoch=2.5": "must be int"}
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(path, [override])
    with pytest.raises(ConfigError, match="used only with train.checkpoint: epoch"):
        load_config(path, ["train.checkpoint=best_auc"])
    base = (REPO / "configs" / "base.yaml").read_text()
    assert "checkpoint_epoch: null" in base and "| epoch" in base


# --------------------------------------------------------------------------------------------------
# Training writes val_epochs.csv
# --------------------------------------------------------------------------------------------------

def test_training_keeps_every_epochs_validation_predictions(tiny_data, tmp_path, capsys, monkeypatch):
    """A tiny run (the one-convolution model of the reliability tests), 2 folds x 3 epochs, keeping the
    model of epoch 2 (train.checkpoint: epoch): val_epochs.csv holds every validation image once per
    epoch, its predictions give the logged val_auc, the OOF (no TTA) equals its epoch-2 predictions,
    and score's auc_unselected is the one recomputed here from the files."""
    import reliability_helpers as helpers
    from conftest import write_config

    helpers.install_tiny_model(monkeypatch)
    path = write_config(tmp_path, tiny_data, "train:\n  epochs: 3\n  batch_size: 8\n  steps_per_epoch: 2\n"
                                              "  verbose: 0\n  checkpoint: epoch\n  checkpoint_epoch: 2\n")
    assert cli.main(["train", "--config", str(path), "--fold", "all"]) == 0
    assert "checkpoint: epoch 2 (train.checkpoint_epoch)" in capsys.readouterr().out
    run = tmp_path / "outputs" / "tiny"
    oof = pd.read_csv(run / "oof.csv")
    for fold in (0, 1):
        folder = run / f"fold{fold}"
        epochs = pd.read_csv(folder / "val_epochs.csv")
        assert list(epochs.columns) == ["image_name", "epoch", "pred"]
        names = sorted(oof.loc[oof["fold"] == fold, "image_name"])
        for epoch in (1, 2, 3):
            assert sorted(epochs.loc[epochs["epoch"] == epoch, "image_name"]) == names
        assert len(epochs) == 3 * len(names) and sorted(epochs["epoch"].unique()) == [1, 2, 3]
        history = pd.read_csv(folder / "history.csv")
        joined = epochs.merge(oof[["image_name", "target"]], on="image_name")
        for epoch, rows in joined.groupby("epoch"):
            logged = history.loc[history["epoch"] == epoch, "val_auc"].item()
            assert roc_auc_score(rows["target"], rows["pred"]) == pytest.approx(logged, abs=1e-9)
        assert json.loads((folder / "state.json").read_text())["best_epoch"] == 2
        kept = oof[oof["fold"] == fold].merge(epochs[epochs["epoch"] == 2], on="image_name")
        assert len(kept) == len(names)
        np.testing.assert_allclose(kept["pred_x"], kept["pred_y"], rtol=1e-5, atol=1e-7)

    unselected, own_best, _ = recompute_unselected(oof, run)
    assert cli.main(["score", str(run / "oof.csv"), "--json", "--bootstrap", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["auc_unselected"] == pytest.approx(unselected, abs=1e-12)
    assert result["selection_gain"] == pytest.approx(own_best - unselected, abs=1e-12)
    assert cli.main(["score", str(run / "oof.csv"), "--bootstrap", "0"]) == 0
    table = capsys.readouterr().out
    assert f"auc_unselected {unselected:.4f}" in table and "pauc_tpr80" in table


def test_val_epoch_rows_keep_the_committed_epochs_only(tmp_path):
    from melanoma.runs import fold_state

    rows = pd.DataFrame({"image_name": ["a", "b"] * 3, "epoch": [1, 1, 2, 2, 3, 3], "pred": np.linspace(0, 1, 6)})
    rows.to_csv(tmp_path / "val_epochs.csv", index=False)
    kept = fold_state.val_epoch_rows(str(tmp_path), 2)  # epoch 3 was written, state.json not yet
    assert kept["epoch"].tolist() == [1, 1, 2, 2] and kept["pred"].tolist() == rows["pred"][:4].tolist()
    rows[rows["epoch"] != 2].to_csv(tmp_path / "val_epochs.csv", index=False)
    with pytest.raises(ConfigError, match="does not hold epochs 1..3"):
        fold_state.val_epoch_rows(str(tmp_path), 3)
