"""Report of one run: ROC curve, prediction histograms, training curves and a table of cutoffs.

`python -m melanoma report CONFIG [--set key=value ...] [--cutoffs 0.1 0.5] [--sensitivity 0.9 0.95]`

Writes into `<output_dir>/<name>/report/`:
  roc.png              ROC curve of the OOF predictions with its AUC (and 95% interval)
  histograms.png       predicted probability of benign and of malignant images
  training_curves.png  per-epoch loss and AUC (train and validation) of every fold with a history.csv
  epoch_selection.png  every fold's validation AUC per epoch (from val_epochs.csv), with the epoch its
                       checkpoint kept and the epoch the other folds choose for it (auc_unselected)
  cutoffs.csv          sensitivity, specificity, precision and TP/FP/TN/FN at each cutoff
  score.json           the `score --json` result
  confusion_matrix.png binary head: the 2x2 confusion matrix at each sensitivity cutoff (90%, 95%);
                       diagnosis head: the class confusion matrix, counts and row-normalised
  per_class.csv        diagnosis head: precision, recall, F1, support and one-vs-rest AUC per class,
                       macro and weighted averages, accuracy and balanced accuracy (see `perclass`)
  importance.csv/.png  a tree run's permutation importances, per feature and group, over folds (`importance`)
CONFIG may also be a run folder (a blend has no config file). An image counts as malignant when its
prediction is at or above the cutoff.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings

import numpy as np
import pandas as pd

from melanoma.core import arguments, io_utils
from melanoma.core.errors import ConfigError, DataError
from melanoma.evaluate import importance as importance_lib
from melanoma.evaluate import perclass, plots, scoring
from melanoma.evaluate import selection as selection_lib
from melanoma.evaluate.scoring import ScoreWarning, format_score, score_oof
from melanoma.runs import layout, run_config, run_results

DEFAULT_CUTOFFS = (0.1, 0.25, 0.5)
DEFAULT_SENSITIVITIES = (0.9, 0.95)
CUTOFF_COLUMNS = ["rule", "cutoff", "sensitivity", "specificity", "precision", "tp", "fp", "tn", "fn"]


# --------------------------------------------------------------------------------------------------
# Cutoffs
# --------------------------------------------------------------------------------------------------

def confusion_at(target: np.ndarray, pred: np.ndarray, cutoff: float) -> dict:
    """Counts and rates when images with pred >= cutoff are called malignant."""
    called = pred >= cutoff
    positive = target == 1
    tp = int((called & positive).sum())
    fp = int((called & ~positive).sum())
    tn = int((~called & ~positive).sum())
    fn = int((~called & positive).sum())
    return {"cutoff": float(cutoff),
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"),
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def cutoff_for_sensitivity(target: np.ndarray, pred: np.ndarray, sensitivity: float) -> float:
    """The highest cutoff whose sensitivity reaches `sensitivity` (most specific such cutoff)."""
    malignant = np.sort(np.asarray(pred, dtype=float)[np.asarray(target) == 1])[::-1]
    if not len(malignant):
        raise DataError("no malignant images: sensitivity is undefined")
    # Calling the k highest-scored malignant images (and everything scored as high) positive needs a
    # cutoff at the k-th highest malignant score.
    needed = int(np.ceil(sensitivity * len(malignant) - 1e-9))
    return float(malignant[max(needed, 1) - 1])


def cutoff_table(target, pred, cutoffs=DEFAULT_CUTOFFS, sensitivities=DEFAULT_SENSITIVITIES) -> pd.DataFrame:
    """Rows for fixed cutoffs, for the cutoffs that reach each sensitivity, and for Youden's J."""
    # scikit-learn takes about a second to load: only when this runs
    from sklearn.metrics import roc_curve

    target = np.asarray(target).astype(int)
    pred = np.asarray(pred, dtype=float)
    rows = []
    for sensitivity in sensitivities:
        cutoff = cutoff_for_sensitivity(target, pred, sensitivity)
        rows.append({"rule": f"sensitivity >= {sensitivity:.0%}", **confusion_at(target, pred, cutoff)})
    false_rate, true_rate, thresholds = roc_curve(target, pred, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    best = int(np.argmax(np.where(finite, true_rate - false_rate, -np.inf)))
    rows.append({"rule": "max Youden J", **confusion_at(target, pred, thresholds[best])})
    for cutoff in cutoffs:
        rows.append({"rule": f"fixed {cutoff:g}", **confusion_at(target, pred, cutoff)})
    return pd.DataFrame(rows, columns=CUTOFF_COLUMNS)


def format_cutoffs(table: pd.DataFrame) -> str:
    shown = table.copy()
    for column in ["cutoff", "sensitivity", "specificity", "precision"]:
        shown[column] = shown[column].map(lambda value: "-" if pd.isna(value) else f"{value:.4f}")
    return shown.to_string(index=False)


# --------------------------------------------------------------------------------------------------
# Training histories
# --------------------------------------------------------------------------------------------------

def read_histories(run_path: str) -> tuple[dict[int, pd.DataFrame], list[str]]:
    """{fold: history} for every fold<K>/history.csv that reads, and notes on those that do not."""
    histories: dict[int, pd.DataFrame] = {}
    notes: list[str] = []
    if not os.path.isdir(run_path):
        return histories, notes
    for entry in sorted(os.listdir(run_path)):
        match = re.match(r"^fold(\d+)$", entry)
        path = os.path.join(run_path, entry, layout.HISTORY)
        if not match or not os.path.isfile(path):
            continue
        try:
            frame = io_utils.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
            notes.append(f"{path} unreadable ({error.__class__.__name__}); its curves are left out")
            continue
        frame.columns = [str(column).strip() for column in frame.columns]
        histories[int(match.group(1))] = frame.apply(pd.to_numeric, errors="coerce")
    return dict(sorted(histories.items())), notes


def _metric_column(frame: pd.DataFrame, metric: str, validation: bool) -> str | None:
    """Keras names a second AUC metric `auc_1`; accept `auc`, `auc_<n>`, `val_auc`, `val_auc_<n>`."""
    prefix = "val_" if validation else ""
    pattern = re.compile(rf"^{prefix}{metric}(_\d+)?$")
    return next((column for column in frame.columns if pattern.match(column)), None)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def plot_roc(target, pred, score: dict, table: pd.DataFrame, path: str, title: str) -> None:
    # scikit-learn takes about a second to load: only when this runs
    from sklearn.metrics import roc_curve

    plt = plots.pyplot()
    false_rate, true_rate, _ = roc_curve(target, pred)
    label = f"AUC {score['auc']:.4f}"
    if score.get("ci95"):
        label += f" (95% CI {score['ci95'][0]:.4f}-{score['ci95'][1]:.4f})"
    figure, axes = plt.subplots(figsize=(6, 6))
    axes.plot(false_rate, true_rate, lw=2, label=label)
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    for _, row in table[table["rule"].str.startswith("sensitivity")].iterrows():
        axes.scatter(1 - row["specificity"], row["sensitivity"], zorder=3,
                     label=f"{row['rule']}: cutoff {row['cutoff']:.4g}, specificity {row['specificity']:.3f}")
    axes.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
             title=title, xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    plots.save(figure, path)


def plot_histograms(target, pred, path: str, title: str) -> None:
    plt = plots.pyplot()
    target = np.asarray(target)
    pred = np.asarray(pred, dtype=float)
    low, high = float(pred.min()), float(pred.max())
    bins = np.linspace(low, high if high > low else low + 1e-6, 51)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for value, name, color in [(0, "benign", "tab:blue"), (1, "malignant", "tab:red")]:
        values = pred[target == value]
        axes.hist(values, bins=bins, density=True, alpha=0.55, color=color, label=f"{name} ({len(values)})")
    axes.set(xlabel="predicted probability of melanoma", ylabel="density (area of each class is 1)",
             title=title)
    axes.legend()
    axes.grid(alpha=0.3)
    plots.save(figure, path)


def plot_training_curves(histories: dict[int, pd.DataFrame], path: str, title: str) -> bool:
    """Loss and AUC (and learning rate when logged) per epoch; False when no history has any of them."""
    panels = [("loss", "loss"), ("auc", "AUC")]
    if any("lr" in frame.columns or "learning_rate" in frame.columns for frame in histories.values()):
        panels.append(("lr", "learning rate"))
    drawn = False
    plt = plots.pyplot()
    figure, axes_list = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axes, (metric, label) in zip(axes_list[0], panels):
        for index, (fold, frame) in enumerate(histories.items()):
            epochs = frame["epoch"] if "epoch" in frame.columns else pd.Series(range(1, len(frame) + 1))
            color = colors[index % len(colors)]
            if metric == "lr":
                column = "lr" if "lr" in frame.columns else ("learning_rate" if "learning_rate" in frame.columns
                                                             else None)
                pairs = [(column, "-", f"fold {fold}")]
            else:
                pairs = [(_metric_column(frame, metric, False), "-", f"fold {fold} train"),
                         (_metric_column(frame, metric, True), "--", f"fold {fold} validation")]
            for column, style, name in pairs:
                if column is not None and frame[column].notna().any():
                    axes.plot(epochs, frame[column], style, color=color, label=name)
                    drawn = True
        axes.set(xlabel="epoch", ylabel=label, title=label)
        if metric == "lr":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=7)
    figure.suptitle(title)
    if drawn:
        plots.save(figure, path)
    else:
        plt.close(figure)
    return drawn


