import json
import re
from pathlib import Path

import pytest
import yaml

from melanoma.core import config as config_lib
from melanoma.core.config import CHOICES, ConfigError, load_config
from melanoma.runs import run_config
from melanoma.train.families import family as family_lib

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_and_validates(path):
    """Each file loads on base.yaml, names its run after itself, and names a family and a backbone that exist
    (its family's own keys checked too)."""
    config = load_config(path)
    assert config.name == path.stem
    family = family_lib.lookup(config)
    family.check(config)
    assert config.model.backbone in CHOICES["model.backbone"]
    assert 2 <= config.data.folds


def test_experiment_overrides_only_what_differs(tmp_path):
    path = write(tmp_path, "exp.yaml", "train:\n  epochs: 3\n")
    config = load_config(path)
    base = yaml.safe_load((REPO / "configs" / "base.yaml").read_text())
    assert config.train.epochs == 3
    assert config.train.batch_size == base["train"]["batch_size"]
    assert config.name == "exp"


def test_dotted_overrides_parse_yaml_values(tmp_path):
    path = write(tmp_path, "exp.yaml", "")
    config = load_config(path, ["train.epochs=2", "data.image_size=64",
                                "data.external_files=[a.tfrec,b.tfrec]", "train.lr_peak_per_image=1e-5",
                                "model.metadata_input=true", "name=other"])
    assert config.train.epochs == 2 and config.data.image_size == 64
    assert config.data.external_files == ["a.tfrec", "b.tfrec"]
    assert config.train.lr_peak_per_image == pytest.approx(1e-5)
    assert config.model.metadata_input is True and config.name == "other"


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "exp.yaml", "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*did you mean 'train.epochs'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key 'data.image_sise'.*'data.image_size'"):
        load_config(write(tmp_path, "ok.yaml", ""), ["data.image_sise=64"])


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, "exp.yaml", "train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"'train.epochs' must be int, got str 'many'"):
        load_config(path)
    with pytest.raises(ConfigError, match="'data.folds' must be int"):
        load_config(write(tmp_path, "b.yaml", "data:\n  folds: true\n"))
    with pytest.raises(ConfigError, match="is a section"):
        load_config(write(tmp_path, "c.yaml", "train: 3\n"))


def test_choices_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"'model.backbone' is 'efficientnet-b9'.*efficientnet-b0"):
        load_config(write(tmp_path, "exp.yaml", ""), ["model.backbone=efficientnet-b9"])


def test_int_is_accepted_where_a_float_is_expected(tmp_path):
    config = load_config(write(tmp_path, "exp.yaml", "train:\n  lr_decay: 1\n"))
    assert isinstance(config.train.lr_decay, float)


def test_extends_chain_and_loop(tmp_path):
    write(tmp_path, "parent.yaml", "train:\n  epochs: 7\n  batch_size: 4\n")
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\ntrain:\n  epochs: 9\n")
    config = load_config(child)
    assert (config.train.epochs, config.train.batch_size, config.name) == (9, 4, "child")
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "bad.yaml", "train: [1,\n"))
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(write(tmp_path, "ok.yaml", ""), ["train.epochs"])


def test_saved_config_round_trips_with_git_commit(tmp_path):
    config = load_config(write(tmp_path, "exp.yaml", f"output_dir: {tmp_path / 'out'}\n"), ["seed=7"])
    path = run_config.save_config(config)
    saved = yaml.safe_load(Path(path).read_text())
    assert "git_commit" in saved
    assert run_config.read_saved_config(Path(path).parent) == config


def test_drop_connect_with_a_v2_backbone_is_refused_before_any_work(tmp_path):
    path = write(tmp_path, "exp.yaml", "model:\n  drop_connect: 0.0\n")
    with pytest.raises(ConfigError, match=r"'model.drop_connect' applies to efficientnet-b0..b7.*=null"):
        load_config(path, ["model.backbone=efficientnetv2-b0"])
    assert load_config(path, ["model.backbone=efficientnetv2-b0", "model.drop_connect=null"])


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", ".hidden"])
def test_a_run_name_is_one_folder_inside_output_dir(tmp_path, name, capsys):
    """`--set name=../../x` would write outside output_dir: refused with exit status 2 before any work."""
    from melanoma import cli

    path = write(tmp_path, "exp.yaml", f"output_dir: {tmp_path / 'outputs'}\n")
    with pytest.raises(ConfigError, match="one folder name inside output_dir"):
        load_config(path, [f"name={name}"])
    assert cli.main(["train", "--config", str(path), "--set", f"name={name}"]) == 2
    assert "one folder name inside output_dir" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists() and not (tmp_path.parent / "x").exists()


