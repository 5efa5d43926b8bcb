"""The label dataset of one or several runs, read from a URL: a local folder or s3://bucket/prefix.

A run folder (labeler/records/layout.py) holds labels/part-<chunk>.parquet, label records
(labeler/records/labels.py, LABEL_SCHEMA), each committed whole by one create-only write, so every part
listed is complete; and manifest.json, whose "exemplars" names (a local path made absolute) the exemplars
the run read. A run with a manifest and no committed part yet reads as a run with no labels. Every part's
schema version is checked before anything is returned. Storage is reached through fsspec, so any
filesystem it knows works; this module knows nothing about how labels are made.
"""

from __future__ import annotations

import json
import posixpath
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from labeler.errors import InputError
from labeler.records.exemplars import JSONL_SUFFIXES, REQUIRED_COLUMNS, ExemplarError, read_exemplars
from labeler.records.labels import LABEL_SCHEMA, check_schema
from labeler.records.layout import LABELS, MANIFEST, PART_NAME
from labeler.records.parquet import read_parquet
from labeler.records.schema import EXEMPLARS_TABLE_SCHEMA
from labeler.records.storage import url_to_fs

PARQUET = ".parquet"


class DatasetError(InputError):
    """A run URL that cannot be read as a label dataset; the message says what is missing or wrong."""


@dataclass(frozen=True)
class Dataset:
    """The labels (and exemplars, where runs have them) of one or several runs, as Arrow tables."""

    labels: pa.Table
    """LABEL_SCHEMA rows of every committed part of every run; `run_id` tells the runs apart."""
    exemplars: pa.Table | None
    """EXEMPLARS_TABLE_SCHEMA rows of the runs that have exemplars, or None when none has."""
    runs: tuple[str, ...]
    """The URLs read, in order, each run once."""


