"""Strict reading of the project's CSV tables: strings first, then checked columns, never a quiet guess.

Pandas alone would drop surplus fields, fill short rows, or read an id as a number; here each of those is
a DataError that names the file, the line or the images. OOF files are checked here once for every
stage that reads them (score, compare, report, blend, submit, stacking).
"""
from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core.errors import DataError

OOF_COLUMNS = ("image_name", "patient_id", "target", "pred", "fold")
COMPETITION_SOURCE = "competition"
# Text that reads as "no value" in a CSV cell.
MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none"})
SHOW_FIRST = 5  # ids a message names before it counts the rest


def first_few(values: Sequence[Any] | pd.Series | pd.Index, limit: int = SHOW_FIRST) -> str:
    """'a, b, c' or 'a, b, c, ... (12 in all)': the offending ids a message names."""
    values = [str(value) for value in list(values)]
    shown = ", ".join(repr(value) if value == "" else value for value in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def parse_csv_text(text: str, where: str = "CSV") -> pd.DataFrame:
    """Parse CSV text into a DataFrame of strings, failing with a DataError that names the problem.

    Pandas would quietly drop surplus fields, fill short rows and turn the first column into an index
    when every row is one field longer than the header; here each of those is an error with its line.
    Blank lines are ignored; every cell stays text so callers decide what "numeric" means.
    """
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as error:
        raise DataError(f"{where} is not valid CSV: {error}") from None
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if row]
    if not numbered:
        raise DataError(f"{where} is empty: expected a header line and rows")
    (_, header), body = numbered[0], numbered[1:]
    bad = [number for number, row in body if len(row) != len(header)]
    if bad:
        raise DataError(f"{where}: line(s) {first_few(bad)} do not have {len(header)} fields like the "
                        f"header ({','.join(header)})")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{where}: column(s) {first_few(duplicated)} appear more than once in the header")
    return pd.DataFrame([row for _, row in body], columns=header, dtype=object)


def read_string_table(path: str, where: str | None = None) -> pd.DataFrame:
    """Read a CSV file (local or gs://) as strings; a clear DataError for anything unreadable."""
    where = where or str(path)
    data = io_utils.read_bytes(str(path)) if io_utils.exists(str(path)) else None
    if data is None:
        raise FileNotFoundError(f"file not found: {path}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{where} is not UTF-8 text (byte {error.start}): is it really a CSV?") from None
    return parse_csv_text(text, where)


def text_cells(series: pd.Series) -> pd.Series:
    """Cells as stripped strings, missing cells as ''."""
    return series.where(series.notna(), "").astype(str).str.strip()


