"""A small dataset in the ISIC 2024 challenge's layout, drawn from scratch (`synth OUT --layout isic2024`).

`python -m melanoma synth OUT --layout isic2024 [--patients N] [--test-patients N] [--lesions N]
[--positive-rate R] [--size N] [--seed S] [--force]` writes into a new or empty OUT

    OUT/train-metadata.csv   every column of the published table (`isic2024.TRAIN_COLUMNS`), the
                             training-only ones included
    OUT/train-image.hdf5     one dataset per isic_id holding the JPEG bytes of its crop (about --size px)
    OUT/test-metadata.csv    the same less target and the training-only columns (`isic2024.TEST_COLUMNS`)
    OUT/test-image.hdf5
    OUT/sample_submission.csv  isic_id,target
    OUT/test_labels.csv      isic_id,target: the hidden truth, so that a demo submission can be scored

`--patients` patients with `--lesions` lesion crops each on average (a long tail: a few patients have
many), `--positive-rate` of them malignant (at least one per split), more often in riskier patients.

Every lesion has a hidden atypia score in [0, 1], drawn from a distribution centred low for a benign
lesion and high for a malignant one, the two overlapping. Each patient has a skin colour and a typical
nevus (size, darkness); a lesion's measurements (`tbp_lv_*`, its diameter) are the patient's typical
nevus moved by its atypia and by noise: an atypical lesion is larger, darker against the skin, less
round, with a more irregular border and more colours, and a lower nevus confidence. So the metadata
carry the class partly on their own and partly only against the same patient's other lesions (the
"ugly duckling"), as the published data do. The crop shows the same lesion (`synth.render_lesion` at
the lesion's atypia, on the patient's skin colour, without a dermatoscope's rim, softened as a
total-body photograph's tiles are). The training-only columns follow the label as in the published
data: every malignant lesion and a few benign ones have a lesion_id and a diagnosis beyond "Benign".

Deterministic for a given seed: the tables come from one stream, and each crop from its own stream
keyed by (seed, image number). `metadata_table` draws the tables alone (no images), fast enough for
hundreds of thousands of rows (the tree benchmark uses it).
"""
from __future__ import annotations

import os
import sys
import time

import cv2
import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core import progress as progress_lib
from melanoma.data import isic2024
from melanoma.tools import synth

DEFAULTS = {"size": 130, "patients": 20, "test_patients": 3, "lesions": 30, "positive_rate": 0.02}
MIN_SIZE = 32
OWN_ENTRIES = (isic2024.TRAIN_METADATA, isic2024.TRAIN_IMAGES, isic2024.TEST_METADATA, isic2024.TEST_IMAGES,
               isic2024.SAMPLE_SUBMISSION, "test_labels.csv")
JPEG_QUALITY = 90
SAMPLE_TARGET = 0.3  # any constant: the sample fixes the ids and the columns, not the values

# detailed location, simple location, general site (None: unknown), share of benign lesions, how much
# more often a malignant one sits there, centre (x, y, z) on the body in mm (x to the patient's left)
LOCATIONS = (
    ("Head & Neck", "Head & Neck", "head/neck", 0.07, 2.0, (0, 1600, 0)),
    ("Torso Front Top Half", "Torso Front", "anterior torso", 0.12, 1.0, (0, 1350, 110)),
    ("Torso Front Bottom Half", "Torso Front", "anterior torso", 0.07, 0.9, (0, 1100, 110)),
    ("Torso Back Top Third", "Torso Back", "posterior torso", 0.15, 1.4, (0, 1420, -110)),
    ("Torso Back Middle Third", "Torso Back", "posterior torso", 0.10, 1.2, (0, 1260, -110)),
    ("Torso Back Bottom Third", "Torso Back", "posterior torso", 0.06, 1.0, (0, 1100, -110)),
    ("Left Arm - Upper", "Left Arm", "upper extremity", 0.06, 1.0, (230, 1300, 0)),
    ("Left Arm - Lower", "Left Arm", "upper extremity", 0.05, 1.0, (300, 1050, 0)),
    ("Right Arm - Upper", "Right Arm", "upper extremity", 0.06, 1.0, (-230, 1300, 0)),
    ("Right Arm - Lower", "Right Arm", "upper extremity", 0.05, 1.0, (-300, 1050, 0)),
    ("Left Leg - Upper", "Left Leg", "lower extremity", 0.05, 0.8, (120, 750, 0)),
    ("Left Leg - Lower", "Left Leg", "lower extremity", 0.05, 0.9, (130, 350, 0)),
    ("Right Leg - Upper", "Right Leg", "lower extremity", 0.05, 0.8, (-120, 750, 0)),
    ("Right Leg - Lower", "Right Leg", "lower extremity", 0.05, 0.9, (-130, 350, 0)),
    ("Unknown", "Unknown", None, 0.01, 1.0, (0, 1000, 0)),
)
CLINICS = (("Synthetic Clinic A", "CC-BY"), ("Synthetic Clinic B", "CC-BY-NC"), ("Synthetic Clinic C", "CC-0"),
           ("Synthetic Clinic D", "CC-BY"))
