"""Negative downsampling (data.negatives_per_positive): a seeded draw of each fold's benign training images,
every malignant one kept, validation (and so the OOF) untouched, for the CNN's records as for the trees."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import write_config

from melanoma.core.config import ConfigError, load_config
from melanoma.data import sampling, sources
from melanoma.input import pipeline
from melanoma.train.families import tree_model


def read_names(paths, keep) -> list[str]:
    """The image names tf.data reads from `paths` through the fold's record filter."""
    spec = {"image_name": tf.io.FixedLenFeature([], tf.string)}
    return [e["image_name"].numpy().decode() for e in pipeline._read(paths, ordered=True, keep=keep).map(
        lambda s: tf.io.parse_single_example(s, spec))]


def test_the_draw_keeps_every_malignant_image_and_ratio_times_as_many_benign():
    table = pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(100)],
                          "target": [1 if i % 20 == 0 else 0 for i in range(100)]})
    dropped = sampling.negatives_dropped(table, 3, seed=1)
    assert len(dropped) == 95 - 15 and not set(dropped) & set(table.loc[table["target"] == 1, "image_name"])
    shuffled = table.sample(frac=1.0, random_state=0)
    assert sorted(sampling.negatives_dropped(shuffled, 3, seed=1)) == sorted(dropped)  # names, not row order
    assert sorted(sampling.negatives_dropped(table, 3, seed=2)) != sorted(dropped)
    assert len(sampling.negatives_dropped(table, 2.5, seed=1)) == 95 - math.ceil(2.5 * 5)
    assert len(sampling.negatives_dropped(table, None, seed=1)) == 0
    assert len(sampling.negatives_dropped(table, 50, seed=1)) == 0  # fewer benign images than asked for
    assert len(sampling.negatives_dropped(table.assign(target=0), 3, seed=1)) == 0
    assert sampling.summary(table, dropped, 3) == {"negatives_per_positive": 3, "benign_kept": 15,
                                                   "benign_left_out": 80}


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_ratio_that_is_not_positive_is_refused(tiny_data, tmp_path, value):
    with pytest.raises(ConfigError, match="data.negatives_per_positive"):
        load_config(write_config(tmp_path, tiny_data), [f"data.negatives_per_positive={value}"])


def test_a_fold_trains_on_the_draw_and_validates_on_every_image(tiny_data, tmp_path):
    path = write_config(tmp_path, tiny_data)
    whole = sources.prepare_fold(load_config(path), 0, progress=False)
    config = load_config(path, ["data.negatives_per_positive=2"])
    fold = sources.prepare_fold(config, 0, progress=False)
    table = pd.read_csv(tiny_data["records"] / "train.csv")
    training = table[table["part"] % 2 != 0]
    malignant = set(training.loc[training["target"] == 1, "image_name"])
    read = read_names(fold.train_paths, fold.record_filter())
    assert set(read) >= malignant and len(read) == len(set(read))
    assert len(read) - len(malignant) == 2 * len(malignant) == fold.train_images - len(malignant)
    assert set(read) <= set(training["image_name"])
    assert fold.valid_names == whole.valid_names and fold.valid_images == whole.valid_images
    assert set(read_names(fold.valid_paths, None)) >= fold.valid_names  # validation files are not filtered
    assert fold.summary["negative_downsampling"] == {"negatives_per_positive": 2, "benign_kept": 2 * len(malignant),
                                                     "benign_left_out": len(training) - 3 * len(malignant)}
    assert fold.summary["training"]["competition"]["images"] == 3 * len(malignant)
    assert whole.summary["negative_downsampling"]["benign_left_out"] == 0
    again = sources.prepare_fold(config, 0, progress=False)
    assert again.excluded == fold.excluded  # seeded
    reseeded = sources.prepare_fold(load_config(path, ["data.negatives_per_positive=2", "seed=7"]), 0,
                                    progress=False)
    assert reseeded.excluded != fold.excluded
    assert len(fold.drops) == len(whole.drops)  # not duplicates: duplicates.csv does not list them
    assert np.isclose(len(fold.excluded), len(training) - 3 * len(malignant))
    # the tabular family's rows of the fold: the same draw, every validation image
    trees_rows, valid_rows = tree_model.fold_rows(SimpleNamespace(train=table), fold)
    assert set(trees_rows["image_name"]) == set(read) and set(valid_rows["image_name"]) == fold.valid_names
