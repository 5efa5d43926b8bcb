"""Confidence signals against hand-computed cases, the model's score and reasons, and its calibration files."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from labeler.cli import main
from labeler.errors import InputError
from labeler.optimise.confidence import (
    SIGNALS,
    Calibration,
    Signals,
    calibration,
    judge,
    read_calibration,
    signals,
)
from labeler.optimise.task import FeatureTask
from labeler.optimise.token_label import TokenLabel
from labeler.run.loading import load_config

# Scores of the four allowed tokens (rows) on the four training rows: 0 and 1 active, 2 and 3 inactive.
SCORES = np.array(
    [
        [2.0, 1.0, 0.0, -1.0],  # token 0: AUROC 1.0
        [1.0, -1.0, 0.0, 2.0],  # token 1: 0.25
        [0.0, 0.0, 0.0, 0.0],  # token 2: 0.5
        [-1.0, -1.0, 1.0, 1.0],  # token 3: 0.0
    ]
)


class Fake:
    """A discriminator whose discrete scores are SCORES, whatever the examples' encoding."""

    name, kind, device = "fake", "hf", torch.device("cpu")
    allowed_ids = torch.tensor([10, 11, 12, 13])
    label_embeddings = torch.eye(4)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(f"w{i - 10}" for i in ids)

    def score_discrete(
        self, examples: object, rows: np.ndarray, label_ids: torch.Tensor, head: object = None
    ) -> np.ndarray:
        return SCORES[label_ids[..., 0].numpy()][..., rows]


TASK = FeatureTask(
    feature=5,
    train_active=np.array([0, 1]),
    train_inactive=np.array([2, 3]),
    heldout=np.array([4, 5, 6]),
    heldout_active=np.array([True, False, False]),
    target_ids=(1,),
)
TARGETS = ["w0", "x", "w0", "y", "w0", "z", "z"]
ACTIVATIONS = np.array([3.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0])


def found(label: int, token: TokenLabel | None = None) -> Signals:
    return signals(Fake(), None, TASK, TARGETS, ACTIVATIONS, (label,), ((1,),), 0.9, token, seed=0)  # type: ignore[arg-type]


def test_a_concept_label_ahead_of_every_rival() -> None:
    # rivals: the target token 1 and the nearest tokens (all three others); best rival token 2, AUROC 0.5
    assert found(0) == Signals(heldout_auroc=0.9, n_heldout=3, coverage=0.75, margin=0.5, stability=1.0, token=False)


def test_a_label_behind_a_rival_is_unstable_and_covers_nothing() -> None:
    flat = found(2)
    assert (flat.margin, flat.stability, flat.coverage) == (-0.5, 0.0, 0.0)


def test_a_token_labels_rival_is_the_searched_label() -> None:
    # "w0" is the target of rows 0 (active) and 2 (inactive) -> membership 1, 0 on the active rows and 1, 0 on the
    # inactive ones: AUROC 0.5; the searched token 3 scores 0.0: margin 0.5, the token label always ahead
    token = TokenLabel(("w0",), 0.75, 0.5)
    result = found(3, token)
    assert (result.token, result.coverage, result.margin, result.stability) == (True, 0.75, 0.5, 1.0)


def test_resampling_is_seeded_by_the_feature() -> None:
    assert found(1) == found(1)


MODEL = Calibration(
    mean=(0.75, 0.25, 0.0, 0.0, 0.0, 0.0),
    scale=(1.0,) * 6,
    weights=(2.0, 1.0, 0.0, 0.0, 0.0, 0.0),
    bias=0.0,
    threshold=0.5,
    fitted_on="t",
)


def test_the_score_is_the_logistic_of_the_weighted_signals_and_a_low_flag_says_why() -> None:
    high = Signals(heldout_auroc=1.0, n_heldout=10, coverage=0.5, margin=0.0, stability=1.0, token=False)
    assert judge(high, MODEL).score == pytest.approx(1 / (1 + math.exp(-(2.0 * 0.25 + 1.0 * 0.25))))
    assert judge(high, MODEL).flag == "ok" and judge(high, MODEL).reason is None
    low = Signals(heldout_auroc=0.5, n_heldout=10, coverage=0.0, margin=0.0, stability=1.0, token=False)
    verdict = judge(low, MODEL)
    assert verdict.flag == "low" and verdict.score == pytest.approx(1 / (1 + math.exp(0.75)))
    assert verdict.reason == "confidence 0.32 under 0.50: held-out AUROC 0.50; it names 0% of what the feature fires on"


def test_every_discriminator_kind_has_a_shipped_calibration() -> None:
    for kind in ("hf", "minilm", "embedding"):
        model = calibration(kind)
        assert len(model.weights) == len(SIGNALS) and 0 < model.threshold < 1 and model.fitted_on
    with pytest.raises(ValueError, match="no confidence calibration ships for discriminator kind 'nosuch'"):
        calibration("nosuch")


