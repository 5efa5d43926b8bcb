"""The corpus, streamed: documents from text, JSONL, Parquet or a saved `datasets` dataset, cut into windows.

A corpus is a file, a folder of such files, or a folder written by `datasets.Dataset.save_to_disk`:

* `.txt` (one document per line), `.jsonl` (one JSON object per line, text under `text_column`),
  `.parquet` (a string column `text_column`); `.gz`/`.bz2`/`.xz` variants of the first two; any fsspec URL.
* A `datasets` folder (it has `dataset_info.json`): memory-mapped, read row by row.

Nothing is loaded whole: files are read line by line (a line longer than `max_document_bytes` is an
error, never a reason to hold it in memory), Parquet row group by row group. Documents are tokenised in
small batches and joined into one token stream, separated by the tokenizer's EOS/SEP token, and cut into
fixed-length windows of `context_len` tokens; each window starts with the tokenizer's CLS/BOS token
when it has one. Documents are tokenised as plain text: a special token's string written in a document
("<|endoftext|>") is ordinary text, so special ids appear only where this module puts them. The last window
is padded; `WindowBatch.valid` marks the tokens that are corpus text, so each run of valid tokens is one
document's (part). This module knows tokenizers, not models or SAEs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import PreTrainedTokenizerBase

from labeler.errors import ConfigError, InputError
from labeler.records.storage import url_to_fs

TEXT_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".parquet")
COMPRESSIONS = (".gz", ".bz2", ".xz")


class CorpusError(InputError):
    """The corpus cannot be read as documents; the message names the file, the line and what to fix."""


@dataclass(frozen=True)
class WindowBatch:
    """Consecutive windows of the token stream."""

    first: int
    """Index of the first window in the corpus."""
    ids: np.ndarray
    """Int64[window token]: token ids, padded at the corpus' end."""
    valid: np.ndarray
    """Bool[window token]: True where the token is corpus text (not BOS/CLS, separator or padding)."""
    attention: np.ndarray
    """Bool[window token]: False on padding only."""


def corpus_files(path: str) -> list[str]:
    """The files of a corpus in reading order, or [path] for a saved `datasets` folder."""
    fs, root = url_to_fs(path)
    if not fs.exists(root):
        raise CorpusError(f"corpus not found: {path}")
    if fs.isdir(root):
        if fs.exists(f"{root}/dataset_info.json"):
            return [path]
        found = sorted(f for f in fs.find(root) if _kind(f) is not None)
        if not found:
            raise CorpusError(
                f"corpus folder {path} holds no .txt, .jsonl or .parquet files (optionally compressed) "
                "and is not a saved `datasets` dataset"
            )
        protocol = path.split("://", 1)[0] + "://" if "://" in path else ""
        return [protocol + f for f in found]
    if _kind(root) is None:
        raise CorpusError(f"unknown corpus format {Path(root).name!r}: use .txt, .jsonl or .parquet (optionally .gz)")
    return [path]


def iter_documents(path: str, text_column: str = "text", max_document_bytes: int = 1_000_000) -> Iterator[str]:
    """Every non-empty document of the corpus, streamed; unreadable input raises CorpusError naming where."""
    for file in corpus_files(path):
        kind = _kind(file)
        if kind is None:
            yield from _dataset_documents(file, text_column)
        elif kind == ".parquet":
            yield from _parquet_documents(file, text_column)
        else:
            yield from _line_documents(file, kind, text_column, max_document_bytes)


def check_corpus(path: str, text_column: str = "text", max_document_bytes: int = 1_000_000) -> tuple[int, int]:
    """Read the whole corpus once, without tokenising; return its number of documents and characters.

    Run before any model is loaded, so that invalid UTF-8, an enormous line, bad JSON or an empty
    corpus stop the job before work starts.
    """
    documents = characters = 0
    for document in iter_documents(path, text_column, max_document_bytes):
        documents += 1
        characters += len(document)
    if documents == 0:
        raise CorpusError(f"corpus {path} is empty: it holds no non-empty document")
    return documents, characters


