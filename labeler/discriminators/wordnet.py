"""WordNet (Debian's wordnet-base) as data for labeler: category nouns, and the demo corpus of glosses.

Category nouns: a label vocabulary of words that name kinds of things. A feature's label should
usually name a category ("animal", "number"), not one of its members. WordNet says how general a
noun is: the number of synsets below it in the hypernym tree (its kinds and instances).
`category_nouns` reads `data.noun` and keeps single words with at least `min_kinds` of them; the
packaged list `labeler/data/category_nouns.txt` was built with
`labeler wordnet category-nouns /usr/share/wordnet labeler/data/category_nouns.txt`.

Glosses: the demo corpus `labeler/data/wordnet_glosses.txt.gz` (40,000 random synsets, one per line:
its words, definition and examples), built with
`labeler wordnet glosses /usr/share/wordnet labeler/data/wordnet_glosses.txt.gz`.

Taxonomy: `labeler/data/taxonomy.tsv.gz`, the noun hierarchy under animal, plant, food and artifact as
categories with their member words (the testbed of labeler/toys/taxonomy.py), built with
`labeler wordnet taxonomy /usr/share/wordnet labeler/data/taxonomy.tsv.gz`.

All three are committed with WordNet's license (labeler/data/WORDNET_LICENSE), so nothing needs apt at run
time. This module knows nothing about tokenizers; labeler/discriminators/vocab.py turns a word list into allowed tokens.
"""

from __future__ import annotations

import gzip
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from labeler.errors import InputError

# Pointer symbols of WordNet's data files (wndb(5WN)): hyponym and instance hyponym.
_HYPONYM_POINTERS = ("~", "~i")
CATEGORY_NOUNS_RESOURCE = "data/category_nouns.txt"
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
GLOSS_SYNSETS = 40_000
"""Synsets kept in the demo corpus (a random sample, about 1.7 MB compressed); all 117,659 would be 4.8 MB."""


def category_nouns(data_noun: Path, min_kinds: int = 5) -> dict[str, int]:
    """Single-word nouns (lower case, letters only) mapped to the most kinds any of their senses has."""
    synset_words: dict[str, list[str]] = {}
    hyponyms: dict[str, list[str]] = defaultdict(list)
    for offset, words, pointers in _noun_synsets(data_noun):
        synset_words[offset] = words
        hyponyms[offset] = [target for symbol, target in pointers if symbol in _HYPONYM_POINTERS]
    descendants = _descendants(hyponyms)
    kinds: dict[str, int] = {}
    for offset, words in synset_words.items():
        count = len(descendants(offset))
        for word in words:
            word = word.split("(", 1)[0].lower()  # drop adjective markers like "(a)"
            if word.isalpha() and count >= min_kinds:
                kinds[word] = max(kinds.get(word, 0), count)
    return kinds


def _noun_synsets(data_noun: Path) -> Iterator[tuple[str, list[str], list[tuple[str, str]]]]:
    """Each synset of WordNet's data.noun: its offset, its words as written, and its (pointer symbol, target offset)
    pairs to other nouns. InputError when the file holds none."""
    found = False
    with open(data_noun, encoding="latin-1") as lines:
        for line in lines:
            if line.startswith("  "):  # the license header
                continue
            fields = line.split("|", 1)[0].split()
            offset, word_count = fields[0], int(fields[3], 16)
            words = [fields[4 + 2 * i] for i in range(word_count)]
            at = 4 + 2 * word_count
            pointers = []
            for i in range(int(fields[at])):
                symbol, target, pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
                if pos == "n":
                    pointers.append((symbol, target))
            found = True
            yield offset, words, pointers
    if not found:
        raise InputError(f"{data_noun} holds no WordNet noun synsets; pass wordnet-base's data.noun")


def _descendants(hyponyms: dict[str, list[str]]) -> Callable[[str], frozenset[str]]:
    """A function giving every synset below an offset, memoised across calls."""
    below: dict[str, frozenset[str]] = {}

    def descendants(offset: str) -> frozenset[str]:
        # Iterative post-order walk: the hierarchy is 20 levels deep at most but wide.
        stack = [offset]
        while stack:
            node = stack[-1]
            pending = [child for child in hyponyms[node] if child not in below]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            below[node] = frozenset(hyponyms[node]).union(*(below[child] for child in hyponyms[node]))
        return below[offset]

    return descendants


def packaged_category_nouns() -> frozenset[str]:
    """The category nouns shipped with labeler (WordNet 3.0 nouns with at least 5 kinds)."""
    text = resources.files("labeler").joinpath(CATEGORY_NOUNS_RESOURCE).read_text(encoding="utf-8")
    return frozenset(line.split("\t", 1)[0] for line in text.splitlines() if line and not line.startswith("#"))


def synset_lines(data_file: Path) -> list[str]:
    """One line per synset of a data.POS file: "word, word: definition; "example"", underscores as spaces."""
    lines = []
    for raw in data_file.read_text(encoding="utf-8").splitlines():
        if raw.startswith("  ") or "|" not in raw:  # the license header is indented
            continue
        head, gloss = raw.split("|", 1)
        fields = head.split()
        words = [fields[4 + 2 * i].replace("_", " ").split("(")[0] for i in range(int(fields[3], 16))]
        lines.append(f"{', '.join(dict.fromkeys(words))}: {gloss.strip()}")
    return lines


