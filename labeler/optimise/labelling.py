"""Label a chunk of features with one discriminator: split, encode, optimise, record.

This is the unit of work that the CLI runs locally and that distributed workers run per chunk. A
feature that cannot be labelled (its examples, a FeatureError, or device memory) becomes a record with a status
and a reason; it never takes the other features of its chunk down with it. Any other exception is a bug and
propagates.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from labeler.discriminators.base import Discriminator, EncodedExamples
from labeler.errors import ConfigError, FeatureError
from labeler.optimise.confidence import Confidence, Signals, calibration, judge, read_calibration, signals
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.engine import optimise
from labeler.optimise.exhaustive import exhaustive_search
from labeler.optimise.task import FeatureLabel, FeatureTask
from labeler.optimise.token_label import TokenLabel, token_key, token_label
from labeler.records.exemplars import FeatureExemplars, example_groups, unlabelable_reason
from labeler.records.labels import LabelKind, LabelRecord, TopToken


@dataclass(frozen=True)
class LabelConfig:
    """How features are prepared and batched for the optimiser."""

    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    heldout_fraction: float = 0.3
    """Share of each feature's active and of its inactive (context, target) pairs held out for scoring the final
    label; a repeated pair lies on one side only."""
    active_threshold: float = 0.0
    """An example is active when its activation exceeds this."""
    features_per_batch: int = 64
    """F: features optimised together in one batch."""
    baseline: Literal["none", "exhaustive"] = "none"
    """Also find the best single-token label by exhaustive search (held out) and record it as the baseline."""
    token_share: float | None = 0.6
    """A feature whose active training examples hold at least this share of their activation on at most 3 target
    strings gets a token label (`tokens: "a" / "an"`) instead of its searched label, unless that label is one of the
    strings or they are all words a label could be that fit the held-out examples worse (None: never)."""
    calibration: str | None = None
    """A confidence calibration file (benchmarks/confidence_fit.py writes one, for features whose right labels you
    know) used instead of the one shipped for the discriminator's kind."""
    unlabelable: Literal["skip", "error"] = "skip"
    """A feature with too few active or inactive examples: skip records it as `skipped` with the reason; error
    stops the run before any work, naming such features (this reads every feature's examples first)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.active_threshold):
            raise ConfigError(
                f"active_threshold must be a finite number, got {self.active_threshold}: an activation above it "
                "counts as active"
            )
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must lie strictly between 0 and 1, got {self.heldout_fraction}")
        if self.features_per_batch < 1:
            raise ConfigError(f"features_per_batch must be at least 1, got {self.features_per_batch}")
        if self.token_share is not None and not 0 < self.token_share <= 1:
            raise ConfigError(
                f"token_share must lie in (0, 1] (a share of the activation) or be null, got {self.token_share}"
            )


def split_examples(examples: FeatureExemplars, config: LabelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/held-out split: (train active, train inactive, held-out) indices into the feature's rows.

    What is split are the distinct (context, target) pairs, so that a repeated example never lies on both sides
    (which would score the label on examples it was trained on). A pair is active when any of its rows is;
    `heldout_fraction` of the active pairs and of the inactive pairs are held out, at least one of each on each
    side. Seeded by the run seed and feature id. Without repeats this is a split of the rows."""
    rng = np.random.default_rng([config.optimiser.seed, examples.feature, 0])
    groups = example_groups(examples)
    active = examples.activations > config.active_threshold
    group_active = np.bincount(groups, weights=active) > 0
    train_groups, heldout_groups = [], []
    for pool in (np.flatnonzero(group_active), np.flatnonzero(~group_active)):
        pool = rng.permutation(pool)
        n_heldout = min(max(1, round(len(pool) * config.heldout_fraction)), len(pool) - 1)
        train_groups.append(pool[n_heldout:])
        heldout_groups.append(pool[:n_heldout])
    heldout = np.flatnonzero(np.isin(groups, np.concatenate(heldout_groups)))
    # Training rows in the shuffled order of their groups (the optimiser samples from them in this order).
    rank = np.full(len(group_active), -1)
    order = np.concatenate(train_groups)
    rank[order] = np.arange(len(order))
    train = np.flatnonzero(rank[groups] >= 0)
    train = train[np.argsort(rank[groups[train]], kind="stable")]
    return train[active[train]], train[~active[train]], heldout


