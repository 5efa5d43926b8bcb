"""labeler/discriminators/vocab.py: word lists and the vocabulary filter that restricts a label's tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import word_tokenizer

from labeler.discriminators.vocab import VocabFilter, allowed_token_ids, read_word_list


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
