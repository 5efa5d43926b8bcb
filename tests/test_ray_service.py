"""The service on real Ray: fake-GPU placement, `ray job submit` end to end with metrics, and chaos.

One local cluster (`ray start --head` on 127.0.0.1, its own ports and temp folder, 2 CPUs) serves the
module; drivers run as `labeler run` subprocesses so they can be killed. Each test checks that every
feature appears exactly once in the committed output.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from label_runs import assert_each_feature_once, run_info
from servers import BIN, MOTO_CREDENTIALS, MotoS3, RayCluster, labelling_data

from labeler.discriminators.embedding import EmbeddingConfig
from labeler.optimise.labelling import LabelConfig
from labeler.ray_pool import RayPool, WorkerStartError
from labeler.run import metrics
from labeler.run.config import SourceConfig, WorkersConfig
from labeler.run.scheduler import Scheduler, SchedulerConfig, drive, make_plan
from labeler.run.sink import PartSink, SinkConfig
from labeler.run.worker import LabellerSpec, give_up_chunk

ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = 240
pytestmark = pytest.mark.slow


_STARTED: list[subprocess.Popen[str]] = []
"""Every `labeler` process a test started; one still running when its test ends is killed then, so a test that
failed midway never leaves a driver holding the shared cluster's CPUs for the tests after it."""


@pytest.fixture(autouse=True)
def _stop_leftover_processes() -> Iterator[None]:
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return labelling_data(tmp_path_factory.mktemp("service-data"), N_FEATURES)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    # Ray's socket paths must stay short, so its temp folder is not under pytest's tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="lrt", dir="/tmp"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray_cluster = RayCluster(folder)
    ray_cluster.start()
    yield ray_cluster
    ray_cluster.stop()


def _config(data: dict[str, Path], out: str, tmp: Path, steps: int = 4, **extra: object) -> Path:
    config = {
        "discriminator": f"hf:{data['model']}",
        "out": out,
        "source": {"exemplars": str(data["exemplars"])},
        "label": {"features_per_batch": 20, "optimiser": {"restarts": 2, "max_steps": steps, "examples_per_step": 4}},
        "scheduler": {"features_per_chunk": 20},
        "workers": {"count": 2},
        **extra,
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _driver(cluster: RayCluster, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", "run", "--address", cluster.address, "--no-progress", *args],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _STARTED.append(process)
    return process


def _assert_exactly_once(sink: PartSink) -> None:
    assert_each_feature_once(sink, N_FEATURES)


def _wait_for_parts(sink: PartSink, n: int, process: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.committed()) < n:
        assert process.poll() is None, f"the driver ended early:\n{process.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "no parts were committed in time"
        time.sleep(0.2)


def test_fractional_gpus_land_as_configured(tmp_path: Path) -> None:
    """Ray advertises two fake GPUs; four workers at 0.5 GPU pack two per GPU, and a no-op run completes."""
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="lrg", dir="/tmp"))
    try:
        info = run_info("fake-gpus")
        spec = LabellerSpec(EmbeddingConfig(kind="minilm"), LabelConfig(), SourceConfig(), info, "noop")
        sink = PartSink(str(tmp_path / "run"))
        pool = RayPool(WorkersConfig(count=4, num_cpus=0.5, num_gpus=0.5), spec, sink.url, SinkConfig())
        pool.ready()
        gpus = Counter(gpu for placement in pool.placements() for gpu in placement["gpu_ids"])
        assert gpus == Counter({0: 2, 1: 2})
        waiting = RayPool(WorkersConfig(count=1, num_cpus=0.5, num_gpus=1), spec, sink.url, SinkConfig())
        with pytest.raises(WorkerStartError, match="1 of 1 workers did not start within 3 s"):  # no whole GPU left
            waiting.ready(timeout=3)
        waiting.shutdown()
        plan = make_plan(np.arange(1000), np.array([2000, 2001]), 64)
        progress = drive(
            Scheduler(plan, SchedulerConfig(features_per_chunk=64)), pool, lambda c, e: give_up_chunk(sink, info, c, e)
        )
        assert progress.statuses == Counter({"skipped": 1000, "dead": 2})
        assert len(sink.committed()) == plan.n_chunks
        pool.shutdown()
    finally:
        ray.shutdown()


