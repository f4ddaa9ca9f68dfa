"""Per-class evaluation of the diagnosis head, and the confusion matrices of the report.

The diagnosis head's OOF keeps each class's probability (`p_MEL`, `p_NV`, ...) and the true class
(`diagnosis`); the predicted class is the most probable one. `per_class_table` gives what 7- and
9-class skin-lesion results report: per class precision, recall, F1, support and one-vs-rest AUC, then
their macro and support-weighted averages, accuracy and balanced accuracy (the mean recall). Averages
run over the classes present in the truth (a class no image has has no recall); a class that is only
predicted keeps its row (precision 0) and costs the true classes' recall.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from melanoma.core import metrics
from melanoma.core.errors import DataError
from melanoma.data import taxonomy
from melanoma.evaluate import plots

PER_CLASS_COLUMNS = ["class", "precision", "recall", "f1", "support", "auc"]


def has_classes(frame: pd.DataFrame) -> bool:
    """Whether an OOF table carries the diagnosis head's per-class columns."""
    return "diagnosis" in frame.columns and bool(taxonomy.class_columns(frame.columns))


def class_arrays(frame: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(classes of the p_ columns, true class index, predicted class index, probabilities [n, classes])."""
    columns = taxonomy.class_columns(frame.columns)
    classes = [column[len(taxonomy.CLASS_PREFIX):] for column in columns]
    truth = frame["diagnosis"].astype(str).str.strip().str.upper()
    unknown = sorted(set(truth) - set(classes))
    if unknown:
        raise DataError(f"OOF diagnosis value(s) {', '.join(unknown)} have no p_<CLASS> column "
                        f"(columns: {', '.join(columns)})")
    # OOF files are read as text (tables.read_string_table)
    probabilities = np.column_stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float)
                                     for c in columns])
    bad = ~np.isfinite(probabilities).all(axis=1)
    if bad.any():
        raise DataError(f"OOF per-class probabilities are missing, not numbers or infinite for image(s) "
                        f"{', '.join(frame.loc[bad, 'image_name'].astype(str).head(3))}")
    true_index = truth.map({cls: i for i, cls in enumerate(classes)}).to_numpy()
    return classes, true_index, probabilities.argmax(axis=1), probabilities


def per_class_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per class present in the truth or the predictions, then `macro avg`, `weighted avg`,
    `accuracy` and `balanced accuracy` (the last two in the recall column)."""
    # scikit-learn takes about a second to load: only when this runs
    from sklearn.metrics import precision_recall_fscore_support

    classes, truth, predicted, probabilities = class_arrays(frame)
    labels = sorted(set(truth.tolist()) | set(predicted.tolist()))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels,
                                                                     zero_division=0)
    rows = []
    for index, label in enumerate(labels):
        positive = truth == label
        auc = metrics.auc(positive, probabilities[:, label])
        rows.append({"class": classes[label], "precision": precision[index], "recall": recall[index],
                     "f1": f1[index], "support": int(support[index]), "auc": auc})
    table = pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)
    present = table[table["support"] > 0]
    weights = present["support"] / present["support"].sum()
    averages = [
        {"class": "macro avg", **{m: present[m].mean() for m in ("precision", "recall", "f1", "auc")}},
        {"class": "weighted avg", **{m: (present[m] * weights).sum(min_count=1) for m in
                                     ("precision", "recall", "f1", "auc")}},
        {"class": "accuracy", "recall": float((truth == predicted).mean())},
        {"class": "balanced accuracy", "recall": float(present["recall"].mean())},
    ]
    for row in averages:
        row["support"] = int(present["support"].sum())
    return pd.concat([table, pd.DataFrame(averages, columns=PER_CLASS_COLUMNS)], ignore_index=True)


def confusion(frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """(classes shown, counts[true, predicted]) over the classes present in the truth or predictions."""
    # scikit-learn takes about a second to load: only when this runs
    from sklearn.metrics import confusion_matrix

    classes, truth, predicted, _ = class_arrays(frame)
    labels = sorted(set(truth.tolist()) | set(predicted.tolist()))
    return [classes[i] for i in labels], confusion_matrix(truth, predicted, labels=labels)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def format_per_class(table: pd.DataFrame) -> str:
    shown = table.copy()
    for column in ("precision", "recall", "f1", "auc"):
        shown[column] = shown[column].map(lambda value: "" if pd.isna(value) else f"{value:.4f}")
    return shown.to_string(index=False)


def format_confusion(labels: list[str], counts: np.ndarray) -> str:
    frame = pd.DataFrame(counts, index=[f"true {c}" for c in labels], columns=[f"pred {c}" for c in labels])
    return frame.to_string()


def _draw_matrix(axes, counts: np.ndarray, labels: list[str], title: str, normalised: bool,
                 xlabel: str = "predicted class", ylabel: str = "true class") -> None:
    values = row_normalised(counts) if normalised else counts
    image = axes.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalised else max(1, counts.max()))
    axes.figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
             xlabel=xlabel, ylabel=ylabel, title=title)
    high = (values.max() if values.size else 0) / 2
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            text = f"{values[i, j]:.2f}" if normalised else str(int(counts[i, j]))
            axes.text(j, i, text, ha="center", va="center", fontsize=8,
                      color="white" if values[i, j] > high else "black")


def plot_class_confusion(labels: list[str], counts: np.ndarray, path: str, title: str) -> None:
    """Counts and row-normalised (recall per true class) confusion matrices side by side."""
    plt = plots.pyplot()
    size = max(4.5, 0.6 * len(labels) + 2)
    figure, (left, right) = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    _draw_matrix(left, counts, labels, "counts", normalised=False)
    _draw_matrix(right, counts, labels, "row-normalised (each true class sums to 1)", normalised=True)
    figure.suptitle(title)
    plots.save(figure, path)


def binary_confusions(cutoffs: pd.DataFrame) -> list[tuple[str, float, np.ndarray]]:
    """(rule, cutoff, [[TN, FP], [FN, TP]]) of the cutoff table's sensitivity rows."""
    rows = cutoffs[cutoffs["rule"].str.startswith("sensitivity")]
    return [(row["rule"], float(row["cutoff"]),
             np.array([[row["tn"], row["fp"]], [row["fn"], row["tp"]]], dtype=np.int64))
            for _, row in rows.iterrows()]


def plot_binary_confusion(matrices: list[tuple[str, float, np.ndarray]], path: str, title: str) -> None:
    """One 2x2 matrix per sensitivity cutoff: counts, with the row-normalised share under each."""
    plt = plots.pyplot()
    figure, axes_list = plt.subplots(1, len(matrices), figsize=(5 * len(matrices), 4.5), squeeze=False)
    labels = ["benign", "malignant"]
    for axes, (rule, cutoff, counts) in zip(axes_list[0], matrices):
        shares = row_normalised(counts)
        image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        axes.figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        axes.set(xticks=[0, 1], yticks=[0, 1], xticklabels=labels, yticklabels=labels,
                 xlabel="called", ylabel="true", title=f"{rule} (cutoff {cutoff:.4g})")
        for i in range(2):
            for j in range(2):
                axes.text(j, i, f"{int(counts[i, j])}\n{shares[i, j]:.1%}", ha="center", va="center",
                          color="white" if shares[i, j] > 0.5 else "black")
    figure.suptitle(title)
    plots.save(figure, path)
