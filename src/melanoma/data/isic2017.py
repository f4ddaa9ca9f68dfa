"""The ISIC 2017 challenge's Part 3 layout (lesion classification) -> records, sample submission, test labels.

`python -m melanoma records --isic2017 DIR --out OUT [--size N] [--parts P] [--test-parts P]` reads DIR as the
challenge published it:

    ISIC-2017_Training_Data/ ISIC-2017_Validation_Data/ ISIC-2017_Test_v2_Data/    JPEGs, ISIC_<id>.jpg
    ISIC-2017_<split>_Part3_GroundTruth.csv    image_id, melanoma (0/1), seborrheic_keratosis (0/1)
    ISIC-2017_<split>_Data_metadata.csv        image_id, age_approximate, sex ("unknown" where missing)

(a metadata CSV may also sit inside its image folder, as in the official download; the test split's may be
absent). It is a benchmark with public test labels: real lesions to choose recipes on, the test labels read
once per finished recipe (`score --labels`).

* Training and validation images are the training records, in parts as `folds` gives them; the test images
  are the test records, the official split whole. Target = melanoma; melanoma is MEL, seborrheic keratosis
  the benign keratosis class, anything else a nevus (named as `taxonomy.CLASS_NAMES` names them); sex and age
  in the competition's codes ("unknown" missing), no anatomic site.
* No patient ids: each image is its own patient, except that images with the same bytes (hashed), or so alike
  that their 16x16 grey thumbnails correlate above `NEAR_CORRELATION` (the same lesion resized), are one
  patient, so that no copy of a lesion validates a fold that trained on it. Test images are grouped among
  themselves; a test image equal (or nearly) to a training image is named on one printed line, and stays.
* Beside the records: `train.csv` (labels, metadata, patient group, part, codes), `test.csv` (metadata and
  codes, no label), `encodings.json`, `sample_submission.csv` (image_name,target) and `test_labels.csv`
  (image_name,target,diagnosis,patient_id), which training never reads.
* Refused before anything is written (exit 2): a folder that is not the layout, a missing ground-truth file,
  an image without a label or a label without an image, a ground truth that is not 0/1.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core import progress as progress_lib
from melanoma.core.errors import DataError
from melanoma.data import converters, folds, record_format, taxonomy

SOURCE = "isic2017"  # the source name of the patient-code range (taxonomy.PATIENT_CODE_START)
SPLITS = (("training", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part3_GroundTruth.csv"),
          ("validation", "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part3_GroundTruth.csv"),
          ("test", "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part3_GroundTruth.csv"))
GROUND_TRUTH_COLUMNS = ("image_id", "melanoma", "seborrheic_keratosis")
METADATA_COLUMNS = ("image_id", "age_approximate", "sex")
SAMPLE_SUBMISSION = "sample_submission.csv"
TEST_LABELS = "test_labels.csv"
THUMBNAIL = 16           # side of the grey thumbnails compared for near-duplicates
NEAR_CORRELATION = 0.98  # thumbnails correlating above this are one lesion (resized, recompressed, recoloured)


@dataclass(frozen=True)
class Split:
    name: str
    images: str            # folder of the JPEGs
    ground_truth: str
    metadata: str | None   # None where the split has no metadata CSV (the test split)


@dataclass
class Tables:
    """What the folder holds, read and checked, before anything is written."""

    train: pd.DataFrame          # training + validation images, grouped into patients
    test: pd.DataFrame
    train_paths: list[str]
    test_paths: list[str]
    test_equal: list[tuple[str, str]]   # (test image, training image) with the same bytes
    test_near: list[tuple[str, str]]    # (test image, training image) nearly the same
    copies: dict                        # counts of the copies grouped within each set


def metadata_path(folder: str, split: str, images: str) -> str | None:
    """`<images>_metadata.csv` beside the image folder (as this copy has it) or inside it (the official
    download), else None."""
    name = f"{os.path.basename(images)}_metadata.csv"
    for path in (os.path.join(folder, name), os.path.join(images, name)):
        if io_utils.exists(path) and not io_utils.isdir(path):
            return path
    return None


def find_layout(folder: str) -> list[Split]:
    """The three splits of `folder`, checked to be there: FileNotFoundError naming what is missing."""
    if not io_utils.isdir(folder):
        raise FileNotFoundError(f"--isic2017 {folder} is not a folder: give the folder of the ISIC 2017 Part 3 "
                                f"download ({', '.join(images for _, images, _ in SPLITS)} and their ground truth)")
    expected = [name for _, images, truth in SPLITS for name in (images, truth)]
    present = [name for name in expected if io_utils.exists(os.path.join(folder, name))]
    if not present:
        raise FileNotFoundError(f"--isic2017 {folder} is not the ISIC 2017 layout: it holds none of "
                                f"{', '.join(expected)}; give the folder that holds them")
    missing = [name for name in expected if name not in present]
    if missing:
        raise FileNotFoundError(f"--isic2017 {folder} lacks {', '.join(missing)}: the ISIC 2017 layout needs the "
                                "images and the Part 3 ground truth of the training, validation and test splits")
    splits = []
    for name, images, truth in SPLITS:
        path = os.path.join(folder, images)
        if not io_utils.isdir(path):
            raise FileNotFoundError(f"--isic2017 {folder}: {images} is not a folder of JPEGs")
        splits.append(Split(name, path, os.path.join(folder, truth), metadata_path(folder, name, path)))
    return splits


def read_ground_truth(split: Split) -> pd.DataFrame:
    """image_name, melanoma, seborrheic_keratosis of one split, checked: one row per image, 0/1, not both."""
    table = io_utils.read_csv(split.ground_truth, dtype={"image_id": str})
    converters.required_columns(table, GROUND_TRUTH_COLUMNS, split.ground_truth)
    if table.empty:
        raise DataError(f"{split.ground_truth} has a header but no rows")
    names = table["image_id"].astype(str).str.strip()
    if names.duplicated().any():
        raise DataError(f"{split.ground_truth} lists {names[names.duplicated()].iloc[0]} twice; one row per image")
    labels = table[["melanoma", "seborrheic_keratosis"]].apply(pd.to_numeric, errors="coerce")
    bad = ~labels.isin([0, 1]).all(axis=1) | (labels.sum(axis=1) > 1)
    if bad.any():
        raise DataError(f"{split.ground_truth}: melanoma and seborrheic_keratosis must be 0 or 1, not both 1; "
                        f"{int(bad.sum())} row(s) are not (first: {names[bad].iloc[0]})")
    return pd.DataFrame({"image_name": names.to_numpy(), "split": split.name,
                         "melanoma": labels["melanoma"].astype(np.int64).to_numpy(),
                         "seborrheic_keratosis": labels["seborrheic_keratosis"].astype(np.int64).to_numpy()})


def image_paths(split: Split, names: pd.Series) -> list[str]:
    """The JPEG of each labelled image; DataError for a label without an image or an image without a label."""
    found = {os.path.splitext(os.path.basename(path))[0]: path
             for path in io_utils.glob(os.path.join(split.images, "*.jpg"))}
    unlabelled = sorted(set(found) - set(names))
    absent = sorted(set(names) - set(found))
    if absent:
        raise DataError(f"{len(absent)} image(s) of {os.path.basename(split.ground_truth)} are not in "
                        f"{split.images} (first: {', '.join(absent[:3])}): a label without an image; "
                        "give the complete download")
    if unlabelled:
        raise DataError(f"{len(unlabelled)} image(s) in {split.images} have no row in "
                        f"{os.path.basename(split.ground_truth)} (first: {', '.join(unlabelled[:3])}): an image "
                        "without a label; remove them or give the matching ground truth")
    return [found[name] for name in names]


def add_metadata(table: pd.DataFrame, split: Split) -> pd.DataFrame:
    """sex and age_approx from the split's metadata ("unknown" and absent rows missing), no anatomic site."""
    table = table.assign(sex=np.nan, age_approx=np.nan, anatom_site_general_challenge=np.nan)
    if split.metadata is None:
        return table
    metadata = io_utils.read_csv(split.metadata, dtype=str)
    converters.required_columns(metadata, METADATA_COLUMNS, split.metadata)
    metadata = metadata.assign(image_id=metadata["image_id"].str.strip()).drop_duplicates("image_id")
    metadata = metadata.set_index("image_id").reindex(table["image_name"])
    sex = metadata["sex"].str.strip().str.lower()
    table["sex"] = sex.where(sex.isin(["female", "male"])).to_numpy()
    table["age_approx"] = pd.to_numeric(metadata["age_approximate"], errors="coerce").to_numpy()
    return table


