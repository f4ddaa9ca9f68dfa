"""`python -m melanoma sweep --config C --grid KEY=V1,V2 [KEY=...] [--seeds N] [--fold all] [--set ...]`: a grid
of settings, each combination a run of its own, trained, predicted, then compared among themselves.

Choosing a recipe by hand takes a train, an infer and a name per setting, and a `compare` of everything else
`outputs/` holds besides. Here each combination of the grid's values is a run named by its settings
(`demo-lr_peak_per_image=2.5e-5-epochs=8`: the config's name, then each grid key's last dotted part and the value
as typed; the whole dotted key where two grid keys end alike; a value that is no safe folder name gets a hash of
itself), bound to its config as every run is (runs/run_config.py), its folds trained through its family as `train`
does (train/command.py) and its submission written as `infer` writes it (predict/inference.py; not where the
config has no test set, nor by a sweep of some folds: `--fold 0` is a screen that compares OOF and writes no
submission, and the CNN family predicts no test images for it). With `--seeds N` a combination is N seed runs,
`<run>-s0` .., as `train --seeds` makes them (runs/seeds.py), and is judged by their mean.

Everything that can be refused is refused before the first fold trains (exit status 2, one line): every
combination's config goes through the same checks as `--set` (unknown key, wrong type, bad choice), two
combinations that resolve to one config, a key both in --grid and --set, and a run of a combination's name
trained under another config. Then a run that is finished (every fold asked for, and its submission where there
is a test set) is skipped, so an interrupted sweep goes on where it stopped, and a run with an interrupted fold
resumes it as `train --resume` does.

At the end the sweep's runs alone go through `compare`'s machinery (evaluate/compare.py, seed_groups.py): each
run's OOF AUC and 95% interval, its difference from the best with DeLong's test clustered by patient (with
--seeds, the seed means' test), and a column per grid key. The table is also written, atomically, as sweep.json
and sweep.csv into <output_dir>/sweep-<name>-<hash of the grid>/ (no run folder: `compare` passes it by).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shlex
from dataclasses import dataclass

import pandas as pd

from melanoma.core import arguments, environment, io_utils
from melanoma.core import config as config_lib
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.data import preflight, pseudo_labels
from melanoma.evaluate import compare, scoring, seed_groups
from melanoma.predict import inference
from melanoma.runs import fold_state, layout, run_config, run_results, seeds
from melanoma.train import command as train_command
from melanoma.train.families import family as family_lib

UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")  # what a value may not keep in a run's (folder) name
LONGEST_NAME = 150                          # a run's name stays far below a file system's 255 bytes
TABLE_JSON, TABLE_CSV = "sweep.json", "sweep.csv"


@dataclass
class Combination:
    """One point of the grid: its run's name, its settings (grid key -> value as typed) and its runs, each as
    (the --set values that make it, its resolved config): the run itself, or its seed runs."""

    name: str
    settings: dict[str, str]
    runs: list[tuple[list[str], Config]]


def settings_text(settings: dict[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in settings.items())


def digest(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


# --- the grid --------------------------------------------------------------------------------------


def split_values(text: str) -> list[str]:
    """`0.05,0.1` -> ['0.05', '0.1']. A comma inside brackets, braces or quotes belongs to its value, so a
    grid can hold YAML lists (`data.external_files=[a,b],[c]` is two values)."""
    values, current, depth, quote = [], "", 0, None
    for character in text:
        if quote:
            quote = None if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "[{":
            depth += 1
        elif character in "]}":
            depth -= 1
        elif character == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += character
    return values + [current.strip()]


def parse_grid(items: list[str], given: list[str]) -> dict[str, list[str]]:
    """--grid KEY=V1,V2 ... as {key: [value text, ...]} in the order given; ConfigError for a malformed item,
    an empty or repeated value, a key named twice, and the keys `check_grid_keys` refuses."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key or not text.strip():
            raise ConfigError(f"--grid takes KEY=V1,V2,... (e.g. --grid train.lr_peak_per_image=1e-4,3e-4), "
                              f"got '{item}'")
        values = split_values(text)
        if "" in values:
            raise ConfigError(f"--grid {item}: an empty value; give one value between each two commas")
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ConfigError(f"--grid {item} gives {key}={repeated[0]} twice; give each value once")
        if key in grid:
            raise ConfigError(f"--grid names {key} twice; give its values once: {key}={','.join(grid[key] + values)}")
        grid[key] = values
    check_grid_keys(list(grid), given)
    return grid


