"""What a fold has finished, so that a killed run resumes where it stopped and loses nothing else.

After every completed epoch, a fold folder holds

    val_epochs.csv  the plain validation prediction of every image at every completed epoch
    last.keras      the model and optimizer state at the end of that epoch
    model.keras     the best checkpoint so far
    state.json      the commit record: last completed epoch, best metric and its epoch, the config, and
                    the history rows of the epochs it commits
    history.csv     one row per committed epoch, written from the state

written in this order, each atomically. state.json is the commit point: it never claims more than the
files before it hold (rows of val_epochs.csv past its epoch are dropped on resume), and history.csv,
written after it, never shows an epoch it has not committed; a process killed between the two leaves a
history one epoch behind, which a resumed fold rewrites from the state. A new
best checkpoint is saved under a temporary name first and named in state.json (`pending_best`) before it
is renamed over model.keras: a process killed between the two steps leaves a state whose best epoch
matches the file that resume renames into place, never a model.keras from an epoch that the state does
not know.

Temporary files (`io_utils.temporary_name`: a leading '.', '.tmp-' and the real extension) left by a
killed process never look complete and are removed, with a line, when the fold starts again
(`io_utils.remove_leftovers`).
"""
from __future__ import annotations

import json
import os

import pandas as pd

from melanoma.core import config as config_lib
from melanoma.core import io_utils
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.runs import layout
from melanoma.runs.layout import BEST_MODEL, HISTORY, LAST_MODEL, STATE, VAL_EPOCHS

# Everything a fold writes; a fresh start (no --resume) removes them so old and new never mix.
FOLD_ARTIFACTS = (STATE, LAST_MODEL, BEST_MODEL, HISTORY, VAL_EPOCHS, layout.OOF, layout.TEST, layout.TEST_SETTINGS,
                  layout.SKIPPED, layout.FOLD_DATA, layout.DUPLICATES)

# Keys that may differ between an interrupted run and its resumption: where files are (a Kaggle
# dataset's gs:// path changes every session), how progress is shown, and what happens after training.
RESUME_FREE = ("name", "output_dir", "submission_dir", "data.train_files", "data.test_files",
               "data.external_files", "data.sample_submission", "data.duplicates_csv", "data.cache",
               "model.weights", "train.verbose", "train.tensorboard", "tta", "submission")


