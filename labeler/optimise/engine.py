"""The batched optimiser: F features x R restarts of token-space gradient descent in one forward pass.

Each restart owns logits v over the allowed tokens for each of L label slots; the soft label is
p = softmax(v) and enters the discriminator as p @ E. One step samples a balanced batch of training
examples per feature (shared by its restarts), scores every (feature, restart, example) at once and
minimises, per restart,

    answer cross-entropy + c_kl * KL(p || q) + c_entropy * H(p),

with AdamW (together with the discriminator's per-restart head parameters, if it has any). A restart
stops when its label has converged; a feature leaves the batch when all its restarts have. At the end
each restart's argmax label is scored on the feature's held-out examples and the best restart wins;
optionally, the top tokens of every restart's soft label are first re-scored exactly as candidates.

`search="discrete"` replaces the soft label by a discrete one (GCG, Zou et al. 2023; AutoPrompt): each
step the gradient of the loss with respect to each slot's one-hot label ranks candidate tokens, a batch
of single-slot swaps (those and the feature's most frequent active targets) is scored exactly on the
step's examples, and the best swap replaces the label when it lowers the loss. Successive halving
(`halve_every`) drops the worse half of each feature's restarts at set steps, in either search.
The engine knows nothing about tokenization, files or metrics.

Randomness is per feature (example sampling) and per (feature, restart) (initial v), seeded from the
run seed and the feature id, so a feature gets the same label whether it runs alone or in a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labeler.discriminators.base import Discriminator, EncodedExamples, Scored
from labeler.optimise.scoring import auroc, balanced_accuracy, f1, rank_labels

# Discrete search takes a swap only when it lowers the loss by more than this (float noise between passes).
SWAP_TOLERANCE = 1e-6


@dataclass(frozen=True)
class OptimiserConfig:
    """Token-space gradient descent settings (defaults follow the paper where it gives one)."""

    restarts: int = 4
    """Random restarts per feature; the best on held-out examples wins."""
    max_steps: int = 100
    """Optimisation steps at most per restart."""
    label_tokens: int = 1
    """L, the number of tokens in a label (the paper uses 1)."""
    examples_per_step: int = 32
    """Training examples per feature per step, half active and half inactive."""
    lr: float = 0.2
    """AdamW learning rate on v (the paper: 0.1 to 0.5)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW moment decay rates."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on v."""
    c_kl: float = 0.1
    """Weight of KL(p || q), q being the discriminator's own next-token distribution (the paper: 0.05 to 0.2)."""
    c_entropy: float = 0.2
    """Weight of the entropy H(p), pushing p towards one token (the paper: 0.1 to 0.3; encoders default to 0)."""
    init_std: float = 1.0
    """v starts as N(0, init_std^2)."""
    converge_prob: float = 0.9
    """A restart has converged when every slot's largest probability exceeds this ..."""
    converge_patience: int = 5
    """... for this many consecutive steps."""
    top_k: int = 5
    """Top tokens per slot recorded with their probabilities."""
    straight_through: bool = False
    """True (encoders' default): score each slot's argmax word, gradients as if soft; False: p @ E (the paper).

    With True the discriminator sees the argmax token of each slot (one-hot p) and the gradient flows as if
    it had seen p (a straight-through estimator), so every step scores a real word and the entropy and KL
    terms still shape p. Encoder discriminators default to True, with c_entropy 0, wherever a run sets
    neither (EmbeddingConfig.optimiser_defaults); causal LMs to False."""
    rescore_top_k: int = 0
    """0: each restart's label is its argmax (the paper). k > 0: the k most probable tokens of every slot
    of every restart also become candidate labels (one slot changed from the argmax at a time); all
    candidates are scored exactly on the training examples and the best by AUROC wins."""
    rescore_prior: int = 0
    """At the pick, like `rescore_top_k`: the k tokens of every slot that the discriminator's own next-token
    distribution there (q) ranks most above its mean on the inactive training examples, on the active ones, with
    each kept restart's label before that slot (causal LMs; an encoder has no q, so none)."""
    rescore_neighbours: int = 0
    """At the pick, like `rescore_top_k`: the k tokens whose label embeddings lie nearest (cosine) each kept
    restart's token in every slot (a search that settled next to the concept's word: its synonyms, its plural)."""
    search: Literal["gradient", "discrete"] = "gradient"
    """gradient: descend on a soft label (the paper's, or straight-through); discrete: GCG-style token swaps,
    ranked by the gradient at the one-hot label and scored exactly (straight_through and c_entropy do not apply;
    a restart has converged after `converge_patience` steps in a row with no improving swap)."""
    swap_candidates: int = 8
    """Discrete search: tokens per slot per step, the top ones by the gradient's predicted loss drop."""
    target_candidates: int = 4
    """Discrete search: also try, in every slot, the feature's this many most frequent active targets that are
    one allowed token (a token-identity feature's best label is often its token)."""
    prior_candidates: int = 0
    """Discrete search: also try, in every slot, this many tokens that the discriminator's own next-token
    distribution there (q, the KL term's prior) ranks most above its mean on the step's inactive examples, on its
    active ones: the concepts the discriminator itself would name for them (causal LMs; an encoder has no q)."""
    swap_batch: int = 8192
    """Discrete search: (feature, candidate, example) rows per scoring pass at most."""
    halve_every: int = 0
    """0: keep every restart; n: every n steps each feature keeps the better half of its restarts (by the
    step's loss, rounded up) until one is left (successive halving). A feature that stopped before a halving step
    is halved by its final losses, so its kept restarts are the same whatever else shares its batch."""
    seed: int = 0
    """Run seed; each feature's randomness derives from it and the feature id."""

    def __post_init__(self) -> None:
        if self.search not in ("gradient", "discrete"):
            raise ValueError(f"search must be 'gradient' or 'discrete', got {self.search!r}")
        for name in ("restarts", "max_steps", "label_tokens", "top_k", "converge_patience", "swap_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        # numpy seeds each feature's split from (seed, feature id), and it takes no negative numbers.
        for name in (
            "seed",
            "rescore_top_k",
            "rescore_prior",
            "rescore_neighbours",
            "target_candidates",
            "prior_candidates",
            "halve_every",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("lr", "c_kl", "c_entropy", "init_std", "weight_decay"):
            if not math.isfinite(getattr(self, name)):  # nan passes no comparison, inf every one below
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("lr", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "c_kl", "c_entropy"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must each lie in [0, 1), got {self.betas}: AdamW's two moment decay rates")
        if self.examples_per_step < 2 or self.examples_per_step % 2:
            raise ValueError(f"examples_per_step must be even and at least 2, got {self.examples_per_step}")
        if self.swap_batch < 1:
            raise ValueError(f"swap_batch must be at least 1, got {self.swap_batch}")
        if not 0 < self.converge_prob <= 1:
            raise ValueError(f"converge_prob must lie in (0, 1], got {self.converge_prob}")


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
    converged: bool


@dataclass
class _Restarts:
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


def optimise(
    disc: Discriminator,
    examples: EncodedExamples,
    tasks: list[FeatureTask],
    config: OptimiserConfig,
    on_step: Callable[[int, int], None] | None = None,
) -> list[FeatureLabel]:
    """Label every task's feature; one batched forward/backward per step over all live features.
    `on_step(step, live)` is called after each step with the number of features that took it (progress)."""
    n_feature, n_restart = len(tasks), config.restarts
    vocab = disc.label_embeddings.shape[0]
    device = disc.device
    samplers = [torch.Generator().manual_seed(_seed(config.seed, task.feature, 1)) for task in tasks]
    v = torch.stack([_initial_logits(config, task.feature, vocab) for task in tasks])  # [F R L V]
    v = v.to(device=device, dtype=disc.label_embeddings.dtype)
    head = disc.head_init.expand(n_feature, n_restart, -1).clone()  # [F R K]
    per_restart = torch.zeros(n_feature, n_restart, dtype=torch.long, device=device)
    state = _Restarts(
        kept=torch.arange(n_restart, device=device).expand(n_feature, -1).clone(),
        v=v,
        adam_m=torch.zeros_like(v),
        adam_s=torch.zeros_like(v),
        head=head,
        head_m=torch.zeros_like(head),
        head_s=torch.zeros_like(head),
        done=per_restart.bool(),
        streak=per_restart.clone(),
        steps=per_restart.clone(),
        last_terms=torch.zeros(n_feature, n_restart, 3, device=device),
        last_loss=torch.full((n_feature, n_restart), math.inf, device=device),
    )
    pool = _target_pool(tasks, config.target_candidates, device)  # [F M]
    failed: dict[int, str] = {}
    halved = 0

    for step in range(1, config.max_steps + 1):
        live = [f for f in range(n_feature) if f not in failed and not bool(state.done[f].all())]
        if not live:
            break
        idx = torch.tensor(live, device=device)
        example, target = _sample(tasks, samplers, live, config.examples_per_step, device)  # [F' N]
        if config.search == "discrete":
            record = swap_step(disc, examples, example, target, state.v[idx], state.head[idx], pool[idx], config)
        else:
            record = gradient_step(disc, examples, example, target, state.v[idx], state.head[idx], config)

        # A feature whose loss is not finite fails alone; the others go on.
        bad = ~torch.isfinite(record.loss).all(1)
        for i in torch.nonzero(bad).flatten().tolist():
            failed[live[i]] = f"loss became non-finite at step {step}"
        moving = ~state.done[idx] & ~bad[:, None]  # [F' R]: restarts that take this step
        if record.v_grad is not None:
            _adamw(state.v, state.adam_m, state.adam_s, record.v_grad, idx, moving, step, config, config.weight_decay)
        if record.v_next is not None:
            state.v[idx] = torch.where(moving[..., None, None], record.v_next, state.v[idx])
        if record.head_grad is not None:
            _adamw(state.head, state.head_m, state.head_s, record.head_grad, idx, moving, step, config, 0.0)
        state.steps[idx] += moving.long()
        state.last_terms[idx] = torch.where(moving[..., None], record.terms, state.last_terms[idx])
        state.last_loss[idx] = torch.where(moving, record.loss, state.last_loss[idx])

        # Converged: the search's test held for `patience` steps in a row.
        streak = state.streak[idx]
        state.streak[idx] = torch.where(moving & record.settled, streak + 1, torch.where(moving, 0, streak))
        state.done[idx] |= state.streak[idx] >= config.converge_patience
        if config.halve_every and step % config.halve_every == 0:
            halved += 1
            if state.kept.shape[1] > 1:
                state.keep(_better_half(state.last_loss))
        if on_step is not None:
            on_step(step, len(live))
    # Halvings scheduled after every feature stopped: the losses are final now, so they are taken at once. A
    # feature's kept restarts then never depend on whether other features in its batch ran longer.
    if config.halve_every:
        for _ in range(halved, config.max_steps // config.halve_every):
            if state.kept.shape[1] > 1:
                state.keep(_better_half(state.last_loss))

    return [
        _failed(task.feature, failed[f]) if f in failed else _pick_best(disc, examples, task, state, f, config)
        for f, task in enumerate(tasks)
    ]


def gradient_step(
    disc: Discriminator,
    examples: EncodedExamples,
    example: Tensor,
    target: Tensor,
    v: Tensor,
    head: Tensor,
    config: OptimiserConfig,
) -> StepRecord:
    """The soft label's step: the loss at v (Float[F R L V]) and its gradients; the caller moves v by AdamW."""
    logits, head = v.clone().requires_grad_(True), head.clone().requires_grad_(True)
    loss, terms, p = objective(disc, examples, example, target, logits, config, head)  # [F R], [F R 3]
    grad, head_grad = torch.autograd.grad(loss.sum(), [logits, head], allow_unused=True)
    peaked = (p.detach().amax(-1) > config.converge_prob).all(-1)  # every slot's top probability
    return StepRecord(loss.detach(), terms.detach(), grad, None, head_grad, peaked)


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
    terms = _loss_terms(scored, one_hot, torch.zeros_like(one_hot), target)
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
    weight = _contrast_weight(target)[:, None, :, None]  # [F 1 N 1]
    contrast = [(log_q.detach() * weight).sum(2) for log_q in reference_logprobs]  # per slot, Float[F R|1 V]
    tokens = [c.topk(min(k, c.shape[-1]), dim=-1).indices.expand(n_feature, n_restart, -1) for c in contrast]
    return torch.stack(tokens, dim=2)


def _contrast_weight(active: Tensor) -> Tensor:
    """Float like Bool `active` [..., N]: 1/(active count) on the active, -1/(inactive count) on the others, so a
    weighted sum over N is the mean on the active minus the mean on the inactive."""
    on = active.float()
    return on / on.sum(-1, keepdim=True).clamp_min(1) - (1 - on) / (1 - on).sum(-1, keepdim=True).clamp_min(1)


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
        losses.append(_discrete_loss(scored, ids, target, config.c_kl))
    return torch.cat(losses, dim=1).view(n_feature, n_restart, n_candidate)


def _discrete_loss(scored: Scored, ids: Tensor, target: Tensor, c_kl: float) -> Tensor:
    """answer + c_kl * KL for discrete labels Int[F C L]: `_loss_terms` at a one-hot p, without building it."""
    grid = scored.score.shape  # [F C N]
    answer = scored.answer_nll.gather(-1, target[:, None, :, None].expand(*grid, 1).long()).squeeze(-1).mean(-1)
    kl = torch.zeros_like(answer)
    for slot, log_q in enumerate(scored.reference_logprobs):
        picked = log_q.expand(*grid, -1).gather(-1, ids[:, :, slot, None, None].expand(*grid, 1))  # [F C N 1]
        kl = kl - picked.squeeze(-1).mean(-1)
    return answer + c_kl * kl / max(len(scored.reference_logprobs), 1)


def _better_half(loss: Tensor) -> Tensor:
    """Columns Int[F ceil(R/2)] of each feature's restarts with the lowest loss (Float[F R]), in their order."""
    n_keep = (loss.shape[1] + 1) // 2
    best = torch.sort(loss.nan_to_num(math.inf), dim=1, stable=True).indices[:, :n_keep]
    return best.sort(dim=1).values


def _target_pool(tasks: list[FeatureTask], size: int, device: torch.device) -> Tensor:
    """Int[F M]: each task's first `size` target ids, padded with -1."""
    pool = torch.full((len(tasks), size), -1, dtype=torch.long)
    for f, task in enumerate(tasks):
        ids = task.target_ids[:size]
        pool[f, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return pool.to(device)


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
    terms = _loss_terms(scored, p, logits.log_softmax(-1), target)
    loss = terms[..., 0] + config.c_kl * terms[..., 1] + config.c_entropy * terms[..., 2]
    return loss, terms, p


def _loss_terms(scored: Scored, p: Tensor, log_p: Tensor, target: Tensor) -> Tensor:
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


def _adamw(
    v: Tensor,
    m: Tensor,
    s: Tensor,
    grad: Tensor,
    idx: Tensor,
    moving: Tensor,
    step: int,
    config: OptimiserConfig,
    weight_decay: float,
) -> None:
    """AdamW on the rows `idx` of v (Float[F R ...]), only for the restarts that are `moving` (others stay frozen)."""
    beta1, beta2 = config.betas
    mask = moving.view(*moving.shape, *[1] * (v.dim() - 2))
    new_m = torch.where(mask, beta1 * m[idx] + (1 - beta1) * grad, m[idx])
    new_s = torch.where(mask, beta2 * s[idx] + (1 - beta2) * grad * grad, s[idx])
    # Every moving restart has moved on every step so far, so one bias correction fits all.
    update = (new_m / (1 - beta1**step)) / ((new_s / (1 - beta2**step)).sqrt() + 1e-8)
    decayed = v[idx] * (1 - config.lr * weight_decay)
    v[idx] = torch.where(mask, decayed - config.lr * update, v[idx])
    m[idx], s[idx] = new_m, new_s


def _sample(
    tasks: list[FeatureTask], samplers: list[torch.Generator], live: list[int], n: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Half active, half inactive training examples per live feature (with replacement only when too few)."""
    rows = [
        np.concatenate(
            [_draw(tasks[f].train_active, n // 2, samplers[f]), _draw(tasks[f].train_inactive, n // 2, samplers[f])]
        )
        for f in live
    ]
    example = torch.from_numpy(np.stack(rows)).to(device)
    target = torch.zeros(len(live), n, dtype=torch.bool, device=device)
    target[:, : n // 2] = True
    return example, target


def _draw(pool: np.ndarray, k: int, generator: torch.Generator) -> np.ndarray:
    if len(pool) >= k:
        return pool[torch.randperm(len(pool), generator=generator)[:k].numpy()]
    return pool[torch.randint(len(pool), (k,), generator=generator).numpy()]


@torch.no_grad()
def _pick_best(
    disc: Discriminator,
    examples: EncodedExamples,
    task: FeatureTask,
    state: _Restarts,
    f: int,
    config: OptimiserConfig,
) -> FeatureLabel:
    """Discretise each kept restart of feature `f` (argmax per slot), score it on held-out examples, keep the best.

    With `rescore_top_k`, `rescore_prior` or `rescore_neighbours`, the winner is instead the best on the training
    examples of the restarts' labels and their one-slot variants from those sources. Restarts dropped by
    successive halving get no held-out AUROC (NaN).
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
        converged=bool(done[best]),
    )


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
    weight = _contrast_weight(torch.from_numpy(train_active).to(disc.device))  # [N]
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


def _initial_logits(config: OptimiserConfig, feature: int, vocab: int) -> Tensor:
    """v ~ N(0, init_std^2) for each restart and slot, from the restart's own generator."""
    return torch.stack(
        [
            torch.randn(
                config.label_tokens,
                vocab,
                generator=torch.Generator().manual_seed(_seed(config.seed, feature, 2, restart)),
            )
            * config.init_std
            for restart in range(config.restarts)
        ]
    )


def _failed(feature: int, error: str) -> FeatureLabel:
    nan = float("nan")
    return FeatureLabel(
        feature=feature,
        status="failed",
        error=error,
        label_ids=(),
        top_ids=(),
        top_probs=(),
        heldout_auroc=nan,
        heldout_balanced_accuracy=nan,
        heldout_f1=nan,
        restart_aurocs=(),
        loss_answer=nan,
        loss_kl=nan,
        loss_entropy=nan,
        steps=0,
        converged=False,
    )


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (run seed, feature id, stream, restart)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))
