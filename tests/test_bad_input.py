# ruff: noqa: E501
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


def _not_parquet(folder: Path) -> Path:
    (folder / "e.parquet").write_text("not Parquet")
    return folder / "e.parquet"


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
    ("not Parquet", _not_parquet, [], r"cannot read .*e.parquet: .*Parquet magic bytes not found"),
    ("lr inf", GOOD, ["--lr", "inf"], "lr must be a finite number, got inf"),
    ("lr nan", GOOD, ["--lr", "nan"], "lr must be a finite number, got nan"),
    ("c-kl inf", GOOD, ["--c-kl", "inf"], "c_kl must be a finite number, got inf"),
    ("active-threshold nan", GOOD, ["--active-threshold", "nan"], "active_threshold must be a finite number"),
    (
        "NaN activation",
        _jsonl([*ROWS[:3], {**ROWS[3], "activation": float("nan")}]),
        [],
        r"e.jsonl: column 'activation' has 1 NaN or infinite value\(s\) \(first at line 4\)",
    ),
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


def test_label_refuses_a_url_of_an_unknown_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exemplars = GOOD(tmp_path)
    for given in (
        ["--exemplars", "nosuch://bucket/e.parquet", "--out", str(tmp_path / "out")],
        ["--exemplars", str(exemplars), "--out", "nosuch://bucket/run"],
    ):
        assert main(["label", *given, "--discriminator", "hf:/nowhere"]) == 2
        assert "labeler: error: cannot open nosuch://bucket/" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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


# Every command, any input: (argv, message), given a folder holding the exemplars (e.jsonl) and earlier outputs.
HARVEST_MANIFEST = {"sae": "s", "model": "m", "windows": 3, "exemplar_rows": 9, "features": 1}
RUN_MANIFEST = {"run_id": "r", "config": {}, "plan": {}}


def _folder(tmp: Path, name: str, files: dict[str, str]) -> str:
    folder = tmp / name
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    return str(folder)


def _label(exemplars: str, out: str, *flags: str) -> list[str]:
    return ["label", "--exemplars", exemplars, "--discriminator", "hf:/nowhere", "--out", out, *flags]


def _started_run(tmp: Path) -> str:
    """A finished noop run of e.jsonl at tmp/run, whose exemplars are then rewritten with the same feature ids."""
    out = str(tmp / "run")
    assert main(_label(str(tmp / "e.jsonl"), out, "--set", "engine=noop", "--no-progress")) == 0
    _jsonl([{**row, "context": row["context"] + " again"} for row in ROWS])(tmp)
    return out


