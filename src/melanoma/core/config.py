"""Experiment configuration: YAML files layered on `configs/base.yaml`, plus `--set` overrides.

`base.yaml` is the schema: it holds every key with its default, so a key that is not there is a typo, and
the type of its default is the type a value must have. An experiment file may name another experiment to
start from with `extends: other.yaml`.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import yaml

from melanoma.core.errors import ConfigError

BASE_NAME = "base.yaml"
REPOSITORY = Path(__file__).resolve().parents[3]  # the checkout: src/melanoma/core/config.py
# configs/base.yaml as the installed package holds it (a link to it in the checkout; a copy in the wheel), for
# an installation without a checkout: a notebook that predicts with a run's saved config
PACKAGED_BASE = Path(__file__).resolve().parent / BASE_NAME

# Keys whose default is null, or which accept more than the default's type.
EXTRA_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "data.train_files": (str, list),
    "data.test_files": (str, list),
    "data.external_files": (str, list, dict),
    "data.duplicates_csv": (str, list),
    "data.cache": (bool, str),
    "data.diagnosis_names": (list, dict),
    "data.negatives_per_positive": (int, float),
    "validation_weights.file": (str,),
    "pseudo_labels.source": (str,),
    "model.weights": (str,),
    "model.drop_connect": (int, float),
    "model.bn_momentum": (int, float),
    "model.color_constancy": (int, float),
    "train.steps_per_epoch": (int,),
    "train.class_weight": (int, float),
    "train.checkpoint_epoch": (int,),
    "features.image_size": (int,),
    "features.workers": (int,),
    "trees.class_weight": (int, float),
    "trees.importance_rows": (int,),
    "submission.file_name": (str,),
}

# Keys with a default that may also be set to null.
NULLABLE = {"data.test_files"}  # a data set without test images (e.g. HAM10000 on its own)

CHOICES: dict[str, tuple[str, ...]] = {
    "augment.backend": ("auto", "albumentations", "opencv", "tf"),
    "model.backbone": tuple(f"efficientnet-b{i}" for i in range(8))
    + tuple(f"efficientnetv2-{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l"))
    + tuple(f"efficientnet-lite{i}" for i in range(3)),
    "model.head": ("binary", "diagnosis"),
    "train.optimizer": ("adam",),
    "train.loss": ("bce", "focal"),
    "train.schedule": ("rampup", "cosine"),
    "train.checkpoint": ("best_auc", "best_loss", "best_pauc_tpr80", "last", "epoch"),
    "tta.mode": ("random", "dihedral"),
    "trees.importance_by": ("feature", "group"),
    "validation_weights.weighting": ("odds", "top"),
    "pseudo_labels.folds": ("matched", "all"),
}


class Range(NamedTuple):
    """The values a number may take: `low`/`high` (None: no bound), each bound included unless open."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def text(self) -> str:
        if self.high is None:
            return f"more than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE, FRACTION, SHARE = Range(0, low_open=True), Range(0, 1), Range(0, 1, low_open=True)
# Every number in base.yaml has its range here (a test holds it so), checked at load, before TensorFlow:
# an absurd value (a negative learning rate, zero steps read as "a full pass") is refused, never trained.
# A null passes where base.yaml gives null a meaning; cross-key rules are in _check_values.
RANGES: dict[str, Range] = {
    "seed": Range(0),
    "data.external_upsample": Range(0), "data.dedupe_perceptual_bits": Range(0, 63),
    "data.folds": Range(2), "data.image_size": Range(8), "data.negatives_per_positive": POSITIVE,
    "validation_weights.top": SHARE, "pseudo_labels.low": FRACTION, "pseudo_labels.high": FRACTION,
    "pseudo_labels.weight": POSITIVE,
    "augment.rotate_limit": Range(0, 180), "augment.scale_limit": Range(0, 1, high_open=True),
    "augment.shift_limit": FRACTION, "augment.brightness_limit": FRACTION, "augment.contrast_limit": FRACTION,
    "augment.hue_shift_limit": Range(0, 90), "augment.saturation_shift_limit": Range(0, 255),
    "augment.probability": FRACTION,
    "model.dropout": Range(0, 1, high_open=True), "model.drop_connect": Range(0, 1, high_open=True),
    "model.bn_momentum": Range(0, 1, high_open=True), "model.color_constancy": Range(1, 16),
    "train.epochs": Range(1), "train.batch_size": Range(1), "train.steps_per_epoch": Range(1),
    "train.label_smoothing": Range(0, 1, high_open=True), "train.focal_gamma": Range(0),
    "train.focal_alpha": FRACTION, "train.class_weight": POSITIVE, "train.upsample_malignant": Range(1),
    "train.lr_start": Range(0), "train.lr_peak_per_image": POSITIVE, "train.lr_min": Range(0),
    "train.lr_ramp_epochs": Range(0), "train.lr_sustain_epochs": Range(0), "train.lr_decay": SHARE,
    "train.steps_per_execution": Range(1), "train.verbose": Range(0, 2),
    "tta.steps": Range(0), "tta.prediction_batch_size": Range(1),
    "features.image_size": Range(16), "features.histogram_bins": Range(2, 64), "features.workers": Range(1),
    "trees.learning_rate": SHARE, "trees.max_iter": Range(1), "trees.max_leaf_nodes": Range(2),
    "trees.min_samples_leaf": Range(1), "trees.l2_regularization": Range(0),
    "trees.max_features": SHARE, "trees.class_weight": POSITIVE, "trees.importance_repeats": Range(0),
    "trees.importance_rows": Range(2),
}
# numbers whose range depends on another key, checked beside it
RANGED_ELSEWHERE = {"train.checkpoint_epoch": "1..train.epochs: _check_checkpoint_epoch"}

