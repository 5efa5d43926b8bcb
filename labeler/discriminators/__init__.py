"""Discriminators: frozen models that judge whether a word is an example of a (soft) label.

`build_discriminator` turns a spec string from the command line into one:
  hf:MODEL_DIR   a Hugging Face causal LM asked the paper's question (causal_lm.py)
"""

from __future__ import annotations

from dataclasses import replace

from labeler.discriminators.base import Discriminator, EncodedExamples, Scored
from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator

__all__ = [
    "CausalLMConfig",
    "CausalLMDiscriminator",
    "Discriminator",
    "EncodedExamples",
    "Scored",
    "build_discriminator",
]


def build_discriminator(spec: str, causal_lm: CausalLMConfig) -> Discriminator:
    """The discriminator a spec names; `causal_lm` holds the settings for `hf:` specs (its model is replaced)."""
    kind, _, target = spec.partition(":")
    if kind == "hf" and target:
        return CausalLMDiscriminator.from_config(replace(causal_lm, model=target))
    raise ValueError(f"unknown discriminator {spec!r}; use hf:MODEL_DIR (a folder with a Hugging Face causal LM)")
