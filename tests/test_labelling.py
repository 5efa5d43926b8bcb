"""The train/held-out split: over distinct (context, target) pairs, stratified, seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labeler.optimise.config import OptimiserConfig
from labeler.optimise.labelling import LabelConfig, split_examples
from labeler.records.exemplars import FeatureExemplars, unlabelable_reason

CONFIG = LabelConfig(optimiser=OptimiserConfig(seed=0))


def feature(pairs: list[tuple[str, str, float]], feature_id: int = 7) -> FeatureExemplars:
    return FeatureExemplars(
        feature=feature_id,
        contexts=tuple(c for c, _, _ in pairs),
        targets=tuple(t for _, t, _ in pairs),
        activations=np.array([a for _, _, a in pairs], dtype=np.float64),
    )


def row_split(examples: FeatureExemplars, config: LabelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference for examples without repeats: the stratified split of the rows, as it was before pairs were
    grouped (the same generator, permutation per class, held-out first)."""
    rng = np.random.default_rng([config.optimiser.seed, examples.feature, 0])
    active = examples.activations > config.active_threshold
    sides = []
    for pool in (np.flatnonzero(active), np.flatnonzero(~active)):
        pool = rng.permutation(pool)
        n_heldout = min(max(1, round(len(pool) * config.heldout_fraction)), len(pool) - 1)
        sides.append((pool[n_heldout:], pool[:n_heldout]))
    (train_active, heldout_active), (train_inactive, heldout_inactive) = sides
    return train_active, train_inactive, np.sort(np.concatenate([heldout_active, heldout_inactive]))


def repeated(n_active: int, n_inactive: int, copies: int) -> FeatureExemplars:
    """Every (context, target) pair `copies` times, the copies spread over the rows."""
    pairs = [(f"text {i}", f"word{i}", 1.0 if i < n_active else 0.0) for i in range(n_active + n_inactive)]
    return feature([pair for _ in range(copies) for pair in pairs])


def test_a_repeated_pair_lies_on_one_side_only() -> None:
    examples = repeated(n_active=10, n_inactive=20, copies=3)
    train_active, train_inactive, heldout = split_examples(examples, CONFIG)
    train = np.concatenate([train_active, train_inactive])
    assert sorted(np.concatenate([train, heldout]).tolist()) == list(range(len(examples)))
    pair = np.array([hash((c, t)) for c, t in zip(examples.contexts, examples.targets, strict=True)])
    assert not set(pair[train]) & set(pair[heldout])
    assert np.all(examples.activations[train_active] > 0) and np.all(examples.activations[train_inactive] == 0)
    # The held-out share counts pairs: 3 of the 10 active pairs and 6 of the 20 inactive ones, 3 rows each.
    assert len(set(pair[heldout][examples.activations[heldout] > 0])) == 3
    assert len(set(pair[heldout][examples.activations[heldout] == 0])) == 6
    assert len(heldout) == 27


def test_without_repeats_it_is_the_row_split() -> None:
    rng = np.random.default_rng(5)
    for feature_id in range(20):
        n = int(rng.integers(4, 40))
        active = rng.random(n) < 0.4
        active[:2], active[2:4] = True, False
        examples = feature([(f"t{i}", f"w{i}", float(a)) for i, a in enumerate(active)], feature_id)
        for got, want in zip(split_examples(examples, CONFIG), row_split(examples, CONFIG), strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_pair_active_in_any_row_counts_as_active() -> None:
    pairs = [("a", "x", 1.0), ("a", "x", 0.0), ("b", "y", 2.0), ("c", "z", 0.0), ("d", "w", 0.0)]
    examples = feature(pairs)
    assert unlabelable_reason(examples, 0.0) is None
    train_active, train_inactive, heldout = split_examples(examples, CONFIG)
    mixed = {0, 1}
    assert mixed <= set(heldout.tolist()) or mixed <= set(np.concatenate([train_active, train_inactive]).tolist())
    assert np.any(examples.activations[heldout] > 0) and np.any(examples.activations[heldout] == 0)
    assert np.any(examples.activations[train_active] > 0) and len(train_inactive) > 0


@pytest.mark.parametrize("copies", [2, 5])
def test_copies_of_one_active_example_are_not_enough(copies: int) -> None:
    examples = feature([("same", "word", 1.0)] * copies + [("a", "x", 0.0), ("b", "y", 0.0)])
    reason = unlabelable_reason(examples, 0.0) or ""
    assert "has 1 active and 2 inactive" in reason and f"rows: {copies} active" in reason


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_active_threshold_must_be_finite(value: float) -> None:
    with pytest.raises(ValueError, match=rf"active_threshold must be a finite number, got {value}"):
        LabelConfig(active_threshold=value)
