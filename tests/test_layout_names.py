"""labeler/records/layout.py: the run folder's file names (tests/test_layout.py checks the package layout)."""

from __future__ import annotations

from labeler.records.layout import PART_NAME, part_name


def test_a_part_is_named_by_its_zero_padded_chunk_index_and_only_committed_names_match() -> None:
    assert part_name(7) == "part-00000007.parquet"
    match = PART_NAME.match(part_name(7))
    assert match is not None and int(match.group(1)) == 7
    assert PART_NAME.match(".part-00000007.parquet.x.partial") is None
    assert PART_NAME.match("part-00000007.parquet.x.partial") is None
