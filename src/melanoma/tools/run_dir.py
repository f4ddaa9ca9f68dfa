"""`python -m melanoma run-dir --config C [--set ...]`: the folder of a config's run, one line.

The make targets that read a run's files (`make score`) ask this instead of building the path from the
config file's name, so they find the run exactly as the Python commands do: the config's `name` (or the
file's stem), its `output_dir`, and the --set overrides (`make score SET="name=cx"` scores outputs/cx).
No TensorFlow: it answers in a second.
"""
from __future__ import annotations

import argparse
import os

from melanoma.core import arguments
from melanoma.core import config as config_lib
from melanoma.runs import layout


def configure_parser(parser: argparse.ArgumentParser) -> None:
    arguments.add_config_arguments(parser, "experiment YAML (or a run folder, printed as it is)",
                                   "override config keys, as for training (name=..., output_dir=...)")


def command(args: argparse.Namespace) -> int:
    # the folder only: whether the run there is complete, and trained with this config, is for the command
    # that reads it to say
    folder = args.config.rstrip("/") if os.path.isdir(args.config) else layout.run_dir(
        config_lib.load_config(args.config, args.set))
    print(folder)
    return 0
