"""A run's labels uploaded to Neuronpedia through Neuronpedia's own Python client (PyPI `neuronpedia`).

One `Feature` per labelled feature: its index, its density (the run's `activation_frequency`), the label
as an `Explanation` (method `labeler-token-space-gd`, explainer model the discriminator's published name, as
export.model_names gives it: never a folder of this machine) and its top
activations from the run's exemplars, sent with `Source.upload_batch`, 128 features per batch (the
client's limit). Neuronpedia shows an activation as tokens with a value each; an exemplar holds the
decoded context, the target and one activation, so an activation is the context cut around the target
([before, target, after], the value on the target, 0 elsewhere) where the target occurs once in the
context, and the whole context carrying the value where the target's place cannot be told.

The API key is read from the environment variable NEURONPEDIA_API_KEY only: never from a flag (shell
history) or a file (the client loads ./.env on import; that is switched off here). The client is imported
only when uploading: it is not a runtime dependency. This module knows nothing about argv.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from labeler.errors import InputError
from labeler.store.dataset import Dataset
from labeler.store.export import NEURONPEDIA_TYPE_NAME, model_names

API_KEY_VARIABLE = "NEURONPEDIA_API_KEY"
FEATURES_PER_BATCH = 128
"""The most features Neuronpedia's client sends in one upload-batch request."""
TOP_ACTIVATIONS = 20


class UploadError(InputError):
    """A run or setting that cannot be uploaded; the message says what to change."""


@dataclass(frozen=True)
class TopActivation:
    """One exemplar as Neuronpedia shows an activation: text pieces, one value each."""

    tokens: tuple[str, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class FeatureUpload:
    """What is uploaded for one feature, before it becomes the client's `Feature`."""

    index: int
    density: float | None
    label: str
    explainer_model: str
    """The published name of the discriminator that chose the label."""
    activations: tuple[TopActivation, ...]


def api_key_from_environment() -> str:
    key = os.environ.get(API_KEY_VARIABLE, "").strip()
    if not key:
        raise UploadError(
            f"{API_KEY_VARIABLE} is not set: create an API key in your Neuronpedia account settings and run "
            f"`export {API_KEY_VARIABLE}=...` before uploading (the key is read from the environment only)"
        )
    return key


def top_activation(context: str, target: str, activation: float) -> TopActivation:
    """The exemplar cut around its target where the target occurs once in the context, else whole."""
    if context.count(target) != 1:
        return TopActivation((context,), (activation,))
    before, after = context.split(target)
    pieces = [(before, 0.0), (target, activation), (after, 0.0)]
    kept = [(text, value) for text, value in pieces if text]
    return TopActivation(tuple(t for t, _ in kept), tuple(v for _, v in kept))


def feature_uploads(
    data: Dataset, top_k: int = TOP_ACTIVATIONS, names: Mapping[str, str] | None = None
) -> list[FeatureUpload]:
    """The labelled features of `data`, in feature order, each with its `top_k` strongest active exemplars and its
    discriminator's published name (`names`: the user's --model-name SPEC=NAME)."""
    if top_k < 0:
        raise UploadError(f"the number of top activations must be 0 or more, got {top_k}")
    labels = data.labels.filter(pc.equal(data.labels.column("status"), "labelled"))
    features = labels.column("feature").to_pylist()
    if len(set(features)) != len(features):
        raise UploadError(f"{data.runs} label some features more than once (several runs); upload one run at a time")
    named = model_names(set(labels.column("discriminator").to_pylist()), names or {})
    by_feature = _top_exemplars(data.exemplars, set(features), top_k)
    return sorted(
        (
            FeatureUpload(
                index=row["feature"],
                density=row["activation_frequency"],
                label=row["label"],
                explainer_model=named[row["discriminator"]],
                activations=tuple(by_feature.get(row["feature"], ())),
            )
            for row in labels.select(["feature", "activation_frequency", "label", "discriminator"]).to_pylist()
        ),
        key=lambda f: f.index,
    )


def upload_features(
    features: Sequence[FeatureUpload],
    model_id: str,
    source: str,
    api_key: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """Send `features` to Neuronpedia's source `source` of model `model_id`, FEATURES_PER_BATCH per request,
    through the client's `Source.upload_batch`; returns the number of batches. `on_batch(sent, total)` is
    called after each batch."""
    if not features:
        raise UploadError("the run has no labelled feature to upload")
    try:
        with _dotenv_disabled():
            import neuronpedia
            from neuronpedia.np_activation import Activation
            from neuronpedia.np_explanation import Explanation
            from neuronpedia.np_feature import Feature
            from neuronpedia.np_source import Source
    except ImportError as err:
        raise UploadError(f"Neuronpedia's client is not installed ({err}): pip install neuronpedia") from err

    def to_feature(f: FeatureUpload) -> Any:
        explanation = Explanation(
            modelId=model_id,
            source=source,
            index=f.index,
            text=f.label,
            method=NEURONPEDIA_TYPE_NAME,
            explainer_model=f.explainer_model,
        )
        activations = [
            Activation(modelId=model_id, source=source, index=f.index, tokens=list(a.tokens), values=list(a.values))
            for a in f.activations
        ]
        return Feature(
            modelId=model_id,
            source=source,
            index=f.index,
            density=f.density,
            explanations=[explanation],
            activations=activations,
        )

    # A source id is LAYER-SETNAME (6-res-jb: layer 6 of set res-jb); the set name is not sent by upload_batch.
    target = Source(id=source, model_id=model_id, set_name=source.split("-", 1)[-1])
    batches = [features[i : i + FEATURES_PER_BATCH] for i in range(0, len(features), FEATURES_PER_BATCH)]
    with neuronpedia.api_key(api_key):
        for n, batch in enumerate(batches, 1):
            target.upload_batch([to_feature(f) for f in batch])
            if on_batch is not None:
                on_batch(n, len(batches))
    return len(batches)


def _top_exemplars(exemplars: pa.Table | None, features: set[int], top_k: int) -> dict[int, list[TopActivation]]:
    if exemplars is None or top_k == 0:
        return {}
    active = exemplars.filter(pc.greater(exemplars.column("activation"), 0.0))
    order = pc.sort_indices(active, sort_keys=[("feature", "ascending"), ("activation", "descending")])
    found: dict[int, list[TopActivation]] = {}
    for row in active.take(order).select(["feature", "context", "target", "activation"]).to_pylist():
        kept = found.setdefault(row["feature"], [])
        if row["feature"] in features and len(kept) < top_k:
            kept.append(top_activation(row["context"], row["target"], row["activation"]))
    return found


@contextlib.contextmanager
def _dotenv_disabled() -> Iterator[None]:
    """The client calls python-dotenv's load_dotenv() on import, which would read a key (or USE_LOCALHOST)
    from a .env file; PYTHON_DOTENV_DISABLED switches that off for the import."""
    before = os.environ.get("PYTHON_DOTENV_DISABLED")
    os.environ["PYTHON_DOTENV_DISABLED"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHON_DOTENV_DISABLED"]
        else:
            os.environ["PYTHON_DOTENV_DISABLED"] = before
