"""The exactly-once part sink on a local folder and on a real S3 protocol server (moto_server, 127.0.0.1)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from servers import MotoS3

from labeler.run.sink import PartSink, SinkConfig


def _table(index: int, note: str = "") -> pa.Table:
    return pa.table({"feature": [index * 10 + i for i in range(10)], "note": [note] * 10})


def test_local_commit_is_create_only_and_readers_see_only_parts(tmp_path: Path) -> None:
    sink = PartSink(str(tmp_path / "run"))
    assert sink.committed() == set()
    assert sink.commit(3, _table(3, "first"))
    assert not sink.commit(3, _table(3, "second"))  # a later attempt never rewrites a committed part
    assert sink.commit(0, _table(0))
    assert sink.committed() == {0, 3}
    assert sink.read_part(3).column("note")[0].as_py() == "first"
    leftovers = [p.name for p in (tmp_path / "run" / "labels").iterdir() if not p.name.startswith("part-")]
    assert leftovers == []
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/run/labels/*.parquet')").fetchall()
    assert count == [(20,)]


def test_manifest_is_written_once(tmp_path: Path) -> None:
    sink = PartSink(f"file://{tmp_path}/run")
    assert sink.read_manifest() is None
    assert sink.write_manifest({"run": 1})
    assert not sink.write_manifest({"run": 2})
    assert sink.read_manifest() == {"run": 1}


def test_concurrent_commits_of_one_chunk_have_one_winner(tmp_path: Path) -> None:
    sink = PartSink(str(tmp_path / "run"))
    results: list[bool] = []
    threads = [threading.Thread(target=lambda i=i: results.append(sink.commit(7, _table(7, str(i))))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


@pytest.mark.slow
def test_s3_commit_is_create_only(moto: MotoS3) -> None:
    sink = PartSink("s3://runs/r1", SinkConfig(storage_options=moto.storage_options()))
    assert sink.commit(1, _table(1, "first"))
    assert not sink.commit(1, _table(1, "second"))
    assert sink.commit(2, _table(2))
    assert sink.committed() == {1, 2}
    assert sink.read_part(1).column("note")[0].as_py() == "first"
    assert sink.write_manifest({"a": 1}) and not sink.write_manifest({"a": 2})


@pytest.mark.slow
def test_s3_commits_survive_a_server_stop_and_restart(moto: MotoS3) -> None:
    sink = PartSink(
        "s3://runs/r2",
        SinkConfig(storage_options=moto.storage_options(), retries=30, backoff_seconds=0.1, max_backoff_seconds=1.0),
    )
    assert sink.commit(0, _table(0))
    moto.stop()
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(3)
        moto.start(replay=True)
        restarted.set()

    thread = threading.Thread(target=restart)
    thread.start()
    assert sink.commit(1, _table(1))  # retried with backoff while the server is down
    thread.join()
    assert restarted.is_set()
    assert sink.committed() == {0, 1}
    assert not sink.commit(0, _table(0, "again"))


@pytest.mark.slow
def test_retries_are_bounded_and_say_what_failed(tmp_path: Path) -> None:
    sink = PartSink(
        "s3://runs/r3",
        SinkConfig(
            storage_options={
                "endpoint_url": "http://127.0.0.1:9",
                "key": "k",
                "secret": "s",
                "skip_instance_cache": True,
            },
            retries=2,
            backoff_seconds=0.01,
            max_backoff_seconds=0.01,
        ),
    )
    with pytest.raises(OSError, match="commit part 4 at s3://runs/r3 failed 2 times"):
        sink.commit(4, _table(4))
