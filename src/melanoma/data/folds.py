"""Patient-grouped, triple-stratified parts and folds.

Every image gets a `part` (0..P-1) and a `fold` (`part % k`). A patient's images always share one part,
so a validation fold never sees a patient that its training folds saw. Parts are balanced on:

* image targets: malignant images per part;
* whether a patient has a malignant image: malignant patients per part;
* the patient's image count: patients per part in each image-count band (quartiles of patient size);

and on images and patients per part.

Algorithm (all of it seeded, so the same input and seed give byte-identical output):

1. One row per patient with its contributions to each balanced quantity. Patients are sorted by id first,
   so the order of the input rows does not matter.
2. Greedy placement. Malignant patients go first (most malignant images first, then most images), then
   the others (most images first); ties are broken by a seeded shuffle. Each patient goes to the part
   where it raises the weighted sum of squared relative deviations from the ideal per-part totals the
   least; equally good parts are chosen between at random (seeded). Placing big patients first and the
   many small ones last is what evens out the image counts.
3. Local search. For every pair of parts, the single best move of one patient or swap of two patients
   that lowers the same objective is applied; sweeps repeat until nothing improves.

`python -m melanoma folds --train-csv CSV --folds K [--parts P] [--seed S] [--reassign] --out CSV`
"""
from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import pandas as pd

from melanoma.core import fold_rule, io_utils
from melanoma.core.errors import DataError

REQUIRED_COLUMNS = ("image_name", "patient_id", "target")
DEFAULT_PARTS = 15  # the competition's public TFRecords come in 15 patient-disjoint parts
DEFAULT_SEED = 42
MIN_PATIENTS_PER_PART = 2
SIZE_BANDS = 4  # patient image-count bands (quartiles) that each part should hold evenly

# Weights of the balanced quantities in the objective. The quantities are compared relative to their
# ideal per-part value; malignant images are few per part, so they get the most weight.
WEIGHT_IMAGES = 4.0
WEIGHT_MALIGNANT_IMAGES = 4.0
WEIGHT_MALIGNANT_PATIENTS = 4.0
WEIGHT_PATIENTS = 1.0
WEIGHT_SIZE_BAND = 0.5
MAX_SWEEPS = 100


class FewPatientsWarning(UserWarning):
    """Fewer patients than the requested parts can hold; fewer parts are used."""


# ---------------------------------------------------------------------------------------------------
# validation


def check_train_table(frame: pd.DataFrame) -> None:
    """Raise DataError for input that cannot be split into patient-grouped folds."""
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s): {', '.join(missing)}; the train CSV needs {', '.join(REQUIRED_COLUMNS)}"
        )
    if len(frame) == 0:
        raise DataError("the train table has no rows")
    for column in ("image_name", "patient_id"):
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise DataError(f"{int(empty.sum())} row(s) have no {column} (first at row {row})")
    target = pd.to_numeric(frame["target"], errors="coerce")
    bad = ~target.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"target must be 0 or 1; {int(bad.sum())} row(s) are not "
            f"(first: image {frame['image_name'].iloc[row]!r} has target {frame['target'].iloc[row]!r})"
        )
    duplicated = frame["image_name"].duplicated(keep=False)
    if duplicated.any():
        names = sorted(frame.loc[duplicated, "image_name"].astype(str).unique())
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise DataError(f"{len(names)} image_name(s) appear on more than one row: {shown}")


def check_patient_disjoint(frame: pd.DataFrame, column: str) -> None:
    """Raise DataError if any patient has images under two different values of `column`."""
    for needed in ("patient_id", column):
        if needed not in frame.columns:
            raise DataError(f"missing column: {needed}")
    counts = frame.groupby("patient_id", sort=True)[column].nunique()
    spanning = counts[counts > 1]
    if len(spanning):
        patient = spanning.index[0]
        values = sorted(frame.loc[frame["patient_id"] == patient, column].unique().tolist())
        more = f" ({len(spanning) - 1} more patient(s) too)" if len(spanning) > 1 else ""
        raise DataError(
            f"patient {patient} spans {column}s {', '.join(str(v) for v in values)}{more}; "
            f"a patient's images must all be in one {column}"
        )


