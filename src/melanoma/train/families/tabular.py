"""The tree family (`model.family: tabular`, a TreeFamily: train/families/tree_family.py): gradient-boosted
trees per fold on image statistics, metadata, patient context and other runs' predictions
(input/features.py), per fold in train/families/tree_model.py (the trees themselves: train/families/trees.py).

Its fold folder: model.joblib, state.json, history.csv, importance.csv, data.json and oof.csv; infer adds
test.csv and test.json. The features are computed once per command for every fold (cached per records
file under <output_dir>/.cache/features/). On serve's page an upload is measured as a record's image is,
and the answer shows the lesion mask the statistics were taken from and the features that moved this
image's probability most.
"""
from __future__ import annotations

import os

import numpy as np

from melanoma.core.config import Config
from melanoma.core.errors import ConfigError, DataError
from melanoma.data import record_format
from melanoma.runs import layout, run_config
from melanoma.train.families import family as family_lib
from melanoma.train.families import tree_family
from melanoma.train.families.family import Answer
from melanoma.train.families.tree_family import TreeFamily


class Tabular(TreeFamily):
    name = "tabular"
    model_words = "tabular (trees)"
    fold_files = tree_family.FOLD_FILES + (layout.PSEUDO_LABELS, layout.DUPLICATES)
    group_switches = {"image statistics": "features.image", "metadata": "features.metadata",
                      "patient context": "features.patient_context"}

    def check(self, config: Config) -> None:
        super().check(config)
        check_features(config)
        if not config.data.test_files:
            raise ConfigError("config key 'data.test_files' is null, but the tabular model computes the test "
                              "images' features beside the training images'; give the test records' glob")

    def image_size(self, config: Config) -> int:
        return config.features.image_size or config.data.image_size

    def own_facts(self, config: Config, files: list) -> dict:
        return {"image_size": self.image_size(config), "histogram_bins": config.features.histogram_bins,
                "train_files_found": len(files), "external_files_used": False}

    def start_training(self, config: Config) -> "Training":
        return Training(config)

    def prediction(self, config: Config) -> "Prediction":
        return Prediction()

    def serving(self, config: Config, run_path: str, folds: list[int]) -> "Serving":
        return Serving(config, run_path, folds)


def check_features(config: Config) -> None:
    """The features section's values, checked before any record is read (features.from_runs: the base's)."""
    section = config.features
    if section.image_size is not None and section.image_size < 16:
        raise ConfigError(f"config key 'features.image_size' must be at least 16 (or null), got {section.image_size}")
    if not 2 <= section.histogram_bins <= 64:
        raise ConfigError(f"config key 'features.histogram_bins' must be in 2..64, got {section.histogram_bins}")
    if section.workers is not None and section.workers < 1:
        raise ConfigError(f"config key 'features.workers' must be at least 1 (or null), got {section.workers}")
    if not (section.image or section.metadata or section.from_runs):
        raise ConfigError("every feature group is off: turn on features.image, features.metadata or "
                          "features.from_runs")


class Training:
    """The feature table of every fold, built first: the stacking checks refuse a config before the
    run's config is saved."""

    def __init__(self, config: Config):
        # the features and the trees load TensorFlow and scikit-learn: only when a tabular run trains
        from melanoma.train.families import tree_model

        if config.data.external_files:
            print("note: the tabular model uses the competition records only; data.external_files is ignored")
        # every fold can be scored, and (pseudo-labels) the source predicts these test images on these folds,
        # before any fold's features are built
        from melanoma.data import fold_data  # (TensorFlow, as above: the records' tables)

        fold_data.check_splits_apart(tree_model.competition_only(config))
        self.table, self.fold_data = tree_model.prepare(config)

    def fit_fold(self, config: Config, fold: int) -> dict:
        # (scikit-learn, as above)
        from melanoma.train.families import tree_model

        return tree_model.fit_fold(config, fold, self.table, self.fold_data[fold], FAMILY.fresh_fold(config, fold))


class Prediction:
    """The test rows' features, built once for every fold."""

    table = None

    def predict_fold(self, config: Config, fold: int, files: list):
        # the features and the trees load TensorFlow and scikit-learn: only when a tabular run predicts
        from melanoma.train.families import tree_model

        if self.table is None:
            self.table = tree_model.prepare(config)[0]
        return tree_model.test_predictions(config, fold, self.table)


# --------------------------------------------------------------------------------------------------
# serve: the upload measured as a record's image is, the lesion mask, each feature's effect
# --------------------------------------------------------------------------------------------------

MASK_COLOUR = np.array([0, 255, 255], dtype=np.float64)  # cyan: apart from the skin and lesion colours
TOP_FEATURES = 10