def test_job_submit_labels_every_feature_once_and_workers_export_metrics(
    cluster: RayCluster, data: dict[str, Path], tmp_path: Path
) -> None:
    """The production path end to end: `ray job submit` of `labeler run` on a `ray start` cluster labels every
    feature once, and a worker's /metrics (found through the targets file the driver writes) serves the labelling
    series while the job runs. About 2-3 minutes here: 30 steps keep the job running long enough to scrape a worker
    after its first chunk; the one test of the job path and of live worker metrics."""
    out = tmp_path / "run"
    config = _config(data, str(out), tmp_path, steps=30)
    command = [sys.executable, "-m", "labeler.cli", "run", "--no-progress", "--config", str(config)]
    job = Job(cluster, command)
    # While the job runs, scrape a worker's /metrics from the Prometheus targets the driver wrote.
    sink = PartSink(str(out))
    scraped = ""
    deadline = time.monotonic() + 300
    while job.running() and time.monotonic() < deadline:
        targets = out / "prometheus_targets.json"
        if targets.exists() and sink.committed():
            endpoints = json.loads(targets.read_text())[0]["targets"]
            for endpoint in endpoints[1:]:  # the first is the driver
                try:
                    text = urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=5).read().decode()
                except OSError:
                    continue
                if _sample(text, "labeler_chunk_seconds_count") > 0:
                    scraped = text
            if scraped:
                break
        time.sleep(0.2)
    while job.running() and time.monotonic() < deadline:
        time.sleep(1)
    assert job.status() == "SUCCEEDED", job.logs()[-3000:]
    _assert_exactly_once(sink)
    labels = pq.read_table(out / "labels")
    assert set(labels.column("status").to_pylist()) == {"labelled"}
    assert scraped, "no worker endpoint with a finished chunk was scraped during the run"
    assert _sample(scraped, "labeler_optimisation_steps_total") >= _sample(scraped, "labeler_restarts_total") > 0
    assert _sample(scraped, 'labeler_device_memory_bytes{device="cpu",kind="peak"}') > 10_000_000
    assert 0 < _sample(scraped, "labeler_chunk_seconds_sum") < 600
    names = {line.split("{")[0].split(" ")[0] for line in scraped.splitlines() if line and not line.startswith("#")}
    assert {"labeler_restarts_total", "labeler_chunk_seconds_bucket", "labeler_device_memory_bytes"} <= names
    assert names <= metrics.exported_series()


class Job:
    """A job submitted with `ray job submit --no-wait`, once the head's job agent is up (it comes up a few
    seconds after `ray start`; until then submission answers 'No available agent')."""

    def __init__(self, cluster: RayCluster, command: list[str]) -> None:
        self.cluster = cluster
        self.id = f"labeler-test-{time.time_ns()}"
        deadline = time.monotonic() + 120
        while True:
            submit = self._ray("submit", "--no-wait", "--submission-id", self.id, "--", *command)
            if submit.returncode == 0:
                break
            assert time.monotonic() < deadline, f"ray job submit failed:\n{submit.stdout[-2000:]}"
            time.sleep(2)

    def _ray(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "ray"), "job", args[0], "--address", self.cluster.dashboard, *args[1:]],
            env=self.cluster.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def status(self) -> str:
        done = self._ray("status", self.id)
        out = (done.stdout + done.stderr).lower()  # "Job 'id' succeeded", "... is currently running"
        for state in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
            if state.lower() in out:
                return state
        return "UNKNOWN"

    def running(self) -> bool:
        return self.status() in ("RUNNING", "PENDING", "UNKNOWN")

    def logs(self) -> str:
        return self._ray("logs", self.id).stdout


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " ") or (("{" in series) and line.startswith(series)):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _label_actor_pids(cluster: RayCluster) -> list[int]:
    import psutil

    pids = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("ray::LabelActor"):
            parent = process.parent()
            if parent is not None and str(cluster.folder) in " ".join(parent.cmdline()):
                pids.append(process.pid)
    return pids


