"""The score record: one label of one feature judged by one scorer, and its Arrow schema.

Every row says which scorer and judge model gave it, which label (the run's own or a baseline) it
judged and on how many examples, and keeps the per-example answers so that other tools (delphi's
analysis) can recompute the numbers. This module knows nothing about models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from labeler.judge.examples import JudgeExamples
from labeler.optimise.scoring import auroc, balanced_accuracy

SCORE_SCHEMA_VERSION = 1
Scorer = Literal["detection", "embedding", "word"]
SCORERS: tuple[str, ...] = ("detection", "embedding", "word")
LabelKind = Literal["label", "token_baseline"]
"""label: the run's label; token_baseline: the feature's most frequent active target token."""

SCORE_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("hook_point", pa.string()),
        pa.field("feature", pa.int64(), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),
        pa.field("judge", pa.string(), nullable=False),
        pa.field("label_kind", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("examples_from", pa.string(), nullable=False),
        pa.field("n_examples", pa.int64(), nullable=False),
        pa.field("n_active", pa.int64(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("auroc", pa.float64()),
        pa.field("balanced_accuracy", pa.float64()),
        pa.field("example_texts", pa.list_(pa.string()), nullable=False),
        pa.field("example_activations", pa.list_(pa.float64()), nullable=False),
        pa.field("example_quantiles", pa.list_(pa.int64()), nullable=False),
        pa.field("example_scores", pa.list_(pa.float64()), nullable=False),
    ],
    metadata={b"labeler_score_schema_version": str(SCORE_SCHEMA_VERSION).encode()},
)


@dataclass(frozen=True)
class Score:
    """One label judged by one scorer on one feature's examples."""

    feature: int
    scorer: Scorer
    judge: str
    """The judge model, as its spec names it (e.g. "hf:/models/llama", "minilm")."""
    label_kind: LabelKind
    label: str
    examples_from: Literal["heldout", "fresh"]
    n_examples: int
    n_active: int
    value: float
    """The headline number: balanced accuracy for detection, AUROC for embedding and word."""
    auroc: float
    balanced_accuracy: float | None
    """None where the scorer gives no yes/no answer (embedding)."""
    example_texts: tuple[str, ...]
    example_activations: tuple[float, ...]
    example_quantiles: tuple[int, ...]
    """Activation quantile of each active example (0: the lowest), -1 for inactive ones."""
    example_scores: tuple[float, ...]
    """Per example: detection P(yes); embedding cosine similarity; word log-odds of yes."""
    run_id: str | None = None
    hook_point: str | None = None


def scores_table(scores: Sequence[Score]) -> pa.Table:
    """Score records as a SCORE_SCHEMA table (NaN values stored as null)."""
    rows = []
    for score in scores:
        row = asdict(score)
        for key in ("value", "auroc", "balanced_accuracy"):
            if row[key] is not None and not np.isfinite(row[key]):
                row[key] = None
        rows.append({"schema_version": SCORE_SCHEMA_VERSION, **row})
    return pa.Table.from_pylist(rows, schema=SCORE_SCHEMA)


def score_record(
    examples: JudgeExamples,
    scorer: Scorer,
    judge: str,
    label_kind: LabelKind,
    label: str,
    per_example: np.ndarray,
    said_yes: np.ndarray | None,
    headline: Literal["auroc", "balanced_accuracy"] = "auroc",
) -> Score:
    """A Score from a scorer's per-example numbers (higher: more like the label) and yes/no answers, if any;
    `headline` names the number that becomes its value."""
    area = auroc(per_example, examples.active)
    accuracy = None if said_yes is None else balanced_accuracy(said_yes.astype(np.float64), examples.active, 0.5)
    return Score(
        feature=examples.feature,
        scorer=scorer,
        judge=judge,
        label_kind=label_kind,
        label=label,
        examples_from=examples.source,
        n_examples=len(examples),
        n_active=int(examples.active.sum()),
        value=accuracy if headline == "balanced_accuracy" and accuracy is not None else area,
        auroc=area,
        balanced_accuracy=accuracy,
        example_texts=examples.contexts,
        example_activations=tuple(examples.activations.tolist()),
        example_quantiles=tuple(examples.quantiles.tolist()),
        example_scores=tuple(np.asarray(per_example, dtype=np.float64).tolist()),
    )
