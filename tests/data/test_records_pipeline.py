
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import write_config

from melanoma.core.config import load_config
from melanoma.core.errors import DataError
from melanoma.data import examples, record_format
from melanoma.input import pipeline


def read_table(paths: list[str], split: str) -> pd.DataFrame:
    """image_name and the int64 columns of every record, in file order (the records' own reader)."""
    parts = list(examples.batches(paths, split))
    return pd.DataFrame({name: np.concatenate([part[name] for part in parts]) for name in parts[0]})


def test_file_names_give_parts_and_counts(tiny_data):
    files = record_format.list_files(f"{tiny_data['records']}/train*.tfrec")
    assert [f.part for f in files] == list(range(6))
    table = pd.read_csv(tiny_data["records"] / "train.csv")
    assert sum(f.count for f in files) == len(table)
    for f in files:
        assert f.count == int((table["part"] == f.part).sum())
    with pytest.raises(DataError, match="does not follow the public schema"):
        record_format.parse_file_name("images-3.tfrec")
    with pytest.raises(FileNotFoundError, match="matched no file"):
        record_format.list_files(str(tiny_data["records"] / "nothing*.tfrec"))


def test_records_round_trip(tiny_data):
    """Every value written is read back equal; images decode to the asked size."""
    table = pd.read_csv(tiny_data["records"] / "train.csv").set_index("image_name")
    paths = [f.path for f in record_format.list_files(f"{tiny_data['records']}/train*.tfrec")]
    read = read_table(paths, "train").set_index("image_name")
    assert sorted(read.index) == sorted(table.index)
    for column in record_format.TRAIN_INT_FEATURES:
        np.testing.assert_array_equal(read[column].to_numpy(), table.loc[read.index, f"{column}_code"].to_numpy())
    # patient ids are encoded consistently: one code per patient
    assert table.groupby("patient_id")["patient_id_code"].nunique().max() == 1
    example = next(iter(tf.data.TFRecordDataset(paths[:1]).map(lambda s: examples.parse_examples(s, "train"))))
    image = examples.decode_image(example["image"], 32)
    assert image.shape == (32, 32, 3) and image.dtype == tf.uint8
    assert examples.decode_image(example["image"], 24).shape == (24, 24, 3)


def test_encoding_is_shared_by_train_and_test():
    train = pd.DataFrame({"patient_id": ["a", "b"], "sex": ["male", None], "age_approx": [40.0, None],
                          "anatom_site_general_challenge": ["torso", "head/neck"],
                          "diagnosis": ["unknown", "melanoma"], "target": [0, 1]})
    test = pd.DataFrame({"patient_id": ["c"], "sex": ["female"], "age_approx": [55.0],
                         "anatom_site_general_challenge": ["oral/genital"]})
    train_out, test_out, encodings = record_format.encode_metadata(train, test)
    assert encodings["sex"] == {"female": 0, "male": 1}
    assert train_out["sex"].tolist() == [1, -1] and test_out["sex"].tolist() == [0]
    assert train_out["age_approx"].tolist() == [40, -1]
    sites = encodings["anatom_site_general_challenge"]
    assert test_out["anatom_site_general_challenge"].tolist() == [sites["oral/genital"]]


def test_eval_pipeline_keeps_order_and_every_image(tiny_data, tmp_path):
    config = load_config(write_config(tmp_path, tiny_data))
    paths = [f.path for f in record_format.list_files(f"{tiny_data['records']}/test*.tfrec")]
    expected = read_table(paths, "test")["image_name"].tolist()
    for steps, mode in ((0, "random"), (3, "dihedral")):
        dataset, views = pipeline.prediction_dataset(paths, config, "test", tta_steps=steps, tta_mode=mode,
                                                     batch_size=7 * max(1, steps))
        names, sizes = [], []
        for batch in dataset:
            names.extend(n.decode() for n in batch["image_name"].numpy())
            sizes.append((batch["inputs"]["image"].shape[0], len(batch["image_name"])))
        assert names == expected  # same order, nothing dropped, nothing repeated
        assert all(rows == count * views for rows, count in sizes)
        assert views == max(1, steps)


def test_dihedral_views_are_the_eight_symmetries():
    from melanoma.input import augment

    image = tf.reshape(tf.range(2 * 2 * 3, dtype=tf.int32), (2, 2, 3))
    views = augment.dihedral_views(image).numpy()
    assert views.shape == (8, 2, 2, 3)
    assert len({v.tobytes() for v in views}) == 8
    assert all(sorted(v.ravel()) == list(range(12)) for v in views)


def test_train_pipeline_shuffles_repeats_and_drops_remainder(tiny_data, tmp_path):
    from melanoma.input import augment

    config = load_config(write_config(tmp_path, tiny_data))
    paths = [f.path for f in record_format.list_files(f"{tiny_data['records']}/train*.tfrec")][:2]
    total = sum(record_format.parse_file_name(p).count for p in paths)
    dataset = pipeline.train_dataset(paths, config, batch_size=8, seed=1,
                                     augmenter=augment.BatchAugmenter(config.augment, seed=1))
    batches = list(dataset.take(total // 8 + 3))  # more batches than one pass: it repeats
    assert all(inputs["image"].shape == (8, 32, 32, 3) for inputs, _ in batches)
    assert all(inputs["image"].dtype == tf.float32 for inputs, _ in batches)
    values = np.concatenate([inputs["image"].numpy().ravel() for inputs, _ in batches])
    assert values.min() >= 0 and values.max() <= 255
    targets = np.concatenate([t.numpy() for _, t in batches])
    assert set(np.unique(targets)) <= {0.0, 1.0}


def test_fold_split_by_part(tiny_data):
    files = record_format.list_files(f"{tiny_data['records']}/train*.tfrec")
    train, valid = record_format.split_folds(files, 1, 3)
    assert {f.part for f in valid} == {1, 4}
    assert not {f.path for f in train} & {f.path for f in valid}
    with pytest.raises(ValueError, match="out of range"):
        record_format.split_folds(files, 3, 3)
