"""Tensor-parallel worker gangs as the scheduler's Pool: with `workers.tensor_parallel` T above 1, each worker
is a gang of T actors sharing one sharded discriminator (labeler/discriminators/tensor_parallel.py).

A gang's ranks are placed together (one bundle per rank, STRICT_PACK) and joined in one process group. Rank 0 is
the worker the scheduler sees; a rank that dies takes its gang down, and the gang is rebuilt whole. It knows
nothing of how a chunk is labelled beyond broadcasting its feature ids.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from labeler.errors import ConfigError
from labeler.ray_pool import base
from labeler.run import metrics
from labeler.run.config import WorkersConfig
from labeler.run.scheduler import Chunk, ChunkOutcome, Completion
from labeler.run.sink import PartSink, SinkConfig
from labeler.run.worker import ChunkWorker, LabellerSpec


class GangRank(base.ReportingActor):
    """One rank of a tensor-parallel worker gang (wrapped by `ray.remote` at start).

    Rank 0 is the worker the scheduler sees: it takes a chunk, broadcasts its feature ids to the other
    ranks, labels it with them (every rank runs the same optimisation steps on its shard) and commits the
    part alone. The other ranks sit in `follow`, labelling whatever rank 0 broadcasts, until the gang is killed.
    """

    def __init__(
        self, spec: LabellerSpec, sink_url: str, sink_config: SinkConfig, metrics_port: int, metrics_host: str
    ) -> None:
        self.spec, self.sink_url, self.sink_config, self.metrics_port = spec, sink_url, sink_config, metrics_port
        self.metrics_host = metrics_host
        self.host = base.node_address()
        self.port = 0
        self.store: Any = None  # rank 0's TCPStore, hosted from `rendezvous` until the actor ends
        self.lock = threading.Lock()

    def rendezvous(self, world: int) -> tuple[str, int]:
        """Host the process group's store on this (rank 0's) node; its host and port.

        The store listens on a socket bound here to the node's address alone (127.0.0.1 on a local Ray; the
        store's own would listen on every interface) and to a port the OS picks as it binds (port 0), so no other
        process can take that port between choosing it and listening on it (a free port chosen first and bound
        later can be taken by another process in between: EADDRINUSE, and the run stops).
        """
        import torch.distributed as dist

        self.listener = socket.create_server((self.host, 0))
        port = self.listener.getsockname()[1]
        self.store = dist.TCPStore(
            self.host, port, world, is_master=True, wait_for_workers=False, master_listen_fd=self.listener.fileno()
        )
        return self.host, self.store.port

    def join(self, address: tuple[str, int], rank: int, world: int) -> str:
        """Join the gang's process group, load this rank's shard of the discriminator; rank 0's metrics endpoint."""
        import torch
        import torch.distributed as dist

        from labeler.discriminators.causal_lm import CausalLMConfig
        from labeler.discriminators.tensor_parallel import sharded_discriminator
        from labeler.run.worker import EngineLabeller

        if not isinstance(self.spec.discriminator, CausalLMConfig):
            raise ConfigError(
                f"workers.tensor_parallel={world} shards a causal-LM discriminator (hf:MODEL_DIR); "
                f"{self.spec.discriminator.kind!r} cannot be sharded: set workers.tensor_parallel to 1"
            )
        backend = "nccl" if ray.get_gpu_ids() and torch.cuda.is_available() else "gloo"
        store = self.store if rank == 0 else dist.TCPStore(*address, world, is_master=False)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        self.rank = rank
        self.labeller = EngineLabeller(self.spec, sharded_discriminator(self.spec.discriminator))
        if rank == 0:
            self.worker = ChunkWorker(
                LabellerSpec(**{**vars(self.spec), "engine": "noop"}), PartSink(self.sink_url, self.sink_config)
            )
            self.worker.labeller = _Broadcasting(self.labeller)
            self.worker.device = self.labeller.disc.device
            self.port = metrics.serve(self.metrics_port, self.metrics_host)
        return self.endpoint()

    def run(self, chunk: Chunk) -> ChunkOutcome:
        with self.lock:  # one chunk at a time: the ranks must see the same sequence of broadcasts
            try:
                return self.worker.run(chunk, self._on_step)
            finally:
                self.step = None

    def follow(self) -> int:
        """Label what rank 0 broadcasts, until the gang is killed; the chunks followed."""
        followed = 0
        while (features := _broadcast(None)) is not None:
            self.labeller.label(features)
            followed += 1
        return followed

    def endpoint(self) -> str:
        return metrics.endpoint(self.metrics_host, self.port, self.host)


class _Broadcasting:
    """Rank 0's labeller: sends each chunk's features to the other ranks before labelling it with them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def label(self, features: Any, on_step: Any = None) -> Any:
        _broadcast(features)
        return self.inner.label(features, on_step)


def _broadcast(features: Any) -> Any:
    """Rank 0's feature ids on every rank (the other ranks pass None)."""
    import torch.distributed as dist

    from labeler.discriminators.tensor_parallel import gang_collective

    box = [features]
    with gang_collective():
        dist.broadcast_object_list(box, src=0)
    return box[0]


