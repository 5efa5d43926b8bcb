"""Label records: one row per feature per run, their Arrow schema (version 4), and writing them as Parquet.

A record says what happened to a feature: `labelled` (with the label and its scores), `skipped` (the
input cannot support a label, e.g. no inactive examples), `dead` (the feature never fired in its
examples) or `failed` (an error while labelling it), with the reason in `error`. A failure is never
stored as if it were a label. Where the label came from (run, SAE, model, discriminator, prompt,
config, code) is a `RunInfo`, stored on every row so that rows of several runs can sit in one table.
Every label carries its kind (a searched word, or the feature's own target strings), and a confidence
(labeler/optimise/confidence.py): a score in [0, 1], the flag `low` or `ok` and the reason for a low flag. A label
scored by the run's score stage (labeler/judge/stage.py) also carries its independent score and its token
baseline's; a judge that disagrees lowers the flag. The columns are documented one by one in docs/schema.md.
This module knows nothing about where a run is stored; labeler/store/dataset.py reads and writes runs at a URL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa

from labeler.errors import InputError

SCHEMA_VERSION = 4
Confidence = Literal["low", "ok"]
LabelKind = Literal["concept", "token"]
Status = Literal["labelled", "skipped", "dead", "failed"]
STATUSES: tuple[str, ...] = ("labelled", "skipped", "dead", "failed")

TOP_TOKEN = pa.struct([("token", pa.string()), ("token_id", pa.int64()), ("prob", pa.float64())])
RUN_FIELDS = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("sae_id", pa.string()),
    pa.field("model", pa.string()),
    pa.field("hook_point", pa.string()),
    pa.field("discriminator", pa.string(), nullable=False),
    pa.field("prompt_template", pa.string()),
    pa.field("label_template", pa.string()),
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
    pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
RECORD_FIELDS = [
    pa.field("schema_version", pa.int32(), nullable=False),
    pa.field("feature", pa.int64(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("label", pa.string()),
    pa.field("label_kind", pa.string()),
    pa.field("search_label", pa.string()),
    pa.field("label_ids", pa.list_(pa.int64())),
    pa.field("top_tokens", pa.list_(pa.list_(TOP_TOKEN))),
    pa.field("heldout_auroc", pa.float64()),
    pa.field("heldout_balanced_accuracy", pa.float64()),
    pa.field("heldout_f1", pa.float64()),
    pa.field("restart_aurocs", pa.list_(pa.float64())),
    pa.field("token_label", pa.string()),
    pa.field("token_heldout_auroc", pa.float64()),
    pa.field("confidence_score", pa.float64()),
    pa.field("confidence", pa.string()),
    pa.field("confidence_reason", pa.string()),
    pa.field("coverage", pa.float64()),
    pa.field("margin", pa.float64()),
    pa.field("stability", pa.float64()),
    pa.field("baseline_method", pa.string()),
    pa.field("baseline_label", pa.string()),
    pa.field("baseline_label_ids", pa.list_(pa.int64())),
    pa.field("baseline_auroc", pa.float64()),
    pa.field("activation_frequency", pa.float64()),
    pa.field("loss_answer", pa.float64()),
    pa.field("loss_kl", pa.float64()),
    pa.field("loss_entropy", pa.float64()),
    pa.field("steps", pa.int64()),
    pa.field("steps_total", pa.int64()),
    pa.field("restarts", pa.int64()),
    pa.field("converged", pa.bool_()),
    pa.field("n_examples", pa.int64()),
    pa.field("n_active", pa.int64()),
    pa.field("n_heldout", pa.int64()),
    pa.field("device_seconds", pa.float64()),
]
SCORE_FIELDS = [
    pa.field("independent_score", pa.float64()),
    pa.field("independent_scorer", pa.string()),
    pa.field("independent_judge", pa.string()),
    pa.field("independent_n_examples", pa.int64()),
    pa.field("baseline_token", pa.string()),
    pa.field("baseline_token_score", pa.float64()),
]
"""Filled by the score stage; null where a label was not scored."""
RECORD_FIELDS += SCORE_FIELDS
LABEL_SCHEMA = pa.schema(RECORD_FIELDS + RUN_FIELDS, metadata={b"labeler_schema_version": str(SCHEMA_VERSION).encode()})


class SchemaVersionError(InputError):
    """A label dataset written with a schema version this labeler does not read."""


@dataclass(frozen=True)
class TopToken:
    token: str
    token_id: int
    prob: float


@dataclass(frozen=True)
class LabelRecord:
    """What labelling produced for one feature (the per-feature columns of LABEL_SCHEMA)."""

    feature: int
    status: Status
    error: str | None = None
    label: str | None = None
    """The label: the searched word(s), or the feature's target strings where those name it better (`label_kind`)."""
    label_kind: LabelKind | None = None
    """concept: `label` is the searched label; token: `label` lists the target strings the feature fires on
    (`token: "("`, `tokens: "a" / "an"`), because they fit its held-out examples at least as well."""
    search_label: str | None = None
    """The searched label as text, whichever kind won."""
    label_ids: tuple[int, ...] = ()
    """The searched label's token ids."""
    top_tokens: tuple[tuple[TopToken, ...], ...] = ()
    """Per label slot, the final soft label's most probable tokens."""
    heldout_auroc: float | None = None
    """AUROC of the discrete label's scores against the feature's activity, on held-out examples."""
    heldout_balanced_accuracy: float | None = None
    """Balanced accuracy of the discriminator's yes/no answers under the discrete label, held out."""
    heldout_f1: float | None = None
    """F1 of the discriminator's yes/no answers under the discrete label (active = positive), held out."""
    restart_aurocs: tuple[float, ...] = ()
    token_label: str | None = None
    """The token label (the fewest frequent active target strings that fit the training examples about as well as
    the best few), whichever kind won."""
    token_heldout_auroc: float | None = None
    """AUROC of "the target is one of token_label's strings" on the same held-out examples as heldout_auroc."""
    confidence_score: float | None = None
    """How likely the label is right, in [0, 1], from signals of the run itself (no second model); calibrated on
    features whose right label is known (docs/confidence.md). None where nothing was labelled."""
    confidence: Confidence | None = None
    """low: confidence_score under the flag's threshold, or a judge of the score stage disagreed; ok otherwise."""
    confidence_reason: str | None = None
    """Why a label is flagged low, in words (the signals that lowered it); None when ok."""
    coverage: float | None = None
    """Confidence signal: the share of the feature's activation (its active training examples) on targets the label
    names."""
    margin: float | None = None
    """Confidence signal: the label's training AUROC minus its best rival's (the searched label, the feature's frequent
    targets, the label's nearest tokens)."""
    stability: float | None = None
    """Confidence signal: the share of bootstrap resamples of the training examples in which the label stays ahead of
    its rivals."""
    baseline_method: str | None = None
    """How the baseline label was found ("exhaustive": the best single allowed token), or None if not computed."""
    baseline_label: str | None = None
    baseline_label_ids: tuple[int, ...] | None = None
    baseline_auroc: float | None = None
    """Held-out AUROC of the baseline label, on the same held-out examples as heldout_auroc."""
    activation_frequency: float | None = None
    """Share of tokens on which the feature fires, from the SAE harvest; None when unknown."""
    loss_answer: float | None = None
    loss_kl: float | None = None
    loss_entropy: float | None = None
    steps: int = 0
    """Optimisation steps the winning restart ran."""
    steps_total: int = 0
    """Optimisation steps run by all the feature's restarts together (each restart's steps, summed)."""
    restarts: int = 0
    converged: bool = False
    n_examples: int = 0
    n_active: int = 0
    n_heldout: int = 0
    device_seconds: float = 0.0
    """Time on the labelling device: the wall time of the batch the feature ran in, divided by its features."""
    independent_score: float | None = None
    """The label's score by a judge that did not choose it, on its held-out rows (the score stage's first scorer)."""
    independent_scorer: str | None = None
    """Which scorer gave independent_score: detection, embedding or word."""
    independent_judge: str | None = None
    """The judge model of independent_score, as its spec names it (e.g. minilm, hf:/models/gpt2)."""
    independent_n_examples: int | None = None
    """Held-out examples independent_score was computed on."""
    baseline_token: str | None = None
    """The token-identity label: the most frequent target among the training split's active rows."""
    baseline_token_score: float | None = None
    """baseline_token's score by the same scorer, judge and examples as independent_score."""
    schema_version: int = field(default=SCHEMA_VERSION)


