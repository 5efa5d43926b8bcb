"""A causal LM sharded in place over the T ranks of a torch.distributed process group (Megatron split).

Each rank keeps 1/T of every decoder layer: q/k/v and gate/up are split by output columns (so by
attention heads, kv heads and MLP units), o and down by input rows, and the partial outputs of o and
down are summed across the ranks by one all-reduce each. Which modules are split, and how, comes
from the model's own tensor-parallel plan (`config.base_model_tp_plan` in transformers; Llama,
Gemma 2, Qwen, Mistral carry one), or from the Megatron plan below for a model without one.

transformers' own path (`from_pretrained(tp_plan="auto")`, `apply_tensor_parallelism`) turns the
weights into DTensors on a DeviceMesh and shards while loading; here the split is done on a model
already built, with plain tensors, so that everything downstream of the linear layers (the KV cache
of `CausalLMDiscriminator.encode`, the shared-prefix attention of prefix_attention.py) sees ordinary
tensors holding this rank's heads only. The config's head counts are set to the rank-local ones.

Not split (first version): the embeddings and the LM head are replicated on every rank, and the model
is loaded whole on every rank before it is cut (host memory T times the model while loading).

Gradients are exact: the input of a column-parallel layer is all-reduced in the backward pass and
the output of a row-parallel one in the forward pass (Megatron's f and g), so every rank ends with
the full gradient with respect to its (replicated) inputs, e.g. the soft label.
This module knows nothing of Ray; the process group is the caller's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.errors import InputError

Style = Literal["colwise", "rowwise"]

MEGATRON_PLAN: dict[str, Style] = {
    "layers.*.self_attn.q_proj": "colwise",
    "layers.*.self_attn.k_proj": "colwise",
    "layers.*.self_attn.v_proj": "colwise",
    "layers.*.self_attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
}
"""The plan for a model whose config carries none (module names relative to the base model)."""


class TensorParallelError(InputError):
    """A model that cannot be split over this many ranks, or a plan this module cannot apply."""


class RankLostError(Exception):
    """A collective over the gang's process group failed: a peer rank is gone (killed, or its node lost).

    Not a RuntimeError, which is what gloo and NCCL raise (and torch.OutOfMemoryError is, which the labelling loop
    records as the failure of the features it was labelling): this one is no feature's fault and reaches the pool,
    which rebuilds the gang and retries the chunk."""


@contextlib.contextmanager
def gang_collective() -> Iterator[None]:
    """Around every collective of a gang: its failure is raised as RankLostError."""
    try:
        yield
    except RuntimeError as err:  # gloo's errors are RuntimeErrors; NCCL's DistBackendError is one
        raise RankLostError(f"a collective of the gang failed (is a rank gone?): {err}") from err


def _all_reduce(x: Tensor, group: dist.ProcessGroup | None) -> None:
    with gang_collective():
        dist.all_reduce(x, group=group)


class _CopyToRanks(torch.autograd.Function):
    """Megatron's f: identity forward; the backward sums the input's gradient over the ranks."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous()
        _all_reduce(grad, ctx.group)
        return grad, None


