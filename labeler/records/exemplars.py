"""The exemplar contract: the input of labelling.

One row per example: `feature` (int), `context` (str: the text), `target` (str: the word or token in
that text whose activation this is), `activation` (float). Extra columns are kept but not required.
This module reads and validates exemplar files (JSONL or Parquet) and groups them per feature; it
knows nothing about models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

EXEMPLAR_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int64(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("activation", pa.float64(), nullable=False),
    ]
)
REQUIRED_COLUMNS = tuple(EXEMPLAR_SCHEMA.names)
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
"""File name endings read as JSON lines; anything else is Parquet (a file or a folder of parts)."""


class ExemplarError(ValueError):
    """The exemplar input breaks the contract; the message says what to fix."""


@dataclass(frozen=True)
class FeatureExemplars:
    """All examples of one feature."""

    feature: int
    contexts: tuple[str, ...]
    targets: tuple[str, ...]
    activations: np.ndarray
    """float64, one per example."""

    def __len__(self) -> int:
        return len(self.contexts)


def read_exemplars(path: str | Path) -> pa.Table:
    """Read an exemplar file (`.jsonl`/`.json` or `.parquet`, or a folder of Parquet files) and validate it."""
    path = Path(path)
    if not path.exists():
        raise ExemplarError(f"exemplar file not found: {path}")
    try:
        if path.is_dir() or path.suffix == ".parquet":
            table = pq.read_table(path)
        elif path.suffix in JSONL_SUFFIXES:
            table = pa_json.read_json(path)
        else:
            raise ExemplarError(f"unknown exemplar format {path.suffix!r} for {path}; use .jsonl or .parquet")
    except (pa.ArrowInvalid, OSError) as err:
        raise ExemplarError(f"cannot read exemplars from {path}: {err}") from err
    return validate_exemplars(table, source=str(path))


def validate_exemplars(table: pa.Table, source: str = "exemplars") -> pa.Table:
    """Check the contract and cast the required columns to their declared types."""
    columns = _cast_columns(table, source)
    if table.num_rows == 0:
        raise ExemplarError(f"{source}: no rows")
    for name, column in columns.items():
        if column.null_count:
            raise ExemplarError(f"{source}: column {name!r} has {column.null_count} null value(s)")
    activation = columns["activation"]
    bad = pc.sum(pc.invert(pc.is_finite(activation))).as_py()
    if bad:
        first = pc.index(pc.is_finite(activation), False).as_py()
        raise ExemplarError(
            f"{source}: column 'activation' has {bad} NaN or infinite value(s) (first at row {first}); "
            "every activation must be a finite number"
        )
    negative = pc.sum(pc.less(columns["feature"], 0)).as_py()
    if negative:
        raise ExemplarError(f"{source}: column 'feature' has {negative} negative id(s); feature ids must be >= 0")
    return _with_extra_columns(columns, table)


def split_invalid_features(table: pa.Table, source: str = "exemplars") -> tuple[pa.Table, dict[int, str]]:
    """(the rows of the features whose every row keeps the contract, {feature: what its bad rows break}).

    For input read a part at a time: a null or non-finite value takes out its own feature, not the others
    read with it. What no row can keep (a missing column, a column of the wrong type, a null or negative
    feature id) still raises ExemplarError.
    """
    columns = _cast_columns(table, source)
    feature = columns["feature"]
    if feature.null_count:
        raise ExemplarError(f"{source}: column 'feature' has {feature.null_count} null value(s)")
    if pc.sum(pc.less(feature, 0)).as_py():
        raise ExemplarError(f"{source}: column 'feature' has negative id(s); feature ids must be >= 0")
    finite = pc.fill_null(pc.is_finite(columns["activation"]), True)
    checks = [(f"column {name!r} has {{n}} null value(s)", pc.is_null(columns[name])) for name in REQUIRED_COLUMNS[1:]]
    checks.append(("column 'activation' has {n} NaN or infinite value(s)", pc.invert(finite)))
    ids = feature.to_numpy()
    problems: dict[int, list[str]] = {}
    for template, mask in checks:
        bad_ids, counts = np.unique(ids[mask.to_numpy()], return_counts=True)
        for bad_id, count in zip(bad_ids.tolist(), counts.tolist(), strict=True):
            problems.setdefault(bad_id, []).append(template.format(n=count))
    kept = _with_extra_columns(columns, table).filter(pa.array(~np.isin(ids, list(problems))))
    reasons = {
        bad_id: f"{source}: feature {bad_id}: {'; '.join(found)}; every row needs a context, a target and a "
        "finite activation"
        for bad_id, found in problems.items()
    }
    return kept, reasons


def check_exemplar_schema(schema: pa.Schema, source: str = "exemplars") -> None:
    """Raise ExemplarError unless `schema` has the contract's columns with types that cast to it (a whole
    dataset's schema, checked before its rows are read)."""
    _require_columns(schema.names, source)
    wrong = [
        f"{name}: {schema.field(name).type}"
        for name, fits in _CONTRACT_TYPES.items()
        if not fits(schema.field(name).type)
    ]
    if wrong:
        raise ExemplarError(
            f"{source}: column(s) of the wrong type ({', '.join(wrong)}); the exemplar contract needs feature: "
            "integer, context and target: string, activation: number"
        )


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _is_number(kind: pa.DataType) -> bool:
    return bool(pa.types.is_floating(kind) or pa.types.is_integer(kind))


