"""The quantile sample selection (labeler/harvest/select.py) against a naive loop."""

from __future__ import annotations

import numpy as np

from labeler.harvest.config import SamplingConfig
from labeler.harvest.select import quantile_picks


def test_quantile_picks_match_a_naive_round_robin() -> None:
    """The vectorised pick equals a per-feature loop: candidates are sampled tokens not among the top ones, binned
    with searchsorted over (0, max], taken one per bin per round in the same random order within a bin."""
    cfg = SamplingConfig(quantile_examples=7, quantiles=4, seed=3)
    rng = np.random.default_rng(0)
    n_features, width = 9, 12
    act = rng.exponential(size=(n_features, width)) ** 3  # skewed: the top bins run short
    score = np.where(rng.random((n_features, width)) < 0.8, rng.random((n_features, width)), -np.inf)
    token = np.stack([rng.permutation(40)[:width] for _ in range(n_features)])
    top_token = np.stack([np.concatenate([rng.choice(token[f], 2, replace=False), [-1]]) for f in range(n_features)])
    maxima = act.max(1) * 1.1
    maxima[0] = act[0].max()  # an activation exactly at the top edge
    features = np.arange(100, 100 + n_features)
    picked = quantile_picks(cfg, features, maxima, top_token, [score, token, act])
    for f in range(n_features):
        noise = np.random.default_rng([cfg.seed, int(features[f])]).random(width)
        slots = [j for j in range(width) if score[f, j] > -np.inf and token[f, j] not in top_token[f]]
        edges = np.linspace(0.0, maxima[f], cfg.quantiles + 1)
        bins = {
            j: int(np.clip(np.searchsorted(edges, act[f, j], side="left") - 1, 0, cfg.quantiles - 1)) for j in slots
        }
        queues = [sorted((j for j in slots if bins[j] == b), key=lambda j: noise[j]) for b in range(cfg.quantiles)]
        expected: list[int] = []
        while len(expected) < cfg.quantile_examples and any(queues):
            for queue in queues:
                if queue and len(expected) < cfg.quantile_examples:
                    expected.append(queue.pop(0))
        assert sorted(np.flatnonzero(picked[f]).tolist()) == sorted(expected), f
