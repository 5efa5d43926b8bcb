"""The optimiser against references, on a tiny LM trained in the session on a synthetic language."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.vocab import VocabFilter
from labeler.errors import FeatureError
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.exhaustive import exhaustive_search
from labeler.optimise.labelling import LabelConfig, label_chunk, prepare_tasks
from labeler.records.exemplars import FeatureExemplars

# The product defaults (4 restarts, up to 100 steps): with 3 restarts and 60 steps one feature of five stopped
# at a local optimum ("event", AUROC 0.97, against "tool", 1.0).
CONFIG = LabelConfig(optimiser=OptimiserConfig(seed=1))


@pytest.mark.slow
def test_batched_engine_gives_the_labels_of_the_one_feature_loop(
    disc: CausalLMDiscriminator, features: list[FeatureExemplars]
) -> None:
    together = label_chunk(disc, features, CONFIG)
    alone = [label_chunk(disc, [examples], CONFIG)[0] for examples in features]
    assert [r.label_ids for r in together] == [r.label_ids for r in alone]
    assert [r.steps for r in together] == [r.steps for r in alone]
    np.testing.assert_allclose([r.restart_aurocs for r in together], [r.restart_aurocs for r in alone], atol=1e-9)


@pytest.mark.slow
def test_optimiser_finds_the_exhaustive_optimum(disc: CausalLMDiscriminator, features: list[FeatureExemplars]) -> None:
    """Over the whole (small) vocabulary of the synthetic language, GD's label is exhaustive search's best token."""
    records = label_chunk(disc, features, CONFIG)
    contexts, targets, tasks = prepare_tasks(features, CONFIG)
    encoded = disc.encode(contexts, targets)
    assert len(disc.allowed_ids) > 50
    for record, task in zip(records, tasks, strict=True):
        search = exhaustive_search(disc, encoded, task)
        assert record.status == "labelled"
        assert record.label_ids == (search.token_ids[0],), (record.label, disc.decode(search.token_ids[:3]))
        assert record.heldout_auroc == pytest.approx(search.aurocs[0])


def test_a_feature_that_breaks_fails_alone(tokenizer: object) -> None:
    """A FeatureError inside the batch (here the discriminator refusing one feature's text) fails only that feature;
    a text longer than the model takes is cut (labeler/discriminators/causal_lm.py) and its feature labelled."""
    from conftest import tiny_gpt2, word_tokenizer

    class Refusing(CausalLMDiscriminator):
        def encode(self, contexts: Sequence[str], targets: Sequence[str]) -> Any:
            if any("refused" in context for context in contexts):
                raise FeatureError("this text is refused")
            return super().encode(contexts, targets)

    tok = word_tokenizer()
    disc = Refusing(tiny_gpt2(len(tok)), tok, CausalLMConfig(model="tiny"))
    texts = ("the dog ran", "a red apple", "the big hammer", "a cow")
    words = ("dog", "apple", "hammer", "cow")
    good = [FeatureExemplars(f, texts, words, np.array([1.0, 1.0, 0.0, 0.0])) for f in (0, 2)]
    bad = FeatureExemplars(1, (*texts[:3], "a refused cow"), words, np.array([1.0, 1.0, 0.0, 0.0]))
    config = LabelConfig(optimiser=replace(OptimiserConfig(), max_steps=3, examples_per_step=4), heldout_fraction=0.4)
    records = label_chunk(disc, [good[0], bad, good[1]], config)
    assert [r.feature for r in records] == [0, 1, 2]
    assert [r.status for r in records] == ["labelled", "failed", "labelled"]
    assert records[1].error and "FeatureError: this text is refused" in records[1].error
    assert records[1].label is None
    long_text = FeatureExemplars(3, (*texts[:3], " ".join(["the dog"] * 200)), words, np.array([1.0, 1.0, 0.0, 0.0]))
    assert [r.status for r in label_chunk(disc, [good[0], long_text], config)] == ["labelled", "labelled"]


def test_a_bug_in_the_labelling_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    """An IndexError from a bug is raised out of label_chunk (a traceback), not recorded as a failed feature."""
    from conftest import tiny_gpt2, word_tokenizer

    from labeler.optimise import labelling

    def broken(*args: object, **kwargs: object) -> object:
        raise IndexError("index 9 is out of bounds")

    monkeypatch.setattr(labelling, "optimise", broken)
    tok = word_tokenizer()
    disc = CausalLMDiscriminator(tiny_gpt2(len(tok)), tok, CausalLMConfig(model="tiny"))
    texts = ("the dog ran", "a red apple", "the big hammer", "a cow")
    features = [
        FeatureExemplars(f, texts, ("dog", "apple", "hammer", "cow"), np.array([1.0, 1.0, 0.0, 0.0])) for f in (0, 1)
    ]
    with pytest.raises(IndexError, match="out of bounds"):
        label_chunk(disc, features, LabelConfig(heldout_fraction=0.4))


def test_rescoring_candidates_are_each_restarts_argmax_and_single_slot_swaps() -> None:
    from labeler.optimise.pick import _candidates

    v = torch.tensor(
        [
            [[0.0, 3.0, 2.0, 1.0], [5.0, 0.0, 0.0, 4.0]],  # restart 0: argmax (1, 0); top-2 per slot (1, 2), (0, 3)
            [[0.0, 3.0, 2.0, 1.0], [0.0, 1.0, 9.0, 0.5]],  # restart 1: argmax (1, 2); top-2 per slot (1, 2), (2, 1)
        ]
    )
    labels, owner = _candidates(v.argmax(-1), v.topk(2, dim=-1).indices)
    got = {tuple(label): restart for label, restart in zip(labels.tolist(), owner.tolist(), strict=True)}
    assert got == {(1, 0): 0, (2, 0): 0, (1, 3): 0, (1, 2): 1, (2, 2): 1, (1, 1): 1}


def test_records_carry_f1_dead_features_and_the_exhaustive_baseline(tokenizer: object) -> None:
    """Status dead for a feature that never fires; with baseline=exhaustive, the best single token is recorded."""
    from conftest import tiny_gpt2, word_tokenizer

    tok = word_tokenizer()
    disc = CausalLMDiscriminator(tiny_gpt2(len(tok)), tok, CausalLMConfig(model="tiny"))
    texts = ("the dog ran", "a red apple", "the big hammer", "a cow")
    words = ("dog", "apple", "hammer", "cow")
    live = FeatureExemplars(0, texts, words, np.array([1.0, 1.0, 0.0, 0.0]))
    dead = FeatureExemplars(1, texts, words, np.zeros(4))
    config = LabelConfig(
        optimiser=replace(OptimiserConfig(), max_steps=3, examples_per_step=4),
        heldout_fraction=0.4,
        baseline="exhaustive",
        token_share=None,  # the searched label's own answers: a token label has no F1
    )
    records = label_chunk(disc, [live, dead], config)
    assert [r.status for r in records] == ["labelled", "dead"]
    assert records[1].error and records[1].error.startswith("never active") and records[1].baseline_label is None
    record = records[0]
    assert record.heldout_f1 is not None and 0.0 <= record.heldout_f1 <= 1.0
    contexts, targets, tasks = prepare_tasks([live], config)
    search = exhaustive_search(disc, disc.encode(contexts, targets), tasks[0])
    assert record.baseline_method == "exhaustive" and record.baseline_label_ids == (search.token_ids[0],)
    assert record.baseline_label == disc.decode([search.token_ids[0]])
    assert record.baseline_auroc == pytest.approx(search.aurocs[0])
    assert record.device_seconds > 0


def test_a_negative_seed_is_refused_when_configured() -> None:
    """numpy's seed sequences take no negative entropy: a negative run seed would crash every feature's split."""
    with pytest.raises(ValueError, match="seed must be at least 0, got -1"):
        OptimiserConfig(seed=-1)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("converge_patience", 0, "converge_patience must be at least 1, got 0"),
        ("lr", 0.0, r"lr must be positive, got 0\.0"),
        ("lr", -0.1, r"lr must be positive, got -0\.1"),
        ("init_std", 0.0, r"init_std must be positive, got 0\.0"),
        ("betas", (1.0, 0.999), r"betas must each lie in \[0, 1\), got \(1\.0, 0\.999\)"),
        ("betas", (0.9, -0.1), r"betas must each lie in \[0, 1\), got \(0\.9, -0\.1\)"),
        ("weight_decay", -0.01, r"weight_decay must be at least 0, got -0\.01"),
        ("c_kl", -0.1, r"c_kl must be at least 0, got -0\.1"),
        ("c_entropy", -0.2, r"c_entropy must be at least 0, got -0\.2"),
        *[
            (name, value, rf"{name} must be a finite number, got {value}")
            for name in ("lr", "c_kl", "c_entropy", "init_std", "weight_decay")
            for value in (math.inf, math.nan)
        ],
    ],
)
def test_optimiser_settings_out_of_range_are_refused(setting: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OptimiserConfig(**{setting: value})  # type: ignore[arg-type]


def test_top_tokens_are_as_many_as_the_allowed_vocabulary_has(tokenizer: object) -> None:
    """With 3 allowed tokens and top_k 5 the feature is labelled, its record holding all 3 tokens per slot."""
    from conftest import tiny_gpt2, word_tokenizer

    tok = word_tokenizer()
    vocab = VocabFilter(words=frozenset({"dog", "cat", "apple"}))
    disc = CausalLMDiscriminator(tiny_gpt2(len(tok)), tok, CausalLMConfig(model="tiny", vocab=vocab))
    assert len(disc.allowed_ids) == 3
    texts = ("the dog ran", "a red apple", "the big hammer", "a cow")
    words = ("dog", "apple", "hammer", "cow")
    feature = FeatureExemplars(0, texts, words, np.array([1.0, 1.0, 0.0, 0.0]))
    optimiser = OptimiserConfig(max_steps=3, examples_per_step=4, label_tokens=2, top_k=5)
    (record,) = label_chunk(disc, [feature], LabelConfig(optimiser=optimiser, heldout_fraction=0.4))
    assert record.status == "labelled", record.error
    assert record.top_tokens is not None and len(record.top_tokens) == 2
    for slot in record.top_tokens:
        assert sorted(t.token_id for t in slot) == sorted(disc.allowed_ids.tolist())
        assert sum(t.prob for t in slot) == pytest.approx(1.0)


def test_progress_is_reported_after_every_step_with_the_features_still_optimising(tokenizer: object) -> None:
    from conftest import tiny_gpt2, word_tokenizer

    tok = word_tokenizer()
    disc = CausalLMDiscriminator(tiny_gpt2(len(tok)), tok, CausalLMConfig(model="tiny"))
    texts = ("the dog ran", "a red apple", "the big hammer", "a cow")
    features = [
        FeatureExemplars(f, texts, ("dog", "apple", "hammer", "cow"), np.array([1.0, 1.0, 0.0, 0.0])) for f in (0, 1)
    ]
    config = LabelConfig(optimiser=replace(OptimiserConfig(), max_steps=3, examples_per_step=4), heldout_fraction=0.4)
    seen: list[tuple[int, int]] = []
    records = label_chunk(disc, features, config, on_step=lambda step, live: seen.append((step, live)))
    assert [r.status for r in records] == ["labelled", "labelled"]
    assert seen == [(1, 2), (2, 2), (3, 2)]
    assert [(r.steps, r.steps_total) for r in records] == [(3, 3 * 4)] * 2  # 4 restarts, none stopped early
