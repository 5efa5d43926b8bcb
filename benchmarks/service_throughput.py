"""A million features through the scheduler and the sink on a local Ray, with the no-op engine.

Measures features per second of the whole service path (plan, scheduler, Ray actors, one committed
Parquet part per chunk) and the driver's peak RSS, and, as the baseline in the same run, the sink alone:
the same parts committed one after another in this process with no scheduler and no Ray. Prints one
JSON line per measurement and one with the ratio.

    python benchmarks/service_throughput.py [--features 1000000] [--features-per-chunk 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from labeler.ray_pool import RayPool
from labeler.records.labels import RunInfo, config_hash, to_table
from labeler.run.loading import load_config
from labeler.run.scheduler import Chunk
from labeler.run.service import execute, prepare
from labeler.run.sink import PartSink
from labeler.run.worker import NoopLabeller


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=1_000_000)
    parser.add_argument("--features-per-chunk", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-chunks", type=int, default=100, help="chunks the sink-alone baseline commits")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="labeler-bench-"))
    try:
        # The input: a harvest-style features.parquet with a million ids (1% dead); the no-op engine reads no rows.
        ids = np.arange(args.features, dtype=np.int64)
        status = np.where(ids % 100 == 99, "dead", "alive")
        pq.write_table(pa.table({"feature": ids, "status": status}), scratch / "features.parquet")
        pq.write_table(
            pa.table({"feature": [0], "context": ["x"], "target": ["x"], "activation": [1.0]}), scratch / "ex.parquet"
        )

        # Baseline: the sink alone, in this process.
        sink = PartSink(str(scratch / "baseline"))
        noop = NoopLabeller()
        info = RunInfo("baseline", "noop", config_hash("noop"), 0, datetime.now(UTC).isoformat())
        start = time.perf_counter()
        for index in range(args.baseline_chunks):
            features = ids[index * args.features_per_chunk : (index + 1) * args.features_per_chunk]
            sink.commit(index, to_table(noop.label(Chunk(index, features).features), info))
        baseline = args.baseline_chunks * args.features_per_chunk / (time.perf_counter() - start)
        print(json.dumps({"measure": "sink_alone_features_per_s", "value": round(baseline, 1)}))

        config = load_config(
            None,
            {
                "out": str(scratch / "run"),
                "engine": "noop",
                "source.exemplars": str(scratch / "ex.parquet"),
                "source.features": str(scratch / "features.parquet"),
                "scheduler.features_per_chunk": args.features_per_chunk,
                "scheduler.max_in_flight_per_worker": 4,
                "workers.count": args.workers,
                "workers.num_cpus": 0.5,
                "metrics.port": None,
            },
        )
        rss_before = peak_rss_mb()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=tempfile.mkdtemp(prefix="lrb", dir="/tmp"),
        )
        try:
            start = time.perf_counter()
            run = prepare(config)
            pool = RayPool(config.workers, run.spec(), config.out, config.sink)
            pool.ready()
            progress = execute(run, pool)
            seconds = time.perf_counter() - start
        finally:
            ray.shutdown()
        assert progress.finished == args.features, progress
        committed = PartSink(config.out).committed()
        assert len(committed) == run.plan.n_chunks
        rate = args.features / seconds
        print(
            json.dumps(
                {
                    "measure": "service_noop_features_per_s",
                    "value": round(rate, 1),
                    "features": args.features,
                    "chunks": run.plan.n_chunks,
                    "workers": args.workers,
                    "seconds": round(seconds, 1),
                    "statuses": dict(progress.statuses),
                }
            )
        )
        print(
            json.dumps(
                {
                    "measure": "driver_peak_rss_mb",
                    "value": round(peak_rss_mb(), 1),
                    "before_ray_mb": round(rss_before, 1),
                }
            )
        )
        print(json.dumps({"measure": "service_over_sink_alone", "value": round(rate / baseline, 3)}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
