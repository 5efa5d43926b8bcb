"""The exemplar contract: reading JSONL and Parquet, and errors that name the problem."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from labeler.records.exemplars import (
    ExemplarError,
    check_features_table,
    check_parts,
    group_by_feature,
    read_exemplars,
    split_invalid_features,
    unlabelable_reason,
)

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
        ([{**ROWS[0], "activation": "high"}], r"line 1, column 'activation': 'high' is not a number"),
        ([{**ROWS[0], "feature": -1}], "negative"),
        ([{**ROWS[0], "context": None}], "column 'context' has 1 null"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, rows: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ExemplarError, match=message):
        read_exemplars(write_jsonl(tmp_path / "e.jsonl", rows))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"feature": "3"}, r"e.jsonl, line 3, column 'feature': '3' is not an integer"),
        ({"feature": 3.0}, r"line 3, column 'feature': 3.0 is not an integer"),
        ({"activation": "1.5"}, r"line 3, column 'activation': '1.5' is not a number"),
        ({"activation": True}, r"line 3, column 'activation': True is not a number"),
        ({"context": 7}, r"line 3, column 'context': 7 is not a string"),
        ({"target": False}, r"line 3, column 'target': False is not a string"),
    ],
)
def test_wrong_json_types_are_named_not_converted(tmp_path: Path, bad: dict[str, object], message: str) -> None:
    rows = [*ROWS[:2], {**ROWS[2], **bad}, ROWS[3]]
    with pytest.raises(ExemplarError, match=message):
        read_exemplars(write_jsonl(tmp_path / "e.jsonl", rows))
    every_row_bad = [{**row, **bad} for row in ROWS]  # a whole column of the wrong type: Arrow would infer it
    with pytest.raises(ExemplarError, match=message.replace("line 3", "line 1")):
        read_exemplars(write_jsonl(tmp_path / "e.jsonl", every_row_bad))


def test_wrong_parquet_type_is_refused_not_cast(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([{**row, "feature": str(row["feature"])} for row in ROWS])
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(ExemplarError, match=r"wrong type \(feature: string\)"):
        read_exemplars(tmp_path / "e.parquet")


def test_invalid_utf8_is_named_by_line_and_byte(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", ROWS)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"red", b"r\xffd")
    path.write_bytes(b"".join(lines))
    offset = len(lines[0]) + lines[1].index(b"\xff")
    with pytest.raises(ExemplarError, match=rf"e.jsonl, line 2 \(byte offset {offset}\): not UTF-8"):
        read_exemplars(path)


def test_empty_target_is_refused_and_absent_target_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ExemplarError, match=r"column 'target' has 1 empty value\(s\) \(first at line 3\)"):
        read_exemplars(write_jsonl(tmp_path / "e.jsonl", [*ROWS[:2], {**ROWS[2], "target": ""}]))
    rows = [*ROWS, {**ROWS[0], "target": "cat"}, {**ROWS[1], "target": "\ufffd"}]
    with caplog.at_level("WARNING", logger="labeler.records.exemplars"):
        table = read_exemplars(write_jsonl(tmp_path / "e.jsonl", rows))
    assert table.num_rows == 6  # kept as given
    assert "2 row(s) whose target does not occur in its context (first at line 5)" in caplog.text
    kept, invalid = split_invalid_features(pa.Table.from_pylist([*ROWS, {**ROWS[0], "target": ""}]))
    assert set(kept.column("feature").to_pylist()) == {1}
    assert "column 'target' has 1 empty value(s)" in invalid[3]


def test_every_parquet_part_is_checked(tmp_path: Path) -> None:
    folder = tmp_path / "exemplars"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), folder / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[2:]).drop_columns(["target"]), folder / "part-00001.parquet")
    dataset = ds.dataset(folder, format="parquet")
    assert "target" in dataset.schema.names  # the dataset's schema is the first part's: it cannot tell
    with pytest.raises(ExemplarError, match=r"part .*part-00001.parquet: missing column\(s\) \['target'\]"):
        check_parts(dataset, str(folder))
    with pytest.raises(ExemplarError, match=r"part-00001.parquet: missing column"):
        read_exemplars(folder)
    (folder / "part-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(ExemplarError, match=r"part-00001.parquet: cannot read its schema"):
        check_parts(ds.dataset(folder, format="parquet"), str(folder))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"feature": 1, "frequency": 0.5}, {"feature": 1, "frequency": 0.1}], r"1 feature id\(s\) appear more than"),
        ([{"feature": 1, "frequency": -1.0}], r"'frequency' has 1 value\(s\) outside \[0, 1\] \(first at row 0"),
        (
            [{"feature": 1, "frequency": 0.2}, {"feature": 2, "frequency": math.nan}],
            r"outside \[0, 1\] \(first at row 1",
        ),
        ([{"feature": 1, "activation_frequency": 1.5}], r"'activation_frequency' has 1 value\(s\) outside"),
        ([{"feature": 1, "frequency": "often"}], r"'frequency' is string; a frequency is a number"),
    ],
)
def test_features_table_ids_unique_and_frequencies_in_range(rows: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ExemplarError, match=message):
        check_features_table(pa.Table.from_pylist(rows), "features.parquet")


def test_good_features_table_passes() -> None:
    check_features_table(pa.Table.from_pylist([{"feature": 1, "frequency": 0.0}, {"feature": 2, "frequency": None}]))
    check_features_table(pa.Table.from_pylist([{"feature": 3, "frequency": 1.0}]))


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
