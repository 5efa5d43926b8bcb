"""The demo-SAE eye-test truth file is complete and well formed, and benchmarks/eye_truth.py matches labels to it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRUTH = ROOT / "benchmarks" / "data" / "demo-sae-eye-truth.json"


@pytest.fixture
def eye(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/eye_truth.py, imported as module eye_truth (registered, since its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location("eye_truth", ROOT / "benchmarks" / "eye_truth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "eye_truth", module)
    spec.loader.exec_module(module)
    return module


def test_truth_covers_features_0_to_127_and_nothing_else(eye: ModuleType) -> None:
    truth = eye.load_truth(TRUTH)
    assert sorted(truth.features) == list(range(128))
    assert truth.split("tuning") == list(range(64))
    assert truth.split("report") == list(range(64, 128))


def test_every_feature_has_a_valid_kind_and_what_its_kind_needs(eye: ModuleType) -> None:
    for fid, feature in eye.load_truth(TRUTH).features.items():
        assert feature.kind in ("token", "concept", "none"), fid
        assert feature.note.strip(), fid
        if feature.kind == "concept":
            assert feature.accept, fid
        if feature.kind == "token":
            assert feature.tokens, fid
        if feature.kind == "none":
            assert not feature.accept and not feature.tokens, fid
    kinds = {feature.kind for feature in eye.load_truth(TRUTH).features.values()}
    assert kinds == {"token", "concept", "none"}


def test_header_records_the_harvest_the_sae_and_the_rules(eye: ModuleType) -> None:
    header = eye.load_truth(TRUTH).header
    command = header["harvest"]["command"]
    assert "harvest --demo" in command and "--tokens 100000" in command and "--features 0-128" in command
    assert header["harvest"]["settings"]["tokens"] == 100_000
    assert re.fullmatch(r"[0-9a-f]{64}", header["sae"]["weights_sha256"])
    assert "blind" in header["blind"].lower()
    assert {"concept", "token", "none"} <= set(header["matching"])
    assert header["split"] == {"tuning": [0, 63], "report": [64, 127]}


def test_the_issue_examples_score_as_the_issue_judged_them(eye: ModuleType) -> None:
    """Issue 39 rejected ipad (14), amusing (15), systems (3): the truth file must reject them too."""
    features = eye.load_truth(TRUTH).features
    assert not eye.is_named("ipad", "concept", features[14])
    assert eye.is_named("tokens: a / an / the", "token", features[14])
    assert not eye.is_named("amusing", "concept", features[15])
    assert not eye.is_named("systems", "concept", features[3])
    assert eye.is_named('token: "-s"', "token", features[3])


@pytest.fixture
def concept(eye: ModuleType) -> Any:
    return eye.FeatureTruth(kind="concept", accept=("defence", "defense", "protection"), tokens=("defend",), note="x")


@pytest.fixture
def token(eye: ModuleType) -> Any:
    return eye.FeatureTruth(kind="token", accept=("article",), tokens=("a", "an", "the"), note="x")


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("defense", True),
        ("Defenses", True),  # case and plural
        ('"protection"', True),  # quotes
        ("lawyer", False),  # a member, not the concept
        ("defend", False),  # a string it fires on, not in accept
        ("defense lawyer", False),  # several words must match an accept entry as a whole
        ("", False),
    ],
)
def test_concept_label_on_a_concept_feature(eye: ModuleType, concept: Any, label: str, expected: bool) -> None:
    assert eye.is_named(label, "concept", concept) is expected


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("tokens: defense / protection", True),  # every listed string is accepted
        ("tokens: defense / sword", False),
        ('token: "defend"', False),
    ],
)
def test_token_label_on_a_concept_feature(eye: ModuleType, concept: Any, label: str, expected: bool) -> None:
    assert eye.is_named(label, "token", concept) is expected


@pytest.mark.parametrize(
    ("label", "label_kind", "expected"),
    [
        ("tokens: a / an / the", "token", True),
        ('token: "a"', "token", True),
        ("a, an", "token", True),
        ('token: "the"', "token", False),  # not the main string
        ("tokens: a / x / y", "token", False),  # most listed strings are not the feature's
        ("tokens: a / x", "token", True),  # half of them are
        ("articles", "concept", True),  # a describing word, plural
        ("A", "concept", True),  # the main string as a concept label
        ("ipad", "concept", False),
    ],
)
def test_labels_on_a_token_feature(eye: ModuleType, token: Any, label: str, label_kind: str, expected: bool) -> None:
    assert eye.is_named(label, label_kind, token) is expected


def test_affix_and_punctuation_strings(eye: ModuleType) -> None:
    suffix = eye.FeatureTruth(kind="token", accept=(), tokens=("able",), note="x")
    assert eye.is_named('token: "-able"', "token", suffix)
    assert eye.is_named("token: ##able", "token", suffix)
    paren = eye.FeatureTruth(kind="token", accept=(), tokens=(")", ","), note="x")
    assert eye.is_named('token: ")"', "token", paren)
    assert eye.is_named(")", "token", paren)
    assert not eye.is_named('token: ","', "token", paren)
    dash = eye.FeatureTruth(kind="token", accept=(), tokens=("-",), note="x")
    assert eye.is_named('token: "-"', "token", dash)


def test_no_label_names_a_none_feature(eye: ModuleType) -> None:
    nothing = eye.FeatureTruth(kind="none", accept=(), tokens=(), note="mix")
    assert not eye.is_named("mix", "concept", nothing)
    assert not eye.is_named("tokens: a", "token", nothing)


def test_an_unknown_label_kind_is_an_error(eye: ModuleType, concept: Any) -> None:
    with pytest.raises(ValueError, match="label_kind 'word'"):
        eye.is_named("defense", "word", concept)


def write(path: Path, features: dict[str, Any], split: Any = None) -> Path:
    header = {"split": {"tuning": [0, 0], "report": [1, 1]} if split is None else split}
    path.write_text(json.dumps({"header": header, "features": features}))
    return path


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"kind": "word", "accept": [], "tokens": [], "note": "x"}, "kind 'word' is not one of"),
        (
            {"kind": "concept", "accept": [], "tokens": [], "note": "x"},
            "a concept feature needs at least one accept word",
        ),
        (
            {"kind": "token", "accept": ["article"], "tokens": [], "note": "x"},
            "a token feature needs at least one token string",
        ),
        ({"kind": "none", "accept": ["x"], "tokens": [], "note": "x"}, "takes no accept words"),
        ({"kind": "concept", "accept": "law", "tokens": [], "note": "x"}, "accept must be a list"),
        ({"kind": "concept", "accept": ["law"], "tokens": [], "note": ""}, "note must be"),
    ],
)
def test_a_bad_entry_names_the_file_and_feature(eye: ModuleType, tmp_path: Path, entry: Any, problem: str) -> None:
    path = write(tmp_path / "truth.json", {"7": entry})
    with pytest.raises(ValueError, match=rf"truth\.json: feature 7: (a \w+ feature )?{problem}"):
        eye.load_truth(path)


def test_a_bad_file_is_named(eye: ModuleType, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json: not a readable JSON"):
        eye.load_truth(broken)
    with pytest.raises(ValueError, match=r"header\.split"):
        eye.load_truth(write(tmp_path / "nosplit.json", {}, split={"tuning": [0, 1]}))
    with pytest.raises(ValueError, match="feature key 'x'"):
        eye.load_truth(write(tmp_path / "key.json", {"x": {}}))
