"""The pick: which of a feature's restarts (or their one-slot variants) becomes its label, and how it scored.

Each kept restart's argmax label is scored on the feature's held-out examples and the best AUROC wins; with
`rescore_top_k`, `rescore_prior` or `rescore_neighbours` the winner is instead the best on the training examples among
the restarts' labels and their one-slot variants from those sources, and its held-out AUROC is reported (unbiased by
the choice). Knows nothing about how the restarts were optimised.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.loss import contrast_weight
from labeler.optimise.scoring import auroc, aurocs, balanced_accuracy, f1, rank_labels
from labeler.optimise.task import FeatureLabel, FeatureTask, Restarts


@torch.no_grad()
def pick_best(
    disc: Discriminator,
    examples: EncodedExamples,
    task: FeatureTask,
    state: Restarts,
    f: int,
    config: OptimiserConfig,
    steps_total: Tensor,
) -> FeatureLabel:
    """Discretise each kept restart of feature `f` (argmax per slot), score it on held-out examples, keep the best.

    With `rescore_top_k`, `rescore_prior` or `rescore_neighbours`, the winner is instead the best on the training
    examples of the restarts' labels and their one-slot variants from those sources. With `target_prior`, one of the
    feature's own frequent active targets replaces the winner where it fits the training examples nearly as well
    (`_grounded`). Restarts dropped by successive halving get no held-out AUROC (NaN).
    """
    v, head, last_terms, steps, done = state.v[f], state.head[f], state.last_terms[f], state.steps[f], state.done[f]
    label_ids = v.argmax(-1)  # [R' L]
    scores = disc.score_discrete(examples, task.heldout, label_ids[None], head[None])[0]  # [R N]
    order, aurocs = rank_labels(scores, task.heldout_active)
    best, best_ids, best_scores = order[0], label_ids[order[0]], scores[order[0]]
    if config.rescore_top_k or config.rescore_prior or config.rescore_neighbours:
        train, train_active = task.train()
        tokens = torch.cat(
            [
                v.topk(min(config.rescore_top_k, v.shape[-1]), dim=-1).indices,
                _train_prior(disc, examples, train, train_active, label_ids, head, config),
                _neighbours(disc.label_embeddings, label_ids, config.rescore_neighbours),
            ],
            dim=-1,
        )  # [R' L K]
        candidates, owner = _candidates(label_ids, tokens)  # [C L], [C]
        train_scores = disc.score_discrete(examples, train, candidates[None], head[owner][None])[0]
        pick = rank_labels(train_scores, train_active)[0][0]
        best, best_ids = int(owner[pick]), candidates[pick]
        best_scores = disc.score_discrete(examples, task.heldout, best_ids[None, None], head[best][None, None])[0, 0]
    if config.target_prior and task.target_ids and config.label_tokens == 1:
        grounded = _grounded(disc, examples, task, best_ids, head[best], config.target_prior)
        if not torch.equal(grounded, best_ids):
            best_ids, heldout = grounded, task.heldout
            best_scores = disc.score_discrete(examples, heldout, best_ids[None, None], head[best][None, None])[0, 0]
    top = v[best].softmax(-1).topk(min(config.top_k, v.shape[-1]), dim=-1)  # at most the allowed vocabulary
    allowed = disc.allowed_ids
    return FeatureLabel(
        feature=task.feature,
        status="labelled",
        error=None,
        label_ids=tuple(allowed[best_ids].tolist()),
        top_ids=tuple(tuple(allowed[slot].tolist()) for slot in top.indices),
        top_probs=tuple(tuple(slot.tolist()) for slot in top.values),
        heldout_auroc=auroc(best_scores, task.heldout_active),
        heldout_balanced_accuracy=balanced_accuracy(best_scores, task.heldout_active),
        heldout_f1=f1(best_scores, task.heldout_active),
        restart_aurocs=tuple(_by_restart(aurocs, state.kept[f], config.restarts)),
        loss_answer=float(last_terms[best, 0]),
        loss_kl=float(last_terms[best, 1]),
        loss_entropy=float(last_terms[best, 2]),
        steps=int(steps[best]),
        steps_total=int(steps_total),
        converged=bool(done[best]),
    )


def _grounded(
    disc: Discriminator, examples: EncodedExamples, task: FeatureTask, label_ids: Tensor, head: Tensor, prior: float
) -> Tensor:
    """The feature's most frequent active training target that is one allowed token (`task.target_ids`, most
    frequent first) whose training AUROC is within `prior` of the label's (Int[1]), or the label itself.

    A prior for words the feature itself fires on: where the discriminator rates such a word about as high as the
    searched one, a person reading the feature's examples recognises it, and the searched word is often a chance fit
    of a few examples."""
    train, train_active = task.train()
    candidates = torch.cat([label_ids[None], torch.tensor(task.target_ids, device=label_ids.device)[:, None]])
    heads = head[None, None].expand(1, len(candidates), -1)
    fits = aurocs(disc.score_discrete(examples, train, candidates[None], heads)[0], train_active)  # [1 + M]
    near = [i for i in range(1, len(candidates)) if fits[i] >= fits[0] - prior]
    return candidates[near[0]] if near else label_ids


def _by_restart(values: list[float], kept: Tensor, n_restart: int) -> list[float]:
    """Values of the kept restarts spread over all restarts, NaN for the dropped ones."""
    spread = [math.nan] * n_restart
    for value, restart in zip(values, kept.tolist(), strict=True):
        spread[restart] = value
    return spread


def _candidates(label_ids: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Each restart's label (Int[R L]) and its variants with one slot set to one of that slot's tokens (Int[R L K]).

    Returns the distinct labels Int[C L] and, for each, the restart it came from (the first one).
    """
    n_restart, n_slot = label_ids.shape
    seen: dict[tuple[int, ...], int] = {}
    for r in range(n_restart):
        seen.setdefault(tuple(label_ids[r].tolist()), r)
        for slot in range(n_slot):
            for token in tokens[r, slot].tolist():
                label = label_ids[r].clone()
                label[slot] = token
                seen.setdefault(tuple(label.tolist()), r)
    labels = torch.tensor(list(seen), device=label_ids.device)
    return labels, torch.tensor(list(seen.values()), device=label_ids.device)


