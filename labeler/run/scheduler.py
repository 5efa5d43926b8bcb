"""Scheduling chunks of features over a pool of workers: fan-out, backpressure, bounded retries, state.

The scheduler decides which chunk goes next, keeps at most `max_in_flight_per_worker` chunks in flight
per worker, retries a failed chunk up to `max_attempts` times and then gives its features up as failed,
and tracks every feature's state. It knows nothing about Ray, models or storage: workers are reached
through the small `Pool` protocol (labeler/ray_pool/ implements it on Ray, run/local.py in this process),
and a chunk that is given up is handed to a callback that records its features (the driver writes them to
the sink).

Memory is bounded by the plan, not by the run: the driver holds the sorted feature ids (8 bytes each)
and one state byte per feature; chunks are cut from them lazily, and nothing per finished feature is
kept besides its state byte. A million features cost about 9 MB here.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from labeler.errors import ConfigError, InputError
from labeler.run import metrics

ChunkKind = Literal["label", "dead"]
FeatureState = Literal["pending", "running", "done", "failed", "dead"]
_STATES: tuple[FeatureState, ...] = ("pending", "running", "done", "failed", "dead")
_CODE = {name: i for i, name in enumerate(_STATES)}


@dataclass(frozen=True)
class SchedulerConfig:
    """How chunks are fanned out to workers and retried."""

    features_per_chunk: int = 64
    """Features per chunk: the unit of work, retry and output part (a worker labels it as one batch)."""
    max_in_flight_per_worker: int = 2
    """Chunks sent to one worker and not yet finished (backpressure; 2 keeps a worker busy between chunks)."""
    max_attempts: int = 3
    """Times a chunk is tried before its features are recorded as failed with the last error."""
    stall_seconds: float = 900.0
    """Stop the run (committed parts are kept for --resume) when no worker takes a chunk for this long."""

    def __post_init__(self) -> None:
        if self.stall_seconds <= 0:
            raise ConfigError(f"scheduler.stall_seconds must be positive, got {self.stall_seconds}")
        for name in ("features_per_chunk", "max_in_flight_per_worker", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"scheduler.{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Chunk:
    """A slice of the plan: features labelled (or recorded dead) together and written as one part."""

    index: int
    features: np.ndarray
    """int64 feature ids, ascending."""
    kind: ChunkKind = "label"
    attempt: int = 1


@dataclass(frozen=True)
class ChunkOutcome:
    """What a committed chunk held: how many features ended in each (status, reason)."""

    index: int
    counts: tuple[tuple[str, str, int], ...]
    """(status, reason, features) triples; reason is the error kind or "none". The same whether this attempt
    committed the part or an earlier one did (its reply lost): the driver counts the chunk once either way."""


@dataclass(frozen=True)
class Completion:
    """A chunk a worker finished: its outcome, or the error that stopped it."""

    worker: int
    chunk: Chunk
    outcome: ChunkOutcome | None = None
    error: str | None = None


class Pool(Protocol):
    """Workers that run chunks asynchronously (Ray actors in production, threads in tests)."""

    def size(self) -> int:
        """Worker slots, numbered 0..size-1."""
        ...

    def alive(self) -> int:
        """Workers currently alive and holding a discriminator."""
        ...

    def available(self, worker: int) -> bool:
        """Whether `worker` takes chunks now (False while a dead worker is being restarted)."""
        ...

    def submit(self, worker: int, chunk: Chunk) -> None:
        """Start `chunk` on `worker`; its completion comes back from `poll`."""
        ...

    def poll(self, timeout: float) -> list[Completion]:
        """Chunks finished since the last call, waiting up to `timeout` seconds for at least one."""
        ...


@dataclass(frozen=True)
class Plan:
    """Every feature of a run cut into chunks: label chunks first, then chunks of dead features."""

    label_ids: np.ndarray
    """Sorted int64 ids of the features to label."""
    dead_ids: np.ndarray
    """Sorted int64 ids of features recorded as dead without labelling (never active in the harvest)."""
    features_per_chunk: int

    @property
    def n_label_chunks(self) -> int:
        return -(-len(self.label_ids) // self.features_per_chunk)

    @property
    def n_chunks(self) -> int:
        return self.n_label_chunks + -(-len(self.dead_ids) // self.features_per_chunk)

    @property
    def n_features(self) -> int:
        return len(self.label_ids) + len(self.dead_ids)

    def positions(self, index: int) -> slice:
        """Where chunk `index`'s features sit in label_ids followed by dead_ids."""
        size = self.features_per_chunk
        if index < self.n_label_chunks:
            return slice(index * size, min((index + 1) * size, len(self.label_ids)))
        start = len(self.label_ids) + (index - self.n_label_chunks) * size
        return slice(start, min(start + size, self.n_features))

    def chunk(self, index: int) -> Chunk:
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index} is outside the plan's {self.n_chunks} chunks")
        where = self.positions(index)
        if index < self.n_label_chunks:
            return Chunk(index, self.label_ids[where], "label")
        offset = len(self.label_ids)
        return Chunk(index, self.dead_ids[where.start - offset : where.stop - offset], "dead")


