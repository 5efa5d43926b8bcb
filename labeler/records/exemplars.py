"""The exemplar contract: the input of labelling.

One row per example: `feature` (int), `context` (str: the text), `target` (str: the word or token in
that text whose activation this is), `activation` (float). Extra columns are kept but not required.
This module reads and validates exemplar files (JSONL or Parquet) and groups them per feature; it
knows nothing about models.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from labeler.errors import InputError
from labeler.records.schema import EXEMPLAR_SCHEMA

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = tuple(EXEMPLAR_SCHEMA.names)
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
"""File name endings read as JSON lines; anything else is Parquet (a file or a folder of parts)."""


class ExemplarError(InputError):
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
            check_parts(ds.dataset(path, format="parquet"), str(path))
            table = pq.read_table(path)
        elif path.suffix in JSONL_SUFFIXES:
            table = _read_jsonl(path)
        else:
            raise ExemplarError(f"unknown exemplar format {path.suffix!r} for {path}; use .jsonl or .parquet")
    except (pa.ArrowInvalid, OSError) as err:
        raise ExemplarError(f"cannot read exemplars from {path}: {err}") from err
    if path.suffix in JSONL_SUFFIXES:
        return validate_exemplars(table, source=str(path), where=lambda row: f"line {_jsonl_line(path, row)}")
    return validate_exemplars(table, source=str(path))


def validate_exemplars(
    table: pa.Table, source: str = "exemplars", where: Callable[[int], str] = lambda row: f"row {row}"
) -> pa.Table:
    """Check the contract and cast the required columns to their declared types. `where` names a row for the
    messages (a JSON lines file's: by its line, as its type errors are; a table's: by its index)."""
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
            f"{source}: column 'activation' has {bad} NaN or infinite value(s) (first at {where(first)}); "
            "every activation must be a finite number"
        )
    negative = pc.sum(pc.less(columns["feature"], 0)).as_py()
    if negative:
        raise ExemplarError(f"{source}: column 'feature' has {negative} negative id(s); feature ids must be >= 0")
    empty = _empty_targets(columns["target"])
    if empty.any():
        raise ExemplarError(
            f"{source}: column 'target' has {int(empty.sum())} empty value(s) (first at {where(int(empty.argmax()))}); "
            "every target must be the word or token of its context whose activation the row gives"
        )
    warn_absent_targets(columns["context"], columns["target"], source, where)
    return _with_extra_columns(columns, table)


def _empty_targets(target: pa.ChunkedArray) -> np.ndarray:
    """Bool[row]: the target is "" (a null is not counted here)."""
    return np.asarray(pc.fill_null(pc.equal(pc.utf8_length(target), 0), False).to_numpy(zero_copy_only=False))


def warn_absent_targets(
    context: pa.ChunkedArray,
    target: pa.ChunkedArray,
    source: str,
    where: Callable[[int], str] = lambda row: f"row {row}",
) -> int:
    """Log one warning counting the rows whose target does not occur in their context, and return that count.

    A warning, not an error: a producer may legitimately hold a target its context lacks (a byte-level token
    decoded alone gives U+FFFD where the context has the whole character); such a row is labelled as given.
    """
    pairs = zip(context.to_pylist(), target.to_pylist(), strict=True)
    absent = [row for row, (text, word) in enumerate(pairs) if text is not None and word and word not in text]
    if absent:
        log.warning(
            "%s: %d row(s) whose target does not occur in its context (first at %s); they are kept as given",
            source,
            len(absent),
            where(absent[0]),
        )
    return len(absent)


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
    checks.append(("column 'target' has {n} empty value(s)", pa.chunked_array([_empty_targets(columns["target"])])))
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
    warn_absent_targets(kept.column("context"), kept.column("target"), source)
    return kept, reasons


def check_parts(dataset: ds.Dataset, source: str = "exemplars") -> None:
    """Raise ExemplarError unless every file of `dataset` has the contract's columns and types. A dataset's
    `schema` is its first file's: a later part lacking a column would otherwise fail only when read."""
    for fragment in dataset.get_fragments():
        where = f"{source}: part {getattr(fragment, 'path', fragment)}"
        try:
            schema = fragment.physical_schema
        except (pa.ArrowInvalid, OSError) as err:
            raise ExemplarError(f"{where}: cannot read its schema ({err}); is it a Parquet file?") from err
        check_exemplar_schema(schema, where)


