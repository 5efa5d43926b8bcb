"""Running per-feature statistics of a harvest, kept on the device at a fixed size, whatever the corpus length.

Per batch of SAE latents: counts of active tokens (latent > 0), the maximum and the sum of activations; the exact
top `top_examples` tokens by activation (a running top-k); a uniform random sample of `reservoir` active tokens and
of `inactive_examples` inactive tokens (each token gets one random key, shared by all features; the largest keys are
kept: a reservoir sample, batched). Tokens are global indices (window * context_len + position); this module knows
nothing of models, tokenizers, texts or files.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from labeler.harvest.config import SamplingConfig


class FeatureStats:
    """Fixed-size running state per feature, updated on the device (see the module docstring).

    A batch is read sparsely: its active (token, feature) entries once, then each running top-k is offered
    only the entries that beat its current k-th best, so after the first batches most of the batch's
    feature x token matrix is never touched again (the counts, maxima and sums come from the same entries).
    """

    def __init__(self, features: int, config: SamplingConfig, device: torch.device) -> None:
        self.count = torch.zeros(features, dtype=torch.int64, device=device)
        self.max = torch.zeros(features, dtype=torch.float32, device=device)
        self.sum = torch.zeros(features, dtype=torch.float64, device=device)
        self.non_finite = torch.zeros(features, dtype=torch.int64, device=device)
        self.skipped_tokens = 0
        self.top = _TopK(features, config.top_examples, device)
        self.sample = _TopK(features, config.reservoir, device)
        self.inactive = _TopK(features, config.inactive_examples, device)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)

    def update(self, acts: Tensor, token: Tensor) -> None:
        """acts: Float[token feature] of valid tokens only; token: Int[token], global token indices.

        A NaN or infinite entry counts in `non_finite` and is neither active nor inactive; a token where every
        latent is (the model overflowed there) is left out and counted in `skipped_tokens`."""
        acts = acts.float()
        features = self.count.shape[0]
        if not bool(torch.isfinite(acts).all()):
            bad = ~torch.isfinite(acts)
            broken = bad.all(1)
            if bool(broken.any()):
                self.skipped_tokens += int(broken.sum())
                acts, token, bad = acts[~broken], token[~broken], bad[~broken]
            self.non_finite += bad.sum(0)
            acts = acts.masked_fill(bad, math.nan)  # NaN compares false both ways: out of every sample
        at, feature = (acts > 0).nonzero(as_tuple=True)  # the active entries, in (token, feature) order
        value = acts[at, feature]
        self.count += torch.bincount(feature, minlength=features)
        self.sum += torch.bincount(feature, weights=value.double(), minlength=features)
        self.max.scatter_reduce_(0, feature, value, "amax")
        at_token = token[at]
        self.top.offer(feature, value, at_token, value)
        # One random key per token, shared by all features: for each feature on its own the keys are still
        # independent and uniform, so keeping the largest keys is an exact uniform sample per feature.
        key = torch.rand(acts.shape[0], generator=self.generator, device=acts.device)
        self.sample.offer(feature, key[at], at_token, value)
        self._update_inactive(acts, key, token)

    def _update_inactive(self, acts: Tensor, key: Tensor, token: Tensor) -> None:
        """The inactive sample, mostly from the head of the batch's tokens by key.

        The head is the batch's tokens with the largest keys: at most 2k + 64 of them, and only those above
        the lowest k-th best key any feature holds (no other token can enter any feature's sample). A
        feature's sample is exact from the head alone when the head holds k of its inactive tokens, or when
        no token outside the head can beat its k-th best key; the others (dense features, active on most of
        the head) are done over the whole batch.
        """
        k = self.inactive.k
        if k == 0:
            return
        floor = self.inactive.score[:, -1]  # Float[feature]: the k-th best key so far (-inf while filling)
        sorted_key, order = key.sort(descending=True)
        head = min(2 * k + 64, int((sorted_key > floor.min()).sum()))
        if head == 0:
            return
        # The best key left out of the head: no feature whose k-th best is at least that can gain from the rest.
        outside = sorted_key[head] if head < len(key) else torch.tensor(-math.inf, device=key.device)
        order = order[:head]
        head_acts = acts[order]  # Float[head feature]
        inactive = (head_acts <= 0).T  # Bool[feature head], head in decreasing key order
        rank = inactive.cumsum(1) - 1
        exact = (rank[:, -1] + 1 >= k) | (outside <= floor)
        head_rows = exact.nonzero(as_tuple=True)[0]
        if len(head_rows):
            self.inactive.merge_ranked(
                head_rows,
                inactive[head_rows],
                rank[head_rows],
                key[order],
                token[order],
                head_acts[:, head_rows].T,
            )
        dense = (~exact).nonzero(as_tuple=True)[0]
        if len(dense):
            acts_dense = acts[:, dense].T  # Float[dense token]
            keys = torch.where(acts_dense <= 0, key, -math.inf)
            score, where = keys.topk(min(k, keys.shape[1]), dim=1)
            self.inactive.merge(dense, score, token[where], acts_dense.gather(1, where))


class _TopK:
    """The k largest scores per feature seen so far, with their token indices and activations.

    Each feature's row is kept sorted, best first; unused slots have score -inf. Scores are >= 0
    (activations of active tokens, or random keys in [0, 1))."""

    def __init__(self, features: int, k: int, device: torch.device) -> None:
        self.k = k
        self.score, self.token, self.act = _unused_slots(features, k, device)

    def offer(self, feature: Tensor, score: Tensor, token: Tensor, act: Tensor) -> None:
        """Sparse candidates (Int/Float[entry]): each feature keeps the k best of its old and its new."""
        if self.k == 0:
            return
        beats = score > self.score[feature, -1]
        feature, score, token, act = feature[beats], score[beats], token[beats], act[beats]
        if len(feature) == 0:
            return
        # Sort by feature, then by score descending, with one int64 key: a float32 >= 0 orders like its bits.
        bits = score.float().view(torch.int32).long()
        order = (feature * 2**31 + (2**31 - 1 - bits)).sort(stable=True).indices  # ties: the earlier token first
        feature, score, token, act = feature[order], score[order], token[order], act[order]
        rows, inverse, counts = torch.unique_consecutive(feature, return_inverse=True, return_counts=True)
        rank = torch.arange(len(feature), device=feature.device) - (counts.cumsum(0) - counts)[inverse]
        keep = rank < self.k
        width = int(min(int(counts.max()), self.k))
        new_score, new_token, new_act = _unused_slots(len(rows), width, score.device)
        at = (inverse[keep], rank[keep])
        new_score[at], new_token[at], new_act[at] = score[keep].float(), token[keep], act[keep].float()
        self.merge(rows, new_score, new_token, new_act)

    def merge_ranked(
        self, rows: Tensor, chosen: Tensor, rank: Tensor, score: Tensor, token: Tensor, act: Tensor
    ) -> None:
        """Candidates shared by all `rows`: score/token (Float/Int[column], score decreasing), chosen and
        rank (Bool/Int[row column]: which columns each row takes, and their order), act (Float[row column])."""
        width = min(score.shape[0], self.k)
        slot = torch.where(chosen & (rank < width), rank, width)  # the rest go to a spare column, dropped
        new_score, new_token, new_act = _unused_slots(len(rows), width + 1, score.device)
        new_score.scatter_(1, slot, score.expand_as(slot).contiguous())
        new_token.scatter_(1, slot, token.expand_as(slot).contiguous())
        new_act.scatter_(1, slot, act.float())
        self.merge(rows, new_score[:, :width], new_token[:, :width], new_act[:, :width])

    def merge(self, rows: Tensor, score: Tensor, token: Tensor, act: Tensor) -> None:
        """Merge sorted new rows (Float/Int[row m], best first) into `rows` of the state; old wins ties."""
        old_score, old_token, old_act = self.score[rows], self.token[rows], self.act[rows]
        k, m = self.k, score.shape[1]
        # Merging two sorted lists: an entry's place is its own index plus how many of the other list go first.
        new_at = torch.searchsorted(-old_score, -score, right=True) + torch.arange(m, device=score.device)
        old_at = torch.searchsorted(-score, -old_score, right=False) + torch.arange(k, device=score.device)
        merged = [torch.empty((len(rows), k + m), dtype=x.dtype, device=x.device) for x in (score, token, act)]
        for out, old, new in zip(merged, (old_score, old_token, old_act), (score, token, act), strict=True):
            out.scatter_(1, old_at, old)
            out.scatter_(1, new_at, new)
        self.score[rows], self.token[rows], self.act[rows] = (x[:, :k] for x in merged)

    def kept(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per feature (numpy): scores, token indices, activations; unused slots have score -inf."""
        return self.score.cpu().numpy(), self.token.cpu().numpy(), self.act.cpu().numpy()


def _unused_slots(rows: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k slots holding nothing: scores -inf, token indices -1, activations 0."""
    return (
        torch.full((rows, width), -math.inf, device=device),
        torch.full((rows, width), -1, dtype=torch.int64, device=device),
        torch.zeros((rows, width), device=device),
    )
