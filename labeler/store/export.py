"""Label datasets in other formats: Neuronpedia's explanation export, and plain JSON lines.

Neuronpedia publishes its explanations per source as
`{modelId}/{layer}/explanations/batch-{n}.jsonl.gz`, 1024 rows per batch in feature order, each row an
`Explanation` with the fields of NEURONPEDIA_FIELDS (as in Neuronpedia's own exporter,
utils/neuronpedia-utils/neuronpedia_utils/export-data.py, and its db_models/explanation.py), plus `source`,
the same id as `layer`: Neuronpedia's Python client (PyPI `neuronpedia`, `Explanation.from_np_db_json`)
reads the source id under that name, the exporter and the database under `layer`, so both are written. The
mapping from our columns is one pure function, `neuronpedia_explanations`, documented field by field in
docs/schema.md. This module knows nothing about where runs are stored.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from labeler.errors import InputError
from labeler.store.query import json_ready

NEURONPEDIA_BATCH = 1024
NEURONPEDIA_TYPE_NAME = "labeler-token-space-gd"
"""Our explanation method's name, in Neuronpedia's typeName field."""
NEURONPEDIA_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "modelId": (str,),
    "layer": (str,),
    "source": (str,),
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


class ExportError(InputError):
    """Labels that cannot be exported as asked; the message names the missing setting."""


PACKAGED_MODELS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
"""The published names of the models labeler ships, by the short spec a run records."""
_HUB_CACHE = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+/?$")
"""A folder of the Hugging Face hub's cache, which keeps the model's name: .../models--ORG--NAME/snapshots/SHA."""


def model_names(specs: Iterable[str], given: Mapping[str, str]) -> dict[str, str]:
    """{spec: published name} for the models a run names by spec (its discriminator, its judges: hf:DIR,
    embedding:DIR, minilm), so that an export or upload names a model, never a folder of this machine.

    A name comes from `given` (--model-name SPEC=NAME), from PACKAGED_MODELS, or from a folder of the hub's
    cache; for any other spec (a model in a local folder: the run does not record its name) ExportError asks for
    --model-name, listing every such spec."""
    names, unknown = {}, []
    for spec in dict.fromkeys(specs):
        folder = spec.partition(":")[2]
        cached = _HUB_CACHE.search(folder)
        if spec in given:
            names[spec] = given[spec]
        elif spec in PACKAGED_MODELS:
            names[spec] = PACKAGED_MODELS[spec]
        elif cached is not None:
            names[spec] = f"{cached[1]}/{cached[2]}"
        else:
            unknown.append(spec)
    if unknown:
        flags = " ".join(f"--model-name {spec}=NAME" for spec in unknown)
        raise ExportError(
            f"the run names model(s) {unknown} by a folder of this machine, and an export names a model by its "
            f"published name (e.g. google/gemma-2-2b), which the run does not record: give it, {flags}"
        )
    for spec, name in names.items():
        if not _model_name(name):
            raise ExportError(
                f"--model-name {spec}={name}: {name!r} is not a model's name but looks like a path; give the name "
                "it is published under, e.g. google/gemma-2-2b"
            )
    return names


def _model_name(name: str) -> bool:
    """A published model name (gpt-4o-mini, google/gemma-2-2b), not a path: no leading / . ~, no backslash."""
    return bool(name.strip()) and not name.startswith(("/", ".", "~")) and "\\" not in name and "//" not in name


def neuronpedia_explanations(
    labels: pa.Table,
    author_id: str,
    model_id: str | None = None,
    source_id: str | None = None,
    names: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Neuronpedia explanation rows for the labelled features of `labels`, in (modelId, layer, index) order.

    modelId is `model_id` or the run's `model` column; layer (Neuronpedia's source id, e.g. 6-res-jb) is
    `source_id` or the run's `sae_id`; description is the label; explanationModelName the discriminator's
    published name (model_names, with `names` given by the user). Features not labelled (skipped, dead, failed)
    have no explanation and are left out.
    """
    named = model_names(_labelled_column(labels, "discriminator"), names or {})
    rows = [
        {
            "id": _explanation_id(record, model, layer),
            "modelId": model,
            "layer": layer,
            "source": layer,
            "index": str(record["feature"]),
            "authorId": author_id,
            "description": record["label"],
            "embedding": None,
            "typeName": NEURONPEDIA_TYPE_NAME,
            "explanationModelName": named[record["discriminator"]],
            "umap_x": None,
            "umap_y": None,
            "umap_cluster": None,
            "umap_log_feature_sparsity": None,
        }
        for record, model, layer in _labelled(labels, model_id, source_id)
    ]
    return sorted(rows, key=lambda r: (r["modelId"], r["layer"], int(r["index"])))


