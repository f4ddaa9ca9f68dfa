"""One image through a trained run: the fold ensemble's P(melanoma), each fold's probability, where the
probability sits among the run's OOF, and the run's family's own explanation (Grad-CAM for a CNN, the
lesion mask and the features that moved it most for the trees; train/families/).

Used by `serve` (the web page and `POST /predict`); nothing here imports a web library.

An uploaded image reaches the models the way a test image reaches them in `infer`: it becomes the JPEG a
record of the run's `data.image_size` holds for it (`record_format.resize_image_bytes`: decode, resize,
JPEG quality 95); a JPEG that already is image_size x image_size is taken as such a record's bytes and
used as it is, so a test record's image uploaded gives `infer`'s prediction for it. The family's served
model then answers for that record, with the form's age, sex and site coded as the records code them.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import sys
import threading
from dataclasses import dataclass, field

import numpy as np

from melanoma.core import config as config_lib
from melanoma.core import io_utils
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import record_format, taxonomy
from melanoma.evaluate import report
from melanoma.runs import layout, run_config, run_results
from melanoma.train.families import family as family_lib
from melanoma.train.families.family import Answer

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
ACCEPTED_FORMATS = ("JPEG", "PNG")
UPLOAD_NAME = "upload"  # image_name of the one-record file an upload becomes
MISSING = ("", "unknown", "missing", "none", "null")
AGE_RANGE = (0, 120)


class RequestError(ValueError):
    """An upload or a form value that is turned down with a 4xx status; the server carries on."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------------
# The run: its saved config and its trained folds, read once
# --------------------------------------------------------------------------------------------------

@dataclass
class LoadedRun:
    path: str                 # the run folder, outputs/<name>
    config: config_lib.Config  # the config the run saved: the truth about its model and inputs
    folds: list               # the trained folds
    served: object            # the family's served model (Family.serving), every fold loaded once


def load_run(target: str) -> LoadedRun:
    """The run of an experiment config (or a run folder): its saved config.yaml and every trained fold's
    model, each loaded once by the run's model family. This is the one place `serve` reads a run.

    FileNotFoundError (exit 2) when the run has no saved config or no trained fold.
    """
    run_path = run_config.run_folder_of(target)
    refuse_blend(run_path)
    if not io_utils.exists(os.path.join(run_path, layout.CONFIG_FILE)):
        raise FileNotFoundError(f"no trained run at {run_path} (no config.yaml): train it first with "
                                f"`python train.py --config {target} --fold all`")
    config = run_config.read_saved_config(run_path)
    # Folds are looked up where the run folder is, whatever working directory the run was trained from.
    config["output_dir"], config["name"] = os.path.split(os.path.abspath(run_path))
    family = family_lib.lookup(config)
    folds = [fold for fold in range(config.data.folds) if family.fold_finished(config, fold)]
    if not folds:
        raise FileNotFoundError(f"no trained fold in {run_path} (no fold<K>/{family.model_file} of a finished "
                                f"fold): run `python train.py --config {target} --fold all` first")
    return LoadedRun(path=run_path, config=config, folds=folds, served=family.serving(config, run_path, folds))


def refuse_blend(run_path: str) -> None:
    """A blend's folder (blend.json, no config.yaml) holds predictions, not a model: there is nothing to
    serve or to train there. ConfigError (exit 2) naming its member runs, which can be served."""
    record_path = os.path.join(run_path, layout.BLEND_FILE)
    if io_utils.exists(os.path.join(run_path, layout.CONFIG_FILE)) or not io_utils.exists(record_path):
        return
    try:
        members = json.loads(io_utils.read_text(record_path)).get("members") or []
        paths = [member["path"] if isinstance(member, dict) else str(member) for member in members]
    except (ValueError, AttributeError, KeyError, TypeError):
        paths = []
    named = f" ({', '.join(paths)})" if paths else ""
    example = f": e.g. `python -m melanoma serve --config {paths[0]}`" if paths else ""
    raise ConfigError(f"{run_path} is a blend: it holds blended predictions, not a model to serve; serve one of "
                      f"its member runs{named}{example}")


