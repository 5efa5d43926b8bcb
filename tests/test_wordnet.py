"""Category nouns from a WordNet data file and the shipped list (word lists as a filter: test_vocab.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_the_wordnet_command_builds_a_file_and_refuses_a_folder_without_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from labeler.cli import main

    (tmp_path / "wn").mkdir()
    (tmp_path / "wn" / "data.noun").write_text(DATA_NOUN, encoding="latin-1")
    assert main(["wordnet", "category-nouns", str(tmp_path / "wn"), str(tmp_path / "nouns.txt")]) == 0
    assert [line.split("\t")[0] for line in (tmp_path / "nouns.txt").read_text().splitlines() if line[0] != "#"] == [
        "animal",
        "beast",
    ]
    assert main(["wordnet", "taxonomy", str(tmp_path / "none"), str(tmp_path / "t.gz")]) == 2
    assert "has no data.noun" in capsys.readouterr().err and not (tmp_path / "t.gz").exists()
