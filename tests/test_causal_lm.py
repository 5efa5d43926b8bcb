"""The causal-LM discriminator against references: full forwards, discrete prompts, finite differences."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import WORDS, tiny_gemma2, tiny_gpt2, tiny_llama, word_tokenizer
from transformers import PreTrainedModel, PreTrainedTokenizerFast
from transformers.cache_utils import Cache, DynamicCache
from transformers.utils import ModelOutput

from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator, cache_argument, returned_cache
from labeler.discriminators.vocab import VocabFilter
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.loss import objective

CONTEXTS = ["the dog ran near the cat", "a red apple", "the big hammer saw a small green bird today", "a cow"]
TARGETS = ["dog", "apple", "bird", "cow"]
BUILDERS: dict[str, Callable[..., PreTrainedModel]] = {"gpt2": tiny_gpt2, "llama": tiny_llama, "gemma2": tiny_gemma2}


def make_disc(
    builder: str, tokenizer: PreTrainedTokenizerFast, dtype: torch.dtype = torch.float32, **config: object
) -> CausalLMDiscriminator:
    model = BUILDERS[builder](len(tokenizer), dtype)
    return CausalLMDiscriminator(model, tokenizer, CausalLMConfig(model="tiny", **config))  # type: ignore[arg-type]


def full_forward_logits(disc: CausalLMDiscriminator, context: str, target: str, label: torch.Tensor) -> torch.Tensor:
    """Logits of the whole prompt run from scratch (no cache, no padding), label given as L embeddings."""
    prefix, suffix = disc.prompt_ids(context, target)
    embed = disc.model.get_input_embeddings()
    inputs = torch.cat([embed(torch.tensor(prefix)), label.to(embed.weight.dtype), embed(torch.tensor(suffix))])
    return disc.model(inputs_embeds=inputs[None]).logits[0].float()


@pytest.mark.parametrize("builder", ["gpt2", "llama", "gemma2"])
def test_cached_suffix_matches_full_forward(builder: str, tokenizer: PreTrainedTokenizerFast) -> None:
    disc = make_disc(builder, tokenizer)
    encoded = disc.encode(CONTEXTS, TARGETS)  # prefixes of different lengths: left padding is exercised
    n_slot, vocab = 2, len(disc.allowed_ids)
    p = torch.randn(2, 3, n_slot, vocab).softmax(-1)  # [F R L V]
    label = p @ disc.label_embeddings
    example = torch.tensor([[0, 1, 2, 3], [2, 2, 3, 0]])  # features share some examples and repeat one
    scored = disc.score(encoded, example, label)
    for f, r, n in itertools.product(range(2), range(3), range(4)):
        context, target = CONTEXTS[example[f, n]], TARGETS[example[f, n]]
        logits = full_forward_logits(disc, context, target, label[f, r])
        prefix_len = len(disc.prompt_ids(context, target)[0])
        want = logits[-1, disc.yes_id] - logits[-1, disc.no_id]
        torch.testing.assert_close(scored.score[f, r, n], want, atol=1e-4, rtol=0)
        answer = logits[-1].log_softmax(-1)
        torch.testing.assert_close(scored.answer_nll[f, r, n, 1], -answer[disc.yes_id], atol=1e-4, rtol=0)
        # The KL references: q at slot 1 comes from the prefix, q at slot 2 from the first label position.
        for slot in range(n_slot):
            q = logits[prefix_len - 1 + slot, disc.allowed_ids].log_softmax(-1)
            got = scored.reference_logprobs[slot][f, 0 if slot == 0 else r, n]
            torch.testing.assert_close(got, q, atol=1e-4, rtol=0)


@pytest.mark.parametrize("builder", ["gpt2", "llama", "gemma2"])
def test_one_hot_label_scores_like_the_discrete_prompt(builder: str, tokenizer: PreTrainedTokenizerFast) -> None:
    disc = make_disc(builder, tokenizer)
    encoded = disc.encode(CONTEXTS, TARGETS)
    positions = torch.tensor([0, 5, len(disc.allowed_ids) - 1])  # three labels, as positions in the allowed vocab
    one_hot = torch.nn.functional.one_hot(positions, len(disc.allowed_ids)).float()[None, :, None]  # [1 3 1 V]
    scored = disc.score(encoded, torch.tensor([[0, 1, 2, 3]]), one_hot @ disc.label_embeddings)
    for r, position in enumerate(positions.tolist()):
        token = int(disc.allowed_ids[position])
        for n, (context, target) in enumerate(zip(CONTEXTS, TARGETS, strict=True)):
            prefix, suffix = disc.prompt_ids(context, target)
            logits = disc.model(input_ids=torch.tensor([[*prefix, token, *suffix]])).logits[0, -1]
            want = logits[disc.yes_id] - logits[disc.no_id]
            torch.testing.assert_close(scored.score[0, r, n], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("readout", ["answer_ce", "logit_diff"])
def test_soft_label_gradient_matches_finite_differences(readout: str, tokenizer: PreTrainedTokenizerFast) -> None:
    # GPT-2 computes everything in float64 (Llama's RMSNorm drops to float32, too coarse for differences).
    disc = make_disc("gpt2", tokenizer, dtype=torch.float64, readout=readout)
    encoded = disc.encode(CONTEXTS, TARGETS)
    config = OptimiserConfig(label_tokens=2, restarts=2, c_kl=0.3, c_entropy=0.2)
    example = torch.tensor([[0, 1, 2, 3]])
    target = torch.tensor([[True, False, True, False]])
    logits = torch.randn(1, 2, 2, len(disc.allowed_ids), dtype=torch.float64, requires_grad=True)

    def total(v: torch.Tensor) -> torch.Tensor:
        return objective(disc, encoded, example, target, v, config)[0].sum()

    (grad,) = torch.autograd.grad(total(logits), logits)
    eps = 1e-6
    with torch.no_grad():
        for index in [(0, 0, 0, 0), (0, 1, 1, 3), (0, 0, 1, 7), (0, 1, 0, len(disc.allowed_ids) - 1)]:
            bumped = logits.clone()
            bumped[index] += eps
            up = total(bumped)
            bumped[index] -= 2 * eps
            down = total(bumped)
            numeric = (up - down) / (2 * eps)
            assert abs(float(numeric - grad[index])) < 1e-6 + 1e-4 * abs(float(numeric)), (index, numeric, grad[index])


def test_chat_template_prompt_splits_at_the_label(tokenizer: PreTrainedTokenizerFast) -> None:
    chat = word_tokenizer((*WORDS, "system", "user", "assistant"))
    chat.chat_template = (
        "{% for m in messages %}<bos> {{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}<bos> assistant : {% endif %}"
    )
    disc = make_disc("gpt2", chat, vocab=VocabFilter(min_chars=2))
    assert disc.use_chat
    prefix, suffix = disc.prompt_ids("a red apple", "apple")
    text = chat.decode(prefix + suffix)
    assert text.startswith("<bos> system :") and "concept" in chat.decode(prefix)
    assert chat.convert_ids_to_tokens(suffix) == ['"', "?", "<eos>", "<bos>", "assistant", ":", "Rating", ":"]
    # The one-hot check holds in chat format too.
    encoded = disc.encode(["a red apple"], ["apple"])
    token = int(disc.allowed_ids[3])
    label = disc.label_embeddings[3][None, None, None]
    got = disc.score(encoded, torch.tensor([[0]]), label).score[0, 0, 0]
    logits = disc.model(input_ids=torch.tensor([[*prefix, token, *suffix]])).logits[0, -1]
    torch.testing.assert_close(got, logits[disc.yes_id] - logits[disc.no_id], atol=1e-5, rtol=0)


def test_answer_tokens_must_be_single_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="yes_token 'dog cat' must be exactly one token"):
        make_disc("gpt2", tokenizer, yes_token="dog cat")


def test_model_folder_that_does_not_load(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="not found"):
        CausalLMDiscriminator.from_config(CausalLMConfig(model="/no/such/model"))
    empty = f"{tmp_path}"
    with pytest.raises(ValueError, match="cannot load a causal LM"):
        CausalLMDiscriminator.from_config(CausalLMConfig(model=empty))


def test_straight_through_scores_the_argmax_word_and_passes_the_soft_gradient(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    """With straight_through the answer loss is the discrete argmax label's, and the gradient is the soft
    objective's chain rule evaluated at the one-hot point: d loss / d v = J_softmax(v)^T (d answer / d p at
    one-hot), plus the entropy and KL terms' own gradients."""
    disc = make_disc("gpt2", tokenizer, dtype=torch.float64)
    encoded = disc.encode(CONTEXTS, TARGETS)
    example = torch.tensor([[0, 1, 2, 3]])
    target = torch.tensor([[True, False, True, False]])
    soft = OptimiserConfig(label_tokens=1, restarts=2, c_kl=0.3, c_entropy=0.2)
    straight = OptimiserConfig(label_tokens=1, restarts=2, c_kl=0.3, c_entropy=0.2, straight_through=True)
    logits = torch.randn(1, 2, 1, len(disc.allowed_ids), dtype=torch.float64, requires_grad=True)

    loss, terms, p = objective(disc, encoded, example, target, logits, straight)
    hard = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).double()
    # A soft label that is exactly the argmax word scores the same answers.
    reference = objective(disc, encoded, example, target, (hard * 1e4).requires_grad_(True), soft)[1]
    torch.testing.assert_close(terms[..., 0], reference[..., 0], atol=1e-9, rtol=0)

    (grad,) = torch.autograd.grad(loss.sum(), logits)
    at_hard = hard.clone().requires_grad_(True)
    scored = disc.score(encoded, example, at_hard @ disc.label_embeddings)
    answer = scored.answer_nll.gather(-1, target[:, None, :, None].expand(*scored.score.shape, 1).long()).mean(-2)
    (d_answer,) = torch.autograd.grad(answer.sum(), at_hard)
    probs = logits.softmax(-1).detach()
    through_softmax = probs * (d_answer - (d_answer * probs).sum(-1, keepdim=True))  # J_softmax^T d_answer
    others = logits.detach().clone().requires_grad_(True)
    _, other_terms, _ = objective(disc, encoded, example, target, others, soft)
    (d_others,) = torch.autograd.grad((0.3 * other_terms[..., 1] + 0.2 * other_terms[..., 2]).sum(), others)
    torch.testing.assert_close(grad, through_softmax + d_others, atol=1e-9, rtol=1e-6)


