"""The older toy: a tiny LM that knows five concepts of a synthetic language, and five features, one per concept.

Everything is built locally and offline: the synthetic world's model is trained once (about a minute on
a CPU) and cached; the exemplars are regenerated each run. Each feature was built from one concept, so
`named` says whether its label names that concept. The CLI's `labeler demo` labels them (cli/demo.py).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from labeler.toys.synthetic import default_world, feature_exemplars, train_tiny_lm


def build(cache: Path, seed: int, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """(the exemplars file, the model folder) of the toy world with `seed`; the model is trained once and cached."""
    world = default_world()
    model_dir = cache / f"lm-seed{seed}"
    if not (model_dir / "config.json").exists():
        log(f"training the demo LM once (about a minute), cached in {model_dir}")
        cache.mkdir(parents=True, exist_ok=True)
        # Train into a scratch folder and rename it, so an interrupted run never leaves half a model behind.
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            train_tiny_lm(world, Path(scratch) / "lm", seed=seed, log=log)
            (Path(scratch) / "lm").rename(model_dir)
    exemplars = cache / f"exemplars-seed{seed}.jsonl"
    exemplars.write_text("".join(json.dumps(row) + "\n" for row in feature_exemplars(world, 80, seed)))
    return exemplars, model_dir


def named(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Lines saying, for label rows (feature, label), which concept each feature was built from and its label."""
    concepts = list(default_world().categories)
    hits = sum(row["label"] == concepts[row["feature"]] for row in rows)
    return [
        "built from concept -> label: " + ", ".join(f"{concepts[r['feature']]} -> {r['label']}" for r in rows),
        f"{hits} of {len(rows)} features labelled with the concept they were built from",
    ]
