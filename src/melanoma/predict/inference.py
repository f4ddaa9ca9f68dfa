"""Inference: each trained fold's test predictions, averaged into `submissions/<name>.csv`, for every family
(`submission.file_name` names another file, `submission.id_column` the sample's id column).

The model and its inputs come from the run's saved config (`run_config.load_run_config`): a --set that
contradicts it is refused, file locations and TTA may change. Each fold's test predictions are made by the
run's model family (train/families/) and kept in `fold<K>/test.csv`, with what they depend on in
`fold<K>/test.json` (`prediction_settings`); a later infer reuses them when those are the same, and
predicts again otherwise (or with --recompute). With folds missing, infer stops (exit status 2) unless
--allow-partial, which writes `submissions/<name>-folds<K>_<K>.csv`. Beside every submission,
`<same name>.json` records the run and the folds it averages (read by `submit`). Everything is checked
before TensorFlow loads: the config, the test files, the sample submission, and that output_dir and
submission_dir can be written. One writer per run: infer holds the run's lock (runs/run_lock.py).
With --seeds N, each of the config's seed runs is predicted so, then their mean is written
(predict/seed_ensemble.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

from melanoma.core import arguments, environment, io_utils
from melanoma.core import config as config_lib
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed, ConfigError
from melanoma.data import preflight, pseudo_labels, record_format
from melanoma.predict import seed_ensemble, submission
from melanoma.runs import fold_state, layout, run_config, run_lock, seeds
from melanoma.train.families import family as family_lib


def trained_folds(config: Config, family: family_lib.Family) -> list[int]:
    """Folds that finished training (their model and OOF are there). A fold interrupted part-way is left
    out with a warning; a fold trained under another config than the run's is a ConfigError naming what
    it was trained as."""
    folds = []
    for k in range(config.data.folds):
        folder = layout.fold_dir(config, k)
        if not family.fold_finished(config, k):
            state = fold_state.read_state(folder)
            if state is not None:
                print(f"warning: fold {k} was interrupted after epoch {state['epoch']} of "
                      f"{state.get('epochs', '?')}; left out (finish it with `python train.py --config ... "
                      f"--fold {k} --resume`)", file=sys.stderr)
            continue
        problem = run_config.fold_config_problem(config, folder, family_lib.trained_as)
        if problem:
            raise ConfigError(f"{problem}; its model does not belong to this run: train it again "
                              f"(python train.py --config ... --fold {k} --force)")
        folds.append(k)
    return folds


def prediction_settings(config: Config, family: family_lib.Family) -> dict:
    """What a fold's test predictions depend on besides its model: the test files, the seed, and the
    config keys the family names (the CNN's TTA, augmentation and image size; the trees' features)."""
    settings = {"family": family.name, "test_files": config.data.test_files, "seed": config.seed}
    for key in family.prediction_keys:
        value = config.get_path(key)
        settings[key.rsplit(".", 1)[-1]] = value.to_dict() if hasattr(value, "to_dict") else value
    return settings


def fold_test_predictions(config: Config, family: family_lib.Family, predictor, fold: int,
                          recompute: bool = False) -> pd.DataFrame:
    """The fold's test.csv when its test.json says it was made under the same settings; otherwise the
    family's `predictor` predicts the test files again, and test.csv and test.json are rewritten."""
    folder = layout.fold_dir(config, fold)
    path, settings_path = os.path.join(folder, layout.TEST), os.path.join(folder, layout.TEST_SETTINGS)
    wanted = prediction_settings(config, family)
    if not recompute and io_utils.exists(path) and io_utils.exists(settings_path):
        made = json.loads(io_utils.read_text(settings_path))
        if made == wanted:
            print(f"fold {fold}: reusing {path}")
            return io_utils.read_csv(path, dtype={"image_name": str})
        changed = sorted(key for key in set(made) | set(wanted) if made.get(key) != wanted.get(key))
        print(f"fold {fold}: {path} was predicted with other settings ({', '.join(changed)}); predicting again")
    test_files = record_format.list_files(config.data.test_files, "data.test_files")
    frame = predictor.predict_fold(config, fold, test_files)
    # test.json goes first and comes back last: a process killed in between leaves a test.csv that no
    # settings vouch for, which is predicted again rather than taken for the new settings' predictions.
    if io_utils.exists(settings_path):
        io_utils.remove(settings_path)
    io_utils.write_csv_atomic(frame, path)
    io_utils.write_text_atomic(settings_path, json.dumps(wanted))
    return frame


