"""Pseudo-labels (an option, never a default): `pseudo_labels.source` names a finished run or blend whose test
predictions become soft labels, and the test images they are confident about join every fold's training set.

The source is a folder: a run (`outputs/<name>`), the seeds' mean of a config (`outputs/<name>-seeds`, from
`infer.py --seeds N`) or a blend of `--method mean`. A rank or weights blend is refused: its submission holds
ranks, not probabilities, and a label must be a probability.

- **Which predictions** (`pseudo_labels.folds`). `matched` (the default): fold K trains on the source's
  fold-K test predictions (a run's `fold<K>/test.csv`; for a seeds' mean or a mean blend, the mean of its runs'
  `fold<K>/test.csv`), made by models that never trained on fold K's validation images, so nothing of those
  images' labels reaches fold K through the pseudo-labels: the OOF stays as honest as without them. It needs a
  source on the same folds (checked image by image before training). `all`: every fold takes the source's
  submission (any run or mean blend, on any folds); its models trained on every fold's validation images, so
  what they learnt of fold K's labels reaches fold K's model through the test images, and the OOF is
  optimistic by that much: judge such a run on test labels (the demo's hidden ones, the leaderboard).
- **The confidence rule**: a test image joins when its prediction is at most `pseudo_labels.low` or at
  least `pseudo_labels.high` (`low >= high` keeps every test image). Its label is the prediction itself
  (a soft label), and it weighs `pseudo_labels.weight` in the loss where a labelled image weighs 1.
- **Test images are never validation images**: they join the training side only, and a fold whose
  pseudo-labelled images meet its validation images stops (CheckFailed).
- **A run is bound to its source**: training records the source in the run's `config.yaml`
  (`pseudo_labels_source`: the folder, the files read and the sha256 of their bytes). Training more folds,
  resuming, and `infer` recompute it and refuse, with exit status 2, a source whose predictions changed since
  (`check_unchanged`): restore them, or train the run again under the new source (`--force`, or a new name).

Checked before any training (`read_source`, `check_selection`): a missing folder, a folder that is neither a
run nor a blend, a source with folds still to train, one without test predictions, a rank blend, a fold count
that `matched` cannot pair, and a rule that keeps no test image; the data layer adds the checks that read
records (the source predicts exactly the config's test images; `matched`: its folds hold the same images).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError, DataError
from melanoma.core.tables import first_few
from melanoma.runs import layout, run_config, run_results

EVERY_FOLD = -1                       # the key of `Source.predictions` under pseudo_labels.folds: all
KEY = "pseudo_labels.source"


@dataclass
class Source:
    """A pseudo-label source read back: its predictions (by fold, or EVERY_FOLD) and what they were read from."""

    path: str
    kind: str                                   # run | seeds | blend
    folds_mode: str                             # pseudo_labels.folds
    predictions: dict[int, pd.Series]           # fold (or EVERY_FOLD) -> prediction by image_name
    files: list[str]                            # the files the predictions were read from, sorted
    oof: pd.DataFrame = field(repr=False)       # the source's OOF: image_name, fold (which images each fold validated)

    def fold_predictions(self, fold: int) -> pd.Series:
        return self.predictions[EVERY_FOLD if self.folds_mode == "all" else fold]

    def identity(self) -> dict:
        """What the run records of its source: the folder, the files read and the sha256 of their bytes."""
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(os.path.basename(path).encode() + b"\0" + io_utils.read_bytes(path) + b"\0")
        return {"path": self.path, "kind": self.kind, "folds": self.folds_mode, "files": list(self.files),
                "sha256": digest.hexdigest()}


def enabled(config: Config) -> bool:
    return bool((config.get("pseudo_labels") or {}).get("source"))  # a run saved before the option: off


# --------------------------------------------------------------------------------------------------
# the source
# --------------------------------------------------------------------------------------------------

def _problem(path: str, what: str) -> str:
    return f"config key '{KEY}' = {path!r}: {what}"


def read_source(config: Config) -> Source | None:
    """The config's pseudo-label source, checked (None when pseudo_labels.source is off). ConfigError or
    DataError naming the problem and what to do; nothing is written."""
    if not enabled(config):
        return None
    path = str(config.pseudo_labels.source).rstrip("/")
    if os.path.abspath(path) == os.path.abspath(layout.run_dir(config)):
        raise ConfigError(_problem(path, "is this run's own folder; a run takes pseudo-labels from another, finished "
                                         "run"))
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "no such folder"
        raise ConfigError(_problem(path, f"{what}; name a finished run's folder (outputs/<name>), a seeds' mean "
                                         "(outputs/<name>-seeds) or a mean blend's (outputs/blend-...)"))
    run = run_results.inspect_run(path)
    if run.config is None and run.blend is None:
        raise ConfigError(_problem(path, f"holds neither {layout.CONFIG_FILE} (a run) nor {layout.BLEND_FILE} (a "
                                         "blend); name a finished run's or blend's folder"))
    if run.problem:
        raise DataError(_problem(path, run.problem))
    member = _finished(path)
    kind = "run" if run.blend is None else ("seeds" if run.blend.get("kind") == "seeds" else "blend")
    method = (run.blend or {}).get("method", "mean")
    if method != "mean":
        raise ConfigError(_problem(path, f"is a {method} blend: its submission holds ranks, not probabilities, and a "
                                         "pseudo-label is a probability; blend with --method mean, or name a run or "
                                         "a seeds' mean"))
    mode = config.pseudo_labels.folds
    if mode == "all":
        predictions, files = _submitted(member)
    else:
        predictions, files = _per_fold(member, config.data.folds)
    for values in predictions.values():
        outside = values.index[~values.between(0, 1)]
        if len(outside):
            raise DataError(_problem(path, f"predictions outside [0, 1] (images {first_few(outside)}): they are not "
                                           "probabilities"))
    oof = member.oof[["image_name", "fold"]].assign(image_name=lambda frame: frame["image_name"].astype(str))
    return Source(path=path, kind=kind, folds_mode=mode, predictions=predictions, files=sorted(set(files)), oof=oof)


def _finished(path: str) -> run_results.Member:
    """The source read as a blend member, every one of its folds with its OOF; DataError otherwise."""
    try:
        member = run_results.Member(path, allow_partial=True)
        _, complete, present = run_results.load_run_oof(member.run)
    except DataError as error:
        raise DataError(_problem(path, f"not finished: {error}")) from None
    if not complete:
        raise DataError(_problem(path, f"not finished: folds {', '.join(map(str, present))} of "
                                       f"{member.run.folds_expected or '?'} have their OOF; train its missing folds "
                                       "(python train.py --config ... --fold all) and predict them"))
    return member


def _submitted(member: run_results.Member) -> tuple[dict[int, pd.Series], list[str]]:
    """pseudo_labels.folds: all: the source's test predictions over every fold (a run's fold test.csv
    averaged, or its submission; a blend's submission)."""
    predictions, origin = member.test_predictions()
    if predictions is None:
        raise DataError(_problem(member.path, f"no test predictions ({origin}): predict it first (python infer.py "
                                              "--config ..., or the blend command again)"))
    if member.run.blend is None and origin.startswith("mean of"):
        files = [os.path.join(layout.fold_path(member.path, fold), layout.TEST)
                 for fold in range(member.run.folds_expected or 0)]
    else:
        files = [origin]
    return {EVERY_FOLD: predictions}, files