HARVEST = {"manifest.json": json.dumps(HARVEST_MANIFEST), "exemplars/part-0.parquet": "x"}
COMMAND_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("label over a harvest", lambda t: _label(f"{t}/e.jsonl", _folder(t, "h", HARVEST)), r"h/manifest.json is not a labelling run's manifest \(a harvest's"),
    ("run over a harvest", lambda t: ["run", "--exemplars", f"{t}/e.jsonl", "--out", _folder(t, "h", HARVEST), "--set", "engine=noop"], r"h/manifest.json is not a labelling run's manifest"),
    ("label over other files", lambda t: _label(f"{t}/e.jsonl", _folder(t, "mine", {"notes.txt": "mine"})), r"mine is not empty \(it holds notes.txt\)"),
    ("label over a run", lambda t: _label(f"{t}/e.jsonl", _folder(t, "r", {"manifest.json": json.dumps(RUN_MANIFEST)})), r"r already holds a run \(manifest.json\); continue it with `labeler run --resume"),
    ("resume, no manifest", lambda t: _label(f"{t}/e.jsonl", _folder(t, "r", {"x.txt": ""}), "--resume"), r"nothing to resume at .*r: it has no manifest.json"),
    ("resume, corrupt manifest", lambda t: ["run", "--resume", _folder(t, "r", {"manifest.json": "{not json"})], r"r/manifest.json is not valid JSON"),
    ("resume, manifest a list", lambda t: ["run", "--resume", _folder(t, "r", {"manifest.json": "[1]"})], r"r/manifest.json holds a JSON list, not an object"),
    ("resume a harvest", lambda t: ["run", "--resume", _folder(t, "h", HARVEST)], r"nothing to resume at .*h: .*h/manifest.json is not a labelling run's manifest"),
    ("resume, exemplars changed", lambda t: ["run", "--resume", _started_run(t)], r"exemplars of .*run changed since the run started \(the same feature ids, other content\): changed: .*e.jsonl \(bytes \d+ -> \d+, sha256 differs\)"),
    ("report over a file", lambda t: ["report", f"{t}/r", "--out", f"{t}/e.jsonl"], r"--out .*e.jsonl already exists; choose a new --out, or --force"),
    ("report --force over input", lambda t: ["report", f"{t}/r", "--out", f"{t}/e.jsonl", "--force"], r"e.jsonl is not a report `labeler report` wrote"),
    ("report over a folder", lambda t: ["report", f"{t}/r", "--out", _folder(t, "d", {"a": ""})], r"--out .*d is a folder"),
    ("report --top 0", lambda t: ["report", f"{t}/r", "--top", "0"], r"--top must be at least 1, got 0"),
    ("harvest over a harvest", lambda t: ["harvest", "--sae", "s", "--model", "m", "--corpus", "c", "--out", _folder(t, "h", HARVEST)], r"h already holds manifest.json, exemplars"),
    ("harvest over features", lambda t: ["harvest", "--sae", "s", "--model", "m", "--corpus", "c", "--out", _folder(t, "h", {"features.parquet": "x"})], r"h already holds features.parquet"),
    ("harvest --top -1", lambda t: ["harvest", "--sae", "s", "--model", "m", "--corpus", "c", "--out", f"{t}/h", "--top", "-1"], r"harvest.sampling: top_examples must be >= 0, got -1"),
    ("harvest --demo --quantiles 0", lambda t: ["harvest", "--demo", f"{t}/cache", "--out", f"{t}/h", "--quantiles", "0"], r"harvest.sampling: quantiles must be at least 1, got 0"),
    ("import delphi-cache --reservoir -2", lambda t: ["import", "delphi-cache", f"{t}/cache", "--model", "m", "--out", f"{t}/i", "--reservoir", "-2"], r"sampling: reservoir must be >= 0, got -2"),
    ("metrics.port 99999", lambda t: _label(f"{t}/e.jsonl", f"{t}/out", "--set", "metrics.port=99999"), r"metrics.port must be a TCP port, 0 to 65535 .*got 99999"),
    ("workers.metrics_port -1", lambda t: ["run", "--exemplars", f"{t}/e.jsonl", "--out", f"{t}/out", "--set", "workers.metrics_port=-1"], r"workers.metrics_port must be a TCP port"),
    ("YAML tag in --set", lambda t: _label(f"{t}/e.jsonl", f"{t}/out", "--set", "label.optimiser.lr=!!python/object/apply:os.system [ls]"), r"--set 'label.optimiser.lr=!!python.*': the value is not plain YAML"),
    ("workers.count 0", lambda t: ["run", "--exemplars", f"{t}/e.jsonl", "--out", f"{t}/out", "--set", "workers.count=0"], r"workers.count must be at least 1, got 0"),
    ("--set without =", lambda t: _label(f"{t}/e.jsonl", f"{t}/out", "--set", "lr"), r"--set takes KEY=VALUE"),
    ("empty exemplar folder", lambda t: _label(_folder(t, "parts", {}) if (t / "parts").mkdir() is None else "", f"{t}/out"), r"parts holds no Parquet files"),
    ("JSON array as JSONL", lambda t: _label(_jsonl_array(t), f"{t}/out"), r"arr.jsonl, line 1: not a JSON object"),
    ("demo over a folder", lambda t: ["demo", "--out", _folder(t, "d", {"notes.txt": "mine"}), "--cache", f"{t}/cache"], r"--out: .*d is not empty \(it holds notes.txt\)"),
    ("s3 without credentials", lambda t: ["query", "--data", "s3://bucket/run", "SELECT 1"], r"cannot use s3://bucket/run \(endpoint http://127.0.0.1:\d+\): NoCredentialsError.*AWS_ACCESS_KEY_ID"),
    ("s3 dead endpoint", lambda t: _with_keys(["query", "--data", "s3://bucket/run", "SELECT 1"]), r"cannot use s3://bucket/run .*EndpointConnectionError.*check the endpoint"),
    ("query, corrupt manifest", lambda t: ["query", "--data", _folder(t, "r", {"manifest.json": "{not json", "labels/.keep": ""}), "SELECT 1"], r"r/manifest.json is not valid JSON \(.*\); a run writes its manifest once .*restore it"),
    ("report, corrupt manifest", lambda t: ["report", _folder(t, "r", {"manifest.json": "{not json"}), "--out", f"{t}/page.html"], r"r/manifest.json is not valid JSON"),
    ("query, manifest a list", lambda t: ["query", "--data", _folder(t, "r", {"manifest.json": "[1]"}), "SELECT 1"], r"r/manifest.json holds a JSON list, not an object"),
    ("score --judge nosuch:x", lambda t: ["score", _folder(t, "r", {"manifest.json": json.dumps(RUN_MANIFEST)}), "--judge", "nosuch:x", "--out", f"{t}/s"], r"--judge 'nosuch:x' is not a judge: give hf:MODEL_DIR .*minilm or embedding:MODEL_DIR"),
    ("score --out a file", lambda t: ["score", _folder(t, "r", {"manifest.json": json.dumps(RUN_MANIFEST)}), "--judge", "minilm", "--out", f"{t}/e.jsonl"], r"--out .*e.jsonl is a file, not a folder; give a new .parquet file or a folder"),
    ("score --out existing", lambda t: ["score", _folder(t, "r", {"manifest.json": json.dumps(RUN_MANIFEST), "s.parquet": "mine"}), "--judge", "minilm", "--out", f"{t}/r/s.parquet"], r"--out: .*r/s.parquet already exists; scores are never written over"),
    ("score --heldout-fraction not the run's", lambda t: ["score", _folder(t, "r", {"manifest.json": json.dumps({**RUN_MANIFEST, "config": {"label": {"heldout_fraction": 0.2}}})}), "--judge", "minilm", "--out", f"{t}/s", "--heldout-fraction", "0.5"], r"--heldout-fraction 0.5, but .*r was labelled with label.heldout_fraction 0.2 \(its manifest.json\).*leave out --heldout-fraction"),
]  # fmt: skip