# model.family is checked where the families are (train/families/family.py: lookup), so that a new family
# is added in that one folder.
# model.weights: one of these names, or the path of a weights file
WEIGHT_NAMES = ("none", "imagenet", "noisy-student")

# Keys renamed so that each says what it means (old dotted name -> new one; a section renames every key in
# it). A user's config or --set with an old name is refused with a hint naming the new key; a run's saved
# config.yaml (and a fold's state.json) written before the rename is read under the new names, with a note,
# so that finished runs still infer, resume and compare.
RENAMED: dict[str, str] = {
    "train.lr_max": "train.lr_peak_per_image",
    "data.external_2018": "data.isic2019_even_files",
    "data.external_2019": "data.isic2019_odd_files",
    "model.metadata": "model.metadata_input",
    "tta.batch_size": "tta.prediction_batch_size",
    "data.pseudo_labels": "pseudo_labels.source",
    "data.pseudo_labels_folds": "pseudo_labels.folds",
    "data.pseudo_labels_low": "pseudo_labels.low",
    "data.pseudo_labels_high": "pseudo_labels.high",
    "data.pseudo_labels_weight": "pseudo_labels.weight",
    "data.validation_weights": "validation_weights.file",
    "data.validation_weighting": "validation_weights.weighting",
    "data.validation_top": "validation_weights.top",
    "tabular": "trees",
}


def renamed(dotted: str) -> str | None:
    """The new name of an old key (or of a key inside a renamed section), or None when `dotted` is not old."""
    if dotted in RENAMED:
        return RENAMED[dotted]
    for old, new in RENAMED.items():
        if dotted.startswith(old + "."):
            return new + dotted[len(old):]
    return None


def translate_saved_with_note(tree: dict, path: str | os.PathLike) -> dict:
    """`translate_saved`, with a note on stderr naming the old keys of a run saved before the renames."""
    translated, met = translate_saved(tree)
    if met:
        shown = ", ".join(f"{old} -> {renamed(old)}" for old in met[:4]) + (" ..." if len(met) > 4 else "")
        print(f"note: {path} was saved before keys were renamed; read as the new names ({shown})", file=sys.stderr)
    return translated


def renamed_key_error(dotted: str, source: str) -> ConfigError:
    """The one line for an old key name: which key replaces it."""
    return ConfigError(f"config key '{dotted}' in {source} was renamed: use '{renamed(dotted)}' "
                       f"(configs/base.yaml documents it)")


def translate_flat(flat: dict) -> tuple[dict, list[str]]:
    """A flat {dotted key: value} written before the renames, under the new names; also the old names met."""
    translated, met = {}, []
    for key, value in flat.items():
        new = renamed(key)
        if new is not None:
            met.append(key)
        translated[new or key] = value
    return translated, met


def translate_saved(tree: dict) -> tuple[dict, list[str]]:
    """A saved run config (nested) written before the renames, under the new names; also the old names met.
    Keys that are not config keys (what a run records beside its config) pass unchanged."""
    flat: dict = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and any(old == dotted or old.startswith(dotted + ".") for old in RENAMED):
                walk(value, dotted + ".")
            else:
                flat[dotted] = value

    walk(tree, "")
    translated, met = translate_flat(flat)
    nested: dict = {}
    for dotted, value in translated.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested, met