def ensemble(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean of the folds' predictions, matched by image_name (every fold must cover the same images)."""
    merged = None
    for index, frame in enumerate(frames):
        if frame["image_name"].duplicated().any():
            raise CheckFailed(f"fold predictions {index} name an image twice")
        part = frame.set_index("image_name")["pred"].rename(index)
        merged = part.to_frame() if merged is None else merged.join(part, how="outer")
    if merged.isna().any().any():
        missing = merged[merged.isna().any(axis=1)].index[:3].tolist()
        raise CheckFailed(f"folds disagree on the test images (e.g. {missing} missing from one fold)")
    return pd.DataFrame({"image_name": merged.index, "target": merged.mean(axis=1).to_numpy()})


def to_submission(predictions: pd.DataFrame, sample_path: str, id_column: str = "image_name") -> pd.DataFrame:
    """Rows in the sample submission's order, under its id column (the records' image_name is that id);
    every sample id must have a prediction."""
    sample = io_utils.read_csv(sample_path, dtype={id_column: str})
    indexed = predictions.set_index("image_name")["target"]
    missing = sample.loc[~sample[id_column].isin(indexed.index), id_column]
    if len(missing):
        raise CheckFailed(f"{len(missing)} image(s) of {sample_path} have no prediction, first: "
                          f"{missing.head(3).tolist()}: the test records and the sample disagree")
    return pd.DataFrame({id_column: sample[id_column],
                         "target": indexed.loc[sample[id_column]].to_numpy(dtype=np.float64)})


def submission_stem(config: Config) -> str:
    """The submission's file name without .csv: submission.file_name's, else the run's name."""
    return os.path.splitext(config.submission.file_name)[0] if config.submission.file_name else config.name


def run_inference(config: Config, recompute: bool = False, force: bool = False, allow_partial: bool = False) -> str:
    """Every trained fold's test predictions, ensembled into the submission file and its record."""
    family = family_lib.lookup(config)
    folds = trained_folds(config, family)
    if not folds:
        raise FileNotFoundError(f"no trained fold in {layout.run_dir(config)}: run "
                                f"`python train.py --config ... --fold all` first")
    stem = submission_stem(config)
    path = os.path.join(config.submission_dir, layout.submission_name(stem, folds, config.data.folds))
    submission.partial_rule(f"run {config.name}", folds, config.data.folds, path, allow_partial,
                            "python train.py --config ... --fold {missing}")
    for folder in [layout.run_dir(config)] + [layout.fold_dir(config, fold) for fold in folds]:
        io_utils.remove_leftovers(folder)  # what a killed train or infer left (this run's lock is held)
    io_utils.remove_leftovers(config.submission_dir, lambda found: layout.same_submission(found, stem))
    predictor = family.prediction(config)
    frames = [fold_test_predictions(config, family, predictor, fold, recompute) for fold in folds]
    id_column = config.submission.id_column
    result = to_submission(ensemble(frames), config.data.sample_submission, id_column)
    submission.write_submission(result, path, sample_path=config.data.sample_submission, force=force,
                                id_column=id_column)
    submission.write_record(path, {"config": config.name, "run": layout.run_dir(config), "family": family.name,
                                   "folds": folds, "folds_expected": config.data.folds,
                                   "prediction": prediction_settings(config, family),
                                   "sample_submission": config.data.sample_submission})
    partial = len(folds) < config.data.folds
    print(f"submission: {path} ({len(result)} images, {len(folds)} fold(s)"
          f"{' of ' + str(config.data.folds) if partial else ''}, {family.label(config).predicted_with})")
    return path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    arguments.add_config_arguments(
        parser, set_help="file locations and TTA may change; what defines the model comes from the run's saved "
                         "config, and a --set that contradicts it is refused",
        force_help="overwrite a differing submission file without keeping a backup",
        seeds_help="predict the config's N seed runs <name>-s0 .. <name>-s<N-1> (train.py --seeds N) and write "
                   "their mean: submissions/<name>-seeds.csv, outputs/<name>-seeds/")
    parser.add_argument("--recompute", action="store_true",
                        help="predict again even where a fold's test.csv matches the settings")
    parser.add_argument("--allow-partial", action="store_true",
                        help="with folds missing, ensemble the trained ones into <name>-folds<K>_<K>.csv")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="with --seeds: average seed runs trained with other settings too, into <name>-seeds-mixed")


