"""Category nouns from a WordNet data file, the shipped list, and word lists as a vocabulary filter."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import word_tokenizer

from labeler.discriminators.vocab import VocabFilter, allowed_token_ids, read_word_list
from labeler.discriminators.wordnet import category_nouns, packaged_category_nouns

# A hierarchy in wordnet-base's data.noun format (wndb(5WN)): offset, lexfile, type, word count (hex),
# words with lex ids, pointer count, pointers (symbol, offset, pos, source/target), gloss.
# animal > {dog > {puppy, pug}, cat}; "cat" also has an instance hyponym; a verb pointer is ignored.
DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton University
00000001 05 n 02 animal 0 beast 0 003 ~ 00000002 n 0000 ~ 00000003 n 0000 + 00000009 v 0101 | a living organism
00000002 05 n 01 dog 0 003 @ 00000001 n 0000 ~ 00000004 n 0000 ~ 00000005 n 0000 | a canine
00000003 05 n 01 cat 0 002 @ 00000001 n 0000 ~i 00000006 n 0000 | a feline
00000004 05 n 01 puppy 0 001 @ 00000002 n 0000 | a young dog
00000005 05 n 01 pug 0 001 @ 00000002 n 0000 | a small dog
00000006 18 n 01 Felix_the_Cat 0 001 @i 00000003 n 0000 | a cartoon cat
"""


def test_category_nouns_counts_kinds_below_each_word(tmp_path: Path) -> None:
    path = tmp_path / "data.noun"
    path.write_text(DATA_NOUN, encoding="latin-1")
    assert category_nouns(path, min_kinds=1) == {"animal": 5, "beast": 5, "dog": 2, "cat": 1}
    assert category_nouns(path, min_kinds=2) == {"animal": 5, "beast": 5, "dog": 2}


def test_category_nouns_rejects_a_file_without_synsets(tmp_path: Path) -> None:
    path = tmp_path / "data.noun"
    path.write_text("  1 only a license header\n")
    with pytest.raises(ValueError, match="no WordNet noun synsets"):
        category_nouns(path)


def test_packaged_list_holds_categories_not_members() -> None:
    words = packaged_category_nouns()
    assert {"animal", "mammal", "number", "language"} <= words
    assert not {"harpsichord", "palindrome", "numbers"} & words  # few kinds below it, or not a lemma
    assert 5000 < len(words) < 10000


def test_word_list_restricts_the_allowed_tokens(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    everything = allowed_token_ids(tokenizer, len(tokenizer), VocabFilter())
    listed = tmp_path / "words.txt"
    listed.write_text("# comment\nAnimal\t4016\ncow\nunicorn\n")
    kept = allowed_token_ids(tokenizer, len(tokenizer), VocabFilter(words=read_word_list(str(listed))))
    assert tokenizer.batch_decode([[i] for i in kept]) == ["animal", "cow"]
    assert set(kept) < set(everything)
    with pytest.raises(ValueError, match="leaves no token"):
        allowed_token_ids(tokenizer, len(tokenizer), VocabFilter(words=frozenset({"unicorn"})))


def test_read_word_list_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the word list"):
        read_word_list(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="holds no words"):
        read_word_list(str(empty))
