"""A testbed with known semantics at real vocabulary scale: a causal LM that learned WordNet's noun hierarchy.

The synthetic world (labeler/toys/synthetic.py) has five categories; a label search that works cannot be
told there from one that does not. This module builds a bigger world from the packaged taxonomy
(`labeler/data/taxonomy.tsv.gz`, made by `labeler wordnet taxonomy`): nested
categories (dog within canine within carnivore within ... within animal) with their member words, and
other nouns that belong to none. A tiny Llama (synthetic.py's trainer and tokenizer) learned the paper's
question about those words in short sentences; this module writes SAE-style features whose right label is known.

`build(scale, out)` (the command line: `labeler testbed build`) writes OUT/lm (a Hugging Face folder),
OUT/exemplars.jsonl (the exemplar contract), OUT/truth.json, OUT/categories.txt (every category the LM knows) and
OUT/accuracy.json (the LM's answer accuracy on held-out questions). Two scales: `small` (about 50 categories, 500
member words; for CI) and `bench` (every category with at least 20 members, 4,000 member words, more than 5,000
label candidates).

The LMs ship with the package: labeler/data/testbed/<scale>/ holds lm/, accuracy.json and manifest.json (the
sha256 of each file and the `cache_key` the LM was trained under). `build` copies the shipped LM, and checks its
checksums, when its cache_key is the one this code would train under; `build(..., retrain=True)` trains one instead
(minutes at small scale, more than an hour at bench scale on two CPU cores), whose figures differ from the shipped
LM's. `ship(testbed, scale, into)` writes a built testbed's LM as the shipped one.

The features are listed in a categories file, one a line (blank lines and `#` comments are skipped):

    dog                 concept: fires (1.0) on dog's members, not (0.0) on other words
    mix:dog+tableware   mixture of two unrelated categories (no shared category below a top one, no shared
                        member): fires on the members of either; naming either is right
    graded:hawk         graded: fires on hawk's members with an activation that grows with the word's typicality
                        (`typicality`: a fixed draw in [0, 1) per word), 0.2 + 0.8 * typicality; plus
                        `GRADED_NOISE` false positives (words just outside hawk at 0.02 to 0.12) and as many misses
                        (members at 0.0)
    none:7              no concept: fires on `NONE_WORDS` member words drawn at random with seed 7 from all
                        categories, and not on other member words drawn the same way; no category name is right

truth.json maps each feature to `{"kind": "concept"|"mixture"|"graded"|"none", "categories": [...],
"names": [...]}`: its categories (none for a no-concept feature) and its acceptable names (their lemmas; empty for
a no-concept feature). A mixture also has "names_by_category" (each category's lemmas), a graded feature
"false_positives" and "misses" (their counts), a no-concept feature "seed" and "words" (its active words).
This module knows nothing about the optimiser; it only makes a discriminator and its exemplars.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Literal

import numpy as np
import transformers

from labeler.discriminators.prompt import PromptTemplate
from labeler.errors import InputError
from labeler.toys.synthetic import NO, YES, answers_yes, model_config, train_prompt_lm, word_level_tokenizer

TAXONOMY_RESOURCE = "data/taxonomy.tsv.gz"
SHIPPED_RESOURCE = "data/testbed"
"""Where the shipped LMs lie in the package: SHIPPED_RESOURCE/<scale>/{lm/, accuracy.json, manifest.json}."""
MANIFEST = "manifest.json"
FILLERS = (
    "the", "a", "we", "they", "found", "near", "with", "today", "and", "on",
    "under", "by", "there", "was", "big", "old", "small", "new", "again", "here",
)  # fmt: skip
"""Neutral words that pad out sentences (the same as the synthetic world's)."""
TRAINING_RECIPE = 2
"""How the LM is trained (its questions, their sentences, the trainer). Raise it with any change to them: the shipped
LM is used only under a key of this, the scale, the packaged taxonomy and the seed (`cache_key`), so that one trained
another way is never taken for what this code trains."""
NONE_WORDS = 25
"""Distinct active words of a no-concept feature."""
GRADED_NOISE = 5
"""False positives, and misses, of a graded feature (of its 100 active and 100 inactive rows)."""
TESTBED_FILES = ("lm", "exemplars.jsonl", "truth.json", "categories.txt", "accuracy.json")
"""What `build` writes into its out folder."""


class TaxonomyError(InputError):
    """The testbed's input (scale, categories file) is wrong; the message says what to fix."""


@dataclass(frozen=True)
class Scale:
    """How much of the packaged taxonomy a testbed uses, and how long its LM trains."""

    min_members: int
    """Categories with fewer member words in the packaged file are left out."""
    root: str | None
    """Keep only this top category and those below it (None: all four)."""
    max_categories: int
    """At most this many categories, the most general first (file order)."""
    member_words: int
    """Member words kept (a fixed random sample); categories left with fewer than 5 of them are dropped."""
    other_words: int
    """Nouns of no category kept, as inactive words and wrong concepts."""
    features: int
    """Categories in the default feature sample."""
    steps: int
    hidden_size: int
    num_hidden_layers: int
    batch_size: int
    lr: float


SCALES = {
    "small": Scale(
        min_members=15, root="animal", max_categories=60, member_words=500, other_words=300, features=8,
        steps=3000, hidden_size=64, num_hidden_layers=2, batch_size=32, lr=2e-3,
    ),
    "bench": Scale(
        min_members=20, root=None, max_categories=1000, member_words=4000, other_words=4000, features=40,
        steps=30000, hidden_size=128, num_hidden_layers=3, batch_size=64, lr=1e-3,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Taxonomy:
    """Categories (name -> its lemmas, its member words) and other nouns; membership is transitive."""

    lemmas: dict[str, tuple[str, ...]]
    members: dict[str, frozenset[str]]
    parent: dict[str, str]
    others: tuple[str, ...]

    @cached_property
    def member_words(self) -> tuple[str, ...]:
        return tuple(sorted(set().union(*self.members.values())))

    @cached_property
    def every(self) -> tuple[str, ...]:
        """Member words and other nouns: every word a feature's example can be."""
        return (*self.member_words, *self.others)

    @cached_property
    def categories_of(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for category, members in self.members.items():
            for word in members:
                out.setdefault(word, []).append(category)
        return {word: tuple(cats) for word, cats in out.items()}

    @cached_property
    def near(self) -> dict[str, tuple[str, ...]]:
        """Category -> its siblings and children: the wrong concepts closest to its members."""
        children: dict[str, list[str]] = {}
        for category, parent in self.parent.items():
            children.setdefault(parent, []).append(category)
        return {
            c: tuple(x for x in (*children.get(self.parent[c], []), *children.get(c, [])) if x != c)
            for c in self.members
        }

    @cached_property
    def just_outside(self) -> dict[str, tuple[str, ...]]:
        """Category -> the words closest to it without being in it: the other members of its nearest ancestor that
        has any (its siblings' members and its parent's own). Examples of these are what tell the category's name
        from its parent's; without them a feature of "hawk" is fitted as well by "raptor"."""
        out = {}
        for category, members in self.members.items():
            ancestor, words = self.parent[category], frozenset[str]()
            while ancestor != "-" and not words:
                words, ancestor = self.members[ancestor] - members, self.parent[ancestor]
            out[category] = tuple(sorted(words))
        return out

    @cached_property
    def sorted_members(self) -> dict[str, tuple[str, ...]]:
        """Category -> its member words, sorted (to draw from)."""
        return {category: tuple(sorted(members)) for category, members in self.members.items()}

    @property
    def words(self) -> tuple[str, ...]:
        """Every word the LM must have a token for."""
        names = [name for names in self.lemmas.values() for name in names]
        return tuple(dict.fromkeys((*FILLERS, *names, *self.member_words, *self.others)))


def cache_key(scale: Scale, seed: int) -> str:
    """The folder name of a cached LM: the seed, and a digest of everything else that decides its weights."""
    taxonomy = hashlib.sha256(packaged_bytes()).hexdigest()
    recipe = json.dumps([TRAINING_RECIPE, dataclasses.asdict(scale), taxonomy, seed], sort_keys=True)
    return f"seed{seed}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def packaged_bytes() -> bytes:
    """The packaged taxonomy file, gzipped as shipped."""
    return resources.files("labeler").joinpath(TAXONOMY_RESOURCE).read_bytes()


def packaged_rows() -> tuple[list[tuple[str, tuple[str, ...], str, frozenset[str]]], tuple[str, ...]]:
    """The packaged taxonomy file: (category, lemmas, parent, members) rows, and the other nouns."""
    raw = packaged_bytes()
    rows = []
    others: tuple[str, ...] = ()
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, lemmas, parent, members = line.split("\t")
        if name == "*":
            others = tuple(members.split())
        else:
            rows.append((name, tuple(lemmas.split(",")), parent, frozenset(members.split())))
    return rows, others


def load_taxonomy(scale: Scale) -> Taxonomy:
    """The testbed's world at `scale`: a deterministic selection from the packaged file."""
    rows, others = packaged_rows()
    if scale.root is not None:
        root = next(members for name, _, _, members in rows if name == scale.root)
        rows = [row for row in rows if row[0] == scale.root or row[0] in root]
    rows = [row for row in rows if len(row[3]) >= scale.min_members][: scale.max_categories]
    rng = np.random.default_rng(0)
    pool = sorted(set().union(*(members for *_, members in rows)))
    kept = set(rng.choice(pool, size=min(scale.member_words, len(pool)), replace=False).tolist())
    members = {name: frozenset(m & kept) for name, _, _, m in rows}
    members = {name: m for name, m in members.items() if len(m) >= 5}
    names = set(members)
    # A category's lemmas that are also words of the world would make a name mean two things; drop them.
    taken = kept | set(others)
    lemmas = {
        name: tuple(x for x in lm if x == name or (x not in taken and x not in names))
        for name, lm, _, _ in rows
        if name in names
    }
    # The parent among the kept categories: the smallest that holds the category's name and members.
    full = {name: m for name, _, _, m in rows if name in names}
    parent = {
        name: min(
            (o for o in names if o != name and name in full[o] and m <= full[o]),
            key=lambda o: len(full[o]),
            default="-",
        )
        for name, m in full.items()
    }
    words_in = set().union(*members.values())
    spare = sorted(set(others) - words_in - names)
    other = tuple(sorted(rng.choice(spare, size=min(scale.other_words, len(spare)), replace=False).tolist()))
    return Taxonomy(lemmas=lemmas, members=members, parent=parent, others=other)


def _pick(rng: np.random.Generator, words: Sequence[str]) -> str:
    """One of `words`, uniformly (rng.choice would copy a long tuple into an array at every call)."""
    return str(words[int(rng.integers(0, len(words)))])


def sentence(word: str, world: Taxonomy, rng: np.random.Generator) -> str:
    """A 5-9 word sentence holding `word`, maybe one other word of the world, and fillers."""
    length = int(rng.integers(5, 10))
    words = [str(w) for w in rng.choice(FILLERS, size=length - 1)]
    if rng.random() < 0.5:
        pool = world.member_words if rng.random() < 0.7 else world.others
        words[int(rng.integers(0, len(words)))] = _pick(rng, pool)
    words.insert(int(rng.integers(0, len(words) + 1)), word)
    return " ".join(words)


def _question(world: Taxonomy, rng: np.random.Generator) -> tuple[str, str, str, bool]:
    """(text, word, concept, answer) with about half the answers yes.

    Half the questions start from a category drawn uniformly (`_category_question`), so that each is asked about as
    often as any other: drawn from a word alone, a small category is asked about far less often than a large one,
    and the LM then tells its members from the words just outside it worse than another category's name does.
    The other half start from a word, mostly a member word; the wrong concepts are mostly categories near one of its
    own (siblings, children), else any category, and now and then a word that is no category at all, so that only
    category names earn a "1".
    """
    if rng.random() < 0.5:
        return _category_question(world, rng)
    names = list(world.members)
    word = _pick(rng, world.member_words) if rng.random() < 0.9 else _pick(rng, world.others)
    own = world.categories_of.get(word, ())
    text = sentence(word, world, rng)
    draw = rng.random()
    if own and draw < 0.5:
        category = _pick(rng, own)
        return text, word, _pick(rng, world.lemmas[category]), True
    if draw < 0.92:
        near = [c for o in own for c in world.near[o] if c not in own]
        wrong = near if near and rng.random() < 0.6 else [c for c in names if c not in own]
        category = _pick(rng, wrong)
        return text, word, _pick(rng, world.lemmas[category]), False
    return text, word, _pick(rng, world.every), False


def _category_question(world: Taxonomy, rng: np.random.Generator) -> tuple[str, str, str, bool]:
    """A question about a category drawn uniformly: half the time about one of its members (yes), else about a word
    just outside it (`Taxonomy.just_outside`) or, 40% of those times or where there is none, any other word (no)."""
    category = _pick(rng, list(world.members))
    concept = _pick(rng, world.lemmas[category])
    if rng.random() < 0.5:
        word, answer = _pick(rng, world.sorted_members[category]), True
    else:
        near, answer = world.just_outside[category], False
        word = _pick(rng, near) if near and rng.random() < 0.6 else _pick(rng, world.every)
        while word in world.members[category]:
            word = _pick(rng, world.every)
    return sentence(word, world, rng), word, concept, answer


def training_prompts(world: Taxonomy, template: PromptTemplate, n: int, rng: np.random.Generator) -> list[str]:
    """`n` answered questions. No plain sentences: the LM is trained on the label and the answer only
    (`all_tokens=False`), so they would add nothing, and every prompt starting alike lets a step run that start once."""
    out = []
    for _ in range(n):
        text, word, concept, answer = _question(world, rng)
        out.append(template.render_plain(text, word, concept) + (YES if answer else NO))
    return out


def held_out_accuracy(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    world: Taxonomy,
    template: PromptTemplate,
    n: int,
    seed: int,
) -> float:
    """Share of `n` fresh (word, category) questions, in sentences drawn apart from training, answered right.

    The questions are drawn as in training (`_question`), keeping those whose concept is a category name.
    """
    rng = np.random.default_rng(10_000 + seed)
    questions: list[tuple[str, str, str, bool]] = []
    while len(questions) < n:
        text, word, concept, answer = _question(world, rng)
        if concept in world.members or any(concept in names for names in world.lemmas.values()):
            questions.append((text, word, concept, answer))
    says = answers_yes(model, tokenizer, template, [q[:3] for q in questions])
    return sum(y == q[3] for y, q in zip(says, questions, strict=True)) / n


Kind = Literal["concept", "mixture", "graded", "none"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of a testbed: its kind, its categories (none for a no-concept feature) and, for a no-concept
    feature, the seed that draws its words. `text` is its line in a categories file."""

    kind: Kind
    categories: tuple[str, ...]
    seed: int | None = None

    @property
    def text(self) -> str:
        if self.kind == "concept":
            return self.categories[0]
        if self.kind == "mixture":
            return "mix:" + "+".join(self.categories)
        if self.kind == "graded":
            return f"graded:{self.categories[0]}"
        return f"none:{self.seed}"


def concept(category: str) -> FeatureSpec:
    """The concept feature of `category`: fires on its members."""
    return FeatureSpec("concept", (category,))


def roots(world: Taxonomy) -> frozenset[str]:
    """The top categories (no parent among the kept ones)."""
    return frozenset(c for c, parent in world.parent.items() if parent == "-")


def ancestors(world: Taxonomy, category: str) -> tuple[str, ...]:
    """`category` and every kept category above it, innermost first."""
    chain = [category]
    while world.parent[chain[-1]] != "-":
        chain.append(world.parent[chain[-1]])
    return tuple(chain)


def unrelated_problem(world: Taxonomy, a: str, b: str) -> str | None:
    """Why `a` and `b` are not unrelated (None if they are): a shared category below the top ones, or a shared
    member word."""
    shared = [c for c in ancestors(world, a) if c in ancestors(world, b) and c not in roots(world)]
    if shared:
        return f"both are {shared[0]}s (a category below the top ones: {sorted(roots(world))})"
    common = world.members[a] & world.members[b]
    if common:
        return f"they share member words ({sorted(common)[:3]})"
    return None


def parse_feature(text: str, world: Taxonomy) -> FeatureSpec:
    """One line of a categories file (see the module docstring); TaxonomyError says what is wrong with it."""
    kind, sep, rest = text.partition(":")
    if not sep:
        kind, rest = "concept", text
    known = world.members

    def category(name: str) -> str:
        if name not in known:
            raise TaxonomyError(
                f"{name!r} is not a category the testbed knows; pick from categories.txt (written by build, or "
                "`labeler testbed categories --scale ...`)"
            )
        return name

    if kind == "concept":
        return concept(category(rest))
    if kind == "graded":
        return FeatureSpec("graded", (category(rest),))
    if kind == "mix":
        a, plus, b = rest.partition("+")
        if not plus or not a or not b or "+" in b:
            raise TaxonomyError(f"{text!r}: a mixture names two categories, as mix:<category>+<category>")
        if a == b:
            raise TaxonomyError(f"{text!r}: a mixture needs two different categories")
        problem = unrelated_problem(world, category(a), category(b))
        if problem is not None:
            raise TaxonomyError(f"{text!r}: a mixture needs two unrelated categories, but {problem}")
        return FeatureSpec("mixture", (a, b))
    if kind == "none":
        if not rest.isdigit():
            raise TaxonomyError(f"{text!r}: a no-concept feature is none:<seed>, the seed a whole number (none:7)")
        return FeatureSpec("none", (), int(rest))
    raise TaxonomyError(
        f"{text!r}: unknown feature kind {kind!r}; a line is a category, mix:<a>+<b>, graded:<category> or none:<seed>"
    )


def read_features(path: pathlib.Path, world: Taxonomy) -> list[FeatureSpec]:
    """The features listed in the categories file `path` (one a line, # comments; see the module docstring)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TaxonomyError(f"cannot read the categories file {path}: {err}") from err
    features: list[FeatureSpec] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text in seen:
            raise TaxonomyError(
                f"{path}, line {number}: {text!r} is listed already (line {seen[text]}); list each once"
            )
        seen[text] = number
        try:
            features.append(parse_feature(text, world))
        except TaxonomyError as err:
            raise TaxonomyError(f"{path}, line {number}: {err}") from None
    if not features:
        raise TaxonomyError(f"the categories file {path} lists no feature; write one category per line from "
                            "categories.txt")  # fmt: skip
    return features


def default_features(world: Taxonomy, count: int) -> list[str]:
    """A fixed sample of `count` categories, with at least 10 members each."""
    pool = sorted(c for c, m in world.members.items() if len(m) >= 10)
    return sorted(np.random.default_rng(1).choice(pool, size=min(count, len(pool)), replace=False).tolist())


def typicality(word: str) -> float:
    """How typical `word` is of its categories, for graded features: a fixed draw in [0, 1) per word (the first four
    bytes of its sha256), the same in every category and every build."""
    return int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:4], "big") / 2**32


def none_words(world: Taxonomy, seed: int, per_side: int = 100) -> tuple[list[str], list[str]]:
    """A no-concept feature's (active, inactive) words: `NONE_WORDS`, then `per_side` others, all distinct, drawn
    uniformly from the member words (of every category alike, so no category is more frequent among the active words
    than among the inactive, but by chance)."""
    pool = world.member_words
    drawn = np.random.default_rng(seed).choice(len(pool), size=NONE_WORDS + per_side, replace=False)
    words = [pool[int(i)] for i in drawn]
    return words[:NONE_WORDS], words[NONE_WORDS:]


def _sentences(
    world: Taxonomy, words: Sequence[str], rng: np.random.Generator, taken: frozenset[tuple[str, str]] = frozenset()
) -> list[str]:
    """One sentence per entry of `words`, all different (a word listed twice gets two), and no (sentence, word) pair
    of `taken` (the other side's rows: a pair is never both active and inactive)."""
    seen: set[str] = set()
    out = []
    for word in words:
        context = sentence(word, world, rng)
        while context in seen or (context, word) in taken:
            context = sentence(word, world, rng)
        seen.add(context)
        out.append(context)
    return out


def _sample_members(world: Taxonomy, category: str, n: int, rng: np.random.Generator) -> list[str]:
    """`n` member words of `category`: each of them in turn if it has at most `n`, else a sample of `n`."""
    members = sorted(world.members[category])
    if len(members) > n:
        members = sorted(str(w) for w in rng.choice(members, size=n, replace=False))
    return [members[i % len(members)] for i in range(n)]


def _inactive(world: Taxonomy, categories: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """`n` words in none of `categories`: every other one just outside one of them (`Taxonomy.just_outside`), the
    rest from the whole vocabulary."""
    inside = frozenset[str]().union(*(world.members[c] for c in categories))
    if len(categories) == 1:
        near: Sequence[str] = world.just_outside[categories[0]]
    else:
        near = sorted({w for c in categories for w in world.just_outside[c]} - inside)
    outside = [w for w in world.every if w not in inside]
    return [_pick(rng, near if near and i % 2 == 0 else outside) for i in range(n)]


def feature_rows(
    world: Taxonomy, k: int, feature: FeatureSpec, seed: int, rng: np.random.Generator, per_side: int = 100
) -> list[dict]:
    """Exemplar rows of feature `k`: `per_side` active and `per_side` inactive ones, one word per sentence.

    A concept feature draws from `rng` (shared by the concept features, in order); the other kinds from a generator
    of their own (seeded by `seed` and `k`), so that adding one changes no concept feature's rows.
    """
    if feature.kind == "concept":
        (category,) = feature.categories
        active = _sample_members(world, category, per_side, rng)
        inactive = _inactive(world, [category], per_side, rng)
        levels = [1.0] * per_side
    else:
        rng = np.random.default_rng([seed, k])
        if feature.kind == "mixture":
            a, b = feature.categories
            active = _sample_members(world, a, per_side // 2, rng) + _sample_members(
                world, b, per_side - per_side // 2, rng
            )
            inactive = _inactive(world, [a, b], per_side, rng)
            levels = [1.0] * per_side
        elif feature.kind == "graded":
            (category,) = feature.categories
            members = _sample_members(world, category, per_side - GRADED_NOISE, rng)
            near = world.just_outside[category] or tuple(w for w in world.every if w not in world.members[category])
            false_positives = [_pick(rng, near) for _ in range(GRADED_NOISE)]
            misses = [_pick(rng, world.sorted_members[category]) for _ in range(GRADED_NOISE)]
            active = members + false_positives
            levels = [0.2 + 0.8 * typicality(w) for w in members] + [
                0.02 + 0.1 * typicality(w) for w in false_positives
            ]
            inactive = _inactive(world, [category], per_side - GRADED_NOISE, rng) + misses
        else:
            assert feature.seed is not None
            words, others = none_words(world, feature.seed, per_side)
            active = [words[i % len(words)] for i in range(per_side)]
            inactive = others
            levels = [1.0] * per_side
    contexts = _sentences(world, active, rng)
    rows = [
        {"feature": k, "context": context, "target": word, "activation": activation}
        for context, word, activation in zip(contexts, active, levels, strict=True)
    ]
    taken = frozenset(zip(contexts, active, strict=True))
    rows += [
        {"feature": k, "context": context, "target": word, "activation": 0.0}
        for context, word in zip(_sentences(world, inactive, rng, taken), inactive, strict=True)
    ]
    return rows


def feature_exemplars(world: Taxonomy, features: Sequence[FeatureSpec], seed: int, per_side: int = 100) -> list[dict]:
    """Exemplar rows of every feature, feature k being features[k] (`feature_rows`).

    Each feature gets `per_side` active and inactive rows, distinct per side: a category with fewer members gets
    several sentences per word, one with more a sample of them (so that no feature costs more to label, or to search
    exhaustively, than another: "artifact" has 2,439 members). Half the inactive words are words just outside its
    categories (`Taxonomy.just_outside`: its parent's other members), the rest come from the whole vocabulary.
    """
    rng = np.random.default_rng(seed)
    return [row for k, feature in enumerate(features) for row in feature_rows(world, k, feature, seed, rng, per_side)]


def truth_of(world: Taxonomy, feature: FeatureSpec, per_side: int = 100) -> dict:
    """What truth.json says of `feature` (see the module docstring)."""
    names = [name for c in feature.categories for name in world.lemmas[c]]
    entry: dict = {"kind": feature.kind, "categories": list(feature.categories), "names": names}
    if feature.kind == "mixture":
        entry["names_by_category"] = {c: list(world.lemmas[c]) for c in feature.categories}
    elif feature.kind == "graded":
        entry |= {"false_positives": GRADED_NOISE, "misses": GRADED_NOISE}
    elif feature.kind == "none":
        assert feature.seed is not None
        entry |= {"seed": feature.seed, "words": none_words(world, feature.seed, per_side)[0]}
    return entry


def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_root() -> Traversable:
    """The package's folder of shipped LMs (a source checkout's or an installed package's)."""
    return resources.files("labeler").joinpath(SHIPPED_RESOURCE)


def shipped_manifest(scale_name: str, root: Traversable | None = None) -> dict | None:
    """The manifest of the LM shipped for `scale_name` (None if none ships)."""
    path = (root or shipped_root()).joinpath(scale_name, MANIFEST)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _check_shipped(scale_name: str, seed: int, root: Traversable) -> dict:
    """The shipped LM's manifest if it is what this code trains for `scale_name` and `seed`; else TaxonomyError."""
    manifest = shipped_manifest(scale_name, root)
    where = f"labeler/{SHIPPED_RESOURCE}/{scale_name}"
    if manifest is None:
        raise TaxonomyError(
            f"no {scale_name} LM ships with this copy of labeler ({where}/{MANIFEST} is missing); train one with "
            "--retrain"
        )
    expected = cache_key(SCALES[scale_name], seed)
    if manifest["cache_key"] != expected:
        if manifest["cache_key"] == cache_key(SCALES[scale_name], manifest["seed"]):
            reason = f"it was trained with seed {manifest['seed']}, not {seed}"
        else:
            reason = "its training recipe, scale settings or packaged taxonomy differ from this code's"
        raise TaxonomyError(
            f"the shipped {scale_name} LM ({where}, cache key {manifest['cache_key']}) is stale for this build "
            f"(which trains under {expected}): {reason}; train one with --retrain"
        )
    return manifest


def _copy_shipped(scale_name: str, manifest: dict, root: Traversable, out: pathlib.Path) -> None:
    """Copy the shipped LM and its accuracy report into `out`, then check every copy against the manifest's sha256;
    on a mismatch remove the copies and raise TaxonomyError."""
    source = root.joinpath(scale_name)
    for name in manifest["files"]:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.write_bytes(source.joinpath(*name.split("/")).read_bytes())
        except FileNotFoundError:
            target.write_bytes(b"")  # a missing file is reported with the mismatches below
    bad = [name for name, digest in manifest["files"].items() if sha256_file(out / name) != digest]
    if bad:
        shutil.rmtree(out / "lm", ignore_errors=True)
        (out / "accuracy.json").unlink(missing_ok=True)
        raise TaxonomyError(
            f"the shipped {scale_name} LM's {bad} are missing or do not match their sha256 in labeler/"
            f"{SHIPPED_RESOURCE}/{scale_name}/{MANIFEST}: the package was damaged or edited; reinstall labeler, or "
            "train one with --retrain"
        )


def ship(testbed: pathlib.Path, scale_name: str, into: pathlib.Path) -> pathlib.Path:
    """Make the LM of a built testbed folder (`testbed`/lm and accuracy.json) the shipped one of `scale_name`:
    replace `into`/<scale>/ with a copy and its manifest (each file's sha256, the cache key). Ship only an LM that
    this code trained (`build(..., retrain=True)`): the key recorded is the one this code trains under."""
    if scale_name not in SCALES:
        raise TaxonomyError(f"unknown scale {scale_name!r}; use one of {sorted(SCALES)}")
    try:
        report = json.loads((testbed / "accuracy.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise TaxonomyError(f"{testbed} is not a built testbed (accuracy.json: {err})") from None
    if report.get("scale") != scale_name:
        raise TaxonomyError(f"{testbed} holds a {report.get('scale')} testbed, not a {scale_name} one")
    key = cache_key(SCALES[scale_name], report["seed"])
    if report.get("cache_key", key) != key:
        raise TaxonomyError(
            f"{testbed}'s LM was trained under cache key {report['cache_key']}, and this code trains under {key}: "
            "retrain it with this code first"
        )
    lm_files = sorted(p for p in (testbed / "lm").iterdir() if p.is_file())
    if not any(p.name == "model.safetensors" for p in lm_files):
        raise TaxonomyError(f"{testbed}/lm holds no model.safetensors; build the testbed with --retrain")
    folder = into / scale_name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "lm").mkdir(parents=True)
    for path in lm_files:
        shutil.copyfile(path, folder / "lm" / path.name)
    shutil.copyfile(testbed / "accuracy.json", folder / "accuracy.json")
    names = ["accuracy.json", *(f"lm/{p.name}" for p in lm_files)]
    manifest = {
        "scale": scale_name,
        "seed": report["seed"],
        "training_recipe": TRAINING_RECIPE,
        "cache_key": key,
        "files": {name: sha256_file(folder / name) for name in names},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


def check_out(out: pathlib.Path) -> None:
    """Refuse an out folder that is not new or empty (TaxonomyError), so that a build overwrites nothing."""
    if out.exists() and not out.is_dir():
        raise TaxonomyError(f"--out {out} is a file; name a new folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        what = "a testbed" if set(held) & set(TESTBED_FILES) else "other files"
        raise TaxonomyError(f"{out} already holds {what} ({', '.join(held[:5])}); name a new or empty folder")


def train(scale_name: str, lm: pathlib.Path, seed: int, log: Callable[[str], None]) -> dict:
    """Train the LM of `scale_name` into `lm` as the current recipe does; returns its accuracy report."""
    scale, template = SCALES[scale_name], PromptTemplate()
    world = load_taxonomy(scale)
    tokenizer = word_level_tokenizer(world.words, template)
    config = model_config(tokenizer, hidden_size=scale.hidden_size, num_hidden_layers=scale.num_hidden_layers)
    started = time.perf_counter()
    train_prompt_lm(
        tokenizer, config, lambda n, rng: training_prompts(world, template, n, rng), lm,
        template=template, steps=scale.steps, batch_size=scale.batch_size, lr=scale.lr, all_tokens=False, seed=seed,
        log=log,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    log("measuring the LM's accuracy on 2,000 held-out questions")
    model = transformers.AutoModelForCausalLM.from_pretrained(lm)
    accuracy = held_out_accuracy(model, tokenizer, world, template, n=2000, seed=seed)
    return {
        "scale": scale_name,
        "seed": seed,
        "cache_key": cache_key(scale, seed),
        "held_out_accuracy": accuracy,
        "held_out_questions": 2000,
        "train_seconds": round(seconds, 1),
        "categories": len(world.members),
        "member_words": len(world.member_words),
        "vocabulary": len(tokenizer),
    }


def build(
    scale_name: str,
    out: pathlib.Path,
    *,
    categories_file: pathlib.Path | None = None,
    seed: int = 0,
    retrain: bool = False,
    shipped: Traversable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the testbed to `out` (a new or empty folder; see the module docstring); returns what accuracy.json holds.

    The LM is the shipped one (`shipped`: the package's, by default) when that was trained under this code's
    `cache_key` for the scale and seed, else TaxonomyError says to retrain; `retrain` trains one instead. Bad input
    (scale, categories file, out, a stale shipped LM) is refused before anything is written.
    """
    if scale_name not in SCALES:
        raise TaxonomyError(f"unknown scale {scale_name!r}; use one of {sorted(SCALES)}")
    world = load_taxonomy(SCALES[scale_name])
    if categories_file is not None:
        features = read_features(categories_file, world)
    else:
        features = [concept(c) for c in default_features(world, SCALES[scale_name].features)]
    check_out(out)
    root = shipped or shipped_root()
    manifest = None if retrain else _check_shipped(scale_name, seed, root)
    out.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        log(f"copying the shipped {scale_name} LM (cache key {manifest['cache_key']}) and checking its checksums")
        _copy_shipped(scale_name, manifest, root, out)
        report = json.loads((out / "accuracy.json").read_text(encoding="utf-8"))
    else:
        log(
            f"training a new {scale_name} LM (--retrain, {SCALES[scale_name].steps} steps): label-quality figures "
            f"measured on it will differ from those measured on the shipped LM (labeler/{SHIPPED_RESOURCE}/"
            f"{scale_name})"
        )
        report = train(scale_name, out / "lm", seed, log)
        (out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"writing {len(features)} features' exemplars and truth")
    (out / "categories.txt").write_text("".join(f"{c}\n" for c in world.members), encoding="utf-8")
    truth = {str(k): truth_of(world, feature) for k, feature in enumerate(features)}
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    with open(out / "exemplars.jsonl", "w", encoding="utf-8") as f:
        for row in feature_exemplars(world, features, seed):
            f.write(json.dumps(row) + "\n")
    return report