@dataclass(frozen=True)
class RunInfo:
    """Where a run's labels came from; stored on every row of the run (the provenance columns of LABEL_SCHEMA)."""

    run_id: str
    """Unique name of the run; the key to compare or join runs."""
    discriminator: str
    """The discriminator's name, e.g. hf:/models/gemma-2-2b or minilm."""
    config_hash: str
    """Hash of the run's settings (config_hash()); equal hashes mean equal settings."""
    seed: int
    """The run seed."""
    started_at: str
    """When the run started, ISO 8601 with a time zone, e.g. 2026-11-21T05:00:00+00:00."""
    code_version: str = ""
    """labeler's version (and git commit where known) that made the labels."""
    sae_id: str | None = None
    """The SAE the features belong to (e.g. a SAELens release/id), or None for exemplars without one."""
    model: str | None = None
    """The model the SAE reads, e.g. gpt2-small."""
    hook_point: str | None = None
    """Where in the model the SAE reads, e.g. blocks.6.hook_resid_pre."""
    prompt_template: str | None = None
    """The discriminator's question with its {text}, {word} and {label} slots."""
    label_template: str | None = None
    """Embedding discriminators: the text standing for the label; None for causal LMs."""

    def __post_init__(self) -> None:
        if not self.run_id:
            raise InputError("RunInfo.run_id must be a non-empty string naming the run")
        if _timestamp(self.started_at).tzinfo is None:
            raise InputError(f"RunInfo.started_at must carry a time zone (e.g. +00:00), got {self.started_at!r}")


