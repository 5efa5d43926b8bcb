"""`labeler demo`: the older toy (labeler/toys/demo.py) labelled by `labeler label`'s run."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="train a tiny LM on a synthetic language, then label its concept features (offline, CPU)",
        description="A small toy (the main job on embedded defaults is `labeler run`): builds (once, cached) a "
        "tiny causal LM that knows five concepts of a synthetic language, writes exemplars of five features, one "
        "per concept, and labels them as `labeler label` does.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "labeler" / "demo",
        help="where the demo model and exemplars are kept between runs",
    )
    demo.add_argument(
        "--out", default=None, help="the run folder, which must not hold a run (default: labeler-runs/toy-TIME)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the demo world, model and labelling")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from labeler.cli.errors import UsageError
    from labeler.cli.labelling import execute
    from labeler.run.config import ConfigError, load_config
    from labeler.run.service import check_new_out
    from labeler.run.sink import SinkConfig
    from labeler.store.dataset import read_runs
    from labeler.toys import demo

    out = args.out or f"labeler-runs/toy-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:  # before the model is trained: a folder the demo may not write into is refused at once
        check_new_out(out, SinkConfig())
    except ConfigError as err:
        raise UsageError(f"--out: {err}") from err
    exemplars, model_dir = demo.build(args.cache, args.seed, log=lambda line: print(line, file=sys.stderr))
    overrides = {"source.exemplars": str(exemplars), "discriminator": f"hf:{model_dir}", "out": out}
    config = load_config(None, overrides | {"label.optimiser.seed": args.seed})
    status = execute(config, argparse.Namespace(no_progress=False), resume=False, on_ray=False)
    if status:
        return status
    rows = read_runs([out]).labels.select(["feature", "label"]).sort_by("feature").to_pylist()
    print("\n" + "\n".join(demo.named(rows)))
    return 0
