"""Tabular features of the competition's records, for `model.family: tabular` (see `tabular`).

Groups, each switched in the config's `features` section:

* image statistics (`features.image`), from each record's image decoded with OpenCV at
  `features.image_size` (null: `data.image_size`); all finite, `image_feature_names()` in order:
  - `moment_<channel>_<mean|std|skew>` for the 9 channels of RGB, HSV and LAB (values scaled to 0..1);
  - `hist_<channel>_<bin>`: fraction of pixels per bin, `features.histogram_bins` bins per channel;
  - `lesion_*`: a lesion mask (Otsu threshold of each pixel's LAB colour distance from the skin's
    median colour, hairs closed away, the dermatoscope's black rim left out, the largest component
    weighted towards the centre, holes filled) and from it area, border irregularity, solidity, eccentricity, shape and colour asymmetry
    under flips about the principal axes, border sharpness, colour inside against outside the lesion
    (contrast, spread, variegation, coarse colour count); `lesion_found` is 0 and the shape and colour
    values 0 when no lesion stands out.
* metadata (`features.metadata`): `meta_age`, `meta_sex`, `meta_site` (categorical code), and
  `meta_patient_images` (the patient's images in the same split); missing values are NaN, which the
  trees route on their own.
* stacking (`features.from_runs`): `run_<name>`, the named run's OOF prediction for a training row and
  its test prediction (mean over folds) for a test row; a run whose folds differ from this config's is
  refused, so no row's feature comes from a model that trained on that row.
* patient context (`features.patient_context`): for each image statistic, stacked prediction and the
  age, `pdiff_<feature>` (the value minus the mean over the patient's images) and `prank_<feature>` (its
  rank among them, 0 lowest to 1 highest), plus `patient_distance` (how far the image's standardised
  statistics lie from its patient's mean): the "ugly duckling" sign. A patient with one image gets
  difference 0 and the middle rank 0.5. Computed over the same split only (training records, or test
  records), so training and test patients never mix; no target is used.

Image statistics and the records' metadata are computed once per records file and cached under
`<output_dir>/.cache/features/`, keyed by the file (path, size, modification time) and the settings they
depend on, so a second config on the same records does not decode again. TensorFlow reads the records in
this process; the images are decoded and measured with OpenCV in spawned worker processes (a forked child
of a process running TensorFlow can hang), `features.workers` of them (null: every core).
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from melanoma.config import ConfigError
from melanoma.errors import DataError

FEATURE_VERSION = 1  # bump when a feature's definition changes: the cache keys include it
CHANNELS = ("rgb_r", "rgb_g", "rgb_b", "hsv_h", "hsv_s", "hsv_v", "lab_l", "lab_a", "lab_b")
# OpenCV's 8-bit HSV holds hue as 0..179; every other channel is 0..255.
CHANNEL_RANGE = np.array([256, 256, 256, 180, 256, 256, 256, 256, 256], dtype=np.float64)
MOMENTS = ("mean", "std", "skew")
LESION_NAMES = ("found", "area", "irregularity", "solidity", "eccentricity", "asymmetry_major",
                "asymmetry_minor", "colour_asymmetry_major", "colour_asymmetry_minor", "centre_distance",
                "border_sharpness", "contrast_l", "contrast_a", "contrast_b", "std_l", "std_a", "std_b",
                "skin_std_l", "skin_std_a", "skin_std_b", "colour_spread", "skin_colour_spread",
                "variegation", "colours", "frame_fraction", "threshold")
FRAME_LEVEL = 35      # LAB lightness (0..255) below which border-connected pixels are the dermatoscope's rim
MIN_LESION_PIXELS = 6
COLOUR_BINS = 4       # per LAB channel, for the coarse colour count
COLOUR_SHARE = 0.05   # a coarse colour counts when it covers this share of the lesion
CHUNK = 64            # images per task sent to a worker
GROUPS = (("moment_", "colour moments"), ("hist_", "colour histograms"), ("lesion_", "lesion"),
          ("meta_", "metadata"), ("run_", "stacking"), ("pdiff_", "patient context"),
          ("prank_", "patient context"), ("patient_distance", "patient context"))
METADATA = ("meta_age", "meta_sex", "meta_site", "meta_patient_images")
CATEGORICAL = ("meta_site",)
# Constant over a patient's images by definition: no patient context for them.
PATIENT_LEVEL = ("meta_sex", "meta_site", "meta_patient_images")


# ---------------------------------------------------------------------------------------------------
# image statistics (pure numpy / OpenCV: these run in the worker processes)


def image_feature_names(bins: int) -> list[str]:
    names = [f"moment_{channel}_{moment}" for channel in CHANNELS for moment in MOMENTS]
    names += [f"hist_{channel}_{index}" for channel in CHANNELS for index in range(bins)]
    return names + [f"lesion_{name}" for name in LESION_NAMES]


def decode_image(jpeg: bytes, size: int) -> np.ndarray:
    """JPEG bytes -> RGB uint8 [size, size, 3] with OpenCV (resized when the record holds another size)."""
    data = np.frombuffer(jpeg, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError("the JPEG cannot be decoded (empty or corrupt)")
    if image.shape[:2] != (size, size):
        shrink = max(image.shape[:2]) > size
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(image[..., ::-1])


def colour_statistics(rgb: np.ndarray, hsv: np.ndarray, lab: np.ndarray, bins: int) -> np.ndarray:
    """Mean, std and skewness of each channel, then each channel's histogram as fractions of pixels.

    Everything comes from each channel's exact 8-bit histogram (OpenCV's calcHist), which is much
    cheaper than arithmetic over every pixel and gives the same moments."""
    pixels = rgb.shape[0] * rgb.shape[1]
    moments, histograms = [], []
    for image in (rgb, hsv, lab):
        for channel in range(3):
            index = len(moments) // 3
            levels = int(CHANNEL_RANGE[index])
            counts = cv2.calcHist([image], [channel], None, [levels], [0, levels]).ravel().astype(np.float64)
            share = counts / pixels
            value = np.arange(levels) / CHANNEL_RANGE[index]
            mean = float(share @ value)
            std = math.sqrt(max(0.0, float(share @ (value - mean) ** 2)))
            third = float(share @ (value - mean) ** 3)
            moments += [mean, std, third / std ** 3 if std > 1e-6 else 0.0]
            histograms.append(np.add.reduceat(share, np.searchsorted(
                np.floor(value * bins).astype(np.int64), np.arange(bins))))
    return np.concatenate([np.array(moments), np.concatenate(histograms)])


def _kernel_size(size: int) -> int:
    """An odd kernel that grows with the image: 3 at 64 px, 5 at 128, 11 at 256."""
    return max(3, (size // 24) | 1)


@dataclass
class Segmentation:
    """What `lesion_mask` found: the lesion and the rim (bool [H, W]), the smoothed LAB image the mask
    was drawn on (float32), the skin colour it was contrasted with, and the Otsu threshold (0..1)."""

    lesion: np.ndarray
    frame: np.ndarray
    smooth: np.ndarray
    skin: np.ndarray
    threshold: float


def lesion_mask(lab: np.ndarray) -> Segmentation:
    """The lesion of a LAB uint8 image: Otsu's threshold of each pixel's colour distance from the skin.

    Thin dark hairs are closed away first; very dark pixels joined to the image border are the
    dermatoscope's rim and, with a margin, take part in nothing. The skin colour is the median of the
    pixels in the outer band of the field. A distance in colour rather than in lightness alone also
    catches blue-grey, red and whitish parts of a lesion, and cares little for vignetting. Of the
    pixels beyond the threshold, the connected component with the largest area, weighted towards the
    centre, is the lesion; its holes are filled. The mask is empty when nothing stands out.
    """
    size = lab.shape[0]
    kernel_size = _kernel_size(size)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    closed = cv2.morphologyEx(lab, cv2.MORPH_CLOSE, kernel)
    smooth = cv2.GaussianBlur(closed, (kernel_size, kernel_size), 0).astype(np.float32)

    dark = (smooth[..., 0] < FRAME_LEVEL).astype(np.uint8)
    frame = np.zeros(dark.shape, dtype=bool)
    if dark.any():
        count, labels = cv2.connectedComponents(dark, connectivity=8)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        frame = np.isin(labels, edge[edge > 0])
    if frame.any():
        # The rim fades into the skin over a few pixels; that dim ring would pass the threshold as a
        # lesion (and, filled, as the whole field), so a margin around it is left out too.
        margin = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * max(2, size // 16) + 1,) * 2)
        frame = cv2.dilate(frame.astype(np.uint8), margin).astype(bool)
    centre = (size - 1) / 2.0
    axis = (np.arange(size) - centre) / (size / 2.0)
    radius = np.hypot(axis[None, :], axis[:, None])
    field = ~frame
    band = field & (radius > 0.6)
    reference = smooth[band] if band.sum() >= 16 else smooth[field]
    empty = np.zeros(frame.shape, dtype=bool)
    if len(reference) < MIN_LESION_PIXELS:
        return Segmentation(empty, frame, smooth, np.zeros(3, np.float32), 0.0)
    skin = np.median(reference, axis=0).astype(np.float32)
    distance = np.sqrt(((smooth - skin) ** 2).sum(axis=2))
    values = np.clip(distance[field], 0, 255).astype(np.uint8)
    if int(values.max()) - int(values.min()) < 8:
        return Segmentation(empty, frame, smooth, skin, 0.0)
    threshold, _ = cv2.threshold(values.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    candidates = ((distance > threshold) & field).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    if count < 2:
        return Segmentation(empty, frame, smooth, skin, float(threshold) / 255.0)
    # Dermoscopy centres the lesion; shading makes regions at the edges stand out instead.
    offset = np.hypot(centroids[1:, 0] - centre, centroids[1:, 1] - centre) / (size / 2.0)
    left, top = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    touches = ((left == 0) | (top == 0) | (left + stats[1:, cv2.CC_STAT_WIDTH] == size)
               | (top + stats[1:, cv2.CC_STAT_HEIGHT] == size))
    score = stats[1:, cv2.CC_STAT_AREA] * np.maximum(0.05, 1.0 - offset) * np.where(touches, 0.25, 1.0)
    chosen = (labels == 1 + int(np.argmax(score))).astype(np.uint8)
    contours, _ = cv2.findContours(chosen, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(chosen)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return Segmentation(filled.astype(bool) & field, frame, smooth, skin, float(threshold) / 255.0)


def _aligned(mask: np.ndarray, lab: np.ndarray, moments: dict) -> tuple[np.ndarray, np.ndarray]:
    """Mask and LAB image rotated so the lesion's major axis is horizontal, its centroid at the centre
    of a canvas that holds all of it, for flips about the principal axes."""
    cx, cy = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]
    rows, columns = np.nonzero(mask)
    reach = float(np.sqrt((columns - cx) ** 2 + (rows - cy) ** 2).max())
    side = 2 * int(math.ceil(reach)) + 3
    angle = 0.5 * math.degrees(math.atan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"]))
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    matrix[0, 2] += (side - 1) / 2.0 - cx
    matrix[1, 2] += (side - 1) / 2.0 - cy
    aligned_mask = cv2.warpAffine(mask.astype(np.uint8), matrix, (side, side), flags=cv2.INTER_NEAREST) > 0
    aligned_lab = cv2.warpAffine(lab.astype(np.float32), matrix, (side, side), flags=cv2.INTER_LINEAR)
    return aligned_mask, aligned_lab


def _flip_asymmetry(mask: np.ndarray, lab: np.ndarray, axis: int) -> tuple[float, float]:
    """(shape asymmetry, colour asymmetry) under the flip along `axis`: the share of the lesion that its
    mirror image does not cover, and the mean LAB distance (0..1) between mirrored lesion pixels."""
    mirrored = np.flip(mask, axis=axis)
    shape = float(np.logical_xor(mask, mirrored).sum() / (2.0 * mask.sum()))
    both = mask & mirrored
    if not both.any():
        return shape, 0.0
    difference = lab[both] - np.flip(lab, axis=axis)[both]
    return shape, float(np.sqrt((difference ** 2).sum(axis=1)).mean() / 255.0)


def _mean_std(lab: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not mask.any():
        return np.zeros(3), np.zeros(3)
    mean, std = cv2.meanStdDev(lab, mask=mask.astype(np.uint8))
    return mean.ravel(), std.ravel()


def _spread(pixels: np.ndarray) -> float:
    """Mean distance of the pixels' LAB colours from their mean colour, 0..1."""
    if not len(pixels):
        return 0.0
    return float(np.sqrt(((pixels - pixels.mean(axis=0)) ** 2).sum(axis=1)).mean() / 255.0)