# --------------------------------------------------------------------------------------------------
# The upload
# --------------------------------------------------------------------------------------------------

@dataclass
class Upload:
    record_jpeg: bytes        # what a record of the run's image size holds for this image
    image_rgb: np.ndarray     # the image as the model's input was made from it, at its own size
    as_is: bool               # True when the bytes were already such a record's (image_size JPEG)


def megabytes(count: int) -> str:
    return f"{count / 1024 / 1024:.1f} MB"


def read_upload(data: bytes, image_size: int, max_bytes: int = DEFAULT_MAX_BYTES) -> Upload:
    """Check an uploaded file and turn it into a record's JPEG; RequestError (4xx) when it is not one."""
    # OpenCV loads only when images are handled here
    import cv2

    # Pillow loads only when an image is decoded here
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("the image file is empty: upload a JPEG or PNG file")
    if len(data) > max_bytes:
        raise RequestError(f"the image is {megabytes(len(data))}, over the limit of {megabytes(max_bytes)} "
                           "(serve --max-mb): upload a smaller image", status=413)
    kind = "image"
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            if kind not in ACCEPTED_FORMATS:
                raise RequestError(f"{kind} images are not accepted: upload a JPEG or PNG file", status=415)
            image.load()  # decodes every pixel: a truncated file fails here, not later
    except RequestError:
        raise
    except Image.DecompressionBombError as error:
        raise RequestError(f"the image has too many pixels ({error}): upload a smaller image",
                           status=413) from None
    except UnidentifiedImageError:
        raise RequestError("the file is not an image: upload a JPEG or PNG file", status=415) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise RequestError(f"the {kind} file cannot be decoded, it is "
                           f"truncated or damaged ({error}): upload the whole file", status=400) from None
    buffer = np.frombuffer(data, dtype=np.uint8)
    # TensorFlow, which decodes the records, ignores EXIF orientation; OpenCV (records' resize) applies it.
    probe = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    as_is = kind == "JPEG" and probe is not None and probe.shape[:2] == (image_size, image_size)
    bgr = probe if as_is else cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if bgr is None:
        raise RequestError("the image cannot be decoded: upload a JPEG or PNG file", status=400)
    try:
        jpeg = data if as_is else record_format.resize_image_bytes(data, image_size, where="the upload")
    except DataError as error:
        raise RequestError(f"{error}: upload a JPEG or PNG file", status=400) from None
    return Upload(record_jpeg=jpeg, image_rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), as_is=as_is)


# --------------------------------------------------------------------------------------------------
# Age, sex and site as the records encode them
# --------------------------------------------------------------------------------------------------

def metadata_encodings(config: Config) -> tuple[dict, str]:
    """({'sex': {name: code}, 'anatom_site_general_challenge': {...}}, where they come from).

    The codes of `encodings.json` beside the train files (written by `melanoma records`), else the
    competition's (sorted names, as `records` gives the competition's data).
    """
    folders = sorted({os.path.dirname(path) for path in io_utils.glob(config.data.train_files)})
    for folder in folders:
        path = os.path.join(folder, "encodings.json")
        if io_utils.exists(path):
            found = json.loads(io_utils.read_text(path))
            if all(found.get(key) for key in ("sex", "anatom_site_general_challenge")):
                return {key: found[key] for key in ("sex", "anatom_site_general_challenge")}, path
    return ({key: taxonomy.COMPETITION_ENCODINGS[key] for key in ("sex", "anatom_site_general_challenge")},
            "the competition's codes (no encodings.json beside the train files)")


def _code(value, codes: dict, what: str) -> int:
    if value is None or str(value).strip().lower() in MISSING:
        return -1
    by_name = {str(name).lower(): code for name, code in codes.items()}
    key = str(value).strip().lower()
    if key not in by_name:
        raise RequestError(f"unknown {what} '{value}': choose one of {', '.join(sorted(codes))} "
                           "(or leave it empty)", status=422)
    return int(by_name[key])