FREQUENCY_COLUMNS = ("frequency", "activation_frequency")
"""Where a features table holds each feature's activation frequency (a share of tokens)."""


def check_features_table(table: pa.Table, source: str = "features") -> None:
    """Raise ExemplarError unless a features table (a harvest's features.parquet, an activation-frequency file)
    holds each feature id once and every frequency in [0, 1] (a null frequency is allowed: not measured)."""
    if "feature" in table.column_names:
        ids, counts = np.unique(pc.drop_null(table.column("feature")).to_numpy(), return_counts=True)
        repeated = ids[counts > 1]
        if len(repeated):
            raise ExemplarError(
                f"{source}: {len(repeated)} feature id(s) appear more than once (first: {repeated[:5].tolist()}); "
                "a features table holds one row per feature"
            )
    for name in FREQUENCY_COLUMNS:
        if name not in table.column_names:
            continue
        column = table.column(name)
        if not _is_number(column.type):
            raise ExemplarError(f"{source}: column {name!r} is {column.type}; a frequency is a number in [0, 1]")
        values = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False))
        outside = ~((values >= 0) & (values <= 1)) & ~np.asarray(column.is_null().to_numpy(zero_copy_only=False))
        if outside.any():
            row = int(outside.argmax())
            raise ExemplarError(
                f"{source}: column {name!r} has {int(outside.sum())} value(s) outside [0, 1] (first at row {row}: "
                f"{values[row]}); a frequency is the share of tokens on which the feature is active"
            )


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


def _or_null(fits: Callable[[pa.DataType], bool]) -> Callable[[pa.DataType], bool]:
    """A column of nulls only (a type Arrow infers for JSON) fits every type; its nulls are reported as nulls."""
    return lambda kind: bool(pa.types.is_null(kind) or fits(kind))


_CONTRACT_TYPES = {
    name: _or_null(fits)
    for name, fits in {
        "feature": pa.types.is_integer,
        "context": _is_text,
        "target": _is_text,
        "activation": _is_number,
    }.items()
}
_JSON_TYPES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "feature": ("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool)),
    "context": ("a string", lambda value: isinstance(value, str)),
    "target": ("a string", lambda value: isinstance(value, str)),
    "activation": ("a number", lambda value: isinstance(value, int | float) and not isinstance(value, bool)),
}


def _read_jsonl(path: Path) -> pa.Table:
    """JSON lines, every byte checked as UTF-8 first and every value's JSON type kept (no conversion): a
    wrong type is named by line and column, not guessed (Arrow reads a column of "3" as strings, and names
    the row of a mixed column within its block, not within the file)."""
    offset = 0
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ExemplarError(
                    f"{path}, line {number} (byte offset {offset + err.start}): not UTF-8 ({err.reason}); "
                    "JSON lines exemplars must be UTF-8 text"
                ) from err
            offset += len(line)
    try:
        table = pa_json.read_json(path)
    except pa.ArrowInvalid as err:
        _raise_first_bad_line(path)
        raise ExemplarError(f"cannot read exemplars from {path}: {err}") from err
    present = [name for name in REQUIRED_COLUMNS if name in table.column_names]
    if not all(_CONTRACT_TYPES[name](table.schema.field(name).type) for name in present):
        _raise_first_bad_line(path)
    return table


def _jsonl_line(path: Path, row: int) -> int:
    """The line number (from 1) of row `row` (from 0) of a JSON lines file: Arrow skips blank lines."""
    with path.open("rb") as lines:
        rows = (number for number, line in enumerate(lines, start=1) if line.strip())
        return next(itertools.islice(rows, row, None))


def _raise_first_bad_line(path: Path) -> None:
    """Raise ExemplarError naming the first line that is not a JSON object or holds a value of the wrong type."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ExemplarError(f"{path}, line {number}: not valid JSON ({err})") from err
            if not isinstance(row, dict):
                raise ExemplarError(f"{path}, line {number}: not a JSON object; each line holds one example")
            for name, (kind, fits) in _JSON_TYPES.items():
                value = row.get(name)
                if value is not None and not fits(value):
                    raise ExemplarError(
                        f"{path}, line {number}, column {name!r}: {value!r} is not {kind}; "
                        f"the exemplar contract needs {name}: {kind}, and no value is converted"
                    )


def _cast_columns(table: pa.Table, source: str) -> dict[str, pa.ChunkedArray]:
    """The contract's columns cast to their declared types (nulls kept); raises for a missing or unreadable column."""
    check_exemplar_schema(table.schema, source)
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