def lesion_features(lab: np.ndarray) -> np.ndarray:
    """The `lesion_*` values of a LAB uint8 image, in LESION_NAMES order."""
    found = lesion_mask(lab)
    mask, frame = found.lesion, found.frame
    pixels = mask.size
    values = dict.fromkeys(LESION_NAMES, 0.0)
    values["frame_fraction"] = float(frame.sum() / pixels)
    values["threshold"] = found.threshold
    area = int(mask.sum())
    if area < MIN_LESION_PIXELS:
        return np.array([values[name] for name in LESION_NAMES], dtype=np.float64)

    mask8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(mask8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    perimeter = cv2.arcLength(contour, True)
    hull_area = cv2.contourArea(cv2.convexHull(contour))
    moments = cv2.moments(mask8, binaryImage=True)
    covariance = np.array([[moments["mu20"], moments["mu11"]], [moments["mu11"], moments["mu02"]]]) / area
    low, high = np.linalg.eigvalsh(covariance)
    aligned_mask, aligned_lab = _aligned(mask, lab, moments)
    shape_major, colour_major = _flip_asymmetry(aligned_mask, aligned_lab, axis=0)
    shape_minor, colour_minor = _flip_asymmetry(aligned_mask, aligned_lab, axis=1)
    size = mask.shape[0]
    centre = (size - 1) / 2.0
    cx, cy = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]

    lightness = found.smooth[..., 0]
    gradient = np.hypot(cv2.Sobel(lightness, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(lightness, cv2.CV_32F, 0, 1, ksize=3))
    border = mask & ~cv2.erode(mask8, np.ones((3, 3), np.uint8)).astype(bool)
    skin_mask = ~mask & ~frame
    inside_mean, inside_std = _mean_std(lab, mask)
    outside_mean, outside_std = _mean_std(lab, skin_mask) if skin_mask.any() else (inside_mean, np.zeros(3))
    inside = lab[mask].astype(np.float32)
    coarse = (inside.astype(np.int64) * COLOUR_BINS) // 256
    codes = (coarse[:, 0] * COLOUR_BINS + coarse[:, 1]) * COLOUR_BINS + coarse[:, 2]
    shares = np.bincount(codes, minlength=COLOUR_BINS ** 3) / len(codes)
    spread_in, spread_out = _spread(inside), _spread(lab[skin_mask].astype(np.float32))
    contrast = (inside_mean - outside_mean) / 255.0

    values.update(
        found=1.0, area=area / pixels,
        irregularity=perimeter ** 2 / (4 * math.pi * area),
        solidity=min(1.0, area / hull_area) if hull_area > 0 else 1.0,
        eccentricity=math.sqrt(max(0.0, 1.0 - low / high)) if high > 0 else 0.0,
        asymmetry_major=shape_major, asymmetry_minor=shape_minor,
        colour_asymmetry_major=colour_major, colour_asymmetry_minor=colour_minor,
        centre_distance=math.hypot(cx - centre, cy - centre) / size,
        border_sharpness=float(gradient[border].mean() / 255.0),
        contrast_l=contrast[0], contrast_a=contrast[1], contrast_b=contrast[2],
        std_l=inside_std[0] / 255.0, std_a=inside_std[1] / 255.0, std_b=inside_std[2] / 255.0,
        skin_std_l=outside_std[0] / 255.0, skin_std_a=outside_std[1] / 255.0, skin_std_b=outside_std[2] / 255.0,
        colour_spread=spread_in, skin_colour_spread=spread_out,
        variegation=spread_in / (spread_out + 0.01),
        colours=float((shares >= COLOUR_SHARE).sum()))
    return np.array([values[name] for name in LESION_NAMES], dtype=np.float64)


def image_features(image: np.ndarray, bins: int) -> np.ndarray:
    """Every image statistic of one RGB uint8 image, in `image_feature_names(bins)` order."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    values = np.concatenate([colour_statistics(image, hsv, lab, bins), lesion_features(lab)])
    if not np.all(np.isfinite(values)):
        bad = [name for name, value in zip(image_feature_names(bins), values) if not math.isfinite(value)]
        raise ArithmeticError(f"non-finite image statistics {bad[:5]}: a bug in features.py")
    return values


def _features_task(task: tuple) -> np.ndarray:
    """Worker: (names, JPEG bytes, size, bins) -> [images, features]; names only for the error message."""
    names, jpegs, size, bins = task
    rows = []
    for name, jpeg in zip(names, jpegs):
        try:
            rows.append(image_features(decode_image(jpeg, size), bins))
        except DataError as error:
            raise DataError(f"image {name}: {error}") from None
    return np.stack(rows) if rows else np.zeros((0, len(image_feature_names(bins))))


# ---------------------------------------------------------------------------------------------------
# per-file tables, cached


def image_size(config) -> int:
    return int(config.features.image_size or config.data.image_size)


def settings_key(config) -> str:
    """What a file's cached table depends on besides the file itself."""
    image = bool(config.features.image)
    settings = {"version": FEATURE_VERSION, "image": image,
                "image_size": image_size(config) if image else None,
                "bins": int(config.features.histogram_bins) if image else None}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def _read_file(path: str, split: str, with_images: bool):
    """(metadata table in file order, JPEG bytes or None) of one records file, read with TensorFlow."""
    import tensorflow as tf

    from melanoma import integrity, records

    names = records.TRAIN_INT_FEATURES if split == "train" else records.TEST_INT_FEATURES
    spec = {"image_name": tf.io.FixedLenFeature([], tf.string)}
    spec.update({name: tf.io.FixedLenFeature([], tf.int64) for name in names})
    if with_images:
        spec["image"] = tf.io.FixedLenFeature([], tf.string)
    dataset = tf.data.TFRecordDataset(path).map(lambda s: tf.io.parse_single_example(s, spec),
                                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    columns: dict[str, list] = {"image_name": [], **{name: [] for name in names}}
    jpegs: list[bytes] = []
    hint = integrity.HINT_PREDICT + " The tabular model needs every image."
    with integrity.named_data_errors([path], split, None, f"reading {path}", hint):
        for batch in dataset.batch(512):
            columns["image_name"].extend(n.decode() for n in batch["image_name"].numpy())
            for name in names:
                columns[name].extend(batch[name].numpy().tolist())
            if with_images:
                jpegs.extend(batch["image"].numpy().tolist())
    table = pd.DataFrame(columns)
    expected = records.parse_file_name(path).count
    if len(table) != expected:
        raise DataError(f"{path} holds {len(table)} records but its name says {expected}; the file is "
                        "truncated or misnamed. Download or rebuild it.")
    return table, (jpegs if with_images else None)


class _Workers:
    """A pool of spawned processes, started on first use (only when there is enough to share)."""

    def __init__(self, count: int):
        self.count = count
        self.pool = None

    def map(self, tasks: list[tuple]):
        if self.count <= 1 or len(tasks) < 2:
            return map(_features_task, tasks)
        if self.pool is None:
            self.pool = multiprocessing.get_context("spawn").Pool(self.count)
        return self.pool.imap(_features_task, tasks)

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def worker_count(config) -> int:
    workers = config.features.workers
    return int(workers) if workers else (os.cpu_count() or 1)


def split_table(config, split: str, progress: bool = True) -> pd.DataFrame:
    """Metadata codes (+ image statistics) of every record of `split` (train | test), file by file in
    part order, with each file's `part`; cached per file under <output_dir>/.cache/features/."""
    from tqdm import tqdm

    from melanoma import io_utils, pipeline, sources

    key = "data.train_files" if split == "train" else "data.test_files"
    files = pipeline.list_files(config.get_path(key), key)
    wrong = [f.path for f in files if f.split != split]
    if wrong:
        raise DataError(f"{key} matched {wrong[0]}, which is not a {split} file")
    with_images = bool(config.features.image)
    size, bins = image_size(config), int(config.features.histogram_bins)
    cache_dir = os.path.join(config.output_dir, ".cache", "features")
    suffix = settings_key(config)
    tables, missing = {}, []
    for record_file in files:
        cache = os.path.join(cache_dir, f"{sources._stat_key(record_file.path)}-{suffix}.csv")
        if io_utils.exists(cache):
            tables[record_file.path] = io_utils.read_csv(cache, dtype={"image_name": str})
        else:
            missing.append((record_file, cache))
    if missing:
        workers = _Workers(min(worker_count(config), max(1, sum(f.count for f, _ in missing) // CHUNK)))
        total = sum(f.count for f, _ in missing)
        desc = f"{split} image statistics" if with_images else f"{split} metadata"
        try:
            with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
                for record_file, cache in missing:
                    table, jpegs = _read_file(record_file.path, split, with_images)
                    if with_images:
                        table = _with_image_features(table, jpegs, record_file.path, size, bins, workers, bar)
                    else:
                        bar.update(len(table))
                    io_utils.write_csv_atomic(table, cache)
                    tables[record_file.path] = table
        finally:
            workers.close()
    table = pd.concat([tables[f.path] for f in files], ignore_index=True).copy()  # .copy(): one block per dtype
    table["part"] = np.repeat([f.part for f in files], [len(tables[f.path]) for f in files])
    return table


def _with_image_features(table, jpegs, path, size, bins, workers, bar) -> pd.DataFrame:
    names = table["image_name"].tolist()
    tasks = [(names[i:i + CHUNK], jpegs[i:i + CHUNK], size, bins) for i in range(0, len(jpegs), CHUNK)]
    blocks = []
    try:
        for block in workers.map(tasks):
            blocks.append(block)
            bar.update(len(block))
    except DataError as error:
        raise DataError(f"{path}: {error}. Download or rebuild the file: the tabular model needs every "
                        "image.") from None
    values = np.concatenate(blocks) if blocks else np.zeros((0, len(image_feature_names(bins))))
    statistics = pd.DataFrame(values, columns=image_feature_names(bins))
    return pd.concat([table.reset_index(drop=True), statistics], axis=1)


# ---------------------------------------------------------------------------------------------------
# metadata, patient context, stacking


def metadata_features(raw: pd.DataFrame) -> pd.DataFrame:
    """meta_* from the records' codes (-1 missing -> NaN); the image count over the rows given."""
    def known(column):
        values = raw[column].astype(np.float64)
        return values.where(values >= 0)

    patients = raw["patient_id"]
    counts = patients.map(patients[patients >= 0].value_counts()).astype(np.float64)
    return pd.DataFrame({"meta_age": known("age_approx"), "meta_sex": known("sex"),
                         "meta_site": known("anatom_site_general_challenge"),
                         "meta_patient_images": counts.where(patients >= 0)})


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


def stacking_features(config, train_names: pd.Series, test_names: pd.Series,
                      folds: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """run_<name> for each run of features.from_runs: its OOF prediction for training rows, its test
    prediction for test rows.

    `folds` (image_name -> fold) holds every training row this config scores, with this config's fold;
    each run must have scored each of them out of fold with the same fold number, so the value of a row
    never comes from a model that trained on it. Rows outside `folds` (dropped duplicates) get NaN.
    """
    from melanoma import blend

    train_columns, test_columns = {}, {}
    for name in config.features.from_runs:
        name = str(name)
        where = f"features.from_runs entry '{name}'"
        if name == config.name:
            raise ConfigError(f"{where} is this run itself; stack other runs")
        path = os.path.join(config.output_dir, name)
        if not os.path.isdir(path):
            raise ConfigError(f"{where}: no run folder {path}; train and infer that run first "
                              f"(`python train.py --config configs/{name}.yaml`)")
        try:
            member = blend.Member(path)
            test, source = member.test_predictions()
        except DataError as error:
            raise ConfigError(f"{where}: {error}") from None
        oof = member.oof.drop_duplicates("image_name").set_index("image_name")
        absent = folds.index[~folds.index.isin(oof.index)]
        if len(absent):
            raise ConfigError(f"{where}: its OOF lacks {len(absent)} of this run's training images (e.g. "
                              f"{', '.join(map(str, absent[:3]))}); stack only runs trained on the same "
                              "data.train_files (and data.duplicates_csv)")
        theirs = oof.loc[folds.index, "fold"].astype(np.int64)
        differ = theirs.to_numpy() != folds.to_numpy(dtype=np.int64)
        if differ.any():
            image = folds.index[np.argmax(differ)]
            raise ConfigError(
                f"{where}: its folds differ from this config's ({int(differ.sum())} images, e.g. {image} in its "
                f"fold {int(theirs[image])}, here fold {int(folds[image])}): its OOF prediction of a training "
                "row could come from a model that trained on rows this run validates on. Stack only runs "
                "with the same data.train_files and data.folds")
        if test is None:
            raise ConfigError(f"{where}: no test predictions ({source}); run "
                              f"`python infer.py --config configs/{name}.yaml` first")
        absent = test_names[~test_names.isin(test.index)]
        if len(absent):
            raise ConfigError(f"{where}: its test predictions ({source}) lack {len(absent)} test images "
                              f"(e.g. {', '.join(absent.head(3))}); predict the same test files")
        column = f"run_{name}"
        known = pd.Series(oof["pred"].to_numpy(dtype=np.float64), index=oof.index)
        train_columns[column] = train_names.map(known.where(known.index.isin(folds.index))).to_numpy()
        test_columns[column] = test_names.map(test).to_numpy(dtype=np.float64)
    return (pd.DataFrame(train_columns, index=train_names.index),
            pd.DataFrame(test_columns, index=test_names.index))


# ---------------------------------------------------------------------------------------------------
# the table


@dataclass
class FeatureTable:
    """Feature columns for every training record (with image_name, patient_id, target, part) and every
    test record (with image_name, patient_id); `columns` in model order."""

    train: pd.DataFrame
    test: pd.DataFrame
    columns: list[str]
    categorical: list[str]

    def group(self, column: str) -> str:
        return feature_group(column)


def feature_group(column: str) -> str:
    for prefix, group in GROUPS:
        if column.startswith(prefix):
            return group
    raise ValueError(f"feature '{column}' belongs to no group")


def _assemble(raw: pd.DataFrame, stacked: pd.DataFrame, config, bins: int) -> pd.DataFrame:
    raw = raw.reset_index(drop=True)
    parts = []
    image_columns = image_feature_names(bins) if config.features.image else []
    if image_columns:
        parts.append(raw[image_columns])
    if config.features.metadata:
        parts.append(metadata_features(raw))
    parts.append(stacked.reset_index(drop=True))
    features = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=raw.index)
    if config.features.patient_context:
        varying = [c for c in features.columns if c not in PATIENT_LEVEL]
        if varying:
            features = pd.concat([features, patient_context(features, varying, raw["patient_id"],
                                                            image_columns)], axis=1)
    return features


def build_table(config, folds: pd.Series, progress: bool = True) -> FeatureTable:
    """Every enabled feature group for the training and test records. `folds` (image_name -> fold) lists
    the training rows this config scores, for the stacking check."""
    check_settings(config)
    train_raw = split_table(config, "train", progress)
    test_raw = split_table(config, "test", progress)
    stacked_train, stacked_test = stacking_features(config, train_raw["image_name"], test_raw["image_name"],
                                                    folds)
    bins = int(config.features.histogram_bins)
    train = _assemble(train_raw, stacked_train, config, bins)
    test = _assemble(test_raw, stacked_test, config, bins)
    columns = list(train.columns)
    if not columns:
        raise ConfigError("every feature group is off: turn on features.image, features.metadata or "
                          "features.from_runs")
    ids = ["image_name", "patient_id", "target", "part"]
    train = pd.concat([train_raw[ids].reset_index(drop=True), train], axis=1)
    test = pd.concat([test_raw[["image_name", "patient_id"]].reset_index(drop=True), test], axis=1)
    return FeatureTable(train=train, test=test, columns=columns,
                        categorical=[c for c in columns if c in CATEGORICAL])


def check_settings(config) -> None:
    """The features section's values, checked before any record is read."""
    section = config.features
    if section.image_size is not None and section.image_size < 16:
        raise ConfigError(f"config key 'features.image_size' must be at least 16 (or null), got {section.image_size}")
    if not 2 <= section.histogram_bins <= 64:
        raise ConfigError(f"config key 'features.histogram_bins' must be in 2..64, got {section.histogram_bins}")
    if section.workers is not None and section.workers < 1:
        raise ConfigError(f"config key 'features.workers' must be at least 1 (or null), got {section.workers}")
    runs = section.from_runs
    if not isinstance(runs, list) or not all(isinstance(name, str) and name for name in runs):
        raise ConfigError(f"config key 'features.from_runs' must be a list of run names, got {runs!r}")
    if len(set(runs)) < len(runs):
        raise ConfigError(f"config key 'features.from_runs' names a run twice: {runs}")
