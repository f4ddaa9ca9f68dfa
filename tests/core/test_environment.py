"""The environment read without TensorFlow: TF_CONFIG's cluster and task, MELANOMA_CPU_DEVICES; a value
that cannot be read is a ConfigError (exit status 2) naming the variable, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

from melanoma.core import environment
from melanoma.core.errors import ConfigError

CLUSTER = {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"]},
           "task": {"type": "worker", "index": 1}}


def test_cluster_tasks_chief_and_shard_from_tf_config(monkeypatch):
    assert environment.cluster_tasks("") == 0
    assert environment.cluster_tasks(json.dumps(CLUSTER)) == 3
    monkeypatch.setenv("TF_CONFIG", json.dumps(CLUSTER))
    assert environment.worker_task() == ("worker", 1)
    assert not environment.is_chief()
    assert environment.input_shard() == (3, 2)  # the chief reads shard 0, worker 0 shard 1
    monkeypatch.setenv("TF_CONFIG", json.dumps({**CLUSTER, "task": {"type": "chief", "index": 0}}))
    assert environment.is_chief() and environment.input_shard() == (3, 0)
    monkeypatch.delenv("TF_CONFIG")
    assert environment.is_chief() and environment.input_shard() == (1, 0)


@pytest.mark.parametrize("text, message", [
    ("{not json", "TF_CONFIG is not JSON"), ("[1, 2]", "must be a JSON object"),
    ('{"cluster": {"worker": "host:1"}}', "as lists"), ('{"cluster": {}, "task": {"index": "x"}}', "task index")])
def test_a_tf_config_that_cannot_be_read_is_a_config_error(monkeypatch, text, message):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ConfigError, match=message):
        environment.check()


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_cpu_devices_must_be_a_positive_number(monkeypatch, value):
    monkeypatch.setenv("MELANOMA_CPU_DEVICES", value)
    with pytest.raises(ConfigError, match="MELANOMA_CPU_DEVICES must be a positive number"):
        environment.cpu_devices()


@pytest.mark.parametrize("command", ["train", "infer", "describe"])
def test_commands_report_a_bad_tf_config_in_one_line(command, tmp_path):
    """`TF_CONFIG="{not json"`: exit status 2 and one line, before any work, from every command that reads it."""
    env = {"PATH": "/usr/bin:/bin", "TF_CONFIG": "{not json", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-m", "melanoma", command, "--config", "configs/demo.yaml",
                           "--set", f"output_dir={tmp_path}", f"submission_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert "TF_CONFIG is not JSON" in done.stderr and "Traceback" not in done.stderr
