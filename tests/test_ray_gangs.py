"""Tensor-parallel worker gangs on a real local Ray cluster: placement on fake GPUs, a run, a killed rank.

One cluster (`ray start --head` on 127.0.0.1, 2 CPUs, 4 fake GPUs: Ray's `--num-gpus` on a CPU node)
serves the module. Gangs of T = 2 ranks shard the tiny Llama over gloo; drivers are `labeler run`
subprocesses. Every run is checked for every feature exactly once.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from label_runs import assert_each_feature_once, run_info
from servers import RayCluster, labelling_data
from test_ray_service import _cmdline, _driver

from labeler.discriminators.causal_lm import CausalLMConfig
from labeler.optimise.labelling import LabelConfig
from labeler.ray_pool import GangPool, WorkerStartError
from labeler.run.config import SourceConfig, WorkersConfig
from labeler.run.sink import PartSink, SinkConfig
from labeler.run.worker import LabellerSpec

import yaml  # isort: skip

ROOT = Path(__file__).resolve().parent.parent
N_FEATURES = 128
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return labelling_data(tmp_path_factory.mktemp("gang-data"), N_FEATURES)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    folder = Path(tempfile.mkdtemp(prefix="lrtp", dir="/tmp"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray_cluster = RayCluster(folder, num_cpus=2, num_gpus=4)
    ray_cluster.start()
    yield ray_cluster
    ray_cluster.stop()


def _config(data: dict[str, Path], out: Path, steps: int) -> Path:
    config = {
        "discriminator": f"hf:{data['model']}",
        "out": str(out),
        "source": {"exemplars": str(data["exemplars"])},
        "label": {"features_per_batch": 16, "optimiser": {"restarts": 2, "max_steps": steps, "examples_per_step": 4}},
        "scheduler": {"features_per_chunk": 8},  # 16 chunks: work remains for the gang rebuilt after a kill
        "workers": {"count": 2, "tensor_parallel": 2, "num_cpus": 0.5},
    }
    path = out.parent / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _assert_exactly_once(sink: PartSink) -> None:
    assert_each_feature_once(sink, N_FEATURES)


def _gang_pids(cluster: RayCluster, method: str) -> list[int]:
    import psutil

    pids = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith(f"ray::GangRank.{method}"):
            parent = process.parent()
            if parent is not None and str(cluster.folder) in " ".join(parent.cmdline()):
                pids.append(process.pid)
    return pids


def test_gangs_land_one_bundle_per_fake_gpu(cluster: RayCluster, data: dict[str, Path], tmp_path: Path) -> None:
    """2 gangs of 2 ranks at 1 GPU each take the 4 fake GPUs, one each, a gang on one node; a third cannot start."""
    ray.init(address=cluster.address)
    try:
        spec = LabellerSpec(CausalLMConfig(model=str(data["model"])), LabelConfig(), SourceConfig(), run_info("tp"))
        sink = PartSink(str(tmp_path / "run"))
        workers = WorkersConfig(count=2, tensor_parallel=2, num_cpus=0.25, num_gpus=1)
        pool = GangPool(workers, spec, sink.url, SinkConfig())
        pool.ready(timeout=300)
        placements = pool.placements()
        assert [len(ranks) for ranks in placements] == [2, 2]
        gpus = [gpu for ranks in placements for rank in ranks for gpu in rank["gpu_ids"]]
        assert sorted(gpus) == [0, 1, 2, 3]  # one bundle per GPU, none shared
        assert all(len({rank["node"] for rank in ranks}) == 1 for ranks in placements)  # STRICT_PACK
        more = GangPool(WorkersConfig(count=1, tensor_parallel=2, num_cpus=0.25, num_gpus=1), spec, sink.url,
                        SinkConfig())  # fmt: skip
        with pytest.raises(WorkerStartError, match=r"1 of 1 gangs of 2 ranks did not start within 3 s \(0 started\)"):
            more.ready(timeout=3)
        more.shutdown()
        pool.shutdown()
    finally:
        ray.shutdown()


def test_two_gangs_label_every_feature_once_and_a_killed_rank_is_rebuilt(
    cluster: RayCluster, data: dict[str, Path], tmp_path: Path
) -> None:
    """Two tensor-parallel gangs label every feature once; a follower rank killed mid-chunk gets its gang rebuilt and
    the chunk retried. About 1.5 minutes here: the one test of a sharded discriminator losing a rank on Ray."""
    out = tmp_path / "run"
    driver = _driver(cluster, "--config", str(_config(data, out, steps=12)))
    sink = PartSink(str(out))
    deadline = time.monotonic() + 300
    while not sink.committed() or not (followers := _gang_pids(cluster, "follow")):
        assert driver.poll() is None, f"the driver ended early:\n{driver.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "no part was committed in time"
        time.sleep(0.2)
    # Rank 0's title names the task it ran last, and the driver asks it for its step every 2 s: wait until it
    # shows a chunk being labelled.
    while not [pid for pid in _gang_pids(cluster, "run") if "GangRank.run" in " ".join(_cmdline(pid))]:
        assert driver.poll() is None, f"the driver ended early:\n{driver.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "no gang was labelling a chunk"
        time.sleep(0.05)
    os.kill(followers[0], signal.SIGKILL)  # a non-zero rank mid-chunk: its rank 0 is stuck in a collective
    seen = set(followers)
    while driver.poll() is None and time.monotonic() < deadline + 600:
        seen.update(_gang_pids(cluster, "follow"))
        time.sleep(0.5)
    output = driver.communicate(timeout=60)[0]
    assert len(seen) > len(followers), "no rank was started again: the gang was not rebuilt"
    assert driver.returncode == 0, output[-3000:]
    _assert_exactly_once(sink)
    assert set(pq.read_table(out / "labels").column("status").to_pylist()) == {"labelled"}