def config_hash(*configs: Any) -> str:
    """A short stable hash of settings (dataclasses, dicts, strings, ...): 16 hex digits of SHA-256 of their JSON."""
    payload = json.dumps(
        [asdict(c) if hasattr(c, "__dataclass_fields__") else c for c in configs], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def with_activation_frequency(records: Sequence[LabelRecord], frequency: Mapping[int, float]) -> list[LabelRecord]:
    """Records with activation_frequency filled in from `frequency` (feature -> share of tokens); others kept None."""
    return [
        replace(record, activation_frequency=frequency.get(record.feature, record.activation_frequency))
        for record in records
    ]


def to_table(records: Sequence[LabelRecord], run: RunInfo) -> pa.Table:
    """Records as an Arrow table with LABEL_SCHEMA, the run's provenance on every row."""
    provenance = asdict(run)
    provenance["started_at"] = _timestamp(run.started_at)
    rows = [{**asdict(record), **provenance} for record in records]
    return pa.Table.from_pylist(rows, schema=LABEL_SCHEMA)


def check_schema(table: pa.Table, where: str) -> pa.Table:
    """The table cast to LABEL_SCHEMA, or a SchemaVersionError that says what is wrong with it."""
    if "schema_version" not in table.column_names:
        raise SchemaVersionError(
            f"{where} has no schema_version column: it is not a labeler label dataset; this labeler reads label "
            f"schema version {SCHEMA_VERSION}"
        )
    versions = sorted(set(table.column("schema_version").to_pylist()))
    if table.num_rows and versions != [SCHEMA_VERSION]:
        advice = (
            "it was written by a newer labeler; upgrade labeler to read it"
            if any(v is not None and v > SCHEMA_VERSION for v in versions)
            else "it was written by an older labeler; relabel with this one, or read it with the labeler release "
            "that wrote it"
        )
        raise SchemaVersionError(
            f"{where} has label schema version {', '.join(map(str, versions))}, but this labeler reads only version "
            f"{SCHEMA_VERSION}: {advice}"
        )
    missing = [name for name in LABEL_SCHEMA.names if name not in table.column_names]
    extra = [name for name in table.column_names if name not in LABEL_SCHEMA.names]
    if missing or extra:
        raise SchemaVersionError(
            f"{where} claims schema version {SCHEMA_VERSION} but its columns differ: missing {missing}, unknown {extra}"
        )
    try:
        return table.select(LABEL_SCHEMA.names).cast(LABEL_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise SchemaVersionError(f"{where} has columns of the wrong type: {err}") from err


def _timestamp(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError as err:
        raise InputError(
            f"started_at must be an ISO 8601 time such as 2026-11-21T05:00:00+00:00, not {value!r}"
        ) from err
