"""Progress on the terminal or in a log: tqdm bars that turn into plain lines where stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


def progress_bar(**settings: Any) -> tqdm:
    """A tqdm progress bar on stderr: redrawn in place on a terminal; where stderr is a log (a file, a pipe,
    `ray job logs`), one plain line at start, at most every 30 s, and at the end."""
    if sys.stderr.isatty():
        return tqdm(file=sys.stderr, **settings)
    return tqdm(file=_LogLines(sys.stderr), mininterval=30, ascii=True, **settings)


class _LogLines:
    """A stream for tqdm that turns each redraw into a line of its own (no carriage returns in a log)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def harvest_bar(total: int | None, disable: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A tokens progress bar (tokens/s, ETA) and the progress callback `harvest()` calls with (done, expected)."""
    with progress_bar(total=total, unit="tok", unit_scale=True, desc="harvesting", disable=disable) as bar:

        def progress(done: int, expected: int) -> None:
            bar.total = max(expected, done)
            bar.update(done - bar.n)

        yield progress
