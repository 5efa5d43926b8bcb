"""`labeler import`: exemplars from the caches other tools wrote (delphi's latent cache, Neuronpedia's export).

Parses the command line and prints the result; the reading is labeler/harvest/delphi_cache.py and
labeler/harvest/neuronpedia_cache.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from labeler.harvest.exemplar_parts import ImportManifest


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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    delphi.add_argument("cache", metavar="DIR", help="delphi run folder (holding latents/), latents/ or a hook folder")
    delphi.add_argument("--model", required=True, help="tokenizer (or model) folder the cache was made with")
    delphi.add_argument("--out", required=True, help="output folder (must not hold exemplars yet)")
    delphi.add_argument("--hook", default=None, help="the hook folder under latents/ (when there are several)")
    delphi.add_argument("--top-examples", type=int, default=10, help="top-activating examples per feature")
    delphi.add_argument("--quantile-examples", type=int, default=40, help="examples over the activation bins")
    delphi.add_argument("--quantiles", type=int, default=10, help="activation bins")
    delphi.add_argument("--reservoir", type=int, default=200, help="sampled active tokens per feature")
    delphi.add_argument("--inactive-examples", type=int, default=50, help="non-activating examples per feature")
    delphi.add_argument("--min-active-tokens", type=int, default=10, help="fewer active tokens: ultra_rare")
    delphi.add_argument("--seed", type=int, default=0, help="seed of the random samples")
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
    from labeler.harvest.delphi_cache import DelphiImportConfig, import_delphi_cache

    config = DelphiImportConfig(
        cache=args.cache,
        model=args.model,
        out=args.out,
        hook=args.hook,
        top_examples=args.top_examples,
        quantile_examples=args.quantile_examples,
        quantiles=args.quantiles,
        reservoir=args.reservoir,
        inactive_examples=args.inactive_examples,
        min_active_tokens=args.min_active_tokens,
        seed=args.seed,
    )
    return _report(_cleanly(lambda: import_delphi_cache(config), args.out), args.out)


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
