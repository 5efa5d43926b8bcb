"""The Ray adapter: worker actors that each load a discriminator once and run chunks, as a scheduler Pool.

Each actor holds one `ChunkWorker` (work.py) built in its `__init__`, serves its own metrics and reports
the endpoint. Resources come from `WorkersConfig`: CPUs and GPUs per actor (a fraction shares a GPU
between small models). Ray restarts a dead actor (`max_restarts`); the chunk it held comes back to the
scheduler as an error and is retried there. With `workers.tensor_parallel` above 1, `GangPool` makes each
worker a gang of actors sharing one sharded discriminator (see GangRank, Gang). This module never calls
`ray.init`: the CLI connects first.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from labeler.run import metrics
from labeler.run.config import WorkersConfig
from labeler.run.scheduler import Chunk, ChunkOutcome, Completion
from labeler.run.sink import PartSink, SinkConfig
from labeler.run.worker import ChunkWorker, LabellerSpec


class WorkerStartError(RuntimeError):
    """A worker actor died while starting (loading the discriminator, serving metrics); says why."""


class LabelActor:
    """One worker process: builds its labeller once, then runs chunks (wrapped by `ray.remote` at start)."""

    def __init__(
        self, spec: LabellerSpec, sink_url: str, sink_config: SinkConfig, metrics_port: int, metrics_host: str
    ) -> None:
        self.worker = ChunkWorker(spec, PartSink(sink_url, sink_config))
        self.port = metrics.serve(metrics_port, metrics_host)
        node = ray.util.get_node_ip_address() if ray.is_initialized() else socket.gethostname()
        self.address = metrics.endpoint(metrics_host, self.port, node)
        self.step: tuple[int, int] | None = None

    def run(self, chunk: Chunk) -> ChunkOutcome:
        try:
            return self.worker.run(chunk, self._on_step)
        finally:
            self.step = None

    def _on_step(self, step: int, live: int) -> None:
        self.step = (step, live)

    def progress(self) -> tuple[int, int] | None:
        """(step, features still optimising) of the batch being labelled now, or None between batches; answered
        while `run` works (the actor has a second thread for it)."""
        return self.step

    def endpoint(self) -> str:
        """host:port of this worker's /metrics."""
        return self.address

    def placement(self) -> dict[str, Any]:
        """Where Ray put this worker: node, process and the GPU ids it was given."""
        import os

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "gpu_ids": ray.get_gpu_ids()}


class RayPool:
    """Worker actors as the scheduler's Pool."""

    def __init__(
        self,
        config: WorkersConfig,
        spec: LabellerSpec,
        sink_url: str,
        sink_config: SinkConfig,
        env: Mapping[str, str] | None = None,
    ) -> None:
        actor: Any = ray.remote(LabelActor).options(
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            max_restarts=config.max_restarts,
            max_task_retries=0,  # the scheduler retries, so it can count attempts and give up
            max_concurrency=2,  # one chunk at a time, and `progress` answered beside it
            runtime_env={"env_vars": dict(env)} if env else None,
        )
        self.actors: list[Any] = [
            actor.remote(spec, sink_url, sink_config, config.metrics_port, config.metrics_host)
            for _ in range(config.count)
        ]
        self._num_gpus = config.num_gpus
        self._refs: dict[Any, tuple[int, Chunk]] = {}
        self._down: dict[int, Any] = {}  # worker -> a ping sent to it, answered once Ray has restarted it

    def size(self) -> int:
        return len(self.actors)

    def alive(self) -> int:
        return len(self.actors) - len(self._down)

    def available(self, worker: int) -> bool:
        ping = self._down.get(worker)
        if ping is None:
            return True
        ready, _ = ray.wait([ping], timeout=0)
        if not ready:
            return False
        try:
            ray.get(ping)
        except RayError:  # still restarting (or gone for good): ask again
            self._down[worker] = self.actors[worker].endpoint.remote()
            return False
        del self._down[worker]
        return True

    def ready(self, timeout: float = 600) -> list[str]:
        """Wait for every worker to have loaded its discriminator; their metrics endpoints. Raises
        WorkerStartError when a worker cannot start (e.g. its model does not load), or when some have not
        started within `timeout` seconds (the cluster has no room for them)."""
        gpus = ray.cluster_resources().get("GPU", 0)
        if self._num_gpus > gpus:  # Ray would wait for a node that has them, in silence
            raise WorkerStartError(
                f"workers.num_gpus is {self._num_gpus:g} but the Ray cluster has {gpus:g} GPU(s) in all "
                "(ray.cluster_resources()); give --num-gpus 0 (or workers.num_gpus: 0) for CPU workers, or run on a "
                "cluster with GPUs"
            )
        refs = [actor.endpoint.remote() for actor in self.actors]
        pending, deadline = refs, time.monotonic() + timeout
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise WorkerStartError(
                    f"{len(pending)} of {len(refs)} workers did not start within {timeout:.0f} s: no node has the "
                    "CPUs, GPUs and memory one asks for (workers.num_cpus, workers.num_gpus); lower workers.count "
                    "or add nodes"
                )
            try:
                ray.get(done)
            except RayActorError as err:
                raise WorkerStartError(f"a worker could not start: {_first_line(err)}") from err
        return [str(endpoint) for endpoint in ray.get(refs)]

    def endpoints(self) -> list[str]:
        """Metrics endpoints of the workers alive now (a restarted worker may have a new port)."""
        refs = [a.endpoint.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=5)
        found = []
        for ref in ready:
            with contextlib.suppress(RayError):
                found.append(str(ray.get(ref)))
        return found

    def progress(self) -> list[tuple[int, int] | None]:
        """Per worker, (step, features optimising) of the batch it labels now; None where idle or not answering."""
        return _each_answer([a.progress.remote() for a in self.actors], timeout=2)

    def placements(self) -> list[dict[str, Any]]:
        return list(ray.get([a.placement.remote() for a in self.actors]))

    def submit(self, worker: int, chunk: Chunk) -> None:
        self._refs[self.actors[worker].run.remote(chunk)] = (worker, chunk)

    def poll(self, timeout: float) -> list[Completion]:
        if not self._refs:
            time.sleep(min(timeout, 0.2))  # only restarting workers: wait a little before asking again
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        completions = []
        for ref in ready:
            worker, chunk = self._refs.pop(ref)
            try:
                completions.append(Completion(worker, chunk, outcome=ray.get(ref)))
            except RayActorError as err:
                self._down.setdefault(worker, self.actors[worker].endpoint.remote())
                completions.append(Completion(worker, chunk, error=f"WorkerDied: {_first_line(err)}"))
            except RayError as err:
                cause = getattr(err, "cause", None)
                kind = type(cause).__name__ if cause is not None else type(err).__name__
                completions.append(Completion(worker, chunk, error=f"{kind}: {_first_line(cause or err)}"))
        return completions

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1][:300] if text else type(err).__name__


