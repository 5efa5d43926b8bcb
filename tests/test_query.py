"""`labeler query`: SQL over runs in a local folder and in a real S3 protocol server (moto, on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from label_runs import write_run

from labeler.cli import main

MOTO_SERVER = Path(sys.executable).with_name("moto_server")


def query(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["query", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_query_a_local_run_in_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = write_run(str(tmp_path / "run"), "run-a", n=30)
    sql = "SELECT status, count(*) AS n FROM labels GROUP BY status ORDER BY status"
    expected = {s: sum(r.status == s for r in recs) for s in ("dead", "failed", "labelled")}

    code, out, _ = query(["--data", str(tmp_path / "run"), sql, "--format", "json"], capsys)
    assert code == 0 and {row["status"]: row["n"] for row in json.loads(out)} == expected

    code, out, _ = query(["--data", str(tmp_path / "run"), sql, "--format", "csv"], capsys)
    assert out.splitlines() == ["status,n", *[f"{s},{n}" for s, n in expected.items()]]

    code, out, _ = query(["--data", str(tmp_path / "run"), sql], capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["status", "n"] and lines[2].split() == ["dead", str(expected["dead"])]
    assert lines[-1] == "(3 rows)"


def test_nested_columns_and_exemplars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(str(tmp_path / "run"), "run-a", n=8)
    sql = (
        "SELECT l.feature, l.label, l.top_tokens[1][1].token AS top, max(e.activation) AS peak "
        "FROM labels l JOIN exemplars e USING (run_id, feature) WHERE l.status = 'labelled' "
        "GROUP BY ALL ORDER BY l.feature LIMIT 2"
    )
    code, out, err = query(["--data", str(tmp_path / "run"), sql, "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out) == [
        {"feature": 0, "label": "animal", "top": "animal", "peak": 3.0},
        {"feature": 1, "label": "color", "top": "color", "peak": 3.0},
    ]


def two_runs(tmp_path: Path, n: int) -> list[str]:
    """Runs run-a and run-b of the same n features, labels shifted by one word; the --data arguments for both."""
    write_run(str(tmp_path / "a"), "run-a", n=n, seed=0)
    write_run(str(tmp_path / "b"), "run-b", n=n, seed=1)
    return ["--data", str(tmp_path / "a"), "--data", str(tmp_path / "b")]


def test_join_across_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs of the same SAE, labels shifted by one word: compare them feature by feature."""
    data = two_runs(tmp_path, 20)
    sql = (
        "SELECT a.feature, a.label AS label_a, b.label AS label_b, b.heldout_auroc - a.heldout_auroc AS gain "
        "FROM labels a JOIN labels b ON a.feature = b.feature AND a.run_id = 'run-a' AND b.run_id = 'run-b' "
        "WHERE a.status = 'labelled' AND b.status = 'labelled' ORDER BY a.feature"
    )
    code, out, err = query([*data, sql, "--format", "json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["feature"] for r in rows] == [f for f in range(20) if f % 7 != 6 and f % 11 != 10]
    assert rows[0]["label_a"] == "animal" and rows[0]["label_b"] == "color"
    assert all(isinstance(r["gain"], float) for r in rows)


def test_columns_of_the_same_name_are_all_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`SELECT a.label, b.label` without aliases: DuckDB names both columns label; none is lost or swapped."""
    sql = (
        "SELECT a.feature, a.label, b.label FROM labels a JOIN labels b ON a.feature = b.feature "
        "AND a.run_id = 'run-a' AND b.run_id = 'run-b' WHERE a.feature = 0"
    )
    data = [*two_runs(tmp_path, 3), sql]
    code, out, err = query([*data, "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out) == [{"feature": 0, "label": "animal", "label_2": "color"}]
    code, out, err = query([*data, "--format", "csv"], capsys)
    assert out.splitlines() == ["feature,label,label_2", "0,animal,color"]
    code, out, err = query(data, capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["feature", "label", "label"] and lines[2].split() == ["0", "animal", "color"]


def test_a_run_of_jsonl_exemplars_named_relatively_is_queried_from_anywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`labeler run` on a local JSONL named relative to the working folder; queried from another folder."""
    from labeler.run.loading import load_config
    from labeler.run.service import prepare
    from labeler.run.worker import ChunkWorker

    started_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    started_in.mkdir()
    elsewhere.mkdir()
    rows = [
        {"feature": f, "context": f"a b c{i}", "target": "b", "activation": float(i)}
        for f in range(3)
        for i in range(4)
    ]
    (started_in / "ex.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.chdir(started_in)
    config = load_config(
        None, {"out": "run", "engine": "noop", "source.exemplars": "ex.jsonl", "scheduler.features_per_chunk": 2}
    )
    run = prepare(config)
    ChunkWorker(run.spec(), run.sink).run(run.plan.chunk(0))  # features 0 and 1 committed
    monkeypatch.chdir(elsewhere)
    sql = (
        "SELECT e.feature, count(*) AS n, sum(e.activation) AS total, any_value(l.status) AS status FROM exemplars e "
        "LEFT JOIN labels l USING (run_id, feature) GROUP BY e.feature ORDER BY e.feature"
    )
    code, out, err = query(["--data", str(started_in / "run"), sql, "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out) == [
        {"feature": 0, "n": 4, "total": 6.0, "status": "skipped"},
        {"feature": 1, "n": 4, "total": 6.0, "status": "skipped"},
        {"feature": 2, "n": 4, "total": 6.0, "status": None},
    ]


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("SELEC feature FROM labels", "syntax error"),
        ("SELECT nope FROM labels", "nope"),
        ("SELECT * FROM exemplars", "exemplars"),
    ],
)
def test_bad_sql_is_a_clear_error_with_exit_status_2(
    tmp_path: Path, sql: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(str(tmp_path / "run"), "run-a", n=5, with_exemplars=False)
    code, out, err = query(["--data", str(tmp_path / "run"), sql], capsys)
    assert code == 2 and out == ""
    assert err.startswith("labeler: error: the SQL statement failed:") and says in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("COPY (SELECT * FROM labels) TO '{tmp}/out.csv'", "Cannot access file"),
        ("COPY labels TO '{tmp}/out.parquet' (FORMAT parquet)", "Cannot access file"),
        ("EXPORT DATABASE '{tmp}/out'", "Cannot access"),
        ("SELECT * FROM read_csv('{tmp}/secret.csv')", "Cannot access file"),
        ("SELECT * FROM read_text('{tmp}/secret.csv')", "Cannot access file"),
        ("SELECT * FROM read_parquet('s3://bucket/x.parquet')", "Cannot access file"),
        ("ATTACH '{tmp}/out.db' AS db", "Cannot access file"),
        ("INSTALL httpfs", "disabled by configuration"),
        ("LOAD httpfs", "disabled through configuration"),
        ("SET enable_external_access = true", "configuration has been locked"),
        ("SET threads = 1", "configuration has been locked"),
        ("RESET lock_configuration", "configuration has been locked"),
    ],
)
def test_statements_that_reach_past_the_tables_are_refused(
    tmp_path: Path, sql: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files, URLs, databases, extensions and settings are out of reach: exit 2, DuckDB's reason, nothing written."""
    write_run(str(tmp_path / "run"), "run-a", n=5)
    (tmp_path / "secret.csv").write_text("user,password\nroot,hunter2\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = query(["--data", str(tmp_path / "run"), sql.format(tmp=tmp_path)], capsys)
    assert code == 2 and out == "" and "hunter2" not in err
    assert err.startswith("labeler: error: not allowed in labeler query:") and says in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_every_query_of_the_readme_and_the_docs_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The `labeler query` lines of the README and docs/commands.md, run over two local runs (the s3:// run made
    local)."""
    root = Path(__file__).resolve().parents[1]
    commands = []
    for page in (root / "README.md", root / "docs" / "commands.md"):
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            chunks = re.split(r"^(?=labeler |#)", block.replace("\\\n", " "), flags=re.M)
            commands += [shlex.split(c, comments=True) for c in chunks if c.startswith("labeler query --data ")]
    assert len(commands) >= 4, "the README's and docs' labeler query examples were not found"
    write_run(str(tmp_path / "run1"), "run-a", n=8, seed=0)
    write_run(str(tmp_path / "a"), "run-b", n=8, seed=1)
    places = {"run1/": str(tmp_path / "run1"), "s3://bucket/runs/a": str(tmp_path / "a")}
    for command in commands:
        args = [places.get(arg, arg) for arg in command[2:]]
        code, out, err = query(args, capsys)
        assert code == 0 and err == "", (command, err)
        assert "(0 rows)" not in out and out.strip() not in ("", "[]"), (command, out)


def test_the_same_run_given_twice_is_read_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = write_run(str(tmp_path / "run"), "run-a", n=12)
    sql = "SELECT count(*) AS n, count(DISTINCT feature) AS features FROM labels"
    run = str(tmp_path / "run")
    code, out, err = query(["--data", run, "--data", run, "--data", run + "/", sql, "--format", "json"], capsys)
    assert code == 0, err
    assert json.loads(out) == [{"n": len(recs), "features": len(recs)}]
    sql = "SELECT count(*) AS n FROM exemplars"
    once = query(["--data", run, sql, "--format", "json"], capsys)[1]
    assert query(["--data", run, "--data", run, sql, "--format", "json"], capsys)[1] == once


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A real moto S3 server on 127.0.0.1, on a free port; stopped after the module."""
    if not MOTO_SERVER.exists():
        pytest.skip(f"moto_server not installed next to {sys.executable}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS variables a user sets, pointing at the test server; a fresh bucket per test."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return env


def test_query_runs_in_s3_joined_with_a_local_run(
    s3_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import s3fs

    s3fs.S3FileSystem().mkdir("labels-bucket")
    write_run("s3://labels-bucket/runs/a", "run-a", n=20, seed=0)
    write_run(str(tmp_path / "b"), "run-b", n=20, seed=1)
    s3fs.S3FileSystem().rm("labels-bucket/runs/a/labels/part-00000001.parquet")  # chunk 1 not committed yet
    sql = (
        "SELECT run_id, count(DISTINCT feature) AS n, max(feature) AS last, count(e.context) AS exemplar_rows "
        "FROM labels LEFT JOIN exemplars e USING (run_id, feature) GROUP BY run_id ORDER BY run_id"
    )
    code, out, err = query(
        ["--data", "s3://labels-bucket/runs/a", "--data", str(tmp_path / "b"), sql, "--format", "json"], capsys
    )
    assert code == 0, err
    assert json.loads(out) == [
        {"run_id": "run-a", "n": 10, "last": 9, "exemplar_rows": 40},
        {"run_id": "run-b", "n": 20, "last": 19, "exemplar_rows": 80},
    ]


@pytest.mark.slow
def test_the_command_reads_s3_with_the_usual_aws_variables(s3_env: dict[str, str], tmp_path: Path) -> None:
    """As a user runs it: a separate process, S3 settings from the environment only."""
    import s3fs

    s3fs.S3FileSystem().mkdir("cli-bucket")
    recs = write_run("s3://cli-bucket/run", "run-s3", n=12, with_exemplars=False)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "labeler.cli",
            "query",
            "--data",
            "s3://cli-bucket/run",
            "SELECT feature, label FROM labels WHERE status = 'labelled' ORDER BY feature",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **s3_env, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr
    expected = [f"{r.feature},{r.label}" for r in recs if r.status == "labelled"]
    assert done.stdout.splitlines() == ["feature,label", *expected]
    done = subprocess.run(
        [sys.executable, "-m", "labeler.cli", "query", "--data", "s3://cli-bucket/missing", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **s3_env, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 2 and "s3://cli-bucket/missing is not a labeler run" in done.stderr