class Config(dict):
    """A nested dict that also reads as attributes: `cfg.train.epochs`."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def get_path(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = node[part]
        return node

    def to_dict(self) -> dict:
        return _plain(self)


def is_deterministic(config: dict) -> bool:
    """train.deterministic of a config; a run saved before the key existed was not deterministic (its
    augmentation drew from generators shared between threads), whatever base.yaml's default now is."""
    return bool((config.get("train") or {}).get("deterministic", False))


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(value) for value in node]
    return node


def as_config(node: Any) -> Any:
    if isinstance(node, dict):
        return Config({key: as_config(value) for key, value in node.items()})
    if isinstance(node, list):
        return [as_config(value) for value in node]
    return node


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _all_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_all_keys(value, dotted + "."))
    return keys


def _unknown_key(dotted: str, schema: dict, source: str) -> ConfigError:
    candidates = _all_keys(schema)
    close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.5)
    if not close:
        leaf = dotted.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] in difflib.get_close_matches(
            leaf, [k.rsplit(".", 1)[-1] for k in candidates], n=1, cutoff=0.6)]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{dotted}' in {source}{hint}")


def _merge(target: dict, update: dict, schema: dict, source: str, prefix: str = "",
           root: dict | None = None) -> None:
    root = schema if root is None else root
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            raise renamed_key_error(dotted, source) if renamed(dotted) else _unknown_key(dotted, root, source)
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' in {source} is a section; give its keys, "
                                  f"not {value!r}")
            _merge(target[key], value, schema[key], source, dotted + ".", root)
        else:
            target[key] = value


