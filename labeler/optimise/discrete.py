"""Discrete (GCG-style) search's step: rank single-slot swaps by the gradient at the one-hot label, score them exactly.

Each step the gradient of the loss with respect to each slot's one-hot label ranks candidate tokens; a batch of
single-slot swaps (those, the feature's most frequent active targets, and optionally the tokens the discriminator's
own next-token distribution favours on the active examples) is scored exactly on the step's examples, and the best
swap replaces the label when it lowers the loss (Zou et al. 2023; AutoPrompt). The caller (engine.optimise) keeps the
state; this module only computes one step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.loss import contrast_weight, discrete_loss, loss_terms
from labeler.optimise.task import FeatureTask, StepRecord

# Discrete search takes a swap only when it lowers the loss by more than this (float noise between passes).
SWAP_TOLERANCE = 1e-6


def swap_step(
    disc: Discriminator,
    examples: EncodedExamples,
    example: Tensor,
    target: Tensor,
    v: Tensor,
    head: Tensor,
    pool: Tensor,
    config: OptimiserConfig,
) -> StepRecord:
    """Discrete search's step for labels argmax(v) (Int[F R L]) on examples (Int[F N]) with answers (Bool[F N]).

    `pool`: Int[F M], each feature's frequent target tokens (-1: none). Returns the loss at the current label,
    the next label in `v_next` (the best swap where it lowers the loss) and `settled` where none did.
    """
    label = v.argmax(-1)  # [F R L]
    one_hot = F.one_hot(label, v.shape[-1]).to(v.dtype).requires_grad_(True)
    head = head.clone().requires_grad_(True)
    scored = disc.score(examples, example, one_hot @ disc.label_embeddings, head)
    # With a one-hot p the entropy is 0 and KL(p || q) is -log q(label): the loss of the discrete label itself.
    terms = loss_terms(scored, one_hot, torch.zeros_like(one_hot), target)
    loss = terms[..., 0] + config.c_kl * terms[..., 1]
    grad, head_grad = torch.autograd.grad(loss.sum(), [one_hot, head], allow_unused=True)
    # First-order estimate of the loss drop from putting token j in slot l: -(g_j - g_current).
    gain = grad.gather(-1, label[..., None]) - grad  # [F R L V]
    prior = _prior_tokens(scored.reference_logprobs, target, config.prior_candidates, label.shape)  # [F R L P]
    candidates, valid = _swap_candidates(label, gain, prior, pool, config.swap_candidates)  # [F R C L], [F R C]
    swap_loss = _swap_losses(disc, examples, example, target, candidates, head.detach(), config)  # [F R C]
    best_loss, best = swap_loss.masked_fill(~valid, math.inf).min(-1)  # [F R]
    # A swap must gain more than float noise between passes of different shapes.
    improved = best_loss < loss.detach() - SWAP_TOLERANCE
    chosen = candidates.gather(2, best[..., None, None].expand(*best.shape, 1, label.shape[-1]))[:, :, 0]
    next_label = torch.where(improved[..., None], chosen, label)  # [F R L]
    v_next = gain.scatter(-1, next_label[..., None], gain.amax(-1, keepdim=True) + 1)  # argmax: the next label
    return StepRecord(loss.detach(), terms.detach(), None, v_next, head_grad, ~improved)


def _prior_tokens(reference_logprobs: tuple[Tensor, ...], target: Tensor, k: int, shape: torch.Size) -> Tensor:
    """Int[F R L k]: per slot, the k tokens whose log q (Float[F R|1 N V] per slot) on the active examples of the
    step (Bool[F N]) most exceeds its mean on the inactive ones; none (k = 0) where the discriminator has no q."""
    n_feature, n_restart, n_slot = shape
    if k == 0 or len(reference_logprobs) != n_slot:
        return torch.zeros(n_feature, n_restart, n_slot, 0, dtype=torch.long, device=target.device)
    weight = contrast_weight(target)[:, None, :, None]  # [F 1 N 1]
    contrast = [(log_q.detach() * weight).sum(2) for log_q in reference_logprobs]  # per slot, Float[F R|1 V]
    tokens = [c.topk(min(k, c.shape[-1]), dim=-1).indices.expand(n_feature, n_restart, -1) for c in contrast]
    return torch.stack(tokens, dim=2)


def _swap_candidates(label: Tensor, gain: Tensor, prior: Tensor, pool: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Single-slot swaps Int[F R C L] of each label (Int[F R L]), C = L (k + P + M): per slot, the k tokens of
    largest predicted gain (Float[F R L V]), the P prior tokens (Int[F R L P]) and the M pool tokens (Int[F M]).
    Also which are real swaps (Bool[F R C]: not padding, not the current token)."""
    _, n_restart, n_slot = label.shape
    others = gain.scatter(-1, label[..., None], -math.inf)  # the current token is no swap
    top = others.topk(min(k, gain.shape[-1] - 1), dim=-1).indices  # [F R L k]
    swaps, valid = [], []
    for slot in range(n_slot):
        tokens = torch.cat([top[:, :, slot], prior[:, :, slot], pool[:, None].expand(-1, n_restart, -1)], dim=-1)
        ok = (tokens >= 0) & (tokens != label[:, :, slot, None])
        swap = label[:, :, None].expand(-1, -1, tokens.shape[-1], -1).clone()  # [F R k+P+M L]
        swap[..., slot] = torch.where(ok, tokens, label[:, :, slot, None])
        swaps.append(swap)
        valid.append(ok)
    return torch.cat(swaps, dim=2), torch.cat(valid, dim=2)


@torch.no_grad()
def _swap_losses(
    disc: Discriminator,
    examples: EncodedExamples,
    example: Tensor,
    target: Tensor,
    candidates: Tensor,
    head: Tensor,
    config: OptimiserConfig,
) -> Tensor:
    """The exact loss Float[F R C] of every candidate label (Int[F R C L]) on the step's examples (Int[F N]),
    in passes of at most `swap_batch` (feature, candidate, example) rows; each candidate uses its restart's head."""
    n_feature, n_restart, n_candidate, n_slot = candidates.shape
    flat = candidates.reshape(n_feature, -1, n_slot)  # [F RC L]
    flat_head = head[:, :, None].expand(-1, -1, n_candidate, -1).reshape(n_feature, flat.shape[1], -1)
    per_pass = max(1, config.swap_batch // (n_feature * example.shape[1]))
    losses = []
    for start in range(0, flat.shape[1], per_pass):
        ids = flat[:, start : start + per_pass]  # [F C' L]
        scored = disc.score(examples, example, disc.label_embeddings[ids], flat_head[:, start : start + per_pass])
        losses.append(discrete_loss(scored, ids, target, config.c_kl))
    return torch.cat(losses, dim=1).view(n_feature, n_restart, n_candidate)


def target_pool(tasks: list[FeatureTask], size: int, device: torch.device) -> Tensor:
    """Int[F M]: each task's first `size` target ids, padded with -1."""
    pool = torch.full((len(tasks), size), -1, dtype=torch.long)
    for f, task in enumerate(tasks):
        ids = task.target_ids[:size]
        pool[f, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return pool.to(device)
