"""Seeds as an axis of experiments: one config repeated over N seeds, each repetition a run of its own.

`python train.py --config C --seeds N` trains N runs, `<name>-s0` .. `<name>-s<N-1>`, whose seeds are the
config's `seed` + 0 .. N-1; nothing else differs. Each is a run like any other, bound to its config (its
`config.yaml` holds its name and seed), so `--seeds 5` after `--seeds 3` trains only s3 and s4, and
`infer.py --config C --seeds N` predicts each of them and writes their mean (predict/seed_ensemble.py).
A seed run is named by `--set` overrides (`name=<name>-s<k> seed=<seed + k>`): everything that finds a run
from a config and its overrides finds it so.

`compare` groups the runs that differ only by seed, whatever they are named (`group_key`: every key that
binds a run but the seed), and compares the seed means of two groups (evaluate/seeds.py).
"""
from __future__ import annotations

import json
import re

from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.runs import fold_state, run_config

MOST_SEEDS = 100
SEED_RUN = re.compile(r"^(?P<base>.+)-s(?P<index>\d+)$")  # how a seed run's name reads (labels only)
ENSEMBLE_SUFFIX = "-seeds"                                # <name>-seeds: the seeds' mean (infer --seeds)


def check_count(count: int | None) -> None:
    """--seeds N: a whole number from 1 to MOST_SEEDS (ConfigError otherwise, before any work)."""
    if count is not None and not 1 <= count <= MOST_SEEDS:
        raise ConfigError(f"--seeds takes the number of seeds, 1 to {MOST_SEEDS}, got {count}")


def run_name(name: str, index: int) -> str:
    return f"{name}-s{index}"


def overrides(config: Config, index: int) -> list[str]:
    """The --set values that make `config` its seed run number `index`."""
    return [f"name={run_name(config.name, index)}", f"seed={int(config.seed) + index}"]


def seed_runs(config: Config, count: int, given: list[str]) -> list[list[str]]:
    """For each of `count` seeds, the --set values of its run: the user's own, then the seed run's."""
    chosen = [text.split("=", 1)[0].strip() for text in given]
    for key in ("name", "seed"):
        if key in chosen:
            raise ConfigError(f"--seeds names each run <name>-s<k> and gives it seed <seed + k>: drop --set "
                              f"{key}=... (set the config's own name and seed instead)")
    return [list(given) + overrides(config, index) for index in range(count)]


MIXED_SUFFIX = "-mixed"  # a mean of runs that are not one experiment (--allow-mixed) says so in its name


def ensemble_name(name: str, mixed: bool = False) -> str:
    return name + ENSEMBLE_SUFFIX + (MIXED_SUFFIX if mixed else "")


def experiment_differences(runs: list[Config]) -> list[str]:
    """`run: key first -> its value` for each run bound to other settings than the first, seed aside (as
    group_key): empty when the runs are one experiment repeated over seeds."""
    defaults = run_config.code_defaults()
    first = {**defaults, **run_config.binding(runs[0])}
    found = []
    for run in runs[1:]:
        bound = {**defaults, **run_config.binding(run)}
        changed = [(key, first.get(key), bound.get(key)) for key in sorted(first.keys() | bound.keys())
                   if key != "seed" and first.get(key) != bound.get(key)]
        if changed:
            found.append(f"{run.name} ({fold_state.describe_differences(changed, 3)})")
    return found


def check_one_experiment(runs: list[Config], allow_mixed: bool, what: str) -> list[str]:
    """A seeds' mean is of runs of one experiment: ConfigError naming the runs that differ, unless
    `allow_mixed` (then the differences are returned, for the mean's name and record to say so)."""
    differences = experiment_differences(runs)
    if differences and not allow_mixed:
        raise ConfigError(f"{what}: the seed runs are not one experiment; they differ from {runs[0].name} in more "
                          f"than the seed: {'; '.join(differences)}. Train them again with one config "
                          "(python train.py --config ... --seeds N --force), or add --allow-mixed for a mean named "
                          f"...{MIXED_SUFFIX}")
    return differences


def group_key(config: Config, defaults: dict) -> str:
    """What a run is bound to, but its seed: runs with equal keys differ by their seed alone. `defaults`
    (run_config.binding of the code's base.yaml) stand for keys a run saved before they existed."""
    bound = {**defaults, **run_config.binding(config)}
    bound.pop("seed", None)
    return json.dumps(bound, sort_keys=True, default=str)


def group_label(names: list[str]) -> str:
    """`demo` for demo-s0, demo-s1 (and demo itself); the names joined with '+' when they share no base."""
    bases = {match.group("base") if (match := SEED_RUN.match(name)) else name for name in names}
    return bases.pop() if len(bases) == 1 else "+".join(sorted(names))
