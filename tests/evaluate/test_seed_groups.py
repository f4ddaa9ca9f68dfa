"""Seed groups in compare, and the test of two configs' seed means: patients and seeds both sampled."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import yaml
from test_honest_validation import patient_layout

from melanoma.core import config as config_lib
from melanoma.evaluate import compare, statistics


def seed_runs(rng, patient, target, common, seeds: int, separation: float, tau: float) -> np.ndarray:
    """`seeds` runs' scores of one config: each seed trains a model that separates the classes by the
    config's `separation` moved by N(0, tau) (a good or a bad seed), with its own patient-level and image
    errors; every run sees the same patient effect `common`."""
    patients = patient.max() + 1
    return np.array([(separation + rng.normal(0, tau)) * target + common
                     + rng.normal(0, 1.0, patients)[patient] + rng.normal(0, 1.0, len(patient))
                     for _ in range(seeds)])


def rejection(seed: int, gap: float, tau: float, pairs: int = 200, seeds: int = 3) -> dict:
    """Share of `pairs` config pairs (3 seeds each; config b separates less by `gap`) rejected at p < 0.05
    by the seed means' test, and by a test on the seed means that leaves the seeds out (patients only)."""
    # scipy's normal for the test that ignores the seeds
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    ours, patients_only, differences = [], [], []
    for index in range(pairs):
        if index % 50 == 0:
            patient, target = patient_layout(rng)
            common = rng.normal(0, 1.0, patient.max() + 1)[patient]
        a = seed_runs(rng, patient, target, common, seeds, 2.0, tau)
        b = seed_runs(rng, patient, target, common, seeds, 2.0 - gap, tau)
        result = statistics.seed_means_test(target, a, b, patient)
        ours.append(result["p"] < 0.05)
        patients_only.append(2 * norm.sf(abs(result["difference"]) / result["se_data"]) < 0.05)
        differences.append(result["difference"])
    return {"seeds": float(np.mean(ours)), "patients_only": float(np.mean(patients_only)),
            "difference": float(np.mean(differences))}


def test_the_seed_means_test_is_calibrated_when_seeds_matter_and_keeps_its_power(capsys):
    started = time.time()
    quiet = rejection(2030, gap=0.0, tau=0.0)       # seeds differ by their own noise only
    noisy = rejection(2031, gap=0.0, tau=0.3)       # seeds also train better or worse models (AUC std ~0.02)
    real = rejection(2032, gap=0.6, tau=0.0)        # config b about 0.07 AUC lower
    with capsys.disabled():
        print(f"\n[seed means] 200 null pairs of 3 seeds each, rejection at p<0.05: seeds alike {quiet['seeds']:.3f} "
              f"(patients only {quiet['patients_only']:.3f}), seeds that matter {noisy['seeds']:.3f} (patients only "
              f"{noisy['patients_only']:.3f}); power at a difference of {real['difference']:.3f}: "
              f"{real['seeds']:.3f} ({time.time() - started:.1f} s)")
    assert quiet["seeds"] <= 0.08 and noisy["seeds"] <= 0.12
    assert noisy["patients_only"] >= 0.18  # leaving the seeds out calls equal configs different too often
    assert 0.05 <= real["difference"] <= 0.09 and real["seeds"] >= 0.5


def test_seed_variance_is_what_the_seeds_spread_beyond_the_images_sampling():
    aucs = np.array([0.80, 0.82, 0.84])
    assert statistics.seed_variance(aucs, np.zeros((3, 3))) == pytest.approx(np.var(aucs, ddof=1))
    # sampling alone explains the spread: no seed variance left
    assert statistics.seed_variance(aucs, np.eye(3) * 0.01) == 0.0
    # perfectly correlated sampling errors move every run alike: they explain none of the spread
    assert statistics.seed_variance(aucs, np.full((3, 3), 0.01)) == pytest.approx(np.var(aucs, ddof=1))


