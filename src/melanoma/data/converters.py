"""Raw files of other skin-lesion sources -> train records in the public schema, labels kept.

`python -m melanoma records --isic2019 DIR --out OUT --size N [--malignant-only]`: the ISIC 2019
training files in their published layout (`ISIC_2019_Training_GroundTruth.csv`, one-hot over MEL, NV,
BCC, AK, BKL, DF, VASC, SCC, UNK; `ISIC_2019_Training_Metadata.csv`: image, age_approx,
anatom_site_general, lesion_id, sex; JPEGs in `ISIC_2019_Training_Input/`).

`python -m melanoma records --ham10000 DIR --out OUT --size N [--malignant-only]`: HAM10000 in its
published layout (`HAM10000_metadata.csv`: lesion_id, image_id, dx, dx_type, age, sex, localization;
JPEGs in `HAM10000_images_part_1/` and `HAM10000_images_part_2/`).

Both write what the competition's own records have: target = melanoma; each class under its own
diagnosis name (`taxonomy.CLASS_NAMES`) with a code that extends the competition's table (or the
`--encodings` given), so all nine ISIC classes stay distinct; sex, age and site in the competition's
vocabulary and codes (ISIC 2019's torso parts merged, HAM10000's body parts grouped; unknown -> -1);
lesion_id as the patient, numbered in the source's own range of patient codes (`taxonomy`), so that
an external patient is never a competition patient; parts assigned as `folds` does, a lesion never
split across parts (images without a lesion each on their own). Beside the records: `train.csv` (the
source's own columns, the mapped values and the codes) and `encodings.json` (the code tables and the
patient-code range). The records serve as external data (`data.external_files`, training only, with
the duplicate checks against competition images) or as a data set of their own (`data.train_files`).
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core.errors import DataError
from melanoma.data import folds, record_format, taxonomy

ISIC2019_GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_METADATA = "ISIC_2019_Training_Metadata.csv"
ISIC2019_IMAGES = "ISIC_2019_Training_Input"
HAM10000_METADATA = "HAM10000_metadata.csv"
HAM10000_IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
HAM10000_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


# ---------------------------------------------------------------------------------------------------
# shared by every source


def source_encodings(base: dict | None, classes, source: str) -> dict:
    """The code tables of a source's records: `base` (the competition's unless given), its diagnoses
    extended with the canonical names of `classes` (ISIC class order, so every source that brings a
    class gives it the same code), and the source's patient-code range (filled in by `code_columns`)."""
    base = base or taxonomy.COMPETITION_ENCODINGS
    missing = [column for column in taxonomy.CATEGORICAL if column not in base]
    if missing:
        raise DataError(f"the encodings lack {', '.join(missing)}; give the encodings.json that "
                        "`melanoma records` wrote beside the competition records")
    used = base.get("patient_id")
    start = taxonomy.PATIENT_CODE_START[source]
    if isinstance(used, dict) and used.get("source") != source and \
            used.get("first", 0) < start + taxonomy.PATIENT_CODE_RANGE and \
            used.get("first", 0) + used.get("count", 0) > start:
        raise DataError(f"the encodings' patient codes ({used}) overlap the {source} range from {start}")
    ordered = [cls for cls in taxonomy.DIAGNOSIS_CLASSES if cls in set(classes)]
    diagnosis = taxonomy.extend_codes(base["diagnosis"], [taxonomy.CLASS_NAMES[cls] for cls in ordered])
    return {"sex": dict(base["sex"]),
            "anatom_site_general_challenge": dict(base["anatom_site_general_challenge"]),
            "diagnosis": diagnosis}


def _codes(table: pd.DataFrame, column: str, mapping: dict, allow_unknown: bool) -> pd.Series:
    lowered = {str(name).lower(): code for name, code in mapping.items()}
    values = table[column]
    unknown = sorted({str(v) for v in values.dropna() if str(v).lower() not in lowered})
    if unknown and not allow_unknown:
        raise DataError(f"{column} value(s) {', '.join(unknown)} have no code in the encodings "
                        f"({', '.join(mapping)})")
    return values.map(lambda v: -1 if pd.isna(v) else lowered.get(str(v).lower(), -1)).astype(np.int64)


