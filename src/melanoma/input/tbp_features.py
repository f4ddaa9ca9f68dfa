"""The ISIC 2024 metadata as the trees see them: pure functions over a metadata table (`train.csv` /
`test.csv` beside the records of `records --isic2024`, or the published CSVs), no TensorFlow.

Groups (`feature_group` names them):

* measurements: every numeric `tbp_lv_*` column of the 3D total-body photograph (colour inside and
  outside the lesion, contrasts, shape, border, symmetry, position, nevus confidence) as it is;
* clinical: `age_approx`, `clin_size_long_diam_mm`, and the categoricals `sex`, `anatom_site_general`,
  `image_type`, `tbp_tile_type`, `tbp_lv_location`, `tbp_lv_location_simple`, `attribution` as categorical
  features (codes over the training table's own values, in sorted order; a value the training table lacks
  and a missing one are missing). `copyright_license` is not used: it says under which licence the crop
  was published, nothing about the lesion;
* derived (`derived=True`, one switch): quantities that the published columns imply together, taken
  from what the columns measure (`DERIVED` lists each one with its inputs): colour contrasts between the
  lesion and its skin, shape ratios, border and colour interactions, an ABCD-rule composite, position
  around the body;
* patient context (`patient_context=True`): for every numeric feature but the age (the same for all a
  patient's lesions), `pdiff_<c>` (the value minus the mean over the patient's lesions) and `prank_<c>`
  (its rank among them, 0..1; 0.5 for a patient with one lesion), plus `patient_lesions`, the patient's
  lesion count in the table; within the table given only, so pass the training and the test table each
  on its own (`patientcontext`).

Refused as features, each named (ConfigError, exit 2): the columns found in the training table only
(`isic2024.TRAINING_ONLY`: lesion_id, iddx_full, iddx_1..iddx_5, mel_mitotic_index, mel_thick_mm,
tbp_lv_dnn_lesion_confidence; the test table lacks them, and several give the label away), the label
and what `records` coded from it (target, target_code, diagnosis_code), and the identifiers. No
feature of this module reads any of them; asking for one through `extra` is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from melanoma.core.errors import ConfigError, DataError
from melanoma.data import isic2024
from melanoma.input import patientcontext

MEASUREMENTS = isic2024.TBP_NUMERIC
CLINICAL_NUMERIC = isic2024.CLINICAL_NUMERIC
CATEGORICAL = isic2024.CATEGORICAL
NUMERIC = MEASUREMENTS + CLINICAL_NUMERIC
PATIENT_LEVEL = ("age_approx",)  # the same for every lesion of a patient: no patient context
LABELS = ("target", "target_code", "diagnosis_code")
IDENTIFIERS = (isic2024.ID, "image_name", "patient_id", "patient_id_code", "part")
MOST_CATEGORIES = 254  # HistGradientBoostingClassifier's limit for a categorical feature (max_bins 255)


def ratio(top: pd.Series, bottom: pd.Series) -> pd.Series:
    """top / bottom, missing where bottom is (nearly) zero: the trees take no infinity."""
    bottom = bottom.where(bottom.abs() > 1e-9)
    return top / bottom


def hue_difference(hue: pd.Series, other: pd.Series) -> pd.Series:
    """Signed difference of two hue angles in degrees, in (-180, 180]."""
    return 180 - (180 - (hue - other)) % 360


def colour_contrast(t: pd.DataFrame) -> pd.Series:
    """Euclidean LAB distance between the lesion and its surrounding skin."""
    return np.sqrt(t["tbp_lv_deltaA"] ** 2 + t["tbp_lv_deltaB"] ** 2 + t["tbp_lv_deltaL"] ** 2)


# name -> (inputs, function of the table): each input must be a published, non-training-only column
DERIVED: dict[str, tuple[tuple[str, ...], Callable[[pd.DataFrame], pd.Series]]] = {
    # colour of the lesion against its skin
    "colour_contrast": (("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"), colour_contrast),
    "chroma_contrast": (("tbp_lv_C", "tbp_lv_Cext"), lambda t: t["tbp_lv_C"] - t["tbp_lv_Cext"]),
    "hue_contrast": (("tbp_lv_H", "tbp_lv_Hext"), lambda t: hue_difference(t["tbp_lv_H"], t["tbp_lv_Hext"])),
    "lightness_ratio": (("tbp_lv_L", "tbp_lv_Lext"), lambda t: ratio(t["tbp_lv_L"], t["tbp_lv_Lext"])),
    "chroma_ratio": (("tbp_lv_C", "tbp_lv_Cext"), lambda t: ratio(t["tbp_lv_C"], t["tbp_lv_Cext"])),
    "contrast_over_skin_spread": (("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL", "tbp_lv_stdLExt"),
                                  lambda t: ratio(colour_contrast(t), t["tbp_lv_stdLExt"])),
    "texture_ratio": (("tbp_lv_stdL", "tbp_lv_stdLExt"), lambda t: ratio(t["tbp_lv_stdL"], t["tbp_lv_stdLExt"])),
    "colour_spread_ratio": (("tbp_lv_radial_color_std_max", "tbp_lv_color_std_mean"),
                            lambda t: ratio(t["tbp_lv_radial_color_std_max"], t["tbp_lv_color_std_mean"])),
    # shape
    "aspect_ratio": (("tbp_lv_minorAxisMM", "clin_size_long_diam_mm"),
                     lambda t: ratio(t["tbp_lv_minorAxisMM"], t["clin_size_long_diam_mm"])),
    "circularity": (("tbp_lv_areaMM2", "tbp_lv_perimeterMM"),  # 1 for a disc, less for a ragged border
                    lambda t: ratio(4 * np.pi * t["tbp_lv_areaMM2"], t["tbp_lv_perimeterMM"] ** 2)),
    "perimeter_over_diameter": (("tbp_lv_perimeterMM", "clin_size_long_diam_mm"),
                                lambda t: ratio(t["tbp_lv_perimeterMM"], np.pi * t["clin_size_long_diam_mm"])),
    "ellipse_fill": (("tbp_lv_areaMM2", "clin_size_long_diam_mm", "tbp_lv_minorAxisMM"),  # lobes fill less
                     lambda t: ratio(t["tbp_lv_areaMM2"],
                                     np.pi / 4 * t["clin_size_long_diam_mm"] * t["tbp_lv_minorAxisMM"])),
    "log_area": (("tbp_lv_areaMM2",), lambda t: np.log1p(t["tbp_lv_areaMM2"].clip(lower=0))),
    "area_over_diameter_squared": (("tbp_lv_areaMM2", "clin_size_long_diam_mm"),
                                   lambda t: ratio(t["tbp_lv_areaMM2"], t["clin_size_long_diam_mm"] ** 2)),
    # border and colour together
    "border_times_colour": (("tbp_lv_norm_border", "tbp_lv_norm_color"),
                            lambda t: t["tbp_lv_norm_border"] * t["tbp_lv_norm_color"]),
    "border_plus_colour": (("tbp_lv_norm_border", "tbp_lv_norm_color"),
                           lambda t: t["tbp_lv_norm_border"] + t["tbp_lv_norm_color"]),
    "asymmetry_times_border": (("tbp_lv_symm_2axis", "tbp_lv_norm_border"),
                               lambda t: t["tbp_lv_symm_2axis"] * t["tbp_lv_norm_border"]),
    "asymmetry_times_colour": (("tbp_lv_symm_2axis", "tbp_lv_norm_color"),
                               lambda t: t["tbp_lv_symm_2axis"] * t["tbp_lv_norm_color"]),
    "contrast_times_border": (("tbp_lv_deltaLBnorm", "tbp_lv_norm_border"),
                              lambda t: t["tbp_lv_deltaLBnorm"] * t["tbp_lv_norm_border"]),
    "colour_variation_times_size": (("tbp_lv_color_std_mean", "clin_size_long_diam_mm"),
                                    lambda t: t["tbp_lv_color_std_mean"] * t["clin_size_long_diam_mm"]),
    # asymmetry, border, colour and diameter, each brought to about 0..1 (diameter against the 6 mm rule)
    "abcd_score": (("tbp_lv_symm_2axis", "tbp_lv_norm_border", "tbp_lv_norm_color", "clin_size_long_diam_mm"),
                   lambda t: t["tbp_lv_symm_2axis"] + t["tbp_lv_norm_border"] / 10 + t["tbp_lv_norm_color"] / 10
                   + t["clin_size_long_diam_mm"] / 6),
    "irregular_and_not_nevus": (("tbp_lv_nevi_confidence", "tbp_lv_norm_border", "tbp_lv_norm_color"),
                                lambda t: (100 - t["tbp_lv_nevi_confidence"]) / 100
                                * (t["tbp_lv_norm_border"] + t["tbp_lv_norm_color"]) / 20),
    # where on the body
    "body_angle": (("tbp_lv_x", "tbp_lv_z"), lambda t: np.degrees(np.arctan2(t["tbp_lv_x"], t["tbp_lv_z"]))),
    "body_radius": (("tbp_lv_x", "tbp_lv_z"), lambda t: np.hypot(t["tbp_lv_x"], t["tbp_lv_z"])),
    "age_times_diameter": (("age_approx", "clin_size_long_diam_mm"),
                           lambda t: t["age_approx"] * t["clin_size_long_diam_mm"]),
}


@dataclass
class TabularFeatures:
    """Feature columns in model order (`frame` has exactly `columns`), and which are categorical."""

    frame: pd.DataFrame
    columns: list[str]
    categorical: list[str]


def refusal(column: str) -> str | None:
    """Why `column` may never be a feature, or None."""
    if column in isic2024.TRAINING_ONLY:
        return "is found in the training table only (the test table lacks it, and it describes the diagnosis)"
    if column in LABELS:
        return "is the label, or was coded from it"
    if column in IDENTIFIERS:
        return "identifies the image, the patient or the part, which the trees must not learn"
    return None


def check_requested(columns) -> None:
    """ConfigError naming each requested column that may not be a feature."""
    refused = [f"{column} {reason}" for column in columns if (reason := refusal(column))]
    if refused:
        raise ConfigError("refused as features: " + "; ".join(refused) + ". Remove them from the feature "
                          "columns: a model that used them could not predict the test images, or would learn "
                          "the answer")


def check_table(table: pd.DataFrame, extra=()) -> None:
    missing = [c for c in NUMERIC + CATEGORICAL + ("patient_id",) + tuple(extra) if c not in table.columns]
    if missing:
        raise DataError(f"the metadata table lacks column(s) {', '.join(missing)}; give the train.csv or "
                        "test.csv that `records --isic2024` wrote, or the ISIC 2024 metadata CSV")


def numeric(table: pd.DataFrame, columns) -> pd.DataFrame:
    frame = {}
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna() & (table[column].astype(str).str.strip() != "")
        if bad.any():
            raise DataError(f"column {column} holds {table[column][bad].iloc[0]!r}, not a number")
        frame[column] = values.astype(np.float64).to_numpy()
    return pd.DataFrame(frame, index=table.index)


def vocabularies(train: pd.DataFrame) -> dict[str, list[str]]:
    """Each categorical column's values in the training table, sorted: its codes 0..n-1."""
    check_table(train)
    found = {column: sorted(train[column].dropna().astype(str).unique()) for column in CATEGORICAL}
    wide = {column: len(values) for column, values in found.items() if len(values) > MOST_CATEGORIES}
    if wide:
        raise DataError(f"categorical column(s) with more than {MOST_CATEGORIES} values: {wide}")
    return found


