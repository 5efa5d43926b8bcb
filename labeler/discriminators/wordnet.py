"""WordNet (Debian's wordnet-base) as data for labeler: category nouns, and the demo corpus of glosses.

Category nouns: a label vocabulary of words that name kinds of things. A feature's label should
usually name a category ("animal", "number"), not one of its members. WordNet says how general a
noun is: the number of synsets below it in the hypernym tree (its kinds and instances).
`category_nouns` reads `data.noun` and keeps single words with at least `min_kinds` of them; the
packaged list `labeler/data/category_nouns.txt` was built with
`python -m labeler.discriminators.wordnet category-nouns /usr/share/wordnet labeler/data/category_nouns.txt`.

Glosses: the demo corpus `labeler/data/wordnet_glosses.txt.gz` (40,000 random synsets, one per line:
its words, definition and examples), built with
`python -m labeler.discriminators.wordnet glosses /usr/share/wordnet labeler/data/wordnet_glosses.txt.gz`.

Both are committed with WordNet's license (labeler/data/WORDNET_LICENSE), so nothing needs apt at run
time. This module knows nothing about tokenizers; labeler/discriminators/vocab.py turns a word list into allowed tokens.
"""

from __future__ import annotations

import gzip
import random
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

# Pointer symbols of WordNet's data files (wndb(5WN)): hyponym and instance hyponym.
_HYPONYM_POINTERS = ("~", "~i")
CATEGORY_NOUNS_RESOURCE = "data/category_nouns.txt"
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
GLOSS_SYNSETS = 40_000
"""Synsets kept in the demo corpus (a random sample, about 1.7 MB compressed); all 117,659 would be 4.8 MB."""


def category_nouns(data_noun: Path, min_kinds: int = 5) -> dict[str, int]:
    """Single-word nouns (lower case, letters only) mapped to the most kinds any of their senses has."""
    hyponyms: dict[str, list[str]] = defaultdict(list)
    synset_words: dict[str, list[str]] = {}
    with open(data_noun, encoding="latin-1") as lines:
        for line in lines:
            if line.startswith("  "):  # the license header
                continue
            fields = line.split("|", 1)[0].split()
            offset, word_count = fields[0], int(fields[3], 16)
            synset_words[offset] = [fields[4 + 2 * i] for i in range(word_count)]
            at = 4 + 2 * word_count
            for i in range(int(fields[at])):
                symbol, target, pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
                if symbol in _HYPONYM_POINTERS and pos == "n":
                    hyponyms[offset].append(target)
    if not synset_words:
        raise ValueError(f"{data_noun} holds no WordNet noun synsets; pass wordnet-base's data.noun")

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

    kinds: dict[str, int] = {}
    for offset, words in synset_words.items():
        count = len(descendants(offset))
        for word in words:
            word = word.split("(", 1)[0].lower()  # drop adjective markers like "(a)"
            if word.isalpha() and count >= min_kinds:
                kinds[word] = max(kinds.get(word, 0), count)
    return kinds


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
        "# Built by `python -m labeler.discriminators.wordnet category-nouns` from Debian's wordnet-base.\n"
        "# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Licensed under the\n"
        "# WordNet License (https://wordnet.princeton.edu/license-and-commercial-use), which permits\n"
        "# use, copying and distribution with this notice.\n"
    )
    out.write_text(header + "".join(f"{word}\t{count}\n" for word, count in sorted(kinds.items())), encoding="utf-8")
    return len(kinds)


def main(argv: list[str]) -> None:
    builders = {"category-nouns": write_category_nouns, "glosses": write_glosses}
    if len(argv) != 3 or argv[0] not in builders:
        raise SystemExit("usage: python -m labeler.discriminators.wordnet {category-nouns|glosses} WORDNET_DIR OUT")
    count = builders[argv[0]](Path(argv[1]), Path(argv[2]))
    print(f"{count} lines -> {argv[2]}")


if __name__ == "__main__":
    main(sys.argv[1:])