def code_columns(table: pd.DataFrame, encodings: dict, source: str) -> dict:
    """Adds the public schema's int codes to `table` as `<feature>_code` columns; returns the
    encodings with the source's patient-code range. Lesions are numbered in sorted order from the
    source's first code; an image without a lesion is an unknown patient (-1)."""
    table["sex_code"] = _codes(table, "sex", encodings["sex"], allow_unknown=True)  # "unknown" -> missing
    table["anatom_site_general_challenge_code"] = _codes(
        table, "anatom_site_general_challenge", encodings["anatom_site_general_challenge"], False)
    table["diagnosis_code"] = _codes(table, "diagnosis", encodings["diagnosis"], False)
    table["age_approx_code"] = pd.to_numeric(table["age_approx"], errors="coerce").fillna(-1).round().astype(np.int64)
    table["target_code"] = table["target"].astype(np.int64)
    lesions = sorted(table["lesion_id"].dropna().astype(str).unique())
    first = taxonomy.PATIENT_CODE_START[source]
    codes = {lesion: first + index for index, lesion in enumerate(lesions)}
    table["patient_id_code"] = table["lesion_id"].map(
        lambda v: -1 if pd.isna(v) else codes[str(v)]).astype(np.int64)
    return {**encodings, "patient_id": taxonomy.patient_range(source, len(lesions))}


