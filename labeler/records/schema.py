"""The Arrow schemas of the exemplar side: the exemplar contract, the harvest's rows and features, and the
exemplars table that `labeler query` shows. One module, so every producer and reader uses the same columns and
types. (The label records' schema lives with the records, in records/labels.py.)"""

from __future__ import annotations

import pyarrow as pa

EXEMPLAR_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int64(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("activation", pa.float64(), nullable=False),
    ]
)
"""The exemplar contract: every producer of exemplars writes at least these columns, every reader needs them."""

HARVEST_SCHEMA_VERSION = 2
"""The version of the harvest's files (exemplar parts, features.parquet, manifest.json)."""

POSITION = pa.field("position", pa.int32(), nullable=False)
"""Where the target token lies in its window (`window_ids`, BOS included)."""
EXEMPLAR_ROW_SCHEMA = pa.schema(
    [
        *EXEMPLAR_SCHEMA,
        POSITION,
        pa.field("window", pa.int64(), nullable=False),
        pa.field("window_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("target_id", pa.int32(), nullable=False),
        pa.field("sampling", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)
"""The exemplar contract (feature, context, target, activation) plus where the example came from.

`position` indexes `window_ids` (the window's token ids, BOS included); `sampling` is "top",
"quantile" or "inactive"."""

FEATURE_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("active_tokens", pa.int64(), nullable=False),
        pa.field("frequency", pa.float64(), nullable=False),
        pa.field("max_activation", pa.float64(), nullable=False),
        pa.field("mean_active_activation", pa.float64(), nullable=False),
        pa.field("top_examples", pa.int32(), nullable=False),
        pa.field("quantile_examples", pa.int32(), nullable=False),
        pa.field("inactive_examples", pa.int32(), nullable=False),
        pa.field("part", pa.int32(), nullable=False),
        pa.field("non_finite_tokens", pa.int64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)
"""One row per harvested feature; `status` is "alive", "ultra_rare" (fewer than `min_active_tokens`
active tokens), "dead" (never active: no exemplar rows) or "failed" (its latent was NaN or infinite on
`non_finite_tokens` tokens: no exemplar rows; `error` says so). Tokens where every latent is non-finite
(a model-side overflow) are left out of the harvest instead and counted in the manifest."""

EXEMPLARS_TABLE_SCHEMA = pa.schema(
    [pa.field("run_id", pa.string(), nullable=False), *EXEMPLAR_SCHEMA, POSITION.with_nullable(True)]
)
"""The `exemplars` table of `labeler query`: the contract and, where the producer wrote it, `position`, by run."""
