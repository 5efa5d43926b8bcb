"""The output of an import, laid out as a harvest's: exemplar parts, features.parquet and manifest.json.

Importers (delphi_cache, neuronpedia_cache) hand this writer one finished part at a time (a table of exemplar
rows and a table of the features it covers) and never hold more than one; at the end it writes every feature's
row to `features.parquet` and `manifest.json`. The exemplar rows are the harvest's EXEMPLAR_ROW_SCHEMA, less
the columns a source cannot fill; the feature rows are the harvest's FEATURE_SCHEMA, where the counts a source
does not record (active_tokens, frequency, mean_active_activation) may be null. This module knows no source
format.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labeler import __version__
from labeler.errors import InputError
from labeler.records.schema import FEATURE_SCHEMA, HARVEST_SCHEMA_VERSION
from labeler.records.storage import url_to_fs

UNKNOWN_COUNTS = ("active_tokens", "frequency", "mean_active_activation")
"""FEATURE_SCHEMA columns an import may leave null: what the source did not record."""

IMPORT_FEATURE_SCHEMA = pa.schema(
    [field.with_nullable(True) if field.name in UNKNOWN_COUNTS else field for field in FEATURE_SCHEMA]
)


class ImportSourceError(InputError):
    """The input of an import is missing or not in the expected layout; the message says what to fix."""


@dataclass(frozen=True)
class ImportManifest:
    """What was imported; written as manifest.json next to the data (`sae`, `model`, `hook` as a harvest's, so a
    run's provenance reads the same)."""

    source_format: str
    """"delphi-cache" or "neuronpedia"."""
    sae: str
    """The imported folder."""
    model: str
    """The tokenizer folder (delphi) or the export's modelId (Neuronpedia)."""
    hook: str
    tokens: int | None
    """Tokens the source's activations cover (None where the source does not say)."""
    windows: int
    """Cached token windows (delphi) or activation records (Neuronpedia) read."""
    features: int
    dead: int
    ultra_rare: int
    failed: int
    exemplar_rows: int
    unresolved_targets: int
    parts: int
    seconds: float
    settings: dict[str, Any]
    labeler_version: str = __version__
    schema_version: int = HARVEST_SCHEMA_VERSION


IMPORT_OUTPUTS = ("exemplars", "features.parquet", "manifest.json")
"""What an import writes into its out folder."""


def names_in(out: str, storage_options: dict[str, Any] | None = None) -> set[str] | None:
    """The names an out folder holds now, or None where it does not exist (before an import: see `discard`)."""
    fs, root = url_to_fs(out, storage_options)
    if not fs.isdir(root):
        return None
    return {str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}


def discard(out: str, before: set[str] | None, storage_options: dict[str, Any] | None = None) -> None:
    """Remove what a failed import wrote: its outputs that `out` did not hold `before` (names_in's answer then),
    and the folder itself where the import created it and nothing else is in it; so the same command can run again."""
    fs, root = url_to_fs(out, storage_options)
    for name in IMPORT_OUTPUTS:
        if name not in (before or set()) and fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}", recursive=True)
    if before is None and fs.isdir(root) and not fs.ls(root, detail=False):
        fs.rmdir(root)


class PartWriter:
    """Writes OUT/exemplars/part-NNNNN.parquet one part at a time, then OUT/features.parquet and manifest.json."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None) -> None:
        self.out = out
        self.fs, self.root = url_to_fs(out, storage_options)
        exemplars = f"{self.root}/exemplars"
        holds = self.fs.isdir(exemplars) and self.fs.ls(exemplars, detail=False)  # an empty folder holds none
        if self.fs.exists(f"{self.root}/manifest.json") or holds or self.fs.isfile(exemplars):
            raise ImportSourceError(f"{out} already holds exemplars; choose a new --out or remove it")
        self.fs.makedirs(f"{self.root}/exemplars", exist_ok=True)
        self.parts = 0
        self.rows = 0
        self._features: list[pa.Table] = []
        self.started = time.perf_counter()

    def write_part(self, exemplars: pa.Table, features: pa.Table) -> int:
        """Write one part's exemplar rows; `features` are the rows of FEATURE_SCHEMA (without `part` and
        `schema_version`) of the features it covers, dead ones included. Returns the part's number."""
        part = self.parts
        with self.fs.open(f"{self.root}/exemplars/part-{part:05d}.parquet", "wb") as f:
            pq.write_table(exemplars, f)
        self.parts += 1
        self.rows += exemplars.num_rows
        self._add(features, part)
        return part

    def add_features(self, features: pa.Table) -> None:
        """Rows of features that have no exemplar rows in any part (dead ones the source lists without data): their
        `part` is the last part written."""
        self._add(features, max(self.parts - 1, 0))

    def _add(self, features: pa.Table, part: int) -> None:
        n = features.num_rows
        features = features.append_column("part", pa.array(np.full(n, part, dtype=np.int32)))
        features = features.append_column(
            "schema_version", pa.array(np.full(n, HARVEST_SCHEMA_VERSION, dtype=np.int32))
        )
        self._features.append(features.select(IMPORT_FEATURE_SCHEMA.names).cast(IMPORT_FEATURE_SCHEMA))

    def finish(self, **manifest: Any) -> ImportManifest:
        """Write features.parquet (sorted by feature; a feature in two parts is an error) and manifest.json."""
        if not self._features:
            raise ImportSourceError(f"nothing to import into {self.out}: the source holds no features")
        table = pa.concat_tables(self._features).sort_by("feature")
        ids = table.column("feature").to_numpy()
        repeated = ids[1:][np.diff(ids) == 0]
        if len(repeated):
            raise ImportSourceError(
                f"feature(s) {sorted(set(repeated.tolist()))[:5]} appear in more than one file of the source; each "
                "feature's activations must sit in one file"
            )
        with self.fs.open(f"{self.root}/features.parquet", "wb") as f:
            pq.write_table(table, f)
        statuses = table.column("status").to_pylist()
        result = ImportManifest(
            features=table.num_rows,
            dead=statuses.count("dead"),
            ultra_rare=statuses.count("ultra_rare"),
            failed=statuses.count("failed"),
            exemplar_rows=self.rows,
            parts=self.parts,
            seconds=round(time.perf_counter() - self.started, 3),
            **manifest,
        )
        with self.fs.open(f"{self.root}/manifest.json", "w") as f:
            f.write(json.dumps(asdict(result), indent=2) + "\n")
        return result