def kept_epochs(run_path: str, folds) -> dict[int, int]:
    """{fold: the epoch of its model.keras} from fold<K>/state.json, for the folds that record it."""
    kept = {}
    for fold in folds:
        path = os.path.join(layout.fold_path(run_path, fold), layout.STATE)
        try:
            state = json.loads(io_utils.read_text(path)) if os.path.isfile(path) else {}
        except (ValueError, UnicodeDecodeError, OSError):
            state = {}
        if isinstance(state, dict) and isinstance(state.get("best_epoch"), int):
            kept[int(fold)] = state["best_epoch"]
    return kept


def plot_epoch_selection(chosen, kept: dict[int, int], path: str, title: str) -> list[tuple]:
    """Each fold's validation AUC per epoch, marking the epoch its checkpoint kept (filled circle) and
    the epoch the other folds choose for it (open square). Returns the marks drawn as
    (fold, "kept" | "others", epoch, AUC), for the caller and the tests."""
    plt = plots.pyplot()
    aucs = chosen.fold_aucs
    figure, axes = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    marks = []
    for index, fold in enumerate(aucs.columns):
        color = colors[index % len(colors)]
        axes.plot(aucs.index, aucs[fold], "-", color=color, label=f"fold {fold}")
        points = [("kept", kept.get(fold), "o", color, "checkpoint kept"),
                  ("others", chosen.folds.get(fold, {}).get("epoch_unselected"), "s", "none",
                   "chosen by the other folds")]
        for kind, epoch, marker, face, name in points:
            if epoch is None or epoch not in aucs.index or not np.isfinite(aucs.loc[epoch, fold]):
                continue
            value = float(aucs.loc[epoch, fold])
            axes.plot([epoch], [value], marker, markersize=9 if kind == "others" else 6, color=color,
                      markerfacecolor=face, label=name if index == 0 else None)
            marks.append((int(fold), kind, int(epoch), value))
    subtitle = ""
    if chosen.auc_unselected is not None:
        gain = f", selection gain {chosen.selection_gain:+.4f}" if chosen.selection_gain is not None else ""
        subtitle = f"\nauc_unselected {chosen.auc_unselected:.4f}{gain} (plain predictions)"
    axes.set(xlabel="epoch", ylabel="validation AUC (no TTA)", title=title + subtitle)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    plots.save(figure, path)
    return marks


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

