"""What every tree family is (`TreeFamily`): gradient-boosted trees per fold (train/families/trees.py) on a
table of features, with other runs' predictions stacked in (`features.from_runs`). The tabular family
(tabular.py: image statistics and metadata of the competition's records) and the ISIC 2024 family
(tbp_trees.py: the tables beside the 2024 records) extend it; they differ in where their rows and features
come from, and so in their own checks, training, prediction and serving.

Shared here, so that the two cannot drift apart: the trees section's checks, the files of a tree fold,
`describe`'s facts, the label's shape, the phrase a fold's state is named by, and that a tree fold is fitted
in one go and repeats for a seed.
"""
from __future__ import annotations

from typing import Any

from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.data import record_format
from melanoma.runs import layout
from melanoma.train.families import family as family_lib
from melanoma.train.families.family import Family

# A tree fold's files that an older training (or an older infer) leaves: a fold trained again removes them first
FOLD_FILES = (layout.TREES_MODEL, layout.STATE, layout.OOF, layout.TEST, layout.TEST_SETTINGS, layout.HISTORY,
              layout.IMPORTANCE, layout.FOLD_DATA)


class TreeFamily(Family):
    """A tree family: subclasses set `name`, `model_words` and the feature groups, and implement
    `start_training`, `prediction` and `serving` (plus `check` for their own keys, calling this one)."""

    model_file = layout.TREES_MODEL
    prediction_keys = ("features",)
    resumable = False  # a fold is fitted in one go; an unfinished one is fitted again
    model_words = ""            # the label's few words for the model
    fold_files = FOLD_FILES     # the files a fold trained again removes first
    fixed_groups: tuple[str, ...] = ()  # feature groups always in the table
    group_switches: dict[str, str] = {}  # feature group -> the config key (dotted) that switches it on

    def repeatable(self, config: Config) -> bool:
        """Always: the features are computed without randomness and the trees (and any draw of rows) draw only
        from their random_state (seed + fold), in one process (tests/train/test_determinism.py)."""
        return True

    def check(self, config: Config) -> None:
        check_trees(config)
        check_from_runs(config)

    def image_size(self, config: Config) -> int | None:
        """The size images are measured at (None: the features hold no image's)."""
        return None

    def label(self, config: Config) -> family_lib.Label:
        return family_lib.Label(model=self.model_words, image_size=self.image_size(config), external=False,
                                tta=None, predicted_with=self.name)

    def trained_as(self, flat: dict) -> str:
        return f"{self.name} trees"

    def feature_groups(self, config: Config) -> list[str]:
        """The feature groups `config` switches on, stacked runs last."""
        groups = list(self.fixed_groups) + [group for group, key in self.group_switches.items()
                                            if config.get_path(key)]
        return groups + [f"stacking: run_{name}" for name in config.features.from_runs]

    def describe(self, config: Config) -> dict:
        """The model's settings, the feature groups switched on and the records found (nothing is read), and
        the family's own facts (`own_facts`)."""
        try:
            files = record_format.list_files(config.data.train_files, "data.train_files")
        except FileNotFoundError:
            files = []
        return {"name": config.name, "family": self.name, "model": "HistGradientBoostingClassifier",
                "trees": config.trees.to_dict(), "feature_groups": self.feature_groups(config),
                "folds": config.data.folds, "train_images": record_format.count_images(files) if files else None,
                **self.own_facts(config, files)}

    def own_facts(self, config: Config, files: list) -> dict:
        """The family's facts beside the shared ones in `describe`; `files` are the training records found."""
        return {}

    def training(self, config: Config, resume: bool = False) -> Any:
        if resume:
            print(f"note: a {self.name} fold trains in one go; --resume trains the folds not finished yet")
        return self.start_training(config)

    def start_training(self, config: Config) -> Any:
        """The family's `training` object (see Family.training): what every fold shares, prepared once."""
        raise NotImplementedError

    def fresh_fold(self, config: Config, fold: int) -> str:
        """Fold `fold`'s folder, without an older training's files: a fold trained again never keeps them."""
        # scikit-learn's trees module holds the folder rule: only when a fold is fitted
        from melanoma.train.families import trees

        folder = layout.fold_dir(config, fold)
        trees.fresh_folder(folder, self.fold_files)
        return folder


def check_trees(config: Config) -> None:
    """The trees section's values, checked before any record is read."""
    section = config.trees
    if not 0 < section.learning_rate <= 1:
        raise ConfigError(f"config key 'trees.learning_rate' must be in (0, 1], got {section.learning_rate}")
    for key in ("max_iter", "min_samples_leaf"):
        if section[key] < 1:
            raise ConfigError(f"config key 'trees.{key}' must be at least 1, got {section[key]}")
    if section.max_leaf_nodes < 2:
        raise ConfigError(f"config key 'trees.max_leaf_nodes' must be at least 2, got {section.max_leaf_nodes}")
    if section.l2_regularization < 0:
        raise ConfigError(f"config key 'trees.l2_regularization' must be 0 or more, got {section.l2_regularization}")
    if not 0 < section.max_features <= 1:
        raise ConfigError(f"config key 'trees.max_features' must be in (0, 1], got {section.max_features}")
    if section.class_weight is not None and section.class_weight <= 0:
        raise ConfigError(f"config key 'trees.class_weight' must be positive, got {section.class_weight}")
    if section.importance_rows is not None and section.importance_rows < 2:
        raise ConfigError(f"config key 'trees.importance_rows' must be at least 2 (or null), got "
                          f"{section.importance_rows}")
    if section.importance_repeats < 0:
        raise ConfigError(f"config key 'trees.importance_repeats' must be 0 or more, got "
                          f"{section.importance_repeats}")


def check_from_runs(config: Config) -> None:
    """features.from_runs: run names, each once."""
    runs = config.features.from_runs
    if not isinstance(runs, list) or not all(isinstance(name, str) and name for name in runs):
        raise ConfigError(f"config key 'features.from_runs' must be a list of run names, got {runs!r}")
    if len(set(runs)) < len(runs):
        raise ConfigError(f"config key 'features.from_runs' names a run twice: {runs}")