def _existing_parts(frame: pd.DataFrame) -> pd.Series:
    """The input's own `part` column as integers, after checking it can be used as it is."""
    numbers = pd.to_numeric(frame["part"], errors="coerce")
    bad = numbers.isna() | (numbers < 0) | (numbers != numbers.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"column part must hold whole numbers >= 0; image {frame['image_name'].iloc[row]!r} has "
            f"{frame['part'].iloc[row]!r} (use --reassign to compute new parts)"
        )
    parts = numbers.astype(np.int64)
    check_patient_disjoint(frame.assign(part=parts), "part")
    return parts


def effective_parts(n_patients: int, parts: int) -> int:
    """The number of parts to use: `parts`, or fewer when there are not 2 patients per part."""
    if parts < 1:
        raise DataError(f"parts must be at least 1, got {parts}")
    if n_patients < parts * MIN_PATIENTS_PER_PART:
        return max(1, n_patients // MIN_PATIENTS_PER_PART)
    return parts


# ---------------------------------------------------------------------------------------------------
# assignment


def patient_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per patient (sorted by id): images, malignant images, has-malignant, size band."""
    target = pd.to_numeric(frame["target"]).astype(np.int64)
    table = (
        pd.DataFrame({"patient_id": frame["patient_id"].to_numpy(), "target": target.to_numpy()})
        .groupby("patient_id", sort=True)["target"]
        .agg(images="size", malignant_images="sum")
    )
    table["malignant"] = (table["malignant_images"] > 0).astype(np.int64)
    sizes = table["images"].to_numpy()
    edges = np.unique(np.quantile(sizes, np.linspace(0, 1, SIZE_BANDS + 1)[1:-1], method="lower"))
    table["size_band"] = np.searchsorted(edges, sizes, side="left")
    return table


def _contributions(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient contributions to each balanced quantity, and each quantity's weight."""
    columns = [
        table["images"].to_numpy(float),
        table["malignant_images"].to_numpy(float),
        table["malignant"].to_numpy(float),
        np.ones(len(table)),
    ]
    weights = [WEIGHT_IMAGES, WEIGHT_MALIGNANT_IMAGES, WEIGHT_MALIGNANT_PATIENTS, WEIGHT_PATIENTS]
    for band in sorted(table["size_band"].unique()):
        columns.append((table["size_band"].to_numpy() == band).astype(float))
        weights.append(WEIGHT_SIZE_BAND)
    return np.stack(columns, axis=1), np.asarray(weights)


def _placement_order(table: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Malignant patients first, then big patients first; seeded shuffle inside ties."""
    tiebreak = rng.permutation(len(table))
    # np.lexsort sorts by the last key first
    return np.lexsort(
        (
            tiebreak,
            -table["images"].to_numpy(),
            -table["malignant_images"].to_numpy(),
            -table["malignant"].to_numpy(),
        )
    )


def _solve(contributions: np.ndarray, weights: np.ndarray, order: np.ndarray, parts: int,
           rng: np.random.Generator) -> np.ndarray:
    """Part of each patient: greedy placement in `order`, then pairwise move/swap local search.

    Objective: sum over parts and quantities of weight * ((load - ideal) / ideal) ** 2.
    """
    totals = contributions.sum(axis=0)
    keep = totals > 0
    contributions, weights, totals = contributions[:, keep], weights[keep], totals[keep]
    ideal = totals / parts
    scale = weights / ideal**2  # per-quantity factor of the squared deviation

    loads = np.zeros((parts, contributions.shape[1]))
    assignment = np.full(len(contributions), -1, dtype=np.int64)
    for patient in order:
        x = contributions[patient]
        # rise of the objective if this patient joins each part
        rise = ((2.0 * (loads - ideal) + x) * x * scale).sum(axis=1)
        best = np.flatnonzero(rise <= rise.min() + 1e-12)
        chosen = best[0] if len(best) == 1 else rng.choice(best)
        assignment[patient] = chosen
        loads[chosen] += x

    for _ in range(MAX_SWEEPS):
        improved = False
        for a in range(parts):
            for b in range(a + 1, parts):
                improved |= _improve_pair(contributions, scale, loads, assignment, a, b)
        if not improved:
            break
    return assignment


def _distinct_patients(contributions: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """One patient per distinct contribution row: patients with equal rows are interchangeable here,
    and this keeps the swap matrix small when there are many patients (e.g. one image each)."""
    if len(patients) == 0:
        return patients
    _, first = np.unique(contributions[patients], axis=0, return_index=True)
    return patients[np.sort(first)]


def _improve_pair(contributions, scale, loads, assignment, a: int, b: int) -> bool:
    """Apply the best single move or swap between parts a and b, if it lowers the objective."""
    in_a = _distinct_patients(contributions, np.flatnonzero(assignment == a))
    in_b = _distinct_patients(contributions, np.flatnonzero(assignment == b))
    gap = loads[a] - loads[b]
    best_change, best = -1e-9, None
    # Part a gains d and part b loses d: the objective changes by sum(scale * 2d(gap + d)).
    for movers, sign in ((in_a, -1.0), (in_b, 1.0)):  # one patient changes part
        if len(movers):
            d = sign * contributions[movers]
            change = (scale * 2.0 * d * (gap + d)).sum(axis=1)
            i = int(np.argmin(change))
            if change[i] < best_change:
                best_change, best = change[i], ("move", movers[i])
    if len(in_a) and len(in_b):  # two patients trade parts
        d = contributions[in_b][None, :, :] - contributions[in_a][:, None, :]
        change = (scale * 2.0 * d * (gap + d)).sum(axis=2)
        i, j = np.unravel_index(int(np.argmin(change)), change.shape)
        if change[i, j] < best_change:
            best_change, best = change[i, j], ("swap", in_a[i], in_b[j])
    if best is None:
        return False
    if best[0] == "move":
        patient = best[1]
        source, target = assignment[patient], (b if assignment[patient] == a else a)
        loads[source] -= contributions[patient]
        loads[target] += contributions[patient]
        assignment[patient] = target
    else:
        _, pa, pb = best
        d = contributions[pb] - contributions[pa]
        loads[a] += d
        loads[b] -= d
        assignment[pa], assignment[pb] = b, a
    return True


def assign_parts(frame: pd.DataFrame, parts: int = DEFAULT_PARTS, seed: int = DEFAULT_SEED,
                 reassign: bool = False) -> pd.DataFrame:
    """A copy of `frame` with an integer `part` column (patient-grouped, stratified, balanced).

    A `part` column already in `frame` (e.g. from the public TFRecords) is kept, after checks, unless
    `reassign`. With fewer than 2 patients per requested part, fewer parts are used (with a warning).
    """
    check_train_table(frame)
    result = frame.copy()
    if "part" in frame.columns and not reassign:
        result["part"] = _existing_parts(frame)
        return result
    table = patient_table(frame)
    used = effective_parts(len(table), parts)
    if used != parts:
        warnings.warn(
            f"{len(table)} patients cannot fill {parts} parts with {MIN_PATIENTS_PER_PART} patients "
            f"each; using {used} parts",
            FewPatientsWarning,
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    contributions, weights = _contributions(table)
    order = _placement_order(table, rng)
    assignment = _solve(contributions, weights, order, used, rng)
    part_of = pd.Series(assignment, index=table.index)
    result["part"] = frame["patient_id"].map(part_of).to_numpy(np.int64)
    return result


def assign_parts_noted(frame: pd.DataFrame, parts: int = DEFAULT_PARTS, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """assign_parts for a command (records): a tiny set's fewer parts are said in a plain `note:` line on
    stderr; Python's warning format (the source file and line) is no business of the user's."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FewPatientsWarning)
        result = assign_parts(frame, parts=parts, seed=seed)
    for warning in caught:
        if issubclass(warning.category, FewPatientsWarning):
            print(f"note: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return result


def assign_folds(frame: pd.DataFrame, folds: int, parts: int = DEFAULT_PARTS, seed: int = DEFAULT_SEED,
                 reassign: bool = False) -> pd.DataFrame:
    """A copy of `frame` with `part` (see assign_parts) and `fold = part % folds`."""
    if folds < 2:
        raise DataError(f"--folds must be at least 2, got {folds}")
    result = assign_parts(frame, parts=parts, seed=seed, reassign=reassign)
    part_count = result["part"].nunique()
    if folds > part_count:
        raise DataError(
            f"--folds {folds} is more than the {part_count} parts; a fold needs at least one part "
            f"(lower --folds, or raise --parts if there are enough patients)"
        )
    result["fold"] = fold_rule.part_fold(result["part"], folds).astype(np.int64)
    empty = sorted(set(range(folds)) - set(result["fold"].unique().tolist()))
    if empty:
        raise DataError(
            f"fold(s) {', '.join(map(str, empty))} would be empty with parts "
            f"{sorted(result['part'].unique().tolist())} and --folds {folds}; use --reassign"
        )
    check_patient_disjoint(result, "fold")
    return result


# ---------------------------------------------------------------------------------------------------
# reporting


def _group_table(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    target = pd.to_numeric(frame["target"]).astype(np.int64)
    work = pd.DataFrame({column: frame[column].to_numpy(), "patient_id": frame["patient_id"].to_numpy(),
                         "target": target.to_numpy()})
    malignant_patients = work.loc[work["target"] == 1].groupby(column)["patient_id"].nunique()
    table = work.groupby(column).agg(
        images=("target", "size"), patients=("patient_id", "nunique"), malignant_images=("target", "sum")
    )
    table["malignant_patients"] = malignant_patients.reindex(table.index, fill_value=0).astype(np.int64)
    return table


def fold_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per fold: images, patients, malignant images, malignant patients."""
    if "fold" not in frame.columns:
        raise DataError("missing column: fold")
    return _group_table(frame, "fold")


def part_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per part: images, patients, malignant images, malignant patients."""
    if "part" not in frame.columns:
        raise DataError("missing column: part")
    return _group_table(frame, "part")


def part_summary(frame: pd.DataFrame) -> str:
    """Min/max per part of images, patients and malignant images, as lines of text."""
    table = part_table(frame)
    lines = [f"{len(table)} parts"]
    for column in ("images", "patients", "malignant_images", "malignant_patients"):
        low, high = int(table[column].min()), int(table[column].max())
        spread = f"spread {high - low}" + (f", {100.0 * (high - low) / high:.2f}%" if high else "")
        lines.append(f"  {column.replace('_', ' ')} per part: min {low}, max {high} ({spread})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-csv", required=True, help="train CSV with image_name, patient_id, target")
    parser.add_argument("--folds", type=int, required=True, help="number of folds K (fold = part %% K)")
    parser.add_argument("--parts", type=int, default=DEFAULT_PARTS,
                        help=f"number of patient-disjoint parts (default {DEFAULT_PARTS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed (default {DEFAULT_SEED})")
    parser.add_argument("--reassign", action="store_true",
                        help="compute new parts even if the CSV already has a part column")
    parser.add_argument("--out", required=True, help="output CSV: the input columns plus part and fold")


def _read_train_csv(path: str) -> pd.DataFrame:
    try:
        return io_utils.read_csv(path)
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{path} is empty") from error


def command(args: argparse.Namespace) -> int:
    frame = _read_train_csv(args.train_csv)
    try:
        check_train_table(frame)
    except DataError as error:
        raise DataError(f"{args.train_csv}: {error}") from error
    if "part" in frame.columns and not args.reassign:
        print(f"keeping the part column of {args.train_csv} (--reassign to compute new parts)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FewPatientsWarning)
        result = assign_folds(frame, folds=args.folds, parts=args.parts, seed=args.seed,
                              reassign=args.reassign)
    for warning in caught:
        if not issubclass(warning.category, FewPatientsWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            continue
        print(f"note: {warning.message}", file=sys.stderr)
    check_patient_disjoint(result, "part")
    check_patient_disjoint(result, "fold")

    print(fold_table(result).to_string())
    print(part_summary(result))
    io_utils.write_csv_atomic(result, args.out)
    print(f"wrote {args.out} ({len(result)} images, {result['patient_id'].nunique()} patients, "
          f"{args.folds} folds)")
    return 0
