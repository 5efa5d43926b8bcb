"""`labeler testbed`: the taxonomy testbed (labeler/toys/taxonomy.py), an LM with features whose right label is known.

`build` writes a testbed folder from the LM that ships with the package (seconds), or trains one (`--retrain`);
`categories` lists the categories a scale knows; `ship` (for maintainers) makes a built testbed's LM the shipped one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SCALE_NAMES = ("small", "bench")
"""The scales of labeler.toys.taxonomy.SCALES (named here so that `labeler --help` loads no model code)."""

FEATURE_LINES = """\
The categories file lists the features, one a line (# comments):
  dog                a concept: fires on dog's members
  mix:dog+tableware  a mixture of two unrelated categories: naming either is right
  graded:hawk        graded activations (growing with each word's typicality), a few false positives and misses
  none:7             no concept: 25 member words drawn at random with seed 7; no category name is right
"""


def add_parser(commands: Any) -> None:
    testbed = commands.add_parser(
        "testbed",
        help="the taxonomy testbed: a tiny LM that learned WordNet's noun hierarchy, and features with known labels",
        description="The taxonomy testbed: a tiny Llama trained on WordNet's noun hierarchy to answer the paper's "
        "question, and SAE-style features whose right label is known (truth.json). Its LMs ship with the package.",
    )
    actions = testbed.add_subparsers(dest="testbed_command", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="write a testbed folder: the shipped LM (or a retrained one), exemplars, truth",
        description="Write OUT/lm, OUT/exemplars.jsonl, OUT/truth.json, OUT/categories.txt and OUT/accuracy.json.\n"
        "The LM is copied from the package (seconds; its checksums are checked) when it is what this code trains\n"
        "for the scale and seed; else the build stops and says to retrain. --retrain trains one (small: minutes;\n"
        "bench: more than an hour on two CPU cores); figures measured on it differ from the shipped LM's.",
        epilog=FEATURE_LINES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("--scale", choices=SCALE_NAMES, required=True, help="small (CI) or bench (the benchmark's)")
    build.add_argument("--out", type=Path, required=True, help="the testbed folder to write (new or empty)")
    build.add_argument(
        "--categories", type=Path, help="the features, one a line (default: the scale's fixed sample of categories)"
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the exemplars and of a retrained LM (default 0)")
    build.add_argument("--retrain", action="store_true", help="train the LM instead of copying the shipped one")
    build.set_defaults(run=run_build)
    listing = actions.add_parser("categories", help="print every category of a scale, one a line")
    listing.add_argument("--scale", choices=SCALE_NAMES, required=True)
    listing.set_defaults(run=run_categories)
    ship = actions.add_parser(
        "ship",
        help="(maintainers) make a built testbed's LM the one that ships with the package",
        description="Copy FROM/lm and FROM/accuracy.json to INTO/SCALE/ with a manifest of their sha256 and the "
        "cache key this code trains under (replacing the LM shipped before). Ship only an LM this code trained "
        "(`labeler testbed build --retrain`), and commit it once: keep one version of it in the history.",
    )
    ship.add_argument("--scale", choices=SCALE_NAMES, required=True)
    ship.add_argument("--from", dest="source", type=Path, required=True, help="a testbed folder built with --retrain")
    ship.add_argument(
        "--into",
        type=Path,
        default=None,
        help="the package's folder of shipped LMs (default: labeler/data/testbed of the labeler package imported)",
    )
    ship.set_defaults(run=run_ship)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_build(args: argparse.Namespace) -> int:
    from labeler.toys import taxonomy

    report = taxonomy.build(
        args.scale, args.out, categories_file=args.categories, seed=args.seed, retrain=args.retrain, log=_log
    )
    print(json.dumps(report))
    return 0


def run_categories(args: argparse.Namespace) -> int:
    from labeler.toys import taxonomy

    print("\n".join(taxonomy.load_taxonomy(taxonomy.SCALES[args.scale]).members))
    return 0


def run_ship(args: argparse.Namespace) -> int:
    from labeler.cli.errors import UsageError
    from labeler.toys import taxonomy

    into = args.into or Path(taxonomy.__file__).resolve().parents[1] / taxonomy.SHIPPED_RESOURCE
    if not into.is_dir():
        raise UsageError(f"--into {into} is not a folder; name the package's labeler/data/testbed")
    folder = taxonomy.ship(args.source, args.scale, into)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(json.dumps({"shipped": str(folder), "megabytes": round(size / 1e6, 2)}))
    return 0
