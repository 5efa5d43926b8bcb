"""Exhaustive single-token search: score every allowed token as the label, keep the best.

The baseline users compare gradient descent against, and the oracle tests use. Works with any
discriminator through its `score_discrete`, on a feature's held-out examples (the oracle: the best any
single token does there) or on its training examples (what a search that never sees the held-out
examples would pick).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.optimise.engine import FeatureTask
from labeler.optimise.scoring import rank_labels


@dataclass(frozen=True)
class SearchResult:
    """Every allowed token ranked for one feature."""

    feature: int
    token_ids: tuple[int, ...]
    """Vocabulary ids, best first."""
    aurocs: tuple[float, ...]
    """AUROC of each on the examples it was ranked by, in the same order."""


def exhaustive_search(
    disc: Discriminator, examples: EncodedExamples, task: FeatureTask, on: Literal["heldout", "train"] = "heldout"
) -> SearchResult:
    """Rank all allowed tokens as single-token labels by AUROC (ties: lower logistic loss).

    `on`: the feature's held-out examples (default) or its training examples.
    """
    if on not in ("heldout", "train"):
        raise ValueError(f"on must be 'heldout' or 'train', got {on!r}")
    rows, active = (task.heldout, task.heldout_active) if on == "heldout" else task.train()
    candidates = torch.arange(len(disc.allowed_ids), device=disc.device)[None, :, None]  # [1 V 1]
    scores = disc.score_discrete(examples, rows, candidates)[0]  # [V N]
    order, aurocs = rank_labels(scores, active)
    ids = disc.allowed_ids.tolist()
    return SearchResult(task.feature, tuple(ids[i] for i in order), tuple(aurocs[i] for i in order))
