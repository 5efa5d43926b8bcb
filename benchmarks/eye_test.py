"""The eye test on the demo SAE: labels and confidences against what a person saw in each feature.

    python benchmarks/eye_test.py --split tuning|report [--harvest DIR] [--set KEY=VALUE ...] [--calibration FILE]
        [--signals-out FILE] [--out benchmarks/results/eye_test-DATE-cpu.md]

Harvests the demo SAE as benchmarks/data/demo-sae-eye-truth.json's header says (or reads `--harvest DIR`, a folder
that harvest wrote), labels the features of one half of the split with the default of the `minilm` discriminator (as
`labeler label` does; `--set` changes a setting, e.g. `--set label.token_share=null`), and scores every label
against the truth (benchmarks/eye_truth.py): the share of features showing a concept or a token pattern that are
named, the share of wrong labels (and labels of features that show nothing) flagged low, and the share of right
labels flagged low. With `--set label.baseline=exhaustive` it also says on how many concept features the best single
token (exhaustive search on the held-out examples) is a word the person accepts: where it is not, the discriminator
itself, not the search, is the bound. Tune on the tuning half (features 0-63); report on the report half (64-127)
only what was fixed before. Features 256 and above are never read: an independent check uses them.

Prints one JSON line per feature and a summary line, writes the Markdown table (with the command, the machine and the
time) to --out, and the confidence signals of every labelled feature with its truth to --signals-out (the input of
benchmarks/confidence_fit.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import torch
from confidence_fit import emit, signal_row
from eye_truth import EyeTruth, is_named, load_truth

from labeler.discriminators.config import build_discriminator
from labeler.optimise.labelling import label_chunk
from labeler.records.exemplars import group_by_feature
from labeler.records.labels import LabelRecord
from labeler.run.loading import load_config, parse_override

TRUTH = Path(__file__).resolve().parent / "data" / "demo-sae-eye-truth.json"


def harvest_for(truth: EyeTruth, into: Path) -> Path:
    """Harvest the demo SAE into `into`/harvest as the truth's header says (`labeler harvest --demo`)."""
    folder = into / "harvest"
    settings = truth.header["harvest"]["settings"]
    command = [sys.executable, "-m", "labeler.cli", "harvest", "--demo", "--out", str(folder)]
    command += ["--tokens", str(settings["tokens"]), "--features", settings["features"].split()[0]]
    subprocess.run(command, check=True)
    return folder


def label(folder: Path, features: list[int], overrides: dict[str, Any]) -> tuple[list[LabelRecord], float]:
    """The labels of `features` (harvested in `folder`) with minilm's defaults and `overrides`; and seconds taken."""
    config = load_config(None, {"discriminator": "minilm", **overrides})
    table = ds.dataset(str(folder / "exemplars")).to_table(
        filter=ds.field("feature").isin(features), columns=["feature", "context", "target", "activation"]
    )
    exemplars = list(group_by_feature(table))
    disc = build_discriminator(config.discriminator)
    started = time.perf_counter()
    records = []
    size = config.label.features_per_batch
    for start in range(0, len(exemplars), size):
        records += label_chunk(disc, exemplars[start : start + size], config.label)
        print(f"labelled {len(records)} of {len(exemplars)} features", file=sys.stderr)
    return records, time.perf_counter() - started


