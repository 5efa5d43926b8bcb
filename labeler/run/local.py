"""The scheduler's Pool in this process: one worker, no Ray (what `labeler label` runs on).

It holds one `ChunkWorker` and runs the chunks it is given one at a time when the scheduler polls, so a
local run plans, commits, resumes and records failures exactly as a run on Ray does. An exception from a
chunk comes back as that chunk's error (retried by the scheduler); Ctrl-C is not caught.
"""

from __future__ import annotations

from collections import deque

from labeler.run.scheduler import Chunk, Completion
from labeler.run.worker import ChunkWorker, OnStep


class LocalPool:
    """One in-process worker as the scheduler's Pool."""

    def __init__(self, worker: ChunkWorker, on_step: OnStep | None = None) -> None:
        self.worker = worker
        self.on_step = on_step
        self._queue: deque[Chunk] = deque()

    def size(self) -> int:
        return 1

    def alive(self) -> int:
        return 1

    def available(self, worker: int) -> bool:
        return True

    def submit(self, worker: int, chunk: Chunk) -> None:
        self._queue.append(chunk)

    def poll(self, timeout: float) -> list[Completion]:
        """Run the oldest chunk given; its completion (an empty list when none waits)."""
        if not self._queue:
            return []
        chunk = self._queue.popleft()
        try:
            outcome = self.worker.run(chunk, self.on_step)
        except Exception as err:  # as on Ray: the chunk's error, retried and in the end recorded on its features
            return [Completion(0, chunk, error=f"{type(err).__name__}: {err}")]
        return [Completion(0, chunk, outcome=outcome)]
