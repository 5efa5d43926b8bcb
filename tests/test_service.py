"""The driver without Ray: input checks before work, manifest, resume, dead features, and a chunk's work."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from label_runs import run_info
from servers import exemplar_parts

from labeler.cli import main
from labeler.records.exemplars import ExemplarError
from labeler.records.labels import LabelRecord, to_table
from labeler.run import metrics
from labeler.run.config import ConfigError, RunConfig, SourceConfig
from labeler.run.loading import load_config
from labeler.run.scheduler import Chunk, Completion
from labeler.run.service import execute, prepare, resume_config
from labeler.run.sink import PartSink, SinkConfig
from labeler.run.worker import ChunkWorker, plan_features


class InlinePool:
    """Runs each chunk at once in this process with a real ChunkWorker (the Ray layer is tested elsewhere)."""

    def __init__(
        self,
        run_config: RunConfig,
        spec: object,
        fail_first: set[int] = frozenset(),  # type: ignore[assignment]
        lose_reply: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        """`fail_first`: chunks whose first attempt fails before any work; `lose_reply`: chunks whose first
        attempt commits its part and then dies before replying (as an actor killed at that moment)."""
        self.worker = ChunkWorker(spec, PartSink(run_config.out, run_config.sink))  # type: ignore[arg-type]
        self.done: list[Completion] = []
        self.fail_first = set(fail_first)
        self.lose_reply = set(lose_reply)

    def size(self) -> int:
        return 1

    def alive(self) -> int:
        return 1

    def available(self, worker: int) -> bool:
        return True

    def submit(self, worker: int, chunk: Chunk) -> None:
        if chunk.index in self.fail_first:
            self.fail_first.discard(chunk.index)
            self.done.append(Completion(worker, chunk, error="RuntimeError: injected"))
            return
        outcome = self.worker.run(chunk)
        if chunk.index in self.lose_reply:
            self.lose_reply.discard(chunk.index)
            self.done.append(Completion(worker, chunk, error="WorkerDied: killed after its commit"))
            return
        self.done.append(Completion(worker, chunk, outcome=outcome))

    def poll(self, timeout: float) -> list[Completion]:
        done, self.done = self.done, []
        return done


def _config(tmp_path: Path, **overrides: object) -> RunConfig:
    exemplars = exemplar_parts(tmp_path / "ex", 50)
    base = {"out": str(tmp_path / "run"), "engine": "noop", "source.exemplars": str(exemplars)}
    return load_config(None, {**base, "scheduler.features_per_chunk": 8, **overrides})


def test_run_commits_every_feature_once_and_records_dead_ones(tmp_path: Path) -> None:
    features = tmp_path / "features.parquet"
    pq.write_table(
        pa.table({"feature": list(range(50)), "status": ["dead" if f % 10 == 0 else "alive" for f in range(50)]}),
        features,
    )
    config = _config(tmp_path, **{"source.features": str(features)})
    run = prepare(config)
    progress = execute(run, InlinePool(config, run.spec(), fail_first={1}))
    table = pq.read_table(tmp_path / "run" / "labels")
    assert sorted(table.column("feature").to_pylist()) == list(range(50))
    statuses = Counter(table.column("status").to_pylist())
    assert statuses == Counter({"skipped": 45, "dead": 5}) == progress.statuses
    assert progress.chunks_retried == 1
    manifest = PartSink(config.out).read_manifest()
    assert manifest is not None and manifest["plan"]["dead"] == 5 and manifest["config"]["engine"] == "noop"


def test_a_second_run_in_the_same_folder_is_refused_and_resume_continues(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run = prepare(config)
    sink = PartSink(config.out)
    sink.commit(0, to_table([LabelRecord(feature=f, status="labelled", label="x") for f in range(8)], run_info("r")))
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare(config)
    resumed = prepare(resume_config(config.out, SinkConfig()), resume=True)
    assert resumed.committed == {0} and resumed.manifest == run.manifest
    progress = execute(resumed, InlinePool(config, resumed.spec()))
    assert progress.finished == 50
    assert sorted(pq.read_table(tmp_path / "run" / "labels").column("feature").to_pylist()) == list(range(50))


def features_counted() -> float:
    """labeler_features_total summed over its labels (the registry is the process's: tests take differences)."""
    return sum(
        sample.value
        for family in metrics.REGISTRY.collect()
        if family.name == "labeler_features"
        for sample in family.samples
        if sample.name == "labeler_features_total"
    )


def test_features_are_counted_once_when_a_reply_is_lost_and_not_again_after_resume(tmp_path: Path) -> None:
    config = _config(tmp_path)  # 50 features in 7 chunks of 8
    first = prepare(config)
    ChunkWorker(first.spec(), first.sink).run(first.plan.chunk(0))  # an earlier driver committed chunk 0, then died
    resumed = prepare(config, resume=True)
    before = features_counted()
    progress = execute(resumed, InlinePool(config, resumed.spec(), lose_reply={1}))
    assert progress.chunks_retried == 1 and progress.states["done"] == 50
    # chunk 1 was committed by its lost first attempt: counted once; chunk 0 (committed before) is not counted.
    assert features_counted() - before == 42 == sum(progress.statuses.values())
    assert len(pq.read_table(tmp_path / "run" / "labels")) == 50


def test_resume_refuses_a_changed_input(tmp_path: Path) -> None:
    config = _config(tmp_path)
    prepare(config)
    exemplar_parts(tmp_path / "ex", 60)
    with pytest.raises(ConfigError, match=r"input of .* changed since the run started"):
        prepare(config, resume=True)


def shift_features(folder: Path, by: int) -> None:
    """Rewrite the exemplar parts in `folder` with every feature id moved by `by` (same counts, other ids)."""
    for part in folder.glob("*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.set_column(0, "feature", pc.add(table.column("feature"), by)), part)


def test_resume_refuses_other_feature_ids_with_the_same_counts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    prepare(config)
    shift_features(tmp_path / "ex", 100)  # features 100..149 instead of 0..49: the same 50 in 7 chunks
    with pytest.raises(
        ConfigError, match=r"changed since the run started: .*\(the same counts, but other feature ids\)"
    ):
        prepare(config, resume=True)


def test_a_manifest_without_the_digest_is_resumed_on_counts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    manifest_file = tmp_path / "run" / "manifest.json"
    prepare(config)
    manifest = json.loads(manifest_file.read_text())
    del manifest["plan"]["feature_ids_sha256"]  # as written by a labeler before the digest
    manifest_file.write_text(json.dumps(manifest))
    assert prepare(config, resume=True).manifest == manifest
    exemplar_parts(tmp_path / "ex", 60)
    with pytest.raises(ConfigError, match=r"input of .* changed since the run started"):
        prepare(config, resume=True)


def test_bad_input_stops_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--out", str(tmp_path / "r"), "--set", "harvest={corpus: c.txt, bogus: 1}"]) == 2
    assert "unknown setting(s) ['harvest.bogus']" in capsys.readouterr().err
    (tmp_path / "ex").mkdir()
    pq.write_table(pa.table({"feature": [1], "text": ["a"]}), tmp_path / "ex" / "p.parquet")
    assert main(["run", "--exemplars", str(tmp_path / "ex"), "--out", str(tmp_path / "r")]) == 2
    assert "missing column(s) ['context', 'target', 'activation']" in capsys.readouterr().err
    assert main(["run", "--set", "workers.count=0"]) == 2
    assert "workers.count must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("columns", "says"),
    [
        ({"feature": [10, 11, 12], "status": ["alive", None, "dead"]}, "column 'status' has 1 null value(s)"),
        ({"feature": [10, None, 12], "status": ["alive", "alive", "dead"]}, "column 'feature' has 1 null value(s)"),
        ({"status": ["alive", "dead"]}, "no column 'feature'"),
    ],
)
def test_a_broken_features_file_is_named_with_its_problem(
    tmp_path: Path, columns: dict[str, list[object]], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    features = tmp_path / "features.parquet"
    pq.write_table(pa.table(columns), features)
    source = SourceConfig(exemplars=str(exemplar_parts(tmp_path / "ex", 13)), features=str(features))
    with pytest.raises(ExemplarError, match=re.escape(f"{features}: {says}")):
        plan_features(source)
    args = ["run", "--exemplars", str(source.exemplars), "--set", f"source.features={features}"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert "features.parquet: " in capsys.readouterr().err


def test_resume_keeps_the_settings_that_decide_labels(tmp_path: Path) -> None:
    """A resume may change workers, sink or batch size, but not what decides a label: the first chunks and the
    rest would be labelled differently under one run id."""
    from dataclasses import replace

    from labeler.discriminators.causal_lm import CausalLMConfig

    config = _config(tmp_path)
    prepare(config)
    stored = resume_config(config.out, SinkConfig())
    optimiser = replace(stored.label.optimiser, restarts=stored.label.optimiser.restarts + 1)
    for changed, message in (
        (replace(stored, discriminator=CausalLMConfig(model="/models/other")), r"^discriminator\.\w+(, \S+)* differ"),
        (replace(stored, label=replace(stored.label, optimiser=optimiser)), r"^label\.optimiser differ"),
    ):
        with pytest.raises(ConfigError, match=message):
            prepare(changed, resume=True)
    workers = replace(stored.workers, count=stored.workers.count + 3)
    batching = replace(stored.label, features_per_batch=stored.label.features_per_batch + 1)
    assert prepare(replace(stored, workers=workers, label=batching), resume=True).committed == frozenset()
