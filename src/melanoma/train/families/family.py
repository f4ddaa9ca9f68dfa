"""What every model family offers, and the lookup by name (`model.family`).

A model family is one module in this folder whose `FAMILY` is an instance of a `Family` subclass. The
stages reach it through `lookup(config)` and call only what `Family` declares here, so none of them
branches on a family's name:

- `training(config, resume).fit_fold(config, fold)`: train one fold of a run: its model and its
  out-of-fold predictions (`fold<K>/oof.csv`, written last: it marks the fold finished);
- `prediction(config).predict_fold(config, fold, files)`: a trained fold's predictions for record files
  (infer's test images), `image_name, pred` and, for a multi-class head, `p_<CLASS>` columns;
- `describe(config)`: what the config would train, as facts (JSON), without training;

and beside them a few facts and small checks: the fold file that holds the trained model
(`model_file`), the config keys a fold's predictions depend on besides that model (`prediction_keys`,
so infer knows when a fold's test.csv can be reused), whether an interrupted fold continues after its
last epoch (`resumable`), the family's own config checks (`check`), how it names a config's model in
tables and messages (`label`, a `Label`; `trained_as` for the flat keys a fold's state.json records), and the
model behind `serve`'s page (`serving`).

Everything around them is written once for every family: the run's config and lock, the folds to
train, the OOF gathered (train/); test predictions per fold, the ensemble, the partial rule and the
record beside a submission (predict/); scores, reports and blends (evaluate/).

A third family: add `<name>.py` to this folder with its `FAMILY`, and its name to `FAMILIES` below (its
config keys go in configs/base.yaml, as every key does); a family of trees on a feature table extends
`TreeFamily` (tree_family.py), as tabular and tbp_trees do. Modules here import TensorFlow or scikit-learn
only inside the methods that need them, so that looking a family up costs nothing.
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from melanoma.core import config as config_lib
from melanoma.core import io_utils
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.runs import layout

# model.family -> the module that holds its FAMILY
FAMILIES = {
    "cnn": "melanoma.train.families.cnn",
    "tabular": "melanoma.train.families.tabular",
    "tbp_trees": "melanoma.train.families.tbp_trees",
}


@dataclass(frozen=True)
class Label:
    """How a family names a config's model where runs are listed (`compare`) and reported (`infer`), so that
    those places read facts instead of asking which family it is."""

    model: str                  # a few words: the backbone, or the kind of trees
    image_size: int | None      # the image size the model sees (None: it sees no image)
    external: bool              # whether external images join the training folds
    tta: int | None             # augmented views per test image (None: the family predicts without TTA)
    predicted_with: str         # how test images are predicted, for the line under a submission ("TTA 4")


class Family:
    """The operations and facts of a model family (see the module docstring). Subclasses set the class
    attributes and implement the methods that raise NotImplementedError."""

    name: str = ""
    model_file: str = ""                    # the file in fold<K>/ that holds the fold's trained model
    prediction_keys: tuple[str, ...] = ()   # config keys (dotted) its predictions depend on besides the model
    resumable: bool = False                 # an interrupted fold continues after its last epoch (--resume)

    def check(self, config: Config) -> None:
        """The family's own config values, checked before any work and before TensorFlow loads (no file
        is read); ConfigError names the key."""

    def label(self, config: Config) -> Label:
        """The model `config` trains, as `compare` and `infer` show it."""
        raise NotImplementedError

    def trained_as(self, flat: dict) -> str:
        """A phrase for messages ("fold1 was trained as ..."), from flat dotted config keys: a fold's
        state.json records only those that shape the model, so a key may be missing (read it with .get)."""
        raise NotImplementedError

    def describe(self, config: Config) -> dict:
        """What `config` would train, as JSON-ready facts, without training (`melanoma describe`)."""
        raise NotImplementedError

    def training(self, config: Config, resume: bool = False) -> Any:
        """An object whose `fit_fold(config, fold) -> dict` trains one fold (the dict holds `fold` and
        `auc`). Made once per command, before the run's config is saved: whatever the folds share is
        prepared here, and a config refused here leaves the run as it was."""
        raise NotImplementedError

    def prediction(self, config: Config) -> Any:
        """An object whose `predict_fold(config, fold, files) -> DataFrame` predicts record files (the
        data.record_format.RecordFile of the test images) with fold `fold`'s trained model."""
        raise NotImplementedError

    def serving(self, config: Config, run_path: str, folds: list[int]) -> Any:
        """The model behind `serve`'s page, the trained `folds` of the run at `run_path` loaded once: an
        object with `title` (the caption of its picture), `picture_field` (the picture's key in the JSON
        answer), `metadata_used` (whether age, sex and site reach the model), `has_classes` (whether it
        answers class probabilities), `summary()` (the run's model in a sentence) and
        `answer(record_jpeg, image_rgb, row) -> Answer`, where `record_jpeg` is the JPEG a record of the
        run holds for the upload, `image_rgb` the upload itself and `row` the test record's int64
        features (patient_id, sex, age_approx, anatom_site_general_challenge; -1 where unknown)."""
        raise NotImplementedError

    def repeatable(self, config: Config) -> bool:
        """Whether two trainings of a fold with `config` (one seed, one machine) give the same model, so
        that a difference between two runs is the difference of their configs and not noise (`compare`
        says when it may be noise). By default as train.deterministic says; a family that always repeats
        says so here."""
        return config_lib.is_deterministic(config)

    # --- shared by every family ----------------------------------------------------------------------

    def fold_finished(self, config: Config, fold: int) -> bool:
        """The fold holds its trained model and its OOF predictions (written last)."""
        folder = layout.fold_dir(config, fold)
        return all(io_utils.exists(os.path.join(folder, name)) for name in (self.model_file, layout.OOF))


@dataclass
class Answer:
    """One uploaded image through a served run (`Family.serving`)."""

    fold_probabilities: list[float]         # P(melanoma) of each trained fold, in fold order
    picture: np.ndarray                     # RGB at the upload's size: the family's explanation drawn on it
    fields: dict = field(default_factory=dict)  # the family's own JSON fields (e.g. heatmap_png, contributions)
    notes: list[str] = field(default_factory=list)  # markdown paragraphs that explain them on the page
    classes: dict | None = None             # a multi-class head: class -> probability (mean over folds)


def family_name(config: Config) -> str:
    """model.family of a config, `cnn` for a run saved before the key existed."""
    return str((config.get("model") or {}).get("family", "cnn"))


def lookup(config: Config) -> Family:
    """The family that `config` names in model.family; ConfigError naming the choices for an unknown one."""
    return _family_called(family_name(config))


def trained_as(flat: dict) -> str:
    """What flat config keys (a fold's state.json record, or a flattened config) train, in a phrase for
    messages, as its family words it; a record saved before model.family existed is a CNN's."""
    return _family_called(str(flat.get("model.family", "cnn"))).trained_as(flat)


def _family_called(name: str) -> Family:
    if name not in FAMILIES:
        close = difflib.get_close_matches(name, FAMILIES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config key 'model.family' is '{name}'{hint}; choose one of {', '.join(FAMILIES)}")
    # the family's module is imported only when a config names it
    return importlib.import_module(FAMILIES[name]).FAMILY