def label_chunk(
    disc: Discriminator,
    features: Sequence[FeatureExemplars],
    config: LabelConfig,
    on_step: Callable[[int, int], None] | None = None,
) -> list[LabelRecord]:
    """Label a chunk of features in one batch; records come back in the order of `features`.
    `on_step(step, live)`: the optimiser's progress (see engine.optimise)."""
    records: dict[int, LabelRecord] = {}
    runnable = []
    for examples in features:
        reason = unlabelable_reason(examples, config.active_threshold)
        if reason is None:
            runnable.append(examples)
        elif not np.any(examples.activations > config.active_threshold):
            records[examples.feature] = _record(examples, config, status="dead", error=f"never active: {reason}")
        else:
            records[examples.feature] = _record(examples, config, status="skipped", error=reason)
    if runnable:
        for record in _label_batch(disc, runnable, config, on_step):
            records[record.feature] = record
    return [records[examples.feature] for examples in features]


def _label_batch(
    disc: Discriminator,
    features: Sequence[FeatureExemplars],
    config: LabelConfig,
    on_step: Callable[[int, int], None] | None = None,
) -> list[LabelRecord]:
    """Optimise features together; if the batch breaks on a feature's data (FeatureError) or runs out of device
    memory, retry each alone so the failure stays with its feature. Any other exception is a bug and propagates."""
    start = time.perf_counter()
    try:
        contexts, targets, tasks = prepare_tasks(features, config)
        if config.optimiser.target_candidates:
            tasks = [with_target_ids(disc, task, targets, config.optimiser.target_candidates) for task in tasks]
        encoded = disc.encode(contexts, targets)
        labels = optimise(disc, encoded, tasks, config.optimiser, on_step)
        activations = np.concatenate([examples.activations for examples in features])
        assessed = [
            assess(disc, encoded, task, label, targets, activations, config)
            for task, label in zip(tasks, labels, strict=True)
        ]
        baselines = [_baseline(disc, encoded, task, config) for task in tasks]
    except (FeatureError, torch.OutOfMemoryError) as err:
        if len(features) == 1:
            return [_record(features[0], config, status="failed", error=f"{type(err).__name__}: {err}")]
        return [record for examples in features for record in _label_batch(disc, [examples], config)]
    seconds = (time.perf_counter() - start) / len(features)
    return [
        _labelled(examples, label, judged, baseline, disc, config, seconds)
        for examples, label, judged, baseline in zip(features, labels, assessed, baselines, strict=True)
    ]


@dataclass(frozen=True)
class Assessment:
    """A labelled feature's kind of label, its token label and its confidence."""

    kind: LabelKind
    token: TokenLabel
    signals: Signals
    confidence: Confidence


def assess(
    disc: Discriminator,
    encoded: EncodedExamples,
    task: FeatureTask,
    label: FeatureLabel,
    targets: Sequence[str],
    activations: np.ndarray,
    config: LabelConfig,
) -> Assessment | None:
    """Which label the feature gets (its searched label, or its token label where it fires on a few strings that the
    searched label is not one of) and how far to trust it; None for a feature the engine failed."""
    if label.status != "labelled":
        return None
    share = config.token_share if config.token_share is not None else math.inf
    token = token_label(targets, activations, task.train_active, task.heldout, task.heldout_active, min(share, 1.0))
    # A token label where the feature fires on a few strings and the searched label is none of them: always where a
    # label cannot say those strings (punctuation, word pieces), else only where they fit the held-out examples at
    # least as well as the searched label.
    keys = {token_key(s) for s in token.strings}
    sayable = keys <= {token_key(word) for word in _allowed_words(disc)}
    is_token = (
        token.share >= share
        and token_key(disc.decode(label.label_ids)) not in keys
        and (not sayable or token.heldout_auroc >= label.heldout_auroc)
    )
    positions = _positions(disc)
    label_ids = tuple(positions[i] for i in label.label_ids)
    rivals = tuple((t,) for t in task.target_ids) if len(label_ids) == 1 else ()
    found = signals(
        disc,
        encoded,
        task,
        list(targets),
        activations,
        label_ids,
        rivals,
        token.heldout_auroc if is_token else label.heldout_auroc,
        token if is_token else None,
        config.optimiser.seed,
    )
    model = read_calibration(config.calibration) if config.calibration else calibration(disc.kind)
    return Assessment("token" if is_token else "concept", token, found, judge(found, model))


def _baseline(
    disc: Discriminator, encoded: EncodedExamples, task: FeatureTask, config: LabelConfig
) -> dict[str, object]:
    """The baseline columns: the best single token by exhaustive held-out search, when the config asks for it."""
    if config.baseline == "none":
        return {}
    found = exhaustive_search(disc, encoded, task)
    return {
        "baseline_method": "exhaustive",
        "baseline_label": disc.decode([found.token_ids[0]]),
        "baseline_label_ids": (found.token_ids[0],),
        "baseline_auroc": found.aurocs[0],
    }


