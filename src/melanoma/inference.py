"""Inference: TTA test predictions of every trained fold, averaged into `submissions/<name>.csv`.

A fold's `test.csv` written at training time is reused when it was made with the same prediction
settings (TTA, augmentation, image size, test files, seed); otherwise, or with --recompute, the fold's
checkpoint predicts the test set again.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pandas as pd

from melanoma import config as config_lib
from melanoma import io_utils
from melanoma.errors import CheckFailed


def trained_folds(config) -> list[int]:
    """Folds with a checkpoint whose training ran all its epochs; a fold interrupted part-way (its
    state.json short of the last epoch) holds a half-trained best checkpoint and is left out."""
    from melanoma import runstate
    from melanoma.training import fold_dir

    folds = []
    for k in range(config.data.folds):
        folder = fold_dir(config, k)
        if not io_utils.exists(os.path.join(folder, "model.keras")):
            continue
        state = runstate.read_state(folder)
        if state is not None and state["epoch"] < state.get("epochs", state["epoch"]):
            print(f"warning: fold {k} was interrupted after epoch {state['epoch']} of {state['epochs']}; "
                  f"left out (finish it with `python train.py --config ... --fold {k} --resume`)")
            continue
        folds.append(k)
    return folds


def fold_test_predictions(config, fold: int, recompute: bool = False) -> pd.DataFrame:
    from melanoma.training import fold_dir, prediction_settings

    folder = fold_dir(config, fold)
    path, settings_path = os.path.join(folder, "test.csv"), os.path.join(folder, "test.json")
    wanted = prediction_settings(config)
    if not recompute and io_utils.exists(path) and io_utils.exists(settings_path):
        if json.loads(io_utils.read_text(settings_path)) == wanted:
            print(f"fold {fold}: reusing {path}")
            return io_utils.read_csv(path)
    from melanoma import model as model_lib, pipeline, prediction

    test_files = pipeline.list_files(config.data.test_files, "data.test_files")
    model = model_lib.build_model(config, pretrained=False)  # weights come from the checkpoint
    model.load_weights(os.path.join(folder, "model.keras"))
    frame = prediction.predict_files(model, [f.path for f in test_files], config, "test",
                                     pipeline.count_images(test_files), desc=f"fold {fold} test")
    frame = frame[["image_name", "pred"]]
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


def run_inference(config, recompute: bool = False, force: bool = False) -> str:
    from melanoma import submission

    if config.model.family == "tabular":  # gradient-boosted trees on features (tabular.py)
        from melanoma import tabular

        return tabular.run_inference(config, recompute=recompute, force=force)

    folds = trained_folds(config)
    if not folds:
        raise FileNotFoundError(f"no trained fold in {config_lib.run_dir(config)}: run "
                                f"`python train.py --config ... --fold all` first")
    missing = sorted(set(range(config.data.folds)) - set(folds))
    if missing:
        print(f"warning: folds {missing} are not trained; ensembling folds {folds}")
    frames = [fold_test_predictions(config, fold, recompute) for fold in folds]
    result = to_submission(ensemble(frames), config.data.sample_submission)
    path = os.path.join(config.submission_dir, f"{config.name}.csv")
    submission.write_submission(result, path, sample_path=config.data.sample_submission, force=force)
    print(f"submission: {path} ({len(result)} images, {len(folds)} fold(s), TTA {config.tta.steps})")
    return path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend")
    parser.add_argument("--recompute", action="store_true",
                        help="predict again even where a fold's test.csv matches the settings")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a differing submission file without keeping a backup")


def command(args: argparse.Namespace) -> int:
    config = config_lib.load_config(args.config, args.set)
    config_lib.check_inputs(config, "infer")  # before any model is built or file written
    run_inference(config, recompute=args.recompute, force=args.force)
    return 0
