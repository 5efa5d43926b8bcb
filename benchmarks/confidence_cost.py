"""What the confidence costs: its time per feature against labelling's, on the same features, in one run.

    python benchmarks/confidence_cost.py --exemplars PATH --discriminator SPEC [--features N] [--set KEY=VALUE ...]

Labels the first N features of the exemplars (a JSONL file or a folder of Parquet parts) with the discriminator's
default, as `labeler label` does, in batches of `label.features_per_batch`, and times apart, per batch: the labelling
(encoding the examples and the optimiser) and the confidence (the token label, the signals against the label's rivals
and the calibrated model: labeler/optimise/labelling.py's `assess`). Prints one JSON line: both times per feature and
their ratio (the confidence's share of labelling alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from labeler.discriminators.config import build_discriminator
from labeler.optimise.engine import optimise
from labeler.optimise.labelling import assess, prepare_tasks, with_target_ids
from labeler.records.exemplars import group_by_feature, read_exemplars, unlabelable_reason
from labeler.run.loading import load_config, parse_override


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exemplars", required=True, help="a JSONL file or a folder of Parquet parts")
    parser.add_argument("--discriminator", required=True, help="hf:DIR, embedding:DIR or minilm")
    parser.add_argument("--features", type=int, default=64, help="label the first N labelable features")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a labelling setting")
    args = parser.parse_args()
    config = load_config(None, {"discriminator": args.discriminator, **dict(parse_override(t) for t in args.set)})
    label = config.label
    features = [
        f
        for f in group_by_feature(read_exemplars(args.exemplars))
        if unlabelable_reason(f, label.active_threshold) is None
    ][: args.features]
    disc = build_discriminator(config.discriminator)
    labelling = confidence = 0.0
    for start in range(0, len(features), label.features_per_batch):
        batch = features[start : start + label.features_per_batch]
        began = time.perf_counter()
        contexts, targets, tasks = prepare_tasks(batch, label)
        if label.optimiser.target_candidates:
            tasks = [with_target_ids(disc, task, targets, label.optimiser.target_candidates) for task in tasks]
        encoded = disc.encode(contexts, targets)
        labels = optimise(disc, encoded, tasks, label.optimiser)
        labelled = time.perf_counter()
        activations = np.concatenate([f.activations for f in batch])
        for task, found in zip(tasks, labels, strict=True):
            assess(disc, encoded, task, found, targets, activations, label)
        labelling, confidence = labelling + labelled - began, confidence + time.perf_counter() - labelled
    n = len(features)
    print(
        json.dumps(
            {
                "discriminator": args.discriminator,
                "features": n,
                "labelling_s_per_feature": round(labelling / n, 4),
                "confidence_s_per_feature": round(confidence / n, 4),
                "confidence_share_of_labelling": round(confidence / labelling, 4),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
            }
        )
    )


if __name__ == "__main__":
    main()
