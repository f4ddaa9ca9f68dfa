"""A run and the config it was trained with: outputs/<name>/config.yaml is the truth about the run.

Training binds a run to its config: once outputs/<name>/config.yaml exists, training more folds under
a config that differs in anything that shapes the model or the data is refused (`bind_run`), unless
--force, which moves the previous run aside and starts again. Everything that uses a run's checkpoints
(infer, report, blend, serve) gets its config from `load_run_config`: the saved config for what
defines the model and its inputs, the current config for where files are and how to predict (TTA).

Keys are compared flat and dotted. File paths compare by their file names only (a Kaggle dataset's
gs:// folder changes every session, the files in it do not), as `fold_state.fingerprint` lets a resumed
fold move between machines. A key the saved config lacks (a run saved before the key existed) counts
as base.yaml's default.

Here too: writing and reading that file (`save_config`, `read_saved_config`; it carries the code's git
commit), and the folders each worker of a cluster writes into (`worker_outputs`: the chief's are the run's).
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import yaml

from melanoma.core import config as config_lib
from melanoma.core import io_utils
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.runs import fold_state, layout

# Keys that never shape what a run learns or predicts.
RUN_FREE = ("name", "output_dir", "submission_dir", "submission", "data.cache", "train.verbose", "train.tensorboard",
            "tta.prediction_batch_size")
# ... and what inference may choose for itself: the test set and how to look at it (TTA).
INFER_FREE = RUN_FREE + ("tta", "data.test_files", "data.sample_submission")
# Keys holding file paths (or globs): compared by file name.
LOCATED = ("data.train_files", "data.test_files", "data.external_files", "data.sample_submission",
           "data.duplicates_csv", "validation_weights.file", "pseudo_labels.source", "model.weights")
# What config.yaml records beside the config: the code's commit, and the identity of the run's pseudo-label
# source (data/pseudo_labels.py), which binds the run as its config does.
SOURCE_RECORD = "pseudo_labels_source"
RECORDS = ("git_commit", SOURCE_RECORD)


def _file_names(value):
    if isinstance(value, str):
        return os.path.basename(value.rstrip("/"))
    if isinstance(value, list):
        return [_file_names(item) for item in value]
    if isinstance(value, dict):
        return {key: _file_names(item) for key, item in value.items()}
    return value


def binding(config: Config, free: tuple[str, ...] = RUN_FREE) -> dict:
    """The flat keys a run is bound to, file paths reduced to file names."""
    flat = fold_state.fingerprint(config, free)
    return {key: _file_names(value) if key in LOCATED else value for key, value in flat.items()}


def base_defaults(config_path: str | os.PathLike) -> dict:
    """base.yaml's values (flat), for keys that a run saved before they existed."""
    return fold_state.flatten(config_lib.load_config(config_lib.base_path(Path(config_path))))


def code_defaults() -> dict:
    """The base.yaml values (flat) of the code that is running (the checkout's, else the package's)."""
    return fold_state.code_defaults()


def run_folder(config: Config) -> str:
    return layout.run_dir(config)


def saved_config(config: Config) -> config_lib.Config | None:
    """The config saved with the run that `config` names, or None when there is none yet."""
    folder = run_folder(config)
    if not io_utils.exists(os.path.join(folder, layout.CONFIG_FILE)):
        return None

    try:
        return read_saved_config(folder)
    except (yaml.YAMLError, AttributeError, TypeError, ValueError) as error:  # not YAML, not a mapping
        raise ConfigError(f"{os.path.join(folder, layout.CONFIG_FILE)} is not a readable run config "
                          f"({type(error).__name__}: {error}); restore it, or train under a new name") from None


# --- training -------------------------------------------------------------------------------------


def bind_run(config: Config, config_path: str | os.PathLike, force: bool = False, write: bool = True,
             record: dict | None = None) -> str:
    """Tie the run to `config` before any fold trains; returns the path of its saved config.

    A new run saves the config. A run whose saved config agrees with `config` keeps its file untouched.
    One that differs is refused with ConfigError naming each key and both values, unless `force`: then
    the previous run (config, folds, OOF) is moved to <run>/superseded/<time>/ and the new config saved,
    so no fold of the old experiment stays beside the new one. `record` ({SOURCE_RECORD: identity}, or
    None) is saved beside the config and binds the run too: a pseudo-label source whose predictions changed
    is refused as a changed config is. `write=False` checks only (the workers of a cluster other than the
    chief, which writes).
    """
    folder = run_folder(config)
    target = os.path.join(folder, layout.CONFIG_FILE)
    saved = saved_config(config)
    if saved is None:
        return save_config(config, record=record) if write else target
    differences = fold_state.config_differences(binding(saved), binding(config),
                                              defaults=binding(base_defaults(config_path)))
    changed = None if differences else record_change(saved_record(folder), record)
    if not differences and not changed:
        return target
    if not trained_work(folder):
        if write:
            print(f"run {config.name}: no fold was trained under its previous config; saving the new one")
            return save_config(config, record=record)
        return target
    if not force:
        what = (f"was trained with another config ({target}): {fold_state.describe_differences(differences)}"
                if differences else f"is bound to its pseudo-label source, and {changed}")
        raise ConfigError(
            f"run '{config.name}' {what}. Its folds would mix two experiments. "
            + ("Restore the source's predictions, or give" if changed else "Give")
            + " the new experiment its own name (--set name=...), or add --force to retrain under the new "
            f"{'labels' if changed else 'config'} (the previous run is moved to "
            f"{os.path.join(folder, layout.SUPERSEDED)}/)")
    if not write:
        return target
    moved = supersede(folder)
    reason = fold_state.describe_differences(differences, 3) if differences else changed
    print(f"run {config.name}: the {'config' if differences else 'pseudo-label source'} changed ({reason}); "
          f"--force: the previous run is moved to {moved}")
    return save_config(config, record=record)


