"""The label's word-level AUROC under a second discriminator (cross-discriminator).

Any labeler discriminator other than the one that chose the label encodes the examples (text and word)
and scores the label, tokenized by its own tokenizer, as the optimiser scores a discrete label: the
log-odds that the word is an example of the label. The label's tokens need not be in that
discriminator's label vocabulary: they enter through its input embedding layer.
"""

from __future__ import annotations

import numpy as np
import torch

from labeler.discriminators.base import Discriminator
from labeler.discriminators.config import KINDS, build_discriminator, parse_spec
from labeler.errors import ConfigError, InputError
from labeler.judge.examples import JudgeExamples
from labeler.judge.records import LabelKind, Score, score_record


class WordJudge:
    """A discriminator's yes/no log-odds per (text, word) under a text label."""

    def __init__(self, disc: Discriminator) -> None:
        if not (hasattr(disc, "tokenizer") and hasattr(disc, "embed")):
            raise ConfigError(
                f"the word scorer needs a discriminator with a tokenizer and embedding layer: {disc.name}"
            )
        self.disc, self.name = disc, disc.name

    @classmethod
    def from_spec(cls, spec: str) -> WordJudge:
        fields = parse_spec(spec)
        return cls(build_discriminator(KINDS[fields["kind"]](**fields)))  # type: ignore[arg-type]

    @torch.no_grad()
    def log_odds(self, examples: JudgeExamples, label: str) -> np.ndarray:
        """Float64[N]: the discriminator's log-odds of "yes" for each example under `label`."""
        ids = self.disc.tokenizer(label, add_special_tokens=False).input_ids
        if not ids:
            raise InputError(f"the label {label!r} has no tokens under {self.name}")
        embedded = self.disc.embed(torch.tensor(ids, device=self.disc.device))
        soft = embedded.to(self.disc.label_embeddings.dtype)[None, None]  # [F=1 R=1 L d]
        encoded = self.disc.encode(examples.contexts, examples.targets)
        rows = torch.arange(len(examples), device=self.disc.device)[None]
        return self.disc.score(encoded, rows, soft).score[0, 0].double().cpu().numpy()

    def score(self, examples: JudgeExamples, label: str, label_kind: LabelKind = "label") -> Score:
        """AUROC of the log-odds (and balanced accuracy of the answer log-odds > 0)."""
        scores = self.log_odds(examples, label)
        return score_record(examples, "word", self.name, label_kind, label, scores, scores > 0)
