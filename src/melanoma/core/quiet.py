"""TensorFlow's start-up lines kept off the screen, whatever the command.

Importing TensorFlow 2.16+ prints, from C++ and before any Python logging exists,

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.

and "oneDNN custom operations are on" (each twice: two of its libraries log on load), whatever
TF_CPP_MIN_LOG_LEVEL says: absl writes messages logged before its initialisation straight to file
descriptor 2. The only way to keep them off the
screen is to point descriptor 2 elsewhere while TensorFlow is imported. `install_filter()` adds an import hook
that does that around the first `import tensorflow` (from whichever module, keras included), then
writes back to stderr every line that is not one of the known start-up lines, so a real error raised
during the import is still seen. `MELANOMA_TF_LOGS=1` turns the filter off.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.abc
import os
import platform
import re
import sys
import tempfile

# Start-up lines that say nothing a user can act on.
NOISE = re.compile("|".join([
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$",
    r"Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory for plugin",
    r"computation_placer\.cc:\d+\] computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"port\.cc:\d+\] oneDNN custom operations are on",  # logged by two of its libraries at import
]))
# On a machine without an NVIDIA device the CUDA platform's first use fails with this: noise there,
# the reason a GPU goes unused where there is one.
NO_GPU_NOISE = re.compile(r"cuda_platform\.cc:\d+\] failed call to cuInit")


def nvidia_device_present() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def environment_defaults() -> None:
    """Environment read by TensorFlow's C++ and albumentations at import: set before either loads.

    TensorFlow's C++ log goes to level 3 (fatal messages only) unless TF_CPP_MIN_LOG_LEVEL is set or
    MELANOMA_TF_LOGS=1: at level 2 its runtime ERROR lines include notes such as "oneDNN supports DT_UINT8
    only on platforms with AVX-512" that say nothing a user can act on, and a failure a user must see
    reaches Python as an exception anyway. Where an NVIDIA device is present but TensorFlow finds no GPU,
    the import says so in a line of its own (see `_QuietImport`)."""
    if os.environ.get("MELANOMA_TF_LOGS") != "1":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if onednn_by_default():
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def onednn_by_default() -> bool:
    """TensorFlow's oneDNN kernels on every x86-64 CPU unless TF_ENABLE_ONEDNN_OPTS says otherwise.

    TensorFlow turns them on by itself only where the CPU has AVX-512 VNNI or BF16, AVX-VNNI or AMX. On a
    2-core AVX2 CPU without them (AMD EPYC) they make a Lite0 training step at 224 px and TTA prediction 1.8
    times as fast (`melanoma bench`, docs/results.md): an epoch of configs/isic2017_lite0.yaml there took
    73-92 s with them, 133 s without. Results may differ from a run without them in the last digits
    (another order of floating-point sums); a run is still repeatable on one machine. Not on ARM, where
    TensorFlow's oneDNN path is another library."""
    return platform.machine().lower() in ("x86_64", "amd64")


def keep(line: str, gpu_present: bool = True) -> bool:
    line = line.rstrip("\n")
    return not (NOISE.search(line) or (not gpu_present and NO_GPU_NOISE.search(line)))


@contextlib.contextmanager
def stderr_filtered():
    """Point file descriptor 2 at a temporary file for the block, then write back the lines worth
    seeing. A file, not a pipe: nothing has to read while the block runs, so it cannot block."""
    if os.environ.get("MELANOMA_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            gpu = nvidia_device_present()
            kept = [line for line in text.splitlines(keepends=True) if keep(line, gpu)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` with the other finders and runs its module code under `stderr_filtered`,
    then lists the GPUs there too: the CUDA platform logs its start-up on that first use."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        uninstall()
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            with stderr_filtered():
                execute(module)
                # Lists devices without creating TensorFlow's context: memory growth, logical CPU
                # devices and multi-worker strategies can still be set up after it.
                try:
                    gpus = module.config.list_physical_devices("GPU")
                except Exception as error:  # noqa: BLE001 - a device query must never break the import
                    print(f"note: listing GPUs failed: {error}", file=sys.stderr)
                    return
            if not gpus and nvidia_device_present():
                print("warning: an NVIDIA device is here but TensorFlow finds no GPU (CUDA libraries or "
                      "driver?): training runs on the CPU. MELANOMA_TF_LOGS=1 shows TensorFlow's own messages",
                      file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


_HOOK = _QuietImport()


def install_filter() -> None:
    """Environment defaults, and the import hook if TensorFlow is not imported yet."""
    environment_defaults()
    if "tensorflow" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