def make_report(run_path: str, cutoffs=DEFAULT_CUTOFFS, sensitivities=DEFAULT_SENSITIVITIES,
                bootstrap: int = 1000, seed: int = 0) -> dict:
    """Write the report of a run folder; returns {'files': [...], 'score': ..., 'cutoffs': DataFrame,
    'notes': [...], 'complete': bool, 'frame': the OOF scored}."""
    run = run_results.inspect_run(run_path)
    if run.problem:
        raise DataError(f"{run_path}: {run.problem}")
    frame, complete, present = run_results.load_run_oof(run)
    notes: list[str] = []
    name = run.name
    if not complete:
        notes.append(f"incomplete run: only folds {','.join(map(str, present))} of "
                     f"{run.folds_expected or '?'} have OOF predictions; figures show those folds")
        name += " (incomplete)"
    chosen = selection_lib.epoch_selection(frame, run.path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScoreWarning)
        score = score_oof(frame, bootstrap=bootstrap, seed=seed, selection=chosen)
    notes.extend(score["warnings"])
    target = frame["target"].to_numpy()
    pred = frame["pred"].to_numpy()
    table = cutoff_table(target, pred, cutoffs, sensitivities)

    final = os.path.join(run.path, layout.REPORT)
    # written whole: an earlier report's files never linger beside the new ones, and a folder of the
    # user's that happens to be called report/ is refused (exit 2), not written into
    with io_utils.folder_written_whole(final, command="report", own=earlier_report) as folder:
        files = _score_outputs(target, pred, score, table, complete, folder, name)
        confusion = _confusion_outputs(frame, table, folder, name, files)
        _training_curves_output(run.path, folder, name, files, notes)
        marks = []
        if chosen.fold_aucs is not None:
            path = os.path.join(folder, "epoch_selection.png")
            marks = plot_epoch_selection(chosen, kept_epochs(run.path, chosen.fold_aucs.columns), path,
                                         f"epoch choice of {name}")
            files.append(path)
        importance = _importance_outputs(run, folder, files, notes)
    files = [os.path.join(final, os.path.relpath(path, folder)) for path in files]
    return {"files": files, "score": score, "cutoffs": table, "notes": notes, "complete": complete,
            "frame": frame, "epoch_marks": marks, "importance": importance, **confusion}


