"""Import a Neuronpedia export of one source (an SAE at one layer) as exemplars.

The layout, as Neuronpedia's export-data.py writes it under `exports/<modelId>/<source>/`:
`activations/batch-N.jsonl.gz`, one JSON object a line per cached context of one feature (`index`: the
feature, as text; `modelId`; `layer`: the source id; `tokens`: the context's tokens as strings; `values`: the
feature's activation at each; `maxValue`, `maxValueTokenIndex`; `binMin`/`binMax` for a context drawn from an
activation quantile bin, absent or null for a top context), and optionally `features/batch-N.jsonl.gz` (`index`,
`frac_nonzero`: the share of tokens the feature fired on, `maxActApprox`). Plain `.jsonl` files are read too.

Each context gives two rows: its most activating token (sampling "top", or "quantile" where it came from a bin)
and one token of it where the feature is inactive (drawn with a seed; "inactive"), both with the activation as
exported. The tokens hold no ids, so the rows have no `window_ids`/`target_id`; `window` numbers the contexts
in the order read. One activation file at a time (one exemplar part each); a feature the features files list
without contexts, or whose contexts never activate, is written as dead. This module knows the export's JSON
fields only.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.harvest.exemplar_parts import ImportManifest, ImportSourceError, PartWriter
from labeler.harvest.texts import token_text
from labeler.records.schema import EXEMPLAR_ROW_SCHEMA, HARVEST_SCHEMA_VERSION

_BATCH = re.compile(r"^batch-(\d+)\.jsonl(\.gz)?$")

NEURONPEDIA_ROW_SCHEMA = pa.schema([f for f in EXEMPLAR_ROW_SCHEMA if f.name not in ("window_ids", "target_id")])
"""The harvest's EXEMPLAR_ROW_SCHEMA less window_ids and target_id (the export has no token ids); `position`
indexes the context's tokens, `window` numbers the contexts in the order read."""


@dataclass(frozen=True)
class NeuronpediaImportConfig:
    """What to import."""

    export: str
    """The export folder of one source: holding activations/batch-N.jsonl.gz (and optionally features/)."""
    out: str
    """Output folder or fsspec URL; must not hold exemplars yet."""
    seed: int = 0
    """Seed of the choice of each context's inactive token."""


def import_neuronpedia(
    config: NeuronpediaImportConfig, storage_options: dict[str, Any] | None = None
) -> ImportManifest:
    """Write OUT/exemplars/part-NNNNN.parquet (one per activation file), OUT/features.parquet, OUT/manifest.json."""
    export = Path(config.export)
    if not export.is_dir():
        raise ImportSourceError(f"Neuronpedia export folder not found: {export}")
    activation_files = _batches(export / "activations")
    if not activation_files:
        raise ImportSourceError(
            f"{export} is not a Neuronpedia export: expected activations/batch-N.jsonl.gz (as Neuronpedia's "
            "export-data.py writes under exports/<modelId>/<source>/), found none"
        )
    listed = _listed_features(export / "features")
    writer = PartWriter(config.out, storage_options)
    seen: set[int] = set()
    source: tuple[str, str] | None = None
    windows = 0
    for path in activation_files:
        rows: dict[str, list[Any]] = {name: [] for name in NEURONPEDIA_ROW_SCHEMA.names}
        maxima: dict[int, float] = {}
        for line_no, record in _records(path):
            where = f"{path}:{line_no}"
            feature, tokens, values = _fields(record, where)
            this = (str(record.get("modelId", "")), str(record.get("layer", "")))
            if source is None:
                source = this
            elif this != source:
                raise ImportSourceError(
                    f"{where}: modelId/layer {this} differ from {source} read before; import one source at a time"
                )
            maxima[feature] = max(maxima.get(feature, 0.0), float(values.max()))
            _context_rows(rows, feature, tokens, values, record, windows, config.seed)
            windows += 1
        features = sorted(maxima)
        seen.update(features)
        exemplars = pa.table(
            {**rows, "schema_version": np.full(len(rows["feature"]), HARVEST_SCHEMA_VERSION, dtype=np.int32)},
            schema=NEURONPEDIA_ROW_SCHEMA,
        )
        dead = [f for f in features if maxima[f] <= 0]  # never active: no rows, as a harvest writes dead features
        if dead:
            exemplars = exemplars.filter(pc.invert(pc.is_in(exemplars.column("feature"), pa.array(dead, pa.int64()))))
        writer.write_part(exemplars, _feature_rows(features, maxima, listed, exemplars))
    assert source is not None
    unseen = sorted(set(listed) - seen)
    if unseen:  # listed without a context: dead, recorded with the last part (they have no rows anywhere)
        writer.add_features(_feature_rows(unseen, {}, listed, None))
    return writer.finish(
        source_format="neuronpedia",
        sae=str(export),
        model=source[0],
        hook=source[1],
        tokens=None,
        windows=windows,
        unresolved_targets=0,
        settings={"seed": config.seed},
    )


