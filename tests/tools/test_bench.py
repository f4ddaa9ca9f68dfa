"""The `bench` command (melanoma.tools.bench): figures and JSON keys on a tiny generated dataset."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.tools import bench

BASE = Path(__file__).resolve().parents[2] / "configs" / "base.yaml"
TINY = ["--set", "data.image_size=32", "train.batch_size=8", "tta.prediction_batch_size=16", "tta.steps=4",
        "tta.mode=dihedral", "--batches", "2", "--min-seconds", "0", "--warmup", "1", "--train-images", "24",
        "--test-images", "6", "--records-images", "6", "--score-rows", "400", "--synthetic", "--json"]
PIPELINE_KEYS = {"images_per_second", "cpu_ms_per_image", "cores_busy", "images", "seconds"}


def run(tmp_path, capsys, extra: list[str]) -> dict:
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--config", str(BASE), *TINY, "--out", str(out), *extra]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    return printed


def check_common(result: dict) -> None:
    score = result["scoring"]
    assert (score["rows"], score["resamples"]) == (400, 1000) and score["seconds"] > 0
    assert score["ci95"][0] < score["auc"] < score["ci95"][1]
    assert {"cpu_count", "accelerator", "precision", "onednn"} <= set(result["machine"])
    assert result["machine"]["cpu_count"] >= 1
    assert result["settings"]["data"] == "synthetic" and result["settings"]["record_size"] == [32, 32]
    train = result["train_pipeline"]
    assert set(train) == {"albumentations", "opencv", "tf", "tf_per_image"}
    for figures in train.values():
        assert PIPELINE_KEYS <= set(figures) and figures["images_per_second"] > 0
    for backend in ("albumentations", "opencv", "tf"):
        assert train[backend]["speedup_over_tf_per_image"] > 0
    assert PIPELINE_KEYS <= set(result["eval_pipeline"])
    assert result["tta_pipeline"]["views"] == 4 and result["tta_pipeline"]["mode"] == "dihedral"
    records = result["records"]
    assert records["images_per_second"] > 0 and records["one_core_images_per_second"] > 0
    assert records["images_per_second_per_core"] == pytest.approx(records["images_per_second"] / records["workers"])


def test_bench_pipelines_json(tmp_path, capsys):
    result = run(tmp_path, capsys, ["--no-model"])
    check_common(result)
    assert "model" not in result and "epoch" not in result


@pytest.mark.slow
def test_bench_with_model_json(tmp_path, capsys):
    result = run(tmp_path, capsys, ["--model-batches", "1"])
    check_common(result)
    assert result["model"]["train_step"]["images_per_second"] > 0
    assert result["model"]["predict"]["views_per_second"] > 0
    for key in ("epoch", "tta_prediction"):
        whole = result[key]
        slower = "pipeline" if whole["pipeline_images_per_second"] < whole["model_images_per_second"] else "model"
        assert whole["limited_by"] == slower  # the slower of the two figures it reports
        assert whole["images_per_second"] > 0


def test_bench_table_has_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [a for a in TINY if a != "--json"]
    assert cli.main(["bench", "--config", str(BASE), *args, "--no-model", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for text in ("albumentations", "opencv", "tf backend", "per-image tf.image", "eval pipeline",
                 "TTA pipeline", "records"):
        assert text in table
    assert json.loads(out.read_text())["settings"]["image_size"] == 32


def test_bad_counts_are_refused(capsys):
    assert cli.main(["bench", "--config", str(BASE), "--batches", "0"]) == 2
    assert "--batches" in capsys.readouterr().err


def test_per_image_reference_keeps_shape_dtype_and_range():
    config = config_lib.load_config(BASE, ["augment.probability=1.0"])
    augment_image = bench.per_image_augmenter(config.augment)
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    dataset = tf.data.Dataset.from_tensors(image).repeat(3).map(augment_image)
    for out in dataset:
        assert out.shape == (24, 24, 3) and out.dtype == tf.uint8


def test_limits_name_the_slower_stage():
    assert bench._limits(100.0, 10.0, 9.0)["limited_by"] == "model"
    limits = bench._limits(10.0, 100.0, 5.0)
    assert limits["limited_by"] == "pipeline" and limits["fraction_of_bound"] == pytest.approx(0.5)
