"""Converters from the paper's synthetic datasets to the exemplar contract.

The paper (Schulz and Fallows, arXiv 2504.00754) ships one folder per feature: `sentences.txt` (one text
per line) and `labled_words.txt` (their spelling: the words on which the feature is active). `chinese/`
has no word list: its feature is active on the Chinese characters. This module turns a folder into
exemplar rows (`labeler.records.exemplars.EXEMPLAR_SCHEMA`): one row per word of each text, activation 1.0 or 0.0.
It knows nothing about models or tokenizers; words are split by one documented rule (`split_words`).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.errors import InputError
from labeler.records.exemplars import EXEMPLAR_SCHEMA, validate_exemplars

SENTENCES_FILE = "sentences.txt"
WORDS_FILE = "labled_words.txt"
"""The paper's spelling, kept so the folders are used exactly as published."""


@dataclass(frozen=True)
class PaperFeature:
    """One of the paper's synthetic features: its folder and what the paper's method converged to."""

    name: str
    """The folder name under the datasets root."""
    paper_label: str | None
    """The label the paper's method converged to (Llama-3-8B-Instruct discriminator); None: no convergence."""
    note: str
    """What the texts are, and how the paper's run went."""
    active_on: Literal["listed_words", "cjk_characters"] = "listed_words"
    """Which targets are active: the words of `labled_words.txt`, or every Chinese (CJK) character."""


PAPER_FEATURES: tuple[PaperFeature, ...] = (
    PaperFeature("animals", "animal", "simple sentences, one animal each"),
    PaperFeature(
        "mammals",
        "animal",
        "the animals sentences with mammals active; converged to 'animal' (too few non-mammal animals)",
    ),
    PaperFeature("mammals_words", "mammal", "single words: mammals, other animals, objects, fruits; 'mamm…'"),
    PaperFeature("numbers", "number", "single words, 0-9 and one-thirteen active"),
    PaperFeature(
        "chinese",
        "中文",
        "3 Chinese and 3 English lines; '中文' (Chinese language) in the best run only",
        active_on="cjk_characters",
    ),
    PaperFeature("palindromes", None, "sentences around palindrome words; no convergence ('a', 'noun')"),
)
"""The paper's features in a fixed order: a feature's id is its index here."""

CONCEPT_WORDS: dict[str, set[str]] = {
    "animals": {"animal", "animals", "fauna", "creature", "creatures", "beast", "beasts", "wildlife", "zoo"},
    "mammals": {"mammal", "mammals", "mammalian", "animal", "animals"},
    "mammals_words": {"mammal", "mammals", "mammalian", "animal", "animals"},
    "numbers": {"number", "numbers", "numeral", "numerals", "digit", "digits", "integer", "numeric", "numerical"},
    "chinese": {"chinese", "china", "mandarin", "cantonese"},
    "palindromes": {"palindrome", "palindromes", "palindromic"},
}
"""Per feature, the words that name its concept (or a synonym, or a close hypernym: "animal" is mammal's, and the
paper's own label for the mammals feature), to judge labels by; benchmarks print the label beside the verdict."""


class PaperDatasetError(InputError):
    """A paper dataset folder cannot be converted; the message names the folder and the problem."""


class UnmatchedWordsWarning(UserWarning):
    """Words of `labled_words.txt` that occur in no text of the folder (so they label nothing)."""


# CJK Unified Ideographs, Extension A and Compatibility Ideographs (all the paper's characters are in the
# first block) and Extensions B-F.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
# A letter or digit that is not a CJK character (\w without the underscore and without CJK).
_ALNUM = rf"[^\W_{_CJK}]"
_TOKEN = re.compile(rf"[{_CJK}]|{_ALNUM}+(?:['’]{_ALNUM}+)*")
_CJK_CHAR = re.compile(rf"[{_CJK}]")


def split_words(text: str) -> list[str]:
    """The words of a text, in order, each exactly as written (so each occurs in the text).

    A word is a run of letters and digits; an apostrophe between two such runs stays inside the word
    ("can't", "player's", "I'm"). Everything else separates words: spaces, punctuation attached to a
    word ("mouse." -> "mouse", "' wow'" -> "wow"), hyphens ("Refer-a-Friend" -> "Refer", "a", "Friend";
    the palindrome list names "Refer", "Did", "Non", "tit", "Pop" inside hyphenated compounds) and
    brackets ("SU(3)" -> "SU", "3"). Numbers written as digits are words ("5", "2018"; "1950s" is one
    word). Each CJK character is a word of its own; CJK punctuation ("，", "。") separates.
    """
    return _TOKEN.findall(text)


def is_cjk(word: str) -> bool:
    """Whether a word (from `split_words`) is a single Chinese (CJK) character."""
    return _CJK_CHAR.fullmatch(word) is not None


