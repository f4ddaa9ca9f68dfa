"""Learning-rate schedules (melanoma.train.schedules), per epoch, against values worked by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from melanoma.core import config as config_lib
from melanoma.train import schedules

REPO = Path(__file__).resolve().parents[2]


def train_section(*overrides):
    return config_lib.load_config(REPO / "configs" / "base.yaml", list(overrides)).train


@pytest.mark.parametrize("replicas, batch_size", [(1, 32), (8, 32), (8, 16), (2, 64)])
def test_peak_scales_with_replicas_and_batch(replicas, batch_size):
    train = train_section(f"train.batch_size={batch_size}")
    global_batch = replicas * batch_size
    assert schedules.peak_rate(train, global_batch) == pytest.approx(1.25e-6 * replicas * batch_size)


# Worked by hand for a TPU v3-8 with 32 images per replica (global batch 256): start 5e-6, peak
# 1.25e-6 x 256 = 3.2e-4, floor 1e-6, 5 ramp epochs (steps of 3.15e-4 / 5 = 6.3e-5), decay 0.8 on 3.19e-4.
RAMPUP_WORKED = {
    0: [5e-6, 6.8e-5, 1.31e-4, 1.94e-4, 2.57e-4, 3.2e-4, 2.562e-4, 2.0516e-4, 1.64328e-4],
    2: [5e-6, 6.8e-5, 1.31e-4, 1.94e-4, 2.57e-4, 3.2e-4, 3.2e-4, 3.2e-4, 2.562e-4],
}


@pytest.mark.parametrize("sustain", [0, 2])
def test_rampup_sustain_exponential_decay(sustain):
    train = train_section("train.epochs=15", f"train.lr_sustain_epochs={sustain}")
    rates = schedules.learning_rates(train, 8 * 32)
    assert rates[:9] == pytest.approx(RAMPUP_WORKED[sustain], rel=1e-9)
    assert rates[14] == pytest.approx(0.8 ** (9 - sustain) * 3.19e-4 + 1e-6, rel=1e-9)


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


# Worked by hand: global batch 64 gives a peak of 8e-5; start 5e-6, floor 1e-6, so the half cosine spans
# 7.9e-5 and its value is 1e-6 + 3.95e-5 x (1 + cos(pi x progress)) over the epochs after the sustain.
COSINE_WORKED = {
    # 10 epochs, 2 ramp, 1 sustain: the cosine runs over epochs 3..9 (progress k / 6)
    (10, 2, 1): [5e-6, 4.25e-5, 8e-5, 8e-5, 7.470800e-5, 6.025e-5, 4.05e-5, 2.075e-5, 6.29200e-6, 1e-6],
    # 6 epochs, no warm-up: progress k / 5, cos(pi/5) = 0.80901699, cos(2 pi/5) = 0.30901699
    (6, 0, 0): [8e-5, 7.2456171e-5, 5.2706171e-5, 2.8293829e-5, 8.543829e-6, 1e-6],
}


@pytest.mark.parametrize("epochs, ramp, sustain", sorted(COSINE_WORKED))
def test_cosine_with_warmup(epochs, ramp, sustain):
    train = train_section("train.schedule=cosine", f"train.epochs={epochs}", f"train.lr_ramp_epochs={ramp}",
                          f"train.lr_sustain_epochs={sustain}", "train.lr_min=1.0e-6")
    assert schedules.learning_rates(train, 64) == pytest.approx(COSINE_WORKED[epochs, ramp, sustain], rel=1e-6)


def test_cosine_midpoint_is_halfway():
    train = train_section("train.schedule=cosine", "train.epochs=11", "train.lr_ramp_epochs=0")
    rates = schedules.learning_rates(train, 100)
    assert rates[5] == pytest.approx((1.25e-4 + 1e-6) / 2)


def test_schedule_reaches_the_optimizer(tmp_path):
    """The Keras callback that training uses sets the optimizer's rate to the formula's value."""
    import keras

    from melanoma.train import cnn_training

    config = config_lib.load_config(REPO / "configs" / "demo.yaml", ["train.schedule=cosine"])
    callbacks, _, _ = cnn_training.make_callbacks(config, str(tmp_path), 32, [])
    scheduler = next(c for c in callbacks if isinstance(c, keras.callbacks.LearningRateScheduler))
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    scheduler.set_model(model)
    for epoch in range(config.train.epochs):
        scheduler.on_epoch_begin(epoch)
        assert float(model.optimizer.learning_rate) == pytest.approx(
            schedules.learning_rate(epoch, config.train, 32), rel=1e-6)
