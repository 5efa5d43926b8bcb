"""The sharded causal-LM discriminator against the whole one: T = 2 ranks on gloo, spawned here."""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_gemma2, tiny_llama, word_tokenizer
from transformers import LlamaConfig

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.tensor_parallel import (
    RankLostError,
    RowParallelLinear,
    TensorParallelError,
    check_divisible,
    shard_model,
)
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.engine import optimise
from labeler.optimise.labelling import LabelConfig, label_chunk, prepare_tasks
from labeler.optimise.loss import objective
from labeler.ray_pool import GangRank
from labeler.records.exemplars import group_by_feature, validate_exemplars
from labeler.toys.synthetic import default_world, feature_exemplars

CONTEXTS = ["the dog ran near the cat", "a red apple", "the big hammer saw a small green bird today", "a cow"]
TARGETS = ["dog", "apple", "bird", "cow"]
BUILDERS = {"llama": tiny_llama, "gemma2": tiny_gemma2}
WORLD = 2


def rendezvous(tmp_path: Path) -> str:
    """The ranks meet through a file, not a port: a free port chosen here could be taken before rank 0 binds it."""
    return f"file://{tmp_path / 'store'}"


def scores_and_gradient(disc: CausalLMDiscriminator) -> dict[str, torch.Tensor]:
    """Score and objective gradient w.r.t. the soft label's logits, for a fixed random label."""
    encoded = disc.encode(CONTEXTS, TARGETS)
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 2, len(disc.allowed_ids), generator=generator).requires_grad_(True)  # [F R L V]
    example = torch.tensor([[0, 1, 2, 3], [2, 2, 3, 0]])
    target = torch.tensor([[True, False, True, False], [False, True, True, False]])
    config = OptimiserConfig(label_tokens=2, restarts=3, c_kl=0.3, c_entropy=0.2)
    loss = objective(disc, encoded, example, target, logits, config)[0].sum()
    (grad,) = torch.autograd.grad(loss, logits)
    scored = disc.score(encoded, example, logits.detach().softmax(-1) @ disc.label_embeddings)
    return {"score": scored.score, "nll": scored.answer_nll, "grad": grad, "loss": loss.detach(),
            "key0": encoded.keys[0]}  # fmt: skip


def engine_labels(disc: CausalLMDiscriminator) -> list[tuple[int, ...]]:
    table = validate_exemplars(pa.Table.from_pylist(feature_exemplars(default_world(), 50, seed=3)))
    features = list(group_by_feature(table))[:3]
    config = LabelConfig(optimiser=OptimiserConfig(seed=5, max_steps=12, restarts=2, examples_per_step=8))
    contexts, targets, tasks = prepare_tasks(features, config)
    return [label.label_ids for label in optimise(disc, disc.encode(contexts, targets), tasks, config.optimiser)]


