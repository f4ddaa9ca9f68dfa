"""The ISIC 2024 tree family (`model.family: tbp_trees`, a TreeFamily: train/families/tree_family.py):
gradient-boosted trees per fold on the metadata of the 3D total-body photographs, read from the tables that
`records --isic2024` writes beside its records (input/tbp_table.py, input/tbp_features.py), with other runs'
predictions stacked in (`features.from_runs`, a CNN's OOF on the same records). The trees, their history and
importances are train/families/trees.py's, as for the tabular family.

Its fold folder: model.joblib (the trees, their feature columns, training medians and the categoricals'
vocabulary), state.json, history.csv, importance.csv, data.json and oof.csv; infer adds test.csv and
test.json. A fold trains on the training part's rows (benign ones drawn per `data.negatives_per_positive`)
and scores every row of its validation part. Nothing here loads TensorFlow: training and predicting a
tree run need the tables only, and predicting needs only test.csv (the training table's codes travel in
the saved model). `serve` shows one uploaded image, which holds none of these measurements: it refuses a
tbp_trees run.
"""
from __future__ import annotations

import json
import os

from melanoma.core import fold_rule, io_utils
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.data import sampling, scorable
from melanoma.input import tbp_features, tbp_table
from melanoma.runs import layout
from melanoma.train.families.tree_family import TreeFamily


class TbpTrees(TreeFamily):
    name = "tbp_trees"
    model_words = "tbp trees (2024 metadata)"
    fixed_groups = ("measurements", "clinical")
    group_switches = {"derived": "features.tbp_derived", "patient context": "features.patient_context"}

    def check(self, config: Config) -> None:
        super().check(config)
        if config.data.external_files:
            raise ConfigError("model.family tbp_trees reads the ISIC 2024 tables beside data.train_files; "
                              "data.external_files has no such table: set data.external_files=[]")
        if config.pseudo_labels.source:
            raise ConfigError("model.family tbp_trees does not take pseudo-labels (its rows come from the ISIC 2024 "
                              "tables, not from the test records): set pseudo_labels.source=null")

    def own_facts(self, config: Config, files: list) -> dict:
        """The table the rows come from (beside the records), and how benign rows are drawn."""
        table = os.path.join(os.path.dirname(files[0].path), "train.csv") if files else None
        return {"negatives_per_positive": config.data.negatives_per_positive,
                "train_table": table if table and io_utils.exists(table) else None}

    def start_training(self, config: Config) -> "Training":
        return Training(config)

    def prediction(self, config: Config) -> "Prediction":
        return Prediction()

    def serving(self, config: Config, run_path: str, folds: list[int]):
        raise ConfigError(f"serve shows one uploaded image, and run {config.name} (model.family tbp_trees) "
                          "predicts from the ISIC 2024 metadata of a lesion (its 3D total-body photograph's "
                          "measurements), which an image does not carry; serve a CNN run instead")


class Training:
    """Every training row's features, built once for every fold (the stacking checks refuse a config
    before the run's config is saved)."""

    def __init__(self, config: Config):
        self.table = tbp_table.training_rows(config)
        frame = self.table.frame  # every fold can be scored, before any is fitted
        scorable.check_folds(frame["target"], fold_rule.part_fold(frame["part"], config.data.folds),
                             config.data.folds)
        print(f"tbp_trees: {len(self.table.frame)} training rows, {len(self.table.columns)} features")

    def fit_fold(self, config: Config, fold: int) -> dict:
        # scikit-learn's trees: only when a fold is fitted
        from melanoma.train.families import trees

        folder = FAMILY.fresh_fold(config, fold)
        training, validation, summary = fold_rows(config, fold, self.table.frame)
        io_utils.write_text_atomic(os.path.join(folder, layout.FOLD_DATA), json.dumps(summary, indent=1) + "\n")
        return trees.fit_and_write(config, fold, folder, self.table.columns, self.table.categorical, training,
                                   validation, tbp_features.feature_group, vocabulary=self.table.vocabulary)


def fold_rows(config: Config, fold: int, frame):
    """(training rows after negative downsampling, every validation row, the fold's data.json)."""
    in_fold = fold_rule.validates(frame["part"], config.data.folds, fold)
    training, validation = frame[~in_fold], frame[in_fold]
    left_out = sampling.negatives_dropped(training[["image_name", "target"]], config.data.negatives_per_positive,
                                          int(config.seed) + fold)
    sampled = sampling.summary(training, left_out, config.data.negatives_per_positive)
    training = training[~training["image_name"].isin(left_out)]

    def counts(rows) -> dict:
        return {"images": int(len(rows)), "malignant": int(rows["target"].sum()),
                "patients": int(rows["patient_id"].nunique()), "parts": sorted(map(int, set(rows["part"])))}

    summary = {"fold": fold, "folds": config.data.folds, "training": counts(training),
               "validation": counts(validation), "negative_downsampling": sampled}
    print(f"fold {fold}: {summary['training']['images']} training rows ({sampled['benign_left_out']} benign left out"
          f" by data.negatives_per_positive), {summary['validation']['images']} validation rows")
    return training.reset_index(drop=True), validation.reset_index(drop=True), summary


class Prediction:
    """The test rows' features, built once (with the vocabulary the folds were trained with)."""

    table = None

    def predict_fold(self, config: Config, fold: int, files: list):
        # scikit-learn's trees: only when a fold predicts
        from melanoma.train.families import trees

        saved = trees.load_model(os.path.join(layout.fold_dir(config, fold), layout.TREES_MODEL))
        if self.table is None or self.table.vocabulary != saved["vocabulary"]:
            self.table = tbp_table.test_rows(config, saved["vocabulary"])
        if saved["columns"] != self.table.columns:
            raise ConfigError(f"fold {fold}'s model was trained on other features than the config's features "
                              "section gives now; train the run again (`python train.py --config ... --force`)")
        frame = self.table.frame
        return frame[["image_name"]].assign(pred=trees.predict(saved["model"], trees.matrix(frame, saved["columns"])))


FAMILY = TbpTrees()
