"""What every discriminator offers the optimiser.

A discriminator judges, for each example (a text and a word in it), whether the word is an example of
a label. The label arrives as L embedding vectors per (feature, restart), made by the optimiser from a
soft distribution over the discriminator's allowed tokens. Examples are encoded once (`encode`), then
scored many times (`score`) against changing labels. A discriminator may also have a few parameters
per restart (its "head", e.g. the scale and offset that turn a similarity into log-odds), which the
optimiser learns alongside the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labeler.discriminators.vocab import VocabFilter, allowed_token_ids


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
    kind: str
    """Its config's kind (hf, embedding, minilm): which confidence calibration its labels use."""
    allowed_ids: Tensor
    """Int[V]: the vocabulary ids a label may use, ascending."""
    label_embeddings: Tensor
    """Float[V d]: the input embedding of each allowed id; a soft label is p @ label_embeddings."""
    device: torch.device
    head_init: Tensor
    """Float[K]: initial value of the per-restart head parameters (K = 0: no head)."""

    def encode(self, contexts: Sequence[str], targets: Sequence[str]) -> EncodedExamples:
        """Encode examples once (the expensive, label-independent part of every prompt)."""
        ...

    def score(self, examples: EncodedExamples, example: Tensor, label: Tensor, head: Tensor | None = None) -> Scored:
        """Answers for `example` (Int[F N], rows of `examples`) under `label` (Float[F R L d]).

        `head` (Float[F R K]) holds each restart's head parameters; None means `head_init` for all.
        """
        ...

    def score_discrete(
        self, examples: EncodedExamples, rows: np.ndarray, label_ids: Tensor, head: Tensor | None = None
    ) -> np.ndarray:
        """Scores Float[F C N] of discrete labels (Int[F C L], positions in `allowed_ids`) on example `rows`.

        The same answers as `score` with one-hot labels, computed in passes of bounded size (and, where a
        discriminator can, from a cache of encoded labels). `head`: Float[F C K] or None.
        """
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of a discrete label given as vocabulary ids."""
        ...


def score_discrete_by_embedding(
    disc: Discriminator,
    examples: EncodedExamples,
    rows: np.ndarray,
    label_ids: Tensor,
    head: Tensor | None,
    batch: int,
) -> np.ndarray:
    """`score_discrete` through `score`, with at most about `batch` (label, example) pairs per pass."""
    n_feature, n_candidate, _ = label_ids.shape
    per_pass = max(1, batch // max(1, n_feature * len(rows)))  # candidates per pass when all rows fit
    rows_per_pass = min(len(rows), max(1, batch // max(1, n_feature)))
    out = np.empty((n_feature, n_candidate, len(rows)), dtype=np.float64)
    with torch.no_grad():
        for c in range(0, n_candidate, per_pass):
            label = disc.label_embeddings[label_ids[:, c : c + per_pass]]  # [F C' L d]
            part = None if head is None else head[:, c : c + per_pass]
            for start in range(0, len(rows), rows_per_pass):
                example = torch.from_numpy(rows[start : start + rows_per_pass]).to(disc.device)
                scored = disc.score(examples, example[None].expand(n_feature, -1), label, part)
                out[:, c : c + per_pass, start : start + rows_per_pass] = scored.score.double().cpu().numpy()
    return out


def label_vocabulary(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rule: VocabFilter
) -> tuple[torch.nn.Module, Tensor, Tensor]:
    """The model's input embedding layer, the allowed token ids (Int[V]) and their embeddings (Float[V d]).

    The embeddings are what the embedding layer outputs (Gemma's scales its table), so a one-hot soft
    label is exactly the token; they are at least float32 even when the model runs in half precision.
    """
    embed = model.get_input_embeddings()
    device = cast(Tensor, embed.weight).device
    allowed = torch.tensor(allowed_token_ids(tokenizer, cast(Tensor, embed.weight).shape[0], rule), device=device)
    with torch.no_grad():
        embedded = embed(allowed)
    return embed, allowed, embedded.to(torch.promote_types(embedded.dtype, torch.float32))


def resolve_device(name: str) -> torch.device:
    """A torch device from a config's name; "auto" is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
