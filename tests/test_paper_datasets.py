"""The paper's datasets as exemplars: rows checked against the files, counted here by an independent method."""

from __future__ import annotations

import unicodedata
import warnings
from pathlib import Path

import pyarrow as pa
import pytest

from labeler.records.exemplars import read_exemplars
from labeler.toys.paper_datasets import (
    PAPER_FEATURES,
    PaperDatasetError,
    UnmatchedWordsWarning,
    paper_exemplars,
    read_paper_feature,
    split_words,
    write_paper_exemplars,
)

PAPER_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "paper-datasets"
WORD_LIST_FEATURES = ["animals", "mammals", "mammals_words", "numbers", "palindromes"]


@pytest.fixture(scope="module")
def paper_root() -> Path:
    if not PAPER_ROOT.is_dir():
        pytest.skip(f"the paper's datasets are not at {PAPER_ROOT}")
    return PAPER_ROOT


def lines_of(path: Path) -> list[str]:
    """The non-blank lines of a file, stripped: written here without the module's helpers."""
    return [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def is_cjk_character(char: str) -> bool:
    return unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH")


def words_of(text: str) -> list[str]:
    """Independent word split: letters and digits, apostrophes kept only between them, CJK characters alone."""
    spaced = "".join(
        f" {char} " if is_cjk_character(char) else char if char.isalnum() or char == "'" else " " for char in text
    )
    return [word.strip("'") for word in spaced.split() if word.strip("'")]


def rows_of(table: pa.Table) -> list[tuple[int, str, str, float]]:
    columns = [table.column(name).to_pylist() for name in ("feature", "context", "target", "activation")]
    return list(zip(*columns, strict=True))


def test_split_words_rule() -> None:
    assert split_words("The  Refer-a-Friend program, SU(3) in 1950s; I said ' wow' - can't!") == [
        "The",
        "Refer",
        "a",
        "Friend",
        "program",
        "SU",
        "3",
        "in",
        "1950s",
        "I",
        "said",
        "wow",
        "can't",
    ]
    assert split_words("他一到，我们 ok。") == ["他", "一", "到", "我", "们", "ok"]


@pytest.mark.parametrize("name", WORD_LIST_FEATURES)
def test_word_list_feature_matches_the_files(paper_root: Path, name: str) -> None:
    folder = paper_root / name
    feature = [paper_feature.name for paper_feature in PAPER_FEATURES].index(name)
    listed = {line.lower() for line in lines_of(folder / "labled_words.txt")}
    texts = lines_of(folder / "sentences.txt")
    expected_active = sum(word.lower() in listed for text in texts for word in words_of(text))
    expected_total = sum(len(words_of(text)) for text in texts)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmatchedWordsWarning)  # every listed word of the paper's data occurs
        table = read_paper_feature(folder, feature)

    rows = rows_of(table)
    assert table.schema.names == ["feature", "context", "target", "activation"]
    assert {row[0] for row in rows} == {feature}
    assert sum(row[3] == 1.0 for row in rows) == expected_active
    assert sum(row[3] == 0.0 for row in rows) == expected_total - expected_active
    assert all(target in context for _, context, target, _ in rows)
    assert all((activation == 1.0) == (target.lower() in listed) for _, _, target, activation in rows)
    assert list(dict.fromkeys(row[1] for row in rows)) == list(dict.fromkeys(texts))


def test_known_facts_of_the_paper_data(paper_root: Path) -> None:
    """Facts a reader can check by eye in the files."""
    animals = rows_of(read_paper_feature(paper_root / "animals", 0))
    active_per_text: dict[str, int] = {}
    for _, context, _, activation in animals:
        active_per_text[context] = active_per_text.get(context, 0) + int(activation)
    assert len(active_per_text) == 30 and min(active_per_text.values()) == 1  # one animal per sentence
    assert active_per_text["The cat chased the mouse."] == 2

    numbers = rows_of(read_paper_feature(paper_root / "numbers", 3))
    active = [target for _, _, target, activation in numbers if activation]
    spelled = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
    assert active == [*"0123456789", *spelled, "thirteen"]

    palindromes = rows_of(read_paper_feature(paper_root / "palindromes", 5))
    texts = {context for _, context, _, _ in palindromes}
    texts_with_active = {context for _, context, _, activation in palindromes if activation}
    assert texts == texts_with_active  # every sentence was written around a palindrome
    mom_and_pop = [(t, a) for _, c, t, a in palindromes if c.startswith("The  Mom-and-Pop")][:3]
    assert mom_and_pop == [("The", 0.0), ("Mom", 1.0), ("and", 0.0)]


