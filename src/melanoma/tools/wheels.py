"""`make wheels`: the project and every dependency a notebook lacks, as wheels in one folder, for a notebook
that has no internet (a code competition's scoring run) to install from.

`python -m melanoma.tools.wheels --out wheels [--freeze FILE]` writes into `--out` (replaced whole, or left
as it was on a failure):

    melanoma-<version>-py3-none-any.whl   the project (its Requires-Dist are what the notebook installs)
    <dependency>-....whl                   the project's dependencies and theirs, built for this Python
    notebook.py                            the installer (src/melanoma/tools/notebook.py), standard library only
    wheels.json                            what is there, for which Python, and what was left to the notebook

Attach the folder to the notebook as a dataset and run, with the internet off,

    !python /kaggle/input/<dataset>/notebook.py --wheels /kaggle/input/<dataset>

which installs what the notebook lacks from the folder alone (`pip --no-index --find-links`), never its
TensorFlow (see notebook.py).

Left to the notebook, never gathered: every TensorFlow distribution, and Keras, numpy and the other
packages that come with TensorFlow (`notebook.PINNED`): the notebook's own builds stay. Without `--freeze`
every other dependency is gathered, at the versions this environment runs (those the tests passed with),
so the folder serves any notebook image; the notebook then installs only what it lacks, and a wheel that
needs a newer numpy than the notebook's fails there, loudly. With `--freeze FILE`, the output of `pip list
--format=freeze` in the notebook (one `name==version` a line), the dependencies are resolved against the
notebook's own versions and only what that image lacks is kept; a TensorFlow there without tf-keras brings
tf-keras at its version.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

from melanoma.core import io_utils
from melanoma.core.errors import ConfigError, ExternalToolError
from melanoma.tools import notebook

REPO = notebook.REPO
INSTALLER = os.path.join(REPO, "src", "melanoma", "tools", "notebook.py")
MANIFEST = "wheels.json"
OWN_FILES = re.compile(r".+\.whl$|^notebook\.py$|^wheels\.json$")
LEFT_TO_THE_NOTEBOOK = notebook.PINNED


def wheel_name(filename: str) -> str:
    """Canonical distribution name of a wheel file (`scikit_learn-1.9.1-...whl` -> `scikit-learn`)."""
    return notebook.canonical(filename.split("-")[0])


def read_freeze(path: str) -> dict[str, str | None]:
    """{canonical name: version or None} from a `pip freeze` / `pip list --format=freeze` file."""
    found: dict[str, str | None] = {}
    for line in io_utils.read_text(path).splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        name = notebook.canonical(name.split("@")[0].strip())
        found[name] = version.strip() or None
    if not found:
        raise ConfigError(f"--freeze {path} lists no package; give the output of `pip list --format=freeze` "
                          "run in the notebook")
    return found


def this_environment() -> dict[str, str | None]:
    packages: dict[str, str | None] = dict(notebook.installed())
    packages.pop("melanoma", None)  # the project itself is built from the checkout
    return packages


def gather_plan(requirements: list[str], freeze: dict[str, str | None] | None) -> dict:
    """{'gather': requirements to build wheels of, 'tf_keras': requirement or None, 'left': notes}.

    TensorFlow and what comes with it stay the notebook's; tf-keras is bound to the notebook's TensorFlow
    version, so it is gathered only when a freeze says which TensorFlow and that it lacks tf-keras."""
    result: dict = {"gather": [], "tf_keras": None, "left": []}
    for requirement in requirements:
        name = notebook.requirement_name(requirement)
        if name in LEFT_TO_THE_NOTEBOOK and name != "tf-keras":
            result["left"].append(f"{requirement}: the notebook's own")
        elif name == "tf-keras":
            tensorflow = next((freeze[n] for n in notebook.TENSORFLOW_DISTRIBUTIONS if freeze and freeze.get(n)), None)
            if freeze is None or tensorflow is None:
                result["left"].append(f"{requirement}: bound to the notebook's TensorFlow (give --freeze to gather it)")
            elif "tf-keras" in freeze:
                result["left"].append(f"{requirement}: the notebook has it")
            else:
                result["tf_keras"] = f"tf-keras=={'.'.join(tensorflow.split('.')[:2])}.*"
        elif freeze is not None and name in freeze:
            result["left"].append(f"{requirement}: the notebook has {name} {freeze[name] or ''}".rstrip())
        else:
            result["gather"].append(requirement)
    return result


def pip(arguments: list[str]) -> None:
    command = [sys.executable, "-m", "pip"] + arguments
    print("$ " + " ".join(command), flush=True)
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as error:
        raise ExternalToolError(f"pip failed ({error.returncode}): see its output above; nothing was written") from None


def project_wheel(folder: str) -> str:
    """The project's own wheel from the checkout (no build isolation: it needs no download). setuptools builds
    in the checkout's build/ (git-ignored), and a file left there by an earlier build would travel in the
    wheel even after the checkout lost it: that folder is removed first."""
    shutil.rmtree(os.path.join(REPO, "build"), ignore_errors=True)
    pip(["wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", folder, REPO])
    found = [name for name in os.listdir(folder) if wheel_name(name) == "melanoma"]
    if len(found) != 1:
        raise ExternalToolError(f"building the project's wheel left {found or 'nothing'} in {folder}")
    return found[0]


def gather(folder: str, steps: dict, pins: dict[str, str | None]) -> None:
    """Wheels of the requirements and of everything they need, resolved under `pins`."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("".join(f"{name}=={version}\n" for name, version in sorted(pins.items()) if version))
        constraints = handle.name
    try:
        if steps["gather"]:
            pip(["wheel", "--quiet", "--wheel-dir", folder, "--constraint", constraints] + steps["gather"])
        if steps["tf_keras"]:
            pip(["download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", folder, steps["tf_keras"]])
    finally:
        os.remove(constraints)


