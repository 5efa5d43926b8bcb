"""Bad input to `labeler label` and `labeler run`: exit status 2, a message naming the problem, and nothing
that was there before changed (bytes and mtimes) or written (issue 23, points 4, 5 and 8)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labeler.cli import main

ROWS = [
    {"feature": 1, "context": "the dog ran", "target": "dog", "activation": 1.5},
    {"feature": 1, "context": "a cat sat", "target": "cat", "activation": 1.0},
    {"feature": 1, "context": "a red apple", "target": "red", "activation": 0.0},
    {"feature": 1, "context": "a red apple", "target": "apple", "activation": 0.0},
]


def _jsonl(rows: list[dict[str, object]]) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "e.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    return write


def _bad_utf8(folder: Path) -> Path:
    path = _jsonl(ROWS)(folder)
    path.write_bytes(path.read_bytes().replace(b"cat sat", b"c\xc3t sat"))
    return path


def _parquet(table: pa.Table) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        pq.write_table(table, folder / "e.parquet")
        return folder / "e.parquet"

    return write


def _later_part_lacks_target(folder: Path) -> Path:
    parts = folder / "exemplars"
    parts.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:2]), parts / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[2:]).drop_columns(["target"]), parts / "part-00001.parquet")
    return parts


GOOD = _jsonl(ROWS)
CASES = [
    ("numeric-string feature", _jsonl([*ROWS[:3], {**ROWS[3], "feature": "1"}]), [], r"line 4, column 'feature'"),
    ("float feature", _jsonl([{**ROWS[0], "feature": 1.0}, *ROWS[1:]]), [], r"line 1, column 'feature': 1.0"),
    ("string activation", _jsonl([*ROWS[:2], {**ROWS[2], "activation": "0"}]), [], r"line 3, column 'activation'"),
    ("boolean activation", _jsonl([{**row, "activation": True} for row in ROWS]), [], r"line 1, column 'activation'"),
    ("integer context", _jsonl([*ROWS[:1], {**ROWS[1], "context": 5}, *ROWS[2:]]), [], r"line 2, column 'context'"),
    ("invalid UTF-8", _bad_utf8, [], r"e.jsonl, line 2 \(byte offset \d+\): not UTF-8"),
    ("empty target", _jsonl([*ROWS[:3], {**ROWS[3], "target": ""}]), [], r"'target' has 1 empty value"),
    (
        "Parquet string feature",
        _parquet(pa.Table.from_pylist([{**row, "feature": "1"} for row in ROWS])),
        [],
        r"wrong type \(feature: string\)",
    ),
    ("later Parquet part", _later_part_lacks_target, [], r"part-00001.parquet: missing column\(s\) \['target'\]"),
    ("lr inf", GOOD, ["--lr", "inf"], "lr must be a finite number, got inf"),
    ("lr nan", GOOD, ["--lr", "nan"], "lr must be a finite number, got nan"),
    ("c-kl inf", GOOD, ["--c-kl", "inf"], "c_kl must be a finite number, got inf"),
    ("active-threshold nan", GOOD, ["--active-threshold", "nan"], "active_threshold must be a finite number"),
]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize(("name", "write", "flags", "message"), CASES, ids=[case[0] for case in CASES])
def test_label_refuses_bad_input_before_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    write: Callable[[Path], Path],
    flags: list[str],
    message: str,
) -> None:
    exemplars = write(tmp_path)
    (tmp_path / "earlier.txt").write_text("an earlier output\n")
    before = _snapshot(tmp_path)
    out = tmp_path / "out"
    code = main(["label", "--exemplars", str(exemplars), "--discriminator", "hf:/nowhere", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("labeler: error:") and re.search(message, err), err
    assert _snapshot(tmp_path) == before and not out.exists()


@pytest.mark.parametrize(
    ("storage_options", "named"),
    [
        ("{key: AKIAEXAMPLE}", "source.storage_options.key"),
        ("{client_kwargs: {aws_session_token: AKIAEXAMPLE}}", "source.storage_options.client_kwargs.aws_session_token"),
    ],
)
def test_run_refuses_credentials_in_its_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], storage_options: str, named: str
) -> None:
    exemplars = GOOD(tmp_path)
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(f"out: {out}\nsource: {{exemplars: {exemplars}, storage_options: {storage_options}}}\n")
    before = _snapshot(tmp_path)
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{named}: credentials are refused in a run config" in err and "AWS_ACCESS_KEY_ID" in err
    assert "AKIAEXAMPLE" not in err
    assert _snapshot(tmp_path) == before and not out.exists()


def test_run_refuses_a_jsonl_with_a_wrong_type_before_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exemplars = _jsonl([*ROWS[:3], {**ROWS[3], "activation": "0.0"}])(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--exemplars", str(exemplars), "--out", str(out), "--set", "engine=noop"]) == 2
    assert "e.jsonl, line 4, column 'activation': '0.0' is not a number" in capsys.readouterr().err
    assert not out.exists()