class Serving:
    """The trained folds' models, read once. An upload (the JPEG a record of the run holds for it) gets the
    image statistics a record's image gets, the form's age, sex and site as the records code them (the
    patient's image count unknown), each stacked run's own served probability, and the patient context
    of a patient with this one image (difference 0, middle rank); each fold's trees then give its
    probability."""

    title = "Lesion mask the image statistics were measured on"
    picture_field = "mask_png"

    def __init__(self, config: Config, run_path: str, folds: list[int]):
        # the trees load scikit-learn: only serving a tabular run pays for it
        from melanoma.train.families import trees

        self.config = config
        self.saved = {fold: trees.load_model(os.path.join(layout.fold_path(run_path, fold), layout.TREES_MODEL))
                      for fold in folds}
        self.metadata_used = bool(config.features.metadata)
        self.has_classes = False
        self.members = {name: served_member(os.path.join(os.path.dirname(os.path.abspath(run_path)), name))
                        for name in config.features.from_runs}

    def summary(self) -> str:
        columns = next(iter(self.saved.values()))["columns"]
        size = FAMILY.image_size(self.config)
        stacked = (f", stacking {', '.join(self.members)}" if self.members else "")
        return (f"gradient-boosted trees on {len(columns)} features{stacked}. Images are resized to "
                f"{self.config.data.image_size} x {self.config.data.image_size} as the run's records are, "
                f"and measured at {size} px")

    def _features(self, record_jpeg: bytes, row: dict):
        """(the one-row feature table, the image the statistics were measured on)."""
        # the feature tables load TensorFlow (through their records reader): only serving pays for it
        import pandas as pd

        from melanoma.input import features, imagestats  # (TensorFlow, as above)

        config = self.config
        bins = int(config.features.histogram_bins)
        image = imagestats.decode_for_statistics(record_jpeg, features.image_size(config))
        raw = pd.DataFrame([{key: row[key] for key in record_format.TEST_INT_FEATURES}])
        if config.features.image:
            raw = pd.concat([raw, pd.DataFrame([imagestats.image_features(image, bins)],
                                               columns=imagestats.image_feature_names(bins))], axis=1)
        stacked = pd.DataFrame({
            f"run_{name}": [float(np.mean(member.answer(record_jpeg, image, row).fold_probabilities))]
            for name, member in self.members.items()})
        return features.assemble(raw, stacked, config, bins), image

    def answer(self, record_jpeg: bytes, image_rgb: np.ndarray | None, row: dict) -> Answer:
        # the trees load scikit-learn: only serving a tabular run pays for it
        from melanoma.train.families import trees

        table, image = self._features(record_jpeg, row)
        probabilities, effects = [], []
        for _fold, saved in sorted(self.saved.items()):
            values = table[saved["columns"]].to_numpy(dtype=np.float64)
            probabilities.append(float(trees.predict(saved["model"], values)[0]))
            effects.append(trees.log_odds_effects(saved, values[0]))
        columns = next(iter(self.saved.values()))["columns"]
        contributions = top_contributions(columns, table, np.mean(effects, axis=0))
        found, picture = lesion_picture(image, image_rgb)
        fields = {"lesion_found": found, "contributions": contributions}
        notes = [("The lesion mask (cyan, right) is the area the lesion statistics (size, border, asymmetry, "
                  "colours) were measured on." if found else
                  "No lesion stood out from the skin: the lesion statistics are 0 (lesion_found 0)."),
                 contributions_markdown(contributions)]
        return Answer(fold_probabilities=probabilities, picture=picture, fields=fields, notes=notes)


def served_member(run_path: str):
    """A stacked run (features.from_runs), served beside this one: its probability is this run's feature."""
    if not os.path.isdir(run_path):
        raise DataError(f"the stacked run {run_path} is not there; serve needs it to compute this run's features")
    config = run_config.read_saved_config(run_path)
    config["output_dir"], config["name"] = os.path.split(os.path.abspath(run_path))
    family = family_lib.lookup(config)
    folds = [fold for fold in range(config.data.folds) if family.fold_finished(config, fold)]
    if not folds:
        raise DataError(f"the stacked run {run_path} has no trained fold; serve needs it for this run's features")
    return family.serving(config, run_path, folds)


def top_contributions(columns: list[str], table, effects: np.ndarray, top: int = TOP_FEATURES) -> list[dict]:
    """The `top` features by the size of their mean effect on the folds' log-odds (see
    trees.log_odds_effects), with this image's value."""
    # the feature groups live with the feature tables (TensorFlow): only serving pays for it
    from melanoma.input import features

    order = np.argsort(-np.abs(effects), kind="stable")[:top]
    return [{"feature": columns[index], "group": features.feature_group(columns[index]),
             "value": float(table[columns[index]].iloc[0]), "log_odds": float(effects[index])}
            for index in order]


def contributions_markdown(contributions: list[dict]) -> str:
    lines = ["| feature | group | this image | effect on log-odds |", "|---|---|---:|---:|"]
    lines += [f"| {row['feature']} | {row['group']} | {row['value']:.4g} | {row['log_odds']:+.3f} |"
              for row in contributions]
    return ("This image's features that moved its probability most: the change in the trees' log-odds (mean "
            "over the folds) when the feature is set back to its median over the fold's training images "
            "(positive: raises P(melanoma)).\n\n" + "\n".join(lines))


def lesion_picture(image: np.ndarray, upload_rgb: np.ndarray | None) -> tuple[bool, np.ndarray]:
    """(whether a lesion was found, the upload with the lesion mask drawn on it: a cyan tint and outline)."""
    # OpenCV draws the mask; the statistics module finds it
    import cv2

    from melanoma.input import imagestats  # (OpenCV, as above)

    mask = imagestats.lesion_mask(cv2.cvtColor(image, cv2.COLOR_RGB2LAB)).lesion.astype(np.uint8)
    base = upload_rgb if upload_rgb is not None else image
    height, width = base.shape[:2]
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    picture = base.astype(np.float64)
    picture[mask > 0] = 0.75 * picture[mask > 0] + 0.25 * MASK_COLOUR
    picture = np.clip(picture, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(picture, contours, -1, tuple(int(c) for c in MASK_COLOUR), max(1, round(max(height, width) / 200)))
    return bool(mask.any()), picture


FAMILY = Tabular()
