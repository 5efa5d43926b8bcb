"""`labeler import`: exemplars from the caches other tools wrote (delphi's latent cache, Neuronpedia's export).

Parses the command line and prints the result; the reading is labeler/harvest/delphi_cache.py and
labeler/harvest/neuronpedia_cache.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from labeler.cli.options import DELPHI_SECTIONS, add_config_flags, settings_from
from labeler.harvest.delphi_cache import DelphiImportConfig
from labeler.harvest.exemplar_parts import ImportManifest
from labeler.run.loading import build


def add_parser(commands: Any) -> None:
    """Register `import` with its subcommands `delphi-cache` and `neuronpedia`."""
    command = commands.add_parser(
        "import",
        help="import exemplars from a delphi latent cache or a Neuronpedia export",
        description="Write exemplars in the layout of `labeler harvest` (OUT/exemplars/part-NNNNN.parquet, "
        "OUT/features.parquet with dead features included, OUT/manifest.json) from another tool's cache, ready "
        "for `labeler run --exemplars OUT/exemplars --features OUT/features.parquet`.",
    )
    sources = command.add_subparsers(dest="source", required=True, metavar="SOURCE")

    delphi = sources.add_parser(
        "delphi-cache",
        help="a delphi latent cache: latents/<hook>/<start>_<end>.safetensors",
        description="Import a latent cache written by EleutherAI delphi's LatentCache.save_splits: each latent's "
        "top, quantile and inactive examples chosen as `labeler harvest` chooses them, contexts decoded from the "
        "cached token windows with --model's tokenizer, activations as cached.",
    )
    delphi.add_argument("cache", metavar="DIR", help="delphi run folder (holding latents/), latents/ or a hook folder")
    add_config_flags(delphi, DELPHI_SECTIONS)
    delphi.set_defaults(run=run_delphi)

    neuronpedia = sources.add_parser(
        "neuronpedia",
        help="a Neuronpedia export of one source: activations/batch-N.jsonl.gz",
        description="Import one source's folder of a Neuronpedia export (exports/<modelId>/<source>/): per cached "
        "context its most activating token and one inactive token, activations as exported; frequencies from "
        "features/batch-N.jsonl.gz (frac_nonzero) where the export has them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    neuronpedia.add_argument("export", metavar="DIR", help="the source's export folder, holding activations/")
    neuronpedia.add_argument("--out", required=True, help="output folder (must not hold exemplars yet)")
    neuronpedia.add_argument("--seed", type=int, default=0, help="seed of the choice of inactive tokens")
    neuronpedia.set_defaults(run=run_neuronpedia)


def run_delphi(args: argparse.Namespace) -> int:
    from labeler.harvest.delphi_cache import import_delphi_cache

    config = delphi_config(args)
    return _report(_cleanly(lambda: import_delphi_cache(config), config.out), config.out)


def delphi_config(args: argparse.Namespace) -> DelphiImportConfig:
    """The DelphiImportConfig of the command line: the cache folder and the generated flags, checked."""
    config: DelphiImportConfig = build(DelphiImportConfig, {"cache": args.cache, **settings_from(args)}, "")
    return config


def run_neuronpedia(args: argparse.Namespace) -> int:
    from labeler.harvest.neuronpedia_cache import NeuronpediaImportConfig, import_neuronpedia

    config = NeuronpediaImportConfig(export=args.export, out=args.out, seed=args.seed)
    return _report(_cleanly(lambda: import_neuronpedia(config), args.out), args.out)


def _cleanly(run: Callable[[], ImportManifest], out: str) -> ImportManifest:
    """The import, or, where it fails (or is interrupted), its error with what it wrote into `out` removed."""
    from labeler.harvest.exemplar_parts import discard, names_in

    before = names_in(out)
    try:
        return run()
    except BaseException:
        discard(out, before)
        raise


def _report(manifest: ImportManifest, out: str) -> int:
    print(
        f"imported {manifest.features} features ({manifest.dead} dead, {manifest.ultra_rare} ultra_rare, "
        f"{manifest.failed} failed) of {manifest.hook}: {manifest.exemplar_rows} exemplar rows in {manifest.parts} "
        f"parts under {out}/exemplars; label with: labeler run --exemplars {out}/exemplars --features "
        f"{out}/features.parquet --out RUN",
        file=sys.stderr,
    )
    return 0