TILE_TYPES = ("3D: white", "3D: XP")
IMAGE_TYPE = "TBP tile: close-up"
# diagnosis levels (iddx_1, iddx_2, iddx_3) and how often: malignant lesions, then benign ones that were
# looked at closely (the others are plain "Benign")
MALIGNANT = ((("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive"), 0.25),
             (("Malignant", "Malignant melanocytic proliferations (Melanoma)", "Melanoma in situ"), 0.15),
             (("Malignant", "Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma"), 0.4),
             (("Malignant", "Malignant epidermal proliferations", "Squamous cell carcinoma in situ"), 0.2))
EXAMINED = ((("Benign", "Benign melanocytic proliferations", "Nevus"), 0.5),
            (("Benign", "Benign epidermal proliferations", "Seborrheic keratosis"), 0.2),
            (("Benign", "Flat melanotic pigmentations - not melanocytic nevus", "Solar lentigo"), 0.15),
            (("Indeterminate", "Indeterminate melanocytic proliferations", "Atypical melanocytic neoplasm"), 0.1),
            (("Benign", "Benign soft tissue proliferations - Vascular", "Hemangioma"), 0.05))
EXAMINED_BENIGN_RATE = 0.03
MITOTIC_INDEX = ("0/mm^2", "<1/mm^2", "1/mm^2", "2/mm^2", "3/mm^2", ">4/mm^2")
ATYPIA_BETA = {0: (1.6, 6.0), 1: (5.0, 2.0)}
MISSING_RATE = 0.02  # patients without sex and age, lesions without a site


# ----------------------------------------------------------------------------------------- tables


def draw_patients(rng: np.random.Generator, count: int, numbers: np.ndarray) -> pd.DataFrame:
    """One row per patient: id, age, sex, clinic, skin colour (LAB), typical nevus, risk."""
    age = np.clip(5 * np.round(rng.normal(57, 15, count) / 5), 10, 85)
    missing = rng.random(count) < MISSING_RATE
    sex = np.where(rng.random(count) < 0.5, "male", "female").astype(object)
    return pd.DataFrame({
        "patient_id": [f"IP_{number:07d}" for number in numbers[:count]],
        "age_approx": np.where(missing, np.nan, age), "sex": np.where(missing, None, sex),
        "clinic": rng.integers(0, len(CLINICS), count),
        "skin_L": np.clip(rng.normal(63, 7, count), 35, 82), "skin_A": rng.normal(15, 3, count),
        "skin_B": rng.normal(24, 4, count), "nevus_size": rng.lognormal(np.log(3.2), 0.2, count),
        "nevus_dark": np.clip(rng.normal(14, 3, count), 5, 25), "xp_share": rng.uniform(0.2, 0.8, count),
        "risk": rng.lognormal(0.0, 0.8, count) * np.exp(0.03 * (np.nan_to_num(age, nan=57) - 57)),
        "lesion_weight": rng.lognormal(0.0, 1.0, count)})


