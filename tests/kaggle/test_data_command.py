"""`python -m melanoma data`: the Kaggle CLI calls it makes (a stand-in `kaggle` on PATH records them),
unzipping, folders that only appear complete, and the stop without credentials."""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from melanoma import cli

FAKE_KAGGLE = textwrap.dedent("""\
    #!{python}
    # Stand-in for the Kaggle CLI: records its argv, writes what the real one would into -p.
    import json, os, sys, zipfile
    args = sys.argv[1:]
    with open(os.environ["FAKE_KAGGLE_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")
    if os.environ.get("FAKE_KAGGLE_FAIL") and os.environ["FAKE_KAGGLE_FAIL"] in " ".join(args):
        print("403 - Forbidden", file=sys.stderr)
        sys.exit(1)
    folder = args[args.index("-p") + 1]
    if args[:2] == ["competitions", "download"]:
        name = args[args.index("-f") + 1]
        if name == "train.csv":  # big files come zipped
            with zipfile.ZipFile(os.path.join(folder, name + ".zip"), "w") as archive:
                archive.writestr(name, "image_name,target\\n")
        else:
            open(os.path.join(folder, name), "w").write("image_name\\n")
    elif args[:2] == ["datasets", "download"]:
        slug = args[args.index("-d") + 1].split("/")[1]
        with zipfile.ZipFile(os.path.join(folder, slug + ".zip"), "w") as archive:
            archive.writestr("train00-2.tfrec", b"records")
            archive.writestr("train.csv", "image_name\\n")
    """)


@pytest.fixture
def kaggle(tmp_path, monkeypatch) -> Path:
    """A stand-in `kaggle` first on PATH; returns its log (one JSON argv per line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "kaggle"
    program.write_text(FAKE_KAGGLE.format(python=sys.executable))
    program.chmod(0o755)
    log = tmp_path / "kaggle.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    monkeypatch.delenv("FAKE_KAGGLE_FAIL", raising=False)
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def expected_calls(out: Path, size: int) -> list[list[str]]:
    competition = "siim-isic-melanoma-classification"
    rows = [["competitions", "download", "-c", competition, "-f", name, "-p", str(out / f".{competition}.partial")]
            for name in ("train.csv", "test.csv", "sample_submission.csv")]
    for dataset in ("melanoma", "isic2019", "malignant-v2"):
        name = f"{dataset}-{size}x{size}"
        rows.append(["datasets", "download", "-d", f"cdeotte/{name}", "-p", str(out / f".{name}.partial")])
    return rows


def test_downloads_csvs_and_datasets(kaggle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    out = tmp_path / "input"
    assert cli.main(["data", "--size", "256", "--out", str(out)]) == 0
    assert calls(kaggle) == expected_calls(out, 256)
    assert sorted(p.name for p in out.iterdir()) == ["isic2019-256x256", "malignant-v2-256x256",
                                                     "melanoma-256x256", "siim-isic-melanoma-classification"]
    competition = out / "siim-isic-melanoma-classification"
    assert sorted(p.name for p in competition.iterdir()) == ["sample_submission.csv", "test.csv", "train.csv"]
    assert sorted(p.name for p in (out / "isic2019-256x256").iterdir()) == ["train.csv", "train00-2.tfrec"]
    printed = capsys.readouterr().out
    assert f"train_files: {out}/melanoma-256x256/train*.tfrec" in printed
    assert f"- {out}/malignant-v2-256x256/train*.tfrec" in printed

    # a second run finds every folder and calls nothing
    assert cli.main(["data", "--size", "256", "--out", str(out)]) == 0
    assert len(calls(kaggle)) == 6 and "already there" in capsys.readouterr().out


def test_failed_download_leaves_nothing_that_looks_complete(kaggle, tmp_path, monkeypatch, capsys):
    config_dir = tmp_path / "kaggle-config"  # KAGGLE_CONFIG_DIR is where the CLI looks for kaggle.json
    config_dir.mkdir()
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "someone", "key": "secret"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("FAKE_KAGGLE_FAIL", "isic2019")
    out = tmp_path / "input"
    assert cli.main(["data", "--size", "128", "--out", str(out), "--no-external"]) == 0
    assert [c[:4] for c in calls(kaggle)][-1] == ["datasets", "download", "-d", "cdeotte/melanoma-128x128"]
    assert len(calls(kaggle)) == 4  # --no-external: no isic2019, no malignant-v2
    assert cli.main(["data", "--size", "128", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "datasets download -d cdeotte/isic2019-128x128` failed" in error and "was not kept" in error
    assert sorted(p.name for p in out.iterdir()) == ["melanoma-128x128", "siim-isic-melanoma-classification"]


def test_without_credentials_says_how_and_downloads_nothing(kaggle, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "empty"))
    out = tmp_path / "input"
    assert cli.main(["data", "--size", "256", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "no Kaggle credentials found" in error and str(tmp_path / "empty" / "kaggle.json") in error
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in error and "Nothing was downloaded" in error
    assert calls(kaggle) == [] and not out.exists()
    monkeypatch.setenv("KAGGLE_USERNAME", "only-half")
    assert cli.main(["data", "--out", str(out)]) == 2
    assert "only KAGGLE_USERNAME is set" in capsys.readouterr().err


def test_dry_run_prints_the_calls(kaggle, tmp_path, capsys):
    out = tmp_path / "input"
    assert cli.main(["data", "--size", "512", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for call in expected_calls(out, 512):
        assert "kaggle " + " ".join(call) in printed
    assert calls(kaggle) == [] and not out.exists()
