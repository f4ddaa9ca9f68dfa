"""Every path of a run in one place.

```
<output_dir>/<name>/config.yaml           the resolved config the run was trained with
<output_dir>/<name>/fold<K>/...           one fold: state, checkpoints, history, OOF and test predictions
<output_dir>/<name>/fold<K>/tensorboard/  the fold's scalars for TensorBoard (train.tensorboard)
<output_dir>/<name>/oof.csv               all folds' OOF, gathered once every fold has one
<output_dir>/<name>/blend.json            (a blend's folder instead of config.yaml)
<output_dir>/<name>/report/               what `report` draws
<output_dir>/<name>/.lock                 while train or infer writes the run (runs/run_lock.py)
<output_dir>/<name>/superseded/<time>/    an older run moved aside by --force
<submission_dir>/<name>[-folds0_2].csv    the fold ensemble, with <name>[-folds...].json beside a partial one
```
"""
from __future__ import annotations

import os
import re

from melanoma.core.config import Config

CONFIG_FILE = "config.yaml"
OOF = "oof.csv"
RUN_SUMMARY = "summary.json"  # written with oof.csv: the OOF AUC, and each fold's AUC and whether it collapsed
BLEND_FILE = "blend.json"
REPORT = "report"
SUPERSEDED = "superseded"
RUN_LOCK = ".lock"

# in fold<K>/
STATE = "state.json"
LAST_MODEL = "last.keras"
BEST_MODEL = "model.keras"
TREES_MODEL = "model.joblib"  # model.family: tabular
HISTORY = "history.csv"
VAL_EPOCHS = "val_epochs.csv"
TEST = "test.csv"
TEST_SETTINGS = "test.json"   # the TTA settings and test files TEST was predicted with
IMPORTANCE = "importance.csv"
FOLD_DATA = "data.json"       # what the fold trained and validated on: files, counts, drops, pseudo-labels
DUPLICATES = "duplicates.csv" # every image the fold's data dropped as a duplicate, with its reason
SKIPPED = "skipped.csv"       # undecodable training images skipped (data.skip_corrupt)
PSEUDO_LABELS = "pseudo_labels.csv"  # pseudo_labels.source: the test images the fold trained on, their label and weight
TENSORBOARD = "tensorboard"   # a folder: the fold's TensorBoard event files (train/, validation/)

FOLD_FOLDER = re.compile(r"^fold(\d+)$")


def run_dir(config: Config) -> str:
    return os.path.join(config.output_dir, config.name)


def fold_path(run_path: str, fold: int) -> str:
    return os.path.join(run_path, f"fold{fold}")


def fold_dir(config: Config, fold: int) -> str:
    return fold_path(run_dir(config), fold)


def fold_numbers(run_path: str, holding: str = OOF) -> list[int]:
    """The K of every fold<K>/ folder under `run_path` that holds `holding` (sorted)."""
    if not os.path.isdir(run_path):
        return []
    return sorted(int(match.group(1)) for entry in os.listdir(run_path)
                  if (match := FOLD_FOLDER.match(entry.rstrip("/")))
                  and os.path.isfile(os.path.join(run_path, entry, holding)))


def submission_name(name: str, folds: list[int], expected: int) -> str:
    """<name>.csv for every fold, <name>-folds0_2.csv for a partial ensemble (folds 0 and 2)."""
    if list(folds) == list(range(expected)):
        return f"{name}.csv"
    return f"{name}-folds{'_'.join(map(str, folds))}.csv"


# a partial ensemble's file name (a kept older copy adds .<time> after it)
PARTIAL_NAME = re.compile(r"-folds\d+(_\d+)*(\.|$)")


def same_submission(stem: str, name: str) -> bool:
    """Whether a file stem is run `name`'s submission: <name>, or <name>-folds..., or a kept older copy."""
    return stem == name or stem.startswith(f"{name}.") or bool(
        stem.startswith(f"{name}-folds") and PARTIAL_NAME.search(stem[len(name):]))


def record_path(submission_path: str) -> str:
    """The JSON beside a submission that says which run and folds it holds."""
    return os.path.splitext(str(submission_path))[0] + ".json"
