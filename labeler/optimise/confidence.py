"""How far to trust a label, from the run itself: signals, a calibrated score in [0, 1], a flag and its reason.

No second model is asked. The signals come from the discriminator that chose the label and from the feature's own
examples (`signals`):
- the label's held-out AUROC, and how many held-out examples it rests on;
- coverage: the share of the feature's activation (active training examples) that lies on targets the label names
  (its word, or a token label's strings): a label that names what the feature fires on;
- margin and stability against the label's rivals (the searched label, the feature's frequent targets, the label's
  nearest tokens): its training AUROC minus the best rival's, and the share of bootstrap resamples of the training
  examples in which it stays ahead. A flat optimum, where many words fit as well, makes a label arbitrary.

A logistic model per discriminator kind (`Calibration`, shipped in labeler/data/confidence.json and fitted by
benchmarks/confidence_fit.py on features whose right label is known) turns them into the probability that the label
is right; under the kind's threshold the label is flagged low, with the signals that pulled it down as the reason.
Resampling is seeded by the run seed and the feature id, so a resumed run gets the same confidences.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.errors import InputError
from labeler.optimise.scoring import aurocs
from labeler.optimise.task import FeatureTask
from labeler.optimise.token_label import TokenLabel, token_key

CALIBRATION_RESOURCE = "data/confidence.json"
NEIGHBOURS = 16
"""Rivals of a concept label: its this many nearest tokens (cosine of the label embeddings)."""
RESAMPLES = 50
"""Bootstrap resamples of the training examples for stability."""
SIGNALS = ("heldout_auroc", "coverage", "margin", "stability", "token", "log_heldout")
"""The model's inputs, in order."""


class CalibrationError(InputError):
    """A confidence calibration file cannot be read or does not fit this labeler; the message names the file."""


@dataclass(frozen=True)
class Signals:
    """What the run knows about one label, besides the label itself."""

    heldout_auroc: float
    n_heldout: int
    coverage: float
    margin: float
    stability: float
    token: bool

    def vector(self) -> np.ndarray:
        """The model's inputs (SIGNALS' order); a NaN AUROC (one class missing) counts as chance."""
        auroc = 0.5 if math.isnan(self.heldout_auroc) else self.heldout_auroc
        values = (auroc, self.coverage, self.margin, self.stability, float(self.token), math.log1p(self.n_heldout))
        return np.array(values, dtype=np.float64)


@dataclass(frozen=True)
class Calibration:
    """A logistic model of P(label right | signals) for one discriminator kind, and where it flags low."""

    mean: tuple[float, ...]
    """Per signal, its mean on the features fitted on (inputs are standardised)."""
    scale: tuple[float, ...]
    """Per signal, its standard deviation there (1 where it did not vary)."""
    weights: tuple[float, ...]
    bias: float
    threshold: float
    """A label whose score is under this is flagged low."""
    fitted_on: str
    """Which features, which discriminator, which command: where the model comes from."""

    def score(self, signals: Signals) -> tuple[float, np.ndarray]:
        """(the probability that the label is right, each signal's contribution to its log-odds)."""
        z = (signals.vector() - np.array(self.mean)) / np.array(self.scale)
        contributions = z * np.array(self.weights)
        return float(1 / (1 + math.exp(-(self.bias + contributions.sum())))), contributions


@dataclass(frozen=True)
class Confidence:
    """A label's confidence, as the label record stores it."""

    score: float
    flag: str
    """low or ok."""
    reason: str | None
    """Why it is low, in words; None when ok."""


def calibration(kind: str) -> Calibration:
    """The shipped calibration of a discriminator kind (an `embedding:` encoder borrows minilm's)."""
    kinds = _shipped()
    entry = kinds.get(kind) or kinds.get("minilm" if kind == "embedding" else "")
    if entry is None:
        raise ValueError(f"no confidence calibration ships for discriminator kind {kind!r}; known: {sorted(kinds)}")
    return entry


@cache
def _shipped() -> dict[str, Calibration]:
    text = resources.files("labeler").joinpath(CALIBRATION_RESOURCE).read_text(encoding="utf-8")
    return _parse(text, f"labeler/{CALIBRATION_RESOURCE}")


@cache
def read_calibration(path: str) -> Calibration:
    """A calibration file's one model (`--calibration FILE`: a file of one kind, as benchmarks/confidence_fit.py
    writes it); CalibrationError naming the file and what is wrong. Read once per process, as the shipped one is:
    every labelled feature asks for it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CalibrationError(f"cannot read the calibration file {path}: {err}") from err
    kinds = _parse(text, path)
    if len(kinds) != 1:
        raise CalibrationError(
            f"the calibration file {path} holds {len(kinds)} models ({sorted(kinds)}); give a file of one"
        )
    return next(iter(kinds.values()))


def _parse(text: str, where: str) -> dict[str, Calibration]:
    """{kind: Calibration} of a calibration file's text."""
    try:
        raw = json.loads(text)
        if tuple(raw["signals"]) != SIGNALS:
            raise CalibrationError(
                f"it was fitted on the signals {raw['signals']}; this labeler computes {list(SIGNALS)}"
            )
        kinds = {kind: Calibration(**entry) for kind, entry in raw["kinds"].items()}
    except (ValueError, KeyError, TypeError) as err:
        raise CalibrationError(f"{where} is not a confidence calibration: {err}") from err
    for kind, model in kinds.items():
        if not len(model.mean) == len(model.scale) == len(model.weights) == len(SIGNALS):
            raise CalibrationError(f"{where}: the model of {kind} needs {len(SIGNALS)} means, scales and weights")
    return kinds


