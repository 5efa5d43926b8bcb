"""Label records: one row per feature, its Arrow schema, and writing them as a Parquet dataset.

A record says what happened to a feature: `labelled` (with the label and its scores), `skipped` (the
input cannot support a label, e.g. no inactive examples) or `failed` (an error while labelling it),
with the reason in `error`. A failure is never stored as if it were a label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
Status = Literal["labelled", "skipped", "failed", "dead"]

TOP_TOKEN = pa.struct([("token", pa.string()), ("token_id", pa.int64()), ("prob", pa.float64())])
LABEL_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("feature", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("label", pa.string()),
        pa.field("label_ids", pa.list_(pa.int64())),
        pa.field("top_tokens", pa.list_(pa.list_(TOP_TOKEN))),
        pa.field("heldout_auroc", pa.float64()),
        pa.field("heldout_balanced_accuracy", pa.float64()),
        pa.field("restart_aurocs", pa.list_(pa.float64())),
        pa.field("loss_answer", pa.float64()),
        pa.field("loss_kl", pa.float64()),
        pa.field("loss_entropy", pa.float64()),
        pa.field("steps", pa.int64()),
        pa.field("restarts", pa.int64()),
        pa.field("converged", pa.bool_()),
        pa.field("n_examples", pa.int64()),
        pa.field("n_active", pa.int64()),
        pa.field("n_heldout", pa.int64()),
        pa.field("seconds", pa.float64()),
        pa.field("discriminator", pa.string()),
        pa.field("seed", pa.int64()),
    ]
)


@dataclass(frozen=True)
class TopToken:
    token: str
    token_id: int
    prob: float


@dataclass(frozen=True)
class LabelRecord:
    """What labelling produced for one feature (the columns of LABEL_SCHEMA)."""

    feature: int
    status: Status
    error: str | None = None
    label: str | None = None
    """The winning discrete label as text."""
    label_ids: tuple[int, ...] = ()
    top_tokens: tuple[tuple[TopToken, ...], ...] = ()
    """Per label slot, the final soft label's most probable tokens."""
    heldout_auroc: float | None = None
    """AUROC of the discrete label's scores against the feature's activity, on held-out examples."""
    heldout_balanced_accuracy: float | None = None
    """Balanced accuracy of the discriminator's yes/no answers under the discrete label, held out."""
    restart_aurocs: tuple[float, ...] = ()
    loss_answer: float | None = None
    loss_kl: float | None = None
    loss_entropy: float | None = None
    steps: int = 0
    """Optimisation steps the winning restart ran."""
    restarts: int = 0
    converged: bool = False
    n_examples: int = 0
    n_active: int = 0
    n_heldout: int = 0
    seconds: float = 0.0
    """Wall time of the batch the feature ran in, divided by the features in it."""
    discriminator: str = ""
    seed: int = 0
    schema_version: int = field(default=SCHEMA_VERSION)


def to_table(records: Sequence[LabelRecord]) -> pa.Table:
    """Records as an Arrow table with LABEL_SCHEMA."""
    return pa.Table.from_pylist([asdict(record) for record in records], schema=LABEL_SCHEMA)


def write_part(records: Sequence[LabelRecord], out_dir: str | Path, part: int) -> Path:
    """Write one part of the label dataset, `OUT/labels/part-NNNNN.parquet`, atomically (write, then rename)."""
    folder = Path(out_dir) / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{part:05d}.parquet"
    partial = folder / f".{path.name}.partial"
    pq.write_table(to_table(records), partial)
    os.replace(partial, path)
    return path


def read_labels(out_dir: str | Path) -> pa.Table:
    """The label dataset under OUT, refusing schema versions this code does not know."""
    table = pq.read_table(Path(out_dir) / "labels", schema=LABEL_SCHEMA)
    versions = set(table.column("schema_version").to_pylist())
    if versions - {SCHEMA_VERSION}:
        raise ValueError(
            f"label dataset at {out_dir} has schema version(s) {sorted(versions)}; "
            f"this labeler reads version {SCHEMA_VERSION}"
        )
    return table
