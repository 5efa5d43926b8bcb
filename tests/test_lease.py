"""One writer per run: the run lease on a local folder and on a real S3 server (moto), held by real processes.

The holder is another process (a short Python program, or a `labeler label` driver), so its process id, its
heartbeat and its stopping (SIGSTOP: a driver that hangs or loses its machine) and dying (SIGKILL) are real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from label_runs import assert_each_feature_once, start_labeler
from servers import MOTO_CREDENTIALS, MotoS3, labelling_data

from labeler.run.lease import LeaseHeld, RunLease
from labeler.run.sink import PartSink, SinkConfig

ROOT = Path(__file__).resolve().parent.parent

HOLD = """
import json, sys, time
from labeler.run.lease import RunLease
from labeler.run.sink import PartSink, SinkConfig
url, options, expiry = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
lease = RunLease(PartSink(url, SinkConfig(storage_options=options, retries=2, backoff_seconds=0.05)), expiry)
lease.acquire()
print("held", lease.id, flush=True)
while lease.lost is None:
    time.sleep(0.05)
print("lost to", lease.lost.holder, flush=True)
"""
"""A process that takes the lease of run URL and holds it (beating) until another takes it over."""


@pytest.fixture(params=["local", "s3"])
def run_folder(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PartSink]:
    """An empty run folder, local or on moto's S3 server."""
    if request.param == "local":
        yield PartSink(str(tmp_path / "run"))
        return
    moto = MotoS3(tmp_path)
    moto.start()
    try:
        moto.make_bucket("runs")
        yield PartSink("s3://runs/run", SinkConfig(storage_options=moto.storage_options()))
    finally:
        moto.stop()


def _holder(sink: PartSink, expiry: float) -> tuple[subprocess.Popen[str], str]:
    """A holder process, once it holds the lease; its id."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, sink.url, json.dumps(dict(sink.config.storage_options)), str(expiry)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    assert line.startswith("held "), f"the holder did not take the lease: {line!r}"
    return process, line.split()[1]


@pytest.mark.slow
def test_a_second_driver_is_refused_naming_the_holder_and_takes_over_once_it_stops_beating(
    run_folder: PartSink,
) -> None:
    holder, holder_id = _holder(run_folder, expiry=2.0)
    try:
        time.sleep(1.0)  # a few heartbeats
        second = RunLease(run_folder, expiry_seconds=2.0)
        with pytest.raises(LeaseHeld) as refused:
            second.acquire()
        said = str(refused.value)
        assert f"driver {holder_id} (process {holder.pid} on " in said
        assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00, last heartbeat [01] s ago", said), said
        assert "expires 2 s after its last heartbeat" in said and run_folder.url in said
        # The holder hangs (as a driver whose machine stalls): still refused within the expiry, taken over after it.
        holder.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        with pytest.raises(LeaseHeld):
            second.acquire()
        time.sleep(max(0.0, stopped + 2.6 - time.monotonic()))
        second.acquire()
        assert second.held is not None and second.held.generation == 1
        # The former holder, running again, learns at its next beat that the run was taken over, even once the
        # new holder has finished and released it.
        second.release()
        holder.send_signal(signal.SIGCONT)
        assert holder.communicate(timeout=30)[0].strip() == f"lost to {second.id}"
        newest = RunLease(run_folder, 2.0).newest()
        assert newest is not None and newest.holder == second.id and newest.released is not None
        third = RunLease(run_folder, 600.0)
        third.acquire()  # a released run is taken at once
        third.release()
        assert sorted(run_folder.list_files("lease")) == ["00000000.json", "00000001.json", "00000002.json"]
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holders_lease_is_taken_at_once_on_its_host(run_folder: PartSink) -> None:
    """A driver killed (SIGKILL, OOM) cannot release its lease; on the same host its process is seen to be gone, so
    the run is resumed without waiting for the expiry."""
    holder, _ = _holder(run_folder, expiry=600.0)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lease = RunLease(run_folder, 600.0)
    lease.acquire()
    assert lease.held is not None and lease.held.generation == 1
    lease.release()


def test_of_drivers_starting_at_the_same_moment_exactly_one_holds_the_run(tmp_path: Path) -> None:
    sink = PartSink(str(tmp_path / "run"))
    leases = [RunLease(sink, 60.0) for _ in range(8)]
    outcomes: list[str] = []
    start = threading.Barrier(len(leases))

    def take(lease: RunLease) -> None:
        start.wait()
        try:
            lease.acquire()
            outcomes.append("held")
        except LeaseHeld:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(outcomes) == Counter({"held": 1, "refused": 7})
    for lease in leases:
        lease.release()
    assert sink.list_files("lease") == ["00000000.json"]


def test_a_lease_that_is_not_one_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    sink = PartSink(str(tmp_path / "run"))
    (tmp_path / "run" / "lease").mkdir(parents=True)
    (tmp_path / "run" / "lease" / "00000003.json").write_text("{not json")
    with pytest.raises(LeaseHeld, match=r"run/lease/00000003.json is not a lease .*remove it and resume"):
        RunLease(sink, 60.0).acquire()
    assert os.listdir(tmp_path / "run" / "lease") == ["00000003.json"]


# The lease as a user meets it: `labeler label` and `labeler run` on one run folder.

N_FEATURES = 60


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return labelling_data(tmp_path_factory.mktemp("lease-data"), N_FEATURES)


def _labeler(*args: str) -> subprocess.Popen[str]:
    return start_labeler(*args, env={**MOTO_CREDENTIALS, "RAY_AUTH_MODE": "disabled"})


def _flags(data: dict[str, Path], out: Path) -> list[str]:
    return [
        "--exemplars",
        str(data["exemplars"]),
        "--discriminator",
        f"hf:{data['model']}",
        "--out",
        str(out),
        "--restarts",
        "2",
        "--steps",
        "25",
        "--examples-per-step",
        "4",
        "--set",
        "scheduler.features_per_chunk=6",
        "--set",
        "label.features_per_batch=6",
    ]


def _wait(condition: object, process: subprocess.Popen[str], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, f"the driver ended before {what}:\n{process.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s"
        time.sleep(0.1)


def _once(out: Path) -> None:
    assert_each_feature_once(PartSink(str(out)), N_FEATURES)


def _holds(out: Path, pid: int) -> bool:
    """Whether the driver of process `pid` holds the run's lease (the newest generation, not released)."""
    newest = RunLease(PartSink(str(out)), 60.0).newest()
    return newest is not None and newest.pid == pid and newest.released is None


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_size) for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_resumes_of_one_run_the_second_is_refused_at_once(data: dict[str, Path], tmp_path: Path) -> None:
    """The issue's case: an unfinished run resumed by `labeler label --resume` and, while that runs, by `labeler run
    --resume`: the second stops at once (before starting Ray), exit 2, naming the first driver and since when, and
    writes nothing; the first labels every feature once."""
    out = tmp_path / "run"
    started = _labeler("label", *_flags(data, out))
    _wait(lambda: PartSink(str(out)).committed(), started, "a committed part")
    started.send_signal(signal.SIGINT)  # drains: an unfinished run
    assert started.wait(timeout=300) == 130
    first = _labeler("label", *_flags(data, out), "--resume")
    try:
        _wait(lambda: _holds(out, first.pid), first, "the resuming driver's lease")  # not the interrupted one's
        first.send_signal(
            signal.SIGSTOP
        )  # holds its lease (alive, its heartbeat younger than the expiry) until SIGCONT
        theirs = ("lease/", "labels/", "prometheus_targets.json")  # what the first driver writes as it goes
        before = {k: v for k, v in _snapshot(out).items() if not k.startswith(theirs)}
        parts = set(PartSink(str(out)).committed())
        began = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "labeler.cli", "run", "--resume", str(out), "--no-progress"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        said = second.stderr
        assert f"{out} is being written by another driver " in said and f"(process {first.pid} on " in said, said
        assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", said) and "Traceback" not in said, said
        assert time.monotonic() - began < 60 and "Ray" not in said  # refused before Ray started
        assert {k: v for k, v in _snapshot(out).items() if not k.startswith(theirs)} == before
        assert parts <= set(PartSink(str(out)).committed())  # the first driver's parts only, none removed
        first.send_signal(signal.SIGCONT)
        output = first.communicate(timeout=600)[0]
        assert first.returncode == 0, output[-3000:]
    finally:
        first.kill()
        first.wait()
    _once(out)
    newest = RunLease(PartSink(str(out)), 60.0).newest()
    assert newest is not None and newest.pid == first.pid and newest.released is not None  # released at the end