def read_texts(folder: Path) -> list[str]:
    """The texts of a folder: the lines of `sentences.txt`, stripped of surrounding whitespace, blanks dropped.

    The surrounding whitespace is an artefact of the authors' tokenizer pieces (" goat", " Civic duty ...");
    spaces inside a line are kept as written.
    """
    path = folder / SENTENCES_FILE
    if not path.is_file():
        raise PaperDatasetError(f"{folder}: no {SENTENCES_FILE} (every paper dataset folder needs one)")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def read_listed_words(folder: Path) -> frozenset[str]:
    """The active words of a folder's `labled_words.txt`: lowercased, surrounding spaces stripped, blanks dropped."""
    path = folder / WORDS_FILE
    if not path.is_file():
        raise PaperDatasetError(
            f"{folder}: no {WORDS_FILE}; only a feature whose active targets are CJK characters ('chinese') "
            "may go without a word list"
        )
    words = frozenset(line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines())
    words -= {""}
    if not words:
        raise PaperDatasetError(f"{path}: no words listed")
    return words


def feature_by_name(name: str) -> PaperFeature:
    """The entry of PAPER_FEATURES with this folder name; raises naming the known ones."""
    for paper_feature in PAPER_FEATURES:
        if paper_feature.name == name:
            return paper_feature
    known = [paper_feature.name for paper_feature in PAPER_FEATURES]
    raise PaperDatasetError(f"unknown paper dataset {name!r}; the paper's datasets are {known}")


def read_paper_feature(folder: Path, feature: int) -> pa.Table:
    """One folder as exemplar rows (EXEMPLAR_SCHEMA) with feature id `feature`.

    One row per word (`split_words`) of each text (`read_texts`), in file order: `context` is the whole
    text, `target` the word as written, `activation` 1.0 when the target is active, else 0.0. A folder
    named like a `cjk_characters` entry of PAPER_FEATURES ("chinese") is active on every CJK character and
    needs no word list; any other folder is active on the words of its `labled_words.txt`, matched
    case-insensitively. Listed words that occur in no text are not an error (they label nothing): they are
    reported with an `UnmatchedWordsWarning` naming the folder and the words. Raises `PaperDatasetError`
    for a missing file, or when the folder yields no rows, no active rows or no inactive rows.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PaperDatasetError(f"{folder}: not a folder")
    active_on = next((p.active_on for p in PAPER_FEATURES if p.name == folder.name), "listed_words")
    cjk = active_on == "cjk_characters"
    listed: frozenset[str] = frozenset() if cjk else read_listed_words(folder)
    contexts: list[str] = []
    targets: list[str] = []
    activations: list[float] = []
    matched: set[str] = set()
    for text in read_texts(folder):
        for word in split_words(text):
            active = is_cjk(word) if cjk else word.lower() in listed
            if active:
                matched.add(word.lower())
            contexts.append(text)
            targets.append(word)
            activations.append(1.0 if active else 0.0)
    n_active = sum(1 for activation in activations if activation > 0)
    n_inactive = len(activations) - n_active
    if not activations:
        raise PaperDatasetError(f"{folder}: {SENTENCES_FILE} has no words, so no exemplar rows")
    if n_active == 0 or n_inactive == 0:
        what = "CJK character" if cjk else f"word of {WORDS_FILE}"
        raise PaperDatasetError(
            f"{folder}: {n_active} active and {n_inactive} inactive rows (active: every {what}); a feature needs both"
        )
    unmatched = sorted(listed - matched)
    if unmatched:
        warnings.warn(
            f"{folder}: {len(unmatched)} word(s) of {WORDS_FILE} occur in no text of {SENTENCES_FILE}: {unmatched}",
            UnmatchedWordsWarning,
            stacklevel=2,
        )
    return pa.table(
        {
            "feature": pa.array([feature] * len(targets), pa.int64()),
            "context": pa.array(contexts, pa.string()),
            "target": pa.array(targets, pa.string()),
            "activation": pa.array(activations, pa.float64()),
        },
        schema=EXEMPLAR_SCHEMA,
    )


def paper_exemplars(root: Path, names: Sequence[str] | None = None) -> pa.Table:
    """All the paper's features (or the named ones, in the order given) as one validated exemplar table.

    Feature ids are indices in PAPER_FEATURES, so a feature keeps its id whichever subset is read.
    """
    root = Path(root)
    if not root.is_dir():
        raise PaperDatasetError(f"paper datasets folder not found: {root}")
    if names is None:
        names = [paper_feature.name for paper_feature in PAPER_FEATURES]
    duplicated = sorted({name for name in names if list(names).count(name) > 1})
    if duplicated:
        raise PaperDatasetError(f"paper dataset(s) named more than once: {duplicated}")
    if not names:
        raise PaperDatasetError("no paper datasets named")
    tables = [read_paper_feature(root / name, PAPER_FEATURES.index(feature_by_name(name))) for name in names]
    return validate_exemplars(pa.concat_tables(tables), source=str(root))


def write_paper_exemplars(root: Path, out_path: Path) -> pa.Table:
    """Write all the paper's features as exemplars to `out_path` (`.jsonl` or `.parquet`); returns the table.

    The file reads back with `labeler.records.exemplars.read_exemplars`.
    """
    out_path = Path(out_path)
    if out_path.suffix not in (".jsonl", ".parquet"):
        raise PaperDatasetError(f"unknown exemplar format {out_path.suffix!r} for {out_path}; use .jsonl or .parquet")
    table = paper_exemplars(root)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".parquet":
        pq.write_table(table, out_path)
    else:
        with out_path.open("w", encoding="utf-8") as out:
            for row in table.to_pylist():
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return table