def test_chinese_is_active_on_chinese_characters_only(paper_root: Path) -> None:
    folder = paper_root / "chinese"
    texts = lines_of(folder / "sentences.txt")
    chinese_texts = [text for text in texts if any(is_cjk_character(char) for char in text)]
    english_texts = [text for text in texts if text not in chinese_texts]
    assert len(chinese_texts) == 3 and len(english_texts) == 3

    rows = rows_of(read_paper_feature(folder, 4))
    active = [row for row in rows if row[3] == 1.0]
    inactive = [row for row in rows if row[3] == 0.0]
    assert len(active) + len(inactive) == len(rows)
    assert {context for _, context, _, _ in active} == set(chinese_texts)
    assert len(active) == sum(is_cjk_character(char) for text in chinese_texts for char in text)
    assert all(len(target) == 1 and is_cjk_character(target) for _, _, target, _ in active)
    assert {context for _, context, _, _ in inactive} == set(english_texts)
    assert len(inactive) == sum(len(words_of(text)) for text in english_texts)
    assert all(target in context for _, context, target, _ in rows)


def test_all_features_in_one_table(paper_root: Path) -> None:
    table = paper_exemplars(paper_root)
    features = table.column("feature").to_pylist()
    assert sorted(set(features)) == list(range(len(PAPER_FEATURES)))
    for feature, paper_feature in enumerate(PAPER_FEATURES):
        alone = read_paper_feature(paper_root / paper_feature.name, feature)
        assert features.count(feature) == alone.num_rows

    subset = paper_exemplars(paper_root, ["palindromes", "numbers"])
    assert list(dict.fromkeys(subset.column("feature").to_pylist())) == [5, 3]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_written_file_reads_back(paper_root: Path, tmp_path: Path, suffix: str) -> None:
    written = write_paper_exemplars(paper_root, tmp_path / f"paper{suffix}")
    read_back = read_exemplars(tmp_path / f"paper{suffix}")
    assert read_back.num_rows == written.num_rows
    assert rows_of(read_back) == rows_of(written)


# Error cases: tmp_path folders, so these run without the paper's data.


def make_folder(parent: Path, name: str, sentences: str | None, words: str | None) -> Path:
    folder = parent / name
    folder.mkdir()
    if sentences is not None:
        (folder / "sentences.txt").write_text(sentences, encoding="utf-8")
    if words is not None:
        (folder / "labled_words.txt").write_text(words, encoding="utf-8")
    return folder


def test_listed_words_with_spaces_and_blank_lines(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "toy", " The Cat sat.\n\nA dog ran.\n", " cat\n\n Dog \n")
    rows = rows_of(read_paper_feature(folder, 7))
    assert rows == [
        (7, "The Cat sat.", "The", 0.0),
        (7, "The Cat sat.", "Cat", 1.0),
        (7, "The Cat sat.", "sat", 0.0),
        (7, "A dog ran.", "A", 0.0),
        (7, "A dog ran.", "dog", 1.0),
        (7, "A dog ran.", "ran", 0.0),
    ]


def test_unmatched_listed_words_warn(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "toy", "The cat sat.\n", "cat\nunicorn\n")
    with pytest.warns(UnmatchedWordsWarning, match=r"toy.*\['unicorn'\]"):
        table = read_paper_feature(folder, 0)
    assert table.num_rows == 3


@pytest.mark.parametrize(
    ("sentences", "words", "message"),
    [
        (None, "cat\n", r"toy: no sentences\.txt"),
        ("The cat sat.\n", None, r"toy: no labled_words\.txt"),
        ("The cat sat.\n", "\n \n", r"labled_words\.txt: no words listed"),
        ("\n  \n...\n", "cat\n", r"toy: sentences\.txt has no words"),
        ("The cat sat.\n", "dog\n", r"toy: 0 active and 3 inactive rows"),
        ("cat\n", "cat\n", r"toy: 1 active and 0 inactive rows"),
    ],
)
def test_bad_folder_is_named(tmp_path: Path, sentences: str | None, words: str | None, message: str) -> None:
    folder = make_folder(tmp_path, "toy", sentences, words)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnmatchedWordsWarning)
        with pytest.raises(PaperDatasetError, match=message):
            read_paper_feature(folder, 0)


def test_chinese_folder_needs_no_word_list_but_needs_chinese(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "chinese", "Only English here.\n", None)
    with pytest.raises(PaperDatasetError, match=r"chinese: 0 active and 3 inactive rows.*CJK"):
        read_paper_feature(folder, 4)


def test_unknown_or_missing_datasets_are_named(tmp_path: Path) -> None:
    with pytest.raises(PaperDatasetError, match="paper datasets folder not found"):
        paper_exemplars(tmp_path / "absent")
    with pytest.raises(PaperDatasetError, match=r"unknown paper dataset 'birds'.*'animals'"):
        paper_exemplars(tmp_path, ["birds"])
    with pytest.raises(PaperDatasetError, match=r"named more than once: \['numbers'\]"):
        paper_exemplars(tmp_path, ["numbers", "numbers"])
    with pytest.raises(PaperDatasetError, match=r"animals: not a folder"):
        paper_exemplars(tmp_path, ["animals"])
    with pytest.raises(PaperDatasetError, match=r"unknown exemplar format '\.csv'"):
        write_paper_exemplars(tmp_path, tmp_path / "out.csv")
