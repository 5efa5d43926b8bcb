"""The embedded-defaults job: a tiny LM that knows five concepts, five features, `labeler label` on them.

Everything is built locally and offline: the synthetic world's model is trained once (about a minute on
a CPU) and cached; the exemplars are regenerated each run. Each feature was built from one concept, so
the printout shows whether its label names that concept.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from labeler import cli
from labeler.records.labels import read_labels
from labeler.toys.synthetic import default_world, feature_exemplars, train_tiny_lm


def run(cache: Path, out: Path, seed: int) -> int:
    world = default_world()
    model_dir = cache / f"lm-seed{seed}"
    if not (model_dir / "config.json").exists():
        print(f"training the demo LM once (about a minute), cached in {model_dir}", file=sys.stderr)
        cache.mkdir(parents=True, exist_ok=True)
        # Train into a scratch folder and rename it, so an interrupted run never leaves half a model behind.
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            train_tiny_lm(world, Path(scratch) / "lm", seed=seed, log=lambda line: print(line, file=sys.stderr))
            (Path(scratch) / "lm").rename(model_dir)
    exemplars = cache / f"exemplars-seed{seed}.jsonl"
    exemplars.write_text("".join(json.dumps(row) + "\n" for row in feature_exemplars(world, 80, seed)))
    if out.exists():
        shutil.rmtree(out)
    status = cli.main(
        [
            "label",
            "--exemplars",
            str(exemplars),
            "--discriminator",
            f"hf:{model_dir}",
            "--out",
            str(out),
            "--seed",
            str(seed),
        ]
    )
    if status:
        return status
    concepts = list(world.categories)
    rows = read_labels(out).select(["feature", "label"]).to_pylist()
    named = sum(row["label"] == concepts[row["feature"]] for row in rows)
    print("\nbuilt from concept -> label: " + ", ".join(f"{concepts[r['feature']]} -> {r['label']}" for r in rows))
    print(f"{named} of {len(rows)} features labelled with the concept they were built from")
    return 0