def numbers(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(values as float, mask of cells that are text but not a number)."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.astype(float)
        return values, pd.Series(False, index=series.index)
    text = text_cells(series)
    values = pd.to_numeric(text, errors="coerce").astype(float)
    not_numeric = values.isna() & ~text.str.lower().isin(MISSING_TEXT)
    return values, not_numeric


def prepare_oof(frame: pd.DataFrame, where: str = "OOF predictions") -> pd.DataFrame:
    """Check an OOF table and return its competition rows with typed columns.

    Raises DataError for missing columns (named), empty ids, targets other than 0/1, missing,
    non-numeric or infinite predictions, bad fold numbers, duplicate image names, and a single class.
    Rows whose `source` (when the column exists) is not 'competition' are dropped; their count is in
    `result.attrs["excluded"]`.
    """
    frame, excluded = _competition_rows(frame, where)
    names, patients = _checked_ids(frame, where)
    target = _checked_target(frame, names, where)
    pred = _checked_pred(frame, names, where)
    fold = _checked_fold(frame, names, where)
    if target.nunique() < 2:
        only = int(target.iloc[0])
        raise DataError(f"{where}: all {len(frame)} scored images have target {only}; AUC needs both "
                        f"benign (0) and malignant (1) images")

    frame["image_name"] = names
    frame["patient_id"] = patients
    frame["target"] = target.astype(int)
    frame["pred"] = pred.astype(float)
    frame["fold"] = fold.astype(int)
    frame.attrs["excluded"] = excluded
    return frame


def _competition_rows(frame: pd.DataFrame, where: str) -> tuple[pd.DataFrame, int]:
    """A copy of the table's competition rows (stripped column names, a fresh index) once every OOF
    column is there, and how many other rows were dropped."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{where}: expected a table, got {type(frame).__name__}")
    frame = frame.copy()
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in OOF_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{where} lacks column(s) {', '.join(missing)}; an OOF file has "
                        f"{','.join(OOF_COLUMNS)} (found: {','.join(map(str, frame.columns)) or 'none'})")
    excluded = 0
    if "source" in frame.columns:
        keep = text_cells(frame["source"]).str.lower() == COMPETITION_SOURCE
        excluded = int((~keep).sum())
        frame = frame[keep.to_numpy()]
    if frame.empty:
        extra = f" ({excluded} non-competition rows excluded)" if excluded else ""
        raise DataError(f"{where} has no rows to score{extra}")
    return frame.reset_index(drop=True), excluded


def _checked_ids(frame: pd.DataFrame, where: str) -> tuple[pd.Series, pd.Series]:
    """(image names, patient ids) as text: none empty, no image twice."""
    names = text_cells(frame["image_name"])
    if (names == "").any():
        rows = (np.flatnonzero((names == "").to_numpy()) + 1).tolist()
        raise DataError(f"{where}: empty image_name in data row(s) {first_few(rows)}")
    duplicated = names[names.duplicated(keep="first")].unique()
    if len(duplicated):
        raise DataError(f"{where}: duplicate image names {first_few(duplicated)}; each image must be "
                        f"predicted once (did two folds validate the same image?)")
    patients = text_cells(frame["patient_id"])
    if (patients == "").any():
        raise DataError(f"{where}: empty patient_id for images {first_few(names[patients == ''])}")
    return names, patients


def _checked_target(frame: pd.DataFrame, names: pd.Series, where: str) -> pd.Series:
    """The targets as float, each 0 or 1."""
    target, not_numeric = numbers(frame["target"])
    bad = not_numeric | ~target.isin([0.0, 1.0])
    if bad.any():
        raise DataError(f"{where}: target must be 0 or 1; not so for images {first_few(names[bad])}")
    return target


def _checked_pred(frame: pd.DataFrame, names: pd.Series, where: str) -> pd.Series:
    """The predictions as float, each a finite number."""
    pred, not_numeric = numbers(frame["pred"])
    if not_numeric.any():
        raise DataError(f"{where}: non-numeric predictions for images {first_few(names[not_numeric])}")
    if pred.isna().any():
        raise DataError(f"{where}: NaN (missing) predictions for images {first_few(names[pred.isna()])}")
    infinite = ~np.isfinite(pred)
    if infinite.any():
        raise DataError(f"{where}: infinite predictions for images {first_few(names[infinite])}")
    return pred


def check_probabilities(frame: pd.DataFrame, where: str) -> None:
    """A score of predictions outside [0, 1] (logits, a percentage) would be an AUC of something other than
    probabilities, reported with no word: DataError naming the images and their values."""
    outside = ~frame["pred"].between(0.0, 1.0)
    if outside.any():
        shown = ", ".join(f"{name} {value:g}" for name, value in
                          frame.loc[outside, ["image_name", "pred"]].head(3).itertuples(index=False))
        raise DataError(f"{where}: {int(outside.sum())} prediction(s) outside [0, 1] (e.g. {shown}); predictions "
                        "are probabilities: give pred as one (e.g. the sigmoid of a logit)")


def _checked_fold(frame: pd.DataFrame, names: pd.Series, where: str) -> pd.Series:
    """The fold numbers as float, each a whole number that fits an int32."""
    fold, not_numeric = numbers(frame["fold"])
    integral = np.isfinite(fold) & (fold == np.round(fold)) & (fold.abs() < 2**31)
    bad = not_numeric | ~integral
    if bad.any():
        raise DataError(f"{where}: fold must be a whole number; not so for images {first_few(names[bad])}")
    return fold


def read_oof(path: str) -> pd.DataFrame:
    """Read and check an OOF CSV (`image_name,patient_id,target,pred,fold`); competition rows only."""
    return prepare_oof(read_string_table(path, where=str(path)), where=str(path))
