"""`labeler export`: Neuronpedia's explanation export, checked field by field, and plain JSON lines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from label_runs import write_run

from labeler.cli import main
from labeler.store.dataset import read_runs
from labeler.store.export import ExportError, neuronpedia_explanations

# Neuronpedia's explanation export, written down from its exporter (hijohnnylin/neuronpedia,
# utils/neuronpedia-utils/neuronpedia_utils/export-data.py, export_explanations, and db_models/explanation.py):
# {modelId}/{layer}/explanations/batch-{n}.jsonl.gz, 1024 rows per batch, rows in feature order, these columns;
# `source` (= layer) is what Neuronpedia's Python client reads instead of `layer`.
DOCUMENTED = [
    ("id", str, False),
    ("modelId", str, False),
    ("layer", str, False),
    ("source", str, False),
    ("index", str, False),
    ("authorId", str, False),
    ("description", str, False),
    ("embedding", list, True),
    ("typeName", str, True),
    ("explanationModelName", str, True),
    ("umap_x", float, True),
    ("umap_y", float, True),
    ("umap_cluster", int, True),
    ("umap_log_feature_sparsity", float, True),
]


def read_batches(folder: Path) -> list[list[dict[str, object]]]:
    paths = sorted(folder.glob("batch-*.jsonl.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    return [[json.loads(line) for line in gzip.decompress(p.read_bytes()).decode().splitlines()] for p in paths]


def test_neuronpedia_export_matches_the_documented_format_field_by_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recs = write_run(str(tmp_path / "run"), "run-a", n=1500, chunk_size=500, with_exemplars=False)
    code = main(["export", "--data", str(tmp_path / "run"), "--format", "neuronpedia", "--out", str(tmp_path / "np")])
    assert code == 0, capsys.readouterr().err
    written = sorted(p.relative_to(tmp_path / "np").parts[:3] for p in (tmp_path / "np").rglob("*.gz"))
    # the explanations, and beside them their scores, two per label (test_explanation_scores_lie_beside_the_...)
    assert (
        written
        == [("gpt2-small", "6-res-jb", "explanation-scores")] * 3 + [("gpt2-small", "6-res-jb", "explanations")] * 2
    )
    batches = read_batches(tmp_path / "np" / "gpt2-small" / "6-res-jb" / "explanations")
    labelled = [r for r in recs if r.status == "labelled"]
    assert [len(b) for b in batches] == [1024, len(labelled) - 1024]
    rows = [row for batch in batches for row in batch]
    for row, record in zip(rows, labelled, strict=True):
        assert list(row) == [name for name, _, _ in DOCUMENTED]
        for name, kind, nullable in DOCUMENTED:
            assert isinstance(row[name], kind) or (nullable and row[name] is None), (name, row[name])
        assert row["modelId"] == "gpt2-small" and row["layer"] == row["source"] == "6-res-jb"
        assert row["index"] == str(record.feature) and row["description"] == record.label
        assert row["authorId"] == "labeler" and row["explanationModelName"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert row["typeName"] == "labeler-token-space-gd"
    assert [int(r["index"]) for r in rows] == sorted(int(r["index"]) for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_every_exported_row_loads_through_neuronpedias_own_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`Explanation.from_np_db_json` of PyPI `neuronpedia` (the interop extra) reads every row of the export."""
    from neuronpedia.np_explanation import Explanation

    recs = write_run(str(tmp_path / "run"), "run-a", n=1500, chunk_size=500, with_exemplars=False)
    flags = ["--model-id", "gemma-2-2b", "--source-id", "20-gemmascope-res-16k"]
    assert (
        main(["export", "--data", str(tmp_path / "run"), "--format", "neuronpedia", "--out", str(tmp_path), *flags])
        == 0
    )
    batches = read_batches(tmp_path / "gemma-2-2b" / "20-gemmascope-res-16k" / "explanations")
    loaded = [Explanation.from_np_db_json(row) for batch in batches for row in batch]
    labelled = [r for r in recs if r.status == "labelled"]
    assert len(batches) == 2 and len(loaded) == len(labelled)
    for explanation, record in zip(loaded, labelled, strict=True):
        assert (explanation.modelId, explanation.source) == ("gemma-2-2b", "20-gemmascope-res-16k")
        assert (explanation.index, explanation.text) == (record.feature, record.label)
        assert (explanation.method, explanation.explainer_model) == (
            "labeler-token-space-gd",
            "sentence-transformers/all-MiniLM-L6-v2",
        )


