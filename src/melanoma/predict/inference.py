"""Inference: TTA test predictions of every trained fold, averaged into `submissions/<name>.csv`.

The model and its inputs come from the run's saved config (`run_config.load_run_config`): a --set that
contradicts it is refused, file locations and TTA may change. A fold's `test.csv` written at training
time is reused when it was made with the same prediction settings (TTA, augmentation, image size, test
files, seed; its `test.json`); otherwise, or with --recompute, the fold's checkpoint predicts the test set
again. With folds missing, infer stops unless --allow-partial, which writes
`submissions/<name>-folds<K>_<K>.csv`. Beside every submission, `<same name>.json` records the run and
the folds it averages (read by `submit`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd

from melanoma.core import config as config_lib
from melanoma.core import hardware, io_utils, layout
from melanoma.core import run_config
from melanoma.core import fold_state
from melanoma.core.config import Config
from melanoma.core.errors import CheckFailed
from melanoma.data import preflight, record_format, taxonomy
from melanoma.model import network as model_lib
from melanoma.model import tta_prediction
from melanoma.predict import submission
from melanoma.train.families import tabular
from melanoma.train.cnn_training import prediction_settings


def trained_folds(config: Config) -> list[int]:
    """Folds with a checkpoint whose training ran all its epochs; a fold interrupted part-way (its
    state.json short of the last epoch) holds a half-trained best checkpoint and is left out. A fold
    trained under another config than the run's is a ConfigError naming what it was trained as."""
    folds = []
    for k in range(config.data.folds):
        folder = layout.fold_dir(config, k)
        if not io_utils.exists(os.path.join(folder, layout.BEST_MODEL)):
            continue
        state = fold_state.read_state(folder)
        if state is not None and state["epoch"] < state.get("epochs", state["epoch"]):
            print(f"warning: fold {k} was interrupted after epoch {state['epoch']} of {state['epochs']}; "
                  f"left out (finish it with `python train.py --config ... --fold {k} --resume`)", file=sys.stderr)
            continue
        problem = run_config.fold_config_problem(config, folder)
        if problem:
            raise config_lib.ConfigError(f"{problem}; its checkpoint does not belong to this run: train it again "
                                         f"(python train.py --config ... --fold {k} --force)")
        folds.append(k)
    return folds


def load_checkpoint(model, path: str, config: Config, folder: str) -> None:
    """Weights of a fold's checkpoint; one that does not fit the model is a ConfigError naming what was
    trained (from the fold's state.json) instead of Keras' page-long message."""
    try:
        model.load_weights(path)
    except ValueError as error:
        state = fold_state.read_state(folder) or {}
        trained = (f"it was trained as {run_config.trained_as(state['config'])}" if state.get("config")
                   else str(error).strip().splitlines()[0][:200])
        raise config_lib.ConfigError(
            f"{path} does not fit a {run_config.trained_as(fold_state.flatten(config))}: {trained}; predict with "
            "the config the run was trained with (outputs/<name>/config.yaml)") from None


def fold_test_predictions(config: Config, fold: int, recompute: bool = False) -> pd.DataFrame:
    folder = layout.fold_dir(config, fold)
    path, settings_path = os.path.join(folder, layout.TEST), os.path.join(folder, layout.TEST_SETTINGS)
    wanted = prediction_settings(config)
    if not recompute and io_utils.exists(path) and io_utils.exists(settings_path):
        made = json.loads(io_utils.read_text(settings_path))
        if made == wanted:
            print(f"fold {fold}: reusing {path}")
            return io_utils.read_csv(path)
        changed = sorted(key for key in set(made) | set(wanted) if made.get(key) != wanted.get(key))
        print(f"fold {fold}: {path} was predicted with other settings ({', '.join(changed)}); predicting again")

    test_files = record_format.list_files(config.data.test_files, "data.test_files")
    strategy = hardware.get_strategy(cluster=False)
    with strategy.scope():
        model = model_lib.build_model(config, pretrained=False)  # weights come from the checkpoint
        load_checkpoint(model, os.path.join(folder, layout.BEST_MODEL), config, folder)
    frame = tta_prediction.predict_files(model, [f.path for f in test_files], config, "test",
                                     record_format.count_images(test_files), desc=f"fold {fold} test",
                                     strategy=strategy)
    frame = frame[["image_name", "pred"] + taxonomy.class_columns(frame.columns)]  # + p_<CLASS>: diagnosis head
    # test.json goes first and comes back last: a process killed in between leaves a test.csv that no
    # settings vouch for, which is predicted again rather than taken for the new settings' predictions.
    if io_utils.exists(settings_path):
        fold_state.remove(settings_path)
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


