"""Learning-rate schedules (melanoma.train.schedules), per epoch, against their formulas."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from melanoma.core import config as config_lib
from melanoma.train import schedules

REPO = Path(__file__).resolve().parents[1]


def train_section(*overrides):
    return config_lib.load_config(REPO / "configs" / "base.yaml", list(overrides)).train


def test_base_defaults_are_the_public_recipe():
    train = train_section()
    assert (train.schedule, train.lr_start, train.lr_max, train.lr_min) == ("rampup", 5e-6, 1.25e-6, 1e-6)
    assert (train.lr_ramp_epochs, train.lr_sustain_epochs, train.lr_decay) == (5, 0, 0.8)


@pytest.mark.parametrize("replicas, batch_size", [(1, 32), (8, 32), (8, 16), (2, 64)])
def test_peak_scales_with_replicas_and_batch(replicas, batch_size):
    train = train_section(f"train.batch_size={batch_size}")
    global_batch = replicas * batch_size
    assert schedules.peak_rate(train, global_batch) == pytest.approx(1.25e-6 * replicas * batch_size)


@pytest.mark.parametrize("sustain", [0, 2])
def test_rampup_sustain_exponential_decay(sustain):
    train = train_section("train.epochs=15", f"train.lr_sustain_epochs={sustain}")
    global_batch = 8 * 32  # a TPU v3-8 with 32 images per replica
    start, peak, floor, ramp, decay = 5e-6, 1.25e-6 * global_batch, 1e-6, 5, 0.8
    for epoch in range(15):
        if epoch < ramp:
            expected = start + (peak - start) * epoch / ramp
        elif epoch < ramp + sustain:
            expected = peak
        else:
            expected = (peak - floor) * decay ** (epoch - ramp - sustain) + floor
        assert schedules.learning_rate(epoch, train, global_batch) == pytest.approx(expected, rel=1e-12)


def test_rampup_known_values():
    train = train_section()
    rates = schedules.learning_rates(train, 256)  # peak 3.2e-4
    assert len(rates) == train.epochs == 12
    assert rates[0] == pytest.approx(5e-6)
    assert rates[1] == pytest.approx(5e-6 + (3.2e-4 - 5e-6) / 5)
    assert rates[5] == pytest.approx(3.2e-4)
    assert rates[6] == pytest.approx(0.8 * (3.2e-4 - 1e-6) + 1e-6)
    assert rates[11] == pytest.approx(0.8 ** 6 * (3.2e-4 - 1e-6) + 1e-6)
    assert max(rates) == rates[5]


@pytest.mark.parametrize("epochs, ramp, sustain", [(12, 5, 0), (10, 2, 1), (6, 0, 0)])
def test_cosine_with_warmup(epochs, ramp, sustain):
    train = train_section("train.schedule=cosine", f"train.epochs={epochs}", f"train.lr_ramp_epochs={ramp}",
                          f"train.lr_sustain_epochs={sustain}", "train.lr_min=1.0e-6")
    global_batch = 64
    start, peak, floor = 5e-6, 1.25e-6 * global_batch, 1e-6
    span = epochs - 1 - ramp - sustain
    rates = schedules.learning_rates(train, global_batch)
    for epoch, rate in enumerate(rates):
        if epoch < ramp:
            expected = start + (peak - start) * epoch / ramp
        elif epoch < ramp + sustain:
            expected = peak
        else:
            progress = (epoch - ramp - sustain) / span
            expected = floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
        assert rate == pytest.approx(expected, rel=1e-12)
    assert rates[ramp + sustain] == pytest.approx(peak)
    assert rates[-1] == pytest.approx(floor)
    decay = rates[ramp + sustain:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_cosine_midpoint_is_halfway():
    train = train_section("train.schedule=cosine", "train.epochs=11", "train.lr_ramp_epochs=0")
    rates = schedules.learning_rates(train, 100)
    assert rates[5] == pytest.approx((1.25e-4 + 1e-6) / 2)


def test_schedule_reaches_the_optimizer(tmp_path):
    """The Keras callback that training uses sets the optimizer's rate to the formula's value."""
    import keras

    from melanoma.train import training

    config = config_lib.load_config(REPO / "configs" / "demo.yaml", ["train.schedule=cosine"])
    callbacks, _, _ = training.make_callbacks(config, str(tmp_path), 32, [])
    scheduler = next(c for c in callbacks if isinstance(c, keras.callbacks.LearningRateScheduler))
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    scheduler.set_model(model)
    for epoch in range(config.train.epochs):
        scheduler.on_epoch_begin(epoch)
        assert float(model.optimizer.learning_rate) == pytest.approx(
            schedules.learning_rate(epoch, config.train, 32), rel=1e-6)