def check_grid_keys(keys: list[str], given: list[str]) -> None:
    """A grid key is the sweep's own: not `name` (the sweep names the runs), not also set by --set, and not a
    section holding another grid key (two values for one key)."""
    chosen = [config_lib.parse_override(text)[0] for text in given]
    for index, key in enumerate(keys):
        if key == "name":
            raise ConfigError("--grid name=...: a sweep names each run from its settings; give the runs' common "
                              "prefix with --set name=...")
        for other in chosen:
            if key == other or key.startswith(other + ".") or other.startswith(key + "."):
                raise ConfigError(f"{key} is given both in --grid and in --set ({other}); drop it from one of them")
        for other in keys[index + 1:]:
            if key.startswith(other + ".") or other.startswith(key + "."):
                raise ConfigError(f"--grid {key} and --grid {other} set the same key; keep one of them")


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each grid key as a run's name and the table show it: its last dotted part, or the whole dotted key where
    two grid keys end alike (`train.dropout` beside `model.dropout`)."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: part if last.count(part) == 1 else key for key, part in zip(keys, last)}


def value_label(text: str) -> str:
    """A value as a run's name shows it: as typed where that is a safe folder name; else its unsafe characters
    as '_' and a hash of the whole text, so that two values never share a name."""
    safe = UNSAFE.sub("_", text)
    return safe if safe == text else f"{safe}~{digest(text)}"


def run_label(base: str, settings: dict[str, str], short: dict[str, str]) -> str:
    """`<base>-<short key>=<value>-...`, shortened with a hash of itself past LONGEST_NAME characters."""
    label = "-".join([base] + [f"{short[key]}={value_label(value)}" for key, value in settings.items()])
    return label if len(label) <= LONGEST_NAME else f"{label[:LONGEST_NAME - 7]}~{digest(label)}"


# --- every combination resolved and checked before any work -----------------------------------------


def checked_value(args: argparse.Namespace, key: str, value: str) -> None:
    """One grid value through the checks of --set, alone on the config: the error names the grid item."""
    text = f"{key}={value}"
    try:
        config_lib.load_config(args.config, list(args.set) + [text])
    except ConfigError as error:
        raise ConfigError(f"--grid {text}: {str(error).replace(f' in --set {text}', '')}") from None


def combination(args: argparse.Namespace, name: str, settings: dict[str, str], overrides: list[str]) -> Combination:
    """A combination's run (with --seeds, its seed runs) resolved; a ConfigError names the combination."""
    try:
        config = config_lib.load_config(args.config, overrides)
        runs = [(overrides, config)]
        if args.seeds:
            given = [overrides + seeds.overrides(config, index) for index in range(args.seeds)]
            runs = [(each, config_lib.load_config(args.config, each)) for each in given]
    except ConfigError as error:
        raise ConfigError(f"sweep run {name} ({settings_text(settings)}): {error}") from None
    return Combination(name, settings, runs)


def resolve(args: argparse.Namespace, grid: dict[str, list[str]]) -> tuple[Config, list[Combination]]:
    """The base config and every combination of the grid (in the grid's order), each value checked alone
    first, then each combination whole, then that no two resolve to one config."""
    base = config_lib.load_config(args.config, args.set)
    for key, values in grid.items():
        for value in values:
            checked_value(args, key, value)
    if args.seeds and "seed" in grid:
        raise ConfigError("--grid seed=... and --seeds both choose the runs' seeds; give one of them")
    if args.seeds:  # --seeds names and seeds the runs: neither may come from --set or --grid
        seeds.seed_runs(base, args.seeds, list(args.set) + [f"{key}={values[0]}" for key, values in grid.items()])
    short = short_keys(list(grid))
    # a fixed submission file name (ISIC 2024's submission.csv) would be every run's: each writes <its name>.csv
    own_file = ["submission.file_name=null"] if base.submission.file_name else []
    combos = []
    for chosen in itertools.product(*grid.values()):
        settings = dict(zip(grid, chosen))
        name = run_label(base.name, settings, short)
        overrides = list(args.set) + [f"{key}={value}" for key, value in settings.items()] + own_file + [f"name={name}"]
        combos.append(combination(args, name, settings, overrides))
    check_distinct(combos)
    return base, combos


