"""Which features a harvest covers and which sampled tokens become each feature's quantile examples.

Pure numpy on the statistics `labeler.harvest.stats` kept: it knows nothing of the device, models, texts or files.
"""

from __future__ import annotations

import math

import numpy as np

from labeler.errors import ConfigError
from labeler.harvest.config import HarvestConfig, SamplingConfig


def selected_features(config: HarvestConfig, d_sae: int) -> np.ndarray:
    """The feature ids to harvest: `config.features` sorted and checked against the SAE's width, or all."""
    if config.features is None:
        return np.arange(d_sae)
    bad = [f for f in config.features if f >= d_sae]
    if bad:
        raise ConfigError(f"features {bad[:5]} do not exist: the SAE has {d_sae} features (0..{d_sae - 1})")
    return np.array(sorted(set(config.features)))


def quantile_picks(
    config: SamplingConfig, features: np.ndarray, maxima: np.ndarray, top_token: np.ndarray, sample: list[np.ndarray]
) -> np.ndarray:
    """Bool[feature slot] over the sample's slots: each feature's examples spread over the activation bins.

    Candidates are the sampled active tokens that are not already top examples. Bins are `quantiles` equal
    widths of (0, max]. Picks go round robin over the bins, one each per round, in a random order within a bin
    (seeded per feature), so that a bin short of candidates (often the top ones) leaves its share to the others.
    """
    score, token, act = sample
    n_features, width = score.shape
    picked = np.zeros((n_features, width), dtype=bool)
    if config.quantile_examples == 0 or width == 0:
        return picked
    candidate = (score > -math.inf) & ~(token[:, :, None] == top_token[:, None, :]).any(-1)
    edges = np.linspace(0.0, maxima, config.quantiles + 1, axis=-1)  # Float[feature edge]
    bins = np.minimum((edges[:, None, 1:] < act[:, :, None]).sum(-1), config.quantiles - 1)  # (edge_b, edge_b+1]
    bins = np.where(candidate, bins, config.quantiles)  # non-candidates in a last bin, never picked
    noise = np.stack([np.random.default_rng([config.seed, int(f)]).random(width) for f in features])
    order = np.argsort(bins + noise, axis=1)  # by bin, randomly within a bin
    sorted_bins = np.take_along_axis(bins, order, 1)
    position = np.broadcast_to(np.arange(width), (n_features, width))
    starts = np.where(np.diff(sorted_bins, axis=1, prepend=-1) != 0, position, 0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, position - np.maximum.accumulate(starts, axis=1), 1)  # rank within its bin
    round_robin = np.where(candidate, rank * config.quantiles + bins, np.iinfo(np.int64).max)
    first = np.argsort(round_robin, axis=1, kind="stable")[:, : config.quantile_examples]
    np.put_along_axis(picked, first, np.take_along_axis(candidate, first, 1), 1)
    return picked
