"""labeler/harvest/neuronpedia_cache.py: an export in Neuronpedia's layout, imported, then labelled."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from import_runs import label_import

from labeler.cli import main
from labeler.harvest.exemplar_parts import ImportSourceError
from labeler.harvest.neuronpedia_cache import NeuronpediaImportConfig, import_neuronpedia

SENTENCES = [
    [" the", " dog", " ran", " near", " a", " cat"],
    [" a", " red", " apple", " and", " green", " bread"],
    [" the", " hammer", " saw", " the", " drill", " today"],
    [" a", " big", " horse", " ate", " the", " rice"],
    [" the", " small", " bird", " saw", " a", " fish"],
]
FIRES_NEVER, LISTED_ONLY = 2, 3


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))


def _activation(feature: int, k: int) -> dict[str, Any]:
    """One cached context as Neuronpedia's export-data.py writes an Activation row."""
    tokens = SENTENCES[k]
    values = [0.0] * len(tokens)
    if feature != FIRES_NEVER:
        values[(feature + k) % len(tokens)] = 0.5 + k
        values[(feature + k + 1) % len(tokens)] = 0.25
    top = int(np.argmax(values))
    return {
        "id": f"act-{feature}-{k}",
        "modelId": "tiny-gpt2",
        "layer": "0-res-test",
        "index": str(feature),
        "creatorId": "creator",
        "dataSource": None,
        "tokens": tokens,
        "maxValue": max(values),
        "minValue": min(values),
        "values": values,
        "maxValueTokenIndex": top,
        "dfaValues": [],
        "dfaMaxValue": None,
        "dfaTargetIndex": None,
        "binContains": None if k < 3 else 0.1,
        "binMin": None if k < 3 else 0.0,
        "binMax": None if k < 3 else 10.0,
    }


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """exports/tiny-gpt2/0-res-test/: features 0..2 with five contexts each in two activation files (feature 2 never
    fires), feature 3 listed in features/ without any context."""
    folder = tmp_path / "exports" / "tiny-gpt2" / "0-res-test"
    _write(folder / "activations" / "batch-0.jsonl.gz", [_activation(f, k) for f in (0, 1) for k in range(5)])
    _write(folder / "activations" / "batch-1.jsonl.gz", [_activation(FIRES_NEVER, k) for k in range(5)])
    features = [{"modelId": "tiny-gpt2", "layer": "0-res-test", "index": str(f), "frac_nonzero": 0.01 * (f + 1),
                 "maxActApprox": 4.5} for f in range(4)]  # fmt: skip
    _write(folder / "features" / "batch-0.jsonl.gz", features)
    return folder


@pytest.mark.slow
def test_imported_rows_are_the_exports_own_values_and_the_run_labels_them(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    assert main(["import", "neuronpedia", str(export), "--out", str(out)]) == 0
    rows = pq.read_table(out / "exemplars").to_pylist()
    assert {r["feature"] for r in rows} == {0, 1}
    for row in rows:
        record = _activation(row["feature"], row["window"] % 5)
        assert row["context"] == "".join(record["tokens"])
        assert row["target"] == record["tokens"][row["position"]].strip()
        assert row["activation"] == record["values"][row["position"]]
        if row["sampling"] == "inactive":
            assert row["activation"] == 0.0
        else:
            assert row["position"] == record["maxValueTokenIndex"] and row["activation"] == record["maxValue"]
            assert row["sampling"] == ("top" if record["binMin"] is None else "quantile")
    assert sorted(r["sampling"] for r in rows if r["feature"] == 0) == ["inactive"] * 5 + ["quantile"] * 2 + ["top"] * 3
    features = {r["feature"]: r for r in pq.read_table(out / "features.parquet").to_pylist()}
    assert [features[f]["status"] for f in range(4)] == ["alive", "alive", "dead", "dead"]
    assert [features[f]["frequency"] for f in range(4)] == [0.01, 0.02, 0.03, 0.04]
    assert features[0]["max_activation"] == 4.5 and features[0]["active_tokens"] is None
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["model"], manifest["hook"], manifest["windows"]) == ("tiny-gpt2", "0-res-test", 15)

    labels = label_import(out, tmp_path / "run")
    assert [labels[f]["status"] for f in range(4)] == ["labelled", "labelled", "dead", "dead"]
    assert labels[0]["label"] and labels[1]["activation_frequency"] == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: None, "not found"),
        (lambda folder: folder.mkdir(parents=True), "expected activations/batch-N.jsonl.gz"),
        (
            lambda folder: _write(folder / "activations" / "batch-0.jsonl.gz", [{"index": "0", "tokens": [" a"]}]),
            "missing ['values']",
        ),
        (
            lambda folder: _write(
                folder / "activations" / "batch-0.jsonl.gz", [{"index": "0", "tokens": [" a"], "values": [1.0, 2.0]}]
            ),
            "one value per token (found 1 tokens, 2 values)",
        ),
    ],
)
def test_bad_input_is_refused_with_a_reason(damage: Any, message: str, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    damage(folder)
    with pytest.raises(ImportSourceError) as err:
        import_neuronpedia(NeuronpediaImportConfig(export=str(folder), out=str(tmp_path / "out")))
    assert message in str(err.value)


def test_an_out_folder_holding_exemplars_is_refused(export: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "imported"
    assert main(["import", "neuronpedia", str(export), "--out", str(out)]) == 0
    assert main(["import", "neuronpedia", str(export), "--out", str(out)]) == 2
    assert "already holds exemplars" in capsys.readouterr().err


def test_a_failed_import_removes_what_it_wrote_so_the_same_command_runs_again(
    export: Path, tmp_path: Path, capsys: Any
) -> None:
    """The second activation file is damaged: the import stops there, naming the file and line, exit 2, and takes
    back the exemplars part it had written (and the folder it made); fixed, the same command imports."""
    good = (export / "activations" / "batch-1.jsonl.gz").read_bytes()
    _write(export / "activations" / "batch-1.jsonl.gz", [{"index": "2", "tokens": [" a"], "values": [1.0, 2.0]}])
    out = tmp_path / "imported"
    argv = ["import", "neuronpedia", str(export), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "batch-1.jsonl.gz:1" in err and "one value per token (found 1 tokens, 2 values)" in err, err
    assert not out.exists()
    (export / "activations" / "batch-1.jsonl.gz").write_bytes(good)
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["exemplars", "features.parquet", "manifest.json"]


def test_a_failed_import_into_an_existing_folder_keeps_what_was_there(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    _write(export / "activations" / "batch-1.jsonl.gz", [{"index": "2", "tokens": [" a"], "values": [1.0, 2.0]}])
    assert main(["import", "neuronpedia", str(export), "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine\n"