def to_submission(predictions: pd.DataFrame, sample_path: str) -> pd.DataFrame:
    """Rows in the sample submission's order; every sample id must have a prediction."""
    sample = io_utils.read_csv(sample_path)
    indexed = predictions.set_index("image_name")["target"]
    missing = sample.loc[~sample["image_name"].isin(indexed.index), "image_name"]
    if len(missing):
        raise CheckFailed(f"{len(missing)} image(s) of {sample_path} have no prediction, first: "
                          f"{missing.head(3).tolist()}: the test records and the sample disagree")
    return pd.DataFrame({"image_name": sample["image_name"],
                         "target": indexed.loc[sample["image_name"]].to_numpy(dtype=np.float64)})


def run_inference(config: Config, recompute: bool = False, force: bool = False, allow_partial: bool = False) -> str:
    if config.model.family == "tabular":  # gradient-boosted trees on features (tabular.py)
        return tabular_inference(config, recompute=recompute, force=force)

    folds = trained_folds(config)
    if not folds:
        raise FileNotFoundError(f"no trained fold in {layout.run_dir(config)}: run "
                                f"`python train.py --config ... --fold all` first")
    missing = sorted(set(range(config.data.folds)) - set(folds))
    if missing and not allow_partial:
        raise config_lib.ConfigError(
            f"fold(s) {', '.join(map(str, missing))} of run {config.name} are not trained ({len(folds)} of "
            f"{config.data.folds} are): train them (python train.py --config ... --fold "
            f"{','.join(map(str, missing))}), or add --allow-partial to write "
            f"{os.path.join(config.submission_dir, layout.submission_name(config, folds))} from folds "
            f"{', '.join(map(str, folds))}")
    if missing:
        print(f"warning: a partial ensemble: folds {missing} are not trained; averaging folds {folds}",
              file=sys.stderr)
    frames = [fold_test_predictions(config, fold, recompute) for fold in folds]
    result = to_submission(ensemble(frames), config.data.sample_submission)
    path = os.path.join(config.submission_dir, layout.submission_name(config, folds))
    submission.write_submission(result, path, sample_path=config.data.sample_submission, force=force)
    record = {"config": config.name, "run": layout.run_dir(config), "folds": folds,
              "folds_expected": config.data.folds, "partial": bool(missing), "tta": config.tta.to_dict(),
              "sha256": submission.sha256_of(path)}
    io_utils.write_text_atomic(layout.record_path(path), json.dumps(record, indent=1) + "\n")
    print(f"submission: {path} ({len(result)} images, {len(folds)} fold(s){' of ' + str(config.data.folds) if missing else ''}, "
          f"TTA {config.tta.steps})")
    return path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                        help="file locations and TTA may change; what defines the model comes from the "
                             "run's saved config, and a --set that contradicts it is refused")
    parser.add_argument("--recompute", action="store_true",
                        help="predict again even where a fold's test.csv matches the settings")
    parser.add_argument("--allow-partial", action="store_true",
                        help="with folds missing, ensemble the trained ones into <name>-folds<K>_<K>.csv")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a differing submission file without keeping a backup")


def command(args: argparse.Namespace) -> int:
    config = config_lib.load_config(args.config, args.set)
    if not config.data.test_files:
        raise config_lib.ConfigError(f"{args.config}: data.test_files is null, so there are no test images "
                                     "to predict; set it to the test records' glob (--set data.test_files=...)")
    # the files to read first (their locations come from this config), then the run's saved config
    preflight.check_inputs(config, "infer")  # before any model is built or file written
    config = run_config.load_run_config(args.config, args.set)
    if not hardware.is_chief():
        kind, index = hardware.worker_task()
        print(f"{kind} {index} of a cluster: inference runs on the chief alone (with its own devices); "
              "nothing to do here")
        return 0
    hardware.get_strategy(cluster=False)  # this machine's devices; before other TensorFlow work
    run_inference(config, recompute=args.recompute, force=args.force, allow_partial=args.allow_partial)
    return 0


def tabular_inference(config: Config, recompute: bool = False, force: bool = False) -> str:
    """Mean of the trained folds' test predictions -> submissions/<name>.csv."""
    tabular.check_config(config)
    folds = [fold for fold in range(config.data.folds) if tabular.fold_finished(config, fold)]
    if not folds:
        raise FileNotFoundError(f"no trained fold in {layout.run_dir(config)}: run "
                                "`python train.py --config ... --fold all` first")
    missing = sorted(set(range(config.data.folds)) - set(folds))
    if missing:
        print(f"warning: folds {missing} are not trained; ensembling folds {folds}")
    cache: dict = {}
    frames = [tabular.fold_test_predictions(config, fold, recompute, cache) for fold in folds]
    result = to_submission(ensemble(frames), config.data.sample_submission)
    path = os.path.join(config.submission_dir, f"{config.name}.csv")
    submission.write_submission(result, path, sample_path=config.data.sample_submission, force=force)
    print(f"submission: {path} ({len(result)} images, {len(folds)} fold(s), tabular)")
    return path