@pytest.mark.slow
def test_a_hung_drivers_run_is_taken_over_after_the_lease_expires_and_the_hung_one_stops(
    data: dict[str, Path], tmp_path: Path
) -> None:
    """A driver that stops beating (SIGSTOP: hung, or its machine gone) holds its run until its lease expires
    (sink.lease_expiry_seconds, 3 s here): another is refused within it; after it, `labeler label --resume` takes
    the run over and finishes it. The hung driver, continued, learns it lost the run, stops sending chunks and
    exits 1 saying so. Every feature once."""
    out = tmp_path / "run"
    hung = _labeler("label", *_flags(data, out), "--set", "sink.lease_expiry_seconds=3")
    try:
        _wait(lambda: PartSink(str(out)).committed(), hung, "a committed part")
        hung.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        with pytest.raises(LeaseHeld, match=f"process {hung.pid} on "):  # within the expiry: still its run
            RunLease(PartSink(str(out)), 3.0).acquire()
        assert time.monotonic() - stopped < 2.5
        time.sleep(max(0.0, stopped + 3.5 - time.monotonic()))
        taking = _labeler("label", *_flags(data, out), "--resume")
        output = taking.communicate(timeout=600)[0]
        assert taking.returncode == 0, output[-3000:]
        _once(out)
        hung.send_signal(signal.SIGCONT)
        said = hung.communicate(timeout=300)[0]
        assert hung.returncode == 1, said[-3000:]
        assert f"took {out} over" in said and "stopped sending chunks" in said, said
    finally:
        hung.send_signal(signal.SIGCONT)
        hung.kill()
        hung.wait()
    _once(out)  # nothing the hung driver did after it lost the run duplicated a feature