def read_runs(urls: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """Read the committed labels (and exemplars) of every run URL, refusing unknown schema versions."""
    if not urls:
        raise DatasetError("no run given: pass at least one run URL (a folder or s3://bucket/prefix)")
    labels, exemplars, read = [], [], []
    seen: set[tuple[str, str]] = set()
    for url in urls:
        fs, root = _filesystem(url, storage_options)
        where = (str(fs.protocol), root)
        if where in seen:
            continue  # the same run named twice (`--data R --data R`, or `R` and `R/`) is read once
        seen.add(where)
        read.append(url)
        run_labels = _read_labels(fs, root, url)
        labels.append(run_labels)
        found = _read_exemplars(fs, root, url, _run_ids(run_labels, fs, root, url), storage_options)
        if found is not None:
            exemplars.append(found)
    return Dataset(
        labels=pa.concat_tables(labels),
        exemplars=pa.concat_tables(exemplars) if exemplars else None,
        runs=tuple(read),
    )


def read_manifest(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's manifest.json ({} where it has none); DatasetError naming it where it is not a JSON object."""
    fs, root = _filesystem(url, storage_options)
    return _manifest(fs, root, url)


def committed_parts(url: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Paths (within the run's filesystem) of the run's committed label parts, sorted."""
    fs, root = _filesystem(url, storage_options)
    return _committed_parts(fs, root, url)


def _filesystem(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    fs, root = url_to_fs(url, storage_options)
    fs.invalidate_cache()  # listings must be fresh: parts are committed while we read
    return fs, root.rstrip("/")


def _committed_parts(fs: Any, root: str, url: str) -> list[str]:
    folder = posixpath.join(root, LABELS)
    try:
        names = [posixpath.basename(p) for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        if fs.exists(posixpath.join(root, MANIFEST)):
            return []  # a run that has committed no part yet: no labels so far
        raise DatasetError(f"{url} is not a labeler run: it has no labels/ folder and no manifest.json") from None
    except OSError as err:
        raise DatasetError(f"cannot list {url}/labels: {err}") from err
    return [posixpath.join(folder, n) for n in sorted(names) if PART_NAME.match(n)]


def _read_labels(fs: Any, root: str, url: str) -> pa.Table:
    tables = []
    for path in _committed_parts(fs, root, url):
        where = f"{url}/labels/{posixpath.basename(path)}"
        try:
            table = read_parquet(fs, path)
        except (OSError, pa.ArrowInvalid) as err:
            raise DatasetError(f"cannot read {where} as Parquet: {err}") from err
        tables.append(check_schema(table, where))
    if not tables:
        return LABEL_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def _run_ids(labels: pa.Table, fs: Any, root: str, url: str) -> list[str]:
    """The run ids in the labels, or the manifest's when no part is committed yet."""
    found = sorted(set(labels.column("run_id").to_pylist()))
    if found:
        return found
    run_id = _manifest(fs, root, url).get("run_id")
    return [run_id] if isinstance(run_id, str) else []


def _read_exemplars(
    fs: Any, root: str, url: str, run_ids: list[str], storage_options: Mapping[str, Any] | None
) -> pa.Table | None:
    """The exemplars the run read: the input named by manifest.json's "exemplars"."""
    pointer = _manifest(fs, root, url).get("exemplars")
    tables = _read_pointer(url, pointer, storage_options) if isinstance(pointer, str) else []
    if not tables:
        return None
    if len(run_ids) != 1:
        raise DatasetError(f"{url} has exemplars but its labels name {len(run_ids)} runs {run_ids}; expected one")
    projected = []
    for where, table in tables:
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise DatasetError(f"exemplars {where} of {url} lack the column(s) {missing} of the exemplar contract")
        position = table.column("position") if "position" in table.column_names else pa.nulls(table.num_rows)
        columns = [pa.array([run_ids[0]] * table.num_rows, pa.string())]
        columns += [table.column(c) for c in REQUIRED_COLUMNS] + [position]
        projected.append(pa.Table.from_arrays(columns, names=EXEMPLARS_TABLE_SCHEMA.names).cast(EXEMPLARS_TABLE_SCHEMA))
    return pa.concat_tables(projected)


def _read_pointer(url: str, pointer: str, storage_options: Mapping[str, Any] | None) -> list[tuple[str, pa.Table]]:
    """(path, table) of the exemplars a run read, as its manifest names them: a folder of Parquet parts (a
    harvest's exemplars/), a Parquet file, or a local JSONL file; none, with a warning, where they are gone."""
    if "://" not in pointer and not posixpath.isabs(pointer):
        warnings.warn(
            f"{url}/manifest.json names exemplars at {pointer!r}, a path relative to the folder that run was started "
            "from, which the manifest does not record; the run's labels are read without them",
            stacklevel=3,
        )
        return []
    source_fs, path = _filesystem(pointer, storage_options)
    if not source_fs.exists(path):
        warnings.warn(
            f"{url}/manifest.json names exemplars at {pointer!r}, which is not found; "
            "the run's labels are read without them",
            stacklevel=3,
        )
        return []
    if pointer.endswith(JSONL_SUFFIXES):
        if pointer.startswith("file://") or "://" not in pointer:  # the run read JSONL from local files only
            try:
                return [(path, read_exemplars(path))]
            except ExemplarError as err:
                raise DatasetError(f"cannot read the exemplars of {url}: {err}") from err
        raise DatasetError(
            f"{url}/manifest.json names JSONL exemplars at {pointer}; JSONL is read from local files only"
        )
    if source_fs.isdir(path):
        return _read_parquet(source_fs, sorted(p for p in source_fs.ls(path, detail=False) if p.endswith(PARQUET)))
    return _read_parquet(source_fs, [path])


def _read_parquet(fs: Any, paths: Sequence[str]) -> list[tuple[str, pa.Table]]:
    tables = []
    for path in paths:
        try:
            tables.append((path, read_parquet(fs, path)))
        except (OSError, pa.ArrowInvalid) as err:
            raise DatasetError(f"cannot read exemplars {path} as Parquet: {err}") from err
    return tables


def _manifest(fs: Any, root: str, url: str) -> dict[str, Any]:
    """The run's manifest.json ({} where it has none); DatasetError naming it where it is not a JSON object."""
    path = posixpath.join(root, MANIFEST)
    if not fs.exists(path):
        return {}
    damaged = (
        "a run writes its manifest once and never changes it, so it was damaged since: restore it from a copy of "
        "the run folder (its labels/ parts are intact)"
    )
    try:
        loaded = json.loads(fs.cat_file(path))
    except ValueError as err:  # not JSON, or not UTF-8
        raise DatasetError(f"{url}/{MANIFEST} is not valid JSON ({err}); {damaged}") from None
    if not isinstance(loaded, dict):
        raise DatasetError(f"{url}/{MANIFEST} holds a JSON {type(loaded).__name__}, not an object; {damaged}")
    return loaded
