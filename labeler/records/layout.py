"""The run folder's layout: where a run's manifest, label parts and harvest lie (names only, no I/O).

  RUN/manifest.json                  the run: id, config, code version, plan, provenance (written once)
  RUN/labels/part-NNNNNNNN.parquet   label records of chunk N (records/labels.py), each committed whole
  RUN/harvest/                       exemplars harvested by the run itself, when it made them
  RUN/prometheus_targets.json        the metrics endpoints of a run in progress
  RUN/lease/NNNNNNNN.json            the driver writing the run now, and its heartbeat (run/lease.py)
The run/ modules write this layout and store/ reads it; both take the names from here.
"""

from __future__ import annotations

import re

MANIFEST = "manifest.json"
LABELS = "labels"
HARVEST = "harvest"
TARGETS = "prometheus_targets.json"
LEASE = "lease"
PART_NAME = re.compile(r"^part-(\d+)\.parquet$")
"""A committed part's file name; the digits are its chunk index (eight of them, zero-padded, when written)."""


def part_name(index: int) -> str:
    """The file name of chunk `index`'s part."""
    return f"part-{index:08d}.parquet"
