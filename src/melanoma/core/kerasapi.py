"""The Keras this process trains with: Keras 3, or tf_keras (Keras 2) where Keras 3 cannot train.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), while tf_keras,
TensorFlow's own Keras 2 (package `tf-keras`, same version as TensorFlow), trains the same cluster. So a
process that is one worker of a multi-worker cluster (TF_CONFIG lists several tasks) uses tf_keras;
`TF_USE_LEGACY_KERAS=1` asks for it anywhere. The choice has to be made before TensorFlow is imported,
because `tf.keras` (which the efficientnet package builds its models with) is bound at that import:
`melanoma/__init__.py` calls `choose()` first thing. Every module takes Keras from here
(`from melanoma.core.kerasapi import keras`), never with `import keras`, so model, layers and callbacks
always come from one library.

Checkpoints (`.keras` files) written by either library load into the other's models with
`load_weights`, so a run trained on a cluster is predicted by `infer` on one machine with Keras 3.
"""
from __future__ import annotations

import os

from melanoma.core import environment
from melanoma.core.errors import ConfigError

LEGACY_VARIABLE = "TF_USE_LEGACY_KERAS"


def choose() -> bool:
    """Set TF_USE_LEGACY_KERAS=1 for a multi-worker process (before TensorFlow is imported); True when
    this process uses tf_keras."""
    try:
        tasks = environment.cluster_tasks()
    except ConfigError:
        tasks = 0  # reported as one line by the command that reads it (environment.check)
    if tasks > 1 and not os.environ.get(LEGACY_VARIABLE):
        os.environ[LEGACY_VARIABLE] = "1"
    return legacy()


def legacy() -> bool:
    """Whether this process uses tf_keras (decided by `choose`, which the package runs at import)."""
    return os.environ.get(LEGACY_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def _import_keras():
    if not legacy():
        import keras  # decided at run time (choose): only the chosen Keras is imported

        return keras
    try:
        import tf_keras  # decided at run time (choose): only the chosen Keras is imported
    except ImportError:
        raise ImportError(
            "tf_keras is needed for multi-worker training (TF_CONFIG) and for TF_USE_LEGACY_KERAS=1: "
            "pip install 'tf-keras~=X.Y.0', X.Y being the installed TensorFlow's version") from None
    return tf_keras


def __getattr__(name: str):
    # `from melanoma.core.kerasapi import keras` imports the library on first use only, so commands that
    # never build a model (score, validate) do not pay for it.
    if name == "keras":
        module = _import_keras()
        globals()["keras"] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def name() -> str:
    """'keras 3.15.1' or 'tf_keras 2.21.0': which library (and version) trains and predicts."""
    module = _import_keras()
    return f"{'tf_keras' if legacy() else 'keras'} {module.__version__}"
