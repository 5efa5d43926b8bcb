"""Which examples a label is judged on, and the token-identity baseline label.

A label may only be judged on examples that took no part in choosing it: the held-out rows of its
feature (`split_examples` of labelling, reproducible from the run seed and feature id) or fresh rows
from a harvest that the labelling never saw. Active examples get the index of their activation
quantile, as in delphi's test sets. This module knows nothing about models.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np

from labeler.errors import InputError
from labeler.optimise.labelling import LabelConfig, split_examples
from labeler.records.exemplars import FeatureExemplars

Source = Literal["heldout", "fresh"]


class JudgeExamplesError(InputError):
    """No fair examples to judge a label on; the message says what to pass instead."""


@dataclass(frozen=True)
class JudgeExamples:
    """One feature's examples for judging its label."""

    feature: int
    contexts: tuple[str, ...]
    targets: tuple[str, ...]
    activations: np.ndarray
    """Float64[N]."""
    active: np.ndarray
    """Bool[N]: where the feature fires."""
    quantiles: np.ndarray
    """Int64[N]: activation quantile of each active example (0: the lowest), -1 for inactive ones."""
    source: Literal["heldout", "fresh"]

    def __len__(self) -> int:
        return len(self.contexts)


def heldout_examples(
    examples: FeatureExemplars, config: LabelConfig, n_quantiles: int = 10, expected: int | None = None
) -> JudgeExamples:
    """The feature's held-out rows, as labelling split them with `config` (its seed, fraction and threshold).

    `expected`: the run's recorded n_heldout; a different count means `config` is not the run's.
    """
    heldout = split_examples(examples, config)[2]
    if expected is not None and len(heldout) != expected:
        raise JudgeExamplesError(
            f"feature {examples.feature}: the split gives {len(heldout)} held-out rows but the run recorded "
            f"{expected}; pass the run's --heldout-fraction and --active-threshold"
        )
    return _subset(examples, heldout, config.active_threshold, n_quantiles, "heldout")


def fresh_examples(
    examples: FeatureExemplars, pool: FeatureExemplars, active_threshold: float = 0.0, n_quantiles: int = 10
) -> JudgeExamples:
    """The rows of `pool` (the same feature, from another harvest) whose (context, target) labelling never saw."""
    seen = set(zip(examples.contexts, examples.targets, strict=True))
    rows = [i for i, pair in enumerate(zip(pool.contexts, pool.targets, strict=True)) if pair not in seen]
    found = _subset(pool, np.array(rows, dtype=np.int64), active_threshold, n_quantiles, "fresh")
    if not found.active.any() or found.active.all():
        raise JudgeExamplesError(
            f"feature {examples.feature}: the fresh rows hold {int(found.active.sum())} active of {len(found)}; "
            "judging needs active and inactive rows the labelling did not see"
        )
    return found


def token_baseline(examples: FeatureExemplars, config: LabelConfig) -> str:
    """The most frequent target among the training split's active rows: the token-identity label."""
    train_active = split_examples(examples, config)[0]
    counts = Counter(examples.targets[i].strip() for i in train_active)
    if not counts:
        raise JudgeExamplesError(f"feature {examples.feature} has no active training row to take a baseline from")
    return counts.most_common(1)[0][0]


def _subset(
    examples: FeatureExemplars, rows: np.ndarray, threshold: float, n_quantiles: int, source: Source
) -> JudgeExamples:
    activations = examples.activations[rows]
    active = activations > threshold
    quantiles = np.full(len(rows), -1, dtype=np.int64)
    order = np.flatnonzero(active)[np.argsort(activations[active], kind="stable")]
    quantiles[order] = np.arange(len(order)) * n_quantiles // max(1, len(order))
    return JudgeExamples(
        feature=examples.feature,
        contexts=tuple(examples.contexts[i] for i in rows),
        targets=tuple(examples.targets[i] for i in rows),
        activations=activations,
        active=active,
        quantiles=quantiles,
        source=source,
    )
