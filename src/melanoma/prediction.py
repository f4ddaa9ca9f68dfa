"""Predictions with test-time augmentation, shared by training (OOF) and inference (test).

Each batch carries its images' names, so predictions are matched to images by name. With V views per
image, the model sees V x B images and the V predictions of each image are averaged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from melanoma import augment, integrity, pipeline, progress as progress_lib
from melanoma.errors import CheckFailed, DataError


def tta_augmenter(config, seed: int):
    if config.tta.steps and config.tta.mode == "random":
        return augment.make_augmenter(config.augment, seed=seed)
    return None


def predict_files(model, paths: list[str], config, split: str, count: int | None = None,
                  desc: str = "predict", seed: int | None = None, tta: bool = True,
                  progress: bool = True) -> pd.DataFrame:
    """image_name, pred (+ patient_id, target for train records), one row per record, in file order.

    tta=False predicts the plain images whatever the config's tta section says (per-epoch validation).
    A bad record is a DataError naming its file and image; train records are skipped instead under
    data.skip_corrupt (test records never are). `count`, when given, is checked against the rows.
    """
    seed = config.seed if seed is None else seed
    steps = config.tta.steps if tta else 0
    skip = bool(config.data.skip_corrupt) and split == "train"
    dataset, views = pipeline.prediction_dataset(
        paths, config, split, tta_steps=steps, tta_mode=config.tta.mode,
        batch_size=config.tta.batch_size, augmenter=tta_augmenter(config, seed) if steps else None,
        skip_corrupt=skip)
    names, preds, extras = [], [], {"target": [], "patient_id": []}
    hint = integrity.HINT_TRAIN if split == "train" else integrity.HINT_PREDICT
    with integrity.named_data_errors(paths, split, config.data.image_size, desc, hint), \
            progress_lib.bar(total=count, desc=desc, unit="img", leave=False, disable=not progress) as bar:
        for batch in dataset:
            output = np.asarray(model.predict_on_batch(batch["inputs"]), dtype=np.float64)
            per_image = output.reshape(-1, views).mean(axis=1)
            names.extend(n.decode() for n in batch["image_name"].numpy())
            preds.append(per_image)
            for key in extras:
                if key in batch:
                    extras[key].append(batch[key].numpy())
            bar.update(len(per_image))
    frame = pd.DataFrame({"image_name": names,
                          "pred": np.concatenate(preds) if preds else np.array([], dtype=np.float64)})
    for key, values in extras.items():
        if values:
            frame[key] = np.concatenate(values)
    if count is not None and len(frame) != count:
        # A file cut at a record boundary reads without an error; only the count shows it.
        scans = integrity.scan_files(paths, split, config.data.image_size)
        integrity.raise_if_bad(scans, desc, hint)
        raise DataError(f"{desc}: {len(frame)} images predicted but the file names promise {count}")
    if not np.all(np.isfinite(frame["pred"])):
        bad = frame.loc[~np.isfinite(frame["pred"]), "image_name"].head(3).tolist()
        raise CheckFailed(f"non-finite predictions for {bad}: the model's weights are broken")
    return frame
