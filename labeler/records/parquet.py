"""Reading one Parquet file from any fsspec filesystem without Arrow worker threads.

`pq.read_table` on a Python file object (what fsspec opens) reads ahead on Arrow's thread pool, and the last
reference to the file's buffers can fall to a pool thread after the read returns. If the process is exiting
then, that thread waits for the GIL during interpreter shutdown, is ended by Python and aborts the whole
process ("terminate called without an active exception", exit code 134), a few times in a hundred runs of
a command that reads a part and exits at once. Here the file's bytes are read in the caller's thread and
decoded there, so no pool thread ever holds a Python buffer.
Label parts and exemplar files are read whole anyway.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def read_parquet(fs: Any, path: str) -> pa.Table:
    """The whole Parquet file at `path` on fsspec filesystem `fs`, read and decoded in this thread."""
    with fs.open(path, "rb") as f:
        data = f.read()
    return pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
