"""The diagnosis of each record, per source, for the diagnosis head.

Records store diagnosis as an integer code, and each source codes its names its own way (the
competition's records, ISIC 2019 or HAM10000 records, a public dataset). The names come from
`data.diagnosis_names` or the encodings.json beside a source's records; taxonomy.py maps them to the
ISIC classes.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from melanoma.core import io_utils
from melanoma.core.config import Config
from melanoma.core.errors import ConfigError
from melanoma.data import isic2024, record_format, taxonomy
from melanoma.data import sources as sources_lib


def diagnosis_names(config: Config, files, sources: list[str] | None = None) -> dict[str, list[str]]:
    """Diagnosis names in code order for each source of `files` ({source: names}).

    Records store diagnosis as an integer code, and each source may code its names differently (the
    competition's records, ISIC 2019 or HAM10000 records, a public dataset), so only the names say which
    code is which diagnosis: `data.diagnosis_names` (one list for every source, or {source: list}), else
    the encodings.json beside the source's files (written by `melanoma records`). `sources` names each
    file's source (sources.FoldData.train_sources); None: all competition. A folder without
    encodings.json is an error unless the config names its codes.
    """
    sources = [sources_lib.COMPETITION] * len(files) if sources is None else list(sources)
    configured = config.data.diagnosis_names
    if isinstance(configured, dict) and not all(isinstance(names, list) for names in configured.values()):
        raise ConfigError("data.diagnosis_names is a list of names in code order, or a mapping "
                                     "{source: list of names} ('competition' for data.train_files)")
    folders: dict[str, list[str]] = {}
    for record_file, source in zip(files, sources):
        folder = os.path.dirname(record_file.path)
        if folder not in folders.setdefault(source, []):
            folders[source].append(folder)
    result = {}
    for source, source_folders in folders.items():
        names = configured.get(source) if isinstance(configured, dict) else configured
        if names:
            result[source] = [str(name) for name in names]
            continue
        found = {}
        for folder in source_folders:
            path = os.path.join(folder, "encodings.json")
            if not io_utils.exists(path):
                per_source = (f", or {{{source}: [names]}} for this source alone" if len(folders) > 1 else "")
                raise ConfigError(
                    f"model.head=diagnosis needs the diagnosis name of each code, and the records folder "
                    f"{folder} (source '{source}') has no encodings.json (written by `melanoma records`): "
                    f"set data.diagnosis_names to the names (or ISIC classes MEL, NV, ...) in code "
                    f"order{per_source}")
            codes = json.loads(io_utils.read_text(path)).get("diagnosis")
            if not codes:
                raise ConfigError(f"{path} has no 'diagnosis' encoding; set data.diagnosis_names")
            try:
                found[folder] = taxonomy.names_in_code_order(codes)
            except ValueError as error:
                raise ConfigError(f"{path}: {error}; set data.diagnosis_names") from None
        if len({tuple(names) for names in found.values()}) > 1:
            raise ConfigError(
                f"the records folders of source '{source}' ({', '.join(found)}) code diagnoses differently; "
                "build them with the same encodings (`melanoma records --encodings`), list them as separate "
                "external sets, or set data.diagnosis_names")
        result[source] = next(iter(found.values()))
    return result


def source_lookups(config: Config, files, sources: list[str] | None = None) -> dict[str, list[int]] | None:
    """Class index per diagnosis code of each source ({source: lookup}) for the diagnosis head, so that
    sources that code diagnoses differently are mapped by name; None for the binary head."""
    if config.model.head != "diagnosis":
        return None
    lookups = {}
    for source, names in diagnosis_names(config, files, sources).items():
        try:
            lookups[source] = taxonomy.diagnosis_lookup(names)
        except ValueError as error:
            raise ConfigError(f"source '{source}': {error}") from None
    return lookups


def check_diagnosis_sources(config: Config) -> None:
    """Before any work: every source a diagnosis-head run reads says which diagnosis each code is, and none
    is ISIC 2024's (`refuse_isic2024`)."""
    if config.model.head != "diagnosis":
        return
    files = record_format.list_files(config.data.train_files, "data.train_files")
    names = [sources_lib.COMPETITION] * len(files)
    sets = sources_lib.external_sets(config.data)
    for external in sets:
        files += list(external.files)
        names += [external.name] * len(external.files)
    refuse_isic2024(files)
    configured = config.data.diagnosis_names
    if isinstance(configured, dict):
        known = [sources_lib.COMPETITION] + [external.name for external in sets]
        unknown = sorted(set(map(str, configured)) - set(known))
        if unknown:
            raise ConfigError(
                f"data.diagnosis_names names source(s) {', '.join(unknown)} that this run does not read; its "
                f"sources are {', '.join(known)} ('competition' is data.train_files)")
    source_lookups(config, files, names)


def refuse_isic2024(files) -> None:
    """The diagnosis head learns P(melanoma) as the MEL class and takes every target 1 for MEL; the ISIC
    2024 target also counts basal and squamous cell carcinomas (and other malignancies) as 1, so on its
    records the head would learn those as melanoma. Refused, naming the folder (encodings.json says which
    source a records folder holds)."""
    for folder in sorted({os.path.dirname(f.path) for f in files}):
        path = os.path.join(folder, "encodings.json")
        if not io_utils.exists(path):
            continue
        patients = json.loads(io_utils.read_text(path)).get("patient_id")
        if isinstance(patients, dict) and patients.get("source") == isic2024.SOURCE:
            raise ConfigError(
                f"model.head=diagnosis is refused for the ISIC 2024 records in {folder}: their target counts "
                "basal and squamous cell carcinomas as malignant too, while the diagnosis head would learn every "
                "target 1 as melanoma (MEL). Use model.head=binary, whose target is the challenge's")


def true_diagnosis(frame: pd.DataFrame, lookup: list[int]) -> pd.Series:
    """The ISIC class (MEL, NV, ...) of each predicted record, from its diagnosis code and target."""
    classes = taxonomy.true_classes(frame["diagnosis"].to_numpy(), frame["target"].to_numpy(), lookup)
    return pd.Series(np.asarray(taxonomy.DIAGNOSIS_CLASSES)[classes], index=frame.index)
