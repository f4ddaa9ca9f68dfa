"""Which accelerator is here, the tf.distribute strategy for it, and the numeric precision to train in.

Detection order: a multi-worker cluster described by TF_CONFIG (MultiWorkerMirroredStrategy), a TPU
(TPUStrategy), several local GPUs (MirroredStrategy), else the default strategy (one GPU or the CPU).
`train.batch_size` is per replica, so the global batch is batch_size x replicas on every strategy.
"""
from __future__ import annotations

import functools
import json
import os
import sys

import tensorflow as tf

# Environment variables through which Cloud TPU nodes, Colab and GKE name the TPU to connect to.
TPU_NAME_VARIABLES = ("TPU_NAME", "TPU_CONFIG", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")


def cluster_workers(tf_config: str | None = None) -> int:
    """Number of tasks (chief + workers) that TF_CONFIG's cluster lists; 0 without TF_CONFIG."""
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text.strip():
        return 0
    try:
        cluster = json.loads(text).get("cluster", {})
    except (ValueError, AttributeError):
        raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster': {text[:200]!r}") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def tpu_resolver():
    """A TPUClusterResolver when this machine has (or names) a TPU, else None.

    A TPU node is named by TPU_NAME (Kaggle's and Colab's older TPUs, GKE); a TPU VM (the TPU attached
    to this host, as on Kaggle's current TPUs) shows /dev/accel* or TPU_ACCELERATOR_TYPE. TPU_NAME=local
    forces the TPU-VM connection when neither is visible.
    """
    resolver_class = tf.distribute.cluster_resolver.TPUClusterResolver
    if os.environ.get("TPU_NAME") == "local":
        return resolver_class(tpu="local")
    if os.environ.get("COLAB_TPU_ADDR"):
        return resolver_class(tpu=f"grpc://{os.environ['COLAB_TPU_ADDR']}")
    if any(os.environ.get(name) for name in TPU_NAME_VARIABLES):
        return resolver_class()
    if os.environ.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0"):
        return resolver_class(tpu="local")
    return None


@functools.lru_cache(maxsize=1)
def get_strategy() -> tf.distribute.Strategy:
    """The strategy for this machine, created once per process (TPU initialisation and the
    multi-worker handshake must not run twice; MultiWorkerMirroredStrategy also has to exist before
    other TensorFlow work, so training asks for it first)."""
    if cluster_workers() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tpu_resolver()
    if resolver is not None:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def accelerator_name(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def precision_policy(accelerator: str, mixed_precision: bool) -> str:
    """Keras dtype policy: bfloat16 compute on TPU, float16 on GPU (variables stay float32), else float32.

    On the CPU mixed precision is refused with a warning and training stays float32: float16 has no
    fast CPU kernels, bfloat16 helps only CPUs with bfloat16 matrix units and makes results differ from
    the float32 runs a CPU is normally used to check. The output layers are float32 in every policy
    (model.build_model gives them dtype float32).
    """
    if not mixed_precision:
        return "float32"
    if accelerator == "tpu":
        return "mixed_bfloat16"
    if accelerator == "gpu":
        return "mixed_float16"
    print("warning: train.mixed_precision is on but there is no GPU or TPU; training in float32",
          file=sys.stderr)
    return "float32"


def set_precision(config, strategy: tf.distribute.Strategy) -> str:
    """Set Keras' global dtype policy from train.mixed_precision and the accelerator; returns its name.

    Always sets it (float32 too), so a fold never inherits the policy of an earlier model in the process.
    """
    import keras

    policy = precision_policy(accelerator_name(strategy), bool(config.train.mixed_precision))
    keras.mixed_precision.set_global_policy(policy)
    return policy


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """'TPUStrategy', 'MirroredStrategy', ...; 'OneDeviceStrategy' style names for the default."""
    name = type(strategy).__name__
    return "DefaultStrategy" if name == "_DefaultDistributionStrategy" else name
