"""Exhaustive single-token search: score every allowed token as the label, keep the best.

The baseline users compare gradient descent against, and the oracle tests use. Works with any
discriminator through its `score_discrete`, on a feature's held-out examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.engine import FeatureTask
from labeler.scoring import rank_labels


@dataclass(frozen=True)
class SearchResult:
    """Every allowed token ranked for one feature."""

    feature: int
    token_ids: tuple[int, ...]
    """Vocabulary ids, best first."""
    aurocs: tuple[float, ...]
    """Held-out AUROC of each, in the same order."""


def exhaustive_search(disc: Discriminator, examples: EncodedExamples, task: FeatureTask) -> SearchResult:
    """Rank all allowed tokens as single-token labels by held-out AUROC (ties: lower logistic loss)."""
    candidates = torch.arange(len(disc.allowed_ids), device=disc.device)[None, :, None]  # [1 V 1]
    scores = disc.score_discrete(examples, task.heldout, candidates)[0]  # [V N]
    order, aurocs = rank_labels(scores, task.heldout_active)
    ids = disc.allowed_ids.tolist()
    return SearchResult(task.feature, tuple(ids[i] for i in order), tuple(aurocs[i] for i in order))
