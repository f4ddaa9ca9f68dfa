"""What the labels and codes of every data source mean, in one place.

* The 9 classes of the ISIC 2019 challenge (`DIAGNOSIS_CLASSES`): the diagnosis head's outputs and the
  classes of the per-class report (`p_<CLASS>` columns).
* Diagnosis names -> class (`diagnosis_class`): the 2020 competition's names, the ISIC 2017-2019 names,
  and one canonical name per class (`CLASS_NAMES`) that the converters of other sources write.
* The competition's integer codes (`COMPETITION_ENCODINGS`, sorted names over its train + test, as
  `record_format.encode_metadata` gives them) and `extend_codes`, which gives a source's new names the codes
  after the last one, so that records of every source can share one code table. Records store a
  diagnosis as a code; the names in code order come from the `encodings.json` beside each records folder
  (or `data.diagnosis_names`), and training maps every source's codes to classes by name.
* Patient-code ranges per source (`PATIENT_CODE_START`): converters number the patients (lesions) of
  their source from its own start, so that they never coincide with the competition's patient codes
  (0 .. a few thousand); the range a folder uses is recorded in its `encodings.json`.
* Site vocabularies of the other sources mapped onto the competition's `anatom_site_general_challenge`.
"""
from __future__ import annotations

import numpy as np

# The 9 classes of the ISIC 2019 challenge, in its ground truth's column order.
DIAGNOSIS_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
MELANOMA_CLASS = DIAGNOSIS_CLASSES.index("MEL")
UNKNOWN_CLASS = DIAGNOSIS_CLASSES.index("UNK")
CLASS_PREFIX = "p_"  # per-class probability columns of the diagnosis head's predictions: p_MEL, p_NV, ...

# One name per class, written by the converters of sources whose labels are ISIC classes.
CLASS_NAMES = {
    "MEL": "melanoma",
    "NV": "nevus",
    "BCC": "basal cell carcinoma",
    "AK": "actinic keratosis",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular lesion",
    "SCC": "squamous cell carcinoma",
    "UNK": "unknown",
}

# Diagnosis names (2020 competition, ISIC 2017-2019 metadata, the canonical names above) -> class.
# Lentigines and lichenoid keratoses are benign keratosis-like lesions in the ISIC 2019 taxonomy (BKL);
# the 2020 labels that have no ISIC 2019 class (atypical melanocytic proliferation, cafe-au-lait
# macule) are UNK.
DIAGNOSIS_NAMES = {
    **{name: cls for cls, name in CLASS_NAMES.items()},
    "seborrheic keratosis": "BKL",
    "pigmented benign keratosis": "BKL",
    "lichenoid keratosis": "BKL",
    "solar lentigo": "BKL",
    "lentigo nos": "BKL",
    "atypical melanocytic proliferation": "UNK",
    "cafe-au-lait macule": "UNK",
}

# The competition's codes (sorted names over its train + test, as encode_metadata gives them).
COMPETITION_ENCODINGS = {
    "sex": {"female": 0, "male": 1},
    "anatom_site_general_challenge": {"head/neck": 0, "lower extremity": 1, "oral/genital": 2,
                                      "palms/soles": 3, "torso": 4, "upper extremity": 5},
    "diagnosis": {"atypical melanocytic proliferation": 0, "cafe-au-lait macule": 1, "lentigo NOS": 2,
                  "lichenoid keratosis": 3, "melanoma": 4, "nevus": 5, "seborrheic keratosis": 6,
                  "solar lentigo": 7, "unknown": 8},
}
CATEGORICAL = ("sex", "anatom_site_general_challenge", "diagnosis")

# First patient code of each source's records. The competition's codes count from 0 (2,056 train
# patients, 690 test); each converted source gets a range of ten million codes of its own.
PATIENT_CODE_START = {"competition": 0, "isic2019": 10_000_000, "ham10000": 20_000_000, "isic2024": 30_000_000,
                      "isic2017": 40_000_000}
PATIENT_CODE_RANGE = 10_000_000

# ISIC 2019 splits the torso; the competition does not.
ISIC2019_SITES = {"anterior torso": "torso", "posterior torso": "torso", "lateral torso": "torso",
                  "torso": "torso", "head/neck": "head/neck", "upper extremity": "upper extremity",
                  "lower extremity": "lower extremity", "palms/soles": "palms/soles",
                  "oral/genital": "oral/genital"}
