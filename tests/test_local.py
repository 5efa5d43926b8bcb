"""labeler/run/local.py: the in-process pool runs a chunk through its ChunkWorker when the scheduler polls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from label_runs import run_info

from labeler.discriminators.embedding import EmbeddingConfig
from labeler.optimise.labelling import LabelConfig
from labeler.run.config import SourceConfig
from labeler.run.local import LocalPool
from labeler.run.scheduler import Chunk
from labeler.run.sink import PartSink
from labeler.run.worker import ChunkWorker, LabellerSpec


def noop_pool(tmp_path: Path) -> LocalPool:
    spec = LabellerSpec(
        EmbeddingConfig(kind="minilm"), LabelConfig(), SourceConfig(exemplars="unused"), run_info("r"), engine="noop"
    )
    return LocalPool(ChunkWorker(spec, PartSink(str(tmp_path / "run"))))


def test_a_chunk_is_run_at_poll_and_its_outcome_counts_its_features(tmp_path: Path) -> None:
    pool = noop_pool(tmp_path)
    chunk = Chunk(3, np.array([10, 11, 12, 13], dtype=np.int64))
    pool.submit(0, chunk)
    assert not (tmp_path / "run" / "labels" / "part-00000003.parquet").exists()  # nothing runs before the poll
    [done] = pool.poll(0.0)
    assert done.chunk is chunk and done.error is None and done.outcome is not None
    assert done.outcome.index == 3 and done.outcome.counts == (("skipped", "noop", 4),)
    part = pq.read_table(tmp_path / "run" / "labels" / "part-00000003.parquet")
    assert part.column("feature").to_pylist() == [10, 11, 12, 13]
    assert pool.poll(0.0) == []


class Broken:
    def label(self, features: np.ndarray, on_step: object = None) -> list[object]:
        raise RuntimeError(f"cannot label {len(features)} features")


def test_a_chunk_whose_worker_raises_comes_back_as_its_error(tmp_path: Path) -> None:
    pool = noop_pool(tmp_path)
    pool.worker.labeller = Broken()  # type: ignore[assignment]
    pool.submit(0, Chunk(0, np.array([1, 2], dtype=np.int64)))
    pool.submit(0, Chunk(1, np.array([3], dtype=np.int64)))
    first, second = pool.poll(0.0), pool.poll(0.0)
    assert [(c.chunk.index, c.outcome, c.error) for c in first + second] == [
        (0, None, "RuntimeError: cannot label 2 features"),
        (1, None, "RuntimeError: cannot label 1 features"),
    ]
    assert not (tmp_path / "run" / "labels").exists() or not list((tmp_path / "run" / "labels").iterdir())
