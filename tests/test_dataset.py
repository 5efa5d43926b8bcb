"""Reading runs: committed parts only, exemplars, a run folder of the last release, and schema versions refused."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from label_runs import records, run_info, write_run

from labeler.cli import main
from labeler.records.labels import LABEL_SCHEMA, SCHEMA_VERSION, SchemaVersionError, to_table
from labeler.store.dataset import DatasetError, committed_parts, read_runs


def test_every_row_carries_the_run_and_the_schema_is_complete(tmp_path: Path) -> None:
    recs = write_run(str(tmp_path / "run"), "run-a", n=25, chunk_size=10)
    data = read_runs([str(tmp_path / "run")])
    assert data.labels.schema.equals(LABEL_SCHEMA, check_metadata=False)
    assert data.labels.num_rows == 25
    rows = data.labels.to_pylist()
    assert {r["run_id"] for r in rows} == {"run-a"} and {r["hook_point"] for r in rows} == {"blocks.6.hook_resid_pre"}
    assert {r["schema_version"] for r in rows} == {SCHEMA_VERSION}
    assert sorted(r["feature"] for r in rows) == [r.feature for r in recs]
    assert {r["status"] for r in rows} == {"labelled", "dead", "failed"}
    assert str(rows[0]["started_at"]) == "2026-11-21 05:00:00+00:00"
    assert data.exemplars is not None and data.exemplars.num_rows == 25 * 4
    assert set(data.exemplars.column("run_id").to_pylist()) == {"run-a"}


def test_only_committed_parts_are_read(tmp_path: Path) -> None:
    """A part being written is a hidden temporary (linked into place whole when committed): never read."""
    run = tmp_path / "run"
    write_run(str(run), "run-a", n=30, chunk_size=10, with_exemplars=False)
    (run / "labels" / "part-00000001.parquet").rename(run / "labels" / ".part-00000001.parquet.0a1b.partial")
    (run / "labels" / "notes.txt").write_text("not a part")
    names = [Path(p).name for p in committed_parts(str(run))]
    assert names == ["part-00000000.parquet", "part-00000002.parquet"]
    features = sorted(read_runs([str(run)]).labels.column("feature").to_pylist())
    assert features == [*range(0, 10), *range(20, 30)]


def test_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"is not a labeler run: it has no labels/ folder and no manifest\.json"):
        read_runs([str(tmp_path)])


def write_version(folder: Path, version: int) -> None:
    """A one-row part as another labeler version would write it: its own columns and schema_version."""
    (folder / "labels").mkdir(parents=True)
    columns = {"schema_version": pa.array([version], pa.int32()), "feature": [0], "status": ["labelled"]}
    if version > SCHEMA_VERSION:
        columns["a_future_column"] = [1.0]
    pq.write_table(pa.table(columns), folder / "labels" / "part-00000.parquet")


@pytest.mark.parametrize(("version", "says"), [(3, "written by an older labeler"), (5, "written by a newer labeler")])
def test_other_schema_versions_are_refused_with_a_clear_message(
    tmp_path: Path, version: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_version(tmp_path / "run", version)
    with pytest.raises(SchemaVersionError, match=f"schema version {version}, but this labeler reads only version 4"):
        read_runs([str(tmp_path / "run")])
    code = main(["query", "--data", str(tmp_path / "run"), "SELECT count(*) FROM labels"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("labeler: error: ") and says in err and "Traceback" not in err


@pytest.mark.slow
def test_old_version_through_the_command_line_has_no_traceback(tmp_path: Path) -> None:
    write_version(tmp_path / "run", 1)
    done = subprocess.run(
        [sys.executable, "-m", "labeler.cli", "report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "label schema version 1, but this labeler reads only version 4" in done.stderr
    assert not (tmp_path / "r.html").exists()


THREADS_AFTER_READING = """
import os, sys
import fsspec
import pyarrow.parquet as pq
from labeler.records.parquet import read_parquet
fs = fsspec.filesystem("file")
before = len(os.listdir("/proc/self/task"))
if sys.argv[2] == "read_parquet":
    read_parquet(fs, sys.argv[1])
else:
    with fs.open(sys.argv[1], "rb") as f:
        pq.read_table(f)
print(len(os.listdir("/proc/self/task")) - before)
"""


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="counts threads in /proc")
def test_reading_a_part_starts_no_arrow_thread_that_could_outlive_the_process(tmp_path: Path) -> None:
    """pq.read_table on an fsspec file leaves Arrow pool threads that may release the file's Python buffer
    during interpreter shutdown and abort the process (exit 134, seen in CI); read_parquet starts none."""
    write_version(tmp_path / "run", 1)
    part = str(tmp_path / "run" / "labels" / "part-00000.parquet")

    def new_threads(how: str, exits: set[int]) -> int:
        done = subprocess.run([sys.executable, "-c", THREADS_AFTER_READING, part, how], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode in exits, (done.returncode, done.stderr[-2000:])
        return int(done.stdout)

    # The reference: the way that could abort starts pool threads, and now and then it does abort at exit
    # (SIGABRT after its count is printed), which is the failure read_parquet exists to avoid.
    assert new_threads("pq.read_table", exits={0, -signal.SIGABRT}) > 0
    assert new_threads("read_parquet", exits={0}) == 0


def test_a_part_with_wrong_columns_is_named(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    table = to_table(records(3, 0), run_info("r")).drop_columns(["heldout_f1", "confidence"])
    pq.write_table(table, tmp_path / "labels" / "part-00000.parquet")
    with pytest.raises(
        SchemaVersionError, match=r"part-00000.parquet claims schema version 4.*missing \['heldout_f1', 'confidence'\]"
    ):
        read_runs([str(tmp_path)])


@pytest.mark.parametrize(
    ("pointer", "says"),
    [("/moved-away/exemplars", "which is not found"), ("moved-away/exemplars", "relative to the folder")],
)
def test_exemplars_named_by_the_manifest_but_missing_leave_the_labels_readable(
    tmp_path: Path, pointer: str, says: str
) -> None:
    url = str(tmp_path / "run")
    write_run(url, "r1", n=10, with_exemplars=False, exemplars_at=pointer)
    with pytest.warns(UserWarning, match=f"'{pointer}'.*{says}"):
        data = read_runs([url])
    assert data.labels.num_rows == 10 and data.exemplars is None


def test_a_run_that_has_committed_no_part_yet_reads_as_no_labels(tmp_path: Path) -> None:
    from servers import exemplar_parts

    from labeler.run.loading import load_config
    from labeler.run.service import prepare

    exemplars = exemplar_parts(tmp_path / "ex", 6, rows=4)
    prepare(load_config(None, {"out": str(tmp_path / "run"), "engine": "noop", "source.exemplars": str(exemplars)}))
    data = read_runs([str(tmp_path / "run")])
    assert data.labels.num_rows == 0 and data.labels.schema.equals(LABEL_SCHEMA, check_metadata=False)
    assert data.exemplars is not None and data.exemplars.num_rows == 6 * 4
    assert len(set(data.exemplars.column("run_id").to_pylist())) == 1
