"""Which tokens a label may be made of.

The soft label is a distribution over an allowed subset of the vocabulary. Restricting it to whole,
alphabetic words keeps labels readable and is part of the method's naturalness prior (with the KL term).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from labeler.errors import ConfigError, InputError


@dataclass(frozen=True)
class VocabFilter:
    """Which tokens may appear in a label."""

    alphabetic: bool = True
    """Keep only tokens whose text (without its leading space) is made of letters."""
    min_chars: int = 3
    """Shortest token text kept, in characters, without the leading space."""
    leading_space: Literal["any", "required", "forbidden"] = "any"
    """Whether a token must start a word (have a leading space), must not, or either."""
    exclude_special: bool = True
    """Drop the tokenizer's special tokens (bos, eos, pad, chat markers)."""
    words: frozenset[str] | None = None
    """If given, keep only tokens whose text, lower-cased, is one of these words (e.g. the category nouns of
    labeler/discriminators/wordnet.py): a prior that labels name kinds of things."""

    def __post_init__(self) -> None:
        if self.min_chars < 1:
            raise ConfigError(f"min_chars must be at least 1, got {self.min_chars}")

    def keeps(self, piece: str) -> bool:
        """Whether a decoded token text passes the filter."""
        word = piece.lstrip(" ")
        has_space = len(word) < len(piece)
        if self.leading_space == "required" and not has_space:
            return False
        if self.leading_space == "forbidden" and has_space:
            return False
        if len(word) < self.min_chars:
            return False
        if self.words is not None and word.lower() not in self.words:
            return False
        return word.isalpha() if self.alphabetic else bool(word.strip())


def allowed_token_ids(tokenizer: PreTrainedTokenizerBase, vocab_size: int, rule: VocabFilter) -> list[int]:
    """Ids in [0, vocab_size) that `rule` keeps, ascending. Raises if none are left."""
    special = set(tokenizer.all_special_ids) if rule.exclude_special else set()
    size = min(vocab_size, len(tokenizer))
    pieces = tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
    allowed = [i for i, piece in enumerate(pieces) if i not in special and rule.keeps(piece)]
    if not allowed:
        words = "" if rule.words is None else f" with a list of {len(rule.words)} words"
        raise ConfigError(
            f"the vocabulary filter (alphabetic={rule.alphabetic}, min_chars={rule.min_chars}, "
            f"leading_space={rule.leading_space}){words} leaves no token of this tokenizer; loosen it"
        )
    return allowed


def read_word_list(spec: str) -> frozenset[str]:
    """Words for `VocabFilter.words`: "category-nouns" (the packaged WordNet list) or a UTF-8 text file with one
    word per line (after the word, a tab and anything else is ignored; lines starting with # are comments)."""
    if spec == "category-nouns":
        from labeler.discriminators.wordnet import packaged_category_nouns

        return packaged_category_nouns()
    path = Path(spec)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the word list {path}: {err}") from err
    words = frozenset(line.split("\t", 1)[0].strip().lower() for line in lines if line.strip() and line[0] != "#")
    if not words:
        raise InputError(f"the word list {path} holds no words")
    return words
