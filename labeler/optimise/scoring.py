"""Small pure functions that score a discriminator's answers against a feature's real activity.

`scores` are the discriminator's log-odds of "yes" (higher means "this word is an example of the label");
`active` says where the feature really fires.
"""

from __future__ import annotations

import numpy as np
import torch


def auroc(scores: np.ndarray, active: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random active example outscores a random inactive one.

    Ties count one half (the Mann-Whitney statistic with mid-ranks). NaN when one class is empty.
    """
    active = active.astype(bool)
    n_pos, n_neg = int(active.sum()), int((~active).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _midranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[active].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def aurocs(scores: np.ndarray, active: np.ndarray) -> np.ndarray:
    """`auroc` of every row of `scores` (Float[C N]) at once, ties counting one half, for thousands of candidates.

    For each active example, the inactive ones below it (and half those equal) are counted by a binary search in the
    row's sorted inactive scores."""
    active = np.asarray(active, dtype=bool)
    grid = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    n_pos, n_neg = int(active.sum()), int((~active).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(grid.shape[0], np.nan)
    mask = torch.from_numpy(active)
    pos, neg = grid[:, mask].contiguous(), torch.sort(grid[:, ~mask], dim=1).values
    below = torch.searchsorted(neg, pos, right=False).double()
    up_to = torch.searchsorted(neg, pos, right=True).double()
    return ((below + up_to).sum(1) / (2 * n_pos * n_neg)).numpy()


def balanced_accuracy(scores: np.ndarray, active: np.ndarray, threshold: float = 0.0) -> float:
    """Mean of the true-positive and true-negative rates when answering "yes" for scores above `threshold`."""
    active = active.astype(bool)
    said_yes = np.asarray(scores) > threshold
    if active.all() or not active.any():
        return float("nan")
    return float((said_yes[active].mean() + (~said_yes[~active]).mean()) / 2)


def f1(scores: np.ndarray, active: np.ndarray, threshold: float = 0.0) -> float:
    """F1 of answering "yes" for scores above `threshold`, active examples being the positives.

    NaN when there are no active examples; 0 when no active example gets a "yes".
    """
    active = active.astype(bool)
    said_yes = np.asarray(scores) > threshold
    if not active.any():
        return float("nan")
    true_pos = int((said_yes & active).sum())
    if true_pos == 0:
        return 0.0
    precision, recall = true_pos / int(said_yes.sum()), true_pos / int(active.sum())
    return float(2 * precision * recall / (precision + recall))


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def mean_logistic_loss(scores: np.ndarray, active: np.ndarray) -> float:
    """Mean logistic loss of log-odds scores: how confidently right the answers are."""
    signed = np.where(active.astype(bool), scores, -scores)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def rank_labels(scores: np.ndarray, active: np.ndarray) -> tuple[list[int], list[float]]:
    """Order candidate labels best first by AUROC, ties broken by lower logistic loss.

    `scores` is Float[C N] (candidate x example). Returns the order and every candidate's AUROC.
    """
    aurocs = [auroc(row, active) for row in scores]
    losses = [mean_logistic_loss(row, active) for row in scores]
    order = sorted(range(len(aurocs)), key=lambda c: (-aurocs[c], losses[c]))
    return order, aurocs