def test_a_killed_worker_is_restarted_and_its_chunk_retried(
    cluster: RayCluster, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    driver = _driver(cluster, "--config", str(_config(data, str(out), tmp_path, steps=20)))
    sink = PartSink(str(out))
    _wait_for_parts(sink, 1, driver)
    busy = [pid for pid in _label_actor_pids(cluster) if "LabelActor.run" in " ".join(_cmdline(pid))]
    victims = busy or _label_actor_pids(cluster)
    assert victims, "no worker process found"
    os.kill(victims[0], signal.SIGKILL)
    output = driver.communicate(timeout=600)[0]
    assert driver.returncode == 0, output[-3000:]
    _assert_exactly_once(sink)
    assert set(pq.read_table(out / "labels").column("status").to_pylist()) == {"labelled"}


def _tree(pids: list[int]) -> list[int]:
    """The processes and every descendant of them."""
    import psutil

    found = set(pids)
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
    return sorted(found)


def _cluster_pids(cluster: RayCluster) -> list[int]:
    """Every process of the test cluster: those `ray start` left running (named by its temp folder) and theirs."""
    out = subprocess.run(["pgrep", "-f", str(cluster.folder)], capture_output=True, text=True).stdout
    return _tree([int(pid) for pid in out.split()])


def _listening(pids: list[int]) -> dict[int, tuple[str, set[tuple[str, int]]]]:
    """Per process, its name and the (address, port) of every socket others can reach: listening TCP sockets and
    bound, unconnected UDP ones."""
    import psutil

    found: dict[int, tuple[str, set[tuple[str, int]]]] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            sockets = process.net_connections(kind="inet")
            reachable = {
                (c.laddr.ip, c.laddr.port)
                for c in sockets
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr)
            }
            command = process.cmdline() or [process.name()]
            found[pid] = (" ".join([os.path.basename(command[0]), *command[1:3]])[:100], reachable)
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as Ray's gRPC servers report it
    return (mapped or ip).is_loopback


def _off_loopback(listening: dict[int, tuple[str, set[tuple[str, int]]]]) -> list[str]:
    return [
        f"{name} (pid {pid}) on {ip}:{port}"
        for pid, (name, sockets) in sorted(listening.items())
        for ip, port in sorted(sockets)
        if not _is_loopback(ip)
    ]


RAY_PROCESSES = ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::LabelActor")
"""Ray's own processes a run has, each with a listening socket: the socket tests must have seen every one."""


def _names_seen(listening: dict[int, tuple[str, set[tuple[str, int]]]]) -> set[str]:
    return {kind for name, sockets in listening.values() if sockets for kind in RAY_PROCESSES if kind in name}


def test_every_listening_socket_of_the_cluster_the_driver_and_the_workers_is_on_loopback(
    cluster: RayCluster, data: dict[str, Path], tmp_path: Path
) -> None:
    """The test cluster (its GCS, raylet, dashboard and agents, workers) and a driver on it with its metrics
    server on: every socket any of their processes listens on is on loopback, and the Prometheus targets the
    driver wrote name those addresses."""
    out = tmp_path / "run"
    driver = _driver(cluster, "--config", str(_config(data, str(out), tmp_path, steps=20, metrics={"port": 0})))
    sink = PartSink(str(out))
    try:
        _wait_for_parts(sink, 1, driver)
        targets = json.loads((out / "prometheus_targets.json").read_text())[0]["targets"]
        assert len(targets) == 3, targets  # the driver and two workers
        listening = _listening(sorted({*_cluster_pids(cluster), *_tree([driver.pid])}))
        assert driver.returncode is None, "the driver ended early"
        assert _names_seen(listening) == set(RAY_PROCESSES), sorted(name for name, _ in listening.values())
        bound = {f"{ip}:{port}" for _, sockets in listening.values() for ip, port in sockets}
        assert set(targets) <= bound, f"targets {targets} are not all among the listening sockets {bound}"
        assert _off_loopback(listening) == []
    finally:
        driver.kill()
        output = driver.communicate(timeout=60)[0]
    assert "(bound to 127.0.0.1), workers" in output and "workers ['127.0.0.1:" in output, output[-3000:]


