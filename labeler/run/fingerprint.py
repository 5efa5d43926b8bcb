"""What a resume checks of the input's content: per file of the exemplars (and features file), its size, its row
count (Parquet: from the footer) and its content (a local file's SHA-256, an object's ETag).

The plan digest (service.plan_digest) covers the feature ids only; exemplars rewritten with the same ids but other
contexts or activations would pass it and mix old and new labels in one run. This module knows files, not labels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq

from labeler.records.storage import url_to_fs

FINGERPRINT = "input_files"
"""The key, in the manifest's "plan", of the input's per-file fingerprint."""


def input_fingerprint(urls: list[str], storage_options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{file URL: {"bytes", "rows" (Parquet), "sha256" (local) or "etag" (object stores)}} of every data file under
    `urls` (files whose names start with '.' or '_' are left out, as the Parquet reader leaves them out)."""
    prints: dict[str, dict[str, Any]] = {}
    for url in urls:
        fs, root = url_to_fs(url, storage_options)
        local = "file" in ((fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol))
        files = sorted(fs.find(root)) if fs.isdir(root) else [root]
        for path in files:
            relative = path[len(root) :].lstrip("/")
            if any(part.startswith((".", "_")) for part in relative.split("/") if part):
                continue
            info = fs.info(path)
            entry: dict[str, Any] = {"bytes": int(info["size"])}
            if path.endswith(".parquet"):
                with fs.open(path, "rb") as f:
                    entry["rows"] = pq.ParquetFile(f).metadata.num_rows
            etag = info.get("ETag") or info.get("etag")
            if etag and not local:
                entry["etag"] = str(etag).strip('"')
            else:
                entry["sha256"] = _sha256(fs, path)
            prints[f"{url.rstrip('/')}/{relative}" if relative else url] = entry
    return prints


def describe_changes(before: Mapping[str, Any], now: Mapping[str, Any], limit: int = 5) -> str:
    """The files added, removed or changed between two fingerprints, in words (at most `limit` of each)."""
    lines = []
    for what, names in (
        ("removed", sorted(set(before) - set(now))),
        ("added", sorted(set(now) - set(before))),
        ("changed", sorted(n for n in set(before) & set(now) if before[n] != now[n])),
    ):
        if names:
            shown = [f"{n} ({_difference(before[n], now[n])})" if what == "changed" else n for n in names[:limit]] + (
                [f"... {len(names) - limit} more"] if len(names) > limit else []
            )
            lines.append(f"{what}: {', '.join(shown)}")
    return "; ".join(lines)


def _difference(before: Any, now: Any) -> str:
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return "other content"
    keys = [k for k in ("bytes", "rows", "sha256", "etag") if before.get(k) != now.get(k)]
    return ", ".join(f"{k} {before.get(k)} -> {now.get(k)}" if k in ("bytes", "rows") else f"{k} differs" for k in keys)


def _sha256(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
