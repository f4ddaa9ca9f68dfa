"""`python -m melanoma describe --config C [--set ...]`: what a config would train, without training.

A dry run to read before spending a TPU session, printed as one JSON object: the facts the config's model
family gives about itself (train/families/). For the CNN: the strategy and replicas found on this machine
(or the TF_CONFIG cluster), the Keras library and augmentation backend that would run, the precision, the
global batch and the learning rates it gives, the backbone, input size and parameter count (the model is
built with random weights; nothing is downloaded), and whether the pretrained weights file is already
cached. For the trees: the model's settings, the feature groups and the records found.
"""
from __future__ import annotations

import argparse
import json

from melanoma.core import arguments, environment
from melanoma.core import config as config_lib
from melanoma.train.families import family as family_lib


def configure_parser(parser: argparse.ArgumentParser) -> None:
    arguments.add_config_arguments(parser, set_help="override config keys, e.g. --set train.batch_size=64")


def command(args: argparse.Namespace) -> int:
    config = config_lib.load_config(args.config, args.set)
    family = family_lib.lookup(config)
    family.check(config)
    environment.check()
    print(json.dumps(family.describe(config), indent=1))
    return 0