class GangRank:
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
        self.host = ray.util.get_node_ip_address() if ray.is_initialized() else socket.gethostname()
        self.port = 0
        self.store: Any = None  # rank 0's TCPStore, hosted from `rendezvous` until the actor ends
        self.step: tuple[int, int] | None = None
        self.lock = threading.Lock()

    def rendezvous(self, world: int) -> tuple[str, int]:
        """Host the process group's store on this (rank 0's) node; its host and port.

        The store listens on a port the OS picks as it binds (port 0), so no other process can take that port
        between choosing it and listening on it (a free port chosen first and bound later was taken by
        another process once in CI: EADDRINUSE, and the run stopped).
        """
        import torch.distributed as dist

        self.store = dist.TCPStore(self.host, 0, world, is_master=True, wait_for_workers=False)
        return self.host, self.store.port

    def join(self, address: tuple[str, int], rank: int, world: int) -> str:
        """Join the gang's process group, load this rank's shard of the discriminator; rank 0's metrics endpoint."""
        import torch
        import torch.distributed as dist

        from labeler.discriminators.causal_lm import CausalLMConfig
        from labeler.discriminators.tensor_parallel import sharded_discriminator
        from labeler.run.worker import EngineLabeller

        if not isinstance(self.spec.discriminator, CausalLMConfig):
            raise ValueError(
                f"workers.tensor_parallel={world} shards a causal-LM discriminator (hf:MODEL_DIR); "
                f"{self.spec.discriminator.kind!r} cannot be sharded: set workers.tensor_parallel to 1"
            )
        backend = "nccl" if ray.get_gpu_ids() and torch.cuda.is_available() else "gloo"
        store = self.store if rank == 0 else dist.TCPStore(*address, world, is_master=False)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        self.rank = rank
        self.labeller = EngineLabeller(self.spec, sharded_discriminator(self.spec.discriminator))
        if rank == 0:
            self.worker = ChunkWorker(LabellerSpec(**{**vars(self.spec), "engine": "noop"}), self._sink())
            self.worker.labeller = _Broadcasting(self.labeller)
            self.worker.device = self.labeller.disc.device
            self.port = metrics.serve(self.metrics_port, self.metrics_host)
        return self.endpoint()

    def _sink(self) -> PartSink:
        return PartSink(self.sink_url, self.sink_config)

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

    def _on_step(self, step: int, live: int) -> None:
        self.step = (step, live)

    def progress(self) -> tuple[int, int] | None:
        return self.step

    def endpoint(self) -> str:
        return metrics.endpoint(self.metrics_host, self.port, self.host)

    def placement(self) -> dict[str, Any]:
        import os

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "gpu_ids": ray.get_gpu_ids()}


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

    def __init__(self, config: WorkersConfig, args: tuple[Any, ...], env: Mapping[str, str] | None) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": config.num_cpus, "GPU": config.num_gpus}
        self.group = placement_group(
            [{k: v for k, v in bundle.items() if v}] * config.tensor_parallel, strategy="STRICT_PACK"
        )
        self.ranks: list[Any] = [
            ray.remote(GangRank)
            .options(
                num_cpus=config.num_cpus,
                num_gpus=config.num_gpus,
                max_restarts=0,  # a dead rank takes the gang down; the pool rebuilds it whole
                max_concurrency=3,  # run, and progress or stop beside it
                runtime_env={"env_vars": dict(env)} if env else None,
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


class GangPool:
    """Tensor-parallel worker gangs as the scheduler's Pool: gang i is worker i, its rank 0 the actor that runs.

    A rank that dies takes its gang down: the chunk it held comes back as an error (the scheduler retries it,
    bounded by max attempts), and the gang is rebuilt whole (new placement group, new process group) up to
    `workers.max_restarts` times; the other gangs go on.
    """

    def __init__(
        self,
        config: WorkersConfig,
        spec: LabellerSpec,
        sink_url: str,
        sink_config: SinkConfig,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config, self.env = config, env
        self.args = (spec, sink_url, sink_config, config.metrics_port, config.metrics_host)
        self.gangs = [self._build() for _ in range(config.count)]
        self.rebuilds = [0] * config.count
        self._refs: dict[Any, tuple[int, Chunk]] = {}
        self._down: set[int] = set()  # gangs being rebuilt (their ranks not all joined yet) or gone
        self._gone: set[int] = set()  # gangs that used up workers.max_restarts

    def _build(self) -> Gang:
        gang = Gang(self.config, self.args, self.env)
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
            raise WorkerStartError(
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
            raise WorkerStartError(f"a gang could not start: {_first_line(err)}") from err
        except RayError as err:
            raise WorkerStartError(
                f"a gang could not start: {_first_line(getattr(err, 'cause', None) or err)}"
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
        return [f"{e}" for e in self._answers([g.ranks[0].endpoint.remote() for g in self._up()], 5)]

    def progress(self) -> list[tuple[int, int] | None]:
        return _each_answer([g.ranks[0].progress.remote() for g in self.gangs], timeout=2)

    def placements(self) -> list[list[dict[str, Any]]]:
        """Per gang, where each rank landed."""
        return [list(ray.get([rank.placement.remote() for rank in gang.ranks])) for gang in self.gangs]

    def submit(self, worker: int, chunk: Chunk) -> None:
        self._refs[self.gangs[worker].ranks[0].run.remote(chunk)] = (worker, chunk)

    def poll(self, timeout: float) -> list[Completion]:
        if not self._refs:
            time.sleep(min(timeout, 0.2))
            return []
        # A follower's `follow` returns only when its rank died: that gang is down too.
        followers = {ref: w for w, g in enumerate(self.gangs) if w not in self._down for ref in g.followers}
        ready, _ = ray.wait([*self._refs, *followers], num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait([*self._refs, *followers], num_returns=len(self._refs) + len(followers), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        broken = {followers[ref] for ref in ready if ref in followers}
        completions = []
        for ref in [r for r in ready if r in self._refs]:
            worker, chunk = self._refs.pop(ref)
            try:
                completions.append(Completion(worker, chunk, outcome=ray.get(ref)))
            except RayActorError as err:
                broken.add(worker)
                completions.append(Completion(worker, chunk, error=f"WorkerDied: {_first_line(err)}"))
            except RayError as err:
                cause = getattr(err, "cause", None)
                kind = type(cause).__name__ if cause is not None else type(err).__name__
                if kind == "RankLostError":  # a peer rank died under a collective (gang_collective)
                    broken.add(worker)
                completions.append(Completion(worker, chunk, error=f"{kind}: {_first_line(cause or err)}"))
        for worker in broken:
            # Rank 0 may still be blocked in a collective with the dead rank: its chunk fails with the gang.
            for ref, (w, chunk) in list(self._refs.items()):
                if w == worker:
                    del self._refs[ref]
                    completions.append(Completion(w, chunk, error="WorkerDied: a rank of its gang died"))
            self._rebuild(worker)
        return completions

    def shutdown(self) -> None:
        for gang in self.gangs:
            gang.kill()

    def _up(self) -> list[Gang]:
        return [g for w, g in enumerate(self.gangs) if w not in self._down]

    @staticmethod
    def _answers(refs: list[Any], timeout: float) -> list[Any]:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout) if refs else ([], [])
        found = []
        for ref in ready:
            with contextlib.suppress(RayError):
                found.append(ray.get(ref))
        return found


def _each_answer(refs: list[Any], timeout: float) -> list[Any]:
    """Each call's answer, in order, or None where it has not answered within `timeout` seconds or failed."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout) if refs else ([], [])
    answers: list[Any] = []
    for ref in refs:
        value = None
        if ref in ready:
            with contextlib.suppress(RayError):
                value = ray.get(ref)
        answers.append(value)
    return answers
