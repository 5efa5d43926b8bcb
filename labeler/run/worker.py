"""One chunk of a distributed run, end to end on a worker: read its exemplars, label, commit its part.

Also the driver's side of the same data: which features a run has (planned from feature ids alone, never
from all exemplar rows) and the part written for a chunk that was given up. The exemplars are read from
any fsspec URL (a folder of Parquet parts, e.g. a harvest's `exemplars/`, a Parquet file, or a local
JSONL file); a worker reads only its chunk's rows, with a filter on `feature`. This module knows nothing
about Ray: the Ray adapter (labeler/ray_pool/) holds a `ChunkWorker` per actor, the local pool (local.py) one
in this process.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from labeler.discriminators.base import Discriminator
from labeler.discriminators.config import DiscriminatorConfig, build_discriminator, spec_of
from labeler.judge.stage import ChunkScorer, ScoreConfig
from labeler.optimise.labelling import LabelConfig, label_chunk
from labeler.records.exemplars import (
    JSONL_SUFFIXES,
    REQUIRED_COLUMNS,
    ExemplarError,
    FeatureExemplars,
    check_features_table,
    check_parts,
    group_by_feature,
    read_exemplars,
    split_invalid_features,
)
from labeler.records.labels import LabelRecord, RunInfo, to_table, with_activation_frequency
from labeler.records.storage import url_to_fs
from labeler.run import metrics
from labeler.run.config import Engine, SourceConfig
from labeler.run.scheduler import Chunk, ChunkOutcome, outcome_counts
from labeler.run.sink import PartSink

DEAD_REASON = "dead: never active in the harvest, so there is nothing to label"
OnStep = Callable[[int, int], None]
"""`on_step(step, live)`: the optimiser's progress within the batch being labelled (see engine.optimise)."""


def _is_jsonl(url: str) -> bool:
    return url.endswith(JSONL_SUFFIXES)


def _dataset(url: str, storage_options: Mapping[str, Any]) -> ds.Dataset:
    fs, path = url_to_fs(url, storage_options)
    if not fs.exists(path):
        raise ExemplarError(f"not found: {url}")
    try:
        dataset = ds.dataset(path, filesystem=fs, format="parquet")
    except pa.ArrowInvalid as err:  # a file that is not Parquet
        raise ExemplarError(f"cannot read {url}: {err}") from err
    if not dataset.files:
        raise ExemplarError(f"{url} holds no Parquet files; give a folder of exemplar parts, or a .parquet/.jsonl file")
    return dataset


def plan_features(source: SourceConfig) -> tuple[np.ndarray, np.ndarray]:
    """(ids to label, ids that are dead), sorted; reads only the `feature` (and `status`) columns.

    The features are those of the exemplars and, with a features file, those it lists too; the ones it calls dead
    are recorded as dead."""
    if source.exemplars is None:
        raise ExemplarError(
            "no exemplars: set `exemplars:` to a URL (a harvest's exemplars/ folder, a Parquet file or a JSONL file)"
        )
    ids = _exemplar_ids(source.exemplars, source.storage_options)
    if source.features is None:
        return ids, np.array([], dtype=np.int64)
    listed, dead = _listed_features(source.features, source.storage_options)
    return np.setdiff1d(np.union1d(ids, listed), dead), dead


