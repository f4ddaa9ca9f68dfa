"""The command-line arguments that name a config: `--config`, `--set`, and where a command has them, `--force`
and `--seeds`. Every command that reads a config takes them alike (the command-line contract), so they are
added here, once; each command passes only its own help text."""
from __future__ import annotations

import argparse

SET_HELP = "override config keys, e.g. --set train.epochs=2 data.image_size=64"


def add_set_argument(parser: argparse.ArgumentParser, set_help: str = SET_HELP, dest: str = "set") -> None:
    """--set KEY=VALUE ...: a list in args.<dest>, which a repeated --set extends."""
    parser.add_argument("--set", dest=dest, nargs="+", default=[], metavar="KEY=VALUE", action="extend", help=set_help)


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str = "experiment YAML in configs/",
                         set_help: str = SET_HELP, config_default: str | None = None,
                         force_help: str | None = None, seeds_help: str | None = None) -> None:
    """--config (required unless `config_default`), --set KEY=VALUE ... (args.set, a list: repeated --set
    extend it), and --force / --seeds N where their help is given (a command without them has none)."""
    parser.add_argument("--config", required=config_default is None, default=config_default, help=config_help)
    add_set_argument(parser, set_help)
    if force_help is not None:
        parser.add_argument("--force", action="store_true", help=force_help)
    if seeds_help is not None:
        parser.add_argument("--seeds", type=int, metavar="N", help=seeds_help)