def test_a_set_value_that_is_broken_yaml_says_so(tmp_path):
    """`--set data.external_files=[a,b` is bad YAML, not a glob that matched nothing."""
    path = write(tmp_path, "exp.yaml", "")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, ["data.external_files=[a,b"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, ['name="unclosed'])
    assert load_config(path, ["data.train_files=*.tfrec"]).data.train_files == "*.tfrec"  # a plain string


def test_an_unknown_family_is_named_with_the_choices(tmp_path, capsys):
    from melanoma import cli

    path = write(tmp_path, "exp.yaml", "model:\n  family: tabulr\n")
    with pytest.raises(ConfigError, match="'model.family' is 'tabulr' \\(did you mean 'tabular'\\?\\); choose one "
                                          "of cnn, tabular"):
        family_lib.lookup(load_config(path))
    assert cli.main(["describe", "--config", str(path)]) == 2
    assert "model.family" in capsys.readouterr().err


@pytest.mark.parametrize("old, new", sorted(config_lib.RENAMED.items()))
def test_every_renamed_key_is_refused_with_a_hint_naming_the_new_one(tmp_path, capsys, old, new):
    """An old name in a config file or a --set: one line naming the new key, exit status 2."""
    from melanoma import cli

    leaf = old + ".max_iter" if old == "tabular" else old  # a section: any key in it
    section, key = leaf.split(".", 1)
    path = write(tmp_path, "exp.yaml", yaml.safe_dump({section: {key: 1} if "." not in key else {"max_iter": 1}}))
    expected = f"config key '{old}' in {path} was renamed: use '{new}' (configs/base.yaml documents it)"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        load_config(path)
    assert cli.main(["describe", "--config", str(write(tmp_path, "ok.yaml", "")), "--set", f"{leaf}=1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"error: config key '{old}' in --set {leaf}=1 was renamed: use '{new}' (configs/base.yaml "
                     "documents it)"]


def test_a_run_saved_before_the_renames_reads_under_the_new_names(tmp_path, capsys):
    """A finished run's config.yaml and state.json keep their old names on disk; they read as the new ones, with
    a note, so that the run still infers, resumes and compares as it did."""
    from melanoma.runs import fold_state

    config = load_config(write(tmp_path, "exp.yaml", f"output_dir: {tmp_path / 'out'}\n"),
                         ["pseudo_labels.low=0.1", "train.lr_peak_per_image=2e-6", "trees.max_iter=9"])
    old = config.to_dict()
    old["data"].update(pseudo_labels=None, pseudo_labels_folds="matched", pseudo_labels_low=0.1,
                       pseudo_labels_high=0.5, pseudo_labels_weight=1.0, validation_weights=None,
                       validation_weighting="odds", validation_top=0.5, external_2018=True, external_2019=True)
    for section in ("pseudo_labels", "validation_weights"):
        del old[section]
    del old["data"]["isic2019_even_files"], old["data"]["isic2019_odd_files"]
    old["train"]["lr_max"] = old["train"].pop("lr_peak_per_image")
    old["model"]["metadata"] = old["model"].pop("metadata_input")
    old["tta"]["batch_size"] = old["tta"].pop("prediction_batch_size")
    old["tabular"] = old.pop("trees")
    folder = tmp_path / "out" / "exp"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(dict(old, git_commit="abc"), sort_keys=False))
    assert run_config.read_saved_config(folder) == config
    assert "was saved before keys were renamed" in capsys.readouterr().err
    assert load_config(folder / "config.yaml") == config  # a saved config given as --config
    (folder / "fold0").mkdir()
    flat = {key: value for key, value in fold_state.flatten(old).items()}
    (folder / "fold0" / "state.json").write_text(json.dumps({"epoch": 1, "config": flat}))
    assert fold_state.read_state(str(folder / "fold0"))["config"] == fold_state.flatten(config)