def verdict(record: LabelRecord, truth: EyeTruth) -> dict[str, Any]:
    """One feature's row: its label, whether it names what the person saw, and its confidence."""
    seen = truth.features[record.feature]
    named = record.status == "labelled" and is_named(record.label or "", record.label_kind or "concept", seen)
    row = {**signal_row(record, named), "truth": seen.kind}
    if record.baseline_label is not None:  # `--set label.baseline=exhaustive`: the best single token, held out
        row["optimum"] = record.baseline_label
        row["optimum_named"] = is_named(record.baseline_label, "concept", seen)
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three shares, with their counts."""
    showing = [r for r in rows if r["truth"] != "none"]
    named = [r for r in showing if r["named"]]
    wrong = [r for r in rows if not r["named"]]
    return {
        "features": len(rows),
        "showing": len(showing),
        "named": len(named),
        "named_share": len(named) / max(len(showing), 1),
        "wrong_or_none": len(wrong),
        "wrong_flagged_low": sum(r["confidence"] == "low" for r in wrong),
        "wrong_flagged_share": sum(r["confidence"] == "low" for r in wrong) / max(len(wrong), 1),
        "right": len(named),
        "right_flagged_low": sum(r["confidence"] == "low" for r in named),
        "right_flagged_share": sum(r["confidence"] == "low" for r in named) / max(len(named), 1),
        "token_labels": sum(r["label_kind"] == "token" for r in rows),
        "concept": sum(r["truth"] == "concept" for r in rows),
        "concept_optimum_named": sum(bool(r.get("optimum_named")) for r in rows if r["truth"] == "concept"),
    }


def markdown(rows: list[dict[str, Any]], total: dict[str, Any], command: str, seconds: float, split: str) -> str:
    lines = [
        f"# Eye test on the demo SAE, {split} features ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `{command}`; labelling took {seconds:.0f} s ({seconds / max(len(rows), 1):.2f} s per feature) on "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}. Truth: "
        "benchmarks/data/demo-sae-eye-truth.json (written blind, before any label of these features was seen).",
        "",
        f"- features showing a concept or a token pattern that are named: **{total['named']} of {total['showing']} "
        f"({total['named_share']:.0%})**",
        f"- wrong labels and labels of features that show nothing, flagged low: **{total['wrong_flagged_low']} of "
        f"{total['wrong_or_none']} ({total['wrong_flagged_share']:.0%})**",
        f"- right labels flagged low: **{total['right_flagged_low']} of {total['right']} "
        f"({total['right_flagged_share']:.0%})**",
        f"- token labels: {total['token_labels']}",
        *(
            [
                f"- concept features whose best single token (exhaustive search on the held-out examples) is a word "
                f"the person accepts: {total['concept_optimum_named']} of {total['concept']}"
            ]
            if any("optimum" in r for r in rows)
            else []
        ),
        "",
        "| feature | truth | label | named | held-out AUROC | confidence | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        score = "" if r["confidence_score"] is None else f"{r['confidence_score']:.2f} {r['confidence']}"
        auroc = "" if r["heldout_auroc"] is None else f"{r['heldout_auroc']:.3f}"
        label = (r["label"] or r["status"]).replace("|", "\\|")
        reason = (r["confidence_reason"] or "").replace("|", "\\|")
        lines.append(f"| {r['feature']} | {r['truth']} | {label} | {'yes' if r['named'] else 'no'} | {auroc} | "
                     f"{score} | {reason} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("tuning", "report"), required=True)
    parser.add_argument("--harvest", type=Path, help="a harvest folder made with the truth's settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a labelling setting")
    parser.add_argument("--calibration", help="a confidence calibration file instead of the shipped one")
    parser.add_argument("--signals-out", type=Path, help="write every feature's signals and truth here (JSON lines)")
    parser.add_argument("--out", type=Path, help="the Markdown table")
    args = parser.parse_args()
    truth = load_truth(TRUTH)
    overrides = dict(parse_override(text) for text in args.set)
    if args.calibration:
        overrides["label.calibration"] = args.calibration
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.harvest or harvest_for(truth, Path(scratch))
        records, seconds = label(folder, truth.split(args.split), overrides)
    rows = [verdict(record, truth) for record in records]
    total = summary(rows)
    emit(rows, total, seconds, args.signals_out)
    if args.out:
        command = "python " + shlex.join(["benchmarks/eye_test.py", *sys.argv[1:]])
        args.out.write_text(markdown(rows, total, command, seconds, args.split), encoding="utf-8")


if __name__ == "__main__":
    main()