def saved_record(folder: str) -> dict:
    """What a run's config.yaml records beside its config (RECORDS: the git commit, the pseudo-label source);
    {} when there is no readable file."""
    path = os.path.join(folder, layout.CONFIG_FILE)
    if not io_utils.exists(path):
        return {}
    try:
        data = yaml.safe_load(io_utils.read_text(path))
    except yaml.YAMLError:
        return {}
    return {key: data[key] for key in RECORDS if isinstance(data, dict) and key in data}


def record_change(saved: dict | None, now: dict | None) -> str | None:
    """Why the pseudo-label source a run recorded (`saved`) differs from `now`'s (None when it does not):
    the same files' bytes (sha256) read the same way."""
    before = (saved or {}).get(SOURCE_RECORD)
    after = (now or {}).get(SOURCE_RECORD)
    if not before and not after:
        return None
    if before and after and before.get("sha256") == after.get("sha256") and before.get("folds") == after.get("folds"):
        return None
    if not after:
        return f"it was trained with pseudo-labels from {before.get('path')}, which its config no longer names"
    if not before:
        return f"it recorded no pseudo-label source, and its config names {after.get('path')}"
    return (f"the predictions of {after.get('path')} changed since the run was bound to them (sha256 "
            f"{str(before.get('sha256'))[:12]} then, {str(after.get('sha256'))[:12]} now, over "
            f"{len(after.get('files') or [])} file(s))")


def trained_work(folder: str) -> list[str]:
    """The fold folders of a run that hold training results (a state or a checkpoint)."""
    if not io_utils.exists(folder):
        return []
    folds = [name.rstrip("/") for name in io_utils.listdir(folder) if layout.FOLD_FOLDER.match(name.rstrip("/"))]
    return [os.path.join(folder, name) for name in folds
            if any(io_utils.exists(os.path.join(folder, name, artifact))
                   for artifact in (layout.STATE, layout.BEST_MODEL, layout.OOF))]