def test_a_local_run_listens_on_loopback_only(data: dict[str, Path], tmp_path: Path) -> None:
    """`labeler run` without an address starts its own Ray: every socket of the driver's whole process tree (the
    GCS, raylet, agents and workers Ray starts under it) is on loopback, with nothing in the environment asking
    for it."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_ENABLE_")}
    config = _config(data, str(out), tmp_path, steps=20, metrics={"port": 0})
    driver = subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", "run", "--no-progress", "--config", str(config)],
        env={**env, **MOTO_CREDENTIALS, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _STARTED.append(driver)
    sink = PartSink(str(out))
    tree: list[int] = []
    try:
        _wait_for_parts(sink, 1, driver)
        tree = _tree([driver.pid])
        listening = _listening(tree)
        assert driver.poll() is None, "the driver ended early"
        assert _names_seen(listening) == set(RAY_PROCESSES), sorted(name for name, _ in listening.values())
        assert _off_loopback(listening) == []
    finally:
        driver.send_signal(signal.SIGINT)  # drains and shuts its Ray down
        output = driver.communicate(timeout=300)[0]
        for pid in tree:  # anything of its Ray still running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert driver.returncode == 130, output[-3000:]


def _cmdline(pid: int) -> list[str]:
    import psutil

    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return []


def test_ctrl_c_drains_and_a_killed_driver_resumes_without_rewriting_committed_parts(
    cluster: RayCluster, data: dict[str, Path], tmp_path: Path
) -> None:
    """Ctrl-C drains (chunks in flight committed, exit 130), a SIGKILLed driver's run resumes, and no committed part
    is rewritten. About 2 minutes here: three drivers over one run, each long enough to be stopped mid-run; the one
    test of the interrupt path on a real cluster."""
    out = tmp_path / "run"
    sink = PartSink(str(out))
    # Ctrl-C: the chunks in flight finish and are committed, nothing else is sent; exit status 130.
    driver = _driver(cluster, "--config", str(_config(data, str(out), tmp_path, steps=20)))
    _wait_for_parts(sink, 1, driver)
    driver.send_signal(signal.SIGINT)
    output = driver.communicate(timeout=300)[0]
    assert driver.returncode == 130, output[-3000:]
    assert f"continue with: labeler run --resume {out}" in output
    drained = len(sink.committed())
    assert 1 <= drained < N_FEATURES // 20
    assert sorted(p.name for p in (out / "labels").iterdir() if not p.name.startswith("part-")) == []
    # SIGKILL of a resumed driver mid-run, then a second resume finishes the run.
    driver = _driver(cluster, "--resume", str(out))
    _wait_for_parts(sink, drained + 1, driver)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "labels").glob("part-*.parquet")}
    assert drained < len(before) < N_FEATURES // 20
    resumed = _driver(cluster, "--resume", str(out))
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    # A worker of the killed driver may still commit the chunk it held before Ray reaps it (a part then
    # appears after `before` was taken, whole), so the resumed run finds at least the parts seen.
    found = re.search(r"(\d+) chunks already committed", output)
    assert found and len(before) <= int(found.group(1)) < N_FEATURES // 20, output[-3000:]
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "labels").glob("part-*.parquet")}
    assert {name: after[name] for name in before} == before  # no committed part was rewritten
    _assert_exactly_once(sink)


def test_an_s3_server_stop_and_restart_mid_run_loses_nothing(
    cluster: RayCluster, data: dict[str, Path], tmp_path: Path
) -> None:
    moto = MotoS3(tmp_path)
    moto.start()
    try:
        moto.make_bucket("runs")
        options = moto.storage_options()
        sink_config = {
            "storage_options": moto.storage_options(keys=False),
            "retries": 40,
            "backoff_seconds": 0.1,
            "max_backoff_seconds": 1.0,
        }
        config = _config(data, "s3://runs/chaos", tmp_path, steps=20, sink=sink_config)
        driver = _driver(cluster, "--config", str(config))
        sink = PartSink("s3://runs/chaos", SinkConfig(storage_options=options))
        _wait_for_parts(sink, 1, driver)
        moto.stop()
        time.sleep(3)
        moto.start(replay=True)
        output = driver.communicate(timeout=600)[0]
        assert driver.returncode == 0, output[-3000:]
        _assert_exactly_once(sink)
    finally:
        moto.stop()


def test_a_discriminator_that_does_not_load_stops_the_run_cleanly_and_leaves_the_folder_reusable(
    cluster: RayCluster, data: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    missing = tmp_path / "no-such-model"
    driver = _driver(cluster, "--config", str(_config(data, str(out), tmp_path)), "--discriminator", f"hf:{missing}")
    output = driver.communicate(timeout=300)[0]
    assert driver.returncode == 2, output[-3000:]
    assert f"a worker could not start: InputError: discriminator model folder not found: {missing}" in output
    assert "run the same command again" in output and "Traceback" not in output.split("labeler: error:")[-1]
    assert not (out / "manifest.json").exists() and not PartSink(str(out)).committed()


def _label(*args: str) -> subprocess.Popen[str]:
    """`labeler label` as a user runs it (in-process pool, no Ray)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", "label", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _STARTED.append(process)
    return process


