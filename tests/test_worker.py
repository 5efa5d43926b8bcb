"""labeler/run/worker.py: planning a run's features, reading a chunk's exemplars, labelling a chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import exemplar_parts, tiny_model

from labeler.run.config import SourceConfig
from labeler.run.worker import plan_features, read_chunk_exemplars


def test_a_worker_reads_only_its_chunks_rows(tmp_path: Path) -> None:
    source = SourceConfig(exemplars=str(exemplar_parts(tmp_path / "ex", 30, rows=6)))
    label_ids, dead = plan_features(source)
    assert label_ids.tolist() == list(range(30)) and len(dead) == 0
    chunk, invalid = read_chunk_exemplars(source, np.array([4, 5, 29]))
    assert [f.feature for f in chunk] == [4, 5, 29] and all(len(f) == 6 for f in chunk) and invalid == {}


def test_a_bad_row_fails_only_its_feature_and_an_empty_chunk_records_every_feature(tmp_path: Path) -> None:
    from label_runs import run_info

    from labeler.discriminators.causal_lm import CausalLMConfig
    from labeler.optimise.config import OptimiserConfig
    from labeler.optimise.labelling import LabelConfig
    from labeler.run.worker import EngineLabeller, LabellerSpec

    model = tiny_model(tmp_path / "model")
    rows = [
        {
            "feature": f,
            "context": "the dog ate from the cat's bowl",
            "target": word,
            "activation": float(word in ("dog", "cat")),
        }
        for f in (1, 2, 3)
        for word in ("the", "dog", "ate", "cat", "from", "bowl")
    ]  # 2 distinct active and 4 distinct inactive (context, target) pairs a feature: enough to split
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
    spec = LabellerSpec(CausalLMConfig(model=str(model)), label, source, run_info("r"))
    labeller = EngineLabeller(spec)
    records = labeller.label(np.array([1, 2, 3]))
    assert [(r.feature, r.status) for r in records] == [(1, "labelled"), (2, "failed"), (3, "failed")]
    assert records[1].error == invalid[2] and records[2].error == invalid[3]
    assert [(r.feature, r.status) for r in labeller.label(np.array([7, 8]))] == [(7, "skipped"), (8, "skipped")]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"feature": [1], "context": ["a"], "target": ["a"], "activation": ["high"]},
            r"column\(s\) of the wrong type \(activation: string\)",
        ),
        (
            {"feature": ["1"], "context": [2], "target": ["a"], "activation": [1.0]},
            r"wrong type \(feature: string, context: int64\)",
        ),
        (
            {
                "feature": pa.array([1, None], pa.int64()),
                "context": ["a"] * 2,
                "target": ["a"] * 2,
                "activation": [1.0] * 2,
            },
            "column 'feature' has null values",
        ),
    ],
)
def test_wrong_types_and_null_ids_are_named_before_work(
    tmp_path: Path, columns: dict[str, object], message: str
) -> None:
    from labeler.records.exemplars import ExemplarError

    (tmp_path / "ex").mkdir()
    pq.write_table(pa.table(columns), tmp_path / "ex" / "part.parquet")
    with pytest.raises(ExemplarError, match=message):
        plan_features(SourceConfig(exemplars=str(tmp_path / "ex")))
