"""What the worker pool and the gang pool share: the actor's progress and placement reports, the actor options
of `WorkersConfig`, and how a Ray call's answer becomes the scheduler's `Completion`.

It knows nothing of how many actors make one worker (pool.py: one; gang.py: a gang of ranks).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from labeler.run.config import WorkersConfig
from labeler.run.scheduler import Chunk, Completion
from labeler.run.sink import SinkConfig
from labeler.run.worker import LabellerSpec


class WorkerStartError(RuntimeError):
    """A worker actor died while starting (loading the discriminator, serving metrics); says why."""


WORKER_DIED = "WorkerDied"
"""The error kind of a chunk whose worker process died under it (the scheduler retries the chunk)."""


class ReportingActor:
    """What the scheduler's driver asks of every worker actor beside its chunk: the step of the batch it labels
    now, and where Ray placed it."""

    step: tuple[int, int] | None = None

    def _on_step(self, step: int, live: int) -> None:
        self.step = (step, live)

    def progress(self) -> tuple[int, int] | None:
        """(step, features still optimising) of the batch being labelled now, or None between batches; answered
        while `run` works (the actor has a second thread for it)."""
        return self.step

    def placement(self) -> dict[str, Any]:
        """Where Ray put this worker: node, process and the GPU ids it was given."""
        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "gpu_ids": ray.get_gpu_ids()}


def node_address() -> str:
    """The address other nodes reach this actor's node by (its hostname outside Ray)."""
    return str(ray.util.get_node_ip_address()) if ray.is_initialized() else socket.gethostname()


class ActorPool:
    """What both pools keep: what each actor is built from and the chunks in flight; a pool starts its actors in
    `_start`."""

    def __init__(
        self,
        config: WorkersConfig,
        spec: LabellerSpec,
        sink_url: str,
        sink_config: SinkConfig,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.args = (spec, sink_url, sink_config, config.metrics_port, config.metrics_host)
        self.options: dict[str, Any] = {
            "num_cpus": config.num_cpus,
            "num_gpus": config.num_gpus,
            "runtime_env": {"env_vars": dict(env)} if env else None,
        }
        self._refs: dict[Any, tuple[int, Chunk]] = {}  # a chunk's run call -> (worker, chunk)
        self._start()

    def _start(self) -> None:
        """Start the workers' actors (they load their discriminators in the background: see `ready`)."""
        raise NotImplementedError

    def submit(self, worker: int, chunk: Chunk) -> None:
        self._refs[self._runner(worker).run.remote(chunk)] = (worker, chunk)

    def _runner(self, worker: int) -> Any:
        """The actor that runs worker `worker`'s chunks."""
        raise NotImplementedError

    def _finished(self, timeout: float, also: Sequence[Any] = ()) -> list[Any] | None:
        """The chunk calls (and calls of `also`) answered within `timeout` seconds; None, after a short wait, when
        no chunk is in flight (only restarting workers: the scheduler asks again)."""
        if not self._refs:
            time.sleep(min(timeout, 0.2))
            return None
        waiting = [*self._refs, *also]
        ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        return ready

    def _complete(self, ref: Any) -> tuple[Completion, str | None]:
        """The Completion of a finished chunk call, and the kind of its error (WORKER_DIED, an exception's class
        name) or None."""
        worker, chunk = self._refs.pop(ref)
        try:
            return Completion(worker, chunk, outcome=ray.get(ref)), None
        except RayActorError as err:
            return Completion(worker, chunk, error=f"{WORKER_DIED}: {first_line(err)}"), WORKER_DIED
        except RayError as err:
            cause = getattr(err, "cause", None)
            kind = type(cause).__name__ if cause is not None else type(err).__name__
            return Completion(worker, chunk, error=f"{kind}: {first_line(cause or err)}"), kind


def first_line(err: BaseException) -> str:
    """The line of a Ray error that says what went wrong (its last), at most 300 characters, its exception's class
    named without its module (`InputError: ...`, not `labeler.errors.InputError: ...`)."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    return re.sub(r"^(?:\w+\.)+(\w+: )", r"\1", text.splitlines()[-1])[:300]


def each_answer(refs: list[Any], timeout: float) -> list[Any]:
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
