"""Which tokens a label may be made of.

The soft label is a distribution over an allowed subset of the vocabulary. Restricting it to whole,
alphabetic words keeps labels readable and is part of the method's naturalness prior (with the KL term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase


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

    def __post_init__(self) -> None:
        if self.min_chars < 1:
            raise ValueError(f"min_chars must be at least 1, got {self.min_chars}")

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
        return word.isalpha() if self.alphabetic else bool(word.strip())


def allowed_token_ids(tokenizer: PreTrainedTokenizerBase, vocab_size: int, rule: VocabFilter) -> list[int]:
    """Ids in [0, vocab_size) that `rule` keeps, ascending. Raises if none are left."""
    special = set(tokenizer.all_special_ids) if rule.exclude_special else set()
    size = min(vocab_size, len(tokenizer))
    pieces = tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
    allowed = [i for i, piece in enumerate(pieces) if i not in special and rule.keeps(piece)]
    if not allowed:
        raise ValueError(f"the vocabulary filter {rule} leaves no token of this tokenizer; loosen it")
    return allowed
