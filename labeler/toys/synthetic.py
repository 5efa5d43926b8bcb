"""A toy world small enough to train its own discriminator in under a minute on a CPU.

The demo, the tests and the benchmarks need a discriminator whose right answers are known, and nothing
may be downloaded. This module makes one from scratch:

* a `SyntheticWorld` of five categories (animal, color, ...) with member words, filler words and
  distractor concepts;
* a word-level tokenizer over exactly the words the prompts use (`build_tokenizer`);
* short texts and the discriminator's question about them (`make_texts`, `training_prompts`);
* a tiny causal LM trained on those questions (`train_tiny_lm`), saved like any Hugging Face model so
  the rest of the package loads it through the ordinary code path, and a check that it learned the
  task (`answer_accuracy`);
* SAE-style exemplars whose feature k fires exactly on members of category k (`feature_exemplars`), so
  the right label for feature k is the k-th category word.
"""

from __future__ import annotations

import math
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from labeler.discriminators.causal_lm import cache_argument, returned_cache
from labeler.discriminators.prompt import PromptTemplate

UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<bos>", "<eos>"
YES, NO = "1", "0"


@dataclass(frozen=True)
class SyntheticWorld:
    """The vocabulary of the toy world; every word is lowercase and alphabetic."""

    categories: dict[str, tuple[str, ...]]
    """Category word -> its member words; no member belongs to two categories."""
    fillers: tuple[str, ...]
    """Neutral words that pad out texts; they belong to no category."""
    distractors: tuple[str, ...]
    """Words used as wrong concepts in training, so that only category words can earn a "1"."""

    def category_of(self, word: str) -> str | None:
        """The category `word` is a member of, or None."""
        for category, members in self.categories.items():
            if word in members:
                return category
        return None

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(word for members in self.categories.values() for word in members)

    @property
    def words(self) -> tuple[str, ...]:
        """Every word of the world: categories, members, fillers, distractors."""
        return (*self.categories, *self.members, *self.fillers, *self.distractors)


def default_world() -> SyntheticWorld:
    """Five categories of eight members each; no word is shared with another list or the prompt text."""
    return SyntheticWorld(
        categories={
            "animal": ("dog", "cat", "horse", "cow", "sheep", "goat", "rabbit", "mouse"),
            "color": ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"),
            "food": ("bread", "cheese", "apple", "rice", "soup", "cake", "banana", "egg"),
            "tool": ("hammer", "screwdriver", "wrench", "drill", "shovel", "chisel", "pliers", "axe"),
            "vehicle": ("car", "bus", "truck", "bicycle", "train", "boat", "tractor", "van"),
        },
        fillers=(
            "the", "a", "we", "they", "found", "near", "with", "today", "and", "on",
            "under", "by", "there", "was", "big", "old", "small", "new", "again", "here",
        ),
        distractors=("idea", "place", "sound", "thing", "time", "number", "shape", "person", "event", "feeling"),
    )  # fmt: skip


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Split on whitespace, then make every punctuation character its own token, so that a prompt split
    # at the label slot tokenizes to the same ids in pieces as in one go.
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])


def _template_words(template: PromptTemplate) -> list[str]:
    """The tokens of the template's fixed text (case kept), without the filled-in slots."""
    rendered = template.render_plain(text=" ", word=" ", label=" ")
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(rendered)]


def build_tokenizer(
    world: SyntheticWorld, template: PromptTemplate = PromptTemplate()
) -> transformers.PreTrainedTokenizerFast:
    """A case-sensitive word-level tokenizer that has a token for every word the module's prompts use.

    It adds `<bos>` at the start of each encoded string, as Llama-style tokenizers do; pass
    `add_special_tokens=False` for pieces that do not start a sequence.
    """
    return word_level_tokenizer(world.words, template)


def word_level_tokenizer(
    words: Sequence[str], template: PromptTemplate = PromptTemplate()
) -> transformers.PreTrainedTokenizerFast:
    """`build_tokenizer` for any word list (the template's words, "0", "1" and the special tokens come first)."""
    vocab: dict[str, int] = {}
    for token in (UNK, PAD, BOS, EOS, NO, YES, *_template_words(template), *words):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = _pre_tokenizer()
    # Word-level tokens carry no spacing information; joining them with spaces is as good as it gets,
    # and decoding a single word token gives back the word.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )


