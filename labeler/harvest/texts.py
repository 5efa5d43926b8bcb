"""The texts of exemplar rows from the harvest's token windows: contexts, targets, and the repair of tokens that
hold only part of a character.

An example's context is the text of its own document only: the run of corpus-text tokens around it in its window,
cut at the separators, BOS and padding. Its target is the token's text or, where the token holds only part of a
character's bytes (byte-level BPE splits CJK characters and emoji), the smallest run of tokens around it that reads
as whole characters, reaching into the previous or next window (where the same document goes on) when the window's
edge cut the character. A character cut at either end of the context is dropped from it unless it is the target's
(then the context holds it whole too), and so are the WordPiece continuation pieces ("##ing") a window that starts
mid-word begins with, unless the target is one of them. A target is never "": one whose character has bytes
outside the harvest (the last document cut by `tokens`) keeps U+FFFD and is counted.

This module knows the tokenizer and the windows (token ids and valid masks, on disk); nothing of the model, the
SAE, the statistics or the output files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from tokenizers import decoders


class Texts:
    """The texts of exemplar rows, each decoded once per harvest: contexts, tokens' words, and the runs of tokens
    that complete a token's partial characters.

    Windows are consecutive pieces of one token stream (see `labeler.harvest.corpus.iter_windows`), so a character
    that a window's edge cut (byte-level BPE splits CJK characters and emoji over tokens) has its other bytes in the
    previous or next window, in the same document: a target is completed from there, never left empty. What cannot
    be completed is a character whose other bytes are not in the harvest at all (the last document cut by `tokens`):
    such a target keeps the token's U+FFFD, the standard mark of bytes that are not a whole character, and is
    counted in `unresolved` (the manifest's `unresolved_targets`), so it is explicit, never "" (an empty target is a
    word the discriminator cannot be asked about)."""

    longest_run = 7
    """Tokens in a run around a partial token at most: a character is at most 4 bytes and a token at least
    one, so completing the characters at either end of a token takes at most 3 tokens on each side."""
    borrowed = 3
    """Tokens taken at most from a neighbouring window to complete a character its edge cut."""

    def __init__(self, tokenizer: Any, window_ids: np.ndarray, packed_valid: np.ndarray, head: int) -> None:
        self.tokenizer = tokenizer
        self.window_ids = window_ids
        """Int32[window token], on disk."""
        self.packed_valid = packed_valid
        """UInt8[window byte], on disk: the windows' valid masks, 8 tokens a byte."""
        self.head = head
        """Tokens each window starts with before its text (BOS/CLS): 0 or 1."""
        self.prefix = _continuation_prefix(tokenizer)
        """WordPiece's mark of a piece that continues a word ("##"), or None."""
        self.unresolved = 0
        """Rows so far whose target holds U+FFFD (see the class docstring)."""
        self._contexts: dict[tuple[int, int, int, int, int], str] = {}
        self._tokens: dict[int, str] = {}
        self._runs: dict[tuple[int, int], tuple[str, int, int]] = {}

    def documents(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Int[window token] twice: where the run of corpus-text tokens (one document's text) holding each token
        starts and ends. A run is cut by separators, BOS and padding: the tokens that are not valid."""
        context_len = self.window_ids.shape[1]
        valid = self._valid(windows)
        position = np.arange(context_len)
        start = np.maximum.accumulate(np.where(valid, 0, position + 1), axis=1)  # after the last invalid at or before
        end = np.minimum.accumulate(np.where(valid, context_len, position)[:, ::-1], axis=1)[:, ::-1]
        return start, end

    def word_start(self, ids: np.ndarray, window_at: np.ndarray, position: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Per row: `start`, moved past the continuation pieces ("##ing") a window's text begins with when the window
        starts mid-word, unless the row's own token is one of them (its context then keeps them, less the mark).

        ids: Int[window token] of the rows' distinct windows; window_at: Int[row], the row's window in `ids`.
        Only a window's first text token can continue a word: a document never starts with a piece."""
        if self.prefix is None:
            return start
        text = ids[:, self.head :]
        token_ids, inverse = np.unique(text, return_inverse=True)
        pieces = np.array([self._is_piece(i) for i in token_ids.tolist()], dtype=bool)[inverse.reshape(text.shape)]
        lead = np.cumprod(pieces, axis=1).sum(1)[window_at]  # Int[row]: the pieces its window's text begins with
        skip = (start == self.head) & (position >= start + lead)
        return np.where(skip, start + lead, start)

    def contexts(
        self, window: np.ndarray, start: np.ndarray, end: np.ndarray, before: np.ndarray, after: np.ndarray
    ) -> pa.Array:
        """Per row: the text of tokens [start, end) of its window, with `before` tokens of the previous window and
        `after` of the next (those completing a target's character cut by the window's edge), without characters
        cut at either end. Each distinct span is decoded once; rows share its string through an Arrow take."""
        spans, row_span = np.unique(np.stack([window, start, end, before, after], axis=1), axis=0, return_inverse=True)
        keys = [(int(w), int(a), int(b), int(x), int(y)) for w, a, b, x, y in spans]
        new = [k for k in keys if k not in self._contexts]
        if new:
            runs = [self._span(*key) for key in new]
            decoded = self.tokenizer.batch_decode(runs, skip_special_tokens=True)
            for key, run, text in zip(new, runs, decoded, strict=True):
                text = _trim(str(text), True, True)
                if run and self.prefix is not None and self._is_piece(run[0]):
                    text = text.removeprefix(self.prefix)  # a piece kept because it is the target: no "##"
                self._contexts[key] = text
        return pa.array([self._contexts[k] for k in keys], pa.string()).take(pa.array(row_span.ravel()))

    def targets(
        self, window: np.ndarray, position: np.ndarray, start: np.ndarray, end: np.ndarray, ids: np.ndarray
    ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """Per row: its token's word, or for a token holding part of a character, the word of the smallest run of
        tokens around it that reads as whole characters (see `_complete`); and Int[row] twice: the tokens of the
        previous and of the next window that run took (0 but where the window's edge cut the character)."""
        before, after = np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=np.int64)
        token_ids, row_token = np.unique(ids, return_inverse=True)
        texts = [self._token(i) for i in token_ids.tolist()]
        words = pa.array([token_text(text) for text in texts], pa.string()).take(pa.array(row_token.ravel()))
        partial = np.array(["\ufffd" in text for text in texts], dtype=bool)[row_token.ravel()]
        if not partial.any():
            return words, before, after
        column = words.to_pylist()
        for row in np.flatnonzero(partial).tolist():
            w, p, a, b = int(window[row]), int(position[row]), int(start[row]), int(end[row])
            if (w, p) not in self._runs:
                self._runs[w, p] = self._complete(w, p, a, b, self._token(int(ids[row])))
            column[row], before[row], after[row] = self._runs[w, p]
            self.unresolved += "\ufffd" in column[row]
        return pa.array(column, pa.string()), before, after

    def _complete(self, w: int, p: int, a: int, b: int, text: str) -> tuple[str, int, int]:
        """The whole characters of token `p` of window `w` (its document's text there is [a, b)), with the tokens
        of the previous and the next window they took: where the window's edge cut a character, the same document
        goes on in the neighbouring window, so the run may reach into it."""
        before, after = self._before(w, a), self._after(w, b)
        run = before + self._ids(w, a, b) + after
        word, i, j = self._whole_characters(run, len(before) + p - a, text)
        return word, max(0, len(before) - i), max(0, j - (len(run) - len(after)))

    def _whole_characters(self, ids: list[int], at: int, text: str) -> tuple[str, int, int]:
        """The word of the smallest run [i, j) of `ids` holding `at` that decodes without U+FFFD, and i, j; where
        there is none (see the class docstring), the token's own `text`, U+FFFD included, and at, at + 1.

        No run is taken that drops the U+FFFD of a character cut at an end of `ids`: its text would be the
        neighbouring tokens' characters, not this token's."""
        for length in range(1, min(len(ids), self.longest_run) + 1):
            for i in range(max(0, at - length + 1), min(at, len(ids) - length) + 1):
                run = str(self.tokenizer.decode(ids[i : i + length]))
                if "\ufffd" not in run:
                    return token_text(run), i, i + length
        return token_text(text), at, at + 1

    def _before(self, w: int, a: int) -> list[int]:
        """The last tokens (at most `borrowed`) of window w - 1 where the document whose text in window w starts at
        `a` began there; else none."""
        if a != self.head or w == 0:
            return []
        valid = self._valid(w - 1)
        n = min(_leading(valid[::-1]), self.borrowed)
        return self._ids(w - 1, len(valid) - n, len(valid))

    def _after(self, w: int, b: int) -> list[int]:
        """The first tokens (at most `borrowed`) of window w + 1 where the document whose text in window w ends at
        `b` goes on there; else none."""
        context_len = self.window_ids.shape[1]
        if b != context_len or w + 1 == self.window_ids.shape[0]:
            return []
        n = min(_leading(self._valid(w + 1)[self.head :]), self.borrowed)
        return self._ids(w + 1, self.head, self.head + n)

    def _span(self, w: int, a: int, b: int, before: int, after: int) -> list[int]:
        """The ids of tokens [a, b) of window w, with the last `before` of `_before` and the first `after` of
        `_after`."""
        prior = self._before(w, a)[-before:] if before else []
        return prior + self._ids(w, a, b) + (self._after(w, b)[:after] if after else [])

    def _ids(self, w: int, a: int, b: int) -> list[int]:
        return np.asarray(self.window_ids[w, a:b]).tolist()

    def _valid(self, w: int | np.ndarray) -> np.ndarray:
        """Bool[token]: window w's valid mask (Bool[window token] for an array of windows)."""
        return np.unpackbits(np.asarray(self.packed_valid[w]), axis=-1, count=self.window_ids.shape[1]).astype(bool)

    def _token(self, i: int) -> str:
        """Token i decoded alone (cached)."""
        if i not in self._tokens:
            self._tokens[i] = str(self.tokenizer.decode([i]))
        return self._tokens[i]

    def _is_piece(self, i: int) -> bool:
        """Whether token i is a WordPiece continuation piece ("##ing")."""
        text = self._token(i)
        return self.prefix is not None and text.startswith(self.prefix) and len(text) > len(self.prefix)


def _continuation_prefix(tokenizer: Any) -> str | None:
    """WordPiece's mark of a piece that continues a word ("##") where the tokenizer decodes with it, else None (a
    byte-level BPE's "##" token is text, not a mark)."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return str(decoder.prefix) if isinstance(decoder, decoders.WordPiece) else None


def _leading(mask: np.ndarray) -> int:
    """How many entries `mask` (Bool[n]) begins with that are True."""
    return len(mask) if mask.all() else int(np.argmin(mask))


def _trim(text: str, start: bool, end: bool) -> str:
    """`text` without the U+FFFD left by a character whose bytes were cut at its start or end."""
    text = text.lstrip("\ufffd") if start else text
    return text.rstrip("\ufffd") if end else text


def token_text(decoded: str) -> str:
    """A token as a word: surrounding spaces and WordPiece's "##" continuation mark removed."""
    text = decoded.strip()
    return text[2:] if text.startswith("##") and len(text) > 2 else text or decoded