def _rank(rank: int, init_method: str, builder: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    try:
        tokenizer = word_tokenizer()
        torch.manual_seed(0)  # every rank builds the same weights, as if loaded from one folder
        model = BUILDERS[builder](len(tokenizer))
        config = CausalLMConfig(model="tiny")
        whole = CausalLMDiscriminator(copy.deepcopy(model), tokenizer, config)
        sharded = CausalLMDiscriminator(shard_model(model), tokenizer, config)
        result: dict[str, Any] = {
            "whole": scores_and_gradient(whole),
            "sharded": scores_and_gradient(sharded),
            "labels_whole": engine_labels(whole),
            "labels_sharded": engine_labels(sharded),
            "heads": (sharded.model.config.num_attention_heads, sharded.model.config.num_key_value_heads),
        }
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("builder", ["llama", "gemma2"])
def test_two_ranks_score_and_differentiate_like_the_whole_model(builder: str, tmp_path: Path) -> None:
    mp.spawn(_rank, args=(rendezvous(tmp_path), builder, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    whole = ranks[0]["whole"]
    for got in ranks:
        assert got["heads"] == (2, 1)  # 4 heads and 2 kv heads, half on each rank
        # Each rank caches its own kv head only: the shared-prefix attention runs on local heads.
        assert got["sharded"]["key0"].shape[1] == whole["key0"].shape[1] // WORLD
        for name in ("score", "nll", "grad", "loss"):
            torch.testing.assert_close(got["sharded"][name], whole[name], atol=1e-5, rtol=0)
        assert got["labels_sharded"] == got["labels_whole"] == ranks[0]["labels_whole"]
    assert whole["grad"].abs().max() > 1e-4  # the gradient compared is not zero


def _rank_that_loses_its_peer(rank: int, init_method: str, out: str) -> None:
    """Rank 1 joins, shards its model and dies; rank 0 then labels features and reports what label_chunk did."""
    import os

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD)
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    disc = CausalLMDiscriminator(shard_model(tiny_llama(len(tokenizer))), tokenizer, CausalLMConfig(model="tiny"))
    dist.barrier()
    if rank == 1:
        os._exit(0)  # as a killed process: no goodbye to the group
    table = validate_exemplars(pa.Table.from_pylist(feature_exemplars(default_world(), 50, seed=3)))
    config = LabelConfig(optimiser=OptimiserConfig(max_steps=2, restarts=1, examples_per_step=4))
    try:
        records = label_chunk(disc, list(group_by_feature(table))[:2], config)
        outcome = f"returned {[(r.status, r.error) for r in records]}"
    except RankLostError as err:
        outcome = f"raised RankLostError: {err}"
    (Path(out) / "outcome.txt").write_text(outcome, encoding="utf-8")
    os._exit(0)  # the group cannot be destroyed cleanly without its peer


@pytest.mark.slow
def test_a_lost_rank_is_raised_to_the_pool_not_recorded_as_the_features_failure(tmp_path: Path) -> None:
    """CI saw a killed rank's chunk committed with its features 'failed' (gloo: Connection reset by peer): the
    collective's RuntimeError was caught as the features' own. Now it leaves label_chunk, so the pool retries."""
    ranks = mp.spawn(_rank_that_loses_its_peer, args=(rendezvous(tmp_path), str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 300
    while not ranks.join(timeout=5):  # True once both ranks have ended; a rank's error raises
        assert time.monotonic() < deadline, "rank 0 is still labelling 300 s after its peer died"
    outcome = (tmp_path / "outcome.txt").read_text(encoding="utf-8")
    assert outcome.startswith("raised RankLostError: a collective of the gang failed"), outcome


@pytest.mark.parametrize(("heads", "kv_heads", "units", "what"), [(4, 2, 66, "4 attention heads"),
                         (6, 2, 66, "2 kv heads"), (6, 3, 64, "64 MLP units")])  # fmt: skip
def test_a_split_that_does_not_divide_is_refused(heads: int, kv_heads: int, units: int, what: str) -> None:
    config = LlamaConfig(
        hidden_size=48, intermediate_size=units, num_attention_heads=heads, num_key_value_heads=kv_heads
    )
    with pytest.raises(TensorParallelError, match=f"{what}, not divisible by tensor_parallel=3"):
        check_divisible(config, 3)
    assert check_divisible(config, 1) == (heads, kv_heads)


def test_row_parallel_adds_its_bias_once_after_the_sum(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=rendezvous(tmp_path), rank=0, world_size=1)
    try:
        linear = torch.nn.Linear(6, 4)
        x = torch.randn(3, 6)
        torch.testing.assert_close(RowParallelLinear(linear, 0, 1, None)(x), linear(x))
    finally:
        dist.destroy_process_group()


def test_a_gangs_store_listens_on_the_port_it_names() -> None:
    """CI once stopped a run with EADDRINUSE: rank 0 chose a free port, released it, and another process took it
    before the process group's store bound it. The store now binds a port of the OS's choice and names that one,
    on the node's address only."""
    rank0 = GangRank(None, "", None, 0, "127.0.0.1")  # type: ignore[arg-type]  # only the rendezvous is used
    host, port = rank0.rendezvous(2)
    rank0.store.set("ready", "yes")
    follower = dist.TCPStore(host, port, 2, is_master=False, timeout=timedelta(seconds=10))
    assert follower.get("ready") == b"yes"
    # ... and on the node's address alone, not on every interface (a local Ray's node address is 127.0.0.1).
    import psutil

    listening = {
        c.laddr.ip for c in psutil.Process().net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"
    }
    assert listening == {rank0.listener.getsockname()[0]} and not listening & {"0.0.0.0", "::"}
