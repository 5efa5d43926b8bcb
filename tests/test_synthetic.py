"""The toy world: its tokenizer, its exemplars, and a tiny discriminator that learns its question."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import torch
import transformers

from labeler.discriminators.prompt import PromptTemplate
from labeler.toys.synthetic import (
    NO,
    YES,
    _hidden_after_shared_start,
    _loss_weights,
    answer_accuracy,
    build_tokenizer,
    default_world,
    feature_exemplars,
    make_texts,
    model_config,
    train_tiny_lm,
    training_prompts,
)


def test_world_words_are_distinct_lowercase_and_alphabetic() -> None:
    world = default_world()
    assert len(world.categories) == 5
    assert len(set(world.words)) == len(world.words)
    assert all(word.isalpha() and word.islower() for word in world.words)


def test_tokenizer_round_trips_a_prompt_and_splits_cleanly_at_the_label() -> None:
    world, template = default_world(), PromptTemplate()
    tokenizer = build_tokenizer(world, template)
    text, word, label = "the dog was near a red car today", "dog", "animal"
    prompt = template.render_plain(text, word, label)

    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.unk_token_id not in ids
    # Decoding gives back the prompt's words and punctuation marks, one per token.
    assert tokenizer.decode(ids, skip_special_tokens=True).split() == re.findall(r"\w+|[^\w\s]", prompt)
    for w in (word, label, "1", "0"):
        assert tokenizer.decode([tokenizer.convert_tokens_to_ids(w)]) == w

    # The prefix (everything before the label) and the suffix tokenize to the same ids in pieces as in one go.
    before, after = template.split_user(text, word)
    prefix, suffix = f"{template.system}\n\n{before}", f"{after}\n{template.assistant_prefix}"
    pieces = (
        tokenizer(prefix)["input_ids"]
        + tokenizer(label, add_special_tokens=False)["input_ids"]
        + tokenizer(suffix, add_special_tokens=False)["input_ids"]
    )
    assert pieces == ids


def test_every_generated_prompt_is_known_to_the_tokenizer(tmp_path: pathlib.Path) -> None:
    world, template = default_world(), PromptTemplate()
    tokenizer = build_tokenizer(world, template)
    prompts = training_prompts(world, template, 300, np.random.default_rng(0))
    assert {prompt[-1] for prompt in prompts if prompt.startswith(template.system)} == {"0", "1"}
    for ids in tokenizer(prompts)["input_ids"]:
        assert tokenizer.unk_token_id not in ids

    # Saved and loaded the ordinary way, it is the same tokenizer.
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(prompts[:20])["input_ids"] == tokenizer(prompts[:20])["input_ids"]


def test_texts_are_short_and_hold_member_words() -> None:
    world = default_world()
    members = set(world.members)
    for text in make_texts(world, 100, np.random.default_rng(1)):
        words = text.split(" ")
        assert 5 <= len(words) <= 9
        assert 1 <= sum(w in members for w in words) <= 3


def test_feature_exemplars_follow_the_contract() -> None:
    world = default_world()
    rows = feature_exemplars(world, 60, seed=0)
    assert all(set(row) == {"feature", "context", "target", "activation"} for row in rows)
    for k, members in enumerate(world.categories.values()):
        mine = [row for row in rows if row["feature"] == k]
        active = [row for row in mine if row["activation"] == 1.0]
        assert len(active) >= 10
        assert any(row["activation"] == 0.0 for row in mine)
        assert all((row["activation"] == 1.0) == (row["target"] in members) for row in mine)
        assert all(row["target"] in row["context"].split() for row in mine)


def test_running_the_shared_start_once_gives_the_full_passs_hidden_states_and_gradients() -> None:
    world, template = default_world(), PromptTemplate()
    tokenizer = build_tokenizer(world, template)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(model_config(tokenizer))
    rng = np.random.default_rng(0)
    texts = make_texts(world, 6, rng)
    prompts = [template.render_plain(t, t.split()[0], "animal") + (YES, NO)[i % 2] for i, t in enumerate(texts)]
    ids = tokenizer(prompts, padding=True, return_tensors="pt")["input_ids"]
    inputs, targets = ids[:, :-1], ids[:, 1:]
    _, after = template.split_user("", "")
    n_suffix = len(tokenizer(f"{after}\n{template.assistant_prefix}", add_special_tokens=False)["input_ids"])
    answers = torch.tensor(tokenizer.convert_tokens_to_ids([NO, YES]))
    weights, _ = _loss_weights(targets, tokenizer.pad_token_id, answers, n_suffix, 20.0, 5.0, all_tokens=False)
    mask, at = (inputs != tokenizer.pad_token_id).long(), weights > 0

    def hidden_and_grads(shared: bool) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        if shared:
            cut, hidden = _hidden_after_shared_start(model, inputs, mask, at)
            assert hidden.shape[1] == inputs.shape[1] - cut
        else:
            cut, hidden = 0, model.model(input_ids=inputs, attention_mask=mask).last_hidden_state
        picked = hidden[at[:, cut:]]
        model.lm_head(picked).logsumexp(-1).sum().backward()
        return cut, picked, [p.grad.clone() for p in model.parameters()]

    _, full, full_grads = hidden_and_grads(shared=False)
    cut, shared, shared_grads = hidden_and_grads(shared=True)
    # At least the system text is the same in every row: it ran once.
    assert cut >= len(tokenizer(template.system)["input_ids"])
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # Rows that differ from the first token after BOS on (a plain text among the questions) run but for BOS.
    plain = tokenizer([*prompts[:2], texts[0]], padding=True, return_tensors="pt")["input_ids"][:, :-1]
    no_loss = torch.zeros(plain.shape, dtype=torch.bool)
    start, hidden = _hidden_after_shared_start(model, plain, torch.ones_like(plain), no_loss)
    assert start == 1 and hidden.shape[1] == plain.shape[1] - 1


def test_training_is_deterministic_and_leaves_torch_seeding_alone(tmp_path: pathlib.Path) -> None:
    world = default_world()
    state = torch.random.get_rng_state()
    first = train_tiny_lm(world, tmp_path / "a", steps=3, seed=5)
    second = train_tiny_lm(world, tmp_path / "b", steps=3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    a = transformers.AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.slow
def test_tiny_lm_learns_the_question(trained_lm: pathlib.Path) -> None:
    # `trained_lm` (conftest.py) is `train_tiny_lm(default_world(), <tmp dir>, seed=0)`, shared by the session.
    world, template = default_world(), PromptTemplate()
    model = transformers.AutoModelForCausalLM.from_pretrained(trained_lm)
    tokenizer = transformers.AutoTokenizer.from_pretrained(trained_lm)
    assert answer_accuracy(model, tokenizer, world, template, n=500, seed=1234) >= 0.95
