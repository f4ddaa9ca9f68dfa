"""The `synth` command: a generated dataset in the 2020 competition's layout or in the ISIC 2024 one.

`python -m melanoma synth OUT [--size N] [--patients N] [--test-patients N] [--seed S] [--force]` writes the
competition's layout (CSVs and JPEG folders: synth.py); with `--layout isic2024 [--lesions N]
[--positive-rate R]` the ISIC 2024 challenge's layout (metadata CSVs and HDF5 files of crops:
synth_isic2024.py). OUT must be new or empty; --force first removes what an earlier synth wrote there.
"""
from __future__ import annotations

import argparse
import sys

from melanoma.core import io_utils
from melanoma.data import preflight
from melanoma.tools import synth, synth_isic2024

LAYOUTS = ("competition", "isic2024")
COMPETITION_DEFAULTS = {"size": 256, "patients": 250, "test_patients": 60}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = synth_isic2024.DEFAULTS
    parser.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    parser.add_argument("--layout", choices=LAYOUTS, default="competition",
                        help="competition (default): the 2020 competition's CSVs and JPEG folders; isic2024: the "
                        "ISIC 2024 challenge's metadata CSVs and HDF5 files of lesion crops")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 256; isic2024: "
                        f"crops of about {defaults['size']})")
    parser.add_argument("--patients", type=int, default=None,
                        help=f"train patients (default 250; isic2024: {defaults['patients']})")
    parser.add_argument("--test-patients", type=int, default=None,
                        help=f"test patients (default 60; isic2024: {defaults['test_patients']})")
    parser.add_argument("--lesions", type=int, default=None,
                        help=f"isic2024: lesion crops per patient on average (default {defaults['lesions']})")
    parser.add_argument("--positive-rate", type=float, default=None, help="isic2024: share of malignant "
                        f"lesions (default {defaults['positive_rate']}; at least one in each split)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--force", action="store_true",
                        help="replace what an earlier synth wrote in OUT (otherwise OUT must be new or empty)")


def chosen(args: argparse.Namespace, defaults: dict) -> dict:
    return {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}


def isic2024_command(args: argparse.Namespace) -> int:
    values = chosen(args, synth_isic2024.DEFAULTS)
    try:
        synth_isic2024.check_arguments(**values)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = args.out.rstrip("/") or "/"
    if io_utils.is_remote(out):
        print("error: --layout isic2024 writes HDF5 files, which need a local folder", file=sys.stderr)
        return 2
    preflight.check_writable({"OUT": out})
    stale = synth.prepare_folder(out, args.force, synth_isic2024.OWN_ENTRIES)
    summary = synth_isic2024.synthesize(out, seed=args.seed, progress=not args.no_progress, **values)
    print(synth_isic2024.format_dataset(summary))
    for line in stale:  # last, where it is read
        print(line, file=sys.stderr)
    return 0


def command(args: argparse.Namespace) -> int:
    if args.layout == "isic2024":
        return isic2024_command(args)
    if args.lesions is not None or args.positive_rate is not None:
        print("error: --lesions and --positive-rate apply to --layout isic2024 only", file=sys.stderr)
        return 2
    values = chosen(args, COMPETITION_DEFAULTS)
    try:
        synth.check_arguments(**values)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    preflight.check_writable({"OUT": args.out})
    stale = synth.prepare_folder(args.out.rstrip("/") or "/", args.force)
    summary = synth.synthesize(args.out, seed=args.seed, progress=not args.no_progress, **values)
    print(synth.format_written(summary))
    for line in stale:  # last, where it is read
        print(line, file=sys.stderr)
    return 0
