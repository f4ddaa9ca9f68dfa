"""What the environment says about the machine, read without TensorFlow: the multi-worker cluster that
TF_CONFIG describes (how many tasks, this process's task, which one is the chief) and the logical CPU
devices of MELANOMA_CPU_DEVICES. A value that cannot be read is a ConfigError (exit status 2) naming the
variable, found before any work starts.

On a cluster every worker runs the same program; the chief (task `chief`, or worker 0 when there is
none) alone writes a run's files (`is_chief`).
"""
from __future__ import annotations

import json
import os

from melanoma.core.errors import ConfigError

TF_CONFIG = "TF_CONFIG"
CPU_DEVICES_VARIABLE = "MELANOMA_CPU_DEVICES"


def tf_config(text: str | None = None) -> dict:
    """TF_CONFIG as a dict ({} when unset or blank); ConfigError when it is not a JSON object."""
    text = os.environ.get(TF_CONFIG, "") if text is None else text
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{TF_CONFIG} is not JSON ({error}): {text[:200]!r}; give a JSON object such as "
                          '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
                          '"index": 0}}, or unset it') from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster", {}), dict) \
            or not isinstance(value.get("task", {}), dict):
        raise ConfigError(f"{TF_CONFIG} must be a JSON object with a 'cluster' and a 'task' object, got "
                          f"{text[:200]!r}")
    return value


def cluster_tasks(text: str | None = None) -> int:
    """Number of tasks (chief + workers) that TF_CONFIG's cluster lists; 0 without TF_CONFIG."""
    cluster = tf_config(text).get("cluster", {})
    tasks = [cluster.get(kind, []) for kind in ("chief", "worker")]
    if not all(isinstance(listed, list) for listed in tasks):
        raise ConfigError(f"{TF_CONFIG}'s cluster must list its 'chief' and 'worker' addresses as lists")
    return sum(len(listed) for listed in tasks)


def worker_task() -> tuple[str, int]:
    """(type, index) of this process's task in TF_CONFIG; ('worker', 0) without one."""
    task = tf_config().get("task", {})
    try:
        return str(task.get("type", "worker")), int(task.get("index", 0))
    except (TypeError, ValueError):
        raise ConfigError(f"{TF_CONFIG}'s task index must be a number, got {task.get('index')!r}") from None


def _has_chief() -> bool:
    return bool(tf_config().get("cluster", {}).get("chief"))


def is_chief() -> bool:
    """Whether this process writes the run's files: always outside a cluster; in a cluster the task
    `chief`, or worker 0 when the cluster has no chief."""
    if cluster_tasks() <= 1:
        return True
    kind, index = worker_task()
    return kind == "chief" or (kind == "worker" and index == 0 and not _has_chief())


def input_shard() -> tuple[int, int]:
    """(number of workers, this worker's position): which part of the training data this worker reads."""
    workers = cluster_tasks()
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


def check() -> None:
    """Every variable above read once, so that a bad value stops a command before any work."""
    cluster_tasks()
    worker_task()
    cpu_devices()