def make_plan(label_ids: np.ndarray, dead_ids: np.ndarray, features_per_chunk: int) -> Plan:
    """A plan from feature ids (deduplicated and sorted here; a feature may not be both alive and dead)."""
    label = np.unique(np.asarray(label_ids, dtype=np.int64))
    dead = np.unique(np.asarray(dead_ids, dtype=np.int64))
    both = np.intersect1d(label, dead)
    if len(both):
        raise InputError(f"{len(both)} feature(s) are listed both to label and as dead, e.g. {both[:5].tolist()}")
    return Plan(label, dead, features_per_chunk)


@dataclass
class Progress:
    """Counts of features by state and of final statuses, for progress bars and the final summary."""

    total: int
    states: Counter[str] = field(default_factory=Counter)
    """Features per FeatureState; those of chunks committed before a resume are "done" here."""
    statuses: Counter[str] = field(default_factory=Counter)
    """Final statuses of the features this run finished (not those committed before a resume), as counted
    in labeler_features_total."""
    chunks_retried: int = 0
    chunks_given_up: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.states["done"] + self.states["failed"] + self.states["dead"]


class Scheduler:
    """Which chunk runs next, what happened to each, and every feature's state."""

    def __init__(self, plan: Plan, config: SchedulerConfig, committed: Container[int] = frozenset()) -> None:
        if plan.features_per_chunk != config.features_per_chunk:
            raise ValueError("the plan was cut with a different features_per_chunk than the scheduler's config")
        self.plan = plan
        self.config = config
        self._state = np.zeros(plan.n_features, dtype=np.int8)  # _CODE per feature position
        self._next = 0
        self._retry: deque[Chunk] = deque()
        self._committed = committed
        self.in_flight: dict[int, Chunk] = {}
        self.progress = Progress(total=plan.n_features)
        self.progress.states["pending"] = plan.n_features

    def queue_depth(self) -> int:
        """Chunks not yet sent (the committed ones a resumed run skips are counted until passed)."""
        return len(self._retry) + self.plan.n_chunks - self._next

    def done(self) -> bool:
        return not self.in_flight and self.queue_depth() == 0

    def skip_committed(self) -> Iterator[int]:
        """Pass over chunks committed by an earlier run, marking their features done; yields their indices."""
        for index in range(self.plan.n_chunks):
            if index in self._committed:
                self._set(index, "done")
                yield index

    def next_chunk(self) -> Chunk | None:
        """The next chunk to send (retries first), marked running; None when nothing is left to send."""
        chunk: Chunk | None = None
        if self._retry:
            chunk = self._retry.popleft()
        while chunk is None and self._next < self.plan.n_chunks:
            index = self._next
            self._next += 1
            if index not in self._committed:
                chunk = self.plan.chunk(index)
        if chunk is not None:
            self._set(chunk.index, "running")
            self.in_flight[chunk.index] = chunk
        return chunk

    def succeeded(self, outcome: ChunkOutcome) -> None:
        """A chunk's part is committed: its features are finished with the statuses it holds."""
        chunk = self.in_flight.pop(outcome.index)
        self._set(chunk.index, "dead" if chunk.kind == "dead" else "done")
        self._count(outcome)

    def errored(self, chunk: Chunk, error: str) -> Chunk | None:
        """A chunk attempt failed: queue a retry, or return the chunk when its attempts are used up."""
        self.in_flight.pop(chunk.index)
        if chunk.attempt < self.config.max_attempts:
            self._retry.append(Chunk(chunk.index, chunk.features, chunk.kind, chunk.attempt + 1))
            self._set(chunk.index, "pending")
            self.progress.chunks_retried += 1
            return None
        self.progress.chunks_given_up += 1
        return chunk

    def given_up(self, outcome: ChunkOutcome) -> None:
        """The features of a chunk whose attempts were used up are recorded as failed."""
        self._set(outcome.index, "failed")
        self._count(outcome)

    def _count(self, outcome: ChunkOutcome) -> None:
        """Count a chunk's features by status, once: the scheduler hears of each chunk it sent exactly once
        (its in-flight entry is popped), whichever attempt committed the part. A lost reply makes the retry
        report the part committed earlier; it was still committed in this run, so it counts. Chunks committed
        before a resume are never sent and never counted."""
        for status, reason, count in outcome.counts:
            self.progress.statuses[status] += count
            metrics.FEATURES.labels(status=status, reason=reason).inc(count)

    def abandon_unsent(self) -> None:
        """Stop sending: what is queued stays pending (a resumed run picks it up)."""
        self._retry.clear()
        self._next = self.plan.n_chunks

    def feature_state(self, feature: int) -> FeatureState:
        position = self._position(feature)
        return _STATES[int(self._state[position])]

    def _position(self, feature: int) -> int:
        for ids, offset in ((self.plan.label_ids, 0), (self.plan.dead_ids, len(self.plan.label_ids))):
            i = int(np.searchsorted(ids, feature))
            if i < len(ids) and ids[i] == feature:
                return offset + i
        raise KeyError(f"feature {feature} is not in this run's plan")

    def _set(self, index: int, state: FeatureState) -> None:
        where = self.plan.positions(index)
        codes = self._state[where]
        for code, count in zip(*np.unique(codes, return_counts=True), strict=True):
            self.progress.states[_STATES[int(code)]] -= int(count)
        self.progress.states[state] += len(codes)
        self._state[where] = _CODE[state]