_CONTRACT_TYPES = {"feature": pa.types.is_integer, "context": _is_text, "target": _is_text, "activation": _is_number}


def _cast_columns(table: pa.Table, source: str) -> dict[str, pa.ChunkedArray]:
    """The contract's columns cast to their declared types (nulls kept); raises for a missing or unreadable column."""
    _require_columns(table.column_names, source)
    columns = {}
    for field in EXEMPLAR_SCHEMA:
        try:
            columns[field.name] = table.column(field.name).cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ExemplarError(f"{source}: column {field.name!r} cannot be read as {field.type}: {err}") from err
    return columns


def _require_columns(names: list[str], source: str) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ExemplarError(
            f"{source}: missing column(s) {missing}; the exemplar contract needs {list(REQUIRED_COLUMNS)} "
            f"(found {names})"
        )


def _with_extra_columns(columns: dict[str, pa.ChunkedArray], table: pa.Table) -> pa.Table:
    extra = [name for name in table.column_names if name not in columns]
    return pa.table({**columns, **{name: table.column(name) for name in extra}})


def group_by_feature(table: pa.Table) -> Iterator[FeatureExemplars]:
    """Yield each feature's examples, in ascending feature order, keeping the file's row order within a feature."""
    if table.num_rows == 0:
        return
    features = table.column("feature").to_numpy()
    order = np.argsort(features, kind="stable")
    contexts = table.column("context").to_pylist()
    targets = table.column("target").to_pylist()
    activations = table.column("activation").to_numpy()
    boundaries = np.flatnonzero(np.diff(features[order])) + 1
    for rows in np.split(order, boundaries):
        yield FeatureExemplars(
            feature=int(features[rows[0]]),
            contexts=tuple(contexts[i] for i in rows),
            targets=tuple(targets[i] for i in rows),
            activations=activations[rows].astype(np.float64),
        )


def example_groups(examples: FeatureExemplars) -> np.ndarray:
    """Int64[row]: rows with the same (context, target) pair share a number, numbered in order of first appearance."""
    numbers: dict[tuple[str, str], int] = {}
    pairs = zip(examples.contexts, examples.targets, strict=True)
    return np.array([numbers.setdefault(pair, len(numbers)) for pair in pairs], dtype=np.int64)


def unlabelable_reason(examples: FeatureExemplars, active_threshold: float) -> str | None:
    """Why a feature cannot be labelled (too few distinct active or inactive examples to train and hold out), or
    None. Examples are counted as distinct (context, target) pairs, as the train/held-out split takes them; a pair
    is active when any of its rows is."""
    groups = example_groups(examples)
    group_active = np.bincount(groups, weights=examples.activations > active_threshold) > 0
    active, inactive = int(group_active.sum()), int((~group_active).sum())
    if active < 2 or inactive < 2:
        rows = int(np.sum(examples.activations > active_threshold))
        return (
            f"needs at least 2 active and 2 inactive distinct examples (activation > {active_threshold} counts as "
            f"active; a repeated (context, target) pair counts once) for a train and a held-out split; has "
            f"{active} active and {inactive} inactive (rows: {rows} active, {len(examples) - rows} inactive)"
        )
    return None
