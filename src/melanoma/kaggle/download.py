"""Fetch the competition's CSVs and the public TFRecord datasets of one image size with the Kaggle CLI.

`python -m melanoma data --size 256 [--out input] [--no-external] [--force] [--dry-run]` fills

    input/siim-isic-melanoma-classification/  train.csv, test.csv, sample_submission.csv (not the images)
    input/melanoma-256x256/                   competition TFRecords, 15 patient-disjoint train parts + test
    input/isic2019-256x256/                   ISIC 2017-2019 images (even part 2017+2018, odd part 2019)
    input/malignant-v2-256x256/               malignant images of 2017-2020

Each folder is downloaded and unzipped under a hidden `.NAME.partial` name and renamed only once all of
it is there, so an interrupted or failed run never leaves a folder that looks complete; a folder that is
already there is skipped (`--force` fetches it again). Credentials are checked before anything starts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass

from melanoma.core import progress
from melanoma.core.errors import ExternalToolError
from melanoma.kaggle import kaggle_cli
from melanoma.kaggle.kaggle_cli import COMPETITION

COMPETITION_FILES = ("train.csv", "test.csv", "sample_submission.csv")
DATASET_OWNER = "cdeotte"
COMPETITION_DATASET = "melanoma"
EXTERNAL_DATASETS = ("isic2019", "malignant-v2")
NOTHING_DONE = "Nothing was downloaded."


@dataclass(frozen=True)
class Download:
    """One folder under the output folder and the Kaggle CLI calls (without `-p`) that fill it."""

    name: str
    calls: tuple[tuple[str, ...], ...]


def dataset_name(dataset: str, size: int) -> str:
    return f"{dataset}-{size}x{size}"


def plan(size: int, external: bool = True) -> list[Download]:
    downloads = [Download(COMPETITION, tuple(("competitions", "download", "-c", COMPETITION, "-f", name)
                                             for name in COMPETITION_FILES))]
    for dataset in (COMPETITION_DATASET,) + (EXTERNAL_DATASETS if external else ()):
        name = dataset_name(dataset, size)
        downloads.append(Download(name, (("datasets", "download", "-d", f"{DATASET_OWNER}/{name}"),)))
    return downloads


def partial_folder(out: str, name: str) -> str:
    return os.path.join(out, f".{name}.partial")


def unzip_all(folder: str) -> None:
    """Extract every .zip in folder into it, then delete the archive."""
    for archive in sorted(f for f in os.listdir(folder) if f.endswith(".zip")):
        path = os.path.join(folder, archive)
        try:
            with zipfile.ZipFile(path) as handle:
                for member in progress.bar(handle.infolist(), desc=f"unzip {archive}", unit="file", leave=False):
                    handle.extract(member, folder)
        except zipfile.BadZipFile:
            raise ExternalToolError(f"{archive} downloaded by the Kaggle CLI is not a valid zip file; run "
                                    "`make data` again") from None
        os.remove(path)


def fetch(download: Download, out: str, kaggle: str) -> str:
    """Run the calls into the hidden partial folder, unzip, then rename it to its final name."""
    final = os.path.join(out, download.name)
    partial = partial_folder(out, download.name)
    if os.path.isdir(partial):
        shutil.rmtree(partial)  # left by an interrupted run
    os.makedirs(partial)
    try:
        for call in download.calls:
            command = [kaggle, *call, "-p", partial]
            print("+ " + " ".join(command), flush=True)
            try:
                status = subprocess.run(command).returncode
            except OSError as error:
                raise ExternalToolError(f"could not run {kaggle}: {error}") from None
            if status != 0:
                raise ExternalToolError(
                    f"`kaggle {' '.join(call)}` failed (exit status {status}); see its output above. Check "
                    f"that you are online, that your API token is valid, and that you accepted the rules at "
                    f"https://www.kaggle.com/c/{COMPETITION}/rules; for a dataset, that it is published for "
                    f"this --size. {download.name} was not kept.")
        unzip_all(partial)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def config_snippet(out: str, size: int, external: bool) -> str:
    lines = ["data:",
             f"  train_files: {out}/{dataset_name(COMPETITION_DATASET, size)}/train*.tfrec",
             f"  test_files: {out}/{dataset_name(COMPETITION_DATASET, size)}/test*.tfrec",
             f"  sample_submission: {out}/{COMPETITION}/sample_submission.csv",
             f"  image_size: {size}"]
    if external:
        lines.append("  external_files:")
        lines.extend(f"    - {out}/{dataset_name(name, size)}/train*.tfrec" for name in EXTERNAL_DATASETS)
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=256, help="image size of the public TFRecords (256)")
    parser.add_argument("--out", default="input", help="folder to fill (default input/)")
    parser.add_argument("--no-external", action="store_true", help="skip isic2019 and malignant-v2")
    parser.add_argument("--force", action="store_true", help="download folders that are already there")
    parser.add_argument("--dry-run", action="store_true", help="print the Kaggle CLI calls, run nothing")


def command(args: argparse.Namespace) -> int:

    if args.size < 1:
        raise FileNotFoundError(f"--size must be a positive image size, got {args.size}")
    downloads = plan(args.size, external=not args.no_external)
    if args.dry_run:
        for download in downloads:
            there = os.path.isdir(os.path.join(args.out, download.name)) and not args.force
            state = "already there, skipped" if there else "to fetch"
            print(f"# {os.path.join(args.out, download.name)} ({state})")
            for call in download.calls:
                print("kaggle " + " ".join(call) + f" -p {partial_folder(args.out, download.name)}")
        return 0
    source = kaggle_cli.kaggle_credentials(NOTHING_DONE)
    kaggle = kaggle_cli.kaggle_executable(NOTHING_DONE)
    print(f"Kaggle credentials from {source}")
    os.makedirs(args.out, exist_ok=True)
    for download in downloads:
        final = os.path.join(args.out, download.name)
        if os.path.isdir(final) and not args.force:
            print(f"{final}: already there (--force fetches it again)")
            continue
        fetch(download, args.out, kaggle)
        print(f"{final}: ready")
    print("point a config at them, e.g.\n" + config_snippet(args.out, args.size, not args.no_external))
    return 0
