"""Per-epoch learning-rate schedules; every number comes from the config's `train` section."""
from __future__ import annotations

import math

from melanoma.core.config import Config


def peak_rate(train_config: Config, global_batch: int) -> float:
    """The peak scales with the global batch (batch_size x replicas): lr_peak_per_image x global batch."""
    return train_config.lr_peak_per_image * global_batch


def learning_rate(epoch: int, train_config: Config, global_batch: int) -> float:
    """Rate for a 0-based epoch.

    rampup: linear from lr_start to the peak over lr_ramp_epochs, held for lr_sustain_epochs, then
    (peak - lr_min) x lr_decay^(epochs past the sustain) + lr_min.
    cosine: the same linear warm-up, then a half cosine from the peak down to lr_min at the last epoch.
    """
    peak = peak_rate(train_config, global_batch)
    ramp, sustain = train_config.lr_ramp_epochs, train_config.lr_sustain_epochs
    if epoch < ramp:
        return (peak - train_config.lr_start) / ramp * epoch + train_config.lr_start
    if epoch < ramp + sustain:
        return peak
    if train_config.schedule == "rampup":
        return (peak - train_config.lr_min) * train_config.lr_decay ** (epoch - ramp - sustain) \
            + train_config.lr_min
    if train_config.schedule == "cosine":
        span = max(1, train_config.epochs - 1 - ramp - sustain)
        progress = min(1.0, (epoch - ramp - sustain) / span)
        return train_config.lr_min + 0.5 * (peak - train_config.lr_min) * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule '{train_config.schedule}'; choose rampup or cosine")


def learning_rates(train_config: Config, global_batch: int) -> list[float]:
    """The rate of every epoch of a run (0-based epochs 0 .. epochs - 1)."""
    return [learning_rate(epoch, train_config, global_batch) for epoch in range(train_config.epochs)]
