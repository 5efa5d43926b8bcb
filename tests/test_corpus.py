"""The corpus reader: every format gives the same documents; windows cover the token stream exactly."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import word_tokenizer

from labeler.harvest.corpus import CorpusError, check_corpus, iter_documents, iter_windows

DOCS = ["the dog ran", "a red apple", "the cat ate the cheese today"]


def test_formats_give_the_same_documents(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("\n".join(DOCS) + "\n\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("\n".join(DOCS))
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "saved"))
    assert list(iter_documents(str(tmp_path / "c.txt"))) == DOCS
    assert list(iter_documents(str(tmp_path / "c.jsonl"))) == DOCS
    assert list(iter_documents(str(tmp_path / "c.txt.gz"))) == DOCS
    assert list(iter_documents(str(tmp_path / "c.parquet"), text_column="body")) == DOCS
    assert list(iter_documents(str(tmp_path / "saved"))) == DOCS
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.txt").write_text(DOCS[1])
    (folder / "a.txt").write_text(DOCS[0])
    assert list(iter_documents(str(folder))) == DOCS[:2]


def test_bad_input_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl, line 2: expected an object with a string field 'text'"):
        check_corpus(str(tmp_path / "c.jsonl"))
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "c.parquet")
    with pytest.raises(CorpusError, match=r"no column 'text' \(columns: \['body'\]\)"):
        check_corpus(str(tmp_path / "c.parquet"))
    with pytest.raises(CorpusError, match="corpus not found"):
        check_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "c.csv").write_text("x")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        check_corpus(str(tmp_path / "c.csv"))


def test_windows_cover_the_stream(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    docs = [" ".join(["dog"] * n) for n in (3, 7, 1, 12)]
    batches = list(iter_windows(iter(docs), tokenizer, context_len=5, windows_per_batch=2))
    ids = np.concatenate([b.ids for b in batches])
    valid = np.concatenate([b.valid for b in batches])
    attention = np.concatenate([b.attention for b in batches])
    assert [b.first for b in batches] == list(range(0, len(ids), 2))
    assert (ids[:, 0] == tokenizer.bos_token_id).all() and not valid[:, 0].any()
    assert valid.sum() == 23  # every corpus token once; separators (eos) and BOS not counted
    assert (ids[valid] == tokenizer.convert_tokens_to_ids("dog")).all()
    assert (ids[~valid & attention][1:] != tokenizer.convert_tokens_to_ids("dog")).all()
    assert attention[:-1].all() and not attention[-1].all()  # only the last window is padded
    limited = list(iter_windows(iter(docs), tokenizer, context_len=5, windows_per_batch=2, max_tokens=9))
    assert sum(int(b.valid.sum()) for b in limited) == 9


@pytest.mark.parametrize("n_docs", [3, 4, 5])
def test_document_count_a_multiple_of_the_tokenizer_call(n_docs: int) -> None:
    tokenizer = word_tokenizer()
    docs = iter(["dog dog"] * n_docs)
    batches = list(iter_windows(docs, tokenizer, context_len=4, windows_per_batch=2, docs_per_call=2))
    assert sum(int(b.valid.sum()) for b in batches) == 2 * n_docs


def test_special_token_text_in_a_document_is_plain_text() -> None:
    """ "<eos>" written in a document is tokenised as text, never as the EOS id, which marks documents' ends only."""
    tokenizer = word_tokenizer()
    batch = next(iter_windows(iter(["the dog <eos> ran", "a cat"]), tokenizer, context_len=12, windows_per_batch=1))
    text = batch.ids[batch.valid]
    assert len(text) == 8 and tokenizer.eos_token_id not in text  # "<", "eos", ">" (unknown words), not one EOS
    assert (~batch.valid & batch.attention).sum() == 2  # BOS and the one separator