def allocate(rng: np.random.Generator, patients: pd.DataFrame, rows: int, positive_rate: float):
    """(patient index of each row, target of each row): every patient at least one lesion, the rest
    spread by the patients' weights; round(rate x rows) positives (at least one, never every row),
    chosen with the patients' risk."""
    count = len(patients)
    weights = patients["lesion_weight"].to_numpy()
    per_patient = 1 + rng.multinomial(rows - count, weights / weights.sum())
    owner = np.repeat(np.arange(count), per_patient)
    positives = int(np.clip(round(positive_rate * rows), 1, rows - 1))
    chance = patients["risk"].to_numpy()[owner]
    target = np.zeros(rows, dtype=np.int64)
    target[rng.choice(rows, size=positives, replace=False, p=chance / chance.sum())] = 1
    return owner, target


def draw_locations(rng: np.random.Generator, target: np.ndarray) -> dict:
    shares = np.array([row[3] for row in LOCATIONS])
    boosted = shares * np.array([row[4] for row in LOCATIONS])
    choice = np.where(target == 1, rng.choice(len(LOCATIONS), len(target), p=boosted / boosted.sum()),
                      rng.choice(len(LOCATIONS), len(target), p=shares / shares.sum()))
    centre = np.array([row[5] for row in LOCATIONS], dtype=np.float64)[choice]
    spread = np.array([60.0, 90.0, 40.0])
    site = np.array([row[2] for row in LOCATIONS], dtype=object)[choice]
    site = np.where(rng.random(len(target)) < MISSING_RATE, None, site)
    return {"anatom_site_general": site,
            "tbp_lv_location": np.array([row[0] for row in LOCATIONS], dtype=object)[choice],
            "tbp_lv_location_simple": np.array([row[1] for row in LOCATIONS], dtype=object)[choice],
            **{f"tbp_lv_{axis}": centre[:, i] + rng.normal(0, spread[i], len(target)) for i, axis in enumerate("xyz")}}


def draw_shape(rng: np.random.Generator, typical_size: np.ndarray, atypia: np.ndarray) -> dict:
    """Diameter, axes, area, perimeter and border of each lesion (mm), from its atypia and its patient's
    typical nevus."""
    n = len(atypia)
    diameter = np.clip(typical_size * np.exp(0.6 * atypia + rng.normal(0, 0.25, n)), 1.0, 30.0)
    aspect = np.clip(0.9 - 0.35 * atypia + rng.normal(0, 0.08, n), 0.3, 1.0)
    minor = diameter * aspect
    ragged = np.clip(0.15 + 0.7 * atypia + rng.normal(0, 0.12, n), 0, 1)
    area = np.pi / 4 * diameter * minor * np.clip(0.95 - 0.2 * ragged + rng.normal(0, 0.03, n), 0.5, 1.0)
    a, b = diameter / 2, minor / 2
    ellipse = np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))  # Ramanujan's perimeter
    perimeter = ellipse * (1 + 0.35 * ragged + np.abs(rng.normal(0, 0.04, n)))
    return {"clin_size_long_diam_mm": np.round(diameter, 2), "tbp_lv_minorAxisMM": minor,
            "tbp_lv_areaMM2": area, "tbp_lv_perimeterMM": perimeter,
            "tbp_lv_area_perim_ratio": perimeter ** 2 / area, "tbp_lv_eccentricity": np.sqrt(1 - aspect ** 2),
            "tbp_lv_norm_border": np.clip(10 * (0.1 + 0.6 * ragged + rng.normal(0, 0.1, n)), 0, 10),
            "tbp_lv_symm_2axis": np.clip(0.15 + 0.5 * atypia + rng.normal(0, 0.1, n), 0, 1),
            "tbp_lv_symm_2axis_angle": rng.uniform(0, 180, n)}


