"""Install the project into a notebook's own Python (Kaggle, Colab) without touching its TensorFlow.

`make install` runs this file on a notebook (see the Makefile): `python src/melanoma/tools/notebook.py`.
A notebook's TensorFlow is built for its GPU or TPU, and Kaggle's TPU images ship it under the
distribution name `tensorflow-tpu`, which pip does not count as `tensorflow`: letting pip resolve the
project's dependencies would install a second, plain TensorFlow over it. So this script
- never installs, upgrades or replaces any TensorFlow distribution (`TENSORFLOW_DISTRIBUTIONS`), nor
  the Keras that came with it;
- installs the project's other dependencies only where they are missing, under a constraints file
  that pins the installed TensorFlow, Keras and numpy to their versions, so nothing can move them;
- installs `tf-keras` (multi-worker training) only when missing, at TensorFlow's own version, without
  its dependencies (it depends on `tensorflow`, which pip cannot see on a TPU image);
- installs the project itself editable, without dependencies and without build isolation;
- checks afterwards that no TensorFlow-related distribution appeared, vanished or changed version.

Offline (`--wheels DIR`, a folder that `make wheels` wrote and a notebook holds as a dataset): the same
steps with pip given `--no-index --find-links DIR`, so nothing is fetched from anywhere; the requirements
come from the project's wheel in DIR, and the project is installed from that wheel (not editable), so no
checkout is needed: `python DIR/notebook.py --wheels DIR`. tf-keras, when missing, comes from DIR if a
wheel of the notebook's TensorFlow version is there, and is otherwise left out with a note (only
multi-worker training needs it). Offline, every package the notebook has keeps its version (they are all
given to pip as constraints): what the folder adds must fit the image, or pip says why and nothing changes.

It uses the standard library only: it runs before the project is installed.
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-tpu",
                            "tensorflow-intel", "tensorflow-macos", "tensorflow-aarch64", "tf-nightly",
                            "tf-nightly-cpu", "tf-nightly-gpu", "tf-nightly-tpu")
# Installed with TensorFlow and never changed here; tf-keras is installed only when missing.
PINNED = TENSORFLOW_DISTRIBUTIONS + ("keras", "tf-keras", "tensorboard", "numpy", "ml-dtypes")
# The checkout (src/melanoma/tools/notebook.py): this file runs before the package is installed, so it
# cannot ask melanoma.core.config.
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def installed() -> dict[str, str]:
    """Every distribution this Python sees: canonical name -> version."""
    found = {}
    for distribution in metadata.distributions():
        name = distribution.metadata.get("Name")
        if name:
            found.setdefault(canonical(name), distribution.version)
    return found


def tensorflow_related(packages: dict[str, str]) -> dict[str, str]:
    return {name: version for name, version in packages.items()
            if name in TENSORFLOW_DISTRIBUTIONS or name in ("keras", "tf-keras")
            or name.startswith(("tensorflow", "tf-nightly"))}


def project_requirements(pyproject: str, extras: list[str]) -> list[str]:
    """`dependencies` (and the named optional extras) of pyproject.toml."""
    try:
        import tomllib  # in the standard library from Python 3.11 on
    except ImportError:  # Python 3.10: read the two lists by hand (they are plain string lists)
        tomllib = None
    text = open(pyproject, encoding="utf-8").read()
    if tomllib is not None:
        project = tomllib.loads(text)["project"]
        lists = [project.get("dependencies", [])]
        lists += [project.get("optional-dependencies", {}).get(extra, []) for extra in extras]
    else:
        def block(key):
            match = re.search(rf"^{re.escape(key)}\s*=\s*\[(.*?)\]", text, flags=re.M | re.S)
            return re.findall(r'"([^"]+)"', match.group(1)) if match else []
        lists = [block("dependencies")] + [block(extra) for extra in extras]
    return [requirement for group in lists for requirement in group]


def wheel_requirements(folder: str) -> tuple[str, list[str]]:
    """(the project's wheel in `folder`, its runtime requirements: Requires-Dist without an extra)."""
    found = sorted(glob.glob(os.path.join(folder, "melanoma-*.whl")))
    if len(found) != 1:
        raise ValueError(f"{folder} holds {len(found)} wheels of the project (melanoma-*.whl), not one: give "
                         "--wheels the folder that `make wheels` wrote")
    with zipfile.ZipFile(found[0]) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode("utf-8")
    requirements = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return found[0], [r for r in requirements if not re.search(r"\bextra\s*==", r)]


def check_python(folder: str) -> None:
    """The wheels were built for one Python (wheels.json says which): refuse another before pip does."""
    path = os.path.join(folder, "wheels.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        wanted = json.load(handle).get("python")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wanted and wanted != here:
        raise ValueError(f"the wheels in {folder} were gathered for Python {wanted}; this notebook runs Python "
                         f"{here}: run `make wheels` with a Python {here} (make wheels PYTHON=python{here})")


def local_tf_keras(folder: str, requirement: str) -> str | None:
    """`requirement` (tf-keras==X.Y.*) when `folder` holds a wheel of that version, else None."""
    version = requirement.split("==")[1].rstrip(".*")
    return requirement if glob.glob(os.path.join(folder, f"tf_keras-{version}.*.whl")) else None


def install_plan(requirements: list[str], packages: dict[str, str]) -> dict:
    """What to install: {'missing': [requirements], 'tf_keras': requirement or None, 'skipped': [...]}.

    TensorFlow requirements are never installed (the notebook's own build stays); tf-keras, when
    missing, is pinned to the installed TensorFlow's major.minor."""
    tensorflow = next((packages[name] for name in TENSORFLOW_DISTRIBUTIONS if name in packages), None)
    if tensorflow is None:
        raise ValueError("this Python has no TensorFlow (under any of the names "
                         f"{', '.join(TENSORFLOW_DISTRIBUTIONS)}); a notebook's image brings its own. Run "
                         "make without USE_SYSTEM_PYTHON=1 to install into .venv/ instead")
    result = {"missing": [], "tf_keras": None, "skipped": []}
    for requirement in requirements:
        name = requirement_name(requirement)
        if name in TENSORFLOW_DISTRIBUTIONS:
            result["skipped"].append(f"{requirement} (the notebook's TensorFlow {tensorflow} stays)")
        elif name == "tf-keras":
            if name not in packages:
                major_minor = ".".join(tensorflow.split(".")[:2])
                result["tf_keras"] = f"tf-keras=={major_minor}.*"
        elif name not in packages:
            result["missing"].append(requirement)
    return result


def pip(python: str, arguments: list[str]) -> None:
    command = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"] + arguments
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def sources(extras: list[str], wheels: str | None) -> tuple[list[str], list[str], list[str]]:
    """(requirements, pip's arguments for where packages come from, how to install the project)."""
    if wheels is None:
        requirements = project_requirements(os.path.join(REPO, "pyproject.toml"), extras)
        return requirements, [], ["--no-build-isolation", "--editable", REPO]
    if extras:
        raise ValueError("--extras applies to an install from the registry; --wheels holds the runtime dependencies")
    check_python(wheels)
    project, requirements = wheel_requirements(wheels)
    return requirements, ["--no-index", "--find-links", wheels], [project]


def install(python: str, extras: list[str], dry_run: bool = False, wheels: str | None = None) -> int:
    before = installed()
    requirements, origin, project = sources(extras, wheels)
    steps = install_plan(requirements, before)
    if wheels is not None and steps["tf_keras"] and not local_tf_keras(wheels, steps["tf_keras"]):
        steps["skipped"].append(f"{steps['tf_keras']} (no such wheel in {wheels}; only multi-worker training needs it)")
        steps["tf_keras"] = None
    for line in steps["skipped"]:
        print(f"not installed: {line}")
    if dry_run:
        print(f"would install: missing {steps['missing'] or 'none'}; tf-keras {steps['tf_keras'] or 'present'}")
        return 0
    # Offline, every package the image has is pinned, not only TensorFlow's: the folder holds other
    # versions of some of them (protobuf, pandas, ...), and a missing package must not replace the image's.
    pinned = sorted(before) if wheels is not None else [name for name in PINNED if name in before]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("".join(f"{name}=={before[name]}\n" for name in pinned))
        constraints = handle.name
    try:
        if steps["missing"]:
            pip(python, origin + ["--constraint", constraints] + steps["missing"])
        if steps["tf_keras"]:
            pip(python, origin + ["--no-deps", steps["tf_keras"]])
        pip(python, origin + ["--no-deps"] + project)
    finally:
        os.remove(constraints)
    after = tensorflow_related(installed())
    expected = tensorflow_related(before)
    if steps["tf_keras"]:
        expected["tf-keras"] = after.get("tf-keras", "missing")
    if after != expected:
        print(f"error: TensorFlow-related packages changed: before {tensorflow_related(before)}, after {after}",
              file=sys.stderr)
        return 1
    print(f"installed into {python}; TensorFlow left as it was: {tensorflow_related(before)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", nargs="*", default=[], help="optional dependency groups too, e.g. dev")
    parser.add_argument("--dry-run", action="store_true", help="say what would be installed, install nothing")
    parser.add_argument("--wheels", metavar="DIR", help="install offline from this folder of `make wheels` "
                        "(pip --no-index --find-links DIR); the project comes from its wheel there")
    args = parser.parse_args(argv)
    try:
        return install(sys.executable, args.extras, dry_run=args.dry_run, wheels=args.wheels)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: pip failed ({error}); nothing of TensorFlow was changed", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