def supersede(folder: str) -> str:
    """Move everything of a run folder (but earlier superseded runs and the lock held by this process)
    to <folder>/superseded/<UTC time>/.

    config.yaml moves last: a process killed part-way leaves the run still claiming its old config, and
    the folds not yet moved are still the old config's (the next --force moves them).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = os.path.join(folder, layout.SUPERSEDED, stamp)
    counter = 1
    while io_utils.exists(target):
        target = os.path.join(folder, layout.SUPERSEDED, f"{stamp}-{counter}")
        counter += 1
    io_utils.makedirs(target)
    entries = [name.rstrip("/") for name in io_utils.listdir(folder)
               if name.rstrip("/") not in (layout.SUPERSEDED, layout.RUN_LOCK)]
    entries.sort(key=lambda name: name == layout.CONFIG_FILE)
    for name in entries:
        io_utils.move(os.path.join(folder, name), os.path.join(target, name))
    return target


def fold_config_problem(config: Config, fold_folder: str, trained_as: Callable[[dict], str],
                        defaults: dict | None = None) -> str | None:
    """Why a fold's checkpoint was not trained under `config` (from its state.json), or None; `trained_as`
    words what the fold's recorded keys trained (its family's, train/families/family.py: trained_as).

    state.json records the config each fold trained under; a fold without one (trained before it was
    written) cannot be checked and passes. A key its record lacks counts as base.yaml's default.
    """
    try:
        state = fold_state.read_state(fold_folder)
    except ConfigError as error:
        return str(error)
    if not state or not state.get("config"):
        return None
    trained = state["config"]
    if defaults is None:
        defaults = fold_state.fingerprint(code_defaults())
    differences = fold_state.config_differences(trained, fold_state.fingerprint(config), defaults)
    if not differences:
        return None
    return (f"{fold_folder} was trained as {trained_as(trained)} under another config "
            f"({fold_state.describe_differences(differences, 4)})")


# --- inference, report, blend, serve ----------------------------------------------------------------


def _overridden(key: str, overrides: Iterable[str]) -> str | None:
    """The --set text that set `key` (or a section holding it), or None."""
    for text in overrides:
        name = config_lib.parse_override(text)[0]
        if key == name or key.startswith(name + "."):
            return text
    return None


def load_run_config(config_path: str | os.PathLike, overrides: Iterable[str] = (),
                    free: tuple[str, ...] = INFER_FREE, quiet: bool = False) -> config_lib.Config:
    """The config to use a trained run with: what defines the model and its inputs from the run's saved
    config, the rest (file locations, TTA, output folders) from `config_path` and `overrides`.

    `config_path` (with `overrides`) names the run: outputs/<name>/config.yaml must exist, else
    FileNotFoundError. A --set value that contradicts the saved config is refused (ConfigError naming
    the key and both values); where the config file alone differs (a forgotten training --set, an
    edited file) the saved value is used and a note names it.
    """
    overrides = list(overrides)
    requested = config_lib.load_config(config_path, overrides)
    folder = run_folder(requested)
    saved = saved_config(requested)
    if saved is None:
        raise FileNotFoundError(f"no trained run for {config_path}: {os.path.join(folder, layout.CONFIG_FILE)} does "
                                f"not exist; train it first (python train.py --config {config_path})")
    defaults = base_defaults(config_path)
    now, before = binding(requested, free), binding(saved, free)
    differences = fold_state.config_differences(before, now, defaults=binding(defaults, free))
    conflicts = [(key, old, new, _overridden(key, overrides)) for key, old, new in differences
                 if _overridden(key, overrides)]
    if conflicts:
        shown = "; ".join(f"--set {text} but the run was trained with {key}={old!r}"
                          for key, old, _, text in conflicts)
        raise ConfigError(f"{shown} ({os.path.join(folder, layout.CONFIG_FILE)}): its checkpoints need the config "
                          "they were trained with; drop the --set, or train a new run (--set name=...)")
    merged = requested.to_dict()
    saved_flat = fold_state.flatten(saved)
    for key, _, _ in differences:
        value = saved_flat.get(key, defaults.get(key))
        _set(merged, key, value)
    if differences and not quiet:
        shown = ", ".join(f"{key}={old!r} ({config_path}: {new!r})" for key, old, new in differences[:6])
        more = f" and {len(differences) - 6} more" if len(differences) > 6 else ""
        print(f"note: run {requested.name} uses the config it was trained with "
              f"({os.path.join(folder, layout.CONFIG_FILE)}): {shown}{more}", file=sys.stderr)
    return config_lib.as_config(merged)


def run_folder_of(target: str, overrides: list[str] | None = None) -> str:
    """The run folder of a config file (with --set overrides, checked against the run's saved config),
    or `target` itself when it is a folder (a run folder, or a blend's, which has no config file)."""
    if os.path.isdir(target):
        return target.rstrip("/")
    folder = layout.run_dir(config_lib.load_config(target, overrides or []))
    if not os.path.isdir(folder):
        return folder
    return layout.run_dir(load_run_config(target, overrides or []))


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def git_commit() -> str | None:
    """The code's commit (with '-dirty' when the tree has changes), or None outside a git checkout."""
    repo = config_lib.REPOSITORY
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def dump_config(config: Config, record: dict | None = None) -> str:
    data = config.to_dict()
    data["git_commit"] = git_commit()
    data.update(record or {})
    return yaml.safe_dump(data, sort_keys=False)


def save_config(config: Config, directory: str | None = None, record: dict | None = None) -> str:
    """Write the resolved config (+ git commit, + `record`: the pseudo-label source) as <run dir>/config.yaml,
    atomically."""
    directory = directory or layout.run_dir(config)
    target = os.path.join(directory, layout.CONFIG_FILE)
    io_utils.write_text_atomic(target, dump_config(config, record))
    return target


def read_saved_config(directory: str | os.PathLike) -> Config:
    """The resolved config a run saved (what it records beside it, RECORDS, dropped); a run saved before keys
    were renamed (config.RENAMED) reads under the new names, with a note."""
    path = os.path.join(str(directory), layout.CONFIG_FILE)
    data = yaml.safe_load(io_utils.read_text(path))
    for key in RECORDS:
        data.pop(key, None)
    return config_lib.as_config(config_lib.translate_saved_with_note(data, path))


@contextlib.contextmanager
def worker_outputs(config: Config, chief: bool):
    """The config a process writes with: `config` itself on the chief; on the other workers of a
    cluster, a copy whose output_dir and submission_dir are a temporary folder of their own, removed at
    the end. Those workers take every step the chief takes (a cluster saves models collectively), but
    nothing of theirs lands in the run's folders."""
    if chief:
        yield config
        return
    scratch = tempfile.mkdtemp(prefix="melanoma-worker-")
    work = copy.deepcopy(config)
    work["output_dir"] = os.path.join(scratch, "outputs")
    work["submission_dir"] = os.path.join(scratch, "submissions")
    try:
        yield work
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
