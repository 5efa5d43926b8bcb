"""The scheduler without Ray: fan-out, backpressure, retries, give-up, drain, state, bounded memory."""

from __future__ import annotations

import queue
import resource
from collections import Counter

import numpy as np
import pytest

from labeler.run.scheduler import (
    Chunk,
    ChunkOutcome,
    Completion,
    Scheduler,
    SchedulerConfig,
    drive,
    make_plan,
    outcome_counts,
)


class ScriptedPool:
    """A pool that finishes chunks in submission order; `fail` maps chunk index -> attempts that fail."""

    def __init__(self, workers: int, fail: dict[int, int] | None = None, max_in_flight: int = 2) -> None:
        self.workers = workers
        self.fail = fail or {}
        self.max_in_flight = max_in_flight
        self.pending: queue.SimpleQueue[tuple[int, Chunk]] = queue.SimpleQueue()
        self.in_flight = Counter[int]()
        self.peak_in_flight = 0
        self.ran: list[tuple[int, int]] = []
        self.features_done: Counter[int] = Counter()

    def size(self) -> int:
        return self.workers

    def alive(self) -> int:
        return self.workers

    def available(self, worker: int) -> bool:
        return True

    def submit(self, worker: int, chunk: Chunk) -> None:
        self.in_flight[worker] += 1
        assert self.in_flight[worker] <= self.max_in_flight, "more chunks in flight on a worker than configured"
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight[worker])
        self.pending.put((worker, chunk))

    def poll(self, timeout: float) -> list[Completion]:
        if self.pending.empty():
            return []
        worker, chunk = self.pending.get()
        self.in_flight[worker] -= 1
        self.ran.append((chunk.index, chunk.attempt))
        if chunk.attempt <= self.fail.get(chunk.index, 0):
            return [Completion(worker, chunk, error=f"RuntimeError: attempt {chunk.attempt} broke")]
        self.features_done.update(chunk.features.tolist())
        counts = (("dead" if chunk.kind == "dead" else "labelled", "none", len(chunk.features)),)
        return [Completion(worker, chunk, ChunkOutcome(chunk.index, counts))]


def test_every_feature_runs_once_with_backpressure() -> None:
    plan = make_plan(np.arange(1000) * 3, np.array([1, 4]), features_per_chunk=64)
    scheduler = Scheduler(plan, SchedulerConfig(features_per_chunk=64, max_in_flight_per_worker=2))
    pool = ScriptedPool(workers=3)
    progress = drive(scheduler, pool, give_up=lambda chunk, error: pytest.fail("nothing should be given up"))
    assert set(pool.features_done) == {*range(0, 3000, 3), 1, 4}
    assert set(pool.features_done.values()) == {1}
    assert pool.peak_in_flight == 2
    assert progress.states["done"] == 1000 and progress.states["dead"] == 2 and progress.finished == 1002
    assert progress.statuses == Counter({"labelled": 1000, "dead": 2})
    assert scheduler.feature_state(3) == "done" and scheduler.feature_state(4) == "dead"


def test_failed_chunk_is_retried_then_given_up_with_its_reason() -> None:
    plan = make_plan(np.arange(40), np.array([], dtype=np.int64), features_per_chunk=10)
    scheduler = Scheduler(plan, SchedulerConfig(features_per_chunk=10, max_attempts=3))
    pool = ScriptedPool(workers=2, fail={1: 1, 2: 99})
    given_up: list[tuple[int, str]] = []

    def give_up(chunk: Chunk, error: str) -> ChunkOutcome:
        given_up.append((chunk.index, error))
        return ChunkOutcome(chunk.index, (("failed", "RuntimeError", len(chunk.features)),))

    progress = drive(scheduler, pool, give_up=give_up)
    assert (1, 1) in pool.ran and (1, 2) in pool.ran  # retried once, then fine
    assert [attempt for index, attempt in pool.ran if index == 2] == [1, 2, 3]  # bounded
    assert given_up == [(2, "RuntimeError: attempt 3 broke")]
    assert progress.statuses == Counter({"labelled": 30, "failed": 10})
    assert scheduler.feature_state(25) == "failed" and scheduler.feature_state(15) == "done"
    assert progress.chunks_retried == 3 and progress.chunks_given_up == 1


