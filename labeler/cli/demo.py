"""`labeler demo`: the main job on embedded defaults (what `make demo` runs), or, with `--toy`, the synthetic toy.

The main job is `labeler run` with no config: a local Ray started in-process, the demo SAE (trained once, cached)
harvested for its first 16 features, labelled by the `minilm` discriminator; it prints each label with its
confidence. The toy (labeler/toys/demo.py) is a tiny causal LM that knows five concepts of a synthetic language, and
five features, one per concept, labelled as `labeler label` does.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="label the demo SAE's first features on a local Ray (offline, CPU); --toy: the synthetic toy",
        description="The main job on embedded defaults: `labeler run` with no config (a local Ray, the demo SAE on "
        "all-MiniLM-L6-v2, harvested and labelled offline) into a new run folder; it prints each label with its "
        "confidence. With --toy: a tiny causal LM trained on a synthetic language with five concepts, whose five "
        "concept features are labelled in this process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--toy", action="store_true", help="the synthetic toy instead of the demo SAE")
    demo.add_argument(
        "--out", default=None, help="the run folder, which must not hold a run (default: labeler-runs/demo-TIME)"
    )
    demo.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "labeler" / "demo",
        help="--toy: where the toy model and exemplars are kept between runs",
    )
    demo.add_argument("--seed", type=int, default=0, help="--toy: seed of the toy world, model and labelling")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars, only the start and end lines")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from labeler.cli.errors import UsageError
    from labeler.cli.labelling import execute
    from labeler.run.config import ConfigError
    from labeler.run.loading import load_config
    from labeler.run.service import check_new_out
    from labeler.run.sink import SinkConfig

    out = args.out or f"labeler-runs/{'toy' if args.toy else 'demo'}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:  # before any model is trained: a folder the demo may not write into is refused at once
        check_new_out(out, SinkConfig())
    except ConfigError as err:
        raise UsageError(f"--out: {err}") from err
    flags = argparse.Namespace(no_progress=args.no_progress, address=None)
    if not args.toy:
        return execute(load_config(None, {"out": out}), flags, resume=False, on_ray=True)
    from labeler.store.dataset import read_runs
    from labeler.toys import demo

    exemplars, model_dir = demo.build(args.cache, args.seed, log=lambda line: print(line, file=sys.stderr))
    overrides = {"source.exemplars": str(exemplars), "discriminator": f"hf:{model_dir}", "out": out}
    config = load_config(None, overrides | {"label.optimiser.seed": args.seed})
    status = execute(config, flags, resume=False, on_ray=False)
    if status:
        return status
    rows = read_runs([out]).labels.select(["feature", "label"]).sort_by("feature").to_pylist()
    print("\n" + "\n".join(demo.named(rows)))
    return 0