def _runs_of(member: run_results.Member) -> list[run_results.Member]:
    """The runs whose fold test predictions make the source's: the run itself, or a mean blend's members
    (each a run: a blend of blends has no fold predictions to pair)."""
    if member.run.blend is None:
        return [member]
    runs = []
    for entry in member.run.blend.get("members") or []:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not path or not os.path.isdir(path):
            raise DataError(_problem(member.path, f"its member {entry!r} is not a folder here; pseudo-labels by fold "
                                                  "need its runs (or set pseudo_labels.folds=all)"))
        runs.append(run_results.Member(path))
        if runs[-1].run.blend is not None:
            raise ConfigError(_problem(member.path, f"its member {path} is a blend, which keeps no fold test "
                                                    "predictions; set pseudo_labels.folds=all"))
    if not runs:
        raise DataError(_problem(member.path, f"its {layout.BLEND_FILE} names no member runs"))
    return runs


def _per_fold(member: run_results.Member, folds: int) -> tuple[dict[int, pd.Series], list[str]]:
    """pseudo_labels.folds: matched: fold K's test predictions of the source's runs, averaged over runs."""
    if member.run.folds_expected != folds:
        raise ConfigError(_problem(member.path, f"it has {member.run.folds_expected} folds and this config "
                                                f"{folds}: pseudo_labels.folds: matched pairs fold K with the "
                                                "source's fold K; train on the same folds, or set "
                                                "pseudo_labels.folds=all (the OOF is then optimistic)"))
    runs = _runs_of(member)
    predictions, files = {}, []
    for fold in range(folds):
        columns = []
        for run in runs:
            values, origin = run.test_predictions([fold])
            if values is None or not origin.startswith("mean of"):
                raise DataError(_problem(member.path, f"{run.path} has no test predictions of fold {fold} "
                                                      f"({layout.fold_path(run.path, fold)}/{layout.TEST}): predict "
                                                      f"it first (python infer.py --config ...)"))
            columns.append(values)
            files.append(os.path.join(layout.fold_path(run.path, fold), layout.TEST))
        reference = set(columns[0].index)
        for run, column in zip(runs[1:], columns[1:]):
            if set(column.index) != reference:
                raise DataError(_problem(member.path, f"{run.path} predicts other test images than {runs[0].path} "
                                                      "in fold {fold}; predict every run on the same test records"))
        predictions[fold] = pd.concat(columns, axis=1).mean(axis=1)
    return predictions, files


