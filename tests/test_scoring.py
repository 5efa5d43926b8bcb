"""Scoring functions against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from labeler.optimise.scoring import auroc, aurocs, balanced_accuracy, f1, rank_labels


def brute_auroc(scores: np.ndarray, active: np.ndarray) -> float:
    pairs = list(itertools.product(scores[active], scores[~active]))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_auroc_matches_pair_counting_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 5, size=20).astype(float)  # many ties
        active = rng.random(20) < 0.4
        if active.all() or not active.any():
            continue
        assert abs(auroc(scores, active) - brute_auroc(scores, active)) < 1e-12


def test_auroc_extremes_and_empty_class() -> None:
    active = np.array([True, True, False, False])
    assert auroc(np.array([3.0, 2.0, 1.0, 0.0]), active) == 1.0
    assert auroc(np.array([0.0, 1.0, 2.0, 3.0]), active) == 0.0
    assert np.isnan(auroc(np.array([1.0, 2.0]), np.array([True, True])))


def test_balanced_accuracy() -> None:
    active = np.array([True, True, False, False, False, False])
    scores = np.array([1.0, -1.0, -1.0, -1.0, -1.0, 1.0])
    assert balanced_accuracy(scores, active) == (0.5 + 0.75) / 2


def test_rank_labels_breaks_auroc_ties_by_confidence() -> None:
    active = np.array([True, False])
    scores = np.array([[1.0, -1.0], [5.0, -5.0], [-1.0, 1.0]])
    order, aurocs = rank_labels(scores, active)
    assert order == [1, 0, 2] and aurocs == [1.0, 1.0, 0.0]


def test_f1_against_counts() -> None:
    scores = np.array([2.0, 1.0, -1.0, 0.5, -2.0, 3.0])
    active = np.array([1, 1, 1, 0, 0, 0])
    # yes on 0, 1, 3, 5: tp 2, fp 2, fn 1 -> precision 1/2, recall 2/3
    assert f1(scores, active) == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert f1(scores, np.zeros(6)) != f1(scores, np.zeros(6))  # NaN without positives
    assert f1(-np.ones(3), np.array([1, 0, 1])) == 0.0
    assert f1(np.array([1.0, -1.0]), np.array([1, 0])) == 1.0


def test_aurocs_of_many_rows_equal_auroc_row_by_row_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(50, 40)).astype(float)  # small integers: many ties
    scores[3] = rng.normal(size=40)
    active = rng.random(40) < 0.4
    assert np.allclose(aurocs(scores, active), [auroc(row, active) for row in scores])
    assert np.isnan(aurocs(scores, np.zeros(40, bool))).all()
