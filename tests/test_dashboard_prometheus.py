"""The Grafana dashboard against a real Prometheus scraping a real run.

Debian's `prometheus` server on 127.0.0.1 reads the run's OUT/prometheus_targets.json through file_sd and
scrapes the driver and both workers every second while a short job runs on a local Ray cluster; every
panel's PromQL of deploy/grafana/dashboards/labeler.json must then return at least one series through
Prometheus's HTTP API. Without the binary the test is skipped, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from servers import RayCluster, exemplar_parts, free_port, tiny_model

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "labeler.json"
N_FEATURES = 600  # far more than needed: the job runs until every panel has answered, then is stopped
# The failures panel (status failed|dead) needs failures while the job runs. Dead features alone would
# not do: their chunks come last, so their count appears as the driver exits and is scraped once at most.
# Features whose harvest failed (no exemplars, an `error` in the features file) fail inside early chunks.
DEAD = [3, 50]
FAILED = [12, 13, 44]
pytestmark = pytest.mark.slow


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel, Grafana's $__rate_interval replaced by a window that holds
    several 1 s scrapes."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel["title"], target["expr"].replace("$__rate_interval", "1m"))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert all("$" not in expr for _, expr in queries), "a Grafana variable is left in a query"
    return queries


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "prometheus missing (Debian's prometheus package; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


class Prometheus:
    """`prometheus` on 127.0.0.1 with its own data folder, scraping the file_sd targets at `targets`."""

    def __init__(self, binary: str, folder: Path, targets: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "labeler", "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}]}
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (folder / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).close()
                return
            except OSError:
                assert self.process.poll() is None, (folder / "prometheus.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.3)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    folder = Path(tempfile.mkdtemp(prefix="lrp", dir="/tmp"))  # Ray's socket paths must stay short
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray_cluster = RayCluster(folder)
    ray_cluster.start()
    yield ray_cluster
    ray_cluster.stop()


def test_every_dashboard_panel_returns_data_from_a_real_prometheus(
    prometheus_binary: str, cluster: RayCluster, tmp_path: Path
) -> None:
    exemplars = exemplar_parts(tmp_path / "exemplars", N_FEATURES)
    for part in exemplars.iterdir():
        table = pq.read_table(part)
        pq.write_table(table.filter(pc.invert(pc.is_in(table.column("feature"), pa.array(FAILED)))), part)
    features = tmp_path / "features.parquet"
    ids = list(range(N_FEATURES))
    statuses = ["dead" if f in DEAD else "failed" if f in FAILED else "alive" for f in ids]
    errors = ["tokenizer broke" if f in FAILED else None for f in ids]
    pq.write_table(pa.table({"feature": ids, "status": statuses, "error": errors}), features)
    out = tmp_path / "run"
    config = {
        "discriminator": f"hf:{tiny_model(tmp_path / 'model')}",
        "out": str(out),
        "source": {"exemplars": str(exemplars), "features": str(features)},
        "label": {"features_per_batch": 10, "optimiser": {"restarts": 2, "max_steps": 100, "examples_per_step": 4}},
        "scheduler": {"features_per_chunk": 10},
        "workers": {"count": 2},
        "metrics": {"port": 0},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus", out / "prometheus_targets.json")
    command = ["run", "--address", cluster.address, "--no-progress", "--config", str(tmp_path / "run.yaml")]
    driver = subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", *command],
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    queries = panel_queries()
    answered: dict[str, list[dict[str, Any]]] = {}
    scraped = 0  # the most targets up at once
    try:
        # Queried while the job runs: once it ends its servers go, and Prometheus marks their series stale.
        # Prometheus applies discovered targets at most every 5 s, so the job must outlast that by far.
        deadline = time.monotonic() + 300
        while len(answered) < len(queries) and driver.poll() is None and time.monotonic() < deadline:
            scraped = max(scraped, len(prometheus.query('up{job="labeler"} == 1')))
            for _title, expr in queries:
                if expr not in answered and (result := prometheus.query(expr)):
                    answered[expr] = result
            time.sleep(1)
    finally:
        driver.kill()
        output = driver.communicate(timeout=60)[0]
        prometheus.stop()
    assert scraped == 3, f"Prometheus never scraped the driver and both workers at once\n{output[-3000:]}"
    silent = [f"{title}: {expr}" for title, expr in queries if expr not in answered]
    assert not silent, "panels without data:\n" + "\n".join(silent) + f"\n{output[-3000:]}"
