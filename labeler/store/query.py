"""SQL over label datasets with DuckDB: the tables `labels` and `exemplars`, results as Arrow or text.

The tables are Arrow tables already read (labeler/store/dataset.py) and registered as DuckDB views, so DuckDB
itself never touches storage (its httpfs extension is not needed). After registering them the connection is
locked: no file or network access, no extension installed or loaded, no setting changed (DuckDB's own
settings for this, docs: operations_manual/securing_duckdb), so a statement can read the two tables and
nothing else on the machine. This module knows nothing about URLs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Any, Literal

import duckdb
import pyarrow as pa

from labeler.errors import InputError
from labeler.store.dataset import Dataset

Format = Literal["table", "csv", "json"]


class QueryError(InputError):
    """A SQL statement DuckDB refused (syntax, unknown table or column, ...); the message is DuckDB's."""


class QueryNotAllowed(QueryError):
    """A statement that would reach past the tables: write or read files or URLs, attach a database file,
    install or load an extension, or change a setting."""


# Set after the tables are registered, in this order: lock_configuration last, so none can be undone.
LOCKDOWN = (
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET lock_configuration = true",
)


def run_query(data: Dataset, sql: str) -> pa.Table:
    """The result of one SQL statement over `labels` (and `exemplars`, where the runs have them)."""
    con = duckdb.connect()
    try:
        con.register("labels", data.labels)
        if data.exemplars is not None:
            con.register("exemplars", data.exemplars)
        for setting in LOCKDOWN:
            con.execute(setting)
        try:
            relation = con.sql(sql)
            if relation is None:
                raise QueryError("the statement returned no result: give a query such as SELECT ... FROM labels")
            return relation.to_arrow_table()
        except duckdb.Error as err:
            if isinstance(err, duckdb.PermissionException) or "configuration has been locked" in str(err):
                raise QueryNotAllowed(f"not allowed in labeler query: {err}") from err
            tables = "labels and exemplars" if data.exemplars is not None else "labels (these runs have no exemplars)"
            raise QueryError(f"the SQL statement failed: {err}\n(tables: {tables})") from err
    finally:
        con.close()


def render(table: pa.Table, fmt: Format, max_width: int = 60) -> str:
    """A query result as an aligned text table, CSV (nested values as JSON) or a JSON array of objects.

    Columns are taken by position: DuckDB keeps two result columns of the same name (`SELECT a.label,
    b.label ...`), and the table shows both under that name; CSV and JSON, whose readers key columns by
    name, name the later ones label_2, label_3, ...
    """
    columns = [[json_ready(v) for v in column.to_pylist()] for column in table.columns]
    rows = list(zip(*columns, strict=True)) if columns else []
    if fmt == "json":
        names = unique_names(table.column_names)
        objects = [dict(zip(names, row, strict=True)) for row in rows]
        return json.dumps(objects, indent=1, ensure_ascii=False, default=str) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(unique_names(table.column_names))
        writer.writerows([_cell(value) for value in row] for row in rows)
        return out.getvalue()
    # A terminal shows the table: control characters of a context (escape codes, carriage returns) are written
    # as visible escapes, so no stored text can move the cursor, recolour or rewrite the screen.
    cells = [[_cell(_visible(_cell(value)), max_width) for value in row] for row in rows]
    names = [_visible(name) for name in table.column_names]
    widths = [max([len(name)] + [len(r[i]) for r in cells]) for i, name in enumerate(names)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(lines) + "\n"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _visible(text: str) -> str:
    """`text` with each control character (C0, DEL, C1) written as its escape, e.g. \\x1b."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def unique_names(names: list[str]) -> list[str]:
    """`names` with each repeat renamed NAME_2, NAME_3, ..., skipping names already taken."""
    taken = set(names)
    out: list[str] = []
    for name in names:
        if name in out:
            k = 2
            while f"{name}_{k}" in taken:
                k += 1
            name = f"{name}_{k}"
            taken.add(name)
        out.append(name)
    return out


def json_ready(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, nested values recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


def _cell(value: Any, max_width: int | None = None) -> str:
    if value is None:
        text = ""
    elif isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False, default=str)
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    if max_width is not None and len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text