def _age(value) -> int:
    if value is None or str(value).strip().lower() in MISSING:
        return -1
    try:
        age = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"age_approx '{value}' is not a number: give years, e.g. 45, or leave it empty",
                           status=422) from None
    if not math.isfinite(age) or not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise RequestError(f"age_approx {value} is outside {AGE_RANGE[0]}-{AGE_RANGE[1]}: give years or "
                           "leave it empty", status=422)
    return int(round(age))  # records hold whole years


def form_codes(encodings: dict, age_approx=None, sex=None, site=None) -> dict:
    """The int64 features of a test record for these form values (-1 where missing)."""
    return {"patient_id": -1, "age_approx": _age(age_approx),
            "sex": _code(sex, encodings["sex"], "sex"),
            "anatom_site_general_challenge": _code(site, encodings["anatom_site_general_challenge"],
                                                   "anatom_site_general_challenge")}


# --------------------------------------------------------------------------------------------------
# The run's OOF: percentiles and the report's high-sensitivity cutoffs
# --------------------------------------------------------------------------------------------------

@dataclass
class OOFReference:
    benign: np.ndarray = field(default_factory=lambda: np.zeros(0))     # sorted OOF preds of benign images
    malignant: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ... of malignant images
    cutoffs: list = field(default_factory=list)  # report's sensitivity rows: rule, cutoff, specificity...
    note: str = ""                               # why something is missing, or which folds the OOF covers

    @classmethod
    def from_run(cls, run_path: str) -> "OOFReference":
        try:
            frame, complete, present = run_results.load_run_oof(run_results.inspect_run(run_path))
        except (DataError, OSError) as error:
            return cls(note=f"no OOF predictions to compare with ({error})")
        target = frame["target"].to_numpy().astype(int)
        pred = frame["pred"].to_numpy(dtype=float)
        reference = cls(benign=np.sort(pred[target == 0]), malignant=np.sort(pred[target == 1]),
                        note=f"OOF of folds {','.join(map(str, present))}"
                             + ("" if complete else " (incomplete run)"))
        try:
            table = report.cutoff_table(target, pred, cutoffs=(), sensitivities=report.DEFAULT_SENSITIVITIES)
        except DataError as error:
            reference.note += f"; no cutoffs: {error}"
            return reference
        rows = table[table["rule"].str.startswith("sensitivity")].to_dict("records")
        reference.cutoffs = [{"rule": row["rule"], "target_sensitivity": wanted,
                              "cutoff": float(row["cutoff"]), "sensitivity": float(row["sensitivity"]),
                              "specificity": float(row["specificity"])}
                             for wanted, row in zip(report.DEFAULT_SENSITIVITIES, rows)]
        return reference

    @staticmethod
    def percentile(sorted_values: np.ndarray, value: float) -> float | None:
        """Percent of the values below `value`, ties counted half; None without values."""
        if not len(sorted_values):
            return None
        below = np.searchsorted(sorted_values, value, side="left")
        at_or_below = np.searchsorted(sorted_values, value, side="right")
        return float(100.0 * (below + at_or_below) / 2 / len(sorted_values))

    def position(self, probability: float) -> dict:
        percentiles = None
        if len(self.benign) or len(self.malignant):
            percentiles = {"benign": self.percentile(self.benign, probability),
                           "malignant": self.percentile(self.malignant, probability),
                           "benign_images": int(len(self.benign)),
                           "malignant_images": int(len(self.malignant))}
        cutoffs = [{**row, "passed": bool(probability >= row["cutoff"])} for row in self.cutoffs]
        return {"percentiles": percentiles, "cutoffs": cutoffs,
                "cutoffs_passed": [row["rule"] for row in cutoffs if row["passed"]]}


# --------------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------------