def _batches(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _BATCH.match(p.name))]
    return [p for _, p in sorted(found)]


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-empty line, streamed."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ImportSourceError(f"{path}:{line_no}: not JSON: {err}") from err
                if not isinstance(record, dict):
                    raise ImportSourceError(f"{path}:{line_no}: expected a JSON object")
                yield line_no, record
    except (OSError, EOFError) as err:
        raise ImportSourceError(f"cannot read {path}: {err}") from err


def _fields(record: dict[str, Any], where: str) -> tuple[int, list[str], np.ndarray]:
    missing = [k for k in ("index", "tokens", "values") if k not in record]
    if missing:
        raise ImportSourceError(
            f"{where}: missing {missing}; an activation row of a Neuronpedia export has index, tokens and values"
        )
    try:
        feature = int(record["index"])
        tokens = [str(t) for t in record["tokens"]]
        values = np.asarray(record["values"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ImportSourceError(f"{where}: index must be an integer, tokens strings, values numbers: {err}") from err
    if feature < 0 or not tokens or values.shape != (len(tokens),):
        raise ImportSourceError(
            f"{where}: needs index >= 0 and one value per token (found {len(tokens)} tokens, {values.size} values)"
        )
    if not np.isfinite(values).all():
        raise ImportSourceError(f"{where}: values holds NaN or infinite numbers")
    return feature, tokens, values


def _context_rows(
    rows: dict[str, list[Any]],
    feature: int,
    tokens: list[str],
    values: np.ndarray,
    record: dict[str, Any],
    window: int,
    seed: int,
) -> None:
    """Append the context's most activating token and one inactive token (where it has both)."""
    context = "".join(tokens)
    picks: list[tuple[int, str]] = []
    top = int(np.argmax(values))
    if values[top] > 0:
        picks.append((top, "top" if record.get("binMin") in (None, -1) else "quantile"))
    inactive = np.flatnonzero(values <= 0)
    if len(inactive):
        picks.append((int(np.random.default_rng([seed, feature, window]).choice(inactive)), "inactive"))
    for position, sampling in picks:
        rows["feature"].append(feature)
        rows["context"].append(context)
        rows["target"].append(token_text(tokens[position]))
        rows["activation"].append(float(values[position]))
        rows["position"].append(position)
        rows["window"].append(window)
        rows["sampling"].append(sampling)


def _listed_features(folder: Path) -> dict[int, tuple[float | None, float | None]]:
    """{feature: (frac_nonzero, maxActApprox)} from the features files, {} without them."""
    listed: dict[int, tuple[float | None, float | None]] = {}
    for path in _batches(folder):
        for line_no, record in _records(path):
            if "index" not in record:
                raise ImportSourceError(f"{path}:{line_no}: a feature row needs its index")
            frac, top = record.get("frac_nonzero"), record.get("maxActApprox")
            listed[int(record["index"])] = (
                None if frac is None else float(frac),
                None if top is None else float(top),
            )
    return listed


def _feature_rows(
    features: list[int],
    maxima: dict[int, float],
    listed: dict[int, tuple[float | None, float | None]],
    exemplars: pa.Table | None,
) -> pa.Table:
    """FEATURE_SCHEMA rows: frequency from frac_nonzero where listed; token counts unknown (null)."""
    ids = np.asarray(features, dtype=np.int64)
    kinds = {"top": np.zeros(len(ids), np.int32), "quantile": np.zeros(len(ids), np.int32)}
    kinds["inactive"] = np.zeros(len(ids), np.int32)
    if exemplars is not None and exemplars.num_rows:
        at = np.searchsorted(ids, exemplars.column("feature").to_numpy())
        sampling = np.asarray(exemplars.column("sampling").to_pylist())
        for kind, counts in kinds.items():
            np.add.at(counts, at[sampling == kind], 1)
    maximum = np.array([maxima.get(f, 0.0) for f in features], dtype=np.float64)
    return pa.table(
        {
            "feature": ids,
            "status": ["alive" if m > 0 else "dead" for m in maximum],
            "active_tokens": pa.nulls(len(ids), pa.int64()),
            "frequency": pa.array([listed.get(f, (None, None))[0] for f in features], pa.float64()),
            "max_activation": maximum,
            "mean_active_activation": pa.nulls(len(ids), pa.float64()),
            "top_examples": kinds["top"],
            "quantile_examples": kinds["quantile"],
            "inactive_examples": kinds["inactive"],
            "non_finite_tokens": np.zeros(len(ids), np.int64),
            "error": pa.nulls(len(ids), pa.string()),
        }
    )
