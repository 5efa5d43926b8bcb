"""The score stage of a run: a chunk's concept labels judged on their held-out rows by models that did not choose them.

`ScoreConfig` is the run config's `score:` section (off by default). `ChunkScorer` holds the judges, built once per
worker, and turns a chunk's label records into the same records with their independent score and their token
baseline's score; where the judge disagrees (`disagreement`), the label's confidence becomes low and the reason
says why. The worker commits the chunk's part only after this, so a resumed run scores each chunk exactly as an
uninterrupted one. Judging uses the held-out rows that labelling split off (same seed, same
fraction), never the rows that chose the label. This module knows nothing about where parts are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from labeler.errors import ConfigError
from labeler.judge.examples import JudgeExamples, JudgeExamplesError, heldout_examples, token_baseline
from labeler.judge.records import SCORERS, LabelKind, Score
from labeler.optimise.labelling import LabelConfig
from labeler.records.exemplars import FeatureExemplars
from labeler.records.labels import LabelRecord


class Judge(Protocol):
    name: str

    def score(self, examples: JudgeExamples, label: str, label_kind: LabelKind = "label") -> Score: ...


@dataclass(frozen=True)
class ScoreConfig:
    """The score stage: after a chunk is labelled, its labels are scored by judges that did not choose them."""

    enabled: bool = False
    """Score each chunk's labels before its part is committed (off: labelling alone, as fast as before)."""
    judges: tuple[str, ...] = ("minilm",)
    """Judge models: hf:DIR (detection, word), minilm or embedding:DIR (embedding, word)."""
    scorers: tuple[str, ...] = ("embedding",)
    """Scorers to run (detection, embedding, word); the first (scorer, judge) pair gives independent_score."""
    threshold: float = 0.6
    """A label whose independent score is below this gets confidence low."""
    device: str = "auto"
    """torch device of the judges."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scorers) - set(SCORERS))
        if unknown or not self.scorers:
            raise ConfigError(f"score.scorers: unknown scorer(s) {unknown}; choose among {', '.join(SCORERS)}")
        if not self.judges:
            raise ConfigError("score.judges: give at least one judge (minilm, embedding:DIR or hf:DIR)")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(
                f"score.threshold must lie in [0, 1] (a score is an AUROC or accuracy), not {self.threshold}"
            )


def build_judges(specs: Sequence[str], scorers: Sequence[str], device: str) -> list[Judge]:
    """Every (scorer, judge) pair whose kinds fit, in the order of `scorers`; raises where a scorer gets no judge."""
    from labeler.judge.detection import DetectionJudge
    from labeler.judge.embedding import EmbeddingJudge
    from labeler.judge.word import WordJudge

    judges: list[Judge] = []
    for scorer in scorers:
        fitting = [s for s in specs if scorer == "word" or s.startswith("hf:") == (scorer == "detection")]
        if not fitting:
            need = "hf:MODEL_DIR" if scorer == "detection" else "minilm or embedding:MODEL_DIR"
            raise ConfigError(f"the {scorer} scorer has no judge: pass --judge {need}, or leave it out of --scorers")
        for spec in fitting:
            if scorer == "detection":
                judges.append(DetectionJudge.from_spec(spec, device=device))
            elif scorer == "embedding":
                judges.append(EmbeddingJudge.from_spec(spec, device=device))
            else:
                judges.append(WordJudge.from_spec(spec))
    return judges


def disagreement(score: float, baseline_score: float | None, threshold: float, is_baseline: bool) -> str | None:
    """Why a judge's score makes a label unsure: under `threshold`, or not above the token baseline's (unless the
    label *is* the baseline token, which cannot beat itself); None where it does not. A NaN score is unsure."""
    if not np.isfinite(score) or score < threshold:
        return f"the independent judge scored it {score:.2f}, under the score stage's threshold {threshold}"
    if not is_baseline and baseline_score is not None and np.isfinite(baseline_score) and score <= baseline_score:
        return f"the independent judge scored it {score:.2f}, not above its token baseline's {baseline_score:.2f}"
    return None


class ChunkScorer:
    """Judges built once; scores a chunk's labelled records on their held-out rows."""

    def __init__(self, config: ScoreConfig, discriminator: str, judges: Sequence[Judge] | None = None) -> None:
        if discriminator in config.judges and "word" in config.scorers:
            raise ConfigError(
                f"score.judges: {discriminator} is the run's discriminator, which chose the labels; the word scorer "
                "needs another model as judge"
            )
        self.config = config
        self.judges = list(judges) if judges is not None else build_judges(config.judges, config.scorers, config.device)

    def score(
        self, records: Sequence[LabelRecord], exemplars: Sequence[FeatureExemplars], label: LabelConfig
    ) -> tuple[list[LabelRecord], list[Score]]:
        """(the records, labelled ones with their scores and confidence; every Score made, of label and baseline)."""
        by_feature = {examples.feature: examples for examples in exemplars}
        out, scores = [], []
        for record in records:
            examples = by_feature.get(record.feature)
            text = record.label if record.status == "labelled" and record.label_kind == "concept" else None
            if text is None or examples is None:
                out.append(record)  # a token label names strings, which no judge's question fits
                continue
            try:
                judged = heldout_examples(examples, label, expected=record.n_heldout)
                baseline = token_baseline(examples, label)
            except JudgeExamplesError:
                out.append(record)  # no fair examples: left unscored
                continue
            mine = [judge.score(judged, text, "label") for judge in self.judges]
            theirs = [judge.score(judged, baseline, "token_baseline") for judge in self.judges]
            scores += mine + theirs
            head, base = mine[0], theirs[0]
            is_baseline = text.strip().lower() == baseline.strip().lower()
            unsure = disagreement(head.value, base.value, self.config.threshold, is_baseline)
            out.append(
                replace(
                    record,
                    independent_score=_finite(head.value),
                    independent_scorer=head.scorer,
                    independent_judge=head.judge,
                    independent_n_examples=head.n_examples,
                    baseline_token=baseline,
                    baseline_token_score=_finite(base.value),
                    confidence="low" if unsure else record.confidence,
                    confidence_reason="; ".join(r for r in (record.confidence_reason, unsure) if r) or None,
                )
            )
        return out, scores


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
