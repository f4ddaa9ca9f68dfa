"""A competition-shaped demo dataset, drawn from scratch, so the whole pipeline runs with no download.

`python -m melanoma synth OUT [--size N] [--patients N] [--test-patients N] [--seed S] [--force]`
(the command: synth_command.py) writes into a new or empty OUT (--force first removes what an earlier
synth wrote there, so images never mix)

    OUT/train.csv              image_name, patient_id, sex, age_approx, anatom_site_general_challenge,
                               diagnosis, benign_malignant, target
    OUT/test.csv               image_name, patient_id, sex, age_approx, anatom_site_general_challenge
    OUT/sample_submission.csv  image_name, target (0 everywhere, test.csv order)
    OUT/test_labels.csv        image_name, target (the hidden truth, so a demo submission can be scored)
    OUT/jpeg/train/<image_name>.jpg, OUT/jpeg/test/<image_name>.jpg

The images imitate dermoscopy photographs: a skin-toned field with uneven tone, vignetting, lighting,
hair and sensor noise, and one pigmented lesion. Every lesion gets a hidden "atypia" score in [0, 1];
malignant lesions draw it from a distribution centred high, benign ones from one centred low, and the
two overlap. Size, asymmetry, border irregularity, darkness and the number of extra colours (black,
blue-grey, red, whitish) all follow atypia plus their own noise. Because the class reaches the pixels
only through atypia, no model can beat the ROC AUC of atypia itself (about 0.97; the nuisance in the
pictures lowers the reachable figure further), so the task is learnable but never solved perfectly: a
small CNN trained from scratch on the 250-patient demo at 64 px lands around 0.85-0.92.

The metadata follows the shape of the competition's table (several images per patient with a long
tail, malignant images clustered in a minority of patients, older patients and head/neck sites
somewhat riskier, a few missing values), with every number below a hand-picked modelling choice.

Output is deterministic for a given seed: each image has its own random stream keyed by
(seed, image number), and JPEG encoding is deterministic, so the same arguments give the same bytes.
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
from melanoma.core.errors import ConfigError
from melanoma.data import record_format

TRAIN_COLUMNS = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
]
TEST_COLUMNS = TRAIN_COLUMNS[:5]

SITES = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital"]
# Share of benign images per site, and how much more often a malignant image sits there.
SITE_WEIGHTS = np.array([0.51, 0.26, 0.15, 0.055, 0.015, 0.01])
SITE_MALIGNANT_BOOST = np.array([1.0, 0.8, 1.4, 2.6, 1.0, 2.0])
SITE_MISSING_RATE = 0.02  # per image
PATIENT_MISSING_RATE = 0.02  # per patient: sex and age unknown together, as in the real table

BENIGN_DIAGNOSES = [
    "unknown",
    "nevus",
    "seborrheic keratosis",
    "lentigo NOS",
    "lichenoid keratosis",
    "solar lentigo",
    "cafe-au-lait macule",
    "atypical melanocytic proliferation",
]
BENIGN_DIAGNOSIS_WEIGHTS = np.array([0.80, 0.16, 0.018, 0.007, 0.006, 0.004, 0.0025, 0.0025])

# Images per patient, 1..12: most patients have a handful, a long tail has many (mean about 5.2).
IMAGES_PER_PATIENT_WEIGHTS = np.array([10, 14, 14, 12, 10, 9, 7, 6, 5, 4, 4, 5], dtype=float)

# A patient is "affected" (has at least one malignant image) with a probability that grows with age
# and image count; an affected patient has 1 + Poisson(0.45) malignant images. Together about 5% of
# images come out malignant.
AFFECTED_LOGIT_BASE = -1.6
AFFECTED_LOGIT_PER_DECADE = 0.45
AFFECTED_LOGIT_PER_IMAGE = 0.12
EXTRA_MALIGNANT_MEAN = 0.45

# Hidden atypia score of a lesion: Beta(a, b) by class. These two overlap enough to cap the AUC.
ATYPIA_BETA = {False: (1.6, 5.0), True: (5.0, 1.8)}

JPEG_QUALITY = 92
MIN_SIZE = 16
MIN_PATIENTS = 2

# Colours as RGB in [0, 1].
_SKIN_LIGHT = np.array([0.95, 0.80, 0.74])
_SKIN_DARK = np.array([0.62, 0.43, 0.32])
_SKIN_PINK = np.array([0.93, 0.64, 0.62])
_BROWN_LIGHT = np.array([0.66, 0.46, 0.33])
_BROWN_DARK = np.array([0.26, 0.15, 0.10])
# Extra colours of atypical lesions: near-black, blue-grey veil, red/pink, whitish regression.
_ATYPICAL_COLOURS = np.array(
    [
        [0.10, 0.07, 0.06],
        [0.42, 0.47, 0.56],
        [0.74, 0.30, 0.30],
        [0.86, 0.80, 0.78],
    ]
)
_HAIR_COLOURS = np.array([[0.12, 0.09, 0.07], [0.25, 0.18, 0.13], [0.05, 0.05, 0.05]])
_ANGLE_BINS = 1024


# ------------------------------------------------------------------------------------------- images


def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y down), float32."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(axis, axis)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field of roughly unit spread: a coarse Gaussian grid upsampled with bicubic."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def random_skin_tone(rng: np.random.Generator) -> np.ndarray:
    """One person's skin colour (RGB in [0, 1]): mostly fair, some darker, some pinker."""
    darkness = rng.beta(1.6, 4.0)
    pinkness = rng.uniform(0.0, 0.6)
    tone = (1 - darkness) * _SKIN_LIGHT + darkness * _SKIN_DARK
    return (1 - pinkness) * tone + pinkness * _SKIN_PINK * (1 - 0.35 * darkness)