def test_neuronpedia_ids_and_source_options(tmp_path: Path) -> None:
    write_run(str(tmp_path / "run"), "run-a", n=10, with_exemplars=False)
    labels = read_runs([str(tmp_path / "run")]).labels
    rows = neuronpedia_explanations(labels, "me", model_id="gemma-2-2b", source_id="20-gemmascope-res-16k")
    assert {(r["modelId"], r["layer"], r["authorId"]) for r in rows} == {("gemma-2-2b", "20-gemmascope-res-16k", "me")}
    assert rows == neuronpedia_explanations(labels, "me", model_id="gemma-2-2b", source_id="20-gemmascope-res-16k")
    default = neuronpedia_explanations(labels, "me")[0]
    assert (default["modelId"], default["layer"]) == ("gpt2-small", "6-res-jb")  # the run's model and sae_id


def test_export_without_a_source_names_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa

    write_run(str(tmp_path / "run"), "run-a", n=3, with_exemplars=False)
    labels = read_runs([str(tmp_path / "run")]).labels
    labels = labels.set_column(labels.schema.get_field_index("sae_id"), "sae_id", pa.nulls(3, pa.string()))
    with pytest.raises(ExportError, match="pass --source-id"):
        neuronpedia_explanations(labels, "me")


def test_jsonl_export_has_every_row_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = write_run(str(tmp_path / "run"), "run-a", n=15, with_exemplars=False)
    out = tmp_path / "labels.jsonl"
    assert main(["export", "--data", str(tmp_path / "run"), "--format", "jsonl", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["feature"] for r in rows) == [r.feature for r in recs]
    assert rows[0]["started_at"] == "2026-11-21T05:00:00+00:00" and rows[0]["top_tokens"][0][0]["token"] == "animal"
    assert {r["status"] for r in rows} == {"labelled", "dead", "failed"}


@pytest.mark.parametrize(
    ("overrides", "flags", "says"),
    [
        ({"sae_id": "{tmp}/saes/my-sae"}, [], "run run-a's sae_id '{tmp}/saes/my-sae' is not a Neuronpedia id"),
        ({"model": "openai-community/gpt2"}, [], "run run-a's model 'openai-community/gpt2' is not a Neuronpedia id"),
        ({}, ["--source-id", ".."], "--source-id '..' is not a Neuronpedia id"),
        ({}, ["--model-id", "a\\b"], "--model-id 'a\\\\b' is not a Neuronpedia id"),
    ],
)
def test_a_model_or_source_that_is_not_one_folder_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: dict[str, str], flags: list[str], says: str
) -> None:
    """An SAE's path or a hub id would write outside --out or into nested folders; nothing is written."""
    from label_runs import records, run_info

    from labeler.records.labels import to_table
    from labeler.run.sink import PartSink

    run, out = str(tmp_path / "run"), tmp_path / "out"
    info = run_info("run-a", **{k: v.format(tmp=tmp_path) for k, v in overrides.items()})
    says = says.format(tmp=tmp_path)
    sink = PartSink(run)
    assert sink.write_manifest({"run_id": info.run_id}) and sink.commit(0, to_table(records(5, 0), info))
    code = main(["export", "--data", run, "--format", "neuronpedia", "--out", str(out), *flags])
    err = capsys.readouterr().err
    flag = "--model-id" if "model" in overrides or "--model-id" in flags else "--source-id"
    assert code == 2 and says in err and f"set it with {flag}" in err, err
    assert not list(tmp_path.rglob("*.gz"))


def test_an_export_never_overwrites_an_earlier_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Re-exporting a smaller run into the same folder would replace batch-0 and keep the big run's batch-1."""
    write_run(str(tmp_path / "big"), "big", n=1500, chunk_size=500, with_exemplars=False)
    write_run(str(tmp_path / "small"), "small", n=10, with_exemplars=False)
    np_out, jsonl_out = tmp_path / "np", tmp_path / "labels.jsonl"
    for fmt, out in (("neuronpedia", np_out), ("jsonl", jsonl_out)):
        assert main(["export", "--data", str(tmp_path / "big"), "--format", fmt, "--out", str(out)]) == 0
    folder = np_out / "gpt2-small" / "6-res-jb" / "explanations"
    before = {p: p.read_bytes() for p in folder.iterdir()}
    jsonl_before = jsonl_out.read_bytes()
    capsys.readouterr()

    assert main(["export", "--data", str(tmp_path / "small"), "--format", "neuronpedia", "--out", str(np_out)]) == 2
    err = capsys.readouterr().err
    assert f"{folder} already holds batch files" in err and "choose a new --out or remove that folder" in err
    assert {p: p.read_bytes() for p in folder.iterdir()} == before
    assert main(["export", "--data", str(tmp_path / "small"), "--format", "jsonl", "--out", str(jsonl_out)]) == 2
    assert f"{jsonl_out} already exists; choose a new --out or remove it" in capsys.readouterr().err
    assert jsonl_out.read_bytes() == jsonl_before


