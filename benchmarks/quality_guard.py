"""CI's label-quality guard: the default method on a fixed sample of a shipped testbed LM's categories.

    python benchmarks/quality_guard.py --scale small|bench [--record]

Builds the taxonomy testbed from the LM shipped for the scale (labeler/data/testbed/<scale>) with the sample of
categories that benchmarks/data/quality-guard.json lists for it, labels its features as `labeler label` does by
default (the causal-LM kind's default optimiser settings, `load_config`), and prints one JSON line: how many labels
are an acceptable name. `--record` writes that count, the LM's sha256 and how it was measured into
quality-guard.json; tests/test_benchmarks.py's guard then fails when a change names fewer on the same LM. The figure
is a regression guard, not a target: it is only compared on the LM it was recorded on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from labeler.discriminators.config import build_discriminator
from labeler.optimise.labelling import label_chunk
from labeler.records.exemplars import group_by_feature, read_exemplars
from labeler.run.loading import load_config
from labeler.toys import taxonomy

GUARD = Path(__file__).resolve().parent / "data" / "quality-guard.json"
"""Per scale: the sample of categories, and the figure recorded on the shipped LM (null until recorded)."""


def recorded(scale: str, guard: Path = GUARD) -> dict[str, Any]:
    """The guard's entry for `scale`: "categories", and "named", "lm_sha256", "measured" (null until recorded)."""
    entries: dict[str, dict[str, Any]] = json.loads(guard.read_text(encoding="utf-8"))
    if scale not in entries:
        raise SystemExit(f"{guard} has no entry for the {scale} scale; add its sample of categories first")
    return entries[scale]


def shipped_lm_sha256(scale: str) -> str | None:
    """The sha256 of the shipped LM's weights (None: no LM ships for `scale`)."""
    manifest = taxonomy.shipped_manifest(scale)
    return None if manifest is None else str(manifest["files"]["lm/model.safetensors"])


def measure(scale: str, workdir: Path, guard: Path = GUARD) -> dict[str, Any]:
    """Label the guard's sample of `scale` with the defaults, in a testbed built under `workdir` from the shipped LM."""
    categories = recorded(scale, guard)["categories"]
    sample = workdir / "categories.txt"
    sample.write_text("".join(f"{c}\n" for c in categories), encoding="utf-8")
    folder = workdir / scale
    taxonomy.build(scale, folder, categories_file=sample, seed=0, log=lambda line: print(line, file=sys.stderr))
    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    config = load_config(None, {"discriminator": f"hf:{folder / 'lm'}"})  # what `labeler label` runs with
    disc = build_discriminator(config.discriminator)
    features = list(group_by_feature(read_exemplars(folder / "exemplars.jsonl")))
    started = time.perf_counter()
    records = label_chunk(disc, features, config.label)
    seconds = time.perf_counter() - started
    labels = [(record.label or "").strip().lower() for record in records]
    names = [{n.replace("_", " ").lower() for n in truth[str(r.feature)]["names"]} for r in records]
    named = [label in accepted for label, accepted in zip(labels, names, strict=True)]
    return {
        "scale": scale,
        "features": len(records),
        "named": sum(named),
        "labels": dict(zip(categories, labels, strict=True)),
        "not_named": [c for c, ok in zip(categories, named, strict=True) if not ok],
        "lm_sha256": shipped_lm_sha256(scale),
        "seconds": round(seconds, 1),
    }


def shortfall(result: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """Why `result` fails the guard's recorded `entry` (None: it passes): fewer named, or another LM."""
    if result["lm_sha256"] != entry["lm_sha256"]:
        return (
            f"the shipped {result['scale']} LM (sha256 {result['lm_sha256']}) is not the one the figure was recorded "
            f"on ({entry['lm_sha256']}): record it again, `python benchmarks/quality_guard.py --scale "
            f"{result['scale']} --record`"
        )
    if result["named"] < entry["named"]:
        return (
            f"the default names {result['named']} of the {result['features']} {result['scale']} guard categories, "
            f"fewer than the {entry['named']} recorded; not named now: {result['not_named']}"
        )
    return None


def record(result: dict[str, Any], command: str, guard: Path = GUARD) -> None:
    """Write `result`'s figure into the guard file, with the LM it was measured on and how."""
    entries = json.loads(guard.read_text(encoding="utf-8"))
    entries[result["scale"]] |= {
        "named": result["named"],
        "lm_sha256": result["lm_sha256"],
        "measured": {
            "command": command,
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
            "labelling_seconds": result["seconds"],
            "labels": result["labels"],
        },
    }
    guard.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(taxonomy.SCALES), required=True)
    parser.add_argument("--record", action="store_true", help="write the figure into " + str(GUARD))
    args = parser.parse_args()
    if shipped_lm_sha256(args.scale) is None:
        parser.error(f"no {args.scale} LM ships with this checkout: ship one first (`labeler testbed ship`)")
    with tempfile.TemporaryDirectory(prefix="quality_guard-") as scratch:
        try:
            result = measure(args.scale, Path(scratch))
        except taxonomy.TaxonomyError as err:
            parser.error(str(err))
    print(json.dumps(result))
    if args.record:
        record(result, "python benchmarks/quality_guard.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