def _jsonl_array(tmp: Path) -> str:
    (tmp / "arr.jsonl").write_text(json.dumps(ROWS) + "\n")
    return str(tmp / "arr.jsonl")


def _with_keys(argv: list[str]) -> list[str]:
    import os

    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = "testing", "testing"
    return argv


@pytest.fixture
def no_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 at a port nobody listens on, no credentials anywhere, one attempt per request."""
    import s3fs
    from servers import free_port

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for name, value in (("AWS_MAX_ATTEMPTS", "1"), ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize(("name", "argv", "message"), COMMAND_CASES, ids=[case[0] for case in COMMAND_CASES])
def test_every_command_refuses_bad_input_and_changes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_object_store: None,
    name: str,
    argv: Callable[[Path], list[str]],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # report's default --out lands here, and must not be written
    GOOD(tmp_path)
    args = argv(tmp_path)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search("^labeler: error: .*" + message, err, re.MULTILINE), err
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.html").exists()


def test_table_output_escapes_control_characters() -> None:
    from labeler.store.query import render

    table = pa.table({"context": ["red \x1b[31mALERT\x1b[0m\r\nnext"], "n": [1]})
    shown = render(table, "table")
    assert "\x1b" not in shown and "\r" not in shown and "\\x1b[31mALERT" in shown and "\\r\\n" in shown
    assert json.loads(render(table, "json"))[0]["context"] == "red \x1b[31mALERT\x1b[0m\r\nnext"  # kept as stored


def test_report_force_replaces_only_its_own_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labeler.store.report import REPORT_MARKER

    GOOD(tmp_path)
    run = _started_run(tmp_path)
    out = tmp_path / "report.html"
    assert main(["report", run, "--out", str(out)]) == 0
    first = out.read_text()
    assert REPORT_MARKER in first.splitlines()[1]
    assert main(["report", run, "--out", str(out)]) == 2  # no --force: kept
    assert main(["report", run, "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>\n" + REPORT_MARKER)


def test_gpu_workers_on_a_machine_without_a_gpu_are_refused_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from labeler.cli import labelling

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")

    def ray_started() -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(labelling, "_init_local_ray", ray_started)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    exemplars = GOOD(tmp_path)
    before = _snapshot(tmp_path)
    out = tmp_path / "out"
    assert (
        main(["run", "--exemplars", str(exemplars), "--out", str(out), "--num-gpus", "1", "--set", "engine=noop"]) == 2
    )
    err = capsys.readouterr().err
    assert "--num-gpus 1 (workers.num_gpus) asks for a GPU per worker, but this machine has none" in err, err
    assert "give --num-gpus 0 for CPU workers, or --address of a Ray cluster with GPUs" in err
    assert _snapshot(tmp_path) == before and not out.exists()