def _train_prior(
    disc: Discriminator,
    examples: EncodedExamples,
    train: np.ndarray,
    train_active: np.ndarray,
    label_ids: Tensor,
    head: Tensor,
    config: OptimiserConfig,
) -> Tensor:
    """Int[R L k], k = `rescore_prior`: per restart and slot, the k tokens whose log q over the training examples
    (rows `train`, Bool `train_active`) is highest on the active ones relative to the inactive ones, q being the
    discriminator's next-token distribution at that slot after the restart's label (Int[R L]) before it. None
    (k = 0) where the discriminator has no q. Computed in passes of at most `swap_batch` (restart, example) rows."""
    n_restart, n_slot = label_ids.shape
    none = torch.zeros(n_restart, n_slot, 0, dtype=torch.long, device=label_ids.device)
    if config.rescore_prior == 0:
        return none
    weight = contrast_weight(torch.from_numpy(train_active).to(disc.device))  # [N]
    label = disc.label_embeddings[label_ids][None]  # [1 R L d]
    contrast = None
    per_pass = max(1, config.swap_batch // n_restart)
    for start in range(0, len(train), per_pass):
        example = torch.from_numpy(train[start : start + per_pass]).to(disc.device)[None]  # [1 N']
        scored = disc.score(examples, example, label, head[None])
        if len(scored.reference_logprobs) != n_slot:
            return none
        w = weight[start : start + per_pass, None].to(scored.reference_logprobs[0].dtype)  # [N' 1]
        part = torch.stack([(log_q[0] * w).sum(-2).expand(n_restart, -1) for log_q in scored.reference_logprobs], 1)
        contrast = part if contrast is None else contrast + part  # [R L V]
    assert contrast is not None  # a feature has training examples
    return contrast.topk(min(config.rescore_prior, contrast.shape[-1]), dim=-1).indices


def _neighbours(embeddings: Tensor, label_ids: Tensor, k: int) -> Tensor:
    """Int[R L k]: per restart and slot, the k tokens other than the label's own (Int[R L]) whose embeddings
    (Float[V d]) have the largest cosine similarity to its embedding."""
    if k == 0:
        return torch.zeros(*label_ids.shape, 0, dtype=torch.long, device=label_ids.device)
    norms = embeddings.norm(dim=-1).clamp_min(1e-12)  # [V]
    cosine = (embeddings[label_ids] @ embeddings.T) / (norms[label_ids][..., None] * norms)  # [R L V]
    cosine = cosine.scatter(-1, label_ids[..., None], -math.inf)
    return cosine.topk(min(k, embeddings.shape[0] - 1), dim=-1).indices
