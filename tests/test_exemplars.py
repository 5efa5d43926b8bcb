"""The exemplar contract: reading JSONL and Parquet, and errors that name the problem."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeler.records.exemplars import ExemplarError, group_by_feature, read_exemplars, unlabelable_reason

ROWS = [
    {"feature": 3, "context": "the dog ran", "target": "dog", "activation": 1.5},
    {"feature": 1, "context": "a red apple", "target": "red", "activation": 0.0},
    {"feature": 3, "context": "a red apple", "target": "apple", "activation": 0.0},
    {"feature": 1, "context": "a red apple", "target": "apple", "activation": 2.0},
]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_and_parquet_read_the_same(tmp_path: Path) -> None:
    from_json = read_exemplars(write_jsonl(tmp_path / "e.jsonl", ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "e.parquet")
    from_parquet = read_exemplars(tmp_path / "e.parquet")
    assert from_json.select(["feature", "context", "target", "activation"]).equals(
        from_parquet.select(["feature", "context", "target", "activation"])
    )
    groups = list(group_by_feature(from_json))
    assert [g.feature for g in groups] == [1, 3]
    assert groups[1].targets == ("dog", "apple") and list(groups[1].activations) == [1.5, 0.0]


def test_extra_columns_are_kept(tmp_path: Path) -> None:
    rows = [{**row, "position": i} for i, row in enumerate(ROWS)]
    assert "position" in read_exemplars(write_jsonl(tmp_path / "e.jsonl", rows)).column_names


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{k: v for k, v in row.items() if k != "target"} for row in ROWS], r"missing column\(s\) \['target'\]"),
        ([{**ROWS[0], "activation": "high"}], "column 'activation' cannot be read as double"),
        ([{**ROWS[0], "feature": -1}], "negative"),
        ([{**ROWS[0], "context": None}], "column 'context' has 1 null"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, rows: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ExemplarError, match=message):
        read_exemplars(write_jsonl(tmp_path / "e.jsonl", rows))


def test_nan_activation_is_refused(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([*ROWS, {**ROWS[0], "activation": math.nan}])
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(ExemplarError, match=r"NaN or infinite value.*first at row 4"):
        read_exemplars(tmp_path / "e.parquet")


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ExemplarError, match="not found"):
        read_exemplars(tmp_path / "nope.jsonl")
    (tmp_path / "e.csv").write_text("feature\n1\n")
    with pytest.raises(ExemplarError, match="unknown exemplar format"):
        read_exemplars(tmp_path / "e.csv")


def test_unlabelable_reason_counts_both_classes(tmp_path: Path) -> None:
    feature = next(group_by_feature(read_exemplars(write_jsonl(tmp_path / "e.jsonl", ROWS))))
    assert "has 1 active and 1 inactive" in (unlabelable_reason(feature, 0.0) or "")
    assert np.all(feature.activations >= 0)