def test_the_test_is_symmetric_and_names_too_few_seeds():
    rng = np.random.default_rng(4)
    patient, target = patient_layout(rng, patients=60)
    common = rng.normal(0, 1.0, patient.max() + 1)[patient]
    a = seed_runs(rng, patient, target, common, 3, 2.0, 0.2)
    b = seed_runs(rng, patient, target, common, 2, 1.5, 0.2)
    forward = statistics.seed_means_test(target, a, b, patient)
    backward = statistics.seed_means_test(target, b, a, patient)
    assert forward["difference"] == pytest.approx(-backward["difference"])
    assert forward["p"] == pytest.approx(backward["p"])
    interval = statistics.seed_mean_interval(target, a, patient)
    assert interval["ci95"][0] < interval["mean"] < interval["ci95"][1]
    assert interval["mean"] == pytest.approx(forward["mean_a"])
    with pytest.raises(Exception, match="two seed runs or more"):
        statistics.seed_means_test(target, a[:1], b, patient)


def write_run(outputs, name: str, oof: pd.DataFrame, **config) -> None:
    """A finished run folder: its saved config (base.yaml's, with `config` over it) and its OOF."""
    settings = config_lib.load_config(config_lib.REPOSITORY / "configs" / "base.yaml").to_dict()
    settings.update(name=name, output_dir=str(outputs))
    for key, value in config.items():
        section, _, leaf = key.partition("__")
        if leaf:
            settings[section][leaf] = value
        else:
            settings[section] = value
    settings["data"]["folds"] = 2
    folder = outputs / name
    for fold in (0, 1):
        (folder / f"fold{fold}").mkdir(parents=True)
        oof[oof["fold"] == fold].to_csv(folder / f"fold{fold}" / "oof.csv", index=False)
    oof.to_csv(folder / "oof.csv", index=False)
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))


def oof_table(rng, patient, target, scores) -> pd.DataFrame:
    return pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(len(target))], "patient_id": patient,
                         "target": target, "pred": scores, "fold": patient % 2})


def test_compare_groups_runs_that_differ_only_by_seed(tmp_path):
    rng = np.random.default_rng(7)
    patient, target = patient_layout(rng, patients=80)
    common = rng.normal(0, 1.0, patient.max() + 1)[patient]
    outputs = tmp_path / "outputs"
    good = seed_runs(rng, patient, target, common, 3, 2.5, 0.1)
    weak = seed_runs(rng, patient, target, common, 3, 1.0, 0.1)
    for index in range(3):  # named freely: the config, not the name, says who belongs together
        write_run(outputs, f"good-s{index}", oof_table(rng, patient, target, good[index]), seed=10 + index)
        write_run(outputs, f"weak{index}", oof_table(rng, patient, target, weak[index]), seed=index,
                  train__lr_peak_per_image=2.0e-6)
    write_run(outputs, "good-again", oof_table(rng, patient, target, good[0]), seed=10)  # repeats seed 10
    write_run(outputs, "other-size", oof_table(rng, patient, target, good[1]), seed=11, data__image_size=128)
    rows = {row["name"]: row for row in compare.compare_runs(str(outputs), bootstrap=0)}
    assert set(rows) == {"good", "weak0+weak1+weak2", "good-again", "other-size"}
    group = rows["good"]
    assert group["runs"] == ["good-s0", "good-s1", "good-s2"] and [s["seed"] for s in group["seeds"]] == [10, 11, 12]
    assert "repeats seed 10 of good-s0" in rows["good-again"]["note"]
    weak_row = rows["weak0+weak1+weak2"]
    versus = weak_row["vs_best_group"]
    assert versus["best"] == "good" and versus["difference"] < -0.1 and versus["p"] < 0.01
    expected = statistics.seed_means_test(target, weak, good, patient)
    assert versus["difference"] == pytest.approx(expected["difference"]) and versus["p"] == pytest.approx(expected["p"])
    table = compare.format_table(list(rows.values()))
    assert "seed groups" in table and "vs good:" in table
