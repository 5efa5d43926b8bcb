"""What a harvest is asked to do: `SamplingConfig` (which examples each feature gets) and `HarvestConfig` (from
which SAE, model and corpus, holding a SamplingConfig), frozen dataclasses validated on construction.

`labeler harvest`, `labeler import delphi-cache` and a run's `harvest:` stage all choose examples with the one
SamplingConfig. This module knows the settings and their limits, nothing of models, corpora, devices or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from labeler.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    """How many examples of which kind each feature gets, and from what they are drawn."""

    top_examples: int = 20
    """Exact top-activating examples per feature."""
    quantile_examples: int = 80
    """Further active examples per feature, spread over the activation quantile bins (with the top ones, 100 active
    examples where the corpus has them: fewer let chance words win on the held-out share)."""
    quantiles: int = 10
    """Equal-width bins of (0, max activation] the quantile examples are spread over."""
    reservoir: int = 200
    """Uniformly sampled active tokens kept per feature to draw the quantile examples from."""
    inactive_examples: int = 100
    """Random non-activating examples per feature."""
    min_active_tokens: int = 10
    """A feature active on fewer tokens is reported as ultra_rare (on none: dead)."""
    seed: int = 0
    """Seed of the random samples."""

    def __post_init__(self) -> None:
        if self.quantiles < 1:
            raise ConfigError(f"quantiles must be at least 1, got {self.quantiles}")
        for name in ("top_examples", "quantile_examples", "reservoir", "inactive_examples", "min_active_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class HarvestConfig:
    """What to harvest, from where, and how many examples per feature."""

    sae: str
    """The SAE: a sae-lens folder (cfg.json, sae_weights.safetensors) or RELEASE:SAE_ID, a sparsify hookpoint
    folder (cfg.json, sae.safetensors) or a Gemma Scope params.npz (or its folder)."""
    model: str
    """The subject model: a Hugging Face folder or hub id (AutoModel, safetensors)."""
    corpus: str
    """A .txt/.jsonl/.parquet file (optionally compressed), a folder of them, or a saved `datasets` folder."""
    out: str
    """Output folder or fsspec URL; must not hold a harvest yet."""
    text_column: str = "text"
    """The text field of JSONL, Parquet and `datasets` corpora."""
    tokens: int | None = None
    """Corpus tokens to harvest at most (None: the whole corpus)."""
    context_len: int = 64
    """Tokens per window, BOS/CLS included."""
    batch_size: int = 32
    """Windows per forward pass."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Which examples each feature gets (top, quantile, inactive) and when it counts as ultra_rare."""
    features: tuple[int, ...] | None = None
    """Harvest only these features (None: all of the SAE's); on the command line a range A-B (B excluded) or a list
    1,5,9."""
    features_per_part: int = 256
    """Features per exemplar Parquet part."""
    hook: str | None = None
    """Override the SAE's hook name (blocks.N.hook_resid_pre/post, or a module path of the base model or its causal
    LM)."""
    sae_format: Literal["auto", "sae-lens", "sparsify", "gemma-scope"] = "auto"
    """The SAE's file format; "auto" tells it from the file names."""
    max_document_bytes: int = 1_000_000
    """A longer corpus line is an error (it would have to be held in memory whole)."""
    device: str = "auto"
    """torch device; "auto" takes CUDA when present."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The subject model's dtype."""

    def __post_init__(self) -> None:
        for name in ("context_len", "batch_size", "features_per_part", "max_document_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sae_format not in ("auto", "sae-lens", "sparsify", "gemma-scope"):
            raise ConfigError(f"sae_format must be auto, sae-lens, sparsify or gemma-scope, got {self.sae_format!r}")
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError(f"tokens must be at least 1 (or None for the whole corpus), got {self.tokens}")
        if self.features is not None and (not self.features or min(self.features) < 0):
            raise ConfigError("features must be a non-empty tuple of feature ids >= 0")