def check_distinct(combos: list[Combination]) -> None:
    """Two combinations whose configs bind a run alike (run_config.binding: everything but names, locations and
    display) would train one experiment twice under two names: refused, naming both."""
    seen: dict[str, Combination] = {}
    for combo in combos:
        key = json.dumps(run_config.binding(combo.runs[0][1]), sort_keys=True, default=str)
        if key in seen:
            first = seen[key]
            raise ConfigError(f"--grid: {first.name} ({settings_text(first.settings)}) and {combo.name} "
                              f"({settings_text(combo.settings)}) resolve to the same config; drop one of the values")
        seen[key] = combo


def check_unclaimed(config: Config, config_path: str) -> None:
    """A run of this name trained under another config is refused before any work, as train refuses it; a
    sweep has no --force: the user names the sweep otherwise or moves the old run aside."""
    folder = run_config.run_folder(config)
    saved = run_config.saved_config(config)
    if saved is None or not run_config.trained_work(folder):
        return
    defaults = run_config.binding(run_config.base_defaults(config_path))
    differences = fold_state.config_differences(run_config.binding(saved), run_config.binding(config), defaults)
    if differences:
        saved_path = os.path.join(folder, layout.CONFIG_FILE)
        raise ConfigError(f"run '{config.name}' was trained with another config ({saved_path}: "
                          f"{fold_state.describe_differences(differences, 3)}); give the sweep another name "
                          f"(--set name=...), or move {folder} aside")
    # the same config, bound to a pseudo-label source whose predictions changed since: train's own refusal
    run_config.bind_run(config, config_path, write=False, record=pseudo_labels.record(config))


def train_arguments(args: argparse.Namespace, overrides: list[str], resume: bool = False) -> argparse.Namespace:
    """What train's own functions read from its command line, for one run of the sweep."""
    return argparse.Namespace(config=args.config, fold=args.fold, set=overrides, force=False, resume=resume,
                              seeds=None)


def check_runs(args: argparse.Namespace, combos: list[Combination]) -> dict[str, list[int]]:
    """Train's checks before work (train/command.py: the family's, the environment, the folds, the files, a
    writable output_dir) and infer's (the test files and sample) for every run; returns each combination's
    folds to train (`--fold all` is every fold of its own data.folds, which a grid may change)."""
    folds: dict[str, list[int]] = {}
    for combo in combos:
        for overrides, config in combo.runs:
            family = family_lib.lookup(config)
            folds[combo.name] = train_command.check_before_work(train_arguments(args, overrides), config, family)
            check_unclaimed(config, args.config)
            if config.data.test_files and every_fold(config, folds[combo.name]):
                preflight.check_inference(config)
    return folds


# --- training and predicting -------------------------------------------------------------------------


def pending(config: Config, family: family_lib.Family, folds: list[int]) -> list[int]:
    return [fold for fold in folds if not family.fold_finished(config, fold)]


def interrupted(config: Config, family: family_lib.Family, folds: list[int]) -> bool:
    """Whether a fold still to train stopped part-way and can go on from its last epoch (train --resume)."""
    return family.resumable and any(fold_state.read_state(layout.fold_dir(config, fold)) is not None
                                    for fold in pending(config, family, folds))


def predicted(config: Config, family: family_lib.Family) -> bool:
    """Whether infer wrote the submission of the run's finished folds (its record, written last, is there);
    true where the config has no test set."""
    if not config.data.test_files:
        return True
    done = [fold for fold in range(config.data.folds) if family.fold_finished(config, fold)]
    name = layout.submission_name(inference.submission_stem(config), done, config.data.folds)
    return io_utils.exists(layout.record_path(os.path.join(config.submission_dir, name)))


def every_fold(config: Config, folds: list[int]) -> bool:
    """Whether the sweep trains every fold of the run (`--fold all`, or a list naming each of them)."""
    return set(range(config.data.folds)) <= set(folds)


def infer_hint(args: argparse.Namespace, overrides: list[str]) -> str:
    """The command that predicts one of the sweep's runs from the folds it holds."""
    given = " ".join(shlex.quote(text) for text in overrides)
    return f"python -m melanoma infer --config {shlex.quote(args.config)} --set {given} --allow-partial"


