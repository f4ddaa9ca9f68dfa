"""Scale of the tree model on ISIC 2024-sized metadata: fit time and peak memory on generated rows.

`python -m melanoma.tools.bench_trees [--rows 400000] [--patients 1042] [--positive-rate 0.001]
[--config configs/isic2024_tabular.yaml] [--set key=value ...] [--json] [--out FILE]` (`make bench-trees`) draws a
training table of `--rows` lesions in the ISIC 2024 layout (`synth_isic2024.metadata_table`, no images),
builds every feature of `tbp_features` (measurements, categoricals, derived, patient context), and fits the
config's tree model (`trees` section: the same HistGradientBoostingClassifier that training builds) on all
the rows, then predicts them, then measures permutation importance as a fold does (`trees.importance_rows`,
`importance_repeats`, `importance_by`) on a fold-sized part of the rows. It reports each step's seconds, the
process's resident memory after the imports and its peak (which include what the imports load), the feature
count and the machine's load, as a table or one JSON object. A fold trains on fewer rows than this (the
other folds' part), so the figure is an upper bound for one fold.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time

import numpy as np

from melanoma.core import arguments, io_utils, quiet
from melanoma.core import config as config_lib
from melanoma.core.errors import ConfigError
from melanoma.input import tbp_features
from melanoma.tools import synth_isic2024

# As in training (train/families/trees.py): scikit-learn's OpenMP threads wait passively, which
# OpenMP reads when it loads, so before anything here loads scikit-learn. Spinning threads made this fit 6x
# slower in CPU time on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PUBLISHED_ROWS, PUBLISHED_PATIENTS, PUBLISHED_RATE = 401_059, 1_042, 393 / 401_059  # the ISIC 2024 training table


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(step: str, figures: dict, function, *args, **kwargs):
    started, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    figures[f"{step}_seconds"] = round(time.perf_counter() - started, 2)
    figures[f"{step}_cpu_seconds"] = round(time.process_time() - cpu, 2)
    figures[f"{step}_resident_mb"] = round(resident_mb(), 1)
    print(f"  {step}: {figures[f'{step}_seconds']} s", file=sys.stderr, flush=True)
    return result


def run(config: config_lib.Config, rows: int, patients: int, positive_rate: float, seed: int = 0) -> dict:
    # the trees load scikit-learn's compiled code: imported once OMP_WAIT_POLICY above is in place
    from melanoma.train.families import trees

    figures = {"rows": rows, "patients": patients, "positive_rate": positive_rate,
               "resident_after_imports_mb": round(resident_mb(), 1)}
    table = timed("generate", figures, synth_isic2024.metadata_table, rows, patients, positive_rate, seed)
    vocabulary = tbp_features.vocabularies(table)
    built = timed("features", figures, tbp_features.build, table, vocabulary)
    values = timed("matrix", figures, lambda: built.frame.to_numpy(dtype=np.float64))
    target = table["target"].to_numpy()
    del table
    model = trees.new_trees(config, built.columns, built.categorical, 0)
    timed("fit", figures, model.fit, values, target)
    timed("predict", figures, model.predict_proba, values)
    importance(config, model, values, target, built.columns, figures, seed)
    figures.update(features=len(built.columns), categorical=len(built.categorical), positives=int(target.sum()),
                   iterations=int(model.n_iter_), peak_resident_mb=round(peak_mb(), 1))
    return figures


def importance(config: config_lib.Config, model, values: np.ndarray, target: np.ndarray, columns: list[str],
               figures: dict, seed: int) -> None:
    """Permutation importance as a fold computes it (trees.importance_rows, _repeats, _by) on a fold-sized
    part of the rows (1 / data.folds of them: the fold's validation part), timed."""
    # the trees load scikit-learn's compiled code: imported once OMP_WAIT_POLICY above is in place
    from melanoma.train.families import trees

    section = config.trees
    part = np.arange(len(target))[::int(config.data.folds)]
    rows = part[trees.importance_rows(target[part], section.importance_rows, seed)]
    sets = len(trees.importance_sets(columns, tbp_features.feature_group, section.importance_by))
    figures.update(importance_validation_rows=len(part), importance_rows=len(rows), importance_sets=sets,
                   importance_repeats=int(section.importance_repeats))
    timed("importance", figures, trees.permutation_importance, model, values[rows], target[rows], columns,
          int(section.importance_repeats), seed, tbp_features.feature_group, section.importance_by)


def machine() -> dict:
    return {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
            "load_average": [round(value, 2) for value in os.getloadavg()],
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
            "python": platform.python_version(), "scikit_learn": importlib.metadata.version("scikit-learn")}


def format_report(result: dict) -> str:
    lines = [f"trees on {result['rows']:,} generated rows ({result['patients']} patients, {result['positives']} "
             f"malignant), {result['features']} features ({result['categorical']} categorical), "
             f"{result['iterations']} iterations, {result['cpus']} CPUs, load {result['load_average']}"]
    for step in ("generate", "features", "matrix", "fit", "predict", "importance"):
        lines.append(f"  {step:<9} {result[f'{step}_seconds']:>8.1f} s   {result[f'{step}_cpu_seconds']:>8.1f} s CPU"
                     f"   resident after: {result[f'{step}_resident_mb']:>8,.0f} MiB")
    lines.append(f"  importance: {result['importance_sets']} shuffled sets x {result['importance_repeats']} repeats on "
                 f"{result['importance_rows']:,} of a fold's {result['importance_validation_rows']:,} validation rows")
    lines.append(f"  peak resident memory {result['peak_resident_mb']:,.0f} MiB (after the imports: "
                 f"{result['resident_after_imports_mb']:,.0f} MiB)")
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m melanoma.tools.bench_trees", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000, help="generated lesions (400,000)")
    parser.add_argument("--patients", type=int, default=PUBLISHED_PATIENTS,
                        help=f"patients they belong to ({PUBLISHED_PATIENTS:,}, as published)")
    parser.add_argument("--positive-rate", type=float, default=PUBLISHED_RATE,
                        help=f"share of malignant lesions ({PUBLISHED_RATE:.5f}, as published)")
    parser.add_argument("--seed", type=int, default=0)
    arguments.add_config_arguments(
        parser, "its `trees` section configures the trees and their importances, data.folds the validation part "
                "(default: the ISIC 2024 tree config)", config_default="configs/isic2024_tabular.yaml")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--out", help="also write the JSON object to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    quiet.install_filter()
    try:
        config = config_lib.load_config(args.config, args.set)
        synth_isic2024.check_counts(args.rows, args.patients, args.positive_rate)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {**run(config, args.rows, args.patients, args.positive_rate, args.seed), **machine(),
              "command": "python -m melanoma.tools.bench_trees " + " ".join(argv if argv is not None else sys.argv[1:]),
              "trees": dict(config.trees)}
    print(json.dumps(result) if args.json else format_report(result))
    if args.out:
        io_utils.write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