def test_a_calibration_file_is_checked(tmp_path: Path) -> None:
    entry = {
        "mean": [0.0] * 6,
        "scale": [1.0] * 6,
        "weights": [0.0] * 6,
        "bias": 0.0,
        "threshold": 0.5,
        "fitted_on": "x",
    }
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"signals": list(SIGNALS), "kinds": {"hf": entry}}))
    assert read_calibration(str(good)).threshold == 0.5
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"signals": list(SIGNALS), "kinds": {"hf": entry, "minilm": entry}}))
    with pytest.raises(ValueError, match="holds 2 models"):
        read_calibration(str(two))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"signals": ["a"], "kinds": {"hf": entry}}))
    with pytest.raises(ValueError, match=r"other.json is not a confidence calibration: it was fitted on the signals"):
        read_calibration(str(other))
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"signals": list(SIGNALS), "kinds": {"hf": {**entry, "weights": [0.0]}}}))
    with pytest.raises(ValueError, match="needs 6 means, scales and weights"):
        read_calibration(str(short))
    with pytest.raises(ValueError, match="cannot read the calibration file"):
        read_calibration(str(tmp_path / "none.json"))


def test_a_token_detector_gets_a_token_label_with_its_confidence() -> None:
    """A feature that fires on "(" (and once on "a"): no label of the vocabulary can say "(", so its label lists the
    strings, and it still gets a confidence."""
    from conftest import tiny_gpt2, word_tokenizer

    from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
    from labeler.optimise.config import OptimiserConfig
    from labeler.optimise.labelling import LabelConfig, label_chunk
    from labeler.records.exemplars import FeatureExemplars

    tok = word_tokenizer()
    disc = CausalLMDiscriminator(tiny_gpt2(len(tok)), tok, CausalLMConfig(model="tiny"))
    rows = [("the dog ( ran", "(", 2.0), ("a cat ( ate", "(", 2.0), ("a ( cow", "(", 2.0), ("the ( bird", "(", 2.0)]
    rows += [("a fish", "a", 1.0), ("the dog ran", "dog", 0.0), ("a red apple", "apple", 0.0), ("a cow", "cow", 0.0)]
    rows *= 2
    feature = FeatureExemplars(
        3,
        tuple(f"{context} {i}" for i, (context, _, _) in enumerate(rows)),
        tuple(target for _, target, _ in rows),
        np.array([activation for _, _, activation in rows]),
    )
    config = LabelConfig(optimiser=OptimiserConfig(max_steps=2, examples_per_step=4), heldout_fraction=0.4)
    (record,) = label_chunk(disc, [feature], config)
    assert record.status == "labelled" and record.label_kind == "token" and record.label == 'token: "("'
    assert record.token_label == record.label and record.search_label not in (None, record.label)
    assert record.confidence in ("low", "ok") and 0 <= (record.confidence_score or -1) <= 1
    assert (record.coverage or 0) >= 0.6 and record.heldout_auroc == record.token_heldout_auroc


@pytest.mark.slow
def test_a_no_concept_feature_is_flagged_low_on_the_testbed(tmp_path: Path) -> None:
    """On the shipped small testbed LM with the causal-LM default (about 40 s): a feature active on random words of
    the world gets a low confidence with its reason; a concept feature ("dog") is named."""
    from labeler.discriminators.config import build_discriminator
    from labeler.optimise.labelling import label_chunk
    from labeler.records.exemplars import group_by_feature, read_exemplars
    from labeler.run.loading import load_config
    from labeler.toys import taxonomy

    (tmp_path / "features.txt").write_text("dog\nnone:3\n")
    taxonomy.build("small", tmp_path / "t", categories_file=tmp_path / "features.txt", seed=0, log=lambda _: None)
    config = load_config(None, {"discriminator": f"hf:{tmp_path / 't' / 'lm'}"})
    features = list(group_by_feature(read_exemplars(tmp_path / "t" / "exemplars.jsonl")))
    dog, none = label_chunk(build_discriminator(config.discriminator), features, config.label)
    assert dog.label == "dog" and dog.confidence == "ok"
    assert none.status == "labelled" and none.confidence == "low" and none.confidence_reason


def test_a_bad_calibration_file_stops_the_run_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`label.calibration` is read when the config is loaded: a file that is not a calibration is refused there, as
    a user's error (exit 2 from the command line), not in each chunk."""
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match=r"bad\.json"):
        load_config(None, {"label.calibration": str(bad)})
    argv = ["label", "--exemplars", str(tmp_path / "x.jsonl"), "--discriminator", "minilm", "--out", str(tmp_path)]
    assert main([*argv, "--set", f"label.calibration={bad}"]) == 2
    assert f"labeler: error: {bad}" in capsys.readouterr().err
