"""One image through a trained run: the fold ensemble's P(melanoma) with the run's TTA, each fold's
probability, Grad-CAM averaged over the folds, and where the probability sits among the run's OOF.

Used by `serve` (the web page and `POST /predict`); nothing here imports a web library.

An uploaded image reaches the models the way a test image reaches them in `infer`: it becomes the JPEG a
record of the run's `data.image_size` holds for it (`record_format.resize_image_bytes`: decode, resize, JPEG
quality 95), is written as a one-record test file, and goes through `pipeline.prediction_dataset` with the
run's TTA. A JPEG that already is image_size x image_size is taken as such a record's bytes and used as it
is, so a test record's image uploaded gives `infer`'s prediction for it. Random TTA (tta.mode: random)
draws its views with the run's seed for every request: the same image always gets the same answer, but
not the views `infer` drew for it in its batch, so the two agree only up to the TTA noise; dihedral TTA
and no TTA agree exactly. The metadata branch gets no patient image count (it is 'unknown').
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import numpy as np

from melanoma.core import config as config_lib
from melanoma.core import io_utils, layout
from melanoma.core import run_config
from melanoma.core import run_results
from melanoma.core.config import Config
from melanoma.core.errors import DataError
from melanoma.data import record_format, taxonomy
from melanoma.evaluate import report

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
    models: dict               # fold -> keras.Model with the fold's best checkpoint


def load_run(target: str) -> LoadedRun:
    """The run of an experiment config (or a run folder): its saved config.yaml and every trained fold's
    checkpoint, each loaded once. This is the one place `serve` reads a run.

    FileNotFoundError (exit 2) when the run has no saved config or no trained fold.
    """
    # this module loads TensorFlow: only the work that needs it pays for it
    from melanoma.predict import inference

    run_path = report.resolve_run(target)
    if not io_utils.exists(os.path.join(run_path, layout.CONFIG_FILE)):
        raise FileNotFoundError(f"no trained run at {run_path} (no config.yaml): train it first with "
                                f"`python train.py --config {target} --fold all`")
    config = run_config.read_saved_config(run_path)
    # Folds are looked up where the run folder is, whatever working directory the run was trained from.
    config["output_dir"], config["name"] = os.path.split(os.path.abspath(run_path))
    folds = inference.trained_folds(config)
    if not folds:
        raise FileNotFoundError(f"no trained fold in {run_path} (no fold<K>/model.keras of a finished "
                                f"fold): run `python train.py --config {target} --fold all` first")
    from melanoma.model import network as model_lib  # TensorFlow only once the run is known to be there

    models = {}
    for fold in folds:
        model = model_lib.build_model(config, pretrained=False)  # weights come from the checkpoint
        # one line naming what was trained when a checkpoint does not fit (inference.load_checkpoint)
        inference.load_checkpoint(model, os.path.join(layout.fold_path(run_path, fold), layout.BEST_MODEL), config,
                                  layout.fold_path(run_path, fold))
        models[fold] = model
    return LoadedRun(path=run_path, config=config, models=models)


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


def encode_metadata(encodings: dict, age_approx=None, sex=None, site=None) -> dict:
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
    tta: dict
    position: dict            # percentiles, cutoffs, cutoffs_passed
    image_rgb: np.ndarray     # the upload
    overlay_rgb: np.ndarray   # Grad-CAM over the upload, at its size
    classes: dict | None      # diagnosis head: class -> probability
    metadata_used: bool
    as_is: bool

    def to_json(self) -> dict:
        # this module loads TensorFlow: only the work that needs it pays for it
        from melanoma.model import gradcam

        height, width = self.image_rgb.shape[:2]
        answer = {"probability": self.probability, "fold_probabilities": self.fold_probabilities,
                  "folds": self.folds, "tta": self.tta, **self.position,
                  "heatmap_png": base64.b64encode(gradcam.png_bytes(self.overlay_rgb)).decode("ascii"),
                  "image_size": {"height": int(height), "width": int(width)},
                  "image_used_as_record": self.as_is, "metadata_used": self.metadata_used}
        if self.classes is not None:
            answer["classes"] = self.classes
        return answer


class Predictor:
    """A loaded run answering one image at a time.

    Models, their compiled forward + Grad-CAM functions, the input pipelines and the OOF reference are
    made once, here; `predict` never reads a checkpoint. The TensorFlow part of a request runs under a
    lock, so concurrent requests (the page's and the API's threads) take turns on the models and on the
    one-record file the pipelines read.
    """

    def __init__(self, run: LoadedRun, max_bytes: int = DEFAULT_MAX_BYTES):
        # this module loads TensorFlow: only the work that needs it pays for it
        from melanoma.model import gradcam

        self.run = run
        self.config = run.config
        self.max_bytes = int(max_bytes)
        self.encodings, self.encodings_source = metadata_encodings(self.config)
        if self.config.model.metadata and not self.encodings_source.endswith("encodings.json"):
            print(f"warning: sex and site are read with {self.encodings_source}; if the run's records "
                  "encode them otherwise, the metadata branch gets wrong codes", file=sys.stderr)
        self.reference = OOFReference.from_run(run.path)
        self.explainers = {fold: gradcam.explainer(model) for fold, model in run.models.items()}
        self.column = gradcam.melanoma_column(next(iter(run.models.values())))
        self.diagnosis = self.config.model.head == "diagnosis"
        self._lock = threading.Lock()
        self._folder = tempfile.TemporaryDirectory(prefix="melanoma-serve-")
        self._record = os.path.join(self._folder.name, record_format.record_name("test", 0, 1))
        self._datasets: dict[int, object] = {}

    @classmethod
    def from_target(cls, target: str, max_bytes: int = DEFAULT_MAX_BYTES) -> "Predictor":
        return cls(load_run(target), max_bytes)

    @property
    def folds(self) -> list[int]:
        return sorted(self.run.models)

    @property
    def tta(self) -> dict:
        steps = int(self.config.tta.steps)
        return {"steps": steps, "mode": self.config.tta.mode, "views": max(1, steps)}

    def describe(self) -> dict:
        """What the page says about the run it serves."""
        config = self.config
        return {"name": config.name, "path": self.run.path, "folds": self.folds,
                "folds_configured": int(config.data.folds), "backbone": config.model.backbone,
                "image_size": int(config.data.image_size), "head": config.model.head,
                "metadata": bool(config.model.metadata), "tta": self.tta,
                "oof": self.reference.note, "encodings": self.encodings_source}

    def _dataset(self, tta_steps: int):
        """`infer`'s prediction pipeline over the one-record file. Built once per view count; random TTA
        builds it per request, so its views are drawn with the run's seed every time (same image, same
        answer)."""
        # this module loads TensorFlow: only the work that needs it pays for it
        from melanoma.input import pipeline
        # this module loads TensorFlow: only the work that needs it pays for it
        from melanoma.model import tta_prediction

        config = self.config
        random_views = bool(tta_steps) and config.tta.mode == "random"
        if random_views or tta_steps not in self._datasets:
            augmenter = tta_prediction.tta_augmenter(config, config.seed) if tta_steps else None
            dataset, _ = pipeline.prediction_dataset(
                [self._record], config, "test", tta_steps=tta_steps, tta_mode=config.tta.mode,
                batch_size=config.tta.batch_size, augmenter=augmenter)
            if random_views:
                return dataset
            self._datasets[tta_steps] = dataset
        return self._datasets[tta_steps]

    def _inputs(self, tta_steps: int) -> dict:
        """The model inputs `infer` builds for the record in the file: [views, ...] per input."""
        batches = [batch["inputs"] for batch in self._dataset(tta_steps)]
        if len(batches) != 1:
            raise DataError(f"one uploaded image made {len(batches)} batches")
        return batches[0]

    def warm_up(self) -> None:
        """One prediction on a grey image, so that the first request does not pay for tracing."""
        # OpenCV loads only when images are handled here
        import cv2

        ok, encoded = cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))
        self.predict(encoded.tobytes())

    def predict(self, data: bytes, age_approx=None, sex=None, site=None) -> Prediction:
        # TensorFlow takes seconds to load: only the work that needs it pays for it
        import tensorflow as tf

        # this module loads TensorFlow: only the work that needs it pays for it
        from melanoma.model import gradcam

        upload = read_upload(data, int(self.config.data.image_size), self.max_bytes)
        row = {"image_name": UPLOAD_NAME, **encode_metadata(self.encodings, age_approx, sex, site)}
        steps = self.tta["steps"]
        probabilities, classes, maps = [], [], []
        with self._lock:
            with tf.io.TFRecordWriter(self._record) as writer:
                writer.write(record_format.serialize_example(upload.record_jpeg, row, record_format.TEST_INT_FEATURES))
            try:
                inputs = self._inputs(steps)
                # Grad-CAM explains the plain image, which is the first view unless the views are random.
                plain = None if (not steps or self.config.tta.mode == "dihedral") else self._inputs(0)
            except tf.errors.OpError as error:
                raise RequestError(f"the image cannot be decoded ({error.message.splitlines()[0]}): upload "
                                   "a JPEG or PNG file", status=400) from None
            for fold in self.folds:
                output, heat = self.explainers[fold](inputs)
                if plain is not None:
                    heat = self.explainers[fold](plain)[1]
                output = np.asarray(output, dtype=np.float64)
                probabilities.append(float(output[:, self.column].mean()))
                classes.append(output.mean(axis=0))
                maps.append(gradcam.normalise(heat))
        if not all(math.isfinite(p) for p in probabilities):
            raise DataError("a fold's model gave a non-finite probability: its weights are broken")
        probability = float(np.mean(probabilities))
        class_probabilities = None
        if self.diagnosis:

            mean = np.mean(classes, axis=0)
            class_probabilities = {name: float(mean[index]) for index, name in enumerate(taxonomy.DIAGNOSIS_CLASSES)}
        heat = np.mean(maps, axis=0)
        return Prediction(probability=probability, folds=self.folds, fold_probabilities=probabilities,
                          tta=self.tta, position=self.reference.position(probability),
                          image_rgb=upload.image_rgb, overlay_rgb=gradcam.overlay(upload.image_rgb, heat),
                          classes=class_probabilities, metadata_used=bool(self.config.model.metadata),
                          as_is=upload.as_is)