def lesion_parts(table: pd.DataFrame, parts: int, seed: int) -> np.ndarray:
    """Parts as `folds` assigns them (stratified, balanced), with each lesion as the patient group, so a
    lesion's images share one part; an image without a lesion is a group of its own."""
    group = table["lesion_id"].where(table["lesion_id"].notna(), "image:" + table["image_name"].astype(str))
    frame = pd.DataFrame({"image_name": table["image_name"], "patient_id": group.astype(str),
                          "target": table["target"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", folds.FewPatientsWarning)  # a tiny set simply gets fewer parts
        return folds.assign_parts(frame, parts=parts, seed=seed)["part"].to_numpy()


def _keep(table: pd.DataFrame, malignant_only: bool, what: str) -> pd.DataFrame:
    if malignant_only:
        table = table[table["target"] == 1].reset_index(drop=True)
    if table.empty:
        raise DataError(f"no {what} image left to write" + (" (--malignant-only)" if malignant_only else ""))
    return table


def read_base_encodings(path: str | None) -> dict | None:
    return json.loads(io_utils.read_text(path)) if path else None


def required_columns(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise DataError(f"{what} lacks column(s) {', '.join(missing)} (found: {', '.join(map(str, frame.columns))})")


# ---------------------------------------------------------------------------------------------------
# ISIC 2019


def isic2019_table(ground_truth: pd.DataFrame, metadata: pd.DataFrame, encodings: dict | None = None,
                   malignant_only: bool = False) -> tuple[pd.DataFrame, dict]:
    """One row per image: names, mapped metadata, the int codes of the public schema (`*_code`
    columns), and the encodings they use (`source_encodings` + the patient range)."""
    required_columns(ground_truth, ("image",) + taxonomy.DIAGNOSIS_CLASSES, "ISIC 2019 ground truth")
    required_columns(metadata, ("image", "age_approx", "anatom_site_general", "sex"), "ISIC 2019 metadata")
    if ground_truth["image"].duplicated().any():
        twice = ground_truth.loc[ground_truth["image"].duplicated(), "image"].iloc[0]
        raise DataError(f"ISIC 2019 ground truth lists image {twice} twice")
    onehot = ground_truth[list(taxonomy.DIAGNOSIS_CLASSES)].apply(pd.to_numeric, errors="coerce")
    bad = ~((onehot.isin([0, 1])).all(axis=1) & (onehot.sum(axis=1) == 1))
    if bad.any():
        raise DataError(f"ISIC 2019 ground truth row(s) for {', '.join(ground_truth.loc[bad, 'image'].head(3))} "
                        f"are not one-hot over {', '.join(taxonomy.DIAGNOSIS_CLASSES)}")
    table = pd.DataFrame({"image_name": ground_truth["image"].astype(str),
                          "isic_class": onehot.idxmax(axis=1).to_numpy()})
    extra = metadata.drop_duplicates("image").set_index("image")
    absent = ~table["image_name"].isin(extra.index)
    if absent.any():
        raise DataError(f"ISIC 2019 metadata has no row for {absent.sum()} image(s), first: "
                        f"{', '.join(table.loc[absent, 'image_name'].head(3))}")
    extra = extra.loc[table["image_name"]]
    sites = extra["anatom_site_general"].str.strip().str.lower()
    unknown_sites = sorted(set(sites.dropna()) - set(taxonomy.ISIC2019_SITES))
    if unknown_sites:
        raise DataError(f"unknown ISIC 2019 anatom_site_general value(s) {', '.join(unknown_sites)}; known: "
                        f"{', '.join(sorted(taxonomy.ISIC2019_SITES))}")
    table["lesion_id"] = extra["lesion_id"].to_numpy() if "lesion_id" in extra else np.nan
    table["sex"] = extra["sex"].str.strip().str.lower().to_numpy()
    table["age_approx"] = pd.to_numeric(extra["age_approx"], errors="coerce").to_numpy()
    table["anatom_site_general_challenge"] = sites.map(taxonomy.ISIC2019_SITES).to_numpy()
    table["diagnosis"] = table["isic_class"].map(taxonomy.CLASS_NAMES)
    table["target"] = (table["isic_class"] == "MEL").astype(np.int64)
    table = _keep(table, malignant_only, "ISIC 2019")
    encodings = source_encodings(encodings, taxonomy.DIAGNOSIS_CLASSES, "isic2019")
    return table, code_columns(table, encodings, "isic2019")


def build_isic2019_records(ground_truth_csv: str, metadata_csv: str, image_dir: str, out_dir: str,
                           size: int, malignant_only: bool = False, parts: int = 15, seed: int = 42,
                           workers: int | None = None, encodings_json: str | None = None) -> dict:
    """Raw ISIC 2019 training files -> public-schema train TFRecords + train.csv/encodings.json beside them."""
    table, encodings = isic2019_table(io_utils.read_csv(ground_truth_csv), io_utils.read_csv(metadata_csv),
                                      read_base_encodings(encodings_json), malignant_only)
    table["part"] = lesion_parts(table, parts, seed)
    paths = [os.path.join(image_dir, f"{name}.jpg") for name in table["image_name"]]
    written = record_format.write_train_records(table, paths, out_dir, size, encodings, workers)
    return summary(table, written)


# ---------------------------------------------------------------------------------------------------
# HAM10000


def ham10000_table(metadata: pd.DataFrame, encodings: dict | None = None,
                   malignant_only: bool = False) -> tuple[pd.DataFrame, dict]:
    """One row per HAM10000 image, as `isic2019_table`: dx as the ISIC class (akiec AK, bcc BCC, bkl
    BKL, df DF, mel MEL, nv NV, vasc VASC), target = mel, localization grouped into the competition's
    sites, sex 'unknown' and site 'unknown' missing, lesion_id the patient."""
    required_columns(metadata, HAM10000_COLUMNS, HAM10000_METADATA)
    names = metadata["image_id"].astype(str).str.strip()
    if names.duplicated().any():
        raise DataError(f"{HAM10000_METADATA} lists image {names[names.duplicated()].iloc[0]} twice")
    dx = metadata["dx"].astype(str).str.strip().str.lower()
    unknown = sorted(set(dx) - set(taxonomy.HAM10000_CLASSES))
    if unknown:
        raise DataError(f"unknown HAM10000 dx value(s) {', '.join(unknown)}; known: "
                        f"{', '.join(taxonomy.HAM10000_CLASSES)}")
    sites = metadata["localization"].str.strip().str.lower()
    unknown = sorted(set(sites.dropna()) - set(taxonomy.HAM10000_SITES))
    if unknown:
        raise DataError(f"unknown HAM10000 localization value(s) {', '.join(unknown)}; known: "
                        f"{', '.join(taxonomy.HAM10000_SITES)}")
    lesions = metadata["lesion_id"].where(metadata["lesion_id"].notna(), None)
    table = pd.DataFrame({"image_name": names.to_numpy(), "lesion_id": lesions.to_numpy(),
                          "dx": dx.to_numpy(), "dx_type": metadata["dx_type"].to_numpy(),
                          "isic_class": dx.map(taxonomy.HAM10000_CLASSES).to_numpy()})
    sex = metadata["sex"].str.strip().str.lower()
    table["sex"] = sex.where(sex != "unknown").to_numpy()
    table["age_approx"] = pd.to_numeric(metadata["age"], errors="coerce").to_numpy()
    table["anatom_site_general_challenge"] = sites.map(taxonomy.HAM10000_SITES).to_numpy()
    table["diagnosis"] = table["isic_class"].map(taxonomy.CLASS_NAMES)
    table["target"] = (table["isic_class"] == "MEL").astype(np.int64)
    table = _keep(table, malignant_only, "HAM10000")
    encodings = source_encodings(encodings, taxonomy.HAM10000_CLASSES.values(), "ham10000")
    return table, code_columns(table, encodings, "ham10000")


def ham10000_images(folder: str) -> dict[str, str]:
    """{image_id: JPEG path} over the published image folders (`HAM10000_images_part_1/`, `_2/`; their
    names matched whatever the case, as some copies spell them in lower case)."""
    wanted = {name.lower() for name in HAM10000_IMAGE_FOLDERS}
    found = [os.path.join(folder, entry.rstrip("/")) for entry in sorted(io_utils.listdir(folder))
             if entry.rstrip("/").lower() in wanted]
    if not found:
        raise FileNotFoundError(f"{folder} has no {' or '.join(HAM10000_IMAGE_FOLDERS)} folder: give "
                                "--ham10000 the folder of the HAM10000 download")
    paths: dict[str, str] = {}
    for image_folder in found:
        for path in io_utils.glob(os.path.join(image_folder, "*.jpg")):
            paths.setdefault(os.path.splitext(os.path.basename(path))[0], path)
    return paths


def build_ham10000_records(folder: str, out_dir: str, size: int, malignant_only: bool = False,
                           parts: int = 15, seed: int = 42, workers: int | None = None,
                           encodings_json: str | None = None) -> dict:
    """HAM10000 in its published layout -> public-schema train TFRecords + train.csv/encodings.json."""
    metadata_csv = os.path.join(folder, HAM10000_METADATA)
    if not io_utils.exists(metadata_csv):
        raise FileNotFoundError(f"{metadata_csv} not found: give --ham10000 the folder of the HAM10000 "
                                f"download ({HAM10000_METADATA}, {', '.join(HAM10000_IMAGE_FOLDERS)})")
    table, encodings = ham10000_table(io_utils.read_csv(metadata_csv), read_base_encodings(encodings_json),
                                      malignant_only)
    images = ham10000_images(folder)
    absent = [name for name in table["image_name"] if name not in images]
    if absent:
        raise FileNotFoundError(f"{len(absent)} HAM10000 image(s) of {HAM10000_METADATA} are in neither "
                                f"{' nor '.join(HAM10000_IMAGE_FOLDERS)}, first: {', '.join(absent[:3])}")
    table["part"] = lesion_parts(table, parts, seed)
    paths = [images[name] for name in table["image_name"]]
    written = record_format.write_train_records(table, paths, out_dir, size, encodings, workers)
    return summary(table, written)


def summary(table: pd.DataFrame, written: list[str]) -> dict:
    return {"train_files": len(written), "train_images": len(table),
            "malignant_images": int(table["target"].sum()),
            "patients": int(table["lesion_id"].dropna().nunique()),
            "classes": {cls: int(n) for cls, n in table["isic_class"].value_counts().sort_index().items()}}
