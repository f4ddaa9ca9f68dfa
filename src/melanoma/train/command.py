"""`python train.py --config C --fold K [--set ...] [--force | --resume] [--seeds N]`: folds of a run, through its
family (with --seeds, of each of the config's N seed runs: runs/seeds.py).

Before any work, and before TensorFlow loads: the config (its keys and values, its family's own), the
environment (TF_CONFIG, MELANOMA_CPU_DEVICES), the folds asked for against data.folds and against the parts
the records hold, every input file, and a writable output_dir (`preflight`). Interrupted folds are not
restarted by accident. Then the run's lock (one writer per run, held by the chief of a cluster, whose
workers check that they see its output_dir), the family's preparation (the CNN's strategy, the trees'
features), the run bound to its config (`run_config.bind_run`), each fold not finished yet, and the run's
OOF once every fold has one. The model family is looked up by name (train/families/); nothing here
depends on which one it is.
"""
from __future__ import annotations

import argparse
import os
import statistics

from melanoma.core import arguments, environment, io_utils, metrics
from melanoma.core import config as config_lib
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.data import preflight, pseudo_labels
from melanoma.runs import fold_state, layout, run_config, run_lock, seeds
from melanoma.train.families import family as family_lib
from melanoma.train.oof import report_oof


def parse_folds(text: str, folds: int) -> list[int]:
    if text == "all":
        return list(range(folds))
    try:
        chosen = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--fold takes a fold number, a comma list or 'all', got '{text}'") from None
    bad = [k for k in chosen if not 0 <= k < folds]
    if bad:
        raise ConfigError(f"--fold {bad[0]} is out of range: data.folds = {folds} (0..{folds - 1})")
    return chosen


def configure_parser(parser: argparse.ArgumentParser) -> None:
    arguments.add_config_arguments(
        parser, force_help="train folds from scratch, even finished or interrupted ones",
        seeds_help="train N runs of the config, <name>-s0 .. <name>-s<N-1>, with seeds seed+0 .. seed+N-1")
    parser.add_argument("--fold", default="all", help="fold number, comma list, or 'all' (default)")
    parser.add_argument("--resume", action="store_true",
                        help="continue interrupted folds after their last completed epoch")


def check_interrupted(config: Config, family: family_lib.Family, folds: list[int], resume: bool,
                      force: bool) -> None:
    """Refuse to start an interrupted fold from scratch unless asked to: its epochs are work to keep.
    With --resume, refuse when no chosen fold has anything to resume (it would silently start afresh).
    A family whose folds train in one go has nothing to resume: its unfinished folds train again."""
    if force or not family.resumable:
        return
    if resume:
        pending = [fold for fold in folds if not family.fold_finished(config, fold)]
        if pending and all(fold_state.read_state(layout.fold_dir(config, fold)) is None for fold in pending):
            raise ConfigError(
                f"--resume: nothing to resume in {layout.run_dir(config)}: fold(s) "
                f"{', '.join(map(str, pending))} have no {layout.STATE} (a fold keeps its progress from the end "
                "of its first epoch on); train without --resume")
        return
    for fold in folds:
        folder = layout.fold_dir(config, fold)
        state = fold_state.read_state(folder)
        if state is not None and not family.fold_finished(config, fold):
            raise ConfigError(
                f"fold {fold} was interrupted after epoch {state['epoch']} of {state.get('epochs', '?')} "
                f"({os.path.join(folder, layout.STATE)}): add --resume to continue it, or --force to "
                "train it from scratch")


def check_before_work(args: argparse.Namespace, config: Config, family: family_lib.Family) -> list[int]:
    """Everything about the command line, the config, its files and the machine that can be checked before
    any work, without TensorFlow; returns the folds asked for."""
    folds = parse_folds(args.fold, config.data.folds)
    if args.resume and args.force:
        raise ConfigError("--resume continues interrupted folds and --force restarts them; give one of the two")
    environment.check()
    if args.resume and environment.cluster_tasks() > 1:
        raise ConfigError("--resume is not supported on a multi-worker cluster: the workers would not start "
                          "from the same state. Resume on one machine, or train the fold again with --force")
    family.check(config)
    preflight.check_training(config, folds, writes=environment.is_chief())
    pseudo_labels.check_source(config)  # pseudo_labels.source: a finished source, its test predictions, a rule
    return folds