# --------------------------------------------------------------------------------------------------
# the rule
# --------------------------------------------------------------------------------------------------

def select(config: Config, predictions: pd.Series) -> pd.DataFrame:
    """image_name, label, weight of the test images the confidence rule keeps (in name order)."""
    rule = config.pseudo_labels
    values = predictions.astype(np.float64)
    keep = (values <= rule.low) | (values >= rule.high)
    kept = values[keep].sort_index()
    return pd.DataFrame({"image_name": kept.index.astype(str), "label": kept.to_numpy(),
                         "weight": float(rule.weight)})


def describe_rule(config: Config) -> str:
    rule = config.pseudo_labels
    if rule.low >= rule.high:
        return "every test image"
    return f"prediction <= {rule.low:g} or >= {rule.high:g}"


def check_selection(config: Config, source: Source) -> None:
    """Every fold keeps at least one test image under the rule; ConfigError otherwise (before any training)."""
    folds = [EVERY_FOLD] if source.folds_mode == "all" else list(range(config.data.folds))
    for fold in folds:
        values = source.predictions[fold]
        if select(config, values).empty:
            which = "" if fold == EVERY_FOLD else f" fold {fold}'s"
            raise ConfigError(
                f"no test image passes the pseudo-label rule ({describe_rule(config)}) among{which} {len(values)} "
                f"predictions of {source.path} (they range {values.min():.3f}-{values.max():.3f}): widen "
                "pseudo_labels.low / pseudo_labels.high")


def check_source(config: Config) -> Source | None:
    """read_source and check_selection: everything about the source that needs no records."""
    source = read_source(config)
    if source is not None:
        check_selection(config, source)
    return source