# What `report` writes into <run>/report/ (earlier_report: a folder of these alone is a report's).
REPORT_FILES = {"cutoffs.csv", "score.json", "roc.png", "histograms.png", "training_curves.png",
                "epoch_selection.png", "per_class.csv", "confusion_matrix.png", layout.IMPORTANCE, "importance.png"}


def earlier_report(names: list[str]) -> bool:
    """A report folder from before folders carried their writer's marker: the report's own files only."""
    return set(names) <= REPORT_FILES


def _score_outputs(target: np.ndarray, pred: np.ndarray, score: dict, table: pd.DataFrame, complete: bool,
                   folder: str, name: str) -> list[str]:
    """cutoffs.csv, score.json, roc.png and histograms.png; returns their paths in that order."""
    files = []
    path = os.path.join(folder, "cutoffs.csv")
    io_utils.write_csv_atomic(table, path)
    files.append(path)
    path = os.path.join(folder, "score.json")
    io_utils.write_text_atomic(path, json.dumps({**score, "complete": complete}, indent=2) + "\n")
    files.append(path)
    path = os.path.join(folder, "roc.png")
    plot_roc(target, pred, score, table, path, f"ROC of {name} OOF ({score['n']} images)")
    files.append(path)
    path = os.path.join(folder, "histograms.png")
    plot_histograms(target, pred, path, f"OOF predictions of {name}")
    files.append(path)
    return files


