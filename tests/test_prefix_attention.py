"""labeler/discriminators/prefix_attention.py: restarts that share one cached prefix, under a sliding window."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_gemma2
from test_causal_lm import CONTEXTS, TARGETS, full_forward_logits, make_disc
from transformers import Gemma2ForCausalLM, PreTrainedTokenizerFast

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator


def gemma2_with_window(tokenizer: PreTrainedTokenizerFast, window: int) -> CausalLMDiscriminator:
    """conftest's tiny Gemma-2 in float64, with its sliding window set to `window` tokens."""
    config = tiny_gemma2(len(tokenizer)).config
    config.sliding_window = window
    model = Gemma2ForCausalLM(config).double().eval()
    return CausalLMDiscriminator(model, tokenizer, CausalLMConfig(model="tiny"))


def test_packed_restarts_under_a_sliding_window_score_like_one_prompt_at_a_time(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    """Each suffix attends to its prefix and itself only, so the window bounds prefix + one suffix, not the
    packed [prefix; R suffixes]: 30 restarts pack far past Gemma-2's window of 128 and still score like each
    prompt run alone through the model's own sliding-window mask."""
    disc = make_disc("gemma2", tokenizer, dtype=torch.float64)
    encoded = disc.encode(CONTEXTS, TARGETS)
    n_restart, n_slot = 30, 2
    prefix_len, suffix_len = encoded.valid.shape[1], n_slot + len(disc.suffix_ids)
    assert prefix_len + suffix_len <= 128 < prefix_len + n_restart * suffix_len
    p = torch.randn(1, n_restart, n_slot, len(disc.allowed_ids), dtype=torch.float64).softmax(-1)
    label = p @ disc.label_embeddings
    scored = disc.score(encoded, torch.tensor([[0, 1, 2, 3]]), label)
    for r, n in itertools.product(range(n_restart), range(4)):
        logits = full_forward_logits(disc, CONTEXTS[n], TARGETS[n], label[0, r])
        want = logits[-1, disc.yes_id] - logits[-1, disc.no_id]
        torch.testing.assert_close(scored.score[0, r, n].float(), want, atol=1e-5, rtol=0)


def test_sliding_window_check_is_exact_at_its_boundary(tokenizer: PreTrainedTokenizerFast) -> None:
    """A window of exactly prefix + suffix tokens cuts nothing and scores like the full prompt; one token less
    would cut the prefix's first token from the answer's view, so scoring refuses rather than ignore it."""
    context, target = CONTEXTS[1], TARGETS[1]
    fits = gemma2_with_window(tokenizer, 1000)
    prefix, suffix = fits.prompt_ids(context, target)
    window = len(prefix) + 1 + len(suffix)  # one label slot
    label = fits.label_embeddings[4][None, None, None]  # [F R L d]
    example = torch.tensor([[0]])

    exact = gemma2_with_window(tokenizer, window)
    got = exact.score(exact.encode([context], [target]), example, label).score[0, 0, 0]
    logits = full_forward_logits(exact, context, target, label[0, 0])
    torch.testing.assert_close(got.float(), logits[-1, exact.yes_id] - logits[-1, exact.no_id], atol=1e-5, rtol=0)

    short = gemma2_with_window(tokenizer, window - 1)
    short.model.load_state_dict(exact.model.state_dict())
    cut = full_forward_logits(short, context, target, label[0, 0])
    assert not torch.allclose(cut[-1], logits[-1], atol=1e-5, rtol=0)  # the model's own mask drops a token
    with pytest.raises(ValueError, match=f"exceed the model's sliding window of {window - 1}"):
        short.score(short.encode([context], [target]), example, label)
