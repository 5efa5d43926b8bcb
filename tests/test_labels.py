"""labeler/records/labels.py: label records, their Arrow schema and version, and the run's provenance."""

from __future__ import annotations

import pyarrow as pa
import pytest
from label_runs import records, run_info

from labeler.records.labels import (
    LABEL_SCHEMA,
    SCHEMA_VERSION,
    LabelRecord,
    SchemaVersionError,
    check_schema,
    config_hash,
    to_table,
    with_activation_frequency,
)


def test_run_info_needs_a_time_zone() -> None:
    with pytest.raises(ValueError, match="time zone"):
        run_info("r", started_at="2026-11-21T05:00:00")


def test_records_round_trip_through_the_schema_with_the_run_on_every_row() -> None:
    recs = records(6, 0)
    table = check_schema(to_table(recs, run_info("run-a")), "t")
    assert table.schema.equals(LABEL_SCHEMA, check_metadata=False) and table.num_rows == 6
    assert set(table.column("run_id").to_pylist()) == {"run-a"}
    assert set(table.column("schema_version").to_pylist()) == {SCHEMA_VERSION}
    assert table.column("feature").to_pylist() == [r.feature for r in recs]
    assert table.column("status").to_pylist() == [r.status for r in recs]


def test_check_schema_names_a_missing_version_and_a_newer_one() -> None:
    table = to_table(records(2, 0), run_info("r"))
    with pytest.raises(SchemaVersionError, match="t has no schema_version column"):
        check_schema(table.drop_columns(["schema_version"]), "t")
    newer = table.set_column(
        table.schema.get_field_index("schema_version"), "schema_version", pa.array([SCHEMA_VERSION + 1] * 2)
    )
    with pytest.raises(SchemaVersionError, match="written by a newer labeler; upgrade"):
        check_schema(newer, "t")


def test_activation_frequency_is_filled_only_for_the_features_given() -> None:
    recs = [LabelRecord(feature=1, status="skipped"), LabelRecord(feature=2, status="skipped")]
    filled = with_activation_frequency(recs, {2: 0.25})
    assert [r.activation_frequency for r in filled] == [None, 0.25]


def test_config_hash_is_stable_and_changes_with_a_setting() -> None:
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash("x")) == 16