def draw_colour(rng: np.random.Generator, patient: pd.DataFrame, atypia: np.ndarray) -> dict:
    """LAB colour inside (tbp_lv_L, A, B) and outside (…ext) each lesion, their contrasts, chroma and hue,
    and the colour variation inside, from the lesion's atypia and its patient's skin and typical nevus."""
    n = len(atypia)
    outside = {channel: patient[f"skin_{channel}"].to_numpy() + rng.normal(0, scale, n)
               for channel, scale in (("L", 3.0), ("A", 1.5), ("B", 1.5))}
    darkness = patient["nevus_dark"].to_numpy() + 9 * atypia + rng.normal(0, 3, n)
    inside = {"L": outside["L"] - darkness, "A": outside["A"] + 3 + 5 * atypia + rng.normal(0, 2, n),
              "B": outside["B"] + 1 + rng.normal(0, 2, n)}
    variation = np.clip(0.15 + 0.7 * atypia + rng.normal(0, 0.12, n), 0, 1)
    delta = {channel: inside[channel] - outside[channel] for channel in "LAB"}
    columns = {}
    for channel in "LAB":
        columns[f"tbp_lv_{channel}"], columns[f"tbp_lv_{channel}ext"] = inside[channel], outside[channel]
        columns[f"tbp_lv_delta{channel}"] = delta[channel]
    for suffix, colour in (("", inside), ("ext", outside)):
        columns[f"tbp_lv_C{suffix}"] = np.hypot(colour["A"], colour["B"])
        columns[f"tbp_lv_H{suffix}"] = np.degrees(np.arctan2(colour["B"], colour["A"]))
    skin_spread = 0.8 + np.abs(rng.normal(0, 0.3, n))
    columns.update({
        "tbp_lv_deltaLB": np.hypot(delta["L"], delta["B"]),
        "tbp_lv_deltaLBnorm": np.sqrt(delta["L"] ** 2 + delta["A"] ** 2 + delta["B"] ** 2) * rng.normal(0.8, 0.05, n),
        "tbp_lv_stdL": 1 + 2.5 * variation + np.abs(rng.normal(0, 0.5, n)), "tbp_lv_stdLExt": skin_spread,
        "tbp_lv_color_std_mean": 0.3 + 2.5 * variation + np.abs(rng.normal(0, 0.4, n)),
        "tbp_lv_radial_color_std_max": 0.4 + 2.0 * variation + np.abs(rng.normal(0, 0.4, n)),
        "tbp_lv_norm_color": np.clip(10 * (0.05 + 0.6 * variation + rng.normal(0, 0.1, n)), 0, 10),
        "tbp_lv_nevi_confidence": 100 / (1 + np.exp(-(3 - 7 * atypia + rng.normal(0, 1, n))))})
    return columns


def pick(rng: np.random.Generator, choices, count: int) -> list:
    weights = np.array([weight for _, weight in choices])
    return [choices[i][0] for i in rng.choice(len(choices), count, p=weights / weights.sum())]


def draw_training_only(rng: np.random.Generator, target: np.ndarray, numbers: np.ndarray) -> dict:
    """lesion_id, the iddx levels and the melanoma measurements, following the label as the published
    data do (every malignant lesion, and a few benign ones, were examined)."""
    n = len(target)
    examined = (target == 1) | (rng.random(n) < EXAMINED_BENIGN_RATE)
    levels = np.full((n, 5), None, dtype=object)
    levels[:, 0] = "Benign"
    malignant, benign = np.flatnonzero(target == 1), np.flatnonzero(examined & (target == 0))
    for rows, choices in ((malignant, MALIGNANT), (benign, EXAMINED)):
        for row, chosen in zip(rows, pick(rng, choices, len(rows))):
            levels[row, :3] = chosen
    invasive = levels[:, 2] == "Melanoma Invasive"
    thickness = np.round(rng.lognormal(np.log(0.6), 0.6, n), 2)
    return {"lesion_id": np.where(examined, [f"IL_{number:07d}" for number in numbers], None),
            "iddx_full": ["::".join(level for level in row if level) for row in levels],
            **{f"iddx_{i + 1}": levels[:, i] for i in range(5)},
            "mel_mitotic_index": np.where(invasive, np.array(MITOTIC_INDEX, dtype=object)[
                rng.integers(0, len(MITOTIC_INDEX), n)], None),
            "mel_thick_mm": np.where(invasive, thickness, np.nan),
            "tbp_lv_dnn_lesion_confidence": 100 / (1 + np.exp(-(4 + rng.normal(0, 1.5, n))))}


