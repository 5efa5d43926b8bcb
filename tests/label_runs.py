"""Test runs: label records written by the run's own sink (committed parts, manifest), and the exemplars it names;
`labeler` started as a user starts it, and what a run committed, read back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labeler.records.labels import LabelRecord, RunInfo, TopToken, to_table
from labeler.run.sink import PartSink, SinkConfig

WORDS = ("animal", "color", "money", "weather", "tool", "river", "music", "number", "city", "food")


def run_info(run_id: str, **overrides: object) -> RunInfo:
    fields: dict[str, object] = {
        "run_id": run_id,
        "discriminator": "minilm",
        "config_hash": "0123456789abcdef",
        "seed": 0,
        "started_at": "2026-11-21T05:00:00+00:00",
        "code_version": "labeler 0.1.0",
        "sae_id": "6-res-jb",
        "model": "gpt2-small",
        "hook_point": "blocks.6.hook_resid_pre",
        "prompt_template": "a {word}",
        "label_template": "any type of {label}",
    }
    return RunInfo(**{**fields, **overrides})  # type: ignore[arg-type]


def records(n: int, seed: int) -> list[LabelRecord]:
    """n features: every 7th dead, every 11th failed, the rest labelled with a word and a seeded AUROC, whose confidence
    score is that AUROC (low under 0.7)."""
    rng = np.random.default_rng(seed)
    out = []
    for feature in range(n):
        frequency = float(10 ** rng.uniform(-5, -1))
        if feature % 7 == 6:
            out.append(LabelRecord(feature, "dead", error="never active", activation_frequency=frequency))
        elif feature % 11 == 10:
            out.append(LabelRecord(feature, "failed", error="RuntimeError: out of memory", device_seconds=0.5))
        else:
            word = WORDS[(feature + seed) % len(WORDS)]
            auroc = float(rng.uniform(0.5, 1.0))
            out.append(
                LabelRecord(
                    feature,
                    "labelled",
                    label=word,
                    label_kind="concept",
                    search_label=word,
                    label_ids=(100 + WORDS.index(word),),
                    top_tokens=((TopToken(word, 100 + WORDS.index(word), 0.9), TopToken("thing", 7, 0.05)),),
                    heldout_auroc=auroc,
                    heldout_balanced_accuracy=float(rng.uniform(0.5, 1.0)),
                    heldout_f1=float(rng.uniform(0.3, 1.0)),
                    restart_aurocs=(0.7, 0.8),
                    confidence_score=auroc,
                    confidence="low" if auroc < 0.7 else "ok",
                    confidence_reason=f"confidence {auroc:.2f} under 0.70: held-out AUROC {auroc:.2f}"
                    if auroc < 0.7
                    else None,
                    activation_frequency=frequency,
                    steps=40,
                    restarts=4,
                    converged=True,
                    n_examples=40,
                    n_active=20,
                    n_heldout=12,
                    device_seconds=1.5,
                )
            )
    return out


def exemplars(recs: list[LabelRecord]) -> pa.Table:
    """Per feature, three contexts with its label word as the target (activations 3, 2, 1) and one inactive."""
    rows = []
    for record in recs:
        word = record.label or "nothing"
        for rank, activation in enumerate((3.0, 2.0, 1.0)):
            context = f"example {rank} of the {word} here"
            rows.append(
                {
                    "feature": record.feature,
                    "context": context,
                    "target": word,
                    "activation": activation,
                    "position": context.index(word),
                }
            )
        rows.append(
            {"feature": record.feature, "context": "nothing to see", "target": "see", "activation": 0.0, "position": 11}
        )
    return pa.Table.from_pylist(rows)


def write_run(
    url: str,
    run_id: str,
    n: int = 30,
    seed: int = 0,
    chunk_size: int = 10,
    storage_options: dict[str, object] | None = None,
    with_exemplars: bool = True,
    exemplars_at: str | None = None,
    **provenance: object,
) -> list[LabelRecord]:
    """A run at `url`: its manifest and committed parts of `chunk_size` records, as `labeler run` writes them, and
    (optionally) its exemplars at `URL-exemplars/`, which the manifest names (or the manifest names `exemplars_at`).
    `provenance` overrides run_info's fields (e.g. discriminator)."""
    info = run_info(run_id, **provenance)
    recs = records(n, seed)
    sink = PartSink(url, SinkConfig(storage_options=storage_options or {}))
    pointer = exemplars_at
    if with_exemplars:
        pointer = f"{url.rstrip('/')}-exemplars"
        fs, root = fsspec.core.url_to_fs(pointer, **(storage_options or {}))
        fs.makedirs(root, exist_ok=True)
        with fs.open(f"{root}/part-00000.parquet", "wb") as out:
            pq.write_table(exemplars(recs), out)
    manifest: dict[str, object] = {"run_id": run_id, "config": {"label": {"optimiser": {"restarts": 4}}}}
    assert sink.write_manifest(manifest if pointer is None else {**manifest, "exemplars": pointer})
    for chunk, start in enumerate(range(0, n, chunk_size)):
        assert sink.commit(chunk, to_table(recs[start : start + chunk_size], info))
    return recs


ROOT = Path(__file__).resolve().parent.parent


def start_labeler(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """`labeler ARGS --no-progress` in a new process, this checkout first on its path; stdout and stderr together."""
    return subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", *args, "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def committed_features(sink: PartSink) -> Counter[int]:
    """How many committed rows each feature of the run has."""
    found: Counter[int] = Counter()
    for index in sink.committed():
        found.update(sink.read_part(index).column("feature").to_pylist())
    return found


def assert_each_feature_once(sink: PartSink, n_features: int) -> None:
    """Features 0..n-1, each in exactly one committed row."""
    found = committed_features(sink)
    assert sorted(found) == list(range(n_features)), f"missing: {sorted(set(range(n_features)) - set(found))[:10]}"
    assert set(found.values()) == {1}, f"duplicated: {[f for f, n in found.items() if n > 1][:10]}"