def command(args: argparse.Namespace) -> int:
    seeds.check_count(args.seeds)
    if args.seeds:
        return train_seeds(args)
    config = config_lib.load_config(args.config, args.set)
    family = family_lib.lookup(config)
    folds = check_before_work(args, config, family)
    train_run(args, config, family, folds)
    return 0


def train_run(args: argparse.Namespace, config: Config, family: family_lib.Family, folds: list[int],
              prepared: dict | None = None) -> None:
    """The folds of one run: its lock, the folds still to train, the run bound to its config, each fold, its
    OOF. `prepared` keeps the family's training object for the next run of the same command (seeds)."""
    prepared = {} if prepared is None else prepared
    chief = environment.is_chief()
    with run_lock.hold(config, "train", chief) as lock:
        # what the run's folder says is read under the lock: a run being trained is not "interrupted"
        check_interrupted(config, family, folds, args.resume, args.force)
        if chief:
            io_utils.remove_leftovers(layout.run_dir(config))
        # Every worker decides from the run's own folder, so all of them train the same folds.
        todo = [fold for fold in folds if args.force or not family.fold_finished(config, fold)]
        if todo and "training" not in prepared:
            prepared["training"] = family.training(config, resume=args.resume)
        if todo and environment.cluster_tasks() > 1:
            run_lock.check_cluster_token(config, lock)
        # a changed config (or pseudo-label source) is refused; --force moves the old run aside (the chief writes)
        record = pseudo_labels.record(config)
        config_path = run_config.bind_run(config, args.config, force=args.force, write=chief, record=record)
        for fold in sorted(set(folds) - set(todo)):
            print(f"fold {fold}: already finished (use --force to train it again)")
        if todo:
            _fit_folds(config, config_path, prepared["training"], todo, chief, record)
        if chief:
            report_oof(config, family.fold_finished, family_lib.trained_as)


def train_seeds(args: argparse.Namespace) -> int:
    """--seeds N: the config's runs <name>-s0 .. <name>-s<N-1> (runs/seeds.py), one after another, each
    checked before the first trains; then their OOF AUCs side by side."""
    base = config_lib.load_config(args.config, args.set)
    configs = [config_lib.load_config(args.config, given) for given in seeds.seed_runs(base, args.seeds, args.set)]
    family = family_lib.lookup(base)
    folds = [check_before_work(args, config, family) for config in configs][0]
    prepared: dict = {}  # what the family prepares for training (a strategy, the trees' features), made once
    for index, config in enumerate(configs):
        print(f"seed run {config.name} (seed {config.seed}; {index + 1} of {len(configs)})")
        train_run(args, config, family, folds, prepared)
    if environment.is_chief():
        print(seed_summary(base, configs))
    return 0


def seed_summary(base: Config, configs: list[Config]) -> str:
    """The seed runs' OOF AUCs (those with every fold done), their mean and spread, and what to run next."""
    scores = {}
    for config in configs:
        path = os.path.join(layout.run_dir(config), layout.OOF)
        if io_utils.exists(path):
            oof = io_utils.read_csv(path)
            scores[config.name] = metrics.auc(oof["target"], oof["pred"])
    if not scores:
        return f"seeds of {base.name}: no run has every fold yet"
    values = list(scores.values())
    spread = f" ± {statistics.stdev(values):.4f} (sample std)" if len(values) > 1 else ""
    shown = ", ".join(f"{name} {auc:.4f}" for name, auc in scores.items())
    return (f"seeds of {base.name}: OOF AUC {shown}; mean {statistics.fmean(values):.4f}{spread} over "
            f"{len(values)} of {len(configs)} runs. Next: python infer.py --config ... --seeds {len(configs)} "
            f"(the seeds' mean), python -m melanoma compare {base.output_dir}")


def _fit_folds(config: Config, config_path: str, training, todo: list[int], chief: bool,
               record: dict | None = None) -> None:
    """Each fold of `todo` through the family; the other workers of a cluster write into folders of
    their own (run_config.worker_outputs)."""
    with run_config.worker_outputs(config, chief) as work:
        if chief:
            print(f"run {config.name}: resolved config in {config_path}")
        else:
            run_config.save_config(work, record=record)  # into its temporary folder: the fold code reads it there
            kind, index = environment.worker_task()
            print(f"run {config.name}: {kind} {index} of a cluster; the chief writes the run's files")
        for fold in todo:
            training.fit_fold(work, fold)