# HAM10000 `localization` -> competition site; "unknown" is a missing value.
HAM10000_SITES = {"abdomen": "torso", "back": "torso", "chest": "torso", "trunk": "torso",
                  "face": "head/neck", "scalp": "head/neck", "ear": "head/neck", "neck": "head/neck",
                  "upper extremity": "upper extremity", "hand": "upper extremity",
                  "lower extremity": "lower extremity", "foot": "lower extremity",
                  "acral": "palms/soles", "genital": "oral/genital", "unknown": None}
# HAM10000 `dx` -> ISIC class.
HAM10000_CLASSES = {"akiec": "AK", "bcc": "BCC", "bkl": "BKL", "df": "DF", "mel": "MEL", "nv": "NV",
                    "vasc": "VASC"}


def diagnosis_class(name: str) -> int:
    """ISIC 2019 class index of a diagnosis name (or of a class name such as 'MEL')."""
    text = str(name).strip()
    if text.upper() in DIAGNOSIS_CLASSES:
        return DIAGNOSIS_CLASSES.index(text.upper())
    key = text.lower().replace("_", " ")
    if key not in DIAGNOSIS_NAMES:
        raise ValueError(f"diagnosis '{name}' has no ISIC class; name it as one of "
                         f"{', '.join(DIAGNOSIS_CLASSES)} in data.diagnosis_names")
    return DIAGNOSIS_CLASSES.index(DIAGNOSIS_NAMES[key])


def diagnosis_lookup(names) -> list[int]:
    """Class index for each diagnosis code: `names` lists the diagnosis names in code order."""
    return [diagnosis_class(name) for name in names]


def names_in_code_order(codes: dict) -> list[str]:
    """{name: code} (an encodings.json entry) -> names in code order; codes must be 0..n-1."""
    ordered = sorted(codes.items(), key=lambda item: item[1])
    if [code for _, code in ordered] != list(range(len(ordered))):
        raise ValueError(f"diagnosis codes {sorted(codes.values())} are not 0..{len(codes) - 1}")
    return [name for name, _ in ordered]


def extend_codes(codes: dict, names) -> dict:
    """`codes` ({name: code}) with each of `names` it lacks appended at the next free code, in order.

    Names are matched case-insensitively (the competition writes 'lentigo NOS'), so a source that brings
    a name the table already has reuses its code."""
    result = dict(codes)
    known = {name.lower() for name in result}
    for name in names:
        if name.lower() not in known:
            result[name] = max(result.values(), default=-1) + 1
            known.add(name.lower())
    return result


def true_classes(codes, targets, lookup: list[int]) -> np.ndarray:
    """ISIC class index per image from its diagnosis code through `lookup` (class index per code).

    The competition's target decides MEL: a malignant image is MEL whatever its diagnosis code, and a
    benign one never is (an unknown code, or a MEL-named benign image, counts as UNK), so the head's MEL
    probability is trained on exactly the labels the AUC is measured on. `pipeline.diagnosis_target` is
    the same rule in TensorFlow.
    """
    codes = np.asarray(codes, dtype=np.int64)
    table = np.asarray(lookup, dtype=np.int64)
    known = (codes >= 0) & (codes < len(table))
    label = np.where(known, table[np.clip(codes, 0, max(len(table) - 1, 0))] if len(table) else UNKNOWN_CLASS,
                     UNKNOWN_CLASS)
    label = np.where(label == MELANOMA_CLASS, UNKNOWN_CLASS, label)
    return np.where(np.asarray(targets) == 1, MELANOMA_CLASS, label)


def class_columns(columns) -> list[str]:
    """The `p_<CLASS>` columns among `columns`, in DIAGNOSIS_CLASSES order."""
    present = set(columns)
    return [f"{CLASS_PREFIX}{cls}" for cls in DIAGNOSIS_CLASSES if f"{CLASS_PREFIX}{cls}" in present]


def patient_range(source: str, count: int) -> dict:
    """The `patient_id` entry of a converted source's encodings.json: its first code and how many."""
    if count > PATIENT_CODE_RANGE:
        raise ValueError(f"{count} patients do not fit the {PATIENT_CODE_RANGE} codes of a source")
    return {"source": source, "first": PATIENT_CODE_START[source], "count": int(count)}