def label_classes(table: pd.DataFrame) -> None:
    """isic_class, diagnosis (the class's canonical name) and target (melanoma) of each image, in place."""
    classes = np.where(table["melanoma"] == 1, "MEL", np.where(table["seborrheic_keratosis"] == 1, "BKL", "NV"))
    table["isic_class"] = classes
    table["diagnosis"] = table["isic_class"].map(taxonomy.CLASS_NAMES)
    table["target"] = table["melanoma"].astype(np.int64)


def read_split(split: Split) -> tuple[pd.DataFrame, list[str]]:
    table = read_ground_truth(split)
    paths = image_paths(split, table["image_name"])
    table = add_metadata(table, split)
    label_classes(table)
    return table, paths


# ---------------------------------------------------------------------------------------------------
# copies of one lesion


def fingerprints(paths: list[str], progress: bool = True) -> tuple[list[str], np.ndarray]:
    """(sha256 of each file's bytes, standardized 16x16 grey thumbnail of each image); an image that does not
    decode is a DataError naming it."""
    # OpenCV loads only when images are read
    import cv2

    digests, thumbnails = [], np.zeros((len(paths), THUMBNAIL * THUMBNAIL), np.float32)
    for index, path in enumerate(progress_lib.bar(paths, desc="reading images", unit="img", disable=not progress)):
        data = io_utils.read_bytes(path)
        digests.append(hashlib.sha256(data).hexdigest())
        buffer = np.frombuffer(data, np.uint8)
        # decoded at an eighth of its size: a big original costs little, and the thumbnail is as good; a
        # small image is decoded whole, so that its thumbnail keeps detail
        image = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_GRAYSCALE_8) if data else None
        if image is not None and min(image.shape) < 4 * THUMBNAIL:
            image = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DataError(f"cannot decode image {path}: the file is empty, truncated or not a JPEG")
        small = cv2.resize(image, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        thumbnails[index] = (small - small.mean()) / (small.std() or 1.0)
    return digests, thumbnails / np.sqrt(THUMBNAIL * THUMBNAIL)


def similar_pairs(left: np.ndarray, right: np.ndarray, same: bool, block: int = 1024) -> list[tuple[int, int]]:
    """Index pairs (i, j) whose thumbnails correlate above NEAR_CORRELATION (i < j when `same`), in blocks so
    that a large set never needs its whole correlation matrix."""
    pairs = []
    for start in range(0, len(left), block):
        correlation = left[start:start + block] @ right.T
        rows, columns = np.nonzero(correlation > NEAR_CORRELATION)
        pairs += [(start + i, j) for i, j in zip(rows.tolist(), columns.tolist()) if not same or start + i < j]
    return pairs


def patient_groups(names: list[str], digests: list[str], thumbnails: np.ndarray) -> tuple[list[str], dict]:
    """One patient name per image: the first name (sorted) among the images that are copies of each other
    (same bytes, or near-identical thumbnails), joined transitively; and the counts of both kinds of pairs."""
    parent = list(range(len(names)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_of: dict[str, int] = {}
    equal = near = 0
    for index, digest in enumerate(digests):
        if digest in first_of:
            parent[root(index)] = root(first_of[digest])
            equal += 1
        first_of.setdefault(digest, index)
    for i, j in similar_pairs(thumbnails, thumbnails, same=True):
        if digests[i] != digests[j]:
            near += 1
            parent[root(i)] = root(j)
    members: dict[int, list[str]] = {}
    for index, name in enumerate(names):
        members.setdefault(root(index), []).append(name)
    patient = [min(members[root(index)]) for index in range(len(names))]
    return patient, {"identical_images": equal, "near_identical_pairs": near}


def test_copies(train: pd.DataFrame, train_prints, test: pd.DataFrame, test_prints) -> tuple[list, list]:
    """(test, training) image pairs with the same bytes, and those nearly the same (thumbnails), each test
    image with its first training match."""
    by_digest: dict[str, str] = {}
    for name, digest in zip(train["image_name"], train_prints[0]):
        by_digest.setdefault(digest, name)
    equal = [(name, by_digest[digest]) for name, digest in zip(test["image_name"], test_prints[0])
             if digest in by_digest]
    known = {name for name, _ in equal}
    near: dict[str, str] = {}
    for i, j in similar_pairs(test_prints[1], train_prints[1], same=False):
        name = test["image_name"].iloc[i]
        if name not in known:
            near.setdefault(name, train["image_name"].iloc[j])
    return equal, sorted(near.items())


# ---------------------------------------------------------------------------------------------------
# the whole conversion


def read_tables(folder: str, progress: bool = True) -> Tables:
    """Everything `records --isic2017` needs from DIR, read and checked (exit 2 on a problem) before any writing:
    the tables of both sets with their patient groups, the image paths, and the test images that copy training
    ones."""
    splits = find_layout(folder)
    read = [read_split(split) for split in splits]
    train = pd.concat([read[0][0], read[1][0]], ignore_index=True)
    test = read[2][0]
    train_paths, test_paths = read[0][1] + read[1][1], read[2][1]
    both = sorted(set(train["image_name"]) & set(test["image_name"]))
    twice = train["image_name"][train["image_name"].duplicated()]
    if both or len(twice):
        name = both[0] if both else twice.iloc[0]
        raise DataError(f"--isic2017 {folder}: image {name} is in two splits' ground truth; each image has one split")
    train_prints = fingerprints(train_paths + test_paths, progress)
    test_prints = train_prints[0][len(train):], train_prints[1][len(train):]
    train_prints = train_prints[0][:len(train)], train_prints[1][:len(train)]
    train["patient_id"], train_groups = patient_groups(list(train["image_name"]), *train_prints)
    test["patient_id"], test_groups = patient_groups(list(test["image_name"]), *test_prints)
    equal, near = test_copies(train, train_prints, test, test_prints)
    copies = {f"{split}_{key}": value for split, counts in (("train", train_groups), ("test", test_groups))
              for key, value in counts.items()}
    return Tables(train, test, train_paths, test_paths, equal, near, copies)


def code_tables(tables: Tables) -> dict:
    """The records' `<feature>_code` columns of both tables (`converters.code_columns`: the competition's codes,
    patients numbered in the isic2017 range, training groups first); returns the encodings."""
    both = pd.concat([tables.train.assign(lesion_id="1 training:" + tables.train["patient_id"]),
                      tables.test.assign(lesion_id="2 test:" + tables.test["patient_id"])], ignore_index=True)
    encodings = converters.source_encodings(None, both["isic_class"].unique(), SOURCE)
    encodings = converters.code_columns(both, encodings, SOURCE)
    coded = [column for column in both if column.endswith("_code")]
    tables.train[coded] = both[coded].iloc[:len(tables.train)].to_numpy()
    for column in coded:
        if column.replace("_code", "") in record_format.TEST_INT_FEATURES:
            tables.test[column] = both[column].iloc[len(tables.train):].to_numpy()
    return encodings


def assign_parts(train: pd.DataFrame, parts: int, seed: int) -> np.ndarray:
    """Parts as `folds` assigns them, each patient group in one part; a tiny set gets fewer (noted on stderr)."""
    frame = train[["image_name", "patient_id", "target"]]
    return folds.assign_parts_noted(frame, parts=parts, seed=seed)["part"].to_numpy()


def build_records(tables: Tables, out_dir: str, size: int, parts: int = folds.DEFAULT_PARTS,
                  test_parts: int = record_format.DEFAULT_TEST_PARTS, seed: int = 42,
                  workers: int | None = None) -> dict:
    """Checked tables (`read_tables`) -> train and test records, the tables, the sample submission and the test
    labels in `out_dir` (the hidden folder `records` puts in place whole); returns the summary."""
    train, test = tables.train, tables.test
    encodings = code_tables(tables)
    train["part"] = assign_parts(train, parts, seed)
    written = record_format.write_train_records(train, tables.train_paths, out_dir, size, encodings, workers)
    count = max(1, min(test_parts, len(test)))
    test["part"] = np.arange(len(test)) * count // len(test)
    frame = test[["image_name", "part"]].assign(**{column: test[f"{column}_code"].to_numpy()
                                                   for column in record_format.TEST_INT_FEATURES})
    test_written = record_format.write_split(frame, "", out_dir, "test", size, workers, image_paths=tables.test_paths)
    hidden = ["melanoma", "seborrheic_keratosis", "isic_class", "diagnosis", "target"]
    io_utils.write_csv_atomic(test.drop(columns=hidden), os.path.join(out_dir, "test.csv"))
    io_utils.write_csv_atomic(test[["image_name"]].assign(target=0.0), os.path.join(out_dir, SAMPLE_SUBMISSION))
    # patient_id: the test copies of one lesion, which `score --labels` resamples together
    io_utils.write_csv_atomic(test[["image_name", "target", "diagnosis", "patient_id"]],
                              os.path.join(out_dir, TEST_LABELS))
    return {"train_images": len(train), "validation_images": int((train["split"] == "validation").sum()),
            "malignant_images": int(train["target"].sum()), "train_patients": int(train["patient_id"].nunique()),
            **{key: value for key, value in tables.copies.items() if key.startswith("train_")},
            "train_files": len(written), "parts": int(train["part"].nunique()),
            "test_images": len(test), "test_malignant_images": int(test["target"].sum()),
            "test_patients": int(test["patient_id"].nunique()), "test_files": len(test_written),
            **{key: value for key, value in tables.copies.items() if key.startswith("test_")},
            "test_equal_to_training": len(tables.test_equal), "test_near_training": len(tables.test_near),
            "classes": {cls: int(n) for cls, n in train["isic_class"].value_counts().sort_index().items()}}


def copies_lines(tables: Tables) -> list[str]:
    """The printed lines that name the test images which copy training images (the test split stays whole)."""
    lines = []
    for pairs, verb, sign, why in ((tables.test_equal, "equal", "=", "same bytes"),
                                   (tables.test_near, "nearly equal", "~",
                                    f"16x16 grey thumbnails correlate above {NEAR_CORRELATION}")):
        if pairs:
            listed = ", ".join(f"{test} {sign} {train}" for test, train in pairs)
            lines.append(f"{len(pairs)} test image{'s' if len(pairs) > 1 else ''} {verb} training images ({why}; "
                         f"kept: the official test split stays whole): {listed}")
    return lines
