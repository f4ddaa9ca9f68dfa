"""Features relative to the same patient's other images (the "ugly duckling" sign), over any table.

Pure functions of pandas and NumPy (no TensorFlow), shared by the feature tables of the competition's
records (`features`) and of the ISIC 2024 metadata (`tbp_features`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def patient_keys(patients: pd.Series) -> np.ndarray:
    """Group key per row: the patient code, or a key of its own for a row without a patient (-1)."""
    codes = patients.to_numpy(dtype=np.int64)
    return np.where(codes >= 0, codes, -1 - np.arange(len(codes)))


def patient_context(frame: pd.DataFrame, columns: list[str], patients: pd.Series,
                    distance_columns: list[str] = ()) -> pd.DataFrame:
    """pdiff_<c> (value minus the patient's mean) and prank_<c> (rank among the patient's values, 0..1;
    0.5 for a patient with one value) for each column, plus patient_distance over `distance_columns`.

    Rows are grouped by patient only within `frame`: pass one split at a time. A missing value stays
    missing and takes no part in its patient's mean or ranks.
    """
    keys = patient_keys(patients)
    values = frame[columns].astype(np.float64).reset_index(drop=True)
    grouped = values.groupby(keys)
    difference = values - grouped.transform("mean")
    ranks = grouped.rank(method="average")
    counts = grouped.transform("count")
    scaled = (ranks - 1).to_numpy() / np.maximum(counts.to_numpy() - 1, 1)
    rank = np.where(counts.to_numpy() > 1, scaled, 0.5)
    rank = np.where(values.isna().to_numpy(), np.nan, rank)
    parts = [difference.add_prefix("pdiff_"),
             pd.DataFrame(rank, columns=[f"prank_{c}" for c in columns])]
    if len(distance_columns):
        standard = frame[list(distance_columns)].astype(np.float64).reset_index(drop=True)
        spread = standard.std(ddof=0).replace(0.0, 1.0)
        standard = ((standard - standard.mean()) / spread).fillna(0.0)
        offset = standard - standard.groupby(keys).transform("mean")
        distance = np.sqrt((offset.to_numpy() ** 2).mean(axis=1))
        parts.append(pd.DataFrame({"patient_distance": distance}))
    return pd.concat(parts, axis=1)
