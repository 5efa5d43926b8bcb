"""Prometheus metrics of a labelling run: their names, what they mean, and serving them.

Every process of a run (the driver and each worker) holds these in its own registry and serves them
over HTTP for Prometheus to scrape; `deploy/` scrapes them and its Grafana dashboard may query only
the series that `exported_series()` lists (a test checks that). Who updates what:
- the driver: features finished (by final status and reason), queue depth, chunks in flight, workers;
- each worker: restarts and optimisation steps run, chunk latency, device memory, low-confidence labels.
This module knows nothing about labelling; callers record what happened after each step of work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

FEATURES = Counter(
    "labeler_features",
    "Features finished by this driver, by final status (labelled, skipped, failed, dead) and reason (the error kind, "
    "or none); a resumed run counts only what it finishes",
    ["status", "reason"],
    registry=REGISTRY,
)
RESTARTS = Counter("labeler_restarts", "Random restarts optimised to the end", registry=REGISTRY)
STEPS = Counter(
    "labeler_optimisation_steps", "Optimisation steps run, counted once per restart per step", registry=REGISTRY
)
LOW_CONFIDENCE = Counter(
    "labeler_low_confidence_labels",
    "Labels flagged low confidence (their confidence score under the calibration's threshold, or the score stage's "
    "judge disagreed); counted by the worker that labelled them",
    registry=REGISTRY,
)
CHUNK_SECONDS = Histogram(
    "labeler_chunk_seconds",
    "Wall time a worker took to label one chunk of features",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("labeler_queue_depth", "Chunks not yet sent to a worker", registry=REGISTRY)
CHUNKS_IN_FLIGHT = Gauge("labeler_chunks_in_flight", "Chunks sent to workers and not yet finished", registry=REGISTRY)
WORKERS = Gauge("labeler_workers", "Workers alive and holding a discriminator", registry=REGISTRY)
DEVICE_MEMORY = Gauge(
    "labeler_device_memory_bytes",
    "Memory of the worker's device: kind=allocated (now) or peak (since the worker started)",
    ["device", "kind"],
    registry=REGISTRY,
)


LOOPBACK = "127.0.0.1"
WILDCARDS = ("0.0.0.0", "::", "")


def serve(port: int = 0, addr: str = LOOPBACK) -> int:
    """Serve this process's metrics at http://ADDR:PORT/metrics in a daemon thread; returns the bound port.

    Port 0 picks a free one, so several workers on one node do not collide. ADDR is loopback unless the
    caller says otherwise: 0.0.0.0 only where another machine (a cluster's Prometheus) must scrape it.
    """
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return int(server.server_port)


def endpoint(addr: str, port: int, node_address: str) -> str:
    """host:port at which a server bound to ADDR:PORT is scraped: ADDR itself, or, for a wildcard address
    (all interfaces), this node's address, which other machines can reach."""
    return f"{node_address if addr in WILDCARDS else addr}:{port}"


def exported_series() -> frozenset[str]:
    """Every series name a scrape of these metrics can contain (counters end in _total, histograms in
    _bucket/_count/_sum), which is all a dashboard or alert may query."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return frozenset(names)
