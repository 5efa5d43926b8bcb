"""Test runs: label records and exemplars written with the library's own writer into the committed-part layout."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from labeler.records.labels import LabelRecord, RunInfo, TopToken
from labeler.store.dataset import write_committed_part, write_exemplars, write_manifest

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
    """n features: every 7th dead, every 11th failed, the rest labelled with a word and a seeded AUROC."""
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
            out.append(
                LabelRecord(
                    feature,
                    "labelled",
                    label=word,
                    label_ids=(100 + WORDS.index(word),),
                    top_tokens=((TopToken(word, 100 + WORDS.index(word), 0.9), TopToken("thing", 7, 0.05)),),
                    heldout_auroc=float(rng.uniform(0.5, 1.0)),
                    heldout_balanced_accuracy=float(rng.uniform(0.5, 1.0)),
                    heldout_f1=float(rng.uniform(0.3, 1.0)),
                    restart_aurocs=(0.7, 0.8),
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
) -> list[LabelRecord]:
    """A run at `url`: manifest, committed parts of `chunk_size` records, and (optionally) exemplars."""
    info = run_info(run_id)
    recs = records(n, seed)
    write_manifest(url, info, {"settings": {"restarts": 4}}, storage_options)
    for chunk, start in enumerate(range(0, n, chunk_size)):
        write_committed_part(url, recs[start : start + chunk_size], info, chunk, storage_options)
    if with_exemplars:
        write_exemplars(url, exemplars(recs), storage_options)
    return recs