def _skin(rng: np.random.Generator, size: int, tone: np.ndarray) -> np.ndarray:
    """Skin background: the person's tone shifted a little per photo, with blotchy low-frequency tone."""
    tone = np.clip(tone * rng.normal(1.0, 0.04, 3), 0.0, 1.0).astype(np.float32)
    blotch = _smooth_field(rng, size, int(rng.integers(3, 7)))
    redness = _smooth_field(rng, size, int(rng.integers(3, 6)))
    grain = _smooth_field(rng, size, max(8, size // 4))
    image = tone[None, None, :] * (1.0 + 0.045 * blotch + 0.015 * grain)[..., None]
    # Redder patches (more red, less green and blue), never greener than the base tone.
    redness = np.maximum(redness, 0.0) * np.float32(rng.uniform(0.01, 0.05))
    image = image + redness[..., None] * np.array([0.5, -0.6, -0.4], dtype=np.float32)
    return image


def _lesion_mask(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    radius: float,
    asymmetry: float,
    irregularity: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft lesion mask in [0, 1] and the distance from the lesion centre in units of its radius.

    The shape is an ellipse whose radius varies with angle and a warped border.

    Low harmonics of the radius (2-4 lobes) make the shape asymmetric; high harmonics (5-16) and a
    smooth warp of the distance make the border ragged.
    """
    size = x.shape[0]
    centre = rng.normal(0.0, 0.07, 2).astype(np.float32)
    angle = rng.uniform(0.0, 2 * np.pi)
    elongation = rng.uniform(0.72, 1.0)
    dx, dy = x - centre[0], y - centre[1]
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = dx * cos + dy * sin
    v = (dy * cos - dx * sin) / np.float32(elongation)
    distance = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)

    angles = np.linspace(0.0, 2 * np.pi, _ANGLE_BINS, endpoint=False)
    profile = np.ones(_ANGLE_BINS)
    for k in range(2, 5):
        profile += asymmetry * rng.uniform(0.3, 1.0) / (k - 1) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    for k in range(5, 17):
        profile += irregularity * rng.uniform(0.0, 1.0) / np.sqrt(k - 4) * np.cos(
            k * angles + rng.uniform(0, 2 * np.pi)
        )
    profile = np.maximum(profile, 0.35) * radius
    bins = ((theta + np.pi) * (_ANGLE_BINS / (2 * np.pi))).astype(np.int32) % _ANGLE_BINS
    edge = profile.astype(np.float32)[bins]

    warp = _smooth_field(rng, size, int(rng.integers(7, 12)))
    distance = distance + np.float32(0.8 * irregularity * radius) * warp
    softness = radius * rng.uniform(0.08, 0.35)
    mask = np.clip((edge - distance) / np.float32(softness) + 0.5, 0.0, 1.0)
    return mask, distance / np.float32(radius)


def _lesion_colour(
    rng: np.random.Generator, size: int, mask: np.ndarray, relative_distance: np.ndarray, atypia: float
) -> tuple[np.ndarray, np.ndarray]:
    """RGB of the lesion and its pigment opacity per pixel.

    A base brown (darker with atypia), a darker or lighter centre, fine mottling, then patches of
    extra colours whose count and extent grow with atypia.
    """
    darkness = float(np.clip(0.3 + 0.35 * atypia + rng.normal(0.0, 0.18), 0.0, 1.0))
    base = ((1 - darkness) * _BROWN_LIGHT + darkness * _BROWN_DARK).astype(np.float32)
    mottling = _smooth_field(rng, size, max(6, size // 6))
    shading = _smooth_field(rng, size, int(rng.integers(3, 6)))
    centre_bias = np.float32(rng.normal(0.0, 0.15))  # >0: darker centre, <0: lighter centre
    centre = np.clip(1.0 - relative_distance, 0.0, 1.0)
    factor = 1.0 + 0.06 * mottling + np.float32(0.08 + 0.12 * atypia) * shading + centre_bias * (0.3 - centre)
    colour = base[None, None, :] * factor[..., None]

    extra_probability = float(np.clip(0.9 * atypia + rng.normal(0.0, 0.08), 0.0, 0.95))
    for index in np.flatnonzero(rng.random(len(_ATYPICAL_COLOURS)) < extra_probability):
        field = _smooth_field(rng, size, int(rng.integers(3, 7)))
        threshold = np.float32(rng.uniform(0.2, 1.1) - 0.6 * atypia)
        strength = rng.uniform(0.35, 0.85) * (0.6 if index == len(_ATYPICAL_COLOURS) - 1 else 1.0)
        patch = np.clip((field - threshold) / 0.8, 0.0, 1.0) * np.float32(strength)
        colour = colour * (1 - patch[..., None]) + _ATYPICAL_COLOURS[index].astype(np.float32) * patch[..., None]

    opacity = mask * np.float32(rng.uniform(0.8, 0.97)) * (1.0 + 0.05 * shading)
    return colour, np.clip(opacity, 0.0, 1.0)


def _hair(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Opacity map (float32, [0, 1]) of `count` hairs drawn as anti-aliased curves."""
    layer = np.zeros((size, size), dtype=np.uint8)
    thickness = max(1, int(round(size / 160)))
    steps = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(count):
        start, control, end = rng.uniform(-0.2, 1.2, (3, 2)) * size
        curve = (1 - steps) ** 2 * start + 2 * (1 - steps) * steps * control + steps**2 * end
        points = np.round(curve * 16).astype(np.int32)  # 4 fractional bits for smooth anti-aliasing
        shade = int(rng.integers(110, 230))
        cv2.polylines(layer, [points], False, shade, thickness, cv2.LINE_AA, shift=4)
    return layer.astype(np.float32) / 255.0


def render_lesion(
    rng: np.random.Generator,
    size: int,
    malignant: bool,
    *,
    skin_tone: np.ndarray | None = None,
    hair_density: float | None = None,
    atypia: float | None = None,
    rim_probability: float = 0.3,
) -> np.ndarray:
    """One dermoscopy-like image, uint8 RGB of shape (size, size, 3).

    `skin_tone` (RGB in [0, 1]) and `hair_density` (mean hair count) are per-person properties; they
    are drawn from `rng` when not given. `atypia` in [0, 1] overrides the class-dependent draw (useful
    to show the range of appearances). `rim_probability`: how often the dermatoscope's black rim shows
    (0 for crops of a total-body photograph, which has none).
    """
    size = int(size)
    if size < MIN_SIZE:
        raise ValueError(f"image size must be at least {MIN_SIZE} pixels, got {size}")
    if skin_tone is None:
        skin_tone = random_skin_tone(rng)
    if hair_density is None:
        hair_density = rng.exponential(1.0)
    if atypia is None:
        atypia = rng.beta(*ATYPIA_BETA[bool(malignant)])
    atypia = float(np.clip(atypia, 0.0, 1.0))

    x, y = _coordinates(size)
    image = _skin(rng, size, np.asarray(skin_tone, dtype=np.float32))

    radius = float(np.clip(0.24 + 0.3 * atypia + rng.normal(0.0, 0.06), 0.08, 0.7))
    asymmetry = float(np.clip(0.02 + 0.2 * atypia + rng.normal(0.0, 0.03), 0.0, 0.4))
    irregularity = float(np.clip(0.01 + 0.07 * atypia + rng.normal(0.0, 0.015), 0.0, 0.15))
    mask, relative_distance = _lesion_mask(rng, x, y, radius, asymmetry, irregularity)
    colour, opacity = _lesion_colour(rng, size, mask, relative_distance, atypia)
    image = image * (1 - opacity[..., None]) + colour * opacity[..., None]

    hair = _hair(rng, size, int(rng.poisson(hair_density)))
    hair_colour = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))].astype(np.float32)
    image = image * (1 - hair[..., None]) + hair_colour * hair[..., None]

    # Lighting: a gentle gradient across the field and a darkening towards the corners; some photos
    # show the round black rim of the dermatoscope.
    light_angle = rng.uniform(0.0, 2 * np.pi)
    tilt = rng.uniform(0.0, 0.08)
    gradient = 1.0 + x * np.float32(tilt * np.cos(light_angle)) + y * np.float32(tilt * np.sin(light_angle))
    radial2 = x * x + y * y
    light = gradient * (1.0 - np.float32(rng.uniform(0.05, 0.3) / 2.0) * radial2)
    if rng.random() < rim_probability:
        rim = np.float32(rng.uniform(0.95, 1.25))
        light = light * np.clip((rim - np.sqrt(radial2)) / np.float32(0.06), 0.0, 1.0)
    image = image * light[..., None] * np.float32(rng.uniform(0.92, 1.05))

    sigma = size / 256 * rng.uniform(0.4, 0.9)
    image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = image + np.float32(0.012) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB uint8 image (cv2 expects BGR)."""
    ok, buffer = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buffer.tobytes()


# ----------------------------------------------------------------------------------------- metadata


def _unique_numbers(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` distinct 7-digit numbers (0..9,999,999) in random order."""
    return rng.choice(10_000_000, size=count, replace=False)