def test_resume_skips_committed_chunks() -> None:
    plan = make_plan(np.arange(100), np.array([], dtype=np.int64), features_per_chunk=10)
    scheduler = Scheduler(plan, SchedulerConfig(features_per_chunk=10), committed={0, 3, 9})
    pool = ScriptedPool(workers=1)
    progress = drive(scheduler, pool, give_up=lambda chunk, error: pytest.fail("no give-up"))
    assert sorted(index for index, _ in pool.ran) == [1, 2, 4, 5, 6, 7, 8]
    assert progress.states["done"] == 100


def test_stopping_drains_in_flight_and_leaves_the_rest_pending() -> None:
    plan = make_plan(np.arange(100), np.array([], dtype=np.int64), features_per_chunk=10)
    scheduler = Scheduler(plan, SchedulerConfig(features_per_chunk=10, max_in_flight_per_worker=2))
    pool = ScriptedPool(workers=2)
    polls = 0

    def stopping() -> bool:
        return polls >= 2  # one progress report before the loop, one after the first poll

    def count(progress: object) -> None:
        nonlocal polls
        polls += 1

    progress = drive(
        scheduler, pool, give_up=lambda c, e: pytest.fail("no give-up"), on_progress=count, stopping=stopping
    )
    assert len(pool.ran) == 4  # the four sent before the stop all finished; nothing else was sent
    assert progress.states["done"] == 40 and progress.states["pending"] == 60 and not scheduler.in_flight


def test_bad_plans_and_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="both to label and as dead"):
        make_plan(np.array([1, 2]), np.array([2]), 10)
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        SchedulerConfig(max_attempts=0)
    scheduler = Scheduler(make_plan(np.arange(5), np.array([], dtype=np.int64), 64), SchedulerConfig())
    with pytest.raises(KeyError, match="feature 7 is not in this run's plan"):
        scheduler.feature_state(7)


def test_outcome_counts_group_by_status_and_error_kind() -> None:
    counts = outcome_counts(
        ["labelled", "failed", "failed", "skipped"], [None, "RuntimeError: x", "RuntimeError: y", "needs"]
    )
    assert counts == (("failed", "RuntimeError", 2), ("labelled", "none", 1), ("skipped", "needs", 1))


@pytest.mark.slow
def test_a_million_features_pass_with_bounded_memory() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    plan = make_plan(np.arange(1_000_000, dtype=np.int64), np.array([], dtype=np.int64), features_per_chunk=256)
    scheduler = Scheduler(plan, SchedulerConfig(features_per_chunk=256, max_in_flight_per_worker=4))

    class CountingPool(ScriptedPool):
        def poll(self, timeout: float) -> list[Completion]:  # no per-feature bookkeeping in the fake itself
            worker, chunk = self.pending.get()
            self.in_flight[worker] -= 1
            counts = (("labelled", "none", len(chunk.features)),)
            return [Completion(worker, chunk, ChunkOutcome(chunk.index, counts))]

    progress = drive(scheduler, CountingPool(workers=8, max_in_flight=4), give_up=lambda c, e: pytest.fail("none"))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert progress.statuses["labelled"] == 1_000_000 and progress.finished == 1_000_000
    assert grown_mb < 100, f"the driver's peak memory grew by {grown_mb:.0f} MB for a million features"


def test_a_run_without_any_available_worker_stops_with_a_clear_error() -> None:
    class DownPool(ScriptedPool):
        def available(self, worker: int) -> bool:
            return False

    plan = make_plan(np.arange(10), np.array([], dtype=np.int64), features_per_chunk=5)
    scheduler = Scheduler(plan, SchedulerConfig(features_per_chunk=5, stall_seconds=0.2))
    with pytest.raises(RuntimeError, match="no worker has taken a chunk for 0 s"):
        drive(scheduler, DownPool(workers=2), give_up=lambda c, e: pytest.fail("none"), poll_seconds=0.05)
