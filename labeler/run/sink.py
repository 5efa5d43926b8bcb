"""Exactly-once Parquet parts on any fsspec URL: a local folder, `s3://` through s3fs, or others.

A run folder holds `manifest.json` and `labels/part-NNNNNNNN.parquet`, one part per chunk, named by the
chunk's index (deterministic). Committing a part is one create-only write of the whole object:
- object stores (s3): a single PUT with `If-None-Match: *` (s3fs `mode="create"`); the object appears
  whole or not at all, and a second attempt at the same chunk is refused by the store;
- local folders: the bytes go to a hidden temporary file, which is then hard-linked to the part's name
  (`link` fails if the name exists) and removed.
So the part is its own commit marker: readers that glob `labels/*.parquet` see only committed parts,
the first attempt to commit a chunk wins, and a retried or resumed chunk never rewrites or duplicates
one. Storage errors are retried with exponential backoff. This module knows nothing about labels: it
commits Arrow tables.
"""

from __future__ import annotations

import errno
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from labeler.errors import ConfigError, InputError
from labeler.records.layout import LABELS, MANIFEST, PART_NAME, part_name
from labeler.records.parquet import read_parquet
from labeler.records.storage import url_to_fs

T = TypeVar("T")


def _transient_errors() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [OSError, TimeoutError, ConnectionError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        kinds += [BotoCoreError, ClientError]
    except ImportError:  # s3fs is optional for local folders
        pass
    return tuple(kinds)


class ManifestError(InputError):
    """A run folder's manifest.json that cannot be read as one."""


class StorageFullError(OSError):
    """The run folder's device (or quota) is full: not retried, since waiting frees nothing; the run stops, and
    the message names the folder and says how to continue."""


FULL = (errno.ENOSPC, errno.EDQUOT)
"""The errors of a full device or an exhausted quota."""


@dataclass(frozen=True)
class SinkConfig:
    """Where parts go and how storage errors are retried."""

    storage_options: Mapping[str, Any] = field(default_factory=dict)
    """Passed to fsspec for the URL, e.g. {"endpoint_url": "http://127.0.0.1:5000"} for s3 (s3fs options)."""
    retries: int = 10
    """Attempts of one storage operation before the error is raised."""
    backoff_seconds: float = 0.2
    """Wait after the first failed attempt; doubled after each further one."""
    max_backoff_seconds: float = 10.0
    """Longest wait between two attempts."""
    lease_expiry_seconds: float = 120.0
    """How long the lease of the driver writing the run folder holds after its last heartbeat (beats come every
    quarter of this): another driver takes the run over from one that stopped beating for longer
    (labeler/run/lease.py). Longer than any storage outage a run should ride out, and than clocks may differ."""

    def __post_init__(self) -> None:
        if self.lease_expiry_seconds <= 0:
            raise ConfigError(f"sink.lease_expiry_seconds must be positive, got {self.lease_expiry_seconds}")
        if self.retries < 1:
            raise ConfigError(f"sink.retries must be at least 1, got {self.retries}")
        if self.backoff_seconds < 0 or self.max_backoff_seconds < self.backoff_seconds:
            raise ConfigError("sink.backoff_seconds must be >= 0 and at most sink.max_backoff_seconds")


class PartSink:
    """The parts and manifest of one run folder at `url`."""

    def __init__(self, url: str, config: SinkConfig = SinkConfig()) -> None:
        self.url = url.rstrip("/")
        self.config = config
        self.fs, self.root = url_to_fs(self.url, config.storage_options)
        self._local = "file" in _protocols(self.fs)

    def part_path(self, index: int) -> str:
        return f"{self.root}/{LABELS}/{part_name(index)}"

    def commit(self, index: int, table: pa.Table) -> bool:
        """Write chunk `index`'s part unless one is committed already; True when this call committed it."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        data = buffer.getvalue()
        return self._retry(lambda: self._create(self.part_path(index), data), f"commit part {index}")

    def is_committed(self, index: int) -> bool:
        return bool(self._retry(lambda: self.fs.exists(self.part_path(index)), f"look for part {index}"))

    def committed(self) -> set[int]:
        """Indices of the committed parts."""
        folder = f"{self.root}/{LABELS}"

        def listing() -> list[str]:
            self.fs.invalidate_cache(folder)
            try:
                return [str(p) for p in self.fs.ls(folder, detail=False)]
            except FileNotFoundError:
                return []

        names = self._retry(listing, "list parts")
        return {int(m.group(1)) for name in names if (m := PART_NAME.match(name.rsplit("/", 1)[-1]))}

    def read_part(self, index: int) -> pa.Table:
        return self._retry(lambda: read_parquet(self.fs, self.part_path(index)), f"read part {index}")

    def write_manifest(self, manifest: Mapping[str, Any]) -> bool:
        """Write manifest.json once; False when the run folder already has one (a resumed run keeps it)."""
        data = (json.dumps(manifest, indent=2, default=str) + "\n").encode()
        return self._retry(lambda: self._create(f"{self.root}/{MANIFEST}", data), "write the manifest")

    def read_manifest(self) -> dict[str, Any] | None:
        """The run folder's manifest.json; None where there is none. A file that is not a JSON object is an error
        naming it (ManifestError)."""

        def read() -> dict[str, Any] | None:
            try:
                with self.fs.open(f"{self.root}/{MANIFEST}", "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            try:
                manifest = json.loads(data)
            except ValueError as err:  # not JSON, or not UTF-8
                raise ManifestError(
                    f"{self.url}/{MANIFEST} is not valid JSON ({err}); it is not a run's manifest"
                ) from None
            if not isinstance(manifest, dict):
                raise ManifestError(f"{self.url}/{MANIFEST} holds a JSON {type(manifest).__name__}, not an object")
            return manifest

        return self._retry(read, "read the manifest")

    def discard_manifest(self) -> None:
        """Remove manifest.json of a run that committed nothing (its workers could not start), so the same
        command can start the run again once the cause is fixed."""
        if self.committed():
            raise ManifestError(f"{self.url} has committed parts; resume it instead of discarding its manifest")
        self._retry(lambda: self.fs.rm_file(f"{self.root}/{MANIFEST}"), "remove the manifest")

    def write_file(self, name: str, data: bytes) -> None:
        """Overwrite a small side file of the run folder (e.g. the Prometheus targets list); a reader sees the old
        bytes or the new, never a mix (a local file is replaced by a rename, an object by one PUT)."""
        path = f"{self.root}/{name}"
        write = (lambda: _replace_local(path, data)) if self._local else (lambda: self.fs.pipe_file(path, data))
        self._retry(write, f"write {name}")

    def create_file(self, name: str, data: bytes) -> bool:
        """Write a small side file of the run folder unless it exists; True when this call created it (the same
        create-only write as a part's commit)."""
        return self._retry(lambda: self._create(f"{self.root}/{name}", data), f"create {name}")

    def read_file(self, name: str) -> bytes | None:
        """A side file's bytes; None where there is none."""

        def read() -> bytes | None:
            try:
                with self.fs.open(f"{self.root}/{name}", "rb") as f:
                    return bytes(f.read())
            except FileNotFoundError:
                return None

        return self._retry(read, f"read {name}")

    def list_files(self, folder: str) -> list[str]:
        """The names of the files in a folder of the run folder (none where it does not exist)."""

        def listing() -> list[str]:
            self.fs.invalidate_cache(f"{self.root}/{folder}")
            try:
                found = self.fs.ls(f"{self.root}/{folder}", detail=False)
            except FileNotFoundError:
                return []
            return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in found]

        return self._retry(listing, f"list {folder}")

    def _create(self, path: str, data: bytes) -> bool:
        if self._local:
            return _create_local(path, data)
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as err:
            if "PreconditionFailed" in str(err) or "412" in str(err):
                return False
            raise
        return True

    def _retry(self, operation: Callable[[], T], what: str) -> T:
        wait = self.config.backoff_seconds
        transient = _transient_errors()
        for attempt in range(1, self.config.retries + 1):
            try:
                return operation()
            except FileExistsError:
                raise
            except transient as err:
                if isinstance(err, OSError) and err.errno in FULL:  # waiting frees nothing: stop the run
                    raise StorageFullError(
                        f"no space left in {self.url} ({what}: {err.strerror or err}); nothing partial was kept: "
                        "free space there (or raise the quota), then continue the run with --resume"
                    ) from err
                if attempt == self.config.retries:
                    raise OSError(f"{what} at {self.url} failed {attempt} times; last error: {err!r}") from err
                time.sleep(wait)
                wait = min(max(wait * 2, 0.01), self.config.max_backoff_seconds)
        raise AssertionError("unreachable")


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _replace_local(path: str, data: bytes) -> None:
    partial = _write_partial(path, data)
    try:
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _write_partial(path: str, data: bytes) -> str:
    """Write `data` to a new hidden file beside `path`, synced; its path. Nothing is left where it fails (e.g. the
    device is full)."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    partial = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return partial


def _create_local(path: str, data: bytes) -> bool:
    partial = _write_partial(path, data)
    try:
        os.link(partial, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(partial)
    return True
