"""Process settings for CPU runs."""

from __future__ import annotations

import platform

import pytest
import torch

from labeler.run.runtime import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_takes_on_glibc() -> None:
    assert keep_freed_memory()
    # Large blocks now come from the heap; allocating and freeing them still works.
    for _ in range(3):
        block = torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
        assert int(block[-1]) == 1
        del block
