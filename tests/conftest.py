"""Shared fixtures: seeded randomness and tiny in-process models (nothing is downloaded)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
from labeler.discriminators.prompt import PromptTemplate
from labeler.records.exemplars import FeatureExemplars, group_by_feature, validate_exemplars
from labeler.toys.synthetic import default_world, feature_exemplars

WORDS = [
    "animal",
    "dog",
    "cat",
    "horse",
    "cow",
    "bird",
    "fish",
    "color",
    "red",
    "blue",
    "green",
    "yellow",
    "food",
    "bread",
    "apple",
    "rice",
    "cheese",
    "tool",
    "hammer",
    "saw",
    "drill",
    "wrench",
    "the",
    "a",
    "saw",
    "near",
    "with",
    "today",
    "big",
    "small",
    "ran",
    "ate",
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def word_tokenizer(extra_words: list[str] | tuple[str, ...] = WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer holding the default template's words, digits and `extra_words`."""
    template = PromptTemplate()
    text = " ".join([template.system, template.user, template.assistant_prefix])
    pieces = [*re.findall(r"\w+|[^\w\s]", text), "0", "1", *list(extra_words)]
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<pad>", "<bos>", "<eos>", *dict.fromkeys(pieces)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    core.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def tiny_gpt2(vocab_size: int, dtype: torch.dtype = torch.float32) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).to(dtype).eval()


TINY_DIMS = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
"""The dimensions of the tiny Llama and Gemma-2 (four query heads sharing two kv heads)."""


def tiny_llama(vocab_size: int, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **TINY_DIMS)).to(dtype).eval()


def tiny_gemma2(vocab_size: int, dtype: torch.dtype = torch.float32) -> Gemma2ForCausalLM:
    """Gemma-2's attention: grouped kv heads, logit soft-capping, a sliding window on alternate layers."""
    gemma = dict(
        head_dim=8,
        query_pre_attn_scalar=8,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=30.0,
        sliding_window=128,
    )
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=vocab_size, **TINY_DIMS, **gemma)).to(dtype).eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


@pytest.fixture(scope="session")
def trained_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic world's tiny LM, trained once per test session (about a minute on two cores)."""
    from labeler.toys.synthetic import default_world, train_tiny_lm

    return train_tiny_lm(default_world(), tmp_path_factory.mktemp("trained-lm"), seed=0)


@pytest.fixture(scope="session")
def disc(trained_lm: Path) -> CausalLMDiscriminator:
    """The synthetic world's trained LM as a causal-LM discriminator, loaded once per session."""
    return CausalLMDiscriminator.from_config(CausalLMConfig(model=str(trained_lm)))


@pytest.fixture(scope="session")
def features() -> list[FeatureExemplars]:
    """The synthetic world's concept features, 60 examples a side each (seed 3)."""
    table = validate_exemplars(pa.Table.from_pylist(feature_exemplars(default_world(), 60, seed=3)))
    return list(group_by_feature(table))