def prune(folder: str, freeze: dict[str, str | None] | None) -> list[str]:
    """Removes the wheels the notebook never installs: its TensorFlow family, and (with a freeze) what it
    has. Returns the removed file names."""
    removed = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".whl") or wheel_name(name) == "melanoma":
            continue
        distribution = wheel_name(name)
        keep_tf_keras = distribution == "tf-keras" and (freeze is None or "tf-keras" not in freeze)
        if (distribution in LEFT_TO_THE_NOTEBOOK and not keep_tf_keras) or (freeze and distribution in freeze):
            os.remove(os.path.join(folder, name))
            removed.append(name)
    return removed


def finish(folder: str, steps: dict, removed: list[str], freeze_path: str | None) -> dict:
    """Copies the installer in and writes wheels.json (every wheel with its size and SHA-256)."""
    shutil.copyfile(INSTALLER, os.path.join(folder, "notebook.py"))
    wheels = {}
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".whl")):
        with open(os.path.join(folder, name), "rb") as handle:
            data = handle.read()
        wheels[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"python": ".".join(platform.python_version_tuple()[:2]), "platform": f"{sys.platform} "
                f"{platform.machine()}", "freeze": os.path.basename(freeze_path) if freeze_path else None,
                "wheels": wheels, "left_to_the_notebook": steps["left"], "not_gathered": removed,
                "install": "python notebook.py --wheels <this folder>"}
    io_utils.write_text_atomic(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    return manifest


def check_out(out: str) -> None:
    """--out is replaced whole: absent, empty, or a folder of wheels written here before."""
    io_utils.check_replaceable(out, WRITER, wheels_only)


WRITER = "wheels"  # the marker's name for this tool (python -m melanoma.tools.wheels)


def wheels_only(names: list[str]) -> bool:
    """A folder of wheels written before folders carried their writer's marker."""
    return all(OWN_FILES.match(name) for name in names)


def write_wheels(out: str, freeze_path: str | None = None) -> dict:
    check_out(out)
    freeze = read_freeze(freeze_path) if freeze_path else None
    requirements = notebook.project_requirements(os.path.join(REPO, "pyproject.toml"), [])
    steps = gather_plan(requirements, freeze)
    with io_utils.folder_written_whole(out, command=WRITER, own=wheels_only) as folder:
        project_wheel(folder)
        gather(folder, steps, freeze if freeze is not None else this_environment())
        manifest = finish(folder, steps, prune(folder, freeze), freeze_path)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m melanoma.tools.wheels", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="wheels", help="folder to write (replaced whole; default wheels)")
    parser.add_argument("--freeze", help="the notebook's `pip list --format=freeze`: gather only what it lacks, "
                        "at versions that fit what it has")
    args = parser.parse_args(argv)
    try:
        manifest = write_wheels(args.out, args.freeze)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ExternalToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size = sum(wheel["bytes"] for wheel in manifest["wheels"].values())
    print(f"{len(manifest['wheels'])} wheels, {size / 2 ** 20:.0f} MiB, for Python {manifest['python']} "
          f"in {args.out}/; attach the folder to the notebook as a dataset and run there: "
          "python <folder>/notebook.py --wheels <folder>")
    for line in manifest["left_to_the_notebook"]:
        print(f"  not gathered: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
