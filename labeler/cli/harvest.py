"""`labeler harvest`: exemplars of every SAE feature from a corpus (labeler/harvest/)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from labeler.cli.errors import UsageError
from labeler.cli.progress import harvest_bar


def add_parser(commands: Any) -> None:
    """`labeler harvest`: exemplars of every SAE feature from a corpus (labeler/harvest/pipeline.py)."""
    from labeler.harvest.config import HarvestConfig

    defaults = HarvestConfig(sae="", model="", corpus="", out="")
    harvest = commands.add_parser(
        "harvest",
        help="harvest exemplars of every feature of an SAE (sae-lens, sparsify, Gemma Scope) from a corpus",
        description="One streaming pass over a corpus: per feature, its activation frequency and maximum, its top "
        "examples, examples across its activation quantiles and random inactive ones, written as exemplar "
        "Parquet parts under OUT/exemplars/, with OUT/features.parquet (every feature, dead ones included) and "
        "OUT/manifest.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    harvest.add_argument("--sae", help="SAE: sae-lens folder or RELEASE:SAE_ID, sparsify hookpoint folder, or Gemma "
                         "Scope params.npz")  # fmt: skip
    harvest.add_argument("--model", help="the subject model: Hugging Face folder or hub id")
    harvest.add_argument("--corpus", help=".txt/.jsonl/.parquet file (optionally .gz), a folder of them, or a "
                         "saved `datasets` folder")  # fmt: skip
    harvest.add_argument("--out", required=True, help="output folder or fsspec URL (must not hold a harvest)")
    harvest.add_argument(
        "--demo",
        type=Path,
        nargs="?",
        const=Path.home() / ".cache" / "labeler" / "demo-sae",
        default=None,
        metavar="CACHE",
        help="use the demo SAE on all-MiniLM-L6-v2 over WordNet glosses (trained once, cached in CACHE) for any of "
        "--sae, --model, --corpus not given",
    )
    harvest.add_argument("--text-column", default=defaults.text_column, help="text field of JSONL/Parquet corpora")
    harvest.add_argument(
        "--tokens", type=int, default=None, help="corpus tokens to harvest at most (None: the whole corpus)"
    )
    harvest.add_argument("--context-len", type=int, default=defaults.context_len, help="tokens per window")
    harvest.add_argument("--batch-size", type=int, default=defaults.batch_size, help="windows per forward pass")
    harvest.add_argument("--per-feature", type=int, default=defaults.quantile_examples,
                         help="active examples per feature spread over the activation quantiles")  # fmt: skip
    harvest.add_argument("--top", type=int, default=defaults.top_examples, help="top examples per feature")
    harvest.add_argument("--inactive", type=int, default=defaults.inactive_examples,
                         help="random non-activating examples per feature")  # fmt: skip
    harvest.add_argument("--quantiles", type=int, default=defaults.quantiles, help="activation bins")
    harvest.add_argument("--features", default=None,
                         help="harvest only these features: a range A-B (B excluded) or a list 1,5,9")  # fmt: skip
    harvest.add_argument("--hook", default=None, help="override the SAE's hook (hook name or HF module path)")
    harvest.add_argument("--sae-format", choices=["auto", "sae-lens", "sparsify", "gemma-scope"], default="auto",
                         help="the SAE's file format (auto: told from its file names)")  # fmt: skip
    harvest.add_argument("--max-document-bytes", type=int, default=defaults.max_document_bytes,
                         help="a longer corpus line is an error")  # fmt: skip
    harvest.add_argument("--device", default=defaults.device, help="torch device (auto: CUDA when present)")
    harvest.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=defaults.dtype)
    harvest.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random samples")
    harvest.set_defaults(run=run_harvest)


def run_harvest(args: argparse.Namespace) -> int:
    from labeler.harvest.config import HarvestConfig
    from labeler.harvest.corpus import CorpusError
    from labeler.harvest.pipeline import harvest
    from labeler.harvest.sae_source import SourceError

    sae, model, corpus = args.sae, args.model, args.corpus
    if args.demo is not None:
        from labeler.toys.demo_sae import build_demo

        assets = build_demo(args.demo, log=lambda line: print(line, file=sys.stderr))
        sae, model, corpus = sae or str(assets.sae_dir), model or str(assets.model_dir), corpus or str(assets.corpus)
    missing = [name for name, value in (("--sae", sae), ("--model", model), ("--corpus", corpus)) if not value]
    if missing:
        raise UsageError(f"labeler harvest needs {', '.join(missing)} (or --demo)")
    config = HarvestConfig(
        sae=sae,
        model=model,
        corpus=corpus,
        out=args.out,
        text_column=args.text_column,
        tokens=args.tokens,
        context_len=args.context_len,
        batch_size=args.batch_size,
        top_examples=args.top,
        quantile_examples=args.per_feature,
        quantiles=args.quantiles,
        inactive_examples=args.inactive,
        features=_feature_list(args.features),
        hook=args.hook,
        sae_format=args.sae_format,
        max_document_bytes=args.max_document_bytes,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    with harvest_bar(args.tokens) as progress:
        try:
            manifest = harvest(config, progress)
        except (SourceError, CorpusError) as err:
            raise UsageError(str(err)) from err
    print(
        f"harvested {manifest.tokens:,} tokens, {manifest.features} features ({manifest.dead} dead, "
        f"{manifest.ultra_rare} ultra-rare, {manifest.failed} failed), {manifest.exemplar_rows:,} exemplar rows "
        f"in {manifest.seconds:.0f} s"
        + (
            f" ({manifest.unresolved_targets:,} targets are U+FFFD: cut by --tokens, or so in the corpus)"
            if manifest.unresolved_targets
            else ""
        )
        + f" -> {args.out}",
        file=sys.stderr,
    )
    return 0


def _feature_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        if "-" in text:
            start, stop = (int(x) for x in text.split("-", 1))
            return tuple(range(start, stop))
        return tuple(int(x) for x in text.split(","))
    except ValueError as err:
        raise UsageError(f"--features {text!r}: give a range A-B (B excluded) or a list 1,5,9") from err
