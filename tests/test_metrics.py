"""labeler/run/metrics.py's servers: loopback unless told otherwise, and the address Prometheus is given."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import psutil

from labeler.run import metrics
from labeler.run.loading import load_config


def _listening_on(port: int) -> set[str]:
    sockets = psutil.Process(os.getpid()).net_connections(kind="tcp")
    return {c.laddr.ip for c in sockets if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_a_metrics_server_listens_on_loopback_by_default() -> None:
    port = metrics.serve(0)
    assert _listening_on(port) == {"127.0.0.1"}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "labeler_queue_depth" in text


def test_a_server_on_all_interfaces_is_announced_at_the_nodes_address() -> None:
    port = metrics.serve(0, "0.0.0.0")
    assert _listening_on(port) == {"0.0.0.0"}
    assert metrics.endpoint("0.0.0.0", port, "10.1.2.3") == f"10.1.2.3:{port}"
    assert metrics.endpoint("127.0.0.1", port, "10.1.2.3") == f"127.0.0.1:{port}"


def test_the_cluster_configs_open_the_metrics_servers_and_the_local_one_does_not() -> None:
    deploy = Path(__file__).resolve().parents[1] / "deploy" / "config"
    cluster = load_config(deploy / "run.example.yaml")  # the same as the KubeRay config map (test_deploy.py)
    assert (cluster.metrics.host, cluster.workers.metrics_host) == ("0.0.0.0", "0.0.0.0")
    local = load_config(deploy / "run.local.yaml")
    assert (local.metrics.host, local.workers.metrics_host) == ("127.0.0.1", "127.0.0.1")