def test_explanation_scores_lie_beside_the_explanations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In the layout of Neuronpedia's ExplanationScore (apps/webapp/prisma/schema.prisma: value,
    explanationId, explanationScoreTypeName, explanationScoreModelName, jsonDetails, initiatedByUserId): every
    label's self-score, and its independent score where the score stage judged it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from labeler.store.export import neuronpedia_scores

    recs = write_run(str(tmp_path / "run"), "run-a", n=12, with_exemplars=False)
    labels = read_runs([str(tmp_path / "run")]).labels
    judged = pc.equal(labels.column("feature"), 0)
    labels = labels.set_column(
        labels.schema.get_field_index("independent_score"),
        "independent_score",
        pc.if_else(judged, pa.scalar(0.42), labels.column("independent_score")),
    )
    for name, value in (("independent_scorer", "embedding"), ("independent_judge", "minilm"), ("confidence", "low")):
        index = labels.schema.get_field_index(name)
        labels = labels.set_column(index, name, pc.if_else(judged, pa.scalar(value), labels.column(name)))
    explanations = {row["index"]: row["id"] for row in neuronpedia_explanations(labels, "me")}
    scores = neuronpedia_scores(labels, "me")
    labelled = [r for r in recs if r.status == "labelled"]
    assert len(scores) == 2 * len(labelled) + 1  # self-score and confidence of each, one independent score
    assert {s["explanationId"] for s in scores} == set(explanations.values())
    by_kind = {(s["index"], s["explanationScoreTypeName"]): s for s in scores}
    self_score = by_kind[("1", "labeler-heldout-auroc")]
    assert self_score["value"] == next(r.heldout_auroc for r in recs if r.feature == 1)
    minilm = "sentence-transformers/all-MiniLM-L6-v2"
    assert self_score["explanationScoreModelName"] == minilm and self_score["explanationId"] == explanations["1"]
    independent = by_kind[("0", "labeler-embedding")]
    assert (independent["value"], independent["explanationScoreModelName"]) == (0.42, minilm)
    assert json.loads(independent["jsonDetails"])["confidence"] == "low"
    confidence = by_kind[("1", "labeler-confidence")]
    one = next(r for r in recs if r.feature == 1)
    assert confidence["value"] == one.confidence_score and confidence["explanationScoreModelName"] == minilm
    assert json.loads(confidence["jsonDetails"]) == {
        "confidence": one.confidence,
        "confidence_reason": one.confidence_reason,
        "label_kind": "concept",
    }

    assert (
        main(["export", "--data", str(tmp_path / "run"), "--format", "neuronpedia", "--out", str(tmp_path / "np")]) == 0
    )
    assert "explanation scores" in capsys.readouterr().err
    written = read_batches(tmp_path / "np" / "gpt2-small" / "6-res-jb" / "explanation-scores")
    written_kinds = [row["explanationScoreTypeName"] for batch in written for row in batch]
    assert sorted(written_kinds) == ["labeler-confidence"] * len(labelled) + ["labeler-heldout-auroc"] * len(labelled)


def _gz_rows(folder: Path) -> list[dict[str, object]]:
    return [
        json.loads(line) for p in folder.rglob("*.jsonl.gz") for line in gzip.decompress(p.read_bytes()).splitlines()
    ]


def test_exports_name_models_by_their_name_never_by_a_local_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose discriminator is a folder of this machine: the export asks for its published name (exit 2,
    nothing written), then writes that name and never the folder."""
    folder = str(tmp_path / "models" / "gemma-2-2b-it")
    write_run(str(tmp_path / "run"), "run-a", n=12, with_exemplars=False, discriminator=f"hf:{folder}")
    argv = ["export", "--data", str(tmp_path / "run"), "--format", "neuronpedia", "--out", str(tmp_path / "np")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the run names model(s) ['hf:{folder}'] by a folder of this machine" in err, err
    assert f"--model-name hf:{folder}=NAME" in err
    assert not (tmp_path / "np").exists()
    assert main([*argv, "--model-name", f"hf:{folder}=./models/gemma"]) == 2  # a path given as the name
    assert "is not a model's name but looks like a path" in capsys.readouterr().err
    assert main([*argv, "--model-name", f"hf:{folder}=google/gemma-2-2b-it"]) == 0
    rows = _gz_rows(tmp_path / "np")
    assert {row["explanationModelName"] for row in rows if "explanationModelName" in row} == {"google/gemma-2-2b-it"}
    assert {row["explanationScoreModelName"] for row in rows if "explanationScoreModelName" in row} == {
        "google/gemma-2-2b-it"
    }
    assert not [row for row in rows if str(tmp_path) in json.dumps(row)]


def test_a_model_in_the_hugging_face_cache_is_named_by_its_hub_id(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--google--gemma-2-2b" / "snapshots" / "0123abcd"
    write_run(str(tmp_path / "run"), "run-a", n=5, with_exemplars=False, discriminator=f"hf:{snapshot}")
    labels = read_runs([str(tmp_path / "run")]).labels
    assert {row["explanationModelName"] for row in neuronpedia_explanations(labels, "me")} == {"google/gemma-2-2b"}