def make_texts(world: SyntheticWorld, n_texts: int, rng: np.random.Generator) -> list[str]:
    """`n_texts` texts of 5-9 words, each holding 1-3 member words among fillers.

    The first member word of text i comes from category i mod 5, so that every category appears about
    equally often even in a handful of texts (`feature_exemplars` relies on that).
    """
    names = list(world.categories)
    texts = []
    for i in range(n_texts):
        length = int(rng.integers(5, 10))
        n_members = int(rng.integers(1, 4))
        chosen = [names[i % len(names)], *rng.choice(names, size=n_members - 1)]
        members = [str(rng.choice(world.categories[c])) for c in chosen]
        words = [str(w) for w in rng.choice(world.fillers, size=length - n_members)]
        for member in members:
            words.insert(int(rng.integers(0, len(words) + 1)), member)
        texts.append(" ".join(words))
    return texts


def _question(world: SyntheticWorld, text: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """(word, concept, answer) for one text, drawn so that answers are about half "1", half "0".

    Positives need a member word asked about with its own category. Negatives are mostly that same
    member word with another category (the contrast the model must learn); the rest make sure that a
    filler word is never a member, and that a concept which is not a category word never earns a "1".
    """
    words = text.split()
    members = [w for w in words if world.category_of(w) is not None]
    fillers = [w for w in words if world.category_of(w) is None] or words
    names = list(world.categories)
    word = str(rng.choice(members))
    own = world.category_of(word)
    assert own is not None  # make_texts puts at least one member word in every text
    draw = rng.random()
    if draw < 0.5:
        return word, own, YES
    if draw < 0.75:
        return word, str(rng.choice([c for c in names if c != own])), NO
    if draw < 0.8:
        return str(rng.choice(fillers)), str(rng.choice(names)), NO
    # ~20%: the concept is not a category word at all.
    pool = (world.distractors, world.members, world.fillers)[int(rng.integers(0, 3))]
    return str(rng.choice(words)), str(rng.choice(pool)), NO


def training_prompts(world: SyntheticWorld, template: PromptTemplate, n: int, rng: np.random.Generator) -> list[str]:
    """`n` training strings: ~80% answered questions (prompt + "1"/"0"), ~20% plain texts.

    The plain texts give the LM a next-token distribution over ordinary words, not only over prompts.
    """
    texts = make_texts(world, n, rng)
    out = []
    for text in texts:
        if rng.random() < 0.2:
            out.append(text)
            continue
        word, concept, answer = _question(world, text, rng)
        out.append(template.render_plain(text, word, concept) + answer)
    return out


def _eval_questions(world: SyntheticWorld, n: int, rng: np.random.Generator) -> list[tuple[str, str, str, bool]]:
    """(text, word, concept, is_member) with a category word as concept; half members, half not."""
    names = list(world.categories)
    questions = []
    for text in make_texts(world, n, rng):
        words = text.split()
        members = [w for w in words if world.category_of(w) is not None]
        word = str(rng.choice(members if rng.random() < 0.85 else words))
        own = world.category_of(word)
        use_own = own is not None and rng.random() < 0.5
        concept = own if use_own and own is not None else str(rng.choice([c for c in names if c != own]))
        questions.append((text, word, concept, concept == own))
    return questions


def model_config(
    tokenizer: transformers.PreTrainedTokenizerFast, hidden_size: int = 64, num_hidden_layers: int = 2
) -> transformers.LlamaConfig:
    """The tiny LM that learns the synthetic language (benchmarks time the same architecture)."""
    # A Llama rather than a GPT-2: the answer depends on two tokens at fixed distances from the end of the
    # prompt (the word and the label), which rotary position embeddings make easy to find; with learned
    # absolute positions the tiny model did not learn the task in the same time.
    return transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        # Larger than the usual 0.02: in a 64-wide model that is what breaks the initial plateau
        # (a model that does not yet know membership cannot tell which tokens matter) quickly and
        # reliably across seeds.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


class _seeded:
    """Seed torch's global generator for a block and put its previous state back afterwards."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.random.set_rng_state(self.state)


def _loss_weights(
    targets: torch.Tensor,
    pad_id: int,
    answer_ids: torch.Tensor,
    n_suffix: int,
    answer_weight: float,
    label_weight: float,
    all_tokens: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss weights for right-padded targets, and the index of each question's answer (-1: none).

    Every real token weighs 1 (0 unless `all_tokens`); a question's answer (its last token; plain texts never end
    in a digit) weighs `answer_weight`, and its label (just before the `n_suffix` tokens that end the prompt)
    `label_weight`.
    """
    real = targets != pad_id
    weights = real.float() if all_tokens else torch.zeros(targets.shape)
    rows = torch.arange(len(targets))
    last = real.sum(dim=1) - 1
    is_question = torch.isin(targets[rows, last], answer_ids)
    weights[rows[is_question], last[is_question]] = answer_weight
    weights[rows[is_question], last[is_question] - n_suffix - 1] = label_weight
    return weights, torch.where(is_question, last, -1)


def _hidden_after_shared_start(
    model: transformers.LlamaForCausalLM, inputs: torch.Tensor, mask: torch.Tensor, at: torch.Tensor
) -> tuple[int, torch.Tensor]:
    """(start, the last hidden states of right-padded `inputs` from column `start` on): the first column where rows
    differ or a loss is taken.

    The columns before it (the prompt's constant start: system text and question opening, 40 of a taxonomy
    prompt's ~70 tokens) are the same in every row; they run once, as one row, and their keys and values are
    repeated for the batch. The result equals the full pass's hidden states from that column on, and so do the
    gradients (the repeat sums them back into the one row).
    """
    same = (inputs == inputs[:1]).all(dim=0) & ~at.any(dim=0)
    start = int(same.long().cumprod(dim=0).sum())
    start = min(start, inputs.shape[1] - 1)
    if start == 0:
        return 0, model.model(input_ids=inputs, attention_mask=mask).last_hidden_state
    cache = returned_cache(model.model(input_ids=inputs[:1, :start], use_cache=True))
    cache.batch_repeat_interleave(len(inputs))
    rest = model.model(
        input_ids=inputs[:, start:], attention_mask=mask, use_cache=True, **cache_argument(model.model, cache)
    )
    return start, rest.last_hidden_state


def train_tiny_lm(
    world: SyntheticWorld,
    out_dir: pathlib.Path,
    *,
    template: PromptTemplate = PromptTemplate(),
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-3,
    answer_weight: float = 20.0,
    label_weight: float = 5.0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> pathlib.Path:
    """Train a tiny Llama from scratch on `training_prompts`; save model and tokenizer to `out_dir`.

    With the defaults the answer loss drops after 400-700 steps (every seed tried, 0-8, on one thread
    and on two); the rest of the 1000 steps anneal the learning rate. About 35 s on two idle CPU cores;
    much longer if another multi-threaded torch process shares them.
    """
    tokenizer = build_tokenizer(world, template)
    return train_prompt_lm(
        tokenizer,
        model_config(tokenizer),
        lambda n, rng: training_prompts(world, template, n, rng),
        out_dir,
        template=template,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        answer_weight=answer_weight,
        label_weight=label_weight,
        seed=seed,
        log=log,
    )


def train_prompt_lm(
    tokenizer: transformers.PreTrainedTokenizerFast,
    config: transformers.LlamaConfig,
    sample: Callable[[int, np.random.Generator], list[str]],
    out_dir: pathlib.Path,
    *,
    template: PromptTemplate = PromptTemplate(),
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-3,
    answer_weight: float = 20.0,
    label_weight: float = 5.0,
    all_tokens: bool = True,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> pathlib.Path:
    """Train a Llama from scratch on `sample(batch_size, rng)` each step; save model and tokenizer to `out_dir`.

    `sample` gives answered questions (prompt + "1"/"0", the label one token) and plain texts. The loss is
    the ordinary next-token loss over every token, with two tokens weighted up:
    * the answer, `answer_weight` times: it is one token in ~70, the rest mostly the constant system text;
    * the label, `label_weight` times: half the time the label is the word's own category, so
      predicting it teaches the model the word -> category lookup on its own, one piece at a time. The
      answer alone needs word and label together (each alone says nothing about it), and training on it
      alone sat on a plateau for a long and seed-dependent number of steps.
    With `all_tokens` False the loss is only that of the label and the answer: no logits are computed
    elsewhere, which with a vocabulary of thousands of words is most of a step's time, and the start that every
    row of a batch shares (the system text) runs once (`_hidden_after_shared_start`; 2.3 times faster a step for the
    taxonomy's bench scale, whose prompts share 40 of ~70 tokens).
    """
    answer_ids = torch.tensor(tokenizer.convert_tokens_to_ids([NO, YES]))
    _, after = template.split_user("", "")
    n_suffix = len(tokenizer(f"{after}\n{template.assistant_prefix}", add_special_tokens=False)["input_ids"])
    rng = np.random.default_rng(seed)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        # Linear warm-up, then cosine decay to zero; the decay is what gets the last points of accuracy.
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))

    with _seeded(seed):
        model = transformers.LlamaForCausalLM(config)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        started = time.perf_counter()
        for step in range(steps):
            ids = tokenizer(sample(batch_size, rng), padding=True, return_tensors="pt")["input_ids"]
            inputs, targets = ids[:, :-1], ids[:, 1:]
            weights, answer_at = _loss_weights(
                targets, tokenizer.pad_token_id, answer_ids, n_suffix, answer_weight, label_weight, all_tokens
            )
            mask = (inputs != tokenizer.pad_token_id).long()
            if all_tokens:
                logits = model(input_ids=inputs, attention_mask=mask).logits
                losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            else:
                at = weights > 0
                start, hidden = _hidden_after_shared_start(model, inputs, mask, at)
                picked = torch.nn.functional.cross_entropy(
                    model.lm_head(hidden[at[:, start:]]), targets[at], reduction="none"
                )
                losses = torch.zeros(targets.shape).masked_scatter(at, picked)
            loss = (losses * weights).sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            if log is not None and (step % 100 == 0 or step == steps - 1):
                questions = answer_at >= 0
                answer_loss = losses[questions, answer_at[questions]].mean().item()
                log(
                    f"step {step}/{steps}: loss {loss.item():.4f}, answer loss {answer_loss:.4f} "
                    f"({time.perf_counter() - started:.1f} s)"
                )
    model.eval()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@torch.no_grad()
def answer_accuracy(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    world: SyntheticWorld,
    template: PromptTemplate,
    n: int,
    seed: int,
) -> float:
    """Share of `n` fresh questions where logit("1") > logit("0") exactly when the word is a member.

    Every question has a category word as concept: the word's own category or another one (about half
    and half), and now and then a filler word as the word.
    """
    questions = _eval_questions(world, n, np.random.default_rng(seed))
    says_yes = answers_yes(model, tokenizer, template, [(text, word, concept) for text, word, concept, _ in questions])
    return sum(y == member for y, (*_, member) in zip(says_yes, questions, strict=True)) / n


@torch.no_grad()
def answers_yes(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    template: PromptTemplate,
    questions: Sequence[tuple[str, str, str]],
    batch_size: int = 64,
) -> list[bool]:
    """For each (text, word, concept): whether logit("1") > logit("0") after the prompt."""
    yes, no = tokenizer.convert_tokens_to_ids(YES), tokenizer.convert_tokens_to_ids(NO)
    was_training = model.training
    model.eval()
    out: list[bool] = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        encoded = tokenizer(
            [template.render_plain(text, word, concept) for text, word, concept in batch],
            padding=True,
            return_tensors="pt",
        ).to(model.device)
        logits = model(**encoded).logits
        last = encoded["attention_mask"].sum(dim=1) - 1  # right padding: the last real token
        final = logits[torch.arange(len(batch)), last]
        out.extend(bool(y) for y in (final[:, yes] > final[:, no]).cpu())
    model.train(was_training)
    return out


def feature_exemplars(world: SyntheticWorld, n_texts: int, seed: int) -> list[dict]:
    """Exemplar rows for one feature per category: feature k fires on members of the k-th category.

    One row per (feature, text, word): `{"feature", "context", "target", "activation"}` with activation
    1.0 where the word is a member of category k and 0.0 elsewhere. Every text holds a member word and
    the texts cycle through the categories, so with `n_texts >= 50` each feature has at least 10 active
    rows.
    """
    texts = make_texts(world, n_texts, np.random.default_rng(seed))
    rows = []
    for k, members in enumerate(world.categories.values()):
        for text in texts:
            for word in text.split():
                rows.append(
                    {"feature": k, "context": text, "target": word, "activation": 1.0 if word in members else 0.0}
                )
    return rows
