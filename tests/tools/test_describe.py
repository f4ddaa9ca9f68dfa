"""`describe`: every config's family describes it without training, as JSON; the CNN's facts (strategy,
batch, learning rates, parameters) and the records found."""
from __future__ import annotations

import json

import keras
import pytest
from tiny_records import REPO, SIZE, write_tiny_records

from melanoma import cli
from melanoma.core import config as config_lib
from melanoma.train.families import family as family_lib

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "base.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_records(tmp_path_factory.mktemp("tiny") / "records")


# Building EfficientNet-B4..B7 at 384-768 px only to count their parameters takes most of this test's
# time; those configs are described in `make test-full` (every config still loads and validates in
# test_config.py, and describe runs on the smaller recipes here).
HEAVY = {"b5_384_ext", "b6_512_meta", "b7_768", "diagnosis_b4_512"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p
                                  for p in CONFIGS], ids=[p.stem for p in CONFIGS])
def test_describe_every_config(path):
    config = config_lib.load_config(path)
    family = family_lib.lookup(config)
    facts = family.describe(config)
    json.dumps(facts)
    assert facts["name"] == path.stem and facts["family"] == family.name == config.model.family
    if family.name in ("tabular", "tbp_trees"):
        assert facts["model"] == "HistGradientBoostingClassifier" and facts["folds"] == config.data.folds
        assert facts["trees"]["max_iter"] == config.trees.max_iter
        stacked = [group for group in facts["feature_groups"] if group.startswith("stacking: ")]
        assert stacked == [f"stacking: run_{name}" for name in config.features.from_runs or []]
        return
    assert facts["backbone"] == config.model.backbone
    assert facts["input_size"] == config.data.image_size
    assert facts["replicas"] >= 1
    assert facts["global_batch_size"] == config.train.batch_size * facts["replicas"]
    assert facts["peak_learning_rate"] == pytest.approx(config.train.lr_peak_per_image * facts["global_batch_size"])
    assert len(facts["learning_rates"]) == config.train.epochs
    assert facts["precision"] == "float32"  # this machine has no accelerator
    assert facts["parameters"] > facts["trainable_parameters"] > 3_000_000
    assert keras.mixed_precision.global_policy().name == "float32"


def test_describe_command_prints_json(capsys):
    status = cli.main(["describe", "--config", str(REPO / "configs" / "b0_256.yaml"),
                       "--set", "train.batch_size=8", "model.head=diagnosis", "model.metadata_input=true"])
    assert status == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["global_batch_size"] == 8 * facts["replicas"]
    assert facts["head"] == "diagnosis" and facts["metadata"] is True
    assert facts["weights"] == "imagenet" and "weights_cached" in facts
    assert facts["strategy"] == "DefaultStrategy" and facts["accelerator"] == "cpu"


def test_describe_reports_records_when_present(tiny):
    config = config_lib.load_config(REPO / "configs" / "b0_256.yaml", [
        f"data.train_files={tiny['train']}", "data.folds=2", "train.batch_size=4", f"data.image_size={SIZE}"])
    facts = family_lib.lookup(config).describe(config)
    assert facts["train_files_found"] == 4 and facts["train_images"] == 32
    assert facts["steps_per_epoch"] == 16 // 4  # fold 0 trains on 2 of the 4 parts


def test_describe_a_tabular_config_loads_no_tensorflow():
    """The trees' description reads the config and the records' file names only."""
    import subprocess
    import sys

    probe = ("import json, sys\n"
             "from melanoma import cli\n"
             "status = cli.main(['describe', '--config', 'configs/tabular.yaml'])\n"
             "print(json.dumps({'status': status, 'tensorflow': 'tensorflow' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last == {"status": 0, "tensorflow": False}, done.stderr
