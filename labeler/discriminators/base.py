"""What every discriminator offers the optimiser.

A discriminator judges, for each example (a text and a word in it), whether the word is an example of
a label. The label arrives as L embedding vectors per (feature, restart), made by the optimiser from a
soft distribution over the discriminator's allowed tokens. Examples are encoded once (`encode`), then
scored many times (`score`) against changing labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Scored:
    """A discriminator's answers for a grid of features x restarts x examples."""

    score: Tensor
    """Float[F R N]: log-odds that the answer is "yes" (the word is an example of the label)."""
    answer_nll: Tensor
    """Float[F R N 2]: the read-out loss if the right answer is "no" (index 0) or "yes" (index 1)."""
    reference_logprobs: tuple[Tensor, ...]
    """Per label slot, log q over the allowed tokens: the discriminator's own next-token distribution
    there, Float[F 1 N V] when it does not depend on the restart or Float[F R N V] when it does.
    Empty when the discriminator has no such prior. For slots after the first, q depends on the earlier
    label tokens and stays in the graph (as in the paper's code), so the gradient is that of the loss."""


class EncodedExamples(Protocol):
    """A discriminator's cache of encoded examples; opaque to the optimiser."""

    def __len__(self) -> int: ...


class Discriminator(Protocol):
    """Scores examples against soft labels; frozen, differentiable with respect to the label."""

    name: str
    """What this discriminator is, for records (e.g. "hf:/models/llama")."""
    allowed_ids: Tensor
    """Int[V]: the vocabulary ids a label may use, ascending."""
    label_embeddings: Tensor
    """Float[V d]: the input embedding of each allowed id; a soft label is p @ label_embeddings."""
    device: torch.device

    def encode(self, contexts: Sequence[str], targets: Sequence[str]) -> EncodedExamples:
        """Encode examples once (the expensive, label-independent part of every prompt)."""
        ...

    def score(self, examples: EncodedExamples, example: Tensor, label: Tensor) -> Scored:
        """Answers for `example` (Int[F N], rows of `examples`) under `label` (Float[F R L d])."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of a discrete label given as vocabulary ids."""
        ...
