"""What the engine takes and gives per feature, and the state it keeps per restart.

A `FeatureTask` is one feature's examples as rows of the chunk's encoded examples, already split; a `FeatureLabel` is
the engine's answer for it; `Restarts` is the optimiser's state for every (feature, restart); a `StepRecord` is what
one step of either search computed. Plain data: nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class FeatureTask:
    """One feature's examples, as rows of the chunk's encoded examples, already split."""

    feature: int
    train_active: np.ndarray
    train_inactive: np.ndarray
    heldout: np.ndarray
    heldout_active: np.ndarray
    """bool, one per held-out row."""
    target_ids: tuple[int, ...] = ()
    """Positions in the discriminator's allowed ids of the feature's most frequent active training targets that
    are one allowed token, most frequent first (discrete search's extra candidates)."""

    def train(self) -> tuple[np.ndarray, np.ndarray]:
        """The training rows (active ones first) and, for each, whether it is active."""
        rows = np.concatenate([self.train_active, self.train_inactive])
        return rows, np.arange(len(rows)) < len(self.train_active)


@dataclass(frozen=True)
class FeatureLabel:
    """The engine's answer for one feature: the winning restart's discrete label and how it scored."""

    feature: int
    status: str
    """"labelled" or "failed"."""
    error: str | None
    label_ids: tuple[int, ...]
    top_ids: tuple[tuple[int, ...], ...]
    """Per slot, the winning restart's top-k token ids ..."""
    top_probs: tuple[tuple[float, ...], ...]
    """... and their probabilities under its final soft label."""
    heldout_auroc: float
    heldout_balanced_accuracy: float
    heldout_f1: float
    restart_aurocs: tuple[float, ...]
    loss_answer: float
    loss_kl: float
    loss_entropy: float
    steps: int
    """Steps the winning restart ran."""
    steps_total: int
    """Steps all the feature's restarts ran, summed (those dropped by successive halving included)."""
    converged: bool


@dataclass
class Restarts:
    """The optimiser's state, Float/Int/Bool[F R' ...] for the R' restarts each feature still keeps."""

    kept: Tensor
    """Int[F R']: which of the feature's restarts each column is."""
    v: Tensor
    """Float[F R' L V]: label logits (discrete search: the label is their argmax)."""
    adam_m: Tensor
    adam_s: Tensor
    head: Tensor
    """Float[F R' K]."""
    head_m: Tensor
    head_s: Tensor
    done: Tensor
    streak: Tensor
    steps: Tensor
    last_terms: Tensor
    """Float[F R' 3]: answer, KL and entropy at each restart's last step."""
    last_loss: Tensor
    """Float[F R']: the loss at each restart's last step (what successive halving ranks by)."""

    def keep(self, columns: Tensor) -> None:
        """Keep only `columns` (Int[F R'']) of every feature."""
        rows = torch.arange(columns.shape[0], device=columns.device)[:, None]
        for name, value in list(vars(self).items()):
            setattr(self, name, value[rows, columns])


@dataclass(frozen=True)
class StepRecord:
    """What one step of either search computed for the live features (F' of them)."""

    loss: Tensor
    """Float[F' R]: each restart's loss at the step's label."""
    terms: Tensor
    """Float[F' R 3]: answer, KL and entropy."""
    v_grad: Tensor | None
    """Float[F' R L V]: gradient search's gradient of the loss with respect to v (None in discrete search) ..."""
    v_next: Tensor | None
    """... or discrete search's next logits: argmax the next label, the rest ranked by the gradient's estimate."""
    head_grad: Tensor | None
    settled: Tensor
    """Bool[F' R]: the restart's convergence test held this step (peaked p; no improving swap)."""
