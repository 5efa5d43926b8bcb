"""Label datasets in other formats: Neuronpedia's explanation export, and plain JSON lines.

Neuronpedia publishes its explanations per source as
`{modelId}/{layer}/explanations/batch-{n}.jsonl.gz`, 1024 rows per batch in feature order, each row an
`Explanation` with the fields of NEURONPEDIA_FIELDS (as in Neuronpedia's own exporter,
utils/neuronpedia-utils/neuronpedia_utils/export-data.py, and its db_models/explanation.py). The
mapping from our columns is one pure function, `neuronpedia_explanations`, documented field by field in
docs/schema.md. This module knows nothing about where runs are stored.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from labeler.query import json_ready

NEURONPEDIA_BATCH = 1024
NEURONPEDIA_TYPE_NAME = "labeler-token-space-gd"
"""Our explanation method's name, in Neuronpedia's typeName field."""
NEURONPEDIA_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "modelId": (str,),
    "layer": (str,),
    "index": (str,),
    "authorId": (str,),
    "description": (str,),
    "embedding": (list, type(None)),
    "typeName": (str,),
    "explanationModelName": (str,),
    "umap_x": (float, type(None)),
    "umap_y": (float, type(None)),
    "umap_cluster": (int, type(None)),
    "umap_log_feature_sparsity": (float, type(None)),
}
"""Every field of one row of Neuronpedia's explanations export, in its order, and the JSON types allowed."""


class ExportError(ValueError):
    """Labels that cannot be exported as asked; the message names the missing setting."""


def neuronpedia_explanations(
    labels: pa.Table, author_id: str, model_id: str | None = None, source_id: str | None = None
) -> list[dict[str, Any]]:
    """Neuronpedia explanation rows for the labelled features of `labels`, in (modelId, layer, index) order.

    modelId is `model_id` or the run's `model` column; layer (Neuronpedia's source id, e.g. 6-res-jb) is
    `source_id` or the run's `sae_id`; description is the label; explanationModelName the discriminator.
    Features not labelled (skipped, dead, failed) have no explanation and are left out.
    """
    rows = []
    for record in labels.filter(pc.equal(labels.column("status"), "labelled")).to_pylist():
        model = model_id or record["model"]
        layer = source_id or record["sae_id"]
        if not model or not layer:
            missing = "--model-id (the run has no model)" if not model else "--source-id (the run has no sae_id)"
            raise ExportError(f"run {record['run_id']} cannot be exported to Neuronpedia: pass {missing}")
        index = str(record["feature"])
        rows.append(
            {
                "id": "lbl" + hashlib.sha256(f"{record['run_id']}/{model}/{layer}/{index}".encode()).hexdigest()[:22],
                "modelId": model,
                "layer": layer,
                "index": index,
                "authorId": author_id,
                "description": record["label"],
                "embedding": None,
                "typeName": NEURONPEDIA_TYPE_NAME,
                "explanationModelName": record["discriminator"],
                "umap_x": None,
                "umap_y": None,
                "umap_cluster": None,
                "umap_log_feature_sparsity": None,
            }
        )
    return sorted(rows, key=lambda r: (r["modelId"], r["layer"], int(r["index"])))


def write_neuronpedia(rows: Iterable[dict[str, Any]], out: Path) -> list[Path]:
    """Write rows as `OUT/{modelId}/{layer}/explanations/batch-{n}.jsonl.gz`, NEURONPEDIA_BATCH rows each."""
    by_source: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_source.setdefault((row["modelId"], row["layer"]), []).append(row)
    written = []
    for (model, layer), source_rows in by_source.items():
        folder = out / model / layer / "explanations"
        folder.mkdir(parents=True, exist_ok=True)
        for n, start in enumerate(range(0, len(source_rows), NEURONPEDIA_BATCH)):
            lines = "".join(json.dumps(r) + "\n" for r in source_rows[start : start + NEURONPEDIA_BATCH])
            path = folder / f"batch-{n}.jsonl.gz"
            path.write_bytes(gzip.compress(lines.encode(), compresslevel=5))
            written.append(path)
    return written


def write_jsonl(labels: pa.Table, out: Path) -> Path:
    """Every row and column of `labels` as one JSON object per line (NaN as null, times as ISO 8601)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in labels.to_pylist():
            f.write(json.dumps(json_ready(row), ensure_ascii=False, default=_iso) + "\n")
    return out


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
