"""The run config: one frozen dataclass per stage (source, workers, metrics, provenance), composed into RunConfig.

Every field has a docstring and a default, so `RunConfig()` is a valid run (the demo). The stages' own configs
live with their stages (LabelConfig, ScoreConfig, SchedulerConfig, SinkConfig, the discriminators'); filling them
from a YAML or TOML file and `--set` overrides is labeler/run/loading.py. This module reads no files and knows
nothing about Ray.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from labeler.discriminators.config import DiscriminatorConfig
from labeler.discriminators.embedding import EmbeddingConfig
from labeler.errors import ConfigError
from labeler.judge.stage import ScoreConfig
from labeler.optimise.labelling import LabelConfig
from labeler.run.scheduler import SchedulerConfig
from labeler.run.sink import SinkConfig

Engine = Literal["optimise", "noop"]


@dataclass(frozen=True)
class SourceConfig:
    """Where a run's exemplars (and optionally its per-feature harvest statistics) are read from."""

    exemplars: str | None = None
    """fsspec URL of the exemplars: a folder of Parquet parts, a .parquet file, or a local .jsonl file."""
    features: str | None = None
    """fsspec URL of a Parquet file with one row per feature (a harvest's features.parquet): `feature`, and
    optionally `status` (dead ones are recorded as dead) and `frequency` (stored as activation_frequency). With it
    the run's features are the ones it lists; without it, the distinct ids in the exemplars."""
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    """fsspec options for both URLs (e.g. {"endpoint_url": ...} for s3); a harvest made by the run is read with
    sink.storage_options, the run folder's."""


@dataclass(frozen=True)
class ProvenanceConfig:
    """Names stored on every label row; a harvest made or named by the run fills in those left unset."""

    run_id: str | None = None
    """Name of this run (default: the run folder's name and the start time)."""
    sae_id: str | None = None
    """The SAE the features belong to."""
    model: str | None = None
    """The model the SAE reads (the subject model)."""
    hook_point: str | None = None
    """Where in the model the SAE reads."""


@dataclass(frozen=True)
class WorkersConfig:
    """How many workers a run starts on Ray and what each one gets (`labeler label` runs one in-process)."""

    count: int = 1
    """Worker actors (each loads the discriminator once)."""
    num_cpus: float = 1.0
    """CPUs reserved per worker."""
    num_gpus: float = 0.0
    """GPUs per worker: 0 for CPU, a fraction (e.g. 0.25) to pack small models on one GPU, 1 or more whole."""
    max_restarts: int = 3
    """Times Ray restarts a worker that died (its chunk is retried by the scheduler)."""
    metrics_port: int = 0
    """Port each worker serves /metrics on: 0 picks a free one (several per node); fix it for one worker per pod."""
    metrics_host: str = "127.0.0.1"
    """Address each worker's /metrics listens on: loopback, or 0.0.0.0 where Prometheus scrapes other nodes."""
    tensor_parallel: int = 1
    """Ranks per worker: above 1 each worker is a gang of this many actors on one node (num_cpus and num_gpus are
    per rank), each holding 1/T of the causal-LM discriminator (hf only)."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"workers.count must be at least 1, got {self.count}")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ConfigError("workers.num_cpus and workers.num_gpus must be >= 0")
        if self.tensor_parallel < 1:
            raise ConfigError(f"workers.tensor_parallel must be at least 1, got {self.tensor_parallel}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ConfigError(f"workers.num_gpus above 1 must be whole, got {self.num_gpus}")
        _check_port("workers.metrics_port", self.metrics_port)


@dataclass(frozen=True)
class MetricsConfig:
    """Where the driver serves its metrics and where Prometheus learns the workers' endpoints."""

    port: int | None = 0
    """Port of the driver's /metrics (0: a free one, printed at start; null: do not serve)."""
    host: str = "127.0.0.1"
    """Address the driver's /metrics listens on: loopback, or 0.0.0.0 where Prometheus scrapes from elsewhere."""
    targets_file: str | None = None
    """Prometheus file_sd JSON listing the driver's and every worker's endpoint, rewritten when workers change
    (default: prometheus_targets.json in the run folder)."""

    def __post_init__(self) -> None:
        if self.port is not None:
            _check_port("metrics.port", self.port)


def _check_port(name: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{name} must be a TCP port, 0 to 65535 (0: a free one), got {port!r}")


def _minilm() -> DiscriminatorConfig:
    return EmbeddingConfig(kind="minilm")


@dataclass(frozen=True)
class RunConfig:
    """A whole labelling run."""

    out: str = "labeler-run"
    """The run folder, any fsspec URL (a local folder, s3://bucket/prefix): manifest.json and labels/."""
    discriminator: DiscriminatorConfig = field(default_factory=_minilm)
    """The discriminator, loaded once per worker: hf:MODEL_DIR, embedding:MODEL_DIR or minilm, or in full
    ({kind: hf, model: DIR, readout: ...}: the fields of its kind)."""
    engine: Engine = "optimise"
    """optimise: label with the engine; noop: record every feature as skipped without a model (benchmarks)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    harvest: Mapping[str, Any] | None = None
    """When source.exemplars is not given, the harvest that produces them into OUT/harvest: HarvestConfig's fields
    (sae, model, corpus, tokens, features, sampling: {top_examples, ...}, ...; labeler/harvest/config.py), with
    demo: true for the demo SAE. Neither exemplars nor harvest: the demo (service.DEMO_HARVEST)."""
    label: LabelConfig = field(default_factory=LabelConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """The score stage (off by default): each chunk's labels judged by other models before the chunk is committed."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)

    def __post_init__(self) -> None:
        check_no_credentials(self.source.storage_options, "source.storage_options")
        check_no_credentials(self.sink.storage_options, "sink.storage_options")
        harvest_options = (self.harvest or {}).get("storage_options")
        if isinstance(harvest_options, Mapping):
            check_no_credentials(harvest_options, "harvest.storage_options")


CREDENTIAL_WORDS = frozenset({"key", "secret", "token", "password", "passwd", "session", "credential", "credentials"})
"""A storage option whose name holds one of these words (split at `_`, `-`, `.` and camelCase) is a credential."""


def check_no_credentials(options: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError where a key of `options` (at any depth, e.g. client_kwargs.aws_session_token) names a
    credential: the config is written verbatim into the run folder's manifest.json, so a secret there would
    be stored next to the labels. The value is never echoed."""
    for name, value in options.items():
        key = f"{where}.{name}"
        words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower())
        if CREDENTIAL_WORDS.intersection(words):
            raise ConfigError(
                f"{key}: credentials are refused in a run config (it is written verbatim into the run folder's "
                "manifest.json); remove it and give them the environment or IAM way: AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or AWS_PROFILE) in the environment of the driver and "
                "every worker, or an IAM role (IRSA on Kubernetes, an instance profile on EC2); keep only "
                "non-secret options here, e.g. endpoint_url"
            )
        if isinstance(value, Mapping):
            check_no_credentials(value, key)
