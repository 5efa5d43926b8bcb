"""The loss of a label, per restart, from the discriminator's answers: answer + c_kl * KL(p || q) + c_entropy * H(p).

Small pure functions of a `Scored` (labeler/discriminators/base.py): the soft label's objective, its terms, the same
at a discrete (one-hot) label without building it, and the active-minus-inactive weight that the prior's token
ranking uses. Nothing here moves a label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.discriminators.base import Discriminator, EncodedExamples, Scored
from labeler.optimise.config import OptimiserConfig


def objective(
    disc: Discriminator,
    examples: EncodedExamples,
    example: Tensor,
    target: Tensor,
    logits: Tensor,
    config: OptimiserConfig,
    head: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Each restart's loss for label logits v (Float[F R L V]) on examples (Int[F N]) with answers (Bool[F N]).

    `head`: the discriminator's head parameters, Float[F R K] (None: its initial ones).
    Returns the loss Float[F R], its terms Float[F R 3] (answer, KL, entropy) and p = softmax(v).
    """
    p = logits.softmax(-1)
    seen = p
    if config.straight_through:
        seen = F.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype) + p - p.detach()
    scored = disc.score(examples, example, seen @ disc.label_embeddings, head)
    terms = loss_terms(scored, p, logits.log_softmax(-1), target)
    loss = terms[..., 0] + config.c_kl * terms[..., 1] + config.c_entropy * terms[..., 2]
    return loss, terms, p


def loss_terms(scored: Scored, p: Tensor, log_p: Tensor, target: Tensor) -> Tensor:
    """Per restart: mean answer loss, mean KL(p || q) over slots and examples, mean entropy over slots."""
    answer = scored.answer_nll.gather(-1, target[:, None, :, None].expand(*scored.score.shape, 1).long())
    answer = answer.squeeze(-1).mean(-1)  # [F R]
    neg_entropy = (p * log_p).sum(-1)  # [F R L]
    kl = torch.zeros_like(answer)
    for slot, log_q in enumerate(scored.reference_logprobs):
        # sum_v p log q for every example, without expanding q over restarts when it does not depend on them.
        cross = (p[:, :, slot, None, :] @ log_q.transpose(-1, -2)).squeeze(-2)  # [F R N]
        kl = kl + (neg_entropy[:, :, slot, None] - cross).mean(-1)
    kl = kl / max(len(scored.reference_logprobs), 1)
    return torch.stack([answer, kl, -neg_entropy.mean(-1)], dim=-1)


def discrete_loss(scored: Scored, ids: Tensor, target: Tensor, c_kl: float) -> Tensor:
    """answer + c_kl * KL for discrete labels Int[F C L]: `loss_terms` at a one-hot p, without building it."""
    grid = scored.score.shape  # [F C N]
    answer = scored.answer_nll.gather(-1, target[:, None, :, None].expand(*grid, 1).long()).squeeze(-1).mean(-1)
    kl = torch.zeros_like(answer)
    for slot, log_q in enumerate(scored.reference_logprobs):
        picked = log_q.expand(*grid, -1).gather(-1, ids[:, :, slot, None, None].expand(*grid, 1))  # [F C N 1]
        kl = kl - picked.squeeze(-1).mean(-1)
    return answer + c_kl * kl / max(len(scored.reference_logprobs), 1)


def contrast_weight(active: Tensor) -> Tensor:
    """Float like Bool `active` [..., N]: 1/(active count) on the active, -1/(inactive count) on the others, so a
    weighted sum over N is the mean on the active minus the mean on the inactive."""
    on = active.float()
    return on / on.sum(-1, keepdim=True).clamp_min(1) - (1 - on) / (1 - on).sum(-1, keepdim=True).clamp_min(1)