def drive(
    scheduler: Scheduler,
    pool: Pool,
    give_up: Callable[[Chunk, str], ChunkOutcome],
    on_progress: Callable[[Progress], None] = lambda progress: None,
    stopping: Callable[[], bool] = lambda: False,
    poll_seconds: float = 0.5,
) -> Progress:
    """Run the plan on the pool until every chunk is committed or given up, or until `stopping()`.

    Once `stopping()` turns true no new chunk is sent and the loop returns when the chunks in flight
    have finished (drain); what was never sent stays pending for `--resume`.
    """
    per_worker: list[list[int]] = [[] for _ in range(pool.size())]
    for _ in scheduler.skip_committed():
        pass
    on_progress(scheduler.progress)
    stalled_since: float | None = None
    while True:
        if stopping():
            scheduler.abandon_unsent()
        for worker, held in enumerate(per_worker):
            while len(held) < scheduler.config.max_in_flight_per_worker and pool.available(worker):
                chunk = scheduler.next_chunk()
                if chunk is None:
                    break
                pool.submit(worker, chunk)
                held.append(chunk.index)
        metrics.QUEUE_DEPTH.set(scheduler.queue_depth())
        metrics.CHUNKS_IN_FLIGHT.set(len(scheduler.in_flight))
        metrics.WORKERS.set(pool.alive())
        if scheduler.done():
            break
        if scheduler.in_flight:
            stalled_since = None
        elif stalled_since is None:
            stalled_since = time.monotonic()
        elif time.monotonic() - stalled_since > scheduler.config.stall_seconds:
            raise RuntimeError(
                f"no worker has taken a chunk for {scheduler.config.stall_seconds:.0f} s ({pool.alive()} alive); "
                "the committed parts are kept: fix the workers and continue with --resume"
            )
        for done in pool.poll(poll_seconds):
            per_worker[done.worker].remove(done.chunk.index)
            if done.outcome is not None:
                scheduler.succeeded(done.outcome)
                continue
            exhausted = scheduler.errored(done.chunk, done.error or "unknown error")
            if exhausted is not None:
                scheduler.given_up(give_up(exhausted, done.error or "unknown error"))
        on_progress(scheduler.progress)
    metrics.QUEUE_DEPTH.set(scheduler.queue_depth())
    metrics.CHUNKS_IN_FLIGHT.set(0)
    on_progress(scheduler.progress)
    return scheduler.progress


def outcome_counts(statuses: Sequence[str], errors: Sequence[str | None]) -> tuple[tuple[str, str, int], ...]:
    """(status, reason, count) triples of a chunk's records; the reason is the error's kind (text before ':')."""
    counts = Counter(
        (status, "none" if not error else error.split(":", 1)[0].strip()[:60])
        for status, error in zip(statuses, errors, strict=True)
    )
    return tuple((status, reason, n) for (status, reason), n in sorted(counts.items()))