def draw_split(rng: np.random.Generator, rows: int, patients: int, positive_rate: float,
               patient_numbers: np.ndarray, image_numbers: np.ndarray) -> pd.DataFrame:
    """The full training table of one split (TRAIN_COLUMNS), plus the hidden `atypia`, `image_number` and
    skin colour that the crops are drawn with."""
    people = draw_patients(rng, patients, patient_numbers)
    owner, target = allocate(rng, people, rows, positive_rate)
    person = people.iloc[owner].reset_index(drop=True)
    atypia = np.where(target == 1, rng.beta(*ATYPIA_BETA[1], rows), rng.beta(*ATYPIA_BETA[0], rows))
    clinic = person["clinic"].to_numpy()
    columns = {isic2024.ID: [f"ISIC_{number:07d}" for number in image_numbers[:rows]], "target": target,
               "patient_id": person["patient_id"].to_numpy(), "age_approx": person["age_approx"].to_numpy(),
               "sex": person["sex"].to_numpy(), "image_type": IMAGE_TYPE,
               "tbp_tile_type": np.where(rng.random(rows) < person["xp_share"].to_numpy(), *TILE_TYPES[::-1]),
               "attribution": np.array([name for name, _ in CLINICS], dtype=object)[clinic],
               "copyright_license": np.array([licence for _, licence in CLINICS], dtype=object)[clinic],
               **draw_locations(rng, target), **draw_shape(rng, person["nevus_size"].to_numpy(), atypia),
               **draw_colour(rng, person, atypia), **draw_training_only(rng, target, image_numbers[:rows])}
    table = pd.DataFrame(columns)[list(isic2024.TRAIN_COLUMNS)]
    hidden = pd.DataFrame({"atypia": atypia, "image_number": image_numbers[:rows],
                           **{f"skin_{c}": table[f"tbp_lv_{c}ext"] for c in "LAB"}})
    return pd.concat([table, hidden], axis=1)


def metadata_table(rows: int, patients: int, positive_rate: float, seed: int = 0) -> pd.DataFrame:
    """A training table of `rows` lesions of `patients` patients in the published columns (no images)."""
    check_counts(rows, patients, positive_rate)
    rng = np.random.default_rng([int(seed), 2024])
    numbers = rng.choice(10_000_000, size=patients, replace=False)
    images = rng.choice(10_000_000, size=rows, replace=False)
    return draw_split(rng, rows, patients, positive_rate, numbers, images)[list(isic2024.TRAIN_COLUMNS)]


def check_counts(rows: int, patients: int, positive_rate: float) -> None:
    if patients < 1 or rows < max(2, patients):
        raise ValueError(f"{rows} lesions cannot give {patients} patients a lesion each (and two lesions in all)")
    if not 0 < positive_rate < 1:
        raise ValueError(f"the positive rate must lie between 0 and 1, got {positive_rate}")


# ----------------------------------------------------------------------------------------- images


def lab_to_rgb(lightness: float, a: float, b: float) -> np.ndarray:
    pixel = np.array([[[lightness, a, b]]], dtype=np.float32)
    return np.clip(cv2.cvtColor(pixel, cv2.COLOR_Lab2RGB)[0, 0], 0.0, 1.0)


def render_crop(seed: int, number: int, size: int, malignant: bool, atypia: float, skin) -> bytes:
    """JPEG bytes of one lesion crop: its own stream, a size near `size`, the patient's skin, no rim."""
    rng = np.random.default_rng([int(seed), 24, int(number)])
    side = int(size + rng.integers(-4, 5))
    image = synth.render_lesion(rng, side, malignant, skin_tone=lab_to_rgb(*skin), hair_density=0.4,
                                atypia=atypia, rim_probability=0.0)
    return synth.encode_jpeg(cv2.GaussianBlur(image, (0, 0), 0.7), JPEG_QUALITY)


def write_images(table: pd.DataFrame, path: str, size: int, seed: int, label: str, progress: bool) -> None:
    """One dataset per isic_id holding its crop's JPEG bytes, written under a temporary name."""
    # h5py loads only where an HDF5 file is written
    import h5py

    temporary = io_utils.temporary_name(path)
    rows = zip(table[isic2024.ID], table["image_number"], table["target"], table["atypia"],
               zip(table["skin_L"], table["skin_A"], table["skin_B"]))
    with h5py.File(temporary, "w") as handle:
        for name, number, target, atypia, skin in progress_lib.bar(
                rows, total=len(table), desc=f"synth {label}", unit="img", disable=not progress, file=sys.stderr):
            data = render_crop(seed, number, size, bool(target), float(atypia), skin)
            handle.create_dataset(name, data=np.bytes_(data), track_times=False)
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------- the dataset


