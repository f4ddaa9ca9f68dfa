"""The ISIC 2024 metadata as tree features: every numeric tbp_lv_* and clinical column, the categoricals as
categoricals, the derived group behind one switch, patient context, and the training-only columns refused,
each by name, and never read."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from melanoma.core.errors import ConfigError, DataError
from melanoma.data import isic2024
from melanoma.input import tbp_features
from melanoma.tools import synth_isic2024

TRAINING_ONLY = ["lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5", "mel_mitotic_index",
                 "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synth_isic2024.metadata_table(rows=3000, patients=25, positive_rate=0.03, seed=4)


def test_every_numeric_tbp_and_clinical_column_is_a_feature_and_the_categoricals_categorical(table):
    built = tbp_features.build(table, tbp_features.vocabularies(table), derived=False, patient_context=False)
    numeric = [c for c in table.columns if c.startswith("tbp_lv_") and pd.api.types.is_float_dtype(table[c])
               and c not in TRAINING_ONLY]
    assert len(numeric) == 32
    for column in numeric + ["clin_size_long_diam_mm", "age_approx"]:
        np.testing.assert_array_equal(built.frame[column].to_numpy(), table[column].to_numpy(), err_msg=column)
    assert built.categorical == ["sex", "anatom_site_general", "image_type", "tbp_tile_type", "tbp_lv_location",
                                 "tbp_lv_location_simple", "attribution"]
    assert set(built.columns) == set(numeric) | {"clin_size_long_diam_mm", "age_approx"} | set(built.categorical)
    assert built.frame.columns.tolist() == built.columns
    sites = tbp_features.vocabularies(table)["tbp_lv_location_simple"]
    codes = built.frame["tbp_lv_location_simple"]
    assert codes.dropna().isin(range(len(sites))).all()
    assert [sites[int(c)] for c in codes[:20]] == table["tbp_lv_location_simple"][:20].tolist()


def test_training_only_columns_are_refused_each_by_name(table):
    vocabulary = tbp_features.vocabularies(table)
    for column in TRAINING_ONLY:
        with pytest.raises(ConfigError, match=rf"{column} is found in the training table only"):
            tbp_features.build(table, vocabulary, extra=[column])
    with pytest.raises(ConfigError) as raised:
        tbp_features.build(table, vocabulary, extra=TRAINING_ONLY + ["target", "isic_id", "tbp_lv_A"])
    message = str(raised.value)
    assert all(f"{column} is found in the training table only" in message for column in TRAINING_ONLY)
    assert "target is the label" in message and "isic_id identifies" in message and "tbp_lv_A " not in message


def test_no_feature_reads_a_training_only_column(table):
    """Scrambling every training-only column (and the label) changes no feature; the test table, which
    lacks them, gives the same columns."""
    vocabulary = tbp_features.vocabularies(table)
    built = tbp_features.build(table, vocabulary)
    scrambled = table.copy()
    rng = np.random.default_rng(0)
    for column in TRAINING_ONLY + ["target"]:
        scrambled[column] = rng.permutation(scrambled[column].to_numpy())
    pd.testing.assert_frame_equal(tbp_features.build(scrambled, vocabulary).frame, built.frame)
    test_like = table.drop(columns=TRAINING_ONLY + ["target"])
    assert tbp_features.build(test_like, vocabulary).columns == built.columns
    assert not [c for c in built.columns if any(name in c for name in TRAINING_ONLY)]
    for name, (inputs, _) in tbp_features.DERIVED.items():
        assert set(inputs) <= set(isic2024.TBP_NUMERIC + isic2024.CLINICAL_NUMERIC), name


def test_derived_features_switch_as_one_group_and_mean_what_they_say():
    row = {column: 1.0 for column in isic2024.TBP_NUMERIC + isic2024.CLINICAL_NUMERIC}
    row.update(tbp_lv_areaMM2=np.pi, tbp_lv_perimeterMM=2 * np.pi, clin_size_long_diam_mm=2.0,
               tbp_lv_minorAxisMM=2.0, tbp_lv_H=350.0, tbp_lv_Hext=10.0, tbp_lv_deltaA=3.0, tbp_lv_deltaB=4.0,
               tbp_lv_deltaL=0.0, tbp_lv_stdLExt=0.0)
    values = pd.DataFrame([row, {**row, "tbp_lv_H": 10.0, "tbp_lv_Hext": 350.0}])
    derived = tbp_features.derived_features(values)
    assert list(derived.columns) == list(tbp_features.DERIVED)
    np.testing.assert_allclose(derived["circularity"], 1.0)  # a disc of radius 1 mm
    np.testing.assert_allclose(derived["ellipse_fill"], 1.0)
    np.testing.assert_allclose(derived["perimeter_over_diameter"], 1.0)
    np.testing.assert_allclose(derived["hue_contrast"], [-20.0, 20.0])  # across 0 degrees, not 340
    np.testing.assert_allclose(derived["colour_contrast"], 5.0)
    assert derived["contrast_over_skin_spread"].isna().all()  # divided by zero: missing, not infinite
    table = synth_isic2024.metadata_table(rows=200, patients=5, positive_rate=0.05, seed=1)
    vocabulary = tbp_features.vocabularies(table)
    with_group = tbp_features.build(table, vocabulary, patient_context=False).columns
    without = tbp_features.build(table, vocabulary, derived=False, patient_context=False).columns
    assert set(with_group) - set(without) == set(tbp_features.DERIVED)
    assert {tbp_features.feature_group(c) for c in set(with_group) - set(without)} == {"derived"}


def test_patient_context_is_relative_to_the_same_patients_lesions_in_the_table_given(table):
    vocabulary = tbp_features.vocabularies(table)
    built = tbp_features.build(table, vocabulary).frame
    patient = table["patient_id"]
    size = table["clin_size_long_diam_mm"]
    np.testing.assert_allclose(built["pdiff_clin_size_long_diam_mm"], size - size.groupby(patient).transform("mean"))
    rank = size.groupby(patient).rank()
    count = patient.map(patient.value_counts())
    np.testing.assert_allclose(built["prank_clin_size_long_diam_mm"], (rank - 1) / (count - 1).clip(lower=1))
    np.testing.assert_array_equal(built["patient_lesions"], count)
    assert "pdiff_age_approx" not in built and "pdiff_sex" not in built and "pdiff_colour_contrast" in built
    one = tbp_features.build(table[patient == patient.iloc[0]], vocabulary).frame
    mine = patient == patient.iloc[0]
    np.testing.assert_allclose(one["pdiff_tbp_lv_A"], built.loc[mine.to_numpy(), "pdiff_tbp_lv_A"])
    assert {tbp_features.feature_group(c) for c in built if c.startswith(("pdiff_", "prank_"))} == {"patient context"}


def test_categories_come_from_the_training_table_alone(table):
    vocabulary = tbp_features.vocabularies(table)
    test = table.head(5).copy()
    test.loc[test.index[0], "attribution"] = "a clinic the training table never saw"
    codes = tbp_features.build(test, vocabulary, patient_context=False).frame["attribution"]
    assert np.isnan(codes.iloc[0])
    assert codes.iloc[1] == vocabulary["attribution"].index(test["attribution"].iloc[1])


def test_a_table_missing_a_published_column_or_with_text_for_a_number_is_a_data_error(table):
    vocabulary = tbp_features.vocabularies(table)
    with pytest.raises(DataError, match="lacks column.*tbp_lv_norm_border"):
        tbp_features.build(table.drop(columns="tbp_lv_norm_border"), vocabulary)
    broken = table.head(10).astype({"tbp_lv_x": object})
    broken.loc[broken.index[2], "tbp_lv_x"] = "left"
    with pytest.raises(DataError, match="tbp_lv_x holds 'left'"):
        tbp_features.build(broken, vocabulary)


def test_trees_learn_the_generated_lesions_from_these_features():
    train = synth_isic2024.metadata_table(rows=6000, patients=40, positive_rate=0.03, seed=11)
    test = synth_isic2024.metadata_table(rows=3000, patients=20, positive_rate=0.03, seed=12)
    vocabulary = tbp_features.vocabularies(train)
    built, held_out = tbp_features.build(train, vocabulary), tbp_features.build(test, vocabulary)
    mask = [c in built.categorical for c in built.columns]
    model = HistGradientBoostingClassifier(max_iter=60, learning_rate=0.1, categorical_features=mask, random_state=0)
    model.fit(built.frame.to_numpy(), train["target"].to_numpy())
    assert roc_auc_score(test["target"], model.predict_proba(held_out.frame.to_numpy())[:, 1]) > 0.85
