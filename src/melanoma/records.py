"""JPEGs + CSV -> TFRecords in the public `melanoma-NxN` schema, one file per part.

Train records: image (JPEG bytes), image_name (bytes), int64 patient_id, sex, age_approx,
anatom_site_general_challenge, diagnosis, target. Test records: the same without diagnosis and target.
Files are named `train%.2i-%i.tfrec` / `test%.2i-%i.tfrec` (part, image count) so that parts and counts
come from the names. Categoricals are label-encoded over train and test together (missing -> -1), and a
CSV with the encodings and each image's part is written next to the records.

`python -m melanoma records --data DIR --out OUT --size N`: the competition's layout (train.csv,
test.csv, jpeg/train/, jpeg/test/). `python -m melanoma records --isic2019 DIR --out OUT --size N
[--malignant-only]`: the raw ISIC 2019 training files (ground truth one-hot over MEL..UNK, metadata,
JPEGs) as external train records with the competition's codes: target = MEL, diagnosis mapped onto the
competition's names, torso sites merged, patient_id from lesion_id (-1 where none).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from melanoma import io_utils
from melanoma.errors import DataError

TRAIN_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
                      "target")
TEST_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge")
CATEGORICAL = ("sex", "anatom_site_general_challenge", "diagnosis")
FILE_PATTERN = re.compile(r"(?P<split>train|test)(?P<part>\d+)-(?P<count>\d+)\.tfrec$")
DEFAULT_TEST_PARTS = 16


@dataclass(frozen=True)
class RecordFile:
    path: str
    split: str
    part: int
    count: int


def parse_file_name(path: str) -> RecordFile:
    """Part and image count from a public-schema file name; a name that does not fit is an error."""
    match = FILE_PATTERN.search(os.path.basename(str(path)))
    if not match:
        raise DataError(f"TFRecord file name '{os.path.basename(str(path))}' does not follow the public "
                        "schema 'train%.2i-%i.tfrec' / 'test%.2i-%i.tfrec' (part index, image count)")
    return RecordFile(str(path), match["split"], int(match["part"]), int(match["count"]))


def record_name(split: str, part: int, count: int) -> str:
    return f"{split}{part:02d}-{count}.tfrec"


def encode_metadata(train: pd.DataFrame, test: pd.DataFrame | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    """Integer-encode categoricals over train and test together, the same way for both.

    Categories are sorted so the encoding does not depend on row order; missing values become -1,
    as do missing ages. patient_id strings map to integers over both sets.
    """
    frames = [train] + ([test] if test is not None else [])
    encodings: dict[str, dict[str, int]] = {}
    out = [frame.copy() for frame in frames]
    for column in CATEGORICAL + ("patient_id",):
        values = pd.concat([f[column] for f in frames if column in f]).dropna().astype(str)
        mapping = {value: index for index, value in enumerate(sorted(values.unique()))}
        encodings[column] = mapping
        for frame in out:
            if column in frame:
                frame[column] = frame[column].map(
                    lambda v: -1 if pd.isna(v) else mapping[str(v)]).astype(np.int64)
    for frame in out:
        frame["age_approx"] = frame["age_approx"].fillna(-1).round().astype(np.int64)
        if "target" in frame:
            frame["target"] = frame["target"].astype(np.int64)
    encodings.pop("patient_id")  # thousands of ids; the CSV keeps the original beside the code
    return out[0], (out[1] if test is not None else None), encodings


def _bytes_feature(value: bytes):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def serialize_example(image: bytes, row: dict, int_features) -> bytes:
    import tensorflow as tf

    feature = {"image": _bytes_feature(image), "image_name": _bytes_feature(str(row["image_name"]).encode())}
    for name in int_features:
        feature[name] = _int_feature(row[name])
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def resize_jpeg(path: str, size: int, quality: int = 95) -> bytes:
    """Read any JPEG, resize it to size x size (as the public datasets do) and encode it again."""
    return resize_image_bytes(io_utils.read_bytes(path), size, quality, where=path)


def resize_image_bytes(data: bytes, size: int, quality: int = 95, where: str = "image") -> bytes:
    """An image file's bytes (JPEG, PNG, ...) -> the JPEG bytes a record of `size` px holds for it.

    `serve` passes an uploaded image through here, so it reaches the model as a record built from it would.
    """
    import cv2

    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise DataError(f"cannot decode image {where}: the file is empty, truncated or not an image")
    interpolation = cv2.INTER_AREA if max(image.shape[:2]) > size else cv2.INTER_CUBIC
    image = cv2.resize(image, (size, size), interpolation=interpolation)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError(f"cannot encode image {where} as JPEG")
    return encoded.tobytes()


def _resize_task(task: tuple[str, int]) -> bytes:
    return resize_jpeg(*task)


def write_split(frame: pd.DataFrame, image_dir: str, out_dir: str, split: str, size: int,
                workers: int | None = None, progress: bool = True) -> list[str]:
    """Write one TFRecord file per value of frame['part']; images resized in parallel on all cores."""
    int_features = TRAIN_INT_FEATURES if split == "train" else TEST_INT_FEATURES
    missing = [c for c in ("image_name", "part") + int_features if c not in frame]
    if missing:
        raise DataError(f"{split} table lacks column(s) {', '.join(missing)}")
    paths = [os.path.join(image_dir, f"{name}.jpg") for name in frame["image_name"]]
    absent = [p for p in paths if not io_utils.exists(p)]
    if absent:
        raise FileNotFoundError(f"{len(absent)} {split} image(s) missing, first: {', '.join(absent[:3])}")
    io_utils.makedirs(out_dir)
    workers = workers or os.cpu_count() or 1
    written = []
    rows = frame.to_dict("records")
    order = np.argsort(frame["part"].to_numpy(), kind="stable")
    tasks = [(paths[i], size) for i in order]
    # Workers read the JPEGs; gs:// reads go through TensorFlow, which must not be used in a forked
    # child of a process that has already started TensorFlow's threads, so those workers are spawned.
    context = multiprocessing.get_context("spawn" if io_utils.is_remote(image_dir) else "fork")
    pool = context.Pool(workers) if workers > 1 else None
    try:
        results: Iterator[bytes] = (pool.imap(_resize_task, tasks, chunksize=8) if pool
                                    else map(_resize_task, tasks))
        import tensorflow as tf

        bar = tqdm(total=len(tasks), desc=f"{split} records", unit="img", disable=not progress)
        position = 0
        for part, count in frame["part"].value_counts().sort_index().items():
            target = os.path.join(out_dir, record_name(split, int(part), int(count)))
            temporary = io_utils.temporary_name(target)
            with tf.io.TFRecordWriter(temporary) as writer:
                for _ in range(count):
                    row = rows[order[position]]
                    writer.write(serialize_example(next(results), row, int_features))
                    position += 1
                    bar.update(1)
            io_utils.replace(temporary, target)
            written.append(target)
        bar.close()
    finally:
        if pool:
            pool.terminate()
    return written


def build_records(train_csv: str, test_csv: str | None, train_images: str, test_images: str | None,
                  out_dir: str, size: int, parts: int = 15, test_parts: int = DEFAULT_TEST_PARTS,
                  seed: int = 42, workers: int | None = None) -> dict:
    """Competition layout -> public-schema TFRecords + `train.csv`/`test.csv`/`encodings.json` beside them."""
    from melanoma import folds

    train = io_utils.read_csv(train_csv)
    test = io_utils.read_csv(test_csv) if test_csv else None
    train_out, test_out, encodings = encode_metadata(train, test)
    if "part" not in train_out:
        train_out["part"] = folds.assign_parts(train, parts=parts, seed=seed)["part"].to_numpy()
    folds.check_patient_disjoint(train_out.assign(patient_id=train["patient_id"].to_numpy()), "part")
    written = write_split(train_out, train_images, out_dir, "train", size, workers)
    summary = {"train_files": len(written), "train_images": len(train_out)}
    table = train.copy()
    table["part"] = train_out["part"].to_numpy()
    for column in TRAIN_INT_FEATURES:
        table[f"{column}_code"] = train_out[column].to_numpy()
    io_utils.write_csv_atomic(table, os.path.join(out_dir, "train.csv"))
    if test is not None:
        test_parts = max(1, min(test_parts, len(test_out)))
        test_out["part"] = np.arange(len(test_out)) * test_parts // len(test_out)
        written = write_split(test_out, test_images, out_dir, "test", size, workers)
        summary.update(test_files=len(written), test_images=len(test_out))
        table = test.copy()
        table["part"] = test_out["part"].to_numpy()
        for column in TEST_INT_FEATURES:
            table[f"{column}_code"] = test_out[column].to_numpy()
        io_utils.write_csv_atomic(table, os.path.join(out_dir, "test.csv"))
    io_utils.write_text_atomic(os.path.join(out_dir, "encodings.json"), json.dumps(encodings, indent=1))
    return summary


# ---------------------------------------------------------------------------------------------------
# raw ISIC 2019 training files -> the same schema (external data, training only)

ISIC2019_GROUND_TRUTH = "ISIC_2019_Training_GroundTruth.csv"
ISIC2019_METADATA = "ISIC_2019_Training_Metadata.csv"
ISIC2019_IMAGES = "ISIC_2019_Training_Input"
ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
# The competition's codes (sorted names over its train + test, as encode_metadata gives them), so that
# external records mean the same numbers as the competition's.
COMPETITION_ENCODINGS = {
    "sex": {"female": 0, "male": 1},
    "anatom_site_general_challenge": {"head/neck": 0, "lower extremity": 1, "oral/genital": 2,
                                      "palms/soles": 3, "torso": 4, "upper extremity": 5},
    "diagnosis": {"atypical melanocytic proliferation": 0, "cafe-au-lait macule": 1, "lentigo NOS": 2,
                  "lichenoid keratosis": 3, "melanoma": 4, "nevus": 5, "seborrheic keratosis": 6,
                  "solar lentigo": 7, "unknown": 8},
}
# ISIC 2019 classes onto the competition's diagnoses; classes the competition never names (carcinomas,
# keratoses other than seborrheic, vascular lesions, dermatofibroma) become "unknown", as most of its
# benign images are. The original class is kept in the CSV beside the records.
ISIC2019_DIAGNOSIS = {"MEL": "melanoma", "NV": "nevus", "BKL": "seborrheic keratosis", "BCC": "unknown",
                      "AK": "unknown", "SCC": "unknown", "DF": "unknown", "VASC": "unknown", "UNK": "unknown"}
# ISIC 2019 splits the torso; the competition does not.
ISIC2019_SITES = {"anterior torso": "torso", "posterior torso": "torso", "lateral torso": "torso",
                  "torso": "torso", "head/neck": "head/neck", "upper extremity": "upper extremity",
                  "lower extremity": "lower extremity", "palms/soles": "palms/soles",
                  "oral/genital": "oral/genital"}


def isic2019_table(ground_truth: pd.DataFrame, metadata: pd.DataFrame, encodings: dict | None = None,
                   malignant_only: bool = False) -> pd.DataFrame:
    """One row per image: names, mapped metadata, and the int codes of the public schema (`*` columns).

    target = MEL; patient_id = lesion_id coded (-1 where there is none); missing values -> -1.
    """
    encodings = encodings or COMPETITION_ENCODINGS
    missing = [c for c in ("image",) + ISIC2019_CLASSES if c not in ground_truth]
    if missing:
        raise DataError(f"ISIC 2019 ground truth lacks column(s) {', '.join(missing)}")
    missing = [c for c in ("image", "age_approx", "anatom_site_general", "sex") if c not in metadata]
    if missing:
        raise DataError(f"ISIC 2019 metadata lacks column(s) {', '.join(missing)}")
    if ground_truth["image"].duplicated().any():
        twice = ground_truth.loc[ground_truth["image"].duplicated(), "image"].iloc[0]
        raise DataError(f"ISIC 2019 ground truth lists image {twice} twice")
    onehot = ground_truth[list(ISIC2019_CLASSES)].apply(pd.to_numeric, errors="coerce")
    bad = ~((onehot.isin([0, 1])).all(axis=1) & (onehot.sum(axis=1) == 1))
    if bad.any():
        raise DataError(f"ISIC 2019 ground truth row(s) for {', '.join(ground_truth.loc[bad, 'image'].head(3))} "
                        f"are not one-hot over {', '.join(ISIC2019_CLASSES)}")
    table = pd.DataFrame({"image_name": ground_truth["image"].astype(str),
                          "isic2019_class": onehot.idxmax(axis=1).to_numpy()})
    extra = metadata.drop_duplicates("image").set_index("image")
    absent = ~table["image_name"].isin(extra.index)
    if absent.any():
        raise DataError(f"ISIC 2019 metadata has no row for {absent.sum()} image(s), first: "
                        f"{', '.join(table.loc[absent, 'image_name'].head(3))}")
    extra = extra.loc[table["image_name"]]
    sites = extra["anatom_site_general"].str.strip().str.lower()
    unknown_sites = sorted(set(sites.dropna()) - set(ISIC2019_SITES))
    if unknown_sites:
        raise DataError(f"unknown ISIC 2019 anatom_site_general value(s) {', '.join(unknown_sites)}; known: "
                        f"{', '.join(sorted(ISIC2019_SITES))}")
    table["lesion_id"] = extra["lesion_id"].to_numpy() if "lesion_id" in extra else np.nan
    table["sex"] = extra["sex"].str.strip().str.lower().to_numpy()
    table["age_approx"] = pd.to_numeric(extra["age_approx"], errors="coerce").to_numpy()
    table["anatom_site_general_challenge"] = sites.map(ISIC2019_SITES).to_numpy()
    table["diagnosis"] = table["isic2019_class"].map(ISIC2019_DIAGNOSIS)
    table["target"] = (table["isic2019_class"] == "MEL").astype(np.int64)
    if malignant_only:
        table = table[table["target"] == 1].reset_index(drop=True)

    def code(column: str, allow_unknown: bool) -> pd.Series:
        mapping = encodings[column]
        unknown = sorted(set(table[column].dropna().astype(str)) - set(mapping))
        if unknown and not allow_unknown:
            raise DataError(f"{column} value(s) {', '.join(unknown)} have no code in the encodings "
                            f"({', '.join(mapping)})")
        return table[column].map(lambda v: -1 if pd.isna(v) else mapping.get(str(v), -1)).astype(np.int64)

    table["sex_code"] = code("sex", allow_unknown=True)  # e.g. "unknown" -> missing
    table["anatom_site_general_challenge_code"] = code("anatom_site_general_challenge", False)
    table["diagnosis_code"] = code("diagnosis", False)
    table["age_approx_code"] = table["age_approx"].fillna(-1).round().astype(np.int64)
    table["target_code"] = table["target"]
    lesions = sorted(table["lesion_id"].dropna().astype(str).unique())
    lesion_codes = {lesion: index for index, lesion in enumerate(lesions)}
    table["patient_id_code"] = table["lesion_id"].map(
        lambda v: -1 if pd.isna(v) else lesion_codes[str(v)]).astype(np.int64)
    return table


def spread_parts(target: pd.Series, parts: int, seed: int) -> np.ndarray:
    """Parts for training-only data: a seeded shuffle dealt round-robin, malignant images first, so every
    part holds about the same number of images and of malignant images."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(target))
    order = order[np.argsort(-target.to_numpy()[order], kind="stable")]
    result = np.empty(len(target), dtype=np.int64)
    result[order] = np.arange(len(target)) % max(1, min(parts, len(target)))
    return result