def neuronpedia_scores(
    labels: pa.Table,
    author_id: str,
    model_id: str | None = None,
    source_id: str | None = None,
    names: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Rows in the layout of Neuronpedia's ExplanationScore for the explanations `neuronpedia_explanations`
    gives: per label its self-score (held-out AUROC under the discriminator that chose it), its confidence score (the
    flag, its reason and the label's kind in jsonDetails) and, where the run's
    score stage judged it, its independent score (value, score type, scorer model), with the details in
    jsonDetails. Each row's explanationId is its explanation's id; scorer models by their published names."""
    judged = labels.filter(pc.is_valid(labels.column("independent_score")))
    named = model_names(
        [*_labelled_column(labels, "discriminator"), *_labelled_column(judged, "independent_judge")], names or {}
    )
    rows = []
    for record, model, layer in _labelled(labels, model_id, source_id):
        explanation = _explanation_id(record, model, layer)
        confidence = {key: record.get(key) for key in ("confidence", "confidence_reason", "label_kind")}
        scores: list[tuple[str, str, float | None, dict[str, Any]]] = [
            ("labeler-heldout-auroc", named[record["discriminator"]], record["heldout_auroc"], {}),
            ("labeler-confidence", named[record["discriminator"]], record.get("confidence_score"), confidence),
        ]
        if record.get("independent_score") is not None:
            details = {
                key: record.get(key)
                for key in ("independent_n_examples", "baseline_token", "baseline_token_score", "confidence")
            }
            scores.append(
                (
                    f"labeler-{record['independent_scorer']}",
                    named[record["independent_judge"]],
                    record["independent_score"],
                    details,
                )
            )
        for type_name, scorer, value, details in scores:
            if value is None:
                continue
            rows.append(
                {
                    "id": "lbs" + hashlib.sha256(f"{explanation}/{type_name}/{scorer}".encode()).hexdigest()[:22],
                    "modelId": model,
                    "layer": layer,
                    "index": str(record["feature"]),
                    "explanationId": explanation,
                    "value": float(value),
                    "explanationScoreTypeName": type_name,
                    "explanationScoreModelName": scorer,
                    "jsonDetails": json.dumps(details) if details else "",
                    "initiatedByUserId": author_id,
                    "createdAt": _iso(record["started_at"]),
                }
            )
    return sorted(rows, key=lambda r: (r["modelId"], r["layer"], int(r["index"]), r["explanationScoreTypeName"]))


def _labelled_column(labels: pa.Table, name: str) -> list[str]:
    """The distinct values of a column over the labelled features."""
    labelled = labels.filter(pc.equal(labels.column("status"), "labelled"))
    return sorted({str(value) for value in labelled.column(name).to_pylist() if value is not None})


def _labelled(
    labels: pa.Table, model_id: str | None, source_id: str | None
) -> Iterable[tuple[dict[str, Any], str, str]]:
    """(record, modelId, layer) of each labelled feature; refuses a run without a Neuronpedia model or source id."""
    for record in labels.filter(pc.equal(labels.column("status"), "labelled")).to_pylist():
        model = model_id or record["model"]
        layer = source_id or record["sae_id"]
        if not model or not layer:
            missing = "--model-id (the run has no model)" if not model else "--source-id (the run has no sae_id)"
            raise ExportError(f"run {record['run_id']} cannot be exported to Neuronpedia: pass {missing}")
        _check_id(model, bool(model_id), f"run {record['run_id']}'s model", "--model-id", "gpt2-small")
        _check_id(layer, bool(source_id), f"run {record['run_id']}'s sae_id", "--source-id", "6-res-jb")
        yield record, model, layer


def _explanation_id(record: dict[str, Any], model: str, layer: str) -> str:
    return "lbl" + hashlib.sha256(f"{record['run_id']}/{model}/{layer}/{record['feature']}".encode()).hexdigest()[:22]


def write_neuronpedia(rows: Iterable[dict[str, Any]], out: Path, kind: str = "explanations") -> list[Path]:
    """Write rows as `OUT/{modelId}/{layer}/{kind}/batch-{n}.jsonl.gz`, NEURONPEDIA_BATCH rows each (kind:
    explanations, or explanation-scores for the rows of `neuronpedia_scores`).

    Refuses a folder that already holds batch files: overwriting batch-0..k would leave an earlier export's
    higher-numbered batches beside them, and Neuronpedia would import both runs' explanations as one.
    """
    by_source: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_source.setdefault((row["modelId"], row["layer"]), []).append(row)
    for model, layer in by_source:
        if not (_plain_name(model) and _plain_name(layer)):
            raise ExportError(f"modelId {model!r} and layer {layer!r} must each be one plain folder name")
    folders = {source: out / source[0] / source[1] / kind for source in by_source}
    for folder in folders.values():
        if any(folder.glob("batch-*.jsonl.gz")):
            raise ExportError(
                f"{folder} already holds batch files of an earlier export; choose a new --out or remove that folder"
            )
    written = []
    for source, source_rows in by_source.items():
        folders[source].mkdir(parents=True, exist_ok=True)
        for n, start in enumerate(range(0, len(source_rows), NEURONPEDIA_BATCH)):
            lines = "".join(json.dumps(r) + "\n" for r in source_rows[start : start + NEURONPEDIA_BATCH])
            path = folders[source] / f"batch-{n}.jsonl.gz"
            with path.open("xb") as f:  # create-only: a batch written meanwhile by another export is never replaced
                f.write(gzip.compress(lines.encode(), compresslevel=5))
            written.append(path)
    return written


def write_jsonl(labels: pa.Table, out: Path) -> Path:
    """Every row and column of `labels` as one JSON object per line (NaN as null, times as ISO 8601).

    Refuses an existing file rather than replace it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = out.open("x")
    except FileExistsError:
        raise ExportError(f"{out} already exists; choose a new --out or remove it") from None
    with f:
        for row in labels.to_pylist():
            f.write(json.dumps(json_ready(row), ensure_ascii=False, default=_iso) + "\n")
    return out


def _check_id(value: str, given: bool, column: str, flag: str, example: str) -> None:
    """Refuse an id that is not a plain name: it becomes a folder of the export (an SAE's path or a hub id
    such as openai-community/gpt2 would write outside OUT or into nested folders)."""
    if not _plain_name(value):
        origin = f"{flag} {value!r}" if given else f"{column} {value!r}"
        raise ExportError(
            f"{origin} is not a Neuronpedia id: the id names a folder of the export, so it must be one plain name "
            f"(no '/' or '\\', not '.' or '..'), e.g. {example}; set it with {flag}"
        )


def _plain_name(value: str) -> bool:
    """Whether `value` is one safe path component: not empty, no separator, not '.' or '..', no NUL."""
    return bool(value) and value not in (".", "..") and not any(c in value for c in "/\\\0")


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


DELPHI_SCORERS = ("detection", "word")
"""Scorers written in delphi's classifier output format; the embedding scorer's rows are left out, since
delphi's `load_data` reads every score folder as classifier output."""


def write_delphi_scores(scores: pa.Table, out: Path) -> list[Path]:
    """delphi's per-latent score files, `OUT/scores/<scorer>/<hook>_latent<feature>.txt`, from score rows
    (labeler/judge/records.py SCORE_SCHEMA) of the run's own labels.

    Each file is the JSON list delphi's classifier scorers write: per example str_tokens (the text as one
    piece), distance (its quantile, -1 when inactive), activating, prediction, probability, correct and
    activations. A word score's probability is the sigmoid of its log-odds. Where several judges gave one
    scorer's scores, each judge gets its own folder, `<scorer>-<judge>`. Refuses existing files.
    """
    written = []
    own = scores.filter(pc.equal(scores.column("label_kind"), "label"))
    rows = own.filter(pc.is_in(own.column("scorer"), pa.array(DELPHI_SCORERS))).to_pylist()
    judges: dict[str, set[str]] = {}
    for row in rows:
        judges.setdefault(row["scorer"], set()).add(row["judge"])
    for row in rows:
        columns = ("example_texts", "example_activations", "example_quantiles", "example_scores")
        per_example = zip(*(row[c] for c in columns), strict=True)
        examples = []
        for text, activation, quantile, score in per_example:
            probability = score if row["scorer"] == "detection" else 1 / (1 + math.exp(-score))
            activating, prediction = quantile >= 0, probability > 0.5
            examples.append(
                {
                    "str_tokens": [text],
                    "activations": [activation],
                    "distance": quantile,
                    "activating": activating,
                    "prediction": prediction,
                    "probability": probability,
                    "correct": prediction == activating,
                }
            )
        hook = (row["hook_point"] or "layer").replace("/", "--")
        folder = row["scorer"] if len(judges[row["scorer"]]) == 1 else f"{row['scorer']}-{_slug(row['judge'])}"
        path = out / "scores" / folder / f"{hook}_latent{row['feature']}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("x") as f:
                f.write(json.dumps(examples))
        except FileExistsError:
            raise ExportError(f"{path} already exists; choose a new --out or remove it") from None
        written.append(path)
    return written


def _slug(name: str) -> str:
    """A judge's name as one folder name (hf:/models/llama -> hf-models-llama)."""
    return "-".join(part for part in re.split(r"[^A-Za-z0-9_.]+", name) if part) or "judge"
