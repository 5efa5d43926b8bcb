"""Exhaustive single-token search: score every allowed token as the label, keep the best.

The baseline users compare gradient descent against, and the oracle tests use. Works with any
discriminator through its `score_discrete`, on a feature's held-out examples (the oracle: the best any
single token does there) or on its training examples (what a search that never sees the held-out
examples would pick).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.optimise.scoring import auroc, rank_labels
from labeler.optimise.task import FeatureTask


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


def best_token(disc: Discriminator, examples: EncodedExamples, task: FeatureTask, first_look: int = 64) -> SearchResult:
    """The top of `exhaustive_search(..., on="train")` (same token, same AUROC, same tie-break) for about half the
    forward passes; the benchmark's baseline.

    Every token is scored on half of each class of the training examples; the `first_look` best there are scored on
    all, and the best of their AUROCs, B, is one the optimum reaches. A token whose AUROC stays below B even if it
    ordered every pair involving an unseen example correctly cannot be the optimum and is dropped; the rest are
    scored on all examples. The returned result holds the best token only.
    """
    rows, active = task.train()
    pos, neg = np.flatnonzero(active), np.flatnonzero(~active)
    seen = np.concatenate([pos[: (len(pos) + 1) // 2], neg[: (len(neg) + 1) // 2]])
    candidates = torch.arange(len(disc.allowed_ids), device=disc.device)
    half = disc.score_discrete(examples, rows[seen], candidates[None, :, None])[0]  # [V n]
    half_aurocs = np.array([auroc(row, active[seen]) for row in half])
    seen_pairs = ((len(pos) + 1) // 2) * ((len(neg) + 1) // 2)
    all_pairs = len(pos) * len(neg)
    bound = (half_aurocs * seen_pairs + all_pairs - seen_pairs) / all_pairs
    look = np.argsort(-half_aurocs, kind="stable")[:first_look]
    look_scores = disc.score_discrete(examples, rows, candidates[look][None, :, None])[0]
    reached = max(auroc(row, active) for row in look_scores)
    slack = 0.01  # row batches differ between the two passes: keep near-ties rather than trust the last digit
    keep = np.union1d(look, np.flatnonzero(bound >= reached - slack))
    scores = disc.score_discrete(examples, rows, candidates[keep][None, :, None])[0]
    order, aurocs = rank_labels(scores, active)
    best = int(keep[order[0]])
    return SearchResult(task.feature, (int(disc.allowed_ids[best]),), (aurocs[order[0]],))