def build_isic2019_records(ground_truth_csv: str, metadata_csv: str, image_dir: str, out_dir: str,
                           size: int, malignant_only: bool = False, parts: int = 15, seed: int = 42,
                           workers: int | None = None, encodings_json: str | None = None) -> dict:
    """Raw ISIC 2019 training files -> public-schema train TFRecords + train.csv/encodings.json beside them."""
    encodings = json.loads(io_utils.read_text(encodings_json)) if encodings_json else COMPETITION_ENCODINGS
    for column in CATEGORICAL:
        if column not in encodings:
            raise DataError(f"encodings {encodings_json} lack '{column}'")
    table = isic2019_table(io_utils.read_csv(ground_truth_csv), io_utils.read_csv(metadata_csv),
                           encodings, malignant_only)
    if table.empty:
        raise DataError("no ISIC 2019 image left to write" + (" (--malignant-only)" if malignant_only else ""))
    table["part"] = spread_parts(table["target"], parts, seed)
    frame = table[["image_name", "part"]].copy()
    for column in TRAIN_INT_FEATURES:
        frame[column] = table[f"{column}_code"].to_numpy()
    written = write_split(frame, image_dir, out_dir, "train", size, workers)
    io_utils.write_csv_atomic(table, os.path.join(out_dir, "train.csv"))
    io_utils.write_text_atomic(os.path.join(out_dir, "encodings.json"),
                               json.dumps({k: encodings[k] for k in CATEGORICAL}, indent=1))
    return {"train_files": len(written), "train_images": len(table),
            "malignant_images": int(table["target"].sum())}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="folder in the competition's layout: train.csv, test.csv, "
                        "jpeg/train/, jpeg/test/ (each may also be given below)")
    parser.add_argument("--train-csv")
    parser.add_argument("--test-csv")
    parser.add_argument("--train-images", help="folder of train JPEGs (<image_name>.jpg)")
    parser.add_argument("--test-images", help="folder of test JPEGs")
    parser.add_argument("--isic2019", metavar="DIR", help="raw ISIC 2019 training files instead: "
                        f"{ISIC2019_GROUND_TRUTH}, {ISIC2019_METADATA}, {ISIC2019_IMAGES}/ (external data)")
    parser.add_argument("--isic2019-ground-truth", help=f"path of {ISIC2019_GROUND_TRUTH}")
    parser.add_argument("--isic2019-metadata", help=f"path of {ISIC2019_METADATA}")
    parser.add_argument("--isic2019-images", help="folder of the ISIC 2019 JPEGs (<image>.jpg)")
    parser.add_argument("--malignant-only", action="store_true", help="ISIC 2019: keep only MEL images")
    parser.add_argument("--encodings", help="ISIC 2019: encodings.json of the competition records "
                        "(default: the competition's own codes)")
    parser.add_argument("--out", required=True, help="folder for the TFRecords")
    parser.add_argument("--size", type=int, default=256, help="images are resized to size x size")
    parser.add_argument("--parts", type=int, default=15, help="train parts when the CSV has no 'part'")
    parser.add_argument("--test-parts", type=int, default=DEFAULT_TEST_PARTS)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def command(args: argparse.Namespace) -> int:
    def pick(explicit, *relative):
        if explicit:
            return explicit
        return os.path.join(args.data, *relative) if args.data else None

    if args.size < 8:
        raise DataError(f"--size must be at least 8, got {args.size}")
    if args.isic2019 or args.isic2019_ground_truth:
        if args.data or args.train_csv:
            raise FileNotFoundError("records takes either competition data (--data/--train-csv) or ISIC 2019 "
                                    "files (--isic2019), not both")

        def raw(explicit, name):
            if explicit:
                return explicit
            if not args.isic2019:
                raise FileNotFoundError(f"records needs --isic2019 DIR or the path of {name}")
            return os.path.join(args.isic2019, name)

        paths = (raw(args.isic2019_ground_truth, ISIC2019_GROUND_TRUTH),
                 raw(args.isic2019_metadata, ISIC2019_METADATA), raw(args.isic2019_images, ISIC2019_IMAGES))
        summary = build_isic2019_records(*paths, args.out, args.size, malignant_only=args.malignant_only,
                                         parts=args.parts, seed=args.seed, workers=args.workers,
                                         encodings_json=args.encodings)
        print(json.dumps(summary))
        print(f"records written to {args.out} (external data: list it under data.external_files)")
        return 0
    if args.malignant_only or args.encodings:
        raise FileNotFoundError("--malignant-only and --encodings apply to ISIC 2019 files (--isic2019)")
    train_csv = pick(args.train_csv, "train.csv")
    if not train_csv:
        raise FileNotFoundError("records needs --data DIR, --train-csv CSV or --isic2019 DIR")
    test_csv = pick(args.test_csv, "test.csv")
    if test_csv and not args.test_csv and not io_utils.exists(test_csv):
        test_csv = None
    summary = build_records(train_csv, test_csv, pick(args.train_images, "jpeg", "train"),
                            pick(args.test_images, "jpeg", "test"), args.out, args.size,
                            parts=args.parts, test_parts=args.test_parts, seed=args.seed,
                            workers=args.workers)
    print(json.dumps(summary))
    print(f"records written to {args.out}")
    return 0
