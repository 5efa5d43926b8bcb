"""The running per-feature statistics (labeler/harvest/stats.py) against brute force."""

from __future__ import annotations

import math

import torch

from labeler.harvest.config import SamplingConfig
from labeler.harvest.stats import FeatureStats


def test_samples_are_the_largest_keys_exactly() -> None:
    """The reservoir samples equal a brute-force pick of the largest random keys (dense features included)."""
    cfg = SamplingConfig(reservoir=7, inactive_examples=5, top_examples=3)
    features, batches, width = 12, 6, 300  # wider than the head of 2k + 64 largest keys; later batches mostly lose
    bias = torch.linspace(-2.5, 2.5, features)  # from rare to active on nearly every token
    acts = [torch.relu(torch.randn(width, features) + bias) for _ in range(batches)]
    stats = FeatureStats(features, cfg, torch.device("cpu"))
    for b, a in enumerate(acts):
        stats.update(a, torch.arange(b * width, (b + 1) * width))
    generator = torch.Generator().manual_seed(cfg.seed)
    keys = torch.cat([torch.rand(width, generator=generator) for _ in range(batches)])
    every = torch.cat(acts)  # Float[token feature]
    for f in range(features):
        active = every[:, f] > 0
        for kept, mask, k in ((stats.sample, active, 7), (stats.inactive, ~active, 5)):
            expected = set(torch.where(mask, keys, -1.0).topk(k).indices[: int(mask.sum())].tolist())
            got = {int(t) for t, s in zip(kept.token[f], kept.score[f], strict=True) if s > -math.inf}
            assert got == expected, (f, k)
            for t, s, a in zip(kept.token[f], kept.score[f], kept.act[f], strict=True):
                assert s == -math.inf or a == every[t, f]  # each kept token with its own activation
        assert torch.equal(stats.count[f], active.sum()) and stats.max[f] == every[:, f].max()
        top = set(torch.where(active, every[:, f], -1.0).topk(3).indices[: int(active.sum())].tolist())
        assert {int(t) for t, s in zip(stats.top.token[f], stats.top.score[f], strict=True) if s > -math.inf} == top


def test_tokens_where_every_latent_is_non_finite_are_left_out() -> None:
    """Such a token (a model-side overflow) is skipped and counted; a lone non-finite entry is only counted."""
    cfg = SamplingConfig(reservoir=4, inactive_examples=4, top_examples=2)
    acts = torch.relu(torch.randn(20, 6))
    acts[3] = math.nan
    acts[5, 2] = math.inf
    stats = FeatureStats(6, cfg, torch.device("cpu"))
    stats.update(acts, torch.arange(20))
    assert stats.skipped_tokens == 1
    assert stats.non_finite.tolist() == [0, 0, 1, 0, 0, 0]
    kept = torch.cat([acts[:3], acts[4:]])
    assert torch.equal(stats.count, (kept.nan_to_num(posinf=0) > 0).sum(0))
    for state in (stats.top, stats.sample, stats.inactive):
        taken = state.token[state.score > -math.inf].tolist()
        assert 3 not in taken and (5 not in state.token[2].tolist() or state is not stats.top)
        assert torch.isfinite(state.act).all()