def _listed_features(url: str, storage_options: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(the ids a features file lists, those of them it calls dead)."""
    dataset = _dataset(url, storage_options)
    names = dataset.schema.names
    if "feature" not in names:
        raise ExemplarError(
            f"{url}: no column 'feature'; a features file needs `feature` (int) and optionally `status` (alive, "
            f"ultra_rare, dead or failed) and `frequency`, as a harvest writes it (found {names})"
        )
    columns = [name for name in ("feature", "status", "frequency") if name in names]
    table = dataset.to_table(columns=columns)
    check_features_table(table, url)
    for name in (name for name in columns if name != "frequency"):  # a null frequency is unmeasured
        if table.column(name).null_count:
            raise ExemplarError(
                f"{url}: column {name!r} has {table.column(name).null_count} null value(s); "
                "every feature needs an id (and, where the file has statuses, a status)"
            )
    ids = table.column("feature").to_numpy().astype(np.int64)
    if "status" not in names:
        return np.unique(ids), np.array([], dtype=np.int64)
    dead = pc.equal(table.column("status"), "dead").to_numpy(zero_copy_only=False)
    return np.unique(ids), np.unique(ids[dead])


def _exemplar_ids(url: str, storage_options: Mapping[str, Any]) -> np.ndarray:
    """The distinct feature ids of the exemplars, sorted, read a batch at a time (a JSONL file is checked whole)."""
    if _is_jsonl(url):
        return np.unique(read_exemplars(url).column("feature").to_numpy())
    dataset = _dataset(url, storage_options)
    check_parts(dataset, url)
    pieces: list[np.ndarray] = []
    held = 0
    for batch in dataset.to_batches(columns=["feature"]):
        if batch.column(0).null_count:
            raise ExemplarError(f"{url}: column 'feature' has null values; every row needs a feature id")
        pieces.append(np.unique(batch.column(0).to_numpy().astype(np.int64)))
        held += len(pieces[-1])
        if held > 4_000_000:  # merge now and then, so memory follows the distinct features, not the rows
            pieces = [np.unique(np.concatenate(pieces))]
            held = len(pieces[0])
    unique = np.unique(np.concatenate(pieces)) if pieces else np.array([], dtype=np.int64)
    if len(unique) and unique[0] < 0:
        raise ExemplarError(f"{url}: column 'feature' has negative ids; feature ids must be >= 0")
    return unique


def read_chunk_exemplars(source: SourceConfig, features: np.ndarray) -> tuple[list[FeatureExemplars], dict[int, str]]:
    """(the examples of `features` grouped per feature in ascending order, {feature: why its rows break the
    contract}). A feature with a bad row is left out with its reason; the others are read as usual."""
    assert source.exemplars is not None, "plan_features refuses a run without exemplars"
    wanted = pa.array(features, type=pa.int64())
    invalid: dict[int, str] = {}
    if _is_jsonl(source.exemplars):  # plan_features validated the whole file before work started
        table = read_exemplars(source.exemplars)
        table = table.filter(pc.is_in(table.column("feature"), value_set=wanted))
    else:
        dataset = _dataset(source.exemplars, source.storage_options)
        lo, hi = int(features.min()), int(features.max())
        bounds = (ds.field("feature") >= lo) & (ds.field("feature") <= hi)
        table = dataset.to_table(columns=list(REQUIRED_COLUMNS), filter=bounds & ds.field("feature").isin(wanted))
        table, invalid = split_invalid_features(table, source=source.exemplars)
    return list(group_by_feature(table)), invalid


def read_harvest_column(source: SourceConfig, features: np.ndarray, column: str) -> dict[int, Any]:
    """{feature: value} of one column of the harvest's features.parquet for `features`, nulls left out;
    {} without a harvest or where its features.parquet lacks the column (older harvests)."""
    if source.features is None:
        return {}
    dataset = _dataset(source.features, source.storage_options)
    if column not in dataset.schema.names:
        return {}
    table = dataset.to_table(
        columns=["feature", column], filter=ds.field("feature").isin(pa.array(features, type=pa.int64()))
    )
    pairs = zip(table.column("feature").to_pylist(), table.column(column).to_pylist(), strict=True)
    return {feature: value for feature, value in pairs if value is not None}


class ChunkLabeller(Protocol):
    """Turns a chunk's feature ids into one record per feature."""

    def label(self, features: np.ndarray, on_step: OnStep | None = None) -> list[LabelRecord]: ...


@dataclass(frozen=True)
class LabellerSpec:
    """Everything a worker needs to build its labeller once (sent to each worker process)."""

    discriminator: DiscriminatorConfig
    label: LabelConfig
    source: SourceConfig
    run: RunInfo
    """The run's provenance, stored on every row of its parts."""
    engine: Engine = "optimise"
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """The score stage: with score.enabled, each chunk's labels are scored before its part is committed."""


class EngineLabeller:
    """The real engine: a discriminator loaded once, chunks read from the source and labelled in batches; with the
    score stage on, judges loaded once too, and each chunk's labels scored on their held-out rows."""

    def __init__(self, spec: LabellerSpec, disc: Discriminator | None = None) -> None:
        self.spec = spec
        self.disc = disc if disc is not None else build_discriminator(spec.discriminator)
        reserve = getattr(self.disc, "reserve_label", None)  # a causal LM checks the label fits its positions
        if reserve is not None:
            reserve(spec.label.optimiser.label_tokens)
        self.scorer = ChunkScorer(spec.score, spec_of(spec.discriminator)) if spec.score.enabled else None

    def label(self, features: np.ndarray, on_step: OnStep | None = None) -> list[LabelRecord]:
        exemplars, invalid = read_chunk_exemplars(self.spec.source, features)
        records = [LabelRecord(feature=f, status="failed", error=reason) for f, reason in invalid.items()]
        found = {examples.feature for examples in exemplars} | set(invalid)
        missing = np.array([f for f in features if int(f) not in found], dtype=np.int64)
        harvest_errors = read_harvest_column(self.spec.source, missing, "error") if len(missing) else {}
        records += [
            LabelRecord(feature=int(f), status="failed", error=f"harvest: {harvest_errors[int(f)]}")
            if int(f) in harvest_errors
            else LabelRecord(
                feature=int(f), status="skipped", error="no exemplars: the feature has no rows in the input"
            )
            for f in missing
        ]
        size = self.spec.label.features_per_batch
        for start in range(0, len(exemplars), size):
            batch = label_chunk(self.disc, exemplars[start : start + size], self.spec.label, on_step)
            records.extend(batch)
            for record in batch:
                if record.status == "labelled":
                    metrics.RESTARTS.inc(record.restarts)
                    metrics.STEPS.inc(record.steps_total)
        if self.scorer is not None:
            records, _ = self.scorer.score(records, exemplars, self.spec.label)
        metrics.LOW_CONFIDENCE.inc(sum(record.confidence == "low" for record in records))
        records = with_activation_frequency(records, read_harvest_column(self.spec.source, features, "frequency"))
        return sorted(records, key=lambda record: record.feature)


class NoopLabeller:
    """No model and no reading: every feature comes back `skipped` (measures scheduling and the sink alone)."""

    def label(self, features: np.ndarray, on_step: OnStep | None = None) -> list[LabelRecord]:
        return [
            LabelRecord(feature=int(f), status="skipped", error="noop: the no-op engine labels nothing")
            for f in features
        ]


def build_labeller(spec: LabellerSpec) -> ChunkLabeller:
    return NoopLabeller() if spec.engine == "noop" else EngineLabeller(spec)


class ChunkWorker:
    """What one worker holds: a labeller built once and the run's sink."""

    def __init__(self, spec: LabellerSpec, sink: PartSink) -> None:
        self.labeller = build_labeller(spec)
        self.sink = sink
        self.run_info = spec.run
        self.device = getattr(getattr(self.labeller, "disc", None), "device", None)

    def run(self, chunk: Chunk, on_step: OnStep | None = None) -> ChunkOutcome:
        """Label and commit `chunk`, or report the part an earlier attempt committed."""
        start = time.perf_counter()
        if chunk.attempt > 1 and self.sink.is_committed(chunk.index):  # an earlier attempt got as far as commit
            return committed_outcome(self.sink, chunk.index)
        if chunk.kind == "dead":
            records = [LabelRecord(feature=int(f), status="dead", error=DEAD_REASON) for f in chunk.features]
        else:
            records = self.labeller.label(chunk.features, on_step)
        table = to_table(records, self.run_info)
        if not self.sink.commit(chunk.index, table):
            return committed_outcome(self.sink, chunk.index)
        metrics.CHUNK_SECONDS.observe(time.perf_counter() - start)
        self.record_memory()
        return ChunkOutcome(
            chunk.index, outcome_counts(table.column("status").to_pylist(), table.column("error").to_pylist())
        )

    def record_memory(self) -> None:
        device = self.device
        if device is not None and device.type == "cuda":
            import torch

            metrics.DEVICE_MEMORY.labels(device=str(device), kind="allocated").set(torch.cuda.memory_allocated(device))
            metrics.DEVICE_MEMORY.labels(device=str(device), kind="peak").set(torch.cuda.max_memory_allocated(device))
            return
        # On CPU the device's memory is the process's: resident now (Linux /proc) and peak (getrusage).
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        metrics.DEVICE_MEMORY.labels(device="cpu", kind="allocated").set(resident_pages * resource.getpagesize())
        metrics.DEVICE_MEMORY.labels(device="cpu", kind="peak").set(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )


def committed_outcome(sink: PartSink, index: int) -> ChunkOutcome:
    """The outcome of a part committed earlier (read back, so final counts stay exact)."""
    table = sink.read_part(index)
    counts = outcome_counts(table.column("status").to_pylist(), table.column("error").to_pylist())
    return ChunkOutcome(index, counts)


def give_up_chunk(sink: PartSink, run: RunInfo, chunk: Chunk, error: str) -> ChunkOutcome:
    """Record every feature of a chunk whose attempts ran out as failed with the last error (driver side)."""
    reason = f"{error} (chunk {chunk.index} failed {chunk.attempt} times)"
    records = [LabelRecord(feature=int(f), status="failed", error=reason) for f in chunk.features]
    if not sink.commit(chunk.index, to_table(records, run)):
        return committed_outcome(sink, chunk.index)
    return ChunkOutcome(chunk.index, outcome_counts(["failed"] * len(records), [reason] * len(records)))