def _draw_patients(rng: np.random.Generator, count: int, patient_numbers: np.ndarray) -> list[dict]:
    """Per-patient properties: id, sex, age, image count, skin tone, hair, malignant image count."""
    pmf = IMAGES_PER_PATIENT_WEIGHTS / IMAGES_PER_PATIENT_WEIGHTS.sum()
    patients = []
    for number in patient_numbers[:count]:
        images = int(rng.choice(np.arange(1, len(pmf) + 1), p=pmf))
        age = float(np.clip(5 * np.round(rng.normal(48.0, 14.0) / 5), 15, 90))
        sex = "male" if rng.random() < 0.52 else "female"
        logit = (
            AFFECTED_LOGIT_BASE
            + AFFECTED_LOGIT_PER_DECADE * (age - 50.0) / 10.0
            + AFFECTED_LOGIT_PER_IMAGE * (images - 5)
        )
        affected = rng.random() < 1.0 / (1.0 + np.exp(-logit))
        malignant = min(images, 1 + int(rng.poisson(EXTRA_MALIGNANT_MEAN))) if affected else 0
        missing = rng.random() < PATIENT_MISSING_RATE
        patients.append(
            {
                "patient_id": f"IP_{number:07d}",
                "sex": None if missing else sex,
                "age": None if missing else age,
                "images": images,
                "malignant": malignant,
                "skin_tone": random_skin_tone(rng),
                "hair_density": float(rng.exponential(1.0)),
            }
        )
    _ensure_both_classes(patients)
    return patients


