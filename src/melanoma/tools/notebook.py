"""Install the project into a notebook's own Python (Kaggle, Colab) without touching its TensorFlow.

`make install` runs this file on a notebook (see the Makefile): `python src/melanoma/notebook.py`.
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

It uses the standard library only: it runs before the project is installed.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tempfile

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


def install(python: str, extras: list[str], dry_run: bool = False) -> int:
    before = installed()
    steps = install_plan(project_requirements(os.path.join(REPO, "pyproject.toml"), extras), before)
    for line in steps["skipped"]:
        print(f"not installed: {line}")
    if dry_run:
        print(f"would install: missing {steps['missing'] or 'none'}; tf-keras {steps['tf_keras'] or 'present'}")
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("".join(f"{name}=={before[name]}\n" for name in PINNED if name in before))
        constraints = handle.name
    try:
        if steps["missing"]:
            pip(python, ["--constraint", constraints] + steps["missing"])
        if steps["tf_keras"]:
            pip(python, ["--no-deps", steps["tf_keras"]])
        pip(python, ["--no-deps", "--no-build-isolation", "--editable", REPO])
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
    args = parser.parse_args(argv)
    try:
        return install(sys.executable, args.extras, dry_run=args.dry_run)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: pip failed ({error}); nothing of TensorFlow was changed", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