class _SumOverRanks(torch.autograd.Function):
    """Megatron's g: the forward sums the partial outputs over the ranks; identity backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        x = x.contiguous()
        _all_reduce(x, group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class ColumnParallelLinear(nn.Module):
    """This rank's slice of a linear layer's output features."""

    def __init__(self, linear: nn.Linear, rank: int, world: int, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        out = linear.out_features // world
        rows = slice(rank * out, (rank + 1) * out)
        self.weight = nn.Parameter(linear.weight.detach()[rows].clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach()[rows].clone(), False)
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(_CopyToRanks.apply(x, self.group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """This rank's slice of a linear layer's input features; the partial products are summed over ranks."""

    def __init__(self, linear: nn.Linear, rank: int, world: int, group: dist.ProcessGroup | None) -> None:
        super().__init__()
        width = linear.in_features // world
        cols = slice(rank * width, (rank + 1) * width)
        self.weight = nn.Parameter(linear.weight.detach()[:, cols].clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), False)
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        out = _SumOverRanks.apply(F.linear(x, self.weight), self.group)
        return out if self.bias is None else out + self.bias  # the bias once, after the sum


def tensor_parallel_plan(model: PreTrainedModel) -> dict[str, Style]:
    """The model's plan (full module-name patterns -> style), its own where it has one, else Megatron's.

    Only the plain column/row styles are taken; a plan that asks for others (packed, MoE, sequence
    parallel) is refused rather than half applied. The embedding's own entry (`embedding_rowwise`, which some
    transformers versions add for tied embeddings) is left out: every rank keeps the whole embedding.
    """
    config = model.config.get_text_config()
    plan = getattr(config, "base_model_tp_plan", None) or MEGATRON_PLAN
    own: dict[str, str] = {name: style for name, style in plan.items() if style != "embedding_rowwise"}
    unknown = {name: style for name, style in own.items() if style not in ("colwise", "rowwise")}
    if unknown:
        raise TensorParallelError(
            f"{type(model).__name__}'s tensor-parallel plan uses styles this sharding does not implement: {unknown}; "
            "only dense models with colwise/rowwise plans (Llama, Gemma, Qwen, Mistral) can be sharded"
        )
    prefix = model.base_model_prefix
    return {f"{prefix}.{name}" if prefix else name: style for name, style in own.items()}  # type: ignore[misc]


def check_divisible(config: Any, world: int) -> tuple[int, int]:
    """The model's (heads, kv heads) when its heads, kv heads and MLP units split evenly over `world` ranks."""
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    for what, count in [("attention heads", heads), ("kv heads", kv_heads), ("MLP units", config.intermediate_size)]:
        if count % world:
            raise TensorParallelError(
                f"the model has {count} {what}, not divisible by tensor_parallel={world}: "
                f"choose a tensor_parallel that divides {count}"
            )
    return heads, kv_heads


def shard_model(model: PreTrainedModel, group: dist.ProcessGroup | None = None) -> PreTrainedModel:
    """Split `model`'s layers over the ranks of `group` (the default group when None), in place."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    config = model.config.get_text_config()
    heads, kv_heads = check_divisible(config, world)
    patterns = [(re.compile("^" + re.escape(name).replace(r"\*", r"\d+") + "$"), style) for name, style in
                tensor_parallel_plan(model).items()]  # fmt: skip
    split = 0
    for name, module in list(model.named_modules()):
        style = next((style for pattern, style in patterns if pattern.match(name)), None)
        if style is None:
            continue
        if not isinstance(module, nn.Linear):
            raise TensorParallelError(f"{name} is a {type(module).__name__}, not a linear layer: it cannot be split")
        parallel = ColumnParallelLinear if style == "colwise" else RowParallelLinear
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, parallel(module, rank, world, group))
        split += 1
    if not split:
        raise TensorParallelError(f"no layer of {type(model).__name__} matches its tensor-parallel plan")
    # The attention layers reshape by head_dim (kept) and -1, so they run on the local heads; the config says so too.
    if getattr(config, "head_dim", None) is None:
        config.head_dim = int(config.hidden_size) // heads
    config.num_attention_heads = heads // world
    config.num_key_value_heads = kv_heads // world
    config.intermediate_size = int(config.intermediate_size) // world
    config.tensor_parallel_size = world
    return model


def sharded_discriminator(config: CausalLMConfig, group: dist.ProcessGroup | None = None) -> CausalLMDiscriminator:
    """Load `config`'s model, keep this rank's shard of it and wrap it as the usual causal-LM discriminator."""
    whole = CausalLMDiscriminator.from_config(config)
    return CausalLMDiscriminator(shard_model(whole.model, group), whole.tokenizer, config, whole.name)