@dataclass
class _OutputBefore524(ModelOutput):
    """A model output as transformers before 5.24 returns it: the cache under `past_key_values`."""

    logits: torch.Tensor | None = None  # first, as in real outputs (ModelOutput reads a lone first field as items)
    past_key_values: Cache | None = None


@dataclass
class _OutputFrom524(ModelOutput):
    """A model output as transformers 5.24 on returns it: the cache under `cache`."""

    logits: torch.Tensor | None = None
    cache: Cache | None = None


def test_the_returned_cache_is_read_under_either_name_and_a_missing_one_is_named() -> None:
    cache, logits = DynamicCache(), torch.zeros(1, 1, 4)
    assert returned_cache(_OutputBefore524(logits=logits, past_key_values=cache)) is cache
    assert returned_cache(_OutputFrom524(logits=logits, cache=cache)) is cache
    with pytest.raises(RuntimeError, match=r"_OutputFrom524 returned no key/value cache.*use_cache=True"):
        returned_cache(_OutputFrom524(logits=logits))


@pytest.mark.parametrize("builder", ["gpt2", "llama", "gemma2"])
def test_a_returned_cache_handed_back_continues_the_sequence(builder: str, tokenizer: PreTrainedTokenizerFast) -> None:
    """With the installed transformers' own names (the device stack's and this project's pin, make
    test-device-stack): the prefix's cache, handed back, gives the logits of the whole sequence run at once."""
    model = BUILDERS[builder](len(tokenizer))
    ids = torch.tensor([tokenizer("the dog ran near the red cat").input_ids])
    whole = model(input_ids=ids).logits
    cache = returned_cache(model(input_ids=ids[:, :3], use_cache=True))
    assert cache.get_seq_length() == 3
    rest = model(input_ids=ids[:, 3:], use_cache=True, **cache_argument(model, cache)).logits
    torch.testing.assert_close(rest, whole[:, 3:], atol=1e-5, rtol=0)