def _flatten(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def flatten(config: Config) -> dict:
    """A config (or a plain nested dict) as {dotted key: value}."""
    return _flatten(config.to_dict() if hasattr(config, "to_dict") else dict(config))


def _is_free(key: str, free: tuple[str, ...]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in free)


def fingerprint(config: Config, free: tuple[str, ...] = RESUME_FREE) -> dict:
    """The config keys that a resumed fold must share with the run it continues (flat, dotted)."""
    return {key: value for key, value in flatten(config).items() if not _is_free(key, free)}


ABSENT = "<absent>"


def code_defaults() -> dict:
    """The base.yaml values (flat) of the code that is running (the checkout's, else the package's)."""
    return flatten(config_lib.load_config(config_lib.code_base()))


def config_differences(saved: dict, now: dict, defaults: dict | None = None) -> list[tuple[str, object, object]]:
    """(key, saved value, new value) for every flat key whose value differs, sorted by key.

    With `defaults` (base.yaml's values), a key missing from `saved` counts as its default: a run saved
    before the key existed behaved as the default does.
    """
    differences = []
    for key in sorted(set(saved) | set(now)):
        before = saved.get(key, (defaults or {}).get(key, ABSENT))
        after = now.get(key, ABSENT)
        if key not in now and defaults is not None:
            continue  # a key the code no longer has says nothing about the new run
        if before != after:
            differences.append((key, before, after))
    return differences


def describe_differences(differences, limit: int = 6) -> str:
    """`key: old -> new, ...` of the first `limit` differences (and how many more)."""
    shown = ", ".join(f"{key}: {before!r} -> {after!r}" for key, before, after in differences[:limit])
    more = f" and {len(differences) - limit} more" if len(differences) > limit else ""
    return shown + more


def read_state(folder: str) -> dict | None:
    path = os.path.join(folder, STATE)
    if not io_utils.exists(path):
        return None
    try:
        state = json.loads(io_utils.read_text(path))
    except (ValueError, UnicodeDecodeError) as error:
        # Written atomically, so this is damage from outside, not an interrupted write.
        raise ConfigError(f"{path} is not readable JSON ({error}); train the fold again with --force") from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise ConfigError(f"{path} is not a training state; train the fold again with --force")
    if isinstance(state.get("config"), dict):  # a fold trained before keys were renamed: read as the new names
        state["config"] = config_lib.translate_flat(state["config"])[0]
    return state


def write_state(folder: str, state: dict) -> None:
    io_utils.write_text_atomic(os.path.join(folder, STATE), json.dumps(state, indent=1))


def check_same_config(state: dict, config: Config, folder: str) -> None:
    """A resumed fold must continue the same experiment: name the keys that changed. A key the interrupted
    run's record lacks (it was saved before the key existed) counts as base.yaml's default, as the code
    that trained it behaved."""
    changed = config_differences(state.get("config") or {}, fingerprint(config), fingerprint(code_defaults()))
    if changed:
        raise ConfigError(f"cannot resume {folder}: the config differs from the interrupted run's "
                          f"({describe_differences(changed, 5)}); use the same config, or --force to train "
                          "the fold from scratch")


def finish_pending(folder: str, state: dict) -> None:
    """Complete a best-checkpoint rename that a killed process had committed to but not done."""
    pending = state.get("pending_best")
    if pending:
        source = os.path.join(folder, pending)
        if io_utils.exists(source):
            io_utils.replace(source, os.path.join(folder, BEST_MODEL))
            print(f"  completed the interrupted save of the best checkpoint (epoch {state.get('best_epoch')})")


def reset_fold(folder: str) -> None:
    """A fresh start: remove the fold's previous artifacts so none of them mixes with the new run."""
    for name in FOLD_ARTIFACTS:
        path = os.path.join(folder, name)
        if io_utils.exists(path):
            io_utils.remove(path)
    logs = os.path.join(folder, layout.TENSORBOARD)
    if io_utils.exists(logs):  # the curves of the fold's previous training
        io_utils.remove_tree(logs)


def history_rows(folder: str, state: dict) -> list[dict]:
    """The history of the epochs `state` committed: the rows it carries (history.csv is written after it,
    so it may lag one epoch behind), or, for a state written before it carried them, history.csv's first
    `state['epoch']` rows."""
    epochs = state["epoch"]
    if isinstance(state.get("history"), list):
        rows = [dict(row) for row in state["history"]]
        if [row.get("epoch") for row in rows] != list(range(1, epochs + 1)):
            raise ConfigError(f"{os.path.join(folder, STATE)} holds a history that is not epochs 1..{epochs}; "
                              "train the fold again with --force")
        return rows
    path = os.path.join(folder, HISTORY)
    if not io_utils.exists(path) or epochs == 0:
        return []
    frame = io_utils.read_csv(path)
    frame = frame[frame["epoch"] <= epochs].drop_duplicates("epoch", keep="last").sort_values("epoch")
    if frame["epoch"].tolist() != list(range(1, epochs + 1)):
        raise ConfigError(f"{path} does not hold epochs 1..{epochs} that {os.path.join(folder, STATE)} "
                          "records; train the fold again with --force")
    return frame.to_dict("records")


def val_epoch_rows(folder: str, epochs: int):
    """val_epochs.csv rows of the first `epochs` epochs, for a resumed fold to carry on (a DataFrame).

    Rows past `epochs` were not committed by state.json and are dropped; a missing committed epoch is an
    error, so that the resumed file stays continuous. A fold interrupted by a version of the code that
    did not keep per-epoch predictions has no file: it carries on without its first epochs (and says so).
    """
    path = os.path.join(folder, VAL_EPOCHS)
    columns = ["image_name", "epoch", "pred"]
    if not io_utils.exists(path):
        if epochs:
            print(f"  {path} is missing: epochs 1..{epochs} have no per-epoch validation predictions "
                  "(auc_unselected will compare the epochs every fold has)")
        return pd.DataFrame(columns=columns)
    frame = io_utils.read_csv(path, dtype={"image_name": str})
    frame = frame[frame["epoch"] <= epochs][columns]
    if sorted(frame["epoch"].unique().tolist()) != list(range(1, epochs + 1)):
        raise ConfigError(f"{path} does not hold epochs 1..{epochs} that {os.path.join(folder, STATE)} "
                          "records; train the fold again with --force")
    return frame.reset_index(drop=True)