def write_glosses(wordnet_dir: Path, out: Path, keep: int = GLOSS_SYNSETS) -> int:
    """The demo corpus: `keep` random synsets of every part of speech, gzipped; returns the lines written."""
    lines = [line for part in PARTS_OF_SPEECH for line in synset_lines(wordnet_dir / f"data.{part}")]
    random.Random(0).shuffle(lines)  # mix parts of speech, so any prefix of the corpus is a fair sample
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\n".join(lines[:keep]) + "\n")
    return min(keep, len(lines))


def write_category_nouns(wordnet_dir: Path, out: Path) -> int:
    kinds = category_nouns(wordnet_dir / "data.noun")
    header = (
        "# Single-word WordNet 3.0 nouns with at least 5 kinds (synsets below them), and that count.\n"
        "# Built by `labeler wordnet category-nouns` from Debian's wordnet-base.\n"
        "# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Licensed under the\n"
        "# WordNet License (https://wordnet.princeton.edu/license-and-commercial-use), which permits\n"
        "# use, copying and distribution with this notice.\n"
    )
    out.write_text(header + "".join(f"{word}\t{count}\n" for word, count in sorted(kinds.items())), encoding="utf-8")
    return len(kinds)


TAXONOMY_ROOTS = ("00015388", "00017222", "07555863", "00021939")
"""Offsets in WordNet 3.0's data.noun of animal, plant, (solid) food and artifact: the taxonomy's top categories."""
TAXONOMY_MIN_MEMBERS = 10
"""A synset below a root becomes a category when at least this many member words lie below it."""
TAXONOMY_OTHER_NOUNS = 4000
"""Nouns outside the roots kept as the taxonomy's other words (a random sample)."""
_PLAIN_WORD = re.compile(r"^[a-z]{3,}$")


def _noun_graph(data_noun: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(offset -> its plain lemmas: lower-case letters only, at least 3; offset -> its hyponyms, not instances)."""
    lemmas: dict[str, list[str]] = {}
    hyponyms: dict[str, list[str]] = defaultdict(list)
    for offset, words, pointers in _noun_synsets(data_noun):
        # A capitalised lemma is a proper name, an underscored one a phrase: neither is a plain word.
        plain = (w.split("(", 1)[0] for w in words)
        lemmas[offset] = list(dict.fromkeys(w for w in plain if _PLAIN_WORD.match(w)))
        hyponyms[offset] = [target for symbol, target in pointers if symbol == "~"]
    return lemmas, hyponyms


def taxonomy_rows(data_noun: Path) -> tuple[list[tuple[str, list[str], str, list[str]]], list[str]]:
    """The categories below `TAXONOMY_ROOTS` as (name, its lemmas, parent category or "-", member words), and
    a sample of other nouns.

    A category is a synset whose first plain lemma (its name) no other category has taken (the most general
    synset wins) with at least `TAXONOMY_MIN_MEMBERS` words below it. Its member words are the plain lemmas
    of every synset below it, minus its own lemmas; a word with several senses is a member of each sense's
    categories. The parent is the smallest other category that holds its name and all its members ("-": none).
    """
    lemmas, hyponyms = _noun_graph(data_noun)
    descendants = _descendants(hyponyms)
    found: list[tuple[str, list[str], list[str]]] = []
    taken: set[str] = set()
    in_roots: set[str] = set()
    # Breadth-first from the roots, so that a name goes to its most general synset.
    queue = list(TAXONOMY_ROOTS)
    seen = set(queue)
    while queue:
        offset = queue.pop(0)
        in_roots.add(offset)
        names = lemmas[offset]
        members = sorted({w for d in descendants(offset) for w in lemmas[d]} - set(names))
        category = names[0] if names else None
        if category is not None and category not in taken and len(members) >= TAXONOMY_MIN_MEMBERS:
            taken.add(category)
            found.append((category, names, members))
        for child in hyponyms[offset]:
            if child not in seen:
                seen.add(child)
                queue.append(child)
    member_sets = {category: frozenset(members) for category, _, members in found}
    rows = []
    for category, names, members in found:
        holders = [
            other
            for other, held in member_sets.items()
            if other != category and category in held and member_sets[category] <= held
        ]
        rows.append((category, names, min(holders, key=lambda c: len(member_sets[c]), default="-"), members))
    inside = {w for _, names, _, members in rows for w in (*names, *members)}
    outside = sorted({w for o, words in lemmas.items() if o not in in_roots for w in words} - inside)
    random.Random(0).shuffle(outside)
    return rows, sorted(outside[:TAXONOMY_OTHER_NOUNS])


def write_taxonomy(wordnet_dir: Path, out: Path) -> int:
    rows, others = taxonomy_rows(wordnet_dir / "data.noun")
    header = (
        "# The WordNet 3.0 noun hierarchy under animal, plant, food and artifact, one category a line:\n"
        "# category <tab> its lemmas (comma-separated) <tab> parent category or - <tab> member words\n"
        "# (space-separated); the last line, starting with *, lists other nouns. Built by\n"
        "# `labeler wordnet taxonomy` from Debian's wordnet-base.\n"
        "# WordNet 3.0 Copyright 2006 by Princeton University. All rights\n"
        "# reserved. Licensed under the WordNet License (labeler/data/WORDNET_LICENSE), which permits use, copying\n"
        "# and distribution with this notice.\n"
    )
    lines = [f"{name}\t{','.join(names)}\t{parent}\t{' '.join(members)}\n" for name, names, parent, members in rows]
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(header + "".join(lines) + f"*\t-\t-\t{' '.join(others)}\n")
    return len(rows)
