"""Outages a run rides out or stops cleanly at: an object store that goes away and comes back with its data, and a
run folder whose filesystem fills up. Each ends with every feature committed exactly once.

The object store is moto's S3 server behind a TCP proxy written here, which for some seconds refuses new
connections and cuts open ones while moto keeps its data. The full filesystem is a real one: a small tmpfs
mounted for the test (needs root, as CI runs; elsewhere the test is skipped and says why).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from label_runs import assert_each_feature_once, start_labeler
from servers import MOTO_CREDENTIALS, MotoS3, free_port, labelling_data

from labeler.run.sink import PartSink, SinkConfig

ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = 60


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 to `target`; while `down`, it refuses every connection (accepts and resets it) and
    has cut every one that was open."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.down = False
        self.refused = 0
        self.cut = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open |= {client, server}
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def outage(self, seconds: float) -> None:
        """Refuse and cut every connection for `seconds`, then serve again."""
        self.down = True
        with self._lock:
            cut, self._open = self._open, set()
        for end in cut:
            _reset(end)
        self.cut += len(cut) // 2
        time.sleep(seconds)
        self.down = False

    def close(self) -> None:
        self._closed = True
        self.listener.close()


def _reset(end: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a host that went away answers."""
    with contextlib.suppress(OSError):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        end.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return labelling_data(tmp_path_factory.mktemp("outage-data"), N_FEATURES)


def _label(*args: str) -> subprocess.Popen[str]:
    return start_labeler("label", *args, env=MOTO_CREDENTIALS)


@pytest.mark.slow
def test_an_object_store_that_goes_away_and_comes_back_loses_and_repeats_nothing(
    data: dict[str, Path], tmp_path: Path
) -> None:
    """Mid-run, the S3 endpoint refuses and cuts every connection for 5 s (its data kept, as a load balancer or
    network that fails over): the run's storage calls retry, the run finishes, every feature once."""
    moto = MotoS3(tmp_path)
    moto.start()
    proxy = FlakyProxy(("127.0.0.1", moto.port))
    try:
        moto.make_bucket("runs")
        direct = PartSink("s3://runs/run", SinkConfig(storage_options=moto.storage_options()))
        options = f"{{endpoint_url: 'http://127.0.0.1:{proxy.port}', skip_instance_cache: true}}"
        run = _label(
            *(
                "--exemplars",
                str(data["exemplars"]),
                "--discriminator",
                f"hf:{data['model']}",
                "--out",
                "s3://runs/run",
            ),
            *("--restarts", "1", "--steps", "12", "--examples-per-step", "4"),
            *("--set", "scheduler.features_per_chunk=3", "--set", f"sink.storage_options={options}"),
            *("--set", "sink.retries=30", "--set", "sink.max_backoff_seconds=1"),
        )
        try:
            deadline = time.monotonic() + 300
            while len(direct.committed()) < 2:
                assert run.poll() is None, run.communicate()[0][-3000:]
                assert time.monotonic() < deadline, "no part committed in time"
                time.sleep(0.1)
            before = len(direct.committed())
            proxy.outage(5.0)
            output = run.communicate(timeout=600)[0]
        finally:
            run.kill()
            run.wait()
        assert run.returncode == 0, output[-3000:]
        assert before < N_FEATURES // 3, "the run ended before the outage"
        assert proxy.refused > 0, "no request met the outage"
        assert_each_feature_once(direct, N_FEATURES)
        assert f"{N_FEATURES} of {N_FEATURES} features committed" in output
    finally:
        proxy.close()
        moto.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted at tmp_path/disk (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_run_folder_stops_the_run_naming_it_and_the_resume_finishes(
    small_disk: Path, data: dict[str, Path]
) -> None:
    """The run folder's filesystem fills up part-way: the run stops (exit 1) with a message naming the folder and
    how to go on, no part is torn, nothing partial is left, no feature is recorded failed for it; with space
    again, --resume labels the rest, every feature once."""
    out = small_disk / "run"
    flags = ["--exemplars", str(data["exemplars"]), "--discriminator", "minilm", "--out", str(out)]
    flags += ["--set", "engine=noop", "--set", "scheduler.features_per_chunk=1"]
    stopped = _label(*flags)
    output = stopped.communicate(timeout=300)[0]
    assert stopped.returncode == 1, output[-3000:]
    assert f"labeler: error: no space left in {out} (commit part " in output, output[-3000:]
    assert f"continue with: labeler run --resume {out}" in output
    sink = PartSink(str(out))
    committed = sink.committed()
    assert 0 < len(committed) < N_FEATURES
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(f"part-{i:08d}.parquet" for i in committed)
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]
    for part in (out / "labels").iterdir():
        assert set(pq.read_table(part).column("status").to_pylist()) == {"skipped"}  # whole, and none failed
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    resumed = _label(*flags, "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert_each_feature_once(sink, N_FEATURES)