def _set_dotted(target: dict, schema: dict, dotted: str, value: Any, source: str) -> None:
    nested: Any = value
    for part in reversed(dotted.split(".")):
        nested = {part: nested}
    _merge(target, nested, schema, source)


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=2` -> ('train.epochs', 2); the value is parsed as YAML (`[a,b]` is a list)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        if raw.lstrip()[:1] in ("[", "{", '"', "'"):  # meant as a list, a mapping or a quoted string
            problem = str(error).strip().splitlines()[0]
            raise ConfigError(f"--set {text}: the value is not valid YAML ({problem}); close its brackets or "
                              "quotes, e.g. --set data.external_files=[a.tfrec,b.tfrec]") from None
        value = raw  # a plain string YAML does not take as it stands, such as a glob starting with '*'
    return key, value


def _type_name(types: Iterable[type]) -> str:
    return " or ".join(t.__name__ for t in types)


def _check_types(config: dict, schema: dict, prefix: str = "") -> None:
    for key, default in schema.items():
        dotted = f"{prefix}{key}"
        value = config[key]
        if isinstance(default, dict):
            _check_types(value, default, dotted + ".")
            continue
        allowed: tuple[type, ...] = EXTRA_TYPES.get(dotted, ())
        if default is not None:
            allowed = allowed + (type(default),)
        if value is None:
            if default is None or dotted in NULLABLE:
                continue
            raise ConfigError(f"config key '{dotted}' must be {_type_name(allowed)}, got null")
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            config[key] = value = float(value)
        if float in allowed and isinstance(value, str):
            # YAML 1.1 reads `1e-5` (no dot) as a string; a number is what was meant.
            try:
                config[key] = value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) and bool not in allowed:
            ok = False
        else:
            ok = isinstance(value, allowed)
        if not ok:
            raise ConfigError(f"config key '{dotted}' must be {_type_name(allowed)}, "
                              f"got {type(value).__name__} {value!r}")
        if dotted in CHOICES and value not in CHOICES[dotted]:
            close = difflib.get_close_matches(str(value), CHOICES[dotted], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"config key '{dotted}' is '{value}'{hint}; choose one of "
                              f"{', '.join(CHOICES[dotted])}")


def check_name(name: str, key: str = "name") -> None:
    """A run's name is one folder name inside output_dir: no path separator, not '.' or '..', not hidden
    (output_dir's own .cache/ and the runs' hidden files start with '.')."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or name.startswith(".") \
            or any(separator in name for separator in ("/", "\\", "\0")):
        raise ConfigError(f"config key '{key}' is {name!r}: a run's name is one folder name inside output_dir "
                          "(no '/', not starting with '.'); give another, e.g. --set name=demo-64")


def _check_ranges(config: Config) -> None:
    """Every number within its RANGES entry; the message names the key, the value and the range."""
    for dotted, allowed in RANGES.items():
        value = config.get_path(dotted)
        if value is not None and not allowed.holds(value):
            nullable = " (or null)" if dotted in EXTRA_TYPES else ""
            raise ConfigError(f"config key '{dotted}' must be {allowed.text()}{nullable}, got {value:g}")


def _check_values(config: Config) -> None:
    check_name(config.name)
    _check_ranges(config)
    if config.model.drop_connect is not None and config.model.backbone.startswith("efficientnetv2-"):
        raise ConfigError(f"config key 'model.drop_connect' applies to efficientnet-b0..b7 and -lite0..2, not "
                          f"{config.model.backbone}: set model.drop_connect=null")
    _check_checkpoint_epoch(config.train)
    _check_submission(config.submission)
    _check_pseudo_labels(config)


def _check_submission(section: Config) -> None:
    """The submission section: a column name, a plain .csv file name, a competition's name."""
    for key in ("id_column", "competition"):
        if not section[key].strip() or any(character in section[key] for character in ",\n\"/"):
            raise ConfigError(f"config key 'submission.{key}' is {section[key]!r}; give a name without commas, "
                              "quotes or slashes")
    name = section.file_name
    if name is not None and (not name.endswith(".csv") or name.startswith(".") or "/" in name or "\\" in name):
        raise ConfigError(f"config key 'submission.file_name' is {name!r}: give a file name ending in .csv (it is "
                          "written into submission_dir), e.g. submission.csv, or null for <name>.csv")


def _check_pseudo_labels(config: Config) -> None:
    """pseudo_labels.source: a source named, and test images to label (its numbers are in RANGES)."""
    source = config.pseudo_labels.source
    if source is not None and not str(source).strip():
        raise ConfigError("config key 'pseudo_labels.source' is empty: name a finished run's or blend's folder, "
                          "or null")
    if source and not config.data.test_files:
        raise ConfigError("config key 'pseudo_labels.source' is set but data.test_files is null: pseudo-labels are "
                          "test images; give the test records' glob, or set pseudo_labels.source=null")


def _check_checkpoint_epoch(train: Config) -> None:
    """train.checkpoint: epoch needs train.checkpoint_epoch in 1..train.epochs, and only it uses the key."""
    epoch = train.checkpoint_epoch
    if train.checkpoint == "epoch":
        if epoch is None:
            raise ConfigError("config key 'train.checkpoint' is 'epoch': set train.checkpoint_epoch to the "
                              f"epoch to keep (1..{train.epochs})")
        if not 1 <= epoch <= train.epochs:
            raise ConfigError(f"config key 'train.checkpoint_epoch' must be in 1..train.epochs "
                              f"({train.epochs}), got {epoch}")
    elif epoch is not None:
        raise ConfigError(f"config key 'train.checkpoint_epoch' ({epoch}) is used only with "
                          f"train.checkpoint: epoch, which is '{train.checkpoint}': set "
                          "train.checkpoint=epoch or train.checkpoint_epoch=null")


def base_path(config_path: Path) -> Path:
    """base.yaml beside the experiment file, else the repository's configs/base.yaml, else the installed
    package's copy of it."""
    beside = config_path.parent / BASE_NAME
    if beside.is_file():
        return beside
    for found in (REPOSITORY / "configs" / BASE_NAME, PACKAGED_BASE):
        if found.is_file():
            return found
    raise ConfigError(f"cannot find {BASE_NAME} beside {config_path} (it holds every key's default)")


def code_base() -> Path:
    """The base.yaml of the code that is running: the checkout's, else the installed package's."""
    checkout = REPOSITORY / "configs" / BASE_NAME
    return checkout if checkout.is_file() else PACKAGED_BASE


def _layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    if path in seen:
        raise ConfigError(f"config files extend each other in a loop: {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    if "git_commit" in data:  # a run's saved config (runs/run_config.py) records the code's commit: no key
        data.pop("git_commit")
        data = translate_saved_with_note(data, path)
    parent = data.pop("extends", None)
    layers: list[tuple[Path, dict]] = []
    if parent:
        layers = _layers((path.parent / parent).resolve(), seen + (path,))
    return layers + [(path, data)]


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Resolve an experiment: base.yaml, the `extends` chain, the file itself, then `--set` values."""
    path = Path(path)
    schema = _read_yaml(base_path(path))
    config = copy.deepcopy(schema)
    if path.resolve() != base_path(path).resolve():
        for layer_path, data in _layers(path.resolve()):
            _merge(config, data, schema, str(layer_path))
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(config, schema, key, value, f"--set {text}")
    _check_types(config, schema)
    resolved = as_config(config)
    if not resolved["name"]:
        resolved["name"] = path.stem
    _check_values(resolved)
    return resolved


