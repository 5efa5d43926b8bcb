"""The batched optimiser: F features x R restarts of token-space gradient descent in one forward pass.

Each restart owns logits v over the allowed tokens for each of L label slots; the soft label is
p = softmax(v) and enters the discriminator as p @ E. One step samples a balanced batch of training
examples per feature (shared by its restarts), scores every (feature, restart, example) at once and
minimises, per restart,

    answer cross-entropy + c_kl * KL(p || q) + c_entropy * H(p)      (loss.py)

with AdamW (together with the discriminator's per-restart head parameters, if it has any). A restart
stops when its label has converged; a feature leaves the batch when all its restarts have. At the end
the pick (pick.py) turns each feature's restarts into its label. `search="discrete"` replaces the gradient
step by discrete search's swap step (discrete.py). Successive halving (`halve_every`) drops the worse half
of each feature's restarts at set steps, in either search.
The engine knows nothing about tokenization, files or metrics.

Randomness is per feature (example sampling) and per (feature, restart) (initial v), seeded from the
run seed and the feature id, so a feature gets the same label whether it runs alone or in a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.discrete import swap_step, target_pool
from labeler.optimise.loss import objective
from labeler.optimise.pick import pick_best
from labeler.optimise.task import FeatureLabel, FeatureTask, Restarts, StepRecord


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
    state = Restarts(
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
    pool = target_pool(tasks, config.target_candidates, device)  # [F M]
    failed: dict[int, str] = {}
    halved = 0
    steps_total = torch.zeros(n_feature, dtype=torch.long, device=device)  # every restart's steps, dropped ones too

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
        steps_total[idx] += moving.long().sum(1)
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
        _failed(task.feature, failed[f])
        if f in failed
        else pick_best(disc, examples, task, state, f, config, steps_total[f])
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


def _better_half(loss: Tensor) -> Tensor:
    """Columns Int[F ceil(R/2)] of each feature's restarts with the lowest loss (Float[F R]), in their order."""
    n_keep = (loss.shape[1] + 1) // 2
    best = torch.sort(loss.nan_to_num(math.inf), dim=1, stable=True).indices[:, :n_keep]
    return best.sort(dim=1).values


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
        steps_total=0,
        converged=False,
    )


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (run seed, feature id, stream, restart)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))
