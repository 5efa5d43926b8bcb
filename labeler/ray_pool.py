"""The Ray adapter: worker actors that each load a discriminator once and run chunks, as a scheduler Pool.

Each actor holds one `ChunkWorker` (work.py) built in its `__init__`, serves its own metrics and reports
the endpoint. Resources come from `WorkersConfig`: CPUs and GPUs per actor (a fraction shares a GPU
between small models). Ray restarts a dead actor (`max_restarts`); the chunk it held comes back to the
scheduler as an error and is retried there. This module never calls `ray.init`: the CLI connects first.
"""

from __future__ import annotations

import contextlib
import socket
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
        refs = [a.progress.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=2)
        steps: list[tuple[int, int] | None] = []
        for ref in refs:
            value = None
            if ref in ready:
                with contextlib.suppress(RayError):
                    value = ray.get(ref)
            steps.append(value)
        return steps

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
