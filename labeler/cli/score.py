"""`labeler score`: independent scores of a run's labels and their token-identity baselines (labeler/judge/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from labeler.judge.examples import JudgeExamples, JudgeExamplesError, fresh_examples, heldout_examples, token_baseline
from labeler.judge.records import SCORERS, Score, scores_table
from labeler.judge.stage import build_judges
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.labelling import LabelConfig
from labeler.records.exemplars import FeatureExemplars, group_by_feature, read_exemplars


def add_parser(commands: Any) -> None:
    score = commands.add_parser(
        "score",
        help="score a run's labels by a judge that did not choose them, on examples that did not choose them",
        description="For every labelled feature of the run, its label and its token-identity baseline (the most "
        "frequent active target) are scored on the feature's held-out examples (or fresh ones) by each scorer: "
        "detection (delphi's protocol; judge hf:DIR), embedding (delphi's; judge minilm or embedding:DIR), word "
        "(word-level AUROC under a second discriminator; any judge). Writes one Parquet row per feature x scorer x "
        "label kind.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    score.add_argument("run_url", metavar="RUN_URL", help="the run: a local folder or s3://bucket/prefix")
    score.add_argument(
        "--judge",
        action="append",
        required=True,
        metavar="SPEC",
        help="hf:DIR, embedding:DIR or "
        "minilm; repeat to give several (each scorer runs with every judge of a kind it takes)",
    )
    score.add_argument("--scorers", default="detection,embedding,word", help="comma-separated scorers")
    score.add_argument("--out", required=True, type=Path, help="a .parquet file, or a folder to hold scores.parquet")
    score.add_argument(
        "--fresh",
        default=None,
        metavar="EXEMPLARS",
        help="judge on these exemplars' rows that the "
        "run did not see (a harvest's exemplars) instead of the held-out rows",
    )
    score.add_argument("--heldout-fraction", type=float, default=LabelConfig.heldout_fraction, help="the run's")
    score.add_argument("--active-threshold", type=float, default=LabelConfig.active_threshold, help="the run's")
    score.add_argument("--device", default="auto", help="torch device of the judges")
    score.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> int:
    from labeler.store.dataset import read_runs

    scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
    unknown = sorted(set(scorers) - set(SCORERS))
    if unknown or not scorers:
        raise ValueError(f"unknown scorer(s) {unknown}; choose among {', '.join(SCORERS)}")
    data = read_runs([args.run_url])
    if data.exemplars is None:
        raise ValueError(f"{args.run_url} has no exemplars to judge its labels on (no exemplars/ and no manifest link)")
    labels = data.labels.filter(pc.equal(data.labels.column("status"), "labelled")).to_pylist()
    chosen_by = {row["discriminator"] for row in labels}
    if chosen_by & set(args.judge):
        raise ValueError(f"judge {sorted(chosen_by & set(args.judge))} chose these labels; pass another --judge")
    fresh = {f.feature: f for f in group_by_feature(read_exemplars(args.fresh))} if args.fresh else {}
    judges = build_judges(args.judge, scorers, args.device)
    by_feature = {f.feature: f for f in group_by_feature(data.exemplars)}
    out: list[Score] = []
    for row in labels:
        config = LabelConfig(
            optimiser=OptimiserConfig(seed=row["seed"]),
            heldout_fraction=args.heldout_fraction,
            active_threshold=args.active_threshold,
        )
        examples = by_feature[row["feature"]]
        judged = _examples(examples, fresh.get(row["feature"]), config, row["n_heldout"], bool(args.fresh))
        for kind, label in (("label", row["label"]), ("token_baseline", token_baseline(examples, config))):
            for judge in judges:
                score = judge.score(judged, label, kind)  # type: ignore[arg-type]
                out.append(Score(**{**score.__dict__, "run_id": row["run_id"], "hook_point": row["hook_point"]}))
    path = args.out / "scores.parquet" if args.out.suffix != ".parquet" else args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(scores_table(out), path)
    print(f"wrote {len(out)} scores of {len(labels)} features to {path}", file=sys.stderr)
    return 0


def _examples(
    examples: FeatureExemplars, pool: FeatureExemplars | None, config: LabelConfig, n_heldout: int, fresh: bool
) -> JudgeExamples:
    if not fresh:
        return heldout_examples(examples, config, expected=n_heldout)
    if pool is None:
        raise JudgeExamplesError(f"feature {examples.feature} has no rows in --fresh")
    return fresh_examples(examples, pool, config.active_threshold)


def export_delphi(args: argparse.Namespace) -> int:
    """`labeler export --format delphi --scores FILE`: delphi's per-latent score files under --out."""
    from labeler.store.export import write_delphi_scores

    if args.scores is None:
        raise ValueError("--format delphi needs --scores FILE (what `labeler score` wrote)")
    paths = write_delphi_scores(pq.read_table(args.scores), args.out)
    print(f"wrote {len(paths)} delphi score files under {args.out / 'scores'}", file=sys.stderr)
    return 0
