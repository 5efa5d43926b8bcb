"""`labeler score`: independent scores of a run's labels and their token-identity baselines (labeler/judge/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from labeler.cli.errors import UsageError
from labeler.discriminators.config import parse_spec
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
    for flag, name in (("--heldout-fraction", "heldout_fraction"), ("--active-threshold", "active_threshold")):
        score.add_argument(
            flag,
            type=float,
            default=None,
            help=f"the run's label.{name}, which is read from its manifest; give it only for a run whose manifest "
            f"does not record it (default then: {getattr(LabelConfig, name)})",
        )
    score.add_argument("--device", default="auto", help="torch device of the judges")
    score.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> int:
    from labeler.store.dataset import read_manifest, read_runs

    scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
    unknown = sorted(set(scorers) - set(SCORERS))
    if unknown or not scorers:
        raise UsageError(f"unknown scorer(s) {unknown}; choose among {', '.join(SCORERS)}")
    for spec in args.judge:
        try:
            parse_spec(spec)
        except ValueError:
            raise UsageError(
                f"--judge {spec!r} is not a judge: give hf:MODEL_DIR (a causal LM: detection and word scorers), "
                "minilm or embedding:MODEL_DIR (a sentence encoder: embedding and word scorers)"
            ) from None
    path = _scores_path(args.out)
    settings = _run_settings(read_manifest(args.run_url), args)
    data = read_runs([args.run_url])
    if data.exemplars is None:
        raise UsageError(f"{args.run_url} has no exemplars to judge its labels on (no exemplars/ and no manifest link)")
    labels = data.labels.filter(pc.equal(data.labels.column("status"), "labelled")).to_pylist()
    chosen_by = {row["discriminator"] for row in labels}
    if chosen_by & set(args.judge):
        raise UsageError(f"judge {sorted(chosen_by & set(args.judge))} chose these labels; pass another --judge")
    fresh = {f.feature: f for f in group_by_feature(read_exemplars(args.fresh))} if args.fresh else {}
    judges = build_judges(args.judge, scorers, args.device)
    by_feature = {f.feature: f for f in group_by_feature(data.exemplars)}
    out: list[Score] = []
    for row in labels:
        config = LabelConfig(
            optimiser=OptimiserConfig(seed=row["seed"]),
            heldout_fraction=settings["heldout_fraction"],
            active_threshold=settings["active_threshold"],
        )
        examples = by_feature[row["feature"]]
        judged = _examples(examples, fresh.get(row["feature"]), config, row["n_heldout"], bool(args.fresh))
        for kind, label in (("label", row["label"]), ("token_baseline", token_baseline(examples, config))):
            for judge in judges:
                score = judge.score(judged, label, kind)  # type: ignore[arg-type]
                out.append(Score(**{**score.__dict__, "run_id": row["run_id"], "hook_point": row["hook_point"]}))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as f:  # create-only: a file that appeared meanwhile is not replaced
        pq.write_table(scores_table(out), f)
    print(f"wrote {len(out)} scores of {len(labels)} features to {path}", file=sys.stderr)
    return 0


def _scores_path(out: Path) -> Path:
    """The file --out names (a .parquet file, or scores.parquet in a folder); refused, before any work, where it
    exists or cannot be made."""
    path = out if out.suffix == ".parquet" else out / "scores.parquet"
    if path.exists() or path.is_symlink():
        raise UsageError(f"--out: {path} already exists; scores are never written over: choose a new --out")
    if out.suffix != ".parquet" and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; give a new .parquet file or a folder")
    existing = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, so the folder cannot be made; choose another --out")
    return path


def _run_settings(manifest: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """label.heldout_fraction and label.active_threshold of the run (how it split each feature's examples), from
    its manifest; a flag only where the manifest does not record the setting, else it must agree with it."""
    config = manifest.get("config")
    recorded = config.get("label") if isinstance(config, dict) else None
    settings = {}
    for name in ("heldout_fraction", "active_threshold"):
        given = getattr(args, name)
        stored = recorded.get(name) if isinstance(recorded, dict) else None
        flag = "--" + name.replace("_", "-")
        if stored is not None and given is not None and float(given) != float(stored):
            raise UsageError(
                f"{flag} {given:g}, but {args.run_url} was labelled with label.{name} {stored:g} (its manifest.json); "
                f"the held-out examples are the run's only with its own value: leave out {flag}"
            )
        if stored is not None:
            settings[name] = float(stored)
        else:
            settings[name] = float(given) if given is not None else getattr(LabelConfig, name)
    return settings


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
        raise UsageError("--format delphi needs --scores FILE (what `labeler score` wrote)")
    paths = write_delphi_scores(pq.read_table(args.scores), args.out)
    print(f"wrote {len(paths)} delphi score files under {args.out / 'scores'}", file=sys.stderr)
    return 0
