"""Predictions with test-time augmentation, shared by training (OOF) and inference (test).

Each batch carries its images' names, so predictions are matched to images by name. With V views per
image, the model sees V x B images and the V predictions of each image are averaged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from melanoma import augment, pipeline


def tta_augmenter(config, seed: int):
    if config.tta.steps and config.tta.mode == "random":
        return augment.make_augmenter(config.augment, seed=seed)
    return None


def predict_files(model, paths: list[str], config, split: str, count: int | None = None,
                  desc: str = "predict", seed: int | None = None, tta: bool = True,
                  progress: bool = True) -> pd.DataFrame:
    """image_name, pred (+ patient_id, target for train records), one row per record, in file order.

    tta=False predicts the plain images whatever the config's tta section says (per-epoch validation).
    """
    seed = config.seed if seed is None else seed
    steps = config.tta.steps if tta else 0
    dataset, views = pipeline.prediction_dataset(
        paths, config, split, tta_steps=steps, tta_mode=config.tta.mode,
        batch_size=config.tta.batch_size, augmenter=tta_augmenter(config, seed) if steps else None)
    names, preds, extras = [], [], {"target": [], "patient_id": []}
    with tqdm(total=count, desc=desc, unit="img", leave=False, disable=not progress) as bar:
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
    if not np.all(np.isfinite(frame["pred"])):
        bad = frame.loc[~np.isfinite(frame["pred"]), "image_name"].head(3).tolist()
        raise FloatingPointError(f"non-finite predictions for {bad}: the model's weights are broken")
    return frame
