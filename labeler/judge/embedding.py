"""delphi's embedding scorer: how close each example's text lies to the label, under a sentence encoder.

The label becomes delphi's retrieval query ("Instruct: Retrieve sentences that could be related to the
explanation.\\nQuery:" + label), each example's context is embedded as it is, and the score is the AUROC
of their cosine similarity against where the feature fires. The encoder is loaded as the embedding
discriminator loads it (`minilm` or `embedding:DIR`, labeler/discriminators/embedding.py), with the
example template "{text}" so that it embeds the plain texts.
"""

from __future__ import annotations

import torch

from labeler.discriminators.config import build_discriminator, parse_spec
from labeler.discriminators.embedding import EmbeddingConfig, EmbeddingDiscriminator
from labeler.errors import ConfigError
from labeler.judge.examples import JudgeExamples
from labeler.judge.records import LabelKind, Score, score_record

DELPHI_QUERY = "Instruct: Retrieve sentences that could be related to the explanation.\nQuery:"


class EmbeddingJudge:
    """Cosine similarity between the label as a query and each example's text."""

    def __init__(self, encoder: EmbeddingDiscriminator, query_prefix: str = DELPHI_QUERY) -> None:
        if encoder.config.example_template != "{text}":
            raise ValueError("the embedding judge embeds plain texts: build its encoder with example_template='{text}'")
        self.encoder, self.query_prefix, self.name = encoder, query_prefix, encoder.name

    @classmethod
    def from_spec(cls, spec: str, device: str = "auto") -> EmbeddingJudge:
        """A judge from `minilm` or `embedding:DIR`."""
        if not (spec == "minilm" or spec.startswith("embedding:")):
            raise ConfigError(f"the embedding scorer needs a sentence encoder judge (minilm, embedding:DIR): {spec!r}")
        config = EmbeddingConfig(**parse_spec(spec), example_template="{text}", device=device)  # type: ignore[arg-type]
        encoder = build_discriminator(config)
        assert isinstance(encoder, EmbeddingDiscriminator)
        return cls(encoder)

    @torch.no_grad()
    def score(self, examples: JudgeExamples, label: str, label_kind: LabelKind = "label") -> Score:
        query = self.query_prefix + label
        encoded = self.encoder.encode([query, *examples.contexts], [query, *examples.contexts])
        vectors = encoded.vectors[encoded.row]  # unit length
        similarity = (vectors[1:] @ vectors[0]).double().cpu().numpy()
        return score_record(examples, "embedding", self.name, label_kind, label, similarity, None)
