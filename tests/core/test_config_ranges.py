"""Every number in the config schema has a range, checked when the config loads (before TensorFlow): an
absurd value is refused with exit status 2 and a line naming the key, the value and the range."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from melanoma.core import config as config_lib
from melanoma.core.config import RANGES, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "configs" / "base.yaml"


def numeric_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict):
            keys += numeric_keys(value, f"{prefix}{key}.")
        elif (isinstance(value, (int, float)) and not isinstance(value, bool)) or \
                set(config_lib.EXTRA_TYPES.get(f"{prefix}{key}", ())) & {int, float}:
            keys.append(f"{prefix}{key}")
    return keys


def test_every_number_of_the_schema_has_a_range_and_its_default_is_in_it():
    schema = yaml.safe_load(BASE.read_text())
    numbers = numeric_keys(schema)
    unranged = sorted(set(numbers) - set(RANGES) - set(config_lib.RANGED_ELSEWHERE))
    assert unranged == [], "give these keys a range in core/config.py RANGES"
    assert sorted(set(RANGES) - set(numbers)) == [], "RANGES names keys that are not numbers of base.yaml"
    config = load_config(BASE)
    for key in numbers:
        value = config.get_path(key)
        assert value is None or RANGES[key].holds(value), key


@pytest.mark.parametrize("setting, said", [
    ("train.lr_peak_per_image=-1", "'train.lr_peak_per_image' must be more than 0, got -1"),
    ("train.steps_per_epoch=0", "'train.steps_per_epoch' must be at least 1 (or null), got 0"),
    ("augment.probability=1.5", "'augment.probability' must be in [0, 1], got 1.5"),
    ("pseudo_labels.high=1.5", "'pseudo_labels.high' must be in [0, 1]"),
    ("train.epochs=0", "'train.epochs' must be at least 1"),
    ("trees.learning_rate=0", "'trees.learning_rate' must be in (0, 1]"),
    ("train.lr_decay=.nan", "'train.lr_decay' must be in (0, 1], got nan"),
    ("train.lr_peak_per_image=.inf", "'train.lr_peak_per_image' must be more than 0, got inf"),
    ("seed=-3", "'seed' must be at least 0"),
    ("model.color_constancy=0", "'model.color_constancy' must be in [1, 16] (or null), got 0"),
])
def test_an_absurd_number_is_refused_naming_the_key_the_value_and_the_range(setting, said):
    with pytest.raises(ConfigError) as refused:
        load_config(BASE, [setting])
    assert said in str(refused.value)


def test_train_exits_2_before_tensorflow_loads():
    """`python train.py ... --set train.lr_peak_per_image=-1`: one line, exit status 2, and TensorFlow never
    imported."""
    script = ("import sys\nfrom melanoma import cli\nstatus = cli.main(['train', '--config', 'configs/demo.yaml', "
              "'--fold', '0', '--set', 'train.lr_peak_per_image=-1'])\n"
              "print('tensorflow' in sys.modules)\nsys.exit(status)")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout.strip() == "False", done
    assert done.stderr.strip() == "error: config key 'train.lr_peak_per_image' must be more than 0, got -1", done.stderr