def categorical_codes(table: pd.DataFrame, vocabulary: dict[str, list[str]]) -> pd.DataFrame:
    """Codes of the categoricals as floats; missing, or a value the training table lacked, is NaN."""
    return pd.DataFrame({column: table[column].astype("string").map(
        {value: float(code) for value, code in zip(vocabulary[column], range(len(vocabulary[column])))})
        .astype(np.float64).to_numpy() for column in CATEGORICAL}, index=table.index)


def derived_features(values: pd.DataFrame) -> pd.DataFrame:
    """Every DERIVED feature of the numeric columns (finite or missing, never infinite)."""
    frame = pd.DataFrame({name: function(values) for name, (_, function) in DERIVED.items()}, index=values.index)
    return frame.replace([np.inf, -np.inf], np.nan)


def patient_codes(patients: pd.Series) -> pd.Series:
    codes, _ = pd.factorize(patients.astype("string"), use_na_sentinel=True)
    return pd.Series(codes.astype(np.int64))


def build(table: pd.DataFrame, vocabulary: dict[str, list[str]], derived: bool = True,
          patient_context: bool = True, extra=()) -> TabularFeatures:
    """The features of every row of `table` (one split), in model order: measurements and clinical
    numbers, categoricals, derived, `extra` numeric columns of the caller's, then patient context."""
    check_requested(extra)
    check_table(table, extra)
    values = numeric(table, NUMERIC + tuple(extra)).reset_index(drop=True)
    parts = [values, categorical_codes(table, vocabulary).reset_index(drop=True)]
    if derived:
        parts.append(derived_features(values))
    frame = pd.concat(parts, axis=1)
    if patient_context:
        varying = [c for c in frame.columns if c not in CATEGORICAL and c not in PATIENT_LEVEL]
        patients = patient_codes(table["patient_id"].reset_index(drop=True))
        context = patientcontext.patient_context(frame, varying, patients)
        counts = patients.map(patients[patients >= 0].value_counts()).astype(np.float64)
        frame = pd.concat([frame, context, pd.DataFrame({"patient_lesions": counts.where(patients >= 0)})], axis=1)
    columns = list(frame.columns)
    return TabularFeatures(frame=frame, columns=columns, categorical=[c for c in columns if c in CATEGORICAL])


def feature_group(column: str) -> str:
    """The group a feature belongs to (for importance by group)."""
    if column.startswith(("pdiff_", "prank_")) or column == "patient_lesions":
        return "patient context"
    if column in MEASUREMENTS:
        return "measurements"
    if column in CLINICAL_NUMERIC or column in CATEGORICAL:
        return "clinical"
    if column in DERIVED:
        return "derived"
    if column.startswith("run_"):  # another run's prediction (features.from_runs)
        return "stacking"
    return "extra"
