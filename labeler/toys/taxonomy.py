"""A testbed with known semantics at real vocabulary scale: a causal LM that learned WordNet's noun hierarchy.

The synthetic world (labeler/toys/synthetic.py) has five categories; a label search that works cannot be
told there from one that does not. This module builds a bigger world from the packaged taxonomy
(`labeler/data/taxonomy.tsv.gz`, made by `python -m labeler.discriminators.wordnet taxonomy`): nested
categories (dog within canine within carnivore within ... within animal) with their member words, and
other nouns that belong to none. It trains a tiny Llama (synthetic.py's trainer and tokenizer) on the
paper's question about those words in short sentences, and writes SAE-style features whose right label is
known: feature k fires on the members of category k, and its acceptable names are that category's lemmas.

    python -m labeler.toys.taxonomy build --scale small|bench --out DIR [--categories FILE] [--seed N]

writes DIR/lm (a Hugging Face folder), DIR/exemplars.jsonl (the exemplar contract), DIR/truth.json
(`{"<feature>": {"category": ..., "names": [...]}}`), DIR/categories.txt (every category the LM knows)
and DIR/accuracy.json (the LM's answer accuracy on held-out sentences). Two scales: `small` (about 50
categories, 500 member words; for CI) and `bench` (every category with at least 20 members, 4,000 member
words, more than 5,000 label candidates; trained once and cached under ~/.cache/labeler/taxonomy-bench). Measured
on this project's 2-core CPU machine (2026-12-02): small trains in 80 s and answers 91.6% of 2,000 held-out
questions right; bench in 62 min, 99.1%.
This module knows nothing about the optimiser; it only makes a discriminator and its exemplars.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

import numpy as np
import transformers

from labeler.discriminators.prompt import PromptTemplate
from labeler.toys.synthetic import NO, YES, answers_yes, model_config, train_prompt_lm, word_level_tokenizer

TAXONOMY_RESOURCE = "data/taxonomy.tsv.gz"
FILLERS = (
    "the", "a", "we", "they", "found", "near", "with", "today", "and", "on",
    "under", "by", "there", "was", "big", "old", "small", "new", "again", "here",
)  # fmt: skip
"""Neutral words that pad out sentences (the same as the synthetic world's)."""
BENCH_CACHE = pathlib.Path("~/.cache/labeler/taxonomy-bench")
TRAINING_RECIPE = 2
"""How the LM is trained (its questions, their sentences, the trainer). Raise it with any change to them: a cached LM
is kept under a key of this, the scale, the packaged taxonomy and the seed (`cache_key`), so that one trained another
way is never reused."""


class TaxonomyError(ValueError):
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
    often as any other. Drawn from a word alone, the bench's categories were asked about as yes in a median of 585
    of 1.9 million training questions, a tenth of them in under 210, the largest in 73,000; the LM then told some
    small ones' members from the words just outside them worse than another category's name did ("platform" fitted
    a feature of "tableware" better than "tableware").
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


def read_categories(path: pathlib.Path, known: Sequence[str]) -> list[str]:
    """The categories listed in `path` (one per line, # comments), each one of `known`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TaxonomyError(f"cannot read the categories file {path}: {err}") from err
    chosen = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not chosen:
        raise TaxonomyError(f"the categories file {path} lists no category; write one per line from categories.txt")
    unknown = [c for c in chosen if c not in set(known)]
    if unknown:
        raise TaxonomyError(
            f"the categories file {path} names {len(unknown)} categor{'y' if len(unknown) == 1 else 'ies'} the "
            f"testbed does not know: {unknown[:5]}; pick from categories.txt (written by build, or "
            "`python -m labeler.toys.taxonomy categories --scale ...`)"
        )
    duplicated = sorted({c for c in chosen if chosen.count(c) > 1})
    if duplicated:
        raise TaxonomyError(f"the categories file {path} lists {duplicated[:5]} more than once; list each once")
    return chosen


def default_features(world: Taxonomy, count: int) -> list[str]:
    """A fixed sample of `count` categories, with at least 10 members each."""
    pool = sorted(c for c, m in world.members.items() if len(m) >= 10)
    return sorted(np.random.default_rng(1).choice(pool, size=min(count, len(pool)), replace=False).tolist())


def feature_exemplars(world: Taxonomy, categories: Sequence[str], seed: int, per_side: int = 100) -> list[dict]:
    """Exemplar rows: feature k fires (1.0) on members of categories[k], not (0.0) on other words.

    Each feature gets `per_side` distinct active and inactive rows, one word per sentence: a category with
    fewer members gets several sentences per word, one with more a sample of them (so that no feature costs
    more to label, or to search exhaustively, than another: "artifact" has 2,439 members). Half the inactive
    words are words just outside it (`Taxonomy.just_outside`: its parent's other members), the rest come from the
    whole vocabulary.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for k, category in enumerate(categories):
        members = sorted(world.members[category])
        near = world.just_outside[category]
        outside = [w for w in world.every if w not in world.members[category]]
        if len(members) > per_side:
            members = sorted(str(w) for w in rng.choice(members, size=per_side, replace=False))
        active = [members[i % len(members)] for i in range(per_side)]
        inactive = [_pick(rng, near if near and i % 2 == 0 else outside) for i in range(per_side)]
        for words, activation in ((active, 1.0), (inactive, 0.0)):
            seen: set[str] = set()
            for word in words:
                context = sentence(word, world, rng)
                while context in seen:
                    context = sentence(word, world, rng)
                seen.add(context)
                rows.append({"feature": k, "context": context, "target": word, "activation": activation})
    return rows


def build(
    scale_name: str,
    out: pathlib.Path,
    *,
    categories_file: pathlib.Path | None = None,
    seed: int = 0,
    cache: pathlib.Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Write the testbed to `out` (see the module docstring); returns what accuracy.json holds.

    The LM is trained unless `cache` holds one of the same `cache_key` (same recipe, scale, taxonomy and seed); it is
    then copied.
    """
    if scale_name not in SCALES:
        raise TaxonomyError(f"unknown scale {scale_name!r}; use one of {sorted(SCALES)}")
    scale, template = SCALES[scale_name], PromptTemplate()
    world = load_taxonomy(scale)
    known = list(world.members)
    features = read_categories(categories_file, known) if categories_file else default_features(world, scale.features)
    out.mkdir(parents=True, exist_ok=True)
    lm = out / "lm"
    cached = cache / cache_key(scale, seed) if cache is not None else None
    if cached is not None and (cached / "accuracy.json").exists():
        shutil.copytree(cached / "lm", lm, dirs_exist_ok=True)
        report = json.loads((cached / "accuracy.json").read_text())
    else:
        tokenizer = word_level_tokenizer(world.words, template)
        config = model_config(tokenizer, hidden_size=scale.hidden_size, num_hidden_layers=scale.num_hidden_layers)
        started = time.perf_counter()
        train_prompt_lm(
            tokenizer, config, lambda n, rng: training_prompts(world, template, n, rng), lm,
            template=template, steps=scale.steps, batch_size=scale.batch_size, lr=scale.lr, all_tokens=False, seed=seed,
            log=log,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        model = transformers.AutoModelForCausalLM.from_pretrained(lm)
        accuracy = held_out_accuracy(model, tokenizer, world, template, n=2000, seed=seed)
        report = {
            "scale": scale_name,
            "seed": seed,
            "held_out_accuracy": accuracy,
            "held_out_questions": 2000,
            "train_seconds": round(seconds, 1),
            "categories": len(world.members),
            "member_words": len(world.member_words),
            "vocabulary": len(tokenizer),
        }
        if cached is not None:
            cached.mkdir(parents=True, exist_ok=True)
            shutil.copytree(lm, cached / "lm", dirs_exist_ok=True)
            (cached / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "categories.txt").write_text("".join(f"{c}\n" for c in known), encoding="utf-8")
    truth = {str(k): {"category": c, "names": list(world.lemmas[c])} for k, c in enumerate(features)}
    (out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    with open(out / "exemplars.jsonl", "w", encoding="utf-8") as f:
        for row in feature_exemplars(world, features, seed):
            f.write(json.dumps(row) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labeler.toys.taxonomy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="train (or reuse) the LM and write the testbed folder")
    make.add_argument("--scale", choices=sorted(SCALES), required=True)
    make.add_argument("--out", type=pathlib.Path, required=True)
    make.add_argument("--categories", type=pathlib.Path, help="features: categories from categories.txt, one a line")
    make.add_argument("--seed", type=int, default=0)
    listing = commands.add_parser("categories", help="print every category of a scale, one a line")
    listing.add_argument("--scale", choices=sorted(SCALES), required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "categories":
            print("\n".join(load_taxonomy(SCALES[args.scale]).members))
            return 0
        cache = BENCH_CACHE.expanduser() if args.scale == "bench" else None
        report = build(args.scale, args.out, categories_file=args.categories, seed=args.seed, cache=cache)
    except TaxonomyError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
