"""Attention of many short suffixes over a cached prefix they share.

Every optimisation step asks the same example's prompt once per restart: R suffixes (label tokens
and the end of the question) after one cached prefix (the system text, the example's text and word).
A standard KV cache copies that prefix R times per step and concatenates each suffix's keys to it; on
a CPU that copying, not arithmetic, dominates the step. Here the R suffixes of a group of rows that
share a prefix are packed into one query sequence over one key sequence, [prefix; suffix 1; ...;
suffix R], with a mask that lets each suffix see the prefix and its own earlier tokens only. The prefix
keys and values are read once per group and take no gradient, and the whole layer is one fused
attention call (SDPA), or plain attention for models with logit soft-capping (Gemma 2).

It plugs into any Hugging Face model whose attention layers call `ALL_ATTENTION_FUNCTIONS` and pass
the forward's keyword arguments through (Llama, Gemma, GPT-2, Qwen, Mistral, ... in transformers 5):
the model runs with `attn_implementation=NAME` and gets `shared_prefix=SharedPrefix(...)` as a
keyword argument of its forward. Without that argument the layer falls back to PyTorch's SDPA, so
the same model also runs ordinary forwards (the prefix pass itself).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from labeler.errors import FeatureError

NAME = "labeler_shared_prefix"


class SharedPrefix:
    """The cached prefixes of a suffix batch whose rows come in groups sharing one prefix.

    Row b of the suffix batch belongs to group b // group_size; the group's prefix is row `group[g]`
    of the cache.
    """

    def __init__(
        self, keys: tuple[Tensor, ...], values: tuple[Tensor, ...], valid: Tensor, group: Tensor, group_size: int
    ) -> None:
        self.keys = keys
        """Per layer, Float[U kv_heads P head_dim]: the cache."""
        self.values = values
        self.group = group
        """Int[G]: each group's row of the cache."""
        self.group_size = group_size
        self.prefix_valid = valid[group]
        """Bool[G P]: where each group's prefix has a real token (it is left-padded)."""
        self._mask: Tensor | None = None
        self.calls = 0
        """Attention layers that used this prefix; checked against the model's layer count."""

    def mask(self, suffix_len: int) -> Tensor:
        """Bool[G 1 (R S) (P + R S)]: each suffix sees its group's prefix and its own earlier tokens."""
        if self._mask is None or self._mask.shape[-2] != self.group_size * suffix_len:
            n = self.group_size * suffix_len
            block = torch.arange(n, device=self.group.device) // suffix_len
            causal = torch.ones(n, n, dtype=torch.bool, device=self.group.device).tril()
            own = causal & (block[:, None] == block[None, :])  # [RS RS]
            groups, prefix_len = self.prefix_valid.shape
            prefix = self.prefix_valid[:, None, None, :].expand(groups, 1, n, prefix_len)
            self._mask = torch.cat([prefix, own.expand(groups, 1, n, n)], dim=-1)
        return self._mask


def shared_prefix_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    shared_prefix: SharedPrefix | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention for `query` (Float[B heads S d]) over its group's prefix and its own suffix `key`/`value`."""
    softcap = kwargs.get("softcap")
    if shared_prefix is None:
        if softcap is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        return _softcapped_attention(query, key, value, attention_mask, scaling, softcap), None
    if dropout:
        raise ValueError("shared-prefix attention is for frozen models in eval mode (dropout must be 0)")
    layer = cast(int, module.layer_idx)
    group, per_group = shared_prefix.group, shared_prefix.group_size
    rows, heads, length, dim = query.shape
    groups = rows // per_group
    prefix_len = shared_prefix.prefix_valid.shape[1]
    # The mask below ignores the model's sliding window. A suffix sees only its own prefix and tokens, so the
    # window cuts nothing as long as the longest prefix and one suffix fit in it, however many suffixes are packed.
    window = kwargs.get("sliding_window")
    if window is not None and prefix_len + length > window:
        raise FeatureError(
            f"the longest example prefix ({prefix_len} tokens) and the {length}-token suffix (label and end of the "
            f"question) exceed the model's sliding window of {window} tokens: shorten the example texts or the "
            "prompt template, or use fewer label tokens"
        )
    keys = torch.cat([shared_prefix.keys[layer][group], _pack(key, groups)], dim=2)  # [G kv (P + R S) d]
    values = torch.cat([shared_prefix.values[layer][group], _pack(value, groups)], dim=2)
    mask = shared_prefix.mask(length)
    if softcap is None:
        out = F.scaled_dot_product_attention(
            _pack(query, groups), keys, values, attn_mask=mask, scale=scaling, enable_gqa=True
        )
    else:
        out = _softcapped_attention(_pack(query, groups), keys, values, mask, scaling, softcap).transpose(1, 2)
    shared_prefix.calls += 1
    # [G heads (R S) d] -> [B S heads d], the layout attention functions return.
    out = out.view(groups, heads, per_group, length, dim).permute(0, 2, 3, 1, 4)
    return out.reshape(rows, length, heads, dim), None


def _pack(x: Tensor, groups: int) -> Tensor:
    """[B heads S d] -> [G heads (R S) d]: a group's R rows become one sequence."""
    rows, heads, length, dim = x.shape
    per_group = rows // groups
    return x.view(groups, per_group, heads, length, dim).transpose(1, 2).reshape(groups, heads, per_group * length, dim)


def _softcapped_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scaling: float | None, softcap: float
) -> Tensor:
    """Plain attention with Gemma 2's logit soft-capping, which SDPA lacks. Returns Float[B S heads d]."""
    rep = query.shape[1] // key.shape[1]
    scores = _capped(query @ repeat_kv(key, rep).transpose(-1, -2) * (scaling or query.shape[-1] ** -0.5), softcap)
    if mask is None:  # causal, no cache
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=query.device).tril()
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    # Queries on left padding see nothing; keep them finite (as SDPA does) so no NaN reaches the cache.
    scores = scores.where(scores.isfinite().any(-1, keepdim=True), 0.0)
    return (scores.float().softmax(-1).to(value.dtype) @ repeat_kv(value, rep)).transpose(1, 2).contiguous()


def _capped(scores: Tensor, softcap: float | None) -> Tensor:
    """Gemma-2's attention logit soft-capping, when the model has it."""
    return scores if softcap is None else softcap * torch.tanh(scores / softcap)


AttentionInterface.register(NAME, shared_prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
