"""Worker actors as the scheduler's Pool: each actor loads a discriminator once and runs chunks.

Each actor holds one `ChunkWorker` (labeler/run/worker.py) built in its `__init__`, serves its own metrics and
reports the endpoint. Resources come from `WorkersConfig`: CPUs and GPUs per actor (a fraction shares a GPU
between small models). Ray restarts a dead actor (`max_restarts`); the chunk it held comes back to the scheduler
as an error and is retried there. It knows nothing of tensor parallelism (gang.py).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from labeler.ray_pool.base import (
    WORKER_DIED,
    ActorPool,
    ReportingActor,
    WorkerStartError,
    each_answer,
    first_line,
    node_address,
)
from labeler.run import metrics
from labeler.run.scheduler import Chunk, ChunkOutcome, Completion
from labeler.run.sink import PartSink, SinkConfig
from labeler.run.worker import ChunkWorker, LabellerSpec


class LabelActor(ReportingActor):
    """One worker process: builds its labeller once, then runs chunks (wrapped by `ray.remote` at start)."""

    def __init__(
        self, spec: LabellerSpec, sink_url: str, sink_config: SinkConfig, metrics_port: int, metrics_host: str
    ) -> None:
        self.worker = ChunkWorker(spec, PartSink(sink_url, sink_config))
        self.port = metrics.serve(metrics_port, metrics_host)
        self.address = metrics.endpoint(metrics_host, self.port, node_address())

    def run(self, chunk: Chunk) -> ChunkOutcome:
        try:
            return self.worker.run(chunk, self._on_step)
        finally:
            self.step = None

    def endpoint(self) -> str:
        """host:port of this worker's /metrics."""
        return self.address


class RayPool(ActorPool):
    """Worker actors as the scheduler's Pool."""

    def _start(self) -> None:
        actor: Any = ray.remote(LabelActor).options(
            **self.options,
            max_restarts=self.config.max_restarts,
            max_task_retries=0,  # the scheduler retries, so it can count attempts and give up
            max_concurrency=2,  # one chunk at a time, and `progress` answered beside it
        )
        self.actors: list[Any] = [actor.remote(*self.args) for _ in range(self.config.count)]
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
        if self.config.num_gpus > gpus:  # Ray would wait for a node that has them, in silence
            raise WorkerStartError(
                f"workers.num_gpus is {self.config.num_gpus:g} but the Ray cluster has {gpus:g} GPU(s) in all "
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
                raise WorkerStartError(f"a worker could not start: {first_line(err)}") from err
        return [str(endpoint) for endpoint in ray.get(refs)]

    def endpoints(self) -> list[str]:
        """Metrics endpoints of the workers alive now (a restarted worker may have a new port)."""
        answers = each_answer([a.endpoint.remote() for a in self.actors], timeout=5)
        return [str(answer) for answer in answers if answer is not None]

    def progress(self) -> list[tuple[int, int] | None]:
        """Per worker, (step, features optimising) of the batch it labels now; None where idle or not answering."""
        return each_answer([a.progress.remote() for a in self.actors], timeout=2)

    def placements(self) -> list[dict[str, Any]]:
        return list(ray.get([a.placement.remote() for a in self.actors]))

    def _runner(self, worker: int) -> Any:
        return self.actors[worker]

    def poll(self, timeout: float) -> list[Completion]:
        completions = []
        for ref in self._finished(timeout) or []:
            completion, kind = self._complete(ref)
            if kind == WORKER_DIED:  # Ray restarts it; it is down until it answers a ping
                self._down.setdefault(completion.worker, self.actors[completion.worker].endpoint.remote())
            completions.append(completion)
        return completions

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
