"""Seed groups in `compare`: the runs that differ only by their seed, shown as one row.

Runs belong together when everything that binds a run but the seed is equal (`seeds.group_key`: the
backbone, the data, the folds, the schedule, ...), whatever their names; `train.py --seeds N` makes such
runs (`<name>-s0` ..), and a plain run of the config with another seed joins them. Two runs of one seed
are one seed run twice: one stays in the group (a run named as `--seeds` names them first, then the first by
name), the other keeps a row of its own with a note.
A group needs two complete runs; blends never group.

A group's row holds the mean of its seeds' OOF AUCs (its `auc`, ranked with the other rows), the seeds'
spread (sample standard deviation, lowest and highest), each seed run's AUC, and a 95% interval of the
mean in which the patients and the seeds are both sampled (`statistics.seed_mean_interval`). Below the
table, each group's mean is compared with the best group's by `statistics.seed_means_test` (patient-
clustered, seeds counted as a sample). A group and a single run are not tested against each other: a
single run says nothing of its config's seed-to-seed spread.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from melanoma.core.errors import DataError
from melanoma.evaluate import statistics
from melanoma.runs import run_config, run_results, seeds

PREFIX = "seeds:"  # a group's key in compare's frames, apart from any run folder's path


def groups(rows: list[dict], runs: dict[str, run_results.Run]) -> list[list[dict]]:
    """Lists of complete rows (two or more, distinct seeds) whose runs differ only by seed, each sorted by
    name. A run repeating a seed of its group gets a note and stays apart."""
    defaults = run_config.binding(run_config.code_defaults())
    found: dict[str, list[dict]] = {}
    # a seed run of `train --seeds` stands for its seed before another run of the same seed
    for row in sorted(rows, key=lambda r: (not seeds.SEED_RUN.match(r["name"]), r["name"])):
        run = runs.get(row["path"])
        if row["status"] != "complete" or run is None or run.config is None or run.blend is not None:
            continue
        found.setdefault(seeds.group_key(run.config, defaults), []).append(row)
    result = []
    for members in found.values():
        kept, seen = [], {}
        for row in members:  # in the order above
            seed = runs[row["path"]].config.get("seed")
            if seed in seen:
                row["note"] = "; ".join(filter(None, [row["note"], f"repeats seed {seed} of {seen[seed]}: not in "
                                                                   "its seed group"]))
                continue
            seen[seed] = row["name"]
            kept.append(row)
        if len(kept) >= 2:
            result.append(sorted(kept, key=lambda r: r["name"]))
    return result


def aligned(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """(image_name, patient_id, target of the images every frame scored; their predictions, runs x images).
    DataError when two frames disagree on an image's target or patient."""
    base = frames[0][["image_name", "patient_id", "target"]].drop_duplicates("image_name")
    for frame in frames[1:]:
        base = base[base["image_name"].isin(frame["image_name"])]
    base = base.sort_values("image_name").reset_index(drop=True)
    preds = []
    for frame in frames:
        indexed = frame.drop_duplicates("image_name").set_index("image_name").loc[base["image_name"]]
        if (indexed["target"].to_numpy() != base["target"].to_numpy()).any() or \
                (indexed["patient_id"].astype(str).to_numpy() != base["patient_id"].astype(str).to_numpy()).any():
            raise DataError("runs of a seed comparison give one image different targets or patients")
        preds.append(indexed["pred"].to_numpy(dtype=np.float64))
    return base, np.array(preds)


def group_row(members: list[dict], runs: dict[str, run_results.Run], frames: dict) -> dict[str, Any]:
    """One row for a group's member rows (see the module docstring); its frames are kept under its key."""
    first = members[0]
    names = [row["name"] for row in members]
    label = seeds.group_label(names)
    key = PREFIX + label
    frames[key] = [frames[row["path"]] for row in members]
    aucs = [row["auc"] for row in members]
    unselected = [row["auc_unselected"] for row in members]
    row = {**first, "name": label, "path": key, "kind": "seeds", "runs": names,
           "seeds": [{"name": r["name"], "seed": runs[r["path"]].config.get("seed"), "auc": r["auc"]} for r in members],
           "auc": float(np.mean(aucs)), "seed_std": float(np.std(aucs, ddof=1)), "seed_min": min(aucs),
           "seed_max": max(aucs), "auc_unselected": None if None in unselected else float(np.mean(unselected)),
           "selection_gain": None, "pauc_tpr80": _mean([r["pauc_tpr80"] for r in members]),
           "fold_mean": None, "fold_std": None, "ci95": None, "vs_best_group": None,
           "note": f"{len(members)} seeds, std {float(np.std(aucs, ddof=1)):.4f}"}
    try:
        base, preds = aligned(frames[key])
        interval = statistics.seed_mean_interval(base["target"], preds, base["patient_id"])
        row["ci95"] = interval["ci95"]
        row["seed_std_beyond_sampling"] = interval["seed_std"]
    except DataError as error:
        row["note"] += f"; no interval: {error}"
    return row


