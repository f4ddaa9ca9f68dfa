"""Which accelerator is here, the tf.distribute strategy for it, and the numeric precision to train in.

Detection order: a multi-worker cluster described by TF_CONFIG (MultiWorkerMirroredStrategy), a TPU
(TPUStrategy), several local GPUs (MirroredStrategy), `MELANOMA_CPU_DEVICES=N` (the CPU split into N
logical devices under MirroredStrategy: every distributed code path, on a machine without
accelerators), else the default strategy (one GPU or the CPU). `train.batch_size` is per replica, so
the global batch is batch_size x replicas on every strategy.

On a cluster every worker runs the same program; the chief alone writes a run's files
(`environment.is_chief`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys

import tensorflow as tf

from melanoma.core import environment, kerasapi
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.core.kerasapi import keras

# Environment variables through which Cloud TPU nodes, Colab and GKE name the TPU to connect to.
TPU_NAME_VARIABLES = ("TPU_NAME", "TPU_CONFIG", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")


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
        raise ConfigError(f"{environment.CPU_DEVICES_VARIABLE}={count} came too late: TensorFlow had already "
                           "started in this process. Set it in the environment before the command runs "
                           f"({environment.CPU_DEVICES_VARIABLE}={count} python train.py ...)") from None


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
    simulated = environment.cpu_devices()
    if simulated:
        split_cpu(simulated)
    if cluster and environment.cluster_tasks() > 1:
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


@contextlib.contextmanager
def op_determinism(on: bool):
    """TensorFlow's op determinism on (train.deterministic) or off for the work inside, then as it was.

    The switch is global to the process: restoring it keeps a deterministic fold from turning later work
    in the same process (another config's fold, a test) into serial tf.data maps, or into errors from
    random ops that have no seed."""
    # TensorFlow exports only the switch that turns it on; reading it and turning it off are in the module
    # behind it (tensorflow/python/framework/config.py, there since TensorFlow 2.8)
    from tensorflow.python.framework import config as switches

    before = switches.is_op_determinism_enabled()
    _set_op_determinism(bool(on), switches)
    try:
        yield
    finally:
        _set_op_determinism(before, switches)


def _set_op_determinism(on: bool, switches) -> None:
    if on:
        tf.config.experimental.enable_op_determinism()
    else:
        switches.disable_op_determinism()


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


def from_chief(value: int) -> int:
    """The chief's `value` (an integer below 2**48) on every worker of the cluster. A collective
    operation: every worker calls it at the same point."""
    strategy = get_strategy()
    share = [float(value), 1.0] if environment.is_chief() else [0.0, 0.0]

    @tf.function
    def contribute():
        return tf.constant(share, tf.float64)

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute), axis=None).numpy()
    return int(round(total[0] / total[1])) if total[1] else 0


def all_agree(ok: bool) -> bool:
    """Whether every worker of the cluster passed `ok` (a collective operation, as `from_chief`)."""
    strategy = get_strategy()

    @tf.function
    def contribute():
        return tf.constant(0.0 if ok else 1.0, tf.float64)

    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribute), axis=None)) == 0.0