def check_images(source: Source, test_names: set[str], image_folds: pd.Series | None) -> None:
    """The source predicts exactly the config's test images, and (matched folds) each of its folds validated the
    images this config validates in that fold (`image_folds`: image_name -> fold of the config's training
    images); DataError naming the images otherwise."""
    for values in source.predictions.values():
        names = set(values.index.astype(str))
        extra, missing = sorted(names - test_names), sorted(test_names - names)
        if extra or missing:
            what = (f"hold {len(extra)} image(s) that are not in data.test_files (e.g. {first_few(extra, 3)})" if extra
                    else f"lack {len(missing)} test image(s) of data.test_files (e.g. {first_few(missing, 3)})")
            raise DataError(_problem(source.path, f"its test predictions {what}: it was predicted on other test "
                                                  "records; predict it on this config's (python infer.py --config ... "
                                                  "--set data.test_files=...)"))
    if source.folds_mode != "matched" or image_folds is None:
        return
    mine = image_folds.rename("fold_here")
    # images both hold (a dropped duplicate is in neither OOF): the source's fold K never trained on them
    joined = source.oof.set_index("image_name").join(mine, how="inner")
    differ = joined[joined["fold"].astype("float") != joined["fold_here"].astype("float")]
    if len(differ):
        raise DataError(_problem(source.path, f"its folds hold other images than this config's ({len(differ)} image(s) "
                                              f"differ, e.g. {first_few(differ.index, 3)}): pseudo_labels.folds: "
                                              "matched needs a source trained on the same records and folds; set "
                                              "pseudo_labels.folds=all (the OOF is then optimistic)"))


# --------------------------------------------------------------------------------------------------
# a run bound to its source
# --------------------------------------------------------------------------------------------------

def record(config: Config, source: Source | None = None) -> dict | None:
    """{SOURCE_RECORD: identity} for the run's config.yaml (run_config.bind_run), or None when the option is off."""
    source = read_source(config) if source is None else source
    return None if source is None else {run_config.SOURCE_RECORD: source.identity()}


def check_unchanged(config: Config, what: str) -> Source | None:
    """The config's source, after checking that it is the one its run recorded (the run's config.yaml):
    ConfigError (exit status 2) refusing `what` (e.g. 'infer') when its predictions changed since, or it cannot
    be read now."""
    recorded = run_config.saved_record(layout.run_dir(config))
    if not enabled(config) and not recorded.get(run_config.SOURCE_RECORD):
        return None
    try:
        source = read_source(config)
    except (ConfigError, DataError) as error:
        raise ConfigError(f"{what} refused: run {config.name} is bound to its pseudo-label source, which cannot be "
                          f"read now ({error}); restore it, or train the run again (python train.py --config ... "
                          "--force)") from None
    problem = run_config.record_change(recorded, record(config, source))
    if problem:
        raise ConfigError(f"{what} refused: run {config.name} is bound to its pseudo-label source, and {problem}. Its "
                          "models learnt from the earlier labels: restore the source's predictions, or train the run "
                          "again under the new ones (python train.py --config ... --force, or --set name=... for a "
                          "run of its own)")
    return source


def fold_images(config: Config, source: Source, fold: int, valid_names) -> pd.DataFrame:
    """The test images fold `fold` trains on, with their label and weight; CheckFailed when one of them is a
    validation image of the fold (a test image is never validated)."""
    rows = select(config, source.fold_predictions(fold))
    shared = sorted(set(rows["image_name"]) & {str(name) for name in valid_names})
    if shared:
        raise CheckFailed(f"fold {fold}: pseudo-labelled test image(s) {first_few(shared, 3)} are validation images "
                          "of the fold; a test image is never validated: check data.train_files and data.test_files")
    return rows


def fold_summary(config: Config, source: Source, rows: pd.DataFrame, files: int) -> dict:
    """The fold's pseudo-labelled images for data.json."""
    return {"source": source.path, "folds": source.folds_mode, "rule": describe_rule(config), "files": files,
            "images": int(len(rows)), "label_sum": round(float(rows["label"].sum()), 3),
            "weight": float(config.pseudo_labels.weight)}


