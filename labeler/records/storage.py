"""The fsspec filesystem of a URL the user gives (a run folder, exemplars, a corpus, a harvest's out)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec

from labeler.errors import InputError


def url_to_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(filesystem, path) of `url`; InputError where fsspec cannot open it (an unknown protocol, or the package
    of its protocol not installed)."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ImportError, ValueError) as err:
        raise InputError(f"cannot open {url}: {err}") from err
    return fs, path