def window_head(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids every window starts with, before its text: [CLS] or [BOS] where the tokenizer has one."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    return [start] if start is not None else []


def iter_windows(
    documents: Iterator[str],
    tokenizer: PreTrainedTokenizerBase,
    context_len: int,
    windows_per_batch: int,
    max_tokens: int | None = None,
    docs_per_call: int = 256,
) -> Iterator[WindowBatch]:
    """Tokenise documents into a stream, cut it into windows and yield them in batches.

    Stops after `max_tokens` corpus tokens (the stream's own tokens, not BOS or separators) if given.
    """
    separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (separator or 0)
    head = window_head(tokenizer)
    body = context_len - len(head)
    if body < 1:
        raise ConfigError(f"context_len must be at least {len(head) + 1}, got {context_len}")

    stream: list[int] = []  # token ids not yet in a window; kept shorter than one batch of windows
    valid_stream: list[bool] = []
    pending_ids: list[np.ndarray] = []
    pending_valid: list[np.ndarray] = []
    pending_attention: list[np.ndarray] = []
    taken = 0
    first = 0

    def cut(final: bool) -> Iterator[WindowBatch]:
        nonlocal stream, valid_stream
        while len(stream) >= body or (final and stream):
            chunk, chunk_valid = stream[:body], valid_stream[:body]
            stream, valid_stream = stream[body:], valid_stream[body:]
            padding = body - len(chunk)
            pending_ids.append(np.array([*head, *chunk, *([pad] * padding)], dtype=np.int64))
            pending_valid.append(np.array([False] * len(head) + chunk_valid + [False] * padding, dtype=bool))
            pending_attention.append(np.arange(context_len) < context_len - padding)
            if len(pending_ids) == windows_per_batch:
                yield flush()
        if final and pending_ids:
            yield flush()

    def flush() -> WindowBatch:
        nonlocal first
        batch = WindowBatch(first, np.stack(pending_ids), np.stack(pending_valid), np.stack(pending_attention))
        first += len(pending_ids)
        pending_ids.clear()
        pending_valid.clear()
        pending_attention.clear()
        return batch

    batch: list[str] = []
    exhausted = False
    for document in _chain(documents, batch_size=docs_per_call):
        if document is not None:
            batch.append(document)
            continue
        if not batch:  # the final marker right after a full batch's marker
            continue
        # split_special_tokens: "<|endoftext|>" written in a document is that text, not the EOS id
        for ids in tokenizer(batch, add_special_tokens=False, split_special_tokens=True)["input_ids"]:
            if max_tokens is not None:
                ids = ids[: max_tokens - taken]
            if not ids:
                continue
            if stream and separator is not None:
                stream.append(separator)
                valid_stream.append(False)
            stream.extend(ids)
            valid_stream.extend([True] * len(ids))
            taken += len(ids)
            if max_tokens is not None and taken >= max_tokens:
                exhausted = True
                break
        batch = []
        yield from cut(final=False)
        if exhausted:
            break
    yield from cut(final=True)


def _chain(documents: Iterator[str], batch_size: int) -> Iterator[str | None]:
    """The documents, with a None after every `batch_size` of them and at the end (a flush marker)."""
    for n, document in enumerate(documents, start=1):
        yield document
        if n % batch_size == 0:
            yield None
    yield None


def _kind(name: str) -> str | None:
    stem = name
    for suffix in COMPRESSIONS:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    for suffix in TEXT_SUFFIXES:
        if stem.endswith(suffix):
            return suffix
    return None


def _line_documents(file: str, kind: str, text_column: str, max_document_bytes: int) -> Iterator[str]:
    with fsspec.open(file, "rb", compression="infer") as f:
        number = 0
        while True:
            raw = f.readline(max_document_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_document_bytes and not raw.endswith(b"\n"):
                raise CorpusError(
                    f"{file}, line {number}: longer than max_document_bytes={max_document_bytes:,} bytes; "
                    "split the document into lines, or raise the limit (--max-document-bytes)"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(
                    f"{file}, line {number}: invalid UTF-8 at byte {err.start} of the line "
                    f"({raw[err.start : err.start + 4]!r}); re-encode the file as UTF-8"
                ) from err
            text = line.strip() if kind == ".txt" else _json_text(line, file, number, text_column)
            if text:
                yield text


def _json_text(line: str, file: str, number: int, text_column: str) -> str:
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorpusError(f"{file}, line {number}: not valid JSON ({err.msg})") from err
    if not isinstance(record, dict) or not isinstance(record.get(text_column), str):
        raise CorpusError(f"{file}, line {number}: expected an object with a string field {text_column!r}")
    return str(record[text_column]).strip()


def _parquet_documents(file: str, text_column: str) -> Iterator[str]:
    with fsspec.open(file, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
        except pa.ArrowInvalid as err:  # a file that is not Parquet
            raise CorpusError(f"{file}: not a Parquet file ({err})") from err
        if text_column not in parquet.schema_arrow.names:
            raise CorpusError(f"{file}: no column {text_column!r} (columns: {parquet.schema_arrow.names})")
        for batch in parquet.iter_batches(columns=[text_column], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str) and text.strip():
                    yield text.strip()


def _dataset_documents(path: str, text_column: str) -> Iterator[str]:
    import datasets  # imported only for saved datasets: it is slow to import

    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        raise CorpusError(f"{path} is a DatasetDict with splits {list(dataset)}; point --corpus at one split's folder")
    if text_column not in dataset.column_names:
        raise CorpusError(f"{path}: no column {text_column!r} (columns: {dataset.column_names})")
    for start in range(0, len(dataset), 1024):
        for text in dataset[start : start + 1024][text_column]:
            if isinstance(text, str) and text.strip():
                yield text.strip()
