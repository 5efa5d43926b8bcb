"""Soak: many features of the no-op labeller through `labeler run` on a local Ray, workers killed at random.

Starts the real driver (`labeler run`, its own Ray on loopback) on N feature ids with the no-op engine and, while
it runs, SIGKILLs one of its worker actors (a random `ray::LabelActor` under the driver) every few seconds when
all of them are up; Ray restarts the worker and the scheduler retries its chunk. When the driver ends, every
committed part is read back: features lost (planned, in no part), duplicated (in more than one row), and failed
(given up after scheduler.max_attempts; set high, so a kill alone never gives a chunk up). The driver's resident
memory is sampled every second. A killed worker takes seconds to come back (a new process, Ray's restart), so the
kills, not the no-op engine, set how long the soak takes; small chunks (10 features) keep it going long enough
for many kills. Prints one JSON line per measurement; with --results, also writes them there. Not a CI test: run
it on a quiet machine, e.g.

    python benchmarks/soak.py --features 100000 --results benchmarks/results/soak-DATE-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from labeler.run.sink import PartSink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--features-per-chunk", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=5.0, help="mean seconds between two worker kills")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times and victims")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="give up (and fail) after this many seconds")
    parser.add_argument("--results", type=Path, default=None, help="also write the JSON lines to this file")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="labeler-soak-"))
    try:
        ids = np.arange(args.features, dtype=np.int64)
        pq.write_table(pa.table({"feature": ids, "status": ["alive"] * len(ids)}), scratch / "features.parquet")
        pq.write_table(
            pa.table({"feature": [0], "context": ["x"], "target": ["x"], "activation": [1.0]}), scratch / "ex.parquet"
        )
        out = scratch / "run"
        command = [
            sys.executable,
            "-m",
            "labeler.cli",
            "run",
            *("--exemplars", str(scratch / "ex.parquet"), "--features", str(scratch / "features.parquet")),
            *("--out", str(out), "--workers", str(args.workers), "--no-progress"),
            *("--set", "engine=noop", "--set", f"scheduler.features_per_chunk={args.features_per_chunk}"),
            *("--set", "scheduler.max_attempts=1000", "--set", "workers.max_restarts=100000"),
            *("--set", "workers.num_cpus=0.5", "--set", "metrics.port=null"),
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        log = (scratch / "driver.log").open("w")
        started = time.monotonic()
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            lines = _soak(args, driver, out, ids, rng, started)
        finally:
            if driver.poll() is None:  # the soak itself stopped (Ctrl-C, timeout): the driver shuts its Ray down
                driver.send_signal(signal.SIGINT)
                driver.send_signal(signal.SIGINT)
                try:
                    driver.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    driver.kill()
            log.close()
        for line in lines:
            print(json.dumps(line))
        if args.results is not None:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text("".join(json.dumps(line) + "\n" for line in lines))
        if driver.returncode != 0:
            print((scratch / "driver.log").read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"the driver exited {driver.returncode}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _soak(
    args: argparse.Namespace,
    driver: subprocess.Popen[bytes],
    out: Path,
    ids: np.ndarray,
    rng: random.Random,
    started: float,
) -> list[dict[str, Any]]:
    """Kill workers while the driver runs, sample its memory; the measurements once it has ended."""
    process = psutil.Process(driver.pid)
    rss: list[tuple[float, float]] = []
    kills, next_kill, first_part = 0, None, None
    while driver.poll() is None:
        now = time.monotonic() - started
        if now > args.timeout:
            raise SystemExit(f"the soak did not finish within {args.timeout:.0f} s")
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                break
            if not rss or now - rss[-1][0] >= 1.0:
                rss.append((round(now, 1), process.memory_info().rss / 2**20))
        except psutil.Error:
            break
        if first_part is None and (out / "labels").is_dir() and any((out / "labels").iterdir()):
            first_part = now
            next_kill = now + rng.uniform(0.5, 1.5) * args.kill_every
        if next_kill is not None and now >= next_kill:
            victims = _workers(process)
            if len(victims) == args.workers:  # never while one is still coming back: the run keeps moving
                victim = rng.choice(victims)
                try:
                    victim.kill()
                    kills += 1
                except psutil.Error:
                    pass
                next_kill = now + rng.uniform(0.5, 1.5) * args.kill_every
        time.sleep(0.2)
    seconds = time.monotonic() - started
    code = driver.wait()
    found: Counter[int] = Counter()
    statuses: Counter[str] = Counter()
    sink = PartSink(str(out))
    for index in sink.committed():
        table = sink.read_part(index).select(["feature", "status"])
        found.update(table.column("feature").to_pylist())
        statuses.update(table.column("status").to_pylist())
    planned = set(ids.tolist())
    at_part = [mb for t, mb in rss if first_part is not None and t >= first_part]
    lines: list[dict[str, Any]] = []
    lines.append(
        {
            "measure": "soak",
            "features": args.features,
            "features_per_chunk": args.features_per_chunk,
            "workers": args.workers,
            "driver_exit": code,
            "seconds": round(seconds, 1),
            "worker_kills": kills,
            "lost": len(planned - set(found)),
            "duplicated": sum(n - 1 for n in found.values() if n > 1),
            "failed": statuses["failed"],
            "statuses": dict(statuses),
            "driver_rss_mb_start": round(at_part[0], 1) if at_part else None,
            "driver_rss_mb_end": round(rss[-1][1], 1) if rss else None,
            "driver_rss_mb_max": round(max(mb for _, mb in rss), 1) if rss else None,
        }
    )
    step = max(1, -(-len(rss) // 100))  # at most 100 samples
    lines.append({"measure": "driver_rss_mb_over_time", "samples": [[t, round(mb, 1)] for t, mb in rss[::step]]})
    lines.append(
        {
            "measure": "soak_context",
            "command": " ".join(sys.argv),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    return lines


def _workers(driver: psutil.Process) -> list[psutil.Process]:
    """The driver's worker actors: `ray::LabelActor` processes among its descendants."""
    found = []
    for child in driver.children(recursive=True):
        try:
            if child.cmdline()[:1] and child.cmdline()[0].startswith("ray::LabelActor"):
                found.append(child)
        except psutil.Error:
            continue
    return found


if __name__ == "__main__":
    main()
