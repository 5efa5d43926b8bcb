"""The product's default labels on the taxonomy testbed, against each feature's truth, with their confidence.

    python benchmarks/testbed_labels.py --scale small|bench --categories FILE [FILE ...] [--calibration FILE]
        [--set KEY=VALUE ...] [--signals-out FILE] [--out benchmarks/results/testbed_labels-DATE-cpu.md]

Builds the testbed from the shipped LM (labeler/data/testbed/<scale>) for the features each categories file lists
(concepts, and the kinds `mix:`, `graded:`, `none:`; labeler/toys/taxonomy.py), labels them as `labeler label` does
by default for a causal LM (`load_config`, `label_chunk`), and scores each label against truth.json: a concept or
graded feature is named by one of its category's names, a mixture by either category's, and a no-concept feature by
nothing. Prints one JSON line per feature and a summary per kind; writes the Markdown table to --out and every
labelled feature's confidence signals with its truth to --signals-out (the input of benchmarks/confidence_fit.py).
Unlike benchmarks/label_quality.py it runs the whole labelling path (token labels, confidence), one method: the
default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from confidence_fit import emit, signal_row

from labeler.discriminators.config import build_discriminator
from labeler.optimise.labelling import label_chunk
from labeler.records.exemplars import group_by_feature, read_exemplars
from labeler.run.loading import load_config, parse_override
from labeler.toys import taxonomy


def label_testbed(scale: str, categories: Path, workdir: Path, overrides: dict[str, Any]) -> tuple[list[dict], float]:
    """One row per feature of the testbed built for `categories`: its label, its truth and whether it names it."""
    folder = workdir / categories.stem
    taxonomy.build(scale, folder, categories_file=categories, seed=0, log=lambda line: print(line, file=sys.stderr))
    truth = json.loads((folder / "truth.json").read_text(encoding="utf-8"))
    config = load_config(None, {"discriminator": f"hf:{folder / 'lm'}", **overrides})
    disc = build_discriminator(config.discriminator)
    features = list(group_by_feature(read_exemplars(folder / "exemplars.jsonl")))
    started, records = time.perf_counter(), []
    size = config.label.features_per_batch
    for start in range(0, len(features), size):
        records += label_chunk(disc, features[start : start + size], config.label)
        print(f"{categories.name}: labelled {len(records)} of {len(features)} features", file=sys.stderr)
    seconds = time.perf_counter() - started
    rows = []
    for record in records:
        entry = truth[str(record.feature)]
        names = {name.replace("_", " ").lower() for name in entry["names"]}
        label = (record.label or "").strip().lower()
        named = entry["kind"] != "none" and record.label_kind == "concept" and label in names
        row = signal_row(record, named)
        rows.append({"set": categories.name, **row, "truth": entry["kind"], "categories": entry["categories"]})
    return rows, seconds


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_kind[row["truth"]].append(row)
    out = {}
    for kind, group in sorted(by_kind.items()):
        right = [r for r in group if r["named"]]
        wrong = [r for r in group if not r["named"]]
        out[kind] = {
            "features": len(group),
            "named": len(right),
            "right_flagged_low": sum(r["confidence"] == "low" for r in right),
            "wrong_flagged_low": sum(r["confidence"] == "low" for r in wrong),
            "wrong": len(wrong),
        }
    return out


def markdown(rows: list[dict[str, Any]], total: dict[str, dict[str, Any]], command: str, seconds: float) -> str:
    lines = [
        f"# The default's labels on the taxonomy testbed, with their confidence "
        f"({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}`; labelling took {seconds:.0f} s ({seconds / max(len(rows), 1):.1f} s per feature) on "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}.",
        "",
        "| truth kind | features | named | right flagged low | wrong flagged low |",
        "|---|---|---|---|---|",
        *[
            f"| {kind} | {t['features']} | {t['named']} | {t['right_flagged_low']} of {t['named']} | "
            f"{t['wrong_flagged_low']} of {t['wrong']} |"
            for kind, t in total.items()
        ],
        "",
        "| set | feature | truth | categories | label | named | held-out AUROC | confidence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        auroc = "" if r["heldout_auroc"] is None else f"{r['heldout_auroc']:.3f}"
        score = "" if r["confidence_score"] is None else f"{r['confidence_score']:.2f} {r['confidence']}"
        truth = f"{r['truth']} | {' + '.join(r['categories'])}"
        lines.append(
            f"| {r['set']} | {r['feature']} | {truth} | {r['label'] or r['status']} | {'yes' if r['named'] else 'no'} "
            f"| {auroc} | {score} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(taxonomy.SCALES), required=True)
    parser.add_argument("--categories", type=Path, nargs="+", required=True, help="categories files (feature sets)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a labelling setting")
    parser.add_argument("--calibration", help="a confidence calibration file instead of the shipped one")
    parser.add_argument("--signals-out", type=Path, help="every labelled feature's signals and truth (JSON lines)")
    parser.add_argument("--out", type=Path, help="the Markdown table")
    args = parser.parse_args()
    overrides = dict(parse_override(text) for text in args.set)
    if args.calibration:
        overrides["label.calibration"] = args.calibration
    rows: list[dict[str, Any]] = []
    seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="testbed_labels-") as scratch:
        for categories in args.categories:
            try:
                found, took = label_testbed(args.scale, categories, Path(scratch), overrides)
            except taxonomy.TaxonomyError as err:
                parser.error(str(err))
            rows, seconds = rows + found, seconds + took
    total = summary(rows)
    emit(rows, total, seconds, args.signals_out)
    if args.out:
        command = "python " + shlex.join(["benchmarks/testbed_labels.py", *sys.argv[1:]])
        args.out.write_text(markdown(rows, total, command, seconds), encoding="utf-8")


if __name__ == "__main__":
    main()
