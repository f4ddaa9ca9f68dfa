"""Which accelerator is here, the tf.distribute strategy for it, and the numeric precision to train in.

Detection order: a multi-worker cluster described by TF_CONFIG (MultiWorkerMirroredStrategy), a TPU
(TPUStrategy), several local GPUs (MirroredStrategy), `MELANOMA_CPU_DEVICES=N` (the CPU split into N
logical devices under MirroredStrategy: every distributed code path, on a machine without
accelerators), else the default strategy (one GPU or the CPU). `train.batch_size` is per replica, so
the global batch is batch_size x replicas on every strategy.

On a cluster every worker runs the same program; the chief (task `chief`, or worker 0 when there is
none) alone writes a run's files (`is_chief`).
"""
from __future__ import annotations

import functools
import json
import os
import sys

import tensorflow as tf

from melanoma.core import kerasapi
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.core.kerasapi import keras

# Environment variables through which Cloud TPU nodes, Colab and GKE name the TPU to connect to.
TPU_NAME_VARIABLES = ("TPU_NAME", "TPU_CONFIG", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")


CPU_DEVICES_VARIABLE = "MELANOMA_CPU_DEVICES"

cluster_workers = kerasapi.cluster_tasks


def _tf_config() -> dict:
    text = os.environ.get("TF_CONFIG", "")
    return json.loads(text) if text.strip() else {}


def worker_task() -> tuple[str, int]:
    """(type, index) of this process's task in TF_CONFIG; ('worker', 0) without one."""
    task = _tf_config().get("task", {})
    return str(task.get("type", "worker")), int(task.get("index", 0))


def _has_chief() -> bool:
    return bool(_tf_config().get("cluster", {}).get("chief"))


def is_chief() -> bool:
    """Whether this process writes the run's files: always outside a cluster; in a cluster the task
    `chief`, or worker 0 when the cluster has no chief."""
    if cluster_workers() <= 1:
        return True
    kind, index = worker_task()
    return kind == "chief" or (kind == "worker" and index == 0 and not _has_chief())


def input_shard() -> tuple[int, int]:
    """(number of workers, this worker's position): which part of the training data this worker reads."""
    workers = cluster_workers()
    if workers <= 1:
        return 1, 0
    kind, index = worker_task()
    return workers, (0 if kind == "chief" else index + int(_has_chief()))


def cpu_devices() -> int:
    """MELANOMA_CPU_DEVICES as a number (0 when unset)."""
    text = os.environ.get(CPU_DEVICES_VARIABLE, "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{CPU_DEVICES_VARIABLE} must be a positive number of logical CPU devices, got "
                         f"{text!r}")
    return int(text)


def split_cpu(count: int) -> None:
    """Split the (first) CPU into `count` logical devices. Has to run before TensorFlow starts its
    runtime (before any tensor is made), so the entry points call it first (see get_strategy)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise ConfigError(f"{CPU_DEVICES_VARIABLE}={count} came too late: TensorFlow had already "
                           "started in this process. Set it in the environment before the command runs "
                           f"({CPU_DEVICES_VARIABLE}={count} python train.py ...)") from None


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


@functools.lru_cache(maxsize=2)
def get_strategy(cluster: bool = True) -> tf.distribute.Strategy:
    """The strategy for this machine, created once per process (TPU initialisation and the
    multi-worker handshake must not run twice; MultiWorkerMirroredStrategy also has to exist before
    other TensorFlow work, so training asks for it first). cluster=False leaves a TF_CONFIG cluster
    out and takes this machine's own devices (inference and benchmarks run on one machine)."""
    simulated = cpu_devices()
    if simulated:
        split_cpu(simulated)
    if cluster and cluster_workers() > 1:
        if not kerasapi.legacy():
            raise ConfigError(f"a multi-worker cluster (TF_CONFIG) trains with tf_keras (Keras 3 cannot "
                             f"fit under MultiWorkerMirroredStrategy), but {kerasapi.LEGACY_VARIABLE} is "
                             f"{os.environ.get(kerasapi.LEGACY_VARIABLE)!r}: unset it")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tpu_resolver()
    if resolver is not None:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if simulated > 1:
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in cpus[:simulated]])
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


def set_precision(config: Config, strategy: tf.distribute.Strategy) -> str:
    """Set Keras' global dtype policy from train.mixed_precision and the accelerator; returns its name.

    Always sets it (float32 too), so a fold never inherits the policy of an earlier model in the process.
    """
    policy = precision_policy(accelerator_name(strategy), bool(config.train.mixed_precision))
    keras.mixed_precision.set_global_policy(policy)
    return policy


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas on this machine (all of them but on a multi-worker cluster)."""
    if strategy.num_replicas_in_sync == 1:
        return 1  # the default strategy has no worker_devices
    return len(strategy.extended.worker_devices)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name of the strategy: MultiWorkerMirroredStrategy, TPUStrategy, MirroredStrategy, or
    DefaultStrategy (one device)."""
    for public, name in ((tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
                         (tf.distribute.TPUStrategy, "TPUStrategy"),
                         (tf.distribute.MirroredStrategy, "MirroredStrategy")):
        if isinstance(strategy, public):
            return name
    name = type(strategy).__name__
    return "DefaultStrategy" if name == "_DefaultDistributionStrategy" else name