def command(args: argparse.Namespace) -> int:
    seeds.check_count(args.seeds)
    if args.seeds:
        return infer_seeds(args)
    checked_config(args, args.set)
    if not environment.is_chief():
        kind, index = environment.worker_task()
        print(f"{kind} {index} of a cluster: inference runs on the chief alone (with its own devices); "
              "nothing to do here")
        return 0
    infer_run(args, args.set)
    return 0


def checked_config(args: argparse.Namespace, overrides: list[str]) -> Config:
    """The config, its family's checks, the environment and the files to read, before any work."""
    config = config_lib.load_config(args.config, overrides)
    family = family_lib.lookup(config)
    family.check(config)
    environment.check()
    if not config.data.test_files:
        raise ConfigError(f"{args.config}: data.test_files is null, so there are no test images to predict; "
                          "set it to the test records' glob (--set data.test_files=...)")
    # the files to read first (their locations come from this config), then the run's saved config
    preflight.check_inference(config)
    return config


def infer_run(args: argparse.Namespace, overrides: list[str]) -> tuple[Config, str]:
    """One run's test predictions and submission, under the run's saved config and lock: (config, path)."""
    config = run_config.load_run_config(args.config, overrides)
    pseudo_labels.check_unchanged(config, "infer")  # a run bound to a pseudo-label source that changed since: exit 2
    with run_lock.hold(config, "infer"):
        path = run_inference(config, recompute=args.recompute, force=args.force, allow_partial=args.allow_partial)
    return config, path


def infer_seeds(args: argparse.Namespace) -> int:
    """--seeds N: each seed run of the config (runs/seeds.py) predicted as one run is, then the seeds' mean
    (seed_ensemble). Every seed run is checked to be there before the first predicts."""
    base = checked_config(args, args.set)
    runs = seeds.seed_runs(base, args.seeds, args.set)
    seed_runs = []
    for given in runs:
        checked_config(args, given)
        try:
            seed_runs.append(run_config.load_run_config(args.config, given, quiet=True))
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error} with --seeds {args.seeds}") from None
        pseudo_labels.check_unchanged(seed_runs[-1], "infer")
    # as trained (each run's saved config), before any predicts
    mixed = seeds.check_one_experiment(seed_runs, args.allow_mixed, f"the seeds' mean of {base.name}")
    if not environment.is_chief():
        print("inference runs on the chief alone; nothing to do here")
        return 0
    done = [infer_run(args, given) for given in runs]
    partial = [config.name for config, path in done if os.path.basename(path) != f"{config.name}.csv"]
    if partial:
        print(f"warning: {', '.join(partial)} hold(s) some folds only (--allow-partial): no seed ensemble is "
              f"written; train every fold of every seed (python train.py --config ... --seeds {args.seeds})",
              file=sys.stderr)
        return 0
    seed_ensemble.write(base, [config for config, _ in done], [path for _, path in done], force=args.force,
                        mixed=mixed)
    return 0
