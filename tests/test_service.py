"""The driver without Ray: input checks before work, manifest, resume, dead features, and a chunk's work."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from label_runs import run_info
from servers import exemplar_parts

from labeler.cli import main
from labeler.results import LabelRecord
from labeler.runconfig import ConfigError, RunConfig, load_config
from labeler.scheduler import Chunk, Completion
from labeler.service import execute, prepare, resume_config
from labeler.sink import PartSink, SinkConfig
from labeler.work import ChunkWorker, SourceConfig, plan_features, read_chunk_exemplars, records_table


class InlinePool:
    """Runs each chunk at once in this process with a real ChunkWorker (the Ray layer is tested elsewhere)."""

    def __init__(self, run_config: RunConfig, spec: object, fail_first: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.worker = ChunkWorker(spec, PartSink(run_config.out, run_config.sink))  # type: ignore[arg-type]
        self.done: list[Completion] = []
        self.fail_first = set(fail_first)

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
        self.done.append(Completion(worker, chunk, outcome=self.worker.run(chunk)))

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
    sink.commit(
        0, records_table([LabelRecord(feature=f, status="labelled", label="x") for f in range(8)], run_info("r"))
    )
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare(config)
    resumed = prepare(resume_config(config.out, SinkConfig()), resume=True)
    assert resumed.committed == {0} and resumed.manifest == run.manifest
    progress = execute(resumed, InlinePool(config, resumed.spec()))
    assert progress.finished == 50
    assert sorted(pq.read_table(tmp_path / "run" / "labels").column("feature").to_pylist()) == list(range(50))


def test_resume_refuses_a_changed_input(tmp_path: Path) -> None:
    config = _config(tmp_path)
    prepare(config)
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


def test_a_worker_reads_only_its_chunks_rows(tmp_path: Path) -> None:
    source = SourceConfig(exemplars=str(exemplar_parts(tmp_path / "ex", 30, rows=6)))
    label_ids, dead = plan_features(source)
    assert label_ids.tolist() == list(range(30)) and len(dead) == 0
    chunk, invalid = read_chunk_exemplars(source, np.array([4, 5, 29]))
    assert [f.feature for f in chunk] == [4, 5, 29] and all(len(f) == 6 for f in chunk) and invalid == {}


def test_a_bad_row_fails_only_its_feature_and_an_empty_chunk_records_every_feature(tmp_path: Path) -> None:
    from conftest import tiny_gpt2, word_tokenizer
    from label_runs import run_info

    from labeler.discriminators import CausalLMConfig, EmbeddingConfig
    from labeler.engine import OptimiserConfig
    from labeler.labelling import LabelConfig
    from labeler.work import EngineLabeller, LabellerSpec

    model = tmp_path / "gpt2"
    tokenizer = word_tokenizer()
    tiny_gpt2(len(tokenizer)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    rows = [
        {"feature": f, "context": "the dog ate the cheese", "target": word, "activation": float(word == "dog")}
        for f in (1, 2, 3)
        for word in ("the", "dog", "ate", "the", "cheese", "dog")
    ]
    rows[6]["activation"] = float("nan")  # feature 2
    rows[14]["context"] = None  # feature 3
    (tmp_path / "ex").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ex" / "part.parquet")
    source = SourceConfig(exemplars=str(tmp_path / "ex"))

    exemplars, invalid = read_chunk_exemplars(source, np.array([1, 2, 3]))
    assert [f.feature for f in exemplars] == [1] and sorted(invalid) == [2, 3]
    assert "feature 2: column 'activation' has 1 NaN or infinite value(s)" in invalid[2]
    assert "feature 3: column 'context' has 1 null value(s)" in invalid[3]
    assert read_chunk_exemplars(source, np.array([7, 8])) == ([], {})

    label = LabelConfig(optimiser=OptimiserConfig(restarts=1, max_steps=2, examples_per_step=4))
    spec = LabellerSpec(f"hf:{model}", label, CausalLMConfig(), EmbeddingConfig(), source, run_info("r"))
    labeller = EngineLabeller(spec)
    records = labeller.label(np.array([1, 2, 3]))
    assert [(r.feature, r.status) for r in records] == [(1, "labelled"), (2, "failed"), (3, "failed")]
    assert records[1].error == invalid[2] and records[2].error == invalid[3]
    assert [(r.feature, r.status) for r in labeller.label(np.array([7, 8]))] == [(7, "skipped"), (8, "skipped")]
