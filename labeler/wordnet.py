"""Category nouns from WordNet's noun hierarchy: a label vocabulary of words that name kinds of things.

A feature's label should usually name a category ("animal", "number"), not one of its members. WordNet
says how general a noun is: the number of synsets below it in the hypernym tree (its kinds and
instances). `category_nouns` reads Debian's wordnet-base `data.noun` and keeps single words with at
least `min_kinds` of them; the packaged list `labeler/data/category_nouns.txt` was built with
`python -m labeler.wordnet /usr/share/wordnet/data.noun labeler/data/category_nouns.txt`. This module
knows nothing about tokenizers; labeler/vocab.py turns a word list into allowed tokens.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

# Pointer symbols of WordNet's data files (wndb(5WN)): hyponym and instance hyponym.
_HYPONYM_POINTERS = ("~", "~i")
CATEGORY_NOUNS_RESOURCE = "data/category_nouns.txt"


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


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m labeler.wordnet DATA_NOUN OUT_TXT")
    kinds = category_nouns(Path(argv[0]))
    header = (
        "# Single-word WordNet 3.0 nouns with at least 5 kinds (synsets below them), and that count.\n"
        "# Built by `python -m labeler.wordnet /usr/share/wordnet/data.noun` from Debian's wordnet-base.\n"
        "# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Licensed under the\n"
        "# WordNet License (https://wordnet.princeton.edu/license-and-commercial-use), which permits\n"
        "# use, copying and distribution with this notice.\n"
    )
    body = "".join(f"{word}\t{count}\n" for word, count in sorted(kinds.items()))
    Path(argv[1]).write_text(header + body, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