def _mean(values: list) -> float | None:
    return None if any(value is None for value in values) else float(np.mean(values))


def collapse(rows: list[dict], runs: dict[str, run_results.Run], frames: dict) -> list[dict]:
    """The rows with each seed group's member rows replaced by the group's row."""
    found = groups(rows, runs)
    members = {row["path"] for group in found for row in group}
    return [row for row in rows if row["path"] not in members] + [group_row(group, runs, frames) for group in found]


def versus(row: dict, best: dict, frames: dict) -> tuple[dict, int]:
    """statistics.seed_means_test of `row`'s group (a) against `best`'s (b), on the images every run of
    both scored, and how many images that is; DataError when they cannot be compared."""
    ours, theirs = frames[row["path"]], frames[best["path"]]
    base, preds = aligned(ours + theirs)
    return statistics.seed_means_test(base["target"], preds[:len(ours)], preds[len(ours):],
                                      base["patient_id"]), int(len(base))


def p_against_best(row: dict, best: dict, frames: dict) -> None:
    """compare's p column for a group ranked below the best row, itself a group: the seed means' test."""
    try:
        result, common = versus(row, best, frames)
    except DataError as error:
        row["note"] = "; ".join(filter(None, [row["note"], f"no p-value: {error}"]))
        return
    row.update(p_best=float(f"{result['p']:.3g}"), p_test="seeds", n_common=common)


def compare_groups(rows: list[dict], frames: dict) -> None:
    """Each group row's `vs_best_group`: its seed mean against the best group's (the highest mean AUC)."""
    grouped = [row for row in rows if row.get("kind") == "seeds" and row["auc"] is not None]
    if len(grouped) < 2:
        return
    best = max(grouped, key=lambda row: row["auc"])
    best["vs_best_group"] = {"best": best["name"], "difference": 0.0}
    for row in grouped:
        if row is best:
            continue
        try:
            result, common = versus(row, best, frames)
        except DataError as error:
            row["vs_best_group"] = {"best": best["name"], "note": str(error)}
            continue
        row["vs_best_group"] = {"best": best["name"], "difference": result["difference"], "ci95": result["ci95"],
                                "p": result["p"], "se_patients": result["se_data"], "se_seeds": result["se_seeds"],
                                "df": result["df"], "n_common": common}


def format_block(rows: list[dict]) -> list[str]:
    """The seed groups under compare's table: each seed's AUC, the spread, and the test against the best."""
    grouped = [row for row in rows if row.get("kind") == "seeds"]
    if not grouped:
        return []
    lines = ["", "seed groups (runs that differ only by seed; CI and p: patients and seeds both sampled):"]
    for row in sorted(grouped, key=lambda r: -(r["auc"] or 0)):
        each = " ".join(f"{seed['name']}={seed['auc']:.4f}" for seed in row["seeds"])
        line = (f"  {row['name']}: {len(row['seeds'])} seeds, mean {row['auc']:.4f}, std {row['seed_std']:.4f}, "
                f"{row['seed_min']:.4f}-{row['seed_max']:.4f} ({each})")
        versus = row.get("vs_best_group") or {}
        if versus.get("p") is not None:
            low, high = versus["ci95"]
            line += (f"; vs {versus['best']}: {versus['difference']:+.4f} (95% CI {low:+.4f} to {high:+.4f}), "
                     f"p {versus['p']:.3g}")
        elif versus.get("difference") == 0.0:
            line += "; best group"
        lines.append(line)
    return lines