def _rows(out: Path) -> list[dict[str, object]]:
    """The label rows of a run, without what differs between two runs of the same settings (id, times)."""
    from labeler.store.dataset import read_runs

    varying = {"run_id", "started_at", "device_seconds"}
    rows = read_runs([str(out)]).labels.sort_by("feature").to_pylist()
    return [{k: v for k, v in row.items() if k not in varying} for row in rows]


FLOAT_SUMS = ("loss_answer", "loss_kl", "loss_entropy")


def _exact(row: dict[str, object]) -> dict[str, object]:
    """A row without the float sums, and its top tokens without their probabilities."""
    kept = {k: v for k, v in row.items() if k not in FLOAT_SUMS and k != "top_tokens"}
    tokens = row["top_tokens"] or []
    return kept | {"top_tokens": [[(t["token"], t["token_id"]) for t in slot] for slot in tokens]}  # type: ignore[union-attr]


def _floats(row: dict[str, object]) -> list[float]:
    tokens = row["top_tokens"] or []
    probs = [t["prob"] for slot in tokens for t in slot]  # type: ignore[union-attr]
    return [float("nan") if row[k] is None else row[k] for k in FLOAT_SUMS] + probs  # type: ignore[misc]


def test_label_and_run_write_the_same_run_and_each_resumes_the_other(
    cluster: RayCluster, data: dict[str, Path], tmp_path: Path
) -> None:
    """`labeler label` is a local `labeler run`: the same flags, the same rows and config hash; a `label` run killed
    after its first committed part is finished by `run --resume` (and a `run` by `label --resume`), exactly once."""
    flags = ["--exemplars", str(data["exemplars"]), "--discriminator", f"hf:{data['model']}"]
    flags += ["--restarts", "1", "--steps", "3", "--examples-per-step", "4", "--set", "scheduler.features_per_chunk=40"]
    ran = _driver(cluster, *flags, "--out", str(tmp_path / "run"))
    labelled = _label(*flags, "--out", str(tmp_path / "label"))
    for process in (ran, labelled):
        assert process.wait(timeout=600) == 0, process.communicate()[0][-3000:]
    labelled, ran_rows = _rows(tmp_path / "label"), _rows(tmp_path / "run")
    assert len(ran_rows) == N_FEATURES
    # The final losses and the soft label's probabilities are sums that a Ray worker (one CPU thread) and this
    # process (two) add up in another order: equal to float precision, not bitwise. Everything else is exact.
    assert [_exact(row) for row in labelled] == [_exact(row) for row in ran_rows]
    local = [value for row in labelled for value in _floats(row)]
    on_ray = [value for row in ran_rows for value in _floats(row)]
    assert local == pytest.approx(on_ray, rel=1e-4, abs=1e-6, nan_ok=True)

    # label, killed once its first part is committed, then finished on Ray.
    out = tmp_path / "label-then-run"
    sink = PartSink(str(out))
    killed = _label(*flags, "--out", str(out), "--set", "scheduler.features_per_chunk=20")
    _wait_for_parts(sink, 1, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert 1 <= len(sink.committed()) < N_FEATURES // 20
    resumed = _driver(cluster, "--resume", str(out))
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    _assert_exactly_once(sink)
    assert [_exact(row) for row in _rows(out)] == [_exact(row) for row in ran_rows]  # chunks change parts only

    # and the other way round: run, interrupted, finished by label --resume.
    out = tmp_path / "run-then-label"
    sink = PartSink(str(out))
    interrupted = _driver(cluster, *flags, "--out", str(out), "--set", "scheduler.features_per_chunk=20")
    _wait_for_parts(sink, 1, interrupted)
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(timeout=300) == 130
    finished = _label(*flags, "--out", str(out), "--resume", "--set", "scheduler.features_per_chunk=20")  # as run
    output = finished.communicate(timeout=600)[0]
    assert finished.returncode == 0, output[-3000:]
    _assert_exactly_once(sink)
