"""A tree run's permutation importances over its folds, for `report`: importance.csv (mean and spread
across folds of each fold's AUC drop, per feature and per feature group) and importance.png.

Each fold writes its own fold<K>/importance.csv when it is trained (train/families/tree_model.py:
permutation importance on the fold's validation part); a run whose folds hold none gets no section.
"""
from __future__ import annotations

import os

import pandas as pd

from melanoma.core import io_utils
from melanoma.evaluate import plots
from melanoma.runs import layout


def has_importances(run_path: str) -> bool:
    """Whether any fold of the run wrote permutation importances."""
    return bool(layout.fold_numbers(run_path, holding=layout.IMPORTANCE))


def importance_report(run_path: str, folder: str, top: int = 25) -> tuple[pd.DataFrame | None, list[str], list[str]]:
    """(importances averaged over folds, files written, notes) for `report`: importance.csv over folds
    (mean and std across folds of each fold's mean AUC drop) and importance.png (the `top` features
    and every group)."""

    frames = [io_utils.read_csv(os.path.join(layout.fold_path(run_path, fold), layout.IMPORTANCE)).assign(fold=fold)
              for fold in layout.fold_numbers(run_path, holding=layout.IMPORTANCE)]
    if not frames:
        return None, [], ["no fold<K>/importance.csv (trees.importance_repeats: 0?); importances left out"]
    every = pd.concat(frames, ignore_index=True)
    table = (every.groupby(["kind", "name", "group"], sort=False)["auc_drop"]
             .agg(auc_drop="mean", auc_drop_fold_std="std", folds="count").reset_index())
    table["auc_drop_fold_std"] = table["auc_drop_fold_std"].fillna(0.0)
    table = table.sort_values(["kind", "auc_drop"], ascending=[True, False], ignore_index=True)
    files = []
    path = os.path.join(folder, layout.IMPORTANCE)
    io_utils.write_csv_atomic(table, path)
    files.append(path)

    plt = plots.pyplot()
    shown = [table[table["kind"] == "feature"].head(top), table[table["kind"] == "group"]]
    figure, axes_list = plt.subplots(1, 2, figsize=(13, max(4, 0.28 * len(shown[0]) + 1)),
                                     gridspec_kw={"width_ratios": [3, 2]})
    for axes, part, title in zip(axes_list, shown, (f"top {len(shown[0])} features", "feature groups")):
        part = part.iloc[::-1]
        axes.barh(part["name"], part["auc_drop"], xerr=part["auc_drop_fold_std"], color="tab:blue", alpha=0.8)
        axes.axvline(0, color="grey", lw=1)
        axes.set(xlabel="OOF AUC lost when permuted (mean over folds)", title=title)
        axes.tick_params(axis="y", labelsize=7)
        axes.grid(alpha=0.3, axis="x")
    figure.suptitle(f"permutation importance on each fold's validation part ({len(frames)} folds)")
    path = os.path.join(folder, "importance.png")
    plots.save(figure, path)
    files.append(path)
    return table, files, []


def format_importance(table: pd.DataFrame, top: int = 10) -> str:
    """The groups and the `top` features, as text."""
    lines = ["permutation importance (AUC lost when permuted, mean over folds):"]
    for kind, limit in (("group", None), ("feature", top)):
        part = table[table["kind"] == kind]
        part = part.head(limit) if limit else part
        lines.append(f"  {'group' if kind == 'group' else 'feature':<44}{'AUC drop':>10}{'fold std':>10}")
        lines += [f"  {row['name']:<44}{row['auc_drop']:>10.4f}{row['auc_drop_fold_std']:>10.4f}"
                  for _, row in part.iterrows()]
    return "\n".join(lines)
