"""`make install` on a notebook: the notebook's own Python, its TensorFlow left exactly as it is.

The notebook is played by a fresh virtual environment that sees this project's installed packages
through a .pth file, except that its TensorFlow is registered under the distribution name
`tensorflow-tpu` (as on Kaggle's TPU images), so pip does not count it as `tensorflow`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from melanoma.tools import notebook

REPO = Path(__file__).resolve().parents[2]
LIST_PACKAGES = ("import importlib.metadata as m, json; "
                 "print(json.dumps(sorted({(d.metadata['Name'], d.version) for d in m.distributions()})))")


def test_plan_installs_only_what_is_missing_and_never_tensorflow():
    requirements = ["tensorflow>=2.16", "tf-keras>=2.16", "pandas>=2.0", "efficientnet==1.1.1", "tqdm>=4.60"]
    steps = notebook.install_plan(requirements, {"tensorflow-tpu": "2.18.1", "pandas": "2.2.0", "keras": "3.8.0"})
    assert steps["missing"] == ["efficientnet==1.1.1", "tqdm>=4.60"]
    assert steps["tf_keras"] == "tf-keras==2.18.*"  # TensorFlow's own version, installed without deps
    assert any("tensorflow>=2.16" in line for line in steps["skipped"])
    present = notebook.install_plan(requirements, {"tensorflow": "2.21.0", "tf-keras": "2.21.0", "pandas": "2.2",
                                           "efficientnet": "1.1.1", "tqdm": "4.66"})
    assert present["missing"] == [] and present["tf_keras"] is None
    with pytest.raises(ValueError, match="no TensorFlow"):
        notebook.install_plan(requirements, {"pandas": "2.2.0"})


def test_requirements_are_read_from_pyproject():
    requirements = notebook.project_requirements(str(REPO / "pyproject.toml"), ["dev"])
    names = {notebook.requirement_name(r) for r in requirements}
    assert {"tensorflow", "tf-keras", "efficientnet", "pandas", "pytest"} <= names


def fake_notebook(root: Path) -> Path:
    """A Python whose packages are this environment's, TensorFlow registered as tensorflow-tpu."""
    subprocess.run([sys.executable, "-m", "venv", str(root / "env")], check=True)
    python = root / "env" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    farm = root / "image-packages"
    farm.mkdir()
    for entry in ours.iterdir():
        name = entry.name.lower()
        if (name.startswith(("tensorflow-", "melanoma", "__editable__", "pip", "setuptools", "_distutils_hack",
                             "pkg_resources", "distutils-precedence")) or name.endswith(".pth")):
            continue
        (farm / entry.name).symlink_to(entry)
    version = next(ours.glob("tensorflow-*.dist-info")).name.split("-")[1].removesuffix(".dist-info")
    info = farm / f"tensorflow_tpu-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tensorflow-tpu\nVersion: {version}\n")
    (info / "RECORD").write_text("")
    (site / "notebook-image.pth").write_text(str(farm) + "\n")
    return python


def packages(python: Path) -> set[tuple[str, str]]:
    listed = subprocess.run([str(python), "-c", LIST_PACKAGES], capture_output=True, text=True, check=True)
    return {tuple(item) for item in json.loads(listed.stdout)}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_in_notebook_mode_leaves_tensorflow_alone(tmp_path):
    python = fake_notebook(tmp_path)
    before = packages(python)
    assert ("tensorflow-tpu", next(v for n, v in before if n == "tensorflow-tpu")) in before
    assert not any(name.lower() == "tensorflow" for name, _ in before)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["KAGGLE_KERNEL_RUN_TYPE"] = "Interactive"  # as on a Kaggle notebook
    done = subprocess.run(["make", "install", f"PYTHON={python}", f"NOTEBOOK_STAMP={tmp_path / 'stamp'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TensorFlow left as it was" in done.stdout
    assert (tmp_path / "stamp").exists()
    after = packages(python)
    related = lambda found: {(n, v) for n, v in found if n.lower().startswith(("tensorflow", "tf-", "tf_", "keras"))}
    assert related(after) == related(before)  # nothing TensorFlow-related installed or changed
    assert {name for name, _ in after - before} == {"melanoma"}  # only the project itself was added
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert not [p for p in Path(site).iterdir() if p.name.lower().startswith(("tensorflow", "keras", "tf_keras"))]
    imported = subprocess.run([str(python), "-c", "import melanoma.cli; print(melanoma.cli.__file__)"],
                              capture_output=True, text=True, env=env)
    assert imported.returncode == 0 and str(REPO / "src") in imported.stdout, imported.stderr