def check_arguments(size: int, patients: int, test_patients: int, lesions: int, positive_rate: float) -> None:
    """Raise ValueError, naming the argument, for values that cannot give a usable dataset."""
    if size < MIN_SIZE:
        raise ValueError(f"--size must be at least {MIN_SIZE} pixels, got {size}")
    if patients < 2:
        raise ValueError(f"--patients must be at least 2 (folds need several patients), got {patients}")
    if test_patients < 1:
        raise ValueError(f"--test-patients must be at least 1, got {test_patients}")
    if lesions < 1:
        raise ValueError(f"--lesions must be at least 1, got {lesions}")
    if not 0 < positive_rate < 1:
        raise ValueError(f"--positive-rate must lie between 0 and 1, got {positive_rate}")


def synthesize(out_dir: str, size: int = DEFAULTS["size"], patients: int = DEFAULTS["patients"],
               test_patients: int = DEFAULTS["test_patients"], lesions: int = DEFAULTS["lesions"],
               positive_rate: float = DEFAULTS["positive_rate"], seed: int = 0, progress: bool = True) -> dict:
    """Write the dataset into `out_dir` (local) and return a summary. The HDF5 files come first and
    train-metadata.csv last, so an interrupted run leaves no train table that points at missing crops."""
    check_arguments(size, patients, test_patients, lesions, positive_rate)
    started = time.perf_counter()
    rng = np.random.default_rng([int(seed), 2024])
    train_rows, test_rows = patients * lesions, max(2, test_patients * lesions)
    patient_numbers = rng.choice(10_000_000, size=patients + test_patients, replace=False)
    image_numbers = rng.choice(10_000_000, size=train_rows + test_rows, replace=False)
    train = draw_split(rng, train_rows, patients, positive_rate, patient_numbers[:patients], image_numbers[:train_rows])
    test = draw_split(rng, test_rows, test_patients, positive_rate, patient_numbers[patients:],
                      image_numbers[train_rows:])
    os.makedirs(out_dir, exist_ok=True)
    path = {name: os.path.join(out_dir, name) for name in OWN_ENTRIES}
    write_images(train, path[isic2024.TRAIN_IMAGES], size, seed, "train", progress)
    write_images(test, path[isic2024.TEST_IMAGES], size, seed, "test", progress)
    io_utils.write_csv_atomic(test[[isic2024.ID]].assign(target=SAMPLE_TARGET), path[isic2024.SAMPLE_SUBMISSION])
    io_utils.write_csv_atomic(test[[isic2024.ID, "target"]], path["test_labels.csv"])
    io_utils.write_csv_atomic(test[list(isic2024.TEST_COLUMNS)], path[isic2024.TEST_METADATA])
    io_utils.write_csv_atomic(train[list(isic2024.TRAIN_COLUMNS)], path[isic2024.TRAIN_METADATA])
    return {"out_dir": out_dir, "layout": "isic2024", "size": size, "seed": seed,
            "train_images": train_rows, "train_patients": patients, "train_malignant": int(train["target"].sum()),
            "test_images": test_rows, "test_patients": test_patients, "test_malignant": int(test["target"].sum()),
            "seconds": round(time.perf_counter() - started, 2)}


def format_dataset(summary: dict) -> str:
    return (f"wrote {summary['train_images']} train crops ({summary['train_patients']} patients, "
            f"{summary['train_malignant']} malignant) and {summary['test_images']} test crops "
            f"({summary['test_patients']} patients, {summary['test_malignant']} malignant, truth in test_labels.csv)\n"
            f"  about {summary['size']} px, seed {summary['seed']}, {summary['seconds']:.1f} s, in the ISIC 2024 "
            f"layout: {summary['out_dir']}/{{{','.join(OWN_ENTRIES)}}}\n"
            f"  next: python -m melanoma records --isic2024 {summary['out_dir']} --out <records folder>")