def prepare_tasks(
    features: Sequence[FeatureExemplars], config: LabelConfig
) -> tuple[list[str], list[str], list[FeatureTask]]:
    """All examples of the chunk in one list, and each feature's split as rows of it."""
    contexts: list[str] = []
    targets: list[str] = []
    tasks = []
    for examples in features:
        offset = len(contexts)
        contexts.extend(examples.contexts)
        targets.extend(examples.targets)
        train_active, train_inactive, heldout = split_examples(examples, config)
        tasks.append(
            FeatureTask(
                feature=examples.feature,
                train_active=train_active + offset,
                train_inactive=train_inactive + offset,
                heldout=heldout + offset,
                heldout_active=examples.activations[heldout] > config.active_threshold,
            )
        )
    return contexts, targets, tasks


def with_target_ids(disc: Discriminator, task: FeatureTask, targets: Sequence[str], k: int) -> FeatureTask:
    """The task with its `k` most frequent active training targets that are one allowed token (ties: first seen).

    A target is one token when it is, stripped, the text of an allowed token (else its lower case is)."""
    words = _allowed_words(disc)
    counts = Counter(targets[row].strip() for row in task.train_active)
    ids = []
    for word, _ in counts.most_common():
        position = words.get(word, words.get(word.lower()))
        if position is not None and position not in ids:
            ids.append(position)
        if len(ids) == k:
            break
    return replace(task, target_ids=tuple(ids))


_WORDS: weakref.WeakKeyDictionary[Discriminator, dict[str, int]] = weakref.WeakKeyDictionary()
_POSITIONS: weakref.WeakKeyDictionary[Discriminator, dict[int, int]] = weakref.WeakKeyDictionary()


def _positions(disc: Discriminator) -> dict[int, int]:
    """Each allowed vocabulary id -> its position in `allowed_ids`."""
    if disc not in _POSITIONS:
        _POSITIONS[disc] = {token: position for position, token in enumerate(disc.allowed_ids.tolist())}
    return _POSITIONS[disc]


def _allowed_words(disc: Discriminator) -> dict[str, int]:
    """Each allowed token's stripped text -> its position in `allowed_ids` (the first, where texts repeat)."""
    if disc not in _WORDS:
        words: dict[str, int] = {}
        for position, token in enumerate(disc.allowed_ids.tolist()):
            words.setdefault(disc.decode([token]), position)
        _WORDS[disc] = words
    return _WORDS[disc]


def _labelled(
    examples: FeatureExemplars,
    label: FeatureLabel,
    judged: Assessment | None,
    baseline: dict[str, object],
    disc: Discriminator,
    config: LabelConfig,
    seconds: float,
) -> LabelRecord:
    if label.status != "labelled" or judged is None:
        return _record(examples, config, status="failed", error=label.error, device_seconds=seconds)
    top = tuple(
        tuple(TopToken(disc.decode([i]), i, p) for i, p in zip(ids, probs, strict=True))
        for ids, probs in zip(label.top_ids, label.top_probs, strict=True)
    )
    searched = disc.decode(label.label_ids)
    is_token = judged.kind == "token"
    return _record(
        examples,
        config,
        status="labelled",
        label=judged.token.label if is_token else searched,
        label_kind=judged.kind,
        search_label=searched,
        label_ids=label.label_ids,
        top_tokens=top,
        heldout_auroc=judged.token.heldout_auroc if is_token else label.heldout_auroc,
        heldout_balanced_accuracy=None if is_token else label.heldout_balanced_accuracy,
        heldout_f1=None if is_token else label.heldout_f1,
        restart_aurocs=label.restart_aurocs,
        token_label=judged.token.label,
        token_heldout_auroc=judged.token.heldout_auroc,
        confidence_score=judged.confidence.score,
        confidence=judged.confidence.flag,
        confidence_reason=judged.confidence.reason,
        coverage=judged.signals.coverage,
        margin=judged.signals.margin,
        stability=judged.signals.stability,
        loss_answer=label.loss_answer,
        loss_kl=label.loss_kl,
        loss_entropy=label.loss_entropy,
        steps=label.steps,
        steps_total=label.steps_total,
        converged=label.converged,
        device_seconds=seconds,
        **baseline,
    )


def _record(examples: FeatureExemplars, config: LabelConfig, **fields: object) -> LabelRecord:
    """A record with the fields every status shares filled in from the feature's examples."""
    n_active = int(np.sum(examples.activations > config.active_threshold))
    n_heldout = 0 if fields.get("status") in ("skipped", "dead") else len(split_examples(examples, config)[2])
    return LabelRecord(
        feature=examples.feature,
        n_examples=len(examples),
        n_active=n_active,
        n_heldout=n_heldout,
        restarts=config.optimiser.restarts,
        **fields,  # type: ignore[arg-type]
    )
