"""`labeler query`, `export` and `report`: the label dataset of runs at URLs (folders or s3://bucket/prefix)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from labeler.cli.errors import UsageError
from labeler.cli.upload import add_model_name_flag, model_names_from


def add_parser(commands: Any) -> None:
    """`query`, `export` and `report`: the label dataset of runs at URLs (folders or s3://bucket/prefix)."""
    data_help = (
        "a run: a local folder or s3://bucket/prefix holding labels/ (repeat to read several runs together; "
        "S3 settings come from the usual AWS variables, e.g. AWS_ENDPOINT_URL)"
    )
    query = commands.add_parser(
        "query",
        help="run SQL (DuckDB) over the labels of one or several runs",
        description="Run one SQL statement over the committed labels of the runs, exposed as the table `labels` "
        "(and `exemplars` where a run stores them); `run_id` tells runs apart. Columns: docs/schema.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    query.add_argument("--data", action="append", required=True, metavar="URL", help=data_help)
    query.add_argument("sql", help='the SQL statement, e.g. "SELECT feature, label FROM labels LIMIT 5"')
    query.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    query.set_defaults(run=run_query)

    export = commands.add_parser(
        "export",
        help="export labels as Neuronpedia explanations or JSON lines",
        description="neuronpedia: OUT/{modelId}/{layer}/explanations/batch-N.jsonl.gz, the layout and fields of "
        "Neuronpedia's explanation exports, labelled features only. jsonl: OUT is one file, every row and column.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument("--data", action="append", required=True, metavar="URL", help=data_help)
    export.add_argument("--format", choices=["neuronpedia", "jsonl", "delphi"], required=True, help="output format")
    export.add_argument("--scores", type=Path, default=None, help="delphi: the scores file `labeler score` wrote")
    export.add_argument("--out", required=True, type=Path, help="output folder (neuronpedia) or file (jsonl)")
    export.add_argument("--model-id", default=None, help="Neuronpedia modelId (default: the run's model)")
    export.add_argument("--source-id", default=None, help="Neuronpedia source id, e.g. 6-res-jb (default: sae_id)")
    export.add_argument("--author-id", default="labeler", help="Neuronpedia authorId of the explanations")
    add_model_name_flag(export)
    export.set_defaults(run=run_export)

    report = commands.add_parser(
        "report",
        help="write a static HTML page about a run",
        description="One self-contained HTML file: run summary, histograms of held-out AUROC and activation "
        "frequency, and the best and worst labelled features next to their top activating examples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    report.add_argument("run_url", metavar="RUN_URL", help="the run: a local folder or s3://bucket/prefix")
    report.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file to write")
    report.add_argument("--top", type=int, default=10, help="best and worst features listed, each")
    report.add_argument(
        "--force", action="store_true", help="replace --out when it is a report this command wrote before"
    )
    report.set_defaults(run=run_report)


def run_query(args: argparse.Namespace) -> int:
    from labeler.store.dataset import read_runs
    from labeler.store.query import render
    from labeler.store.query import run_query as query

    result = query(read_runs(args.data), args.sql)
    sys.stdout.write(render(result, args.format))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from labeler.cli import score
    from labeler.store.dataset import read_runs

    if args.format == "delphi":
        return score.export_delphi(args)
    from labeler.store.export import neuronpedia_explanations, neuronpedia_scores, write_jsonl, write_neuronpedia

    labels = read_runs(args.data).labels
    if args.format == "jsonl":
        print(f"wrote {labels.num_rows} rows to {write_jsonl(labels, args.out)}", file=sys.stderr)
        return 0
    names = model_names_from(args)
    rows = neuronpedia_explanations(labels, args.author_id, args.model_id, args.source_id, names)
    scores = neuronpedia_scores(labels, args.author_id, args.model_id, args.source_id, names)
    paths = write_neuronpedia(rows, args.out)
    score_paths = write_neuronpedia(scores, args.out, "explanation-scores")
    print(
        f"wrote {len(rows)} explanations in {len(paths)} batch file(s) and {len(scores)} explanation scores in "
        f"{len(score_paths)} under {args.out}",
        file=sys.stderr,
    )
    return 0


def run_report(args: argparse.Namespace) -> int:
    from labeler.store.dataset import read_runs
    from labeler.store.report import render_report

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    _check_report_out(args.out, args.force)
    data = read_runs([args.run_url])
    page = render_report(data.labels, data.exemplars, title=f"labeler run {args.run_url}", top_n=args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.force:
        args.out.write_text(page)
    else:
        try:
            with args.out.open("x") as f:  # create-only: a file that appeared meanwhile is not replaced
                f.write(page)
        except FileExistsError:
            _check_report_out(args.out, force=False)
            raise
    print(f"wrote {args.out} ({data.labels.num_rows} features)", file=sys.stderr)
    return 0


def _check_report_out(out: Path, force: bool) -> None:
    """Refuse an --out that exists, unless --force and it is a page `labeler report` wrote (its marker line)."""
    from labeler.store.report import REPORT_MARKER

    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the HTML file to write")
    if not out.exists():
        return
    if not force:
        raise UsageError(
            f"--out {out} already exists; choose a new --out, or --force to replace a report written before"
        )
    with out.open("rb") as f:
        head = f.read(256)
    if REPORT_MARKER.encode() not in head:
        raise UsageError(
            f"--out {out} is not a report `labeler report` wrote (no {REPORT_MARKER!r} at its start); --force replaces "
            "only those, so it is kept: choose a new --out"
        )