class Gang:
    """The T actors of one worker, placed together (one bundle per rank, STRICT_PACK) and joined in one group."""

    def __init__(self, config: WorkersConfig, args: tuple[Any, ...], options: Mapping[str, Any]) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": config.num_cpus, "GPU": config.num_gpus}
        self.group = placement_group(
            [{k: v for k, v in bundle.items() if v}] * config.tensor_parallel, strategy="STRICT_PACK"
        )
        self.ranks: list[Any] = [
            ray.remote(GangRank)
            .options(
                **options,
                max_restarts=0,  # a dead rank takes the gang down; the pool rebuilds it whole
                max_concurrency=3,  # run, and progress or stop beside it
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=rank),
            )
            .remote(*args)
            for rank in range(config.tensor_parallel)
        ]
        self.started: Any = None  # rank 0's join: its endpoint once the whole gang holds the model
        self.followers: list[Any] = []

    def start(self) -> Any:
        """Join the process group (once placed); returns the ref that resolves when the gang is ready."""
        world = len(self.ranks)
        address = self.ranks[0].rendezvous.remote(world)
        joins = [rank.join.remote(address, i, world) for i, rank in enumerate(self.ranks)]
        self.started = joins[0]
        self.joined = joins
        return self.started

    def follow(self) -> None:
        self.followers = [rank.follow.remote() for rank in self.ranks[1:]]

    def kill(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        with contextlib.suppress(Exception):
            remove_placement_group(self.group)


class GangPool(base.ActorPool):
    """Tensor-parallel worker gangs as the scheduler's Pool: gang i is worker i, its rank 0 the actor that runs.

    A rank that dies takes its gang down: the chunk it held comes back as an error (the scheduler retries it,
    bounded by max attempts), and the gang is rebuilt whole (new placement group, new process group) up to
    `workers.max_restarts` times; the other gangs go on.
    """

    def _start(self) -> None:
        self.gangs = [self._build() for _ in range(self.config.count)]
        self.rebuilds = [0] * self.config.count
        self._down: set[int] = set()  # gangs being rebuilt (their ranks not all joined yet) or gone
        self._gone: set[int] = set()  # gangs that used up workers.max_restarts

    def _build(self) -> Gang:
        gang = Gang(self.config, self.args, self.options)
        gang.start()
        return gang

    def size(self) -> int:
        return len(self.gangs)

    def alive(self) -> int:
        return len(self.gangs) - len(self._down)

    def ready(self, timeout: float = 600) -> list[str]:
        """Wait for every gang to hold its shards; rank 0's metrics endpoints. WorkerStartError as RayPool's."""
        refs = [gang.started for gang in self.gangs]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            started = len(done)
            raise base.WorkerStartError(
                f"{len(pending)} of {len(refs)} gangs of {self.config.tensor_parallel} ranks did not start within "
                f"{timeout:.0f} s ({started} started): no node has {self.config.tensor_parallel} bundles of "
                f"{self.config.num_cpus} CPUs and {self.config.num_gpus} GPUs free; lower workers.count or "
                "workers.tensor_parallel, or add bigger nodes"
            )
        try:
            endpoints = [str(e) for e in ray.get(refs)]
            for gang in self.gangs:
                ray.get(gang.joined)
        except RayActorError as err:
            raise base.WorkerStartError(f"a gang could not start: {base.first_line(err)}") from err
        except RayError as err:
            raise base.WorkerStartError(
                f"a gang could not start: {base.first_line(getattr(err, 'cause', None) or err)}"
            ) from err
        for gang in self.gangs:
            gang.follow()
        return endpoints

    def available(self, worker: int) -> bool:
        if worker not in self._down:
            return True
        if worker in self._gone:
            return False
        gang = self.gangs[worker]
        ready, _ = ray.wait(gang.joined, num_returns=len(gang.joined), timeout=0)
        if len(ready) < len(gang.joined):
            return False
        try:
            ray.get(gang.joined)
        except RayError:  # the new gang died while starting: build another, if restarts are left
            self._rebuild(worker)
            return False
        gang.follow()
        self._down.discard(worker)
        return True

    def _rebuild(self, worker: int) -> None:
        self.gangs[worker].kill()
        self._down.add(worker)
        if self.rebuilds[worker] >= self.config.max_restarts:
            self._gone.add(worker)  # stays down: the other gangs go on
            return
        self.rebuilds[worker] += 1
        self.gangs[worker] = self._build()

    def endpoints(self) -> list[str]:
        up = [g for w, g in enumerate(self.gangs) if w not in self._down]
        answers = base.each_answer([g.ranks[0].endpoint.remote() for g in up], timeout=5)
        return [str(answer) for answer in answers if answer is not None]

    def progress(self) -> list[tuple[int, int] | None]:
        return base.each_answer([g.ranks[0].progress.remote() for g in self.gangs], timeout=2)

    def placements(self) -> list[list[dict[str, Any]]]:
        """Per gang, where each rank landed."""
        return [list(ray.get([rank.placement.remote() for rank in gang.ranks])) for gang in self.gangs]

    def _runner(self, worker: int) -> Any:
        return self.gangs[worker].ranks[0]

    def poll(self, timeout: float) -> list[Completion]:
        # A follower's `follow` returns only when its rank died: that gang is down too.
        followers = {ref: w for w, g in enumerate(self.gangs) if w not in self._down for ref in g.followers}
        ready = self._finished(timeout, also=list(followers)) or []
        broken = {followers[ref] for ref in ready if ref in followers}
        completions = []
        for ref in [r for r in ready if r in self._refs]:
            completion, kind = self._complete(ref)
            if kind in (base.WORKER_DIED, "RankLostError"):  # RankLostError: a peer died under a collective
                broken.add(completion.worker)
            completions.append(completion)
        for worker in broken:
            # Rank 0 may still be blocked in a collective with the dead rank: its chunk fails with the gang.
            for ref, (w, chunk) in list(self._refs.items()):
                if w == worker:
                    del self._refs[ref]
                    completions.append(Completion(w, chunk, error=f"{base.WORKER_DIED}: a rank of its gang died"))
            self._rebuild(worker)
        return completions

    def shutdown(self) -> None:
        for gang in self.gangs:
            gang.kill()