@dataclass
class Prediction:
    probability: float
    folds: list
    fold_probabilities: list
    position: dict            # percentiles, cutoffs, cutoffs_passed
    image_rgb: np.ndarray     # the upload
    answer: Answer            # the family's: its picture (at the upload's size), fields, notes, classes
    picture_field: str        # the picture's key in the JSON answer (heatmap_png, mask_png)
    metadata_used: bool
    as_is: bool

    @property
    def classes(self) -> dict | None:
        return self.answer.classes

    def to_json(self) -> dict:
        height, width = self.image_rgb.shape[:2]
        answer = {"probability": self.probability, "fold_probabilities": self.fold_probabilities,
                  "folds": self.folds, **self.answer.fields, **self.position,
                  self.picture_field: base64.b64encode(png_bytes(self.answer.picture)).decode("ascii"),
                  "image_size": {"height": int(height), "width": int(width)},
                  "image_used_as_record": self.as_is, "metadata_used": self.metadata_used}
        if self.answer.classes is not None:
            answer["classes"] = self.answer.classes
        return answer


def png_bytes(image_rgb: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG bytes."""
    # Pillow loads only when an image is encoded here
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image_rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class Predictor:
    """A loaded run answering one image at a time.

    The family's served model (its folds loaded once, `Family.serving`) and the OOF reference are made
    once, here; `predict` never reads a model file. A request's model work runs under a lock, so
    concurrent requests (the page's and the API's threads) take turns on the models.
    """

    def __init__(self, run: LoadedRun, max_bytes: int = DEFAULT_MAX_BYTES):
        self.run = run
        self.config = run.config
        self.served = run.served
        self.max_bytes = int(max_bytes)
        self.encodings, self.encodings_source = metadata_encodings(self.config)
        if self.served.metadata_used and not self.encodings_source.endswith("encodings.json"):
            print(f"warning: sex and site are read with {self.encodings_source}; if the run's records "
                  "encode them otherwise, the model gets wrong codes", file=sys.stderr)
        self.reference = OOFReference.from_run(run.path)
        self.diagnosis = bool(self.served.has_classes)  # the diagnosis head's 9 classes
        self._lock = threading.Lock()

    @classmethod
    def from_target(cls, target: str, max_bytes: int = DEFAULT_MAX_BYTES) -> "Predictor":
        return cls(load_run(target), max_bytes)

    @property
    def folds(self) -> list[int]:
        return list(self.run.folds)

    def describe(self) -> dict:
        """What the page says about the run it serves."""
        config = self.config
        return {"name": config.name, "path": self.run.path, "folds": self.folds,
                "folds_configured": int(config.data.folds), "family": family_lib.family_name(config),
                "model": self.served.summary(), "image_size": int(config.data.image_size),
                "metadata": bool(self.served.metadata_used), "picture": self.served.title,
                "oof": self.reference.note, "encodings": self.encodings_source}

    def warm_up(self) -> None:
        """One prediction on a grey image, so that the first request does not pay for tracing."""
        # OpenCV loads only when images are handled here
        import cv2

        ok, encoded = cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))
        self.predict(encoded.tobytes())

    def predict(self, data: bytes, age_approx=None, sex=None, site=None) -> Prediction:
        upload = read_upload(data, int(self.config.data.image_size), self.max_bytes)
        row = {"image_name": UPLOAD_NAME, **form_codes(self.encodings, age_approx, sex, site)}
        with self._lock:
            try:
                answer = self.served.answer(upload.record_jpeg, upload.image_rgb, row)
            except DataError as error:
                raise RequestError(f"{error}: upload a JPEG or PNG file", status=400) from None
        probabilities = [float(p) for p in answer.fold_probabilities]
        if not all(math.isfinite(p) for p in probabilities):
            raise DataError("a fold's model gave a non-finite probability: its model is broken")
        probability = float(np.mean(probabilities))
        return Prediction(probability=probability, folds=self.folds, fold_probabilities=probabilities,
                          position=self.reference.position(probability), image_rgb=upload.image_rgb,
                          answer=answer, picture_field=self.served.picture_field,
                          metadata_used=bool(self.served.metadata_used), as_is=upload.as_is)
