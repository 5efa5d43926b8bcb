"""Shared by the import tests: label an import's output with `labeler run` (a local Ray started in the
subprocess) and read back the labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq


def label_import(out: Path, run: Path) -> dict[int, dict[str, object]]:
    """{feature: its label row} after `labeler run` on OUT/exemplars and OUT/features.parquet with minilm."""
    command = [
        sys.executable,
        "-m",
        "labeler.cli",
        "run",
        "--exemplars",
        str(out / "exemplars"),
        "--features",
        str(out / "features.parquet"),
        "--out",
        str(run),
        "--discriminator",
        "minilm",
        "--set",
        "label.optimiser.restarts=1",
        "--set",
        "label.optimiser.max_steps=2",
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    labels = pq.read_table(run / "labels", columns=["feature", "status", "label", "activation_frequency"])
    return {row["feature"]: row for row in labels.to_pylist()}
