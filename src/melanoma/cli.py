"""`python -m melanoma COMMAND ...`: one sub-command per stage.

Each command lives in its own module, which defines `configure_parser(parser)` and `command(args) -> int`.
Modules are imported only when their command runs, so `score` or `validate` do not pay for TensorFlow.
Exit status: 0 success, 1 a failed check or operation, 2 bad input found before any work.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from melanoma.core import quiet
from melanoma.core.errors import run_guarded

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("melanoma.tools.synth_command", "write a demo dataset: the competition's layout, or --layout isic2024"),
    "folds": ("melanoma.data.folds", "assign patient-grouped, stratified parts and folds"),
    "records": ("melanoma.data.make_records", "JPEGs + CSV -> TFRecords in the public schema"),
    "data": ("melanoma.kaggle.download", "download the competition CSVs and public TFRecords (Kaggle CLI)"),
    "train": ("melanoma.train.command", "train one fold (or all) of a config"),
    "infer": ("melanoma.predict.inference", "TTA + fold ensemble -> submissions/<name>.csv"),
    "score": ("melanoma.evaluate.scoring", "competition AUC of an OOF file"),
    "compare": ("melanoma.evaluate.compare", "table of OOF AUC across runs"),
    "sweep": ("melanoma.evaluate.sweep", "a grid of settings as runs (trained, predicted), then their comparison"),
    "report": ("melanoma.evaluate.report", "ROC, histograms, curves and cutoff table of a run"),
    "blend": ("melanoma.evaluate.blend", "blend several runs' predictions"),
    "shift": ("melanoma.evaluate.shift",
              "adversarial validation: how far test (or external) images are from training ones"),
    "validate": ("melanoma.predict.submission", "check a submission CSV against the sample"),
    "submit": ("melanoma.kaggle.submit:submit", "validate, then upload with the Kaggle CLI"),
    "leaderboard": ("melanoma.kaggle.submit:leaderboard", "join Kaggle leaderboard scores to the log"),
    "describe": ("melanoma.tools.describe", "strategy, precision, batch, learning rate and size of a config"),
    "run-dir": ("melanoma.tools.run_dir", "the folder of a config's run (name, output_dir, --set), one line"),
    "bench": ("melanoma.tools.bench", "throughput figures as JSON"),
    "serve": ("melanoma.serve.app", "web page and POST /predict for one image, on a trained run"),
}


def quiet_environment() -> None:
    """Keep TensorFlow's C++ start-up lines and albumentations' online version check out of the way
    (see `quiet`: both must be set up before TensorFlow is imported)."""
    quiet.install_filter()
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")


def _load(spec: str):
    module_name, _, prefix = spec.partition(":")
    module = importlib.import_module(module_name)
    configure = getattr(module, f"configure_{prefix}_parser" if prefix else "configure_parser")
    run = getattr(module, f"{prefix}_command" if prefix else "command")
    return configure, run


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melanoma", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (spec, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            configure, run = _load(spec)
            configure(child)
            child.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only=name)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if not argv else 2
    args.argv = argv  # the command as typed: `records` keeps it in its manifest, to be rebuilt by it
    return run_guarded(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