def _ensure_both_classes(patients: list[dict]) -> None:
    """Even a tiny split gets at least one malignant and one benign image, so AUC is defined."""
    if not any(patient["malignant"] for patient in patients):
        max(patients, key=lambda patient: patient["images"])["malignant"] = 1
    if all(patient["malignant"] == patient["images"] for patient in patients):
        patient = max(patients, key=lambda patient: patient["images"])
        if patient["images"] > 1:
            patient["malignant"] -= 1
        else:  # every patient has a single malignant image: make another patient benign
            next(p for p in patients if p is not patient)["malignant"] = 0


def _draw_images(rng: np.random.Generator, patients: list[dict], image_numbers: np.ndarray) -> pd.DataFrame:
    """One row per image: metadata, target and the person's rendering properties."""
    site_malignant = SITE_WEIGHTS * SITE_MALIGNANT_BOOST
    site_probability = {0: SITE_WEIGHTS / SITE_WEIGHTS.sum(), 1: site_malignant / site_malignant.sum()}
    diagnosis_probability = BENIGN_DIAGNOSIS_WEIGHTS / BENIGN_DIAGNOSIS_WEIGHTS.sum()
    rows = []
    position = 0
    for patient in patients:
        targets = np.zeros(patient["images"], dtype=np.int64)
        targets[rng.choice(patient["images"], size=patient["malignant"], replace=False)] = 1
        for target in targets:
            site = None
            if rng.random() >= SITE_MISSING_RATE:
                site = SITES[rng.choice(len(SITES), p=site_probability[int(target)])]
            age = patient["age"]
            if age is not None and rng.random() < 0.1:  # photos taken over a few years
                age = min(90.0, age + 5.0)
            diagnosis = ("melanoma" if target
                         else BENIGN_DIAGNOSES[rng.choice(len(BENIGN_DIAGNOSES), p=diagnosis_probability)])
            rows.append(
                {
                    "image_name": f"ISIC_{image_numbers[position]:07d}",
                    "image_number": int(image_numbers[position]),
                    "patient_id": patient["patient_id"],
                    "sex": patient["sex"],
                    "age_approx": age,
                    "anatom_site_general_challenge": site,
                    "diagnosis": diagnosis,
                    "benign_malignant": "malignant" if target else "benign",
                    "target": int(target),
                    "skin_tone": patient["skin_tone"],
                    "hair_density": patient["hair_density"],
                }
            )
            position += 1
    frame = pd.DataFrame(rows)
    frame["age_approx"] = frame["age_approx"].astype("float64")
    return frame.sort_values("image_name", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------ writing


def _write_image(path: str, data: bytes) -> None:
    """Write one JPEG under a temporary name, then rename (no fsync: thousands of small files)."""
    if io_utils.is_remote(path):
        io_utils.write_bytes_atomic(path, data)
        return
    temporary = io_utils.temporary_name(path)
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _render_split(frame: pd.DataFrame, folder: str, size: int, seed: int, label: str, progress: bool) -> None:
    io_utils.makedirs(folder)
    rows = zip(frame["image_name"], frame["image_number"], frame["target"], frame["skin_tone"], frame["hair_density"])
    for name, number, target, tone, hair in progress_lib.bar(
        rows, total=len(frame), desc=f"synth {label}", unit="img", disable=not progress, file=sys.stderr
    ):
        # One stream per image, keyed by the seed and the image's own number: same seed, same bytes.
        rng = np.random.default_rng([int(seed), 7, int(number)])
        image = render_lesion(rng, size, bool(target), skin_tone=tone, hair_density=hair)
        _write_image(f"{folder}/{name}.jpg", encode_jpeg(image))


def check_arguments(size: int, patients: int, test_patients: int) -> None:
    """Raise ValueError, naming the argument, for values that cannot give a usable dataset."""
    if int(size) < MIN_SIZE:
        raise ValueError(f"--size must be at least {MIN_SIZE} pixels, got {size}")
    if int(patients) < MIN_PATIENTS:
        raise ValueError(f"--patients must be at least {MIN_PATIENTS} (folds need several patients), got {patients}")
    if int(test_patients) < 1:
        raise ValueError(f"--test-patients must be at least 1, got {test_patients}")


def synthesize(
    out_dir: str,
    size: int = 256,
    patients: int = 250,
    test_patients: int = 60,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write the demo dataset into `out_dir` and return a summary.

    Images are written before the CSVs, so a run that stops half-way leaves no new train.csv that
    points at missing images. The summary holds counts (images, patients, malignant per split),
    the arguments, the paths written and the seconds it took.
    """
    check_arguments(size, patients, test_patients)
    size, patients, test_patients, seed = int(size), int(patients), int(test_patients), int(seed)
    started = time.perf_counter()
    out_dir = str(out_dir).rstrip("/") or "/"

    rng = np.random.default_rng([seed, 1])
    patient_numbers = _unique_numbers(rng, patients + test_patients)
    train_patients = _draw_patients(rng, patients, patient_numbers[:patients])
    holdout_patients = _draw_patients(rng, test_patients, patient_numbers[patients:])
    n_train = sum(patient["images"] for patient in train_patients)
    n_test = sum(patient["images"] for patient in holdout_patients)
    image_numbers = _unique_numbers(rng, n_train + n_test)
    train = _draw_images(rng, train_patients, image_numbers[:n_train])
    test = _draw_images(rng, holdout_patients, image_numbers[n_train:])

    io_utils.makedirs(out_dir)
    _render_split(train, f"{out_dir}/jpeg/train", size, seed, "train", progress)
    _render_split(test, f"{out_dir}/jpeg/test", size, seed, "test", progress)

    paths = {
        "train_csv": f"{out_dir}/train.csv",
        "test_csv": f"{out_dir}/test.csv",
        "sample_submission": f"{out_dir}/sample_submission.csv",
        "test_labels": f"{out_dir}/test_labels.csv",
        "train_images": f"{out_dir}/jpeg/train",
        "test_images": f"{out_dir}/jpeg/test",
    }
    io_utils.write_csv_atomic(train[TRAIN_COLUMNS], paths["train_csv"])
    io_utils.write_csv_atomic(test[TEST_COLUMNS], paths["test_csv"])
    io_utils.write_csv_atomic(test[["image_name"]].assign(target=0), paths["sample_submission"])
    io_utils.write_csv_atomic(test[["image_name", "target"]], paths["test_labels"])

    return {
        "out_dir": out_dir,
        "size": size,
        "seed": seed,
        "train_images": int(len(train)),
        "test_images": int(len(test)),
        "train_patients": patients,
        "test_patients": test_patients,
        "train_malignant": int(train["target"].sum()),
        "test_malignant": int(test["target"].sum()),
        "paths": paths,
        "seconds": round(time.perf_counter() - started, 2),
    }


# What synth writes into its folder; --force removes exactly these before writing again.
OWN_ENTRIES = ("train.csv", "test.csv", "sample_submission.csv", "test_labels.csv", "jpeg")


def prepare_folder(out_dir: str, force: bool = False, own_entries: tuple[str, ...] = OWN_ENTRIES) -> list[str]:
    """OUT must be new or empty, so old and new images never mix; with `force`, what an earlier synth
    wrote there (`own_entries`) is removed first (other entries are kept, and named). Returns the lines to
    print once the new data is written (`stale_lines`): records built from the old images are not synth's
    to remove, and nothing may take them for records of the new ones."""
    if not io_utils.exists(out_dir):
        return []
    if not io_utils.isdir(out_dir):
        raise ConfigError(f"{out_dir} is a file; give synth a folder")
    entries = [name.rstrip("/") for name in io_utils.listdir(out_dir)]
    if not entries:
        return []
    if not force:
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise ConfigError(f"{out_dir} is not empty ({shown}); synth writes a whole dataset: give it a new or "
                          "empty folder, or add --force to replace what synth wrote there")
    for name in own_entries:
        if name in entries:
            io_utils.remove_tree(f"{out_dir}/{name}")
    kept = [name for name in entries if name not in own_entries]
    records = [name for name in kept if records_folder(f"{out_dir}/{name}")]
    others = [name for name in kept if name not in records]
    if others:
        print(f"--force: kept {', '.join(others)} in {out_dir} (not written by synth)", file=sys.stderr)
    return [stale_line(out_dir, f"{out_dir}/{name}") for name in records]


def records_folder(path: str) -> bool:
    """`records` wrote the folder (its marker), or it holds a records manifest (written before markers)."""
    return io_utils.isdir(path) and (io_utils.writer_of(path) == "records"
                                     or io_utils.exists(f"{path}/{record_format.MANIFEST}"))


def stale_line(out_dir: str, folder: str) -> str:
    """One line: `folder`'s records hold the old images, and the exact `records` command that rebuilds them
    (from their manifest; the usual one where the manifest does not say)."""
    command = record_format.rebuild_command(folder)
    how = f"`{command}`" if command else (f"`python -m melanoma records --data {out_dir} --out {folder}` with the "
                                         "--size and --parts they were built with")
    return f"warning: {folder} holds records of the old images, stale now: rebuild them with {how}"


def format_written(summary: dict) -> str:
    return (
        f"wrote {summary['train_images']} train images ({summary['train_patients']} patients, "
        f"{summary['train_malignant']} malignant) and {summary['test_images']} test images "
        f"({summary['test_patients']} patients, {summary['test_malignant']} malignant, truth in test_labels.csv)\n"
        f"  {summary['size']}x{summary['size']} px, seed {summary['seed']}, {summary['seconds']:.1f} s\n"
        f"  CSVs: {summary['out_dir']}/{{train,test,sample_submission,test_labels}}.csv\n"
        f"  JPEGs: {summary['paths']['train_images']}/, {summary['paths']['test_images']}/"
    )