def judge(signals: Signals, model: Calibration) -> Confidence:
    """The label's confidence under `model`; a low flag's reason names the two signals that pulled it down most."""
    score, contributions = model.score(signals)
    if score >= model.threshold:
        return Confidence(score, "ok", None)
    said = [_SAY[SIGNALS[i]](signals) for i in np.argsort(contributions)[:2] if contributions[i] < 0]
    reason = f"confidence {score:.2f} under {model.threshold:.2f}" + (": " + "; ".join(said) if said else "")
    return Confidence(score, "low", reason)


_SAY = {
    "heldout_auroc": lambda s: f"held-out AUROC {s.heldout_auroc:.2f}",
    "coverage": lambda s: f"it names {s.coverage:.0%} of what the feature fires on",
    "margin": lambda s: (
        f"a rival label fits the training examples {'better' if s.margin < 0 else 'about as well'} "
        f"({s.margin:+.3f} AUROC)"
    ),
    "stability": lambda s: f"it stays ahead of its rivals in {s.stability:.0%} of resamples of its examples",
    "token": lambda s: "a token label" if s.token else "a word label",
    "log_heldout": lambda s: f"only {s.n_heldout} held-out examples",
}


@torch.no_grad()
def signals(
    disc: Discriminator,
    examples: EncodedExamples,
    task: FeatureTask,
    targets: list[str],
    activations: np.ndarray,
    label_ids: tuple[int, ...],
    rival_ids: tuple[tuple[int, ...], ...],
    heldout_auroc: float,
    token: TokenLabel | None,
    seed: int,
) -> Signals:
    """The signals of a feature's label: its searched label `label_ids` (allowed-vocabulary positions, one per slot)
    with its rivals, or, where `token` is given, the token label (its rival is the searched label).

    `targets` and `activations` are the chunk's rows (the task's indices point into them)."""
    train, train_active = task.train()
    rng = np.random.default_rng([seed, task.feature, 7])
    resamples = [_resample(train_active, rng) for _ in range(RESAMPLES)]
    keys = [token_key(t) for t in targets]
    active_rows = task.train_active
    total = float(activations[active_rows].sum()) or 1.0
    if token is not None:
        member = np.array([keys[row] in {token_key(s) for s in token.strings} for row in train], dtype=np.float64)
        searched = _train_scores(disc, examples, train, (label_ids,))[0]
        grid = np.stack([member, searched])  # the token label, then its rival
        coverage = token.share
    else:
        words = {token_key(disc.decode([int(disc.allowed_ids[i])])) for i in label_ids}
        neighbours = _nearest(disc, label_ids, NEIGHBOURS)
        rivals = tuple(dict.fromkeys(r for r in (*rival_ids, *neighbours) if r != label_ids))
        grid = _train_scores(disc, examples, train, (label_ids, *rivals))
        coverage = float(sum(activations[row] for row in active_rows if keys[row] in words)) / total
    fits = aurocs(grid, train_active)
    margin = float(fits[0] - np.nanmax(fits[1:])) if len(fits) > 1 else 0.0
    ahead = [aurocs(grid[:, rows], train_active[rows]) for rows in resamples]
    stability = float(np.mean([a[0] >= np.nanmax(a[1:]) for a in ahead])) if len(fits) > 1 else 1.0
    return Signals(
        heldout_auroc=heldout_auroc,
        n_heldout=len(task.heldout),
        coverage=coverage,
        margin=margin,
        stability=stability,
        token=token is not None,
    )


def _resample(active: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row positions of a bootstrap resample that keeps each class's size (so every resample has both classes)."""
    on, off = np.flatnonzero(active), np.flatnonzero(~active)
    return np.concatenate([rng.choice(on, len(on)), rng.choice(off, len(off))])


def _train_scores(
    disc: Discriminator, examples: EncodedExamples, rows: np.ndarray, labels: tuple[tuple[int, ...], ...]
) -> np.ndarray:
    """Float[C N]: the discriminator's scores of each label (allowed-vocabulary positions per slot) on `rows`."""
    ids = torch.tensor(labels, device=disc.device)[None]  # [1 C L]
    return disc.score_discrete(examples, rows, ids)[0]


def _nearest(disc: Discriminator, label_ids: tuple[int, ...], k: int) -> list[tuple[int, ...]]:
    """The labels made by setting one slot to one of that slot's k nearest tokens (cosine of label embeddings)."""
    embeddings = disc.label_embeddings
    norms = embeddings.norm(dim=-1).clamp_min(1e-12)
    out = []
    for slot, position in enumerate(label_ids):
        cosine = (embeddings @ embeddings[position]) / (norms * norms[position])
        cosine[position] = -math.inf
        for token in cosine.topk(min(k, len(cosine) - 1)).indices.tolist():
            out.append(tuple(token if i == slot else p for i, p in enumerate(label_ids)))
    return out


def as_dict(signals: Signals) -> dict[str, float]:
    """The signals as plain numbers (benchmarks record them beside the truth)."""
    return {key: float(value) for key, value in asdict(signals).items()}