def sweep_one(args: argparse.Namespace, combo: Combination, folds: list[int], where: str) -> str:
    """One combination: skipped when every run of it is finished; else its unfinished folds trained (an
    interrupted one resumed) and its test images predicted. A sweep of some folds only compares their OOF:
    it writes no submission (a screen is none; the CNN family predicts no test images) and says how to.
    Returns what was done."""
    first = combo.runs[0][1]  # a combination's runs (its seed runs) share family, folds and test set
    family = family_lib.lookup(first)
    predicts = every_fold(first, folds)
    to_train = [(overrides, config) for overrides, config in combo.runs if pending(config, family, folds)]
    to_predict = [(overrides, config) for overrides, config in combo.runs
                  if predicts and (pending(config, family, folds) or not predicted(config, family))]
    if not to_train and not to_predict:
        print(f"{where}: skipped: finished")
        return "skipped"
    resuming = any(interrupted(config, family, folds) for _, config in to_train)
    print(f"{where}: " + ("training (resuming an interrupted fold)" if resuming else "training" if to_train
                          else "predicting the test images"))
    prepared: dict[bool, dict] = {False: {}, True: {}}  # the family's training object, made once per resume mode
    for overrides, config in to_train:
        resume = interrupted(config, family, folds)
        if args.seeds:
            print(f"seed run {config.name} (seed {config.seed})")
        train_command.train_run(train_arguments(args, overrides, resume), config, family, folds, prepared[resume])
    if not environment.is_chief():
        return "trained"
    if not predicts and first.data.test_files:
        hints = "; ".join(infer_hint(args, overrides) for overrides, _ in combo.runs)  # each seed run's own
        print(f"{where}: no submission written (fold(s) {args.fold} of {first.data.folds}: a screen "
              f"compares OOF); to write one: {hints}")
    for overrides, config in to_predict:
        if config.data.test_files:
            partial = bool(pending(config, family, list(range(config.data.folds))))
            inference.infer_run(argparse.Namespace(config=args.config, recompute=False, force=False,
                                                   allow_partial=partial), overrides)
    return "trained" if to_train else "predicted"


# --- the table ---------------------------------------------------------------------------------------


def sweep_rows(args: argparse.Namespace, combos: list[Combination], folds: dict[str, list[int]]) -> list[dict]:
    """compare's rows of the sweep's runs alone (seed runs as seed groups with --seeds), each with its
    combination's settings; with --fold K, on fold K's OOF alone."""
    paths = [layout.run_dir(config) for combo in combos for _, config in combo.runs]
    # a sweep of some folds (the same for every combination) compares their OOF alone
    scored = None if args.fold == "all" else next(iter(folds.values()))
    rows = compare.compare_paths([path for path in paths if run_results.is_run_folder(path)],
                                 bootstrap=args.bootstrap, seed=args.seed, seeds=bool(args.seeds), folds=scored)
    owner = {config.name: combo for combo in combos for _, config in combo.runs}
    for row in rows:
        combo = owner.get((row.get("runs") or [row["name"]])[0])
        row["settings"] = dict(combo.settings) if combo else {}
    return rows


def table_cells(row: dict, keys: list[str]) -> list[str]:
    """One row of the printed table: rank, run, the settings, folds, OOF AUC, interval, vs best, p, note."""
    if row["status"] == "complete":
        auc = f"{row['auc']:.4f}"
    else:
        auc = f"({row['auc_partial']:.4f})*" if row["auc_partial"] is not None else "-"
    interval = f"{row['ci95'][0]:.4f}-{row['ci95'][1]:.4f}" if row["ci95"] else "-"
    if row["delta_best"] is None:
        versus = "-"
    else:
        versus = "best" if row["rank"] == 1 else f"{row['delta_best']:+.4f}"
    note = row["status"] if row["status"] != "complete" else ""
    note = "; ".join(filter(None, [note, row["note"]]))
    return [str(row["rank"] or "-"), row["name"], *[row["settings"].get(key, "?") for key in keys],
            f"{row['folds_done']}/{row['folds'] or '?'}", auc, interval, versus,
            "-" if row["p_best"] is None else f"{row['p_best']:.3g}", note]