def _training_curves_output(run_path: str, folder: str, name: str, files: list[str], notes: list[str]) -> None:
    """training_curves.png from the folds' histories, or a note saying why there is none."""
    histories, history_notes = read_histories(run_path)
    notes.extend(history_notes)
    path = os.path.join(folder, "training_curves.png")
    if histories and plot_training_curves(histories, path, f"training of {name}"):
        files.append(path)
    else:
        notes.append("no fold<K>/history.csv with loss or AUC columns; training curves left out")


def _importance_outputs(run: run_results.Run, folder: str, files: list[str], notes: list[str]):
    """The permutation importances a run's folds wrote (a tree run's), over folds, or None."""
    if not importance_lib.has_importances(run.path):
        return None
    importance, written, importance_notes = importance_lib.importance_report(run.path, folder)
    files.extend(written)
    notes.extend(importance_notes)
    return importance


def _confusion_outputs(frame: pd.DataFrame, cutoffs: pd.DataFrame, folder: str, name: str,
                       files: list[str]) -> dict:
    """confusion_matrix.png (and per_class.csv for the diagnosis head); returns what the command prints:
    {'per_class': table or None, 'confusion_text': str}."""
    path = os.path.join(folder, "confusion_matrix.png")
    if perclass.has_classes(frame):
        per_class = perclass.per_class_table(frame)
        csv_path = os.path.join(folder, "per_class.csv")
        io_utils.write_csv_atomic(per_class, csv_path)
        files.append(csv_path)
        labels, counts = perclass.confusion(frame)
        perclass.plot_class_confusion(labels, counts, path, f"classes of {name} OOF ({len(frame)} images)")
        files.append(path)
        return {"per_class": per_class, "confusion_text": perclass.format_confusion(labels, counts)}
    matrices = perclass.binary_confusions(cutoffs)
    perclass.plot_binary_confusion(matrices, path, f"{name} OOF at the sensitivity cutoffs")
    files.append(path)
    text = "\n".join(f"{rule} (cutoff {cutoff:.4g}): TN {m[0, 0]}  FP {m[0, 1]}  FN {m[1, 0]}  TP {m[1, 1]}"
                     for rule, cutoff, m in matrices)
    return {"per_class": None, "confusion_text": text}


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="experiment config (or a run folder, e.g. a blend)")
    arguments.add_set_argument(parser, "config overrides, as for training (they choose the run folder)",
                               dest="overrides")
    parser.add_argument("--cutoffs", nargs="+", type=float, default=list(DEFAULT_CUTOFFS), metavar="P",
                        help=f"fixed cutoffs for the table (default: {' '.join(map(str, DEFAULT_CUTOFFS))})")
    parser.add_argument("--sensitivity", nargs="+", type=_probability, default=list(DEFAULT_SENSITIVITIES),
                        metavar="S", help="sensitivities whose cutoff the table shows (default: 0.9 0.95)")
    scoring.add_bootstrap_arguments(parser, "the AUC interval")


def command(args: argparse.Namespace) -> int:
    scoring.check_bootstrap_arguments(args)
    run_path = run_config.run_folder_of(args.config, args.overrides)
    if not os.path.isdir(run_path):
        raise FileNotFoundError(f"run folder not found: {run_path} (train the config first)")
    # before the bootstrap and the figures
    try:
        io_utils.check_replaceable(os.path.join(run_path, layout.REPORT), "report", earlier_report, flag="the folder")
    except ConfigError as error:
        raise ConfigError(f"{error}; `report` writes {layout.REPORT}/ of the run: move that folder aside") from None
    report = make_report(run_path, args.cutoffs, args.sensitivity, args.bootstrap, args.seed)
    for note in report["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    print(format_score(report["score"], report["frame"]))
    print()
    print(format_cutoffs(report["cutoffs"]))
    print()
    if report["per_class"] is not None:
        print(perclass.format_per_class(report["per_class"]))
        print()
    print(report["confusion_text"])
    print()
    if report["importance"] is not None:
        print(importance_lib.format_importance(report["importance"]))
        print()
    for path in report["files"]:
        print(f"wrote {path}")
    return 0