def format_sweep(rows: list[dict], keys: list[str], deterministic: bool | None) -> str:
    """The sweep's table (fixed width), what its p-values are, and the seed groups' block where there are any."""
    short = short_keys(keys)
    header = ["#", "run", *[short[key] for key in keys], "folds", "OOF AUC", "95% CI", "vs best", "p", "note"]
    lines = [header] + [table_cells(row, keys) for row in rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    if any(row["status"] == "incomplete" for row in rows):
        text.append("(...)* partial AUC over the folds done; not ranked (train every fold to compare)")
    grouped = any(row.get("kind") == "seeds" for row in rows)
    if grouped:
        text.append("OOF AUC: the seeds' mean; 95% CI and p: patients and seeds both sampled (seed means' test)")
    else:
        text.append("95% CI: patient bootstrap; p: DeLong's test clustered by patient, against the best run")
        text.append("one seed per setting" + (" (train.deterministic off)" if deterministic is False else "")
                    + ": a difference within the seed-to-seed spread can be the seed's doing; compare seed means "
                      "(--seeds 3)")
    return "\n".join(text + seed_groups.format_block(rows))


def table_frame(rows: list[dict], keys: list[str]) -> pd.DataFrame:
    """The table as sweep.csv holds it: one row per run (or seed group), a column per grid key."""
    records = []
    for row in rows:
        interval = row["ci95"] or (None, None)
        records.append({"rank": row["rank"], "run": row["name"], **{key: row["settings"].get(key) for key in keys},
                        "runs": " ".join(row.get("runs") or [row["name"]]), "status": row["status"],
                        "folds_done": row["folds_done"], "folds": row["folds"], "auc": row["auc"],
                        "auc_partial": row["auc_partial"], "ci95_low": interval[0], "ci95_high": interval[1],
                        "delta_best": row["delta_best"], "p_best": row["p_best"], "p_test": row["p_test"],
                        "note": row["note"]})
    return pd.DataFrame(records)


def write_sweep_table(folder: str, rows: list[dict], keys: list[str], facts: dict) -> None:
    """sweep.json (the facts of the sweep and compare's rows) and sweep.csv, each written atomically."""
    io_utils.write_text_atomic(os.path.join(folder, TABLE_JSON),
                               json.dumps({**facts, "rows": rows}, indent=1, default=str))
    io_utils.write_csv_atomic(table_frame(rows, keys), os.path.join(folder, TABLE_CSV))


# --- the command -------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    arguments.add_config_arguments(
        parser, set_help="override config keys of every run, e.g. --set train.epochs=2",
        seeds_help="train each combination with N seeds (<run>-s0 ..) and compare the seed means")
    parser.add_argument("--grid", nargs="+", required=True, action="extend", metavar="KEY=V1,V2",
                        help="config keys and their values, each combination a run, e.g. --grid "
                             "trees.learning_rate=0.05,0.1 trees.max_leaf_nodes=7,15")
    parser.add_argument("--fold", default="all", help="fold number, comma list, or 'all' (default)")
    scoring.add_bootstrap_arguments(parser, "each run's 95%% interval")


def command(args: argparse.Namespace) -> int:
    seeds.check_count(args.seeds)
    scoring.check_bootstrap_arguments(args)
    grid = parse_grid(args.grid, args.set)
    base, combos = resolve(args, grid)
    folds = check_runs(args, combos)
    runs = sum(len(combo.runs) for combo in combos)
    print(f"sweep of {args.config}: {len(combos)} combination(s), {runs} run(s), fold(s) {args.fold}; every config "
          "checked")
    for index, combo in enumerate(combos, start=1):
        sweep_one(args, combo, folds[combo.name], f"sweep {index}/{len(combos)}: {combo.name}")
    if not environment.is_chief():
        return 0
    rows = sweep_rows(args, combos, folds)
    keys = list(grid)
    deterministic = (base.get("train") or {}).get("deterministic")  # None where the code has no such key
    print(format_sweep(rows, keys, deterministic))
    if args.fold != "all":
        print(f"scored on fold(s) {args.fold} alone (--fold): fewer images, a wider interval than every fold's OOF")
    facts = {"config": args.config, "grid": grid, "set": list(args.set), "seeds": args.seeds, "fold": args.fold,
             "deterministic": deterministic,
             "combinations": [{"name": combo.name, "settings": combo.settings,
                               "runs": [config.name for _, config in combo.runs]} for combo in combos]}
    grid_hash = digest(json.dumps([grid, list(args.set), args.seeds]), 8)
    folder = os.path.join(base.output_dir, f"sweep-{base.name}-{grid_hash}")
    write_sweep_table(folder, rows, keys, facts)
    print(f"table: {os.path.join(folder, TABLE_CSV)} and {TABLE_JSON}; every run of {base.output_dir}: "
          f"python -m melanoma compare {base.output_dir}")
    return 0
