"""The `labeler` command line: the only place that parses arguments and prints progress."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from labeler import __version__
from labeler.discriminators import CausalLMConfig, EmbeddingConfig, build_discriminator
from labeler.engine import OptimiserConfig
from labeler.exemplars import ExemplarError, group_by_feature, read_exemplars, unlabelable_reason
from labeler.labelling import LabelConfig, label_chunk
from labeler.prompt import PromptTemplate
from labeler.results import LabelRecord, write_part
from labeler.runtime import keep_freed_memory
from labeler.vocab import VocabFilter, read_word_list


class UsageError(Exception):
    """Bad input found before work starts; printed without a traceback, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (UsageError, ExemplarError, ValueError) as err:
        print(f"labeler: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labeler: interrupted; parts written so far are complete and kept", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labeler", description="Label sparse-autoencoder features by token-space gradient descent."
    )
    parser.add_argument("--version", action="version", version=f"labeler {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    label = commands.add_parser(
        "label",
        help="label every feature of an exemplar file",
        description="Label every feature of an exemplar file and write the labels as a Parquet dataset "
        "under OUT/labels/. Exemplars: JSONL or Parquet with columns feature, context, target, "
        "activation (see README).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    label.add_argument("--exemplars", required=True, type=Path, help="exemplar file (.jsonl or .parquet)")
    label.add_argument(
        "--discriminator",
        required=True,
        help="hf:MODEL_DIR (a Hugging Face causal LM asked the paper's question), embedding:MODEL_DIR (a sentence "
        "encoder) or minilm (the packaged all-MiniLM-L6-v2 encoder, offline)",
    )
    label.add_argument("--out", required=True, type=Path, help="output folder (must not hold labels yet)")
    add_label_options(label)
    label.set_defaults(run=run_label)

    demo = commands.add_parser(
        "demo",
        help="train a tiny LM on a synthetic language, then label its concept features (offline, CPU)",
        description="The embedded-defaults job: builds (once, cached) a tiny causal LM that knows five concepts "
        "of a synthetic language, writes exemplars of five features, one per concept, and labels "
        "them with `labeler label`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "labeler" / "demo",
        help="where the demo model and exemplars are kept between runs",
    )
    demo.add_argument("--out", type=Path, default=Path("labeler-demo-out"), help="output folder (replaced)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the demo world, model and labelling")
    demo.set_defaults(run=run_demo)
    add_harvest_command(commands)
    return parser


def add_label_options(parser: argparse.ArgumentParser) -> None:
    opt = parser.add_argument_group("optimiser")
    defaults = OptimiserConfig()
    opt.add_argument("--restarts", type=int, default=defaults.restarts, help="random restarts per feature")
    opt.add_argument("--steps", type=int, default=defaults.max_steps, help="optimisation steps at most")
    opt.add_argument("--label-tokens", type=int, default=defaults.label_tokens, help="tokens per label (L)")
    opt.add_argument(
        "--examples-per-step",
        type=int,
        default=defaults.examples_per_step,
        help="training examples per feature per step, half active",
    )
    opt.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate")
    opt.add_argument("--c-kl", type=float, default=defaults.c_kl, help="weight of KL(p || q)")
    opt.add_argument("--c-entropy", type=float, default=defaults.c_entropy, help="weight of the entropy H(p)")
    opt.add_argument("--seed", type=int, default=defaults.seed, help="run seed")
    opt.add_argument(
        "--rescore-top-k",
        type=int,
        default=defaults.rescore_top_k,
        help="also score the k most probable tokens of every restart's soft label exactly and keep the best on the "
        "training examples (0: each restart's argmax, as in the paper)",
    )
    data = parser.add_argument_group("data")
    label_defaults = LabelConfig()
    data.add_argument(
        "--features-per-batch",
        type=int,
        default=label_defaults.features_per_batch,
        help="features optimised together (F)",
    )
    data.add_argument(
        "--heldout-fraction",
        type=float,
        default=label_defaults.heldout_fraction,
        help="share of examples held out to score labels",
    )
    data.add_argument(
        "--active-threshold",
        type=float,
        default=label_defaults.active_threshold,
        help="an example is active when its activation exceeds this",
    )
    data.add_argument(
        "--skip-unlabelable",
        action="store_true",
        help="record features without enough active or inactive examples as skipped instead of stopping with an error",
    )
    disc = parser.add_argument_group("discriminator")
    model_defaults = CausalLMConfig()
    disc.add_argument(
        "--readout",
        choices=["answer_ce", "logit_diff"],
        default=model_defaults.readout,
        help="answer_ce: cross-entropy of the answer token (paper); logit_diff: logistic loss "
        "on logit(yes) - logit(no)",
    )
    disc.add_argument("--yes-token", default=model_defaults.yes_token, help="answer token meaning yes")
    disc.add_argument("--no-token", default=model_defaults.no_token, help="answer token meaning no")
    disc.add_argument(
        "--chat",
        choices=["auto", "always", "never"],
        default=model_defaults.chat,
        help="use the tokenizer's chat template",
    )
    disc.add_argument(
        "--template",
        type=Path,
        default=None,
        help="JSON file with keys system, user, assistant_prefix; user holds {text}, {word} "
        "and {label} (default: the paper's prompt)",
    )
    disc.add_argument(
        "--vocab-min-chars", type=int, default=VocabFilter.min_chars, help="shortest label token, in characters"
    )
    disc.add_argument(
        "--vocab-any-chars", action="store_true", help="allow label tokens that are not purely alphabetic"
    )
    disc.add_argument(
        "--vocab-words",
        metavar="LIST",
        default=None,
        help="keep only label tokens that are words of LIST: category-nouns (shipped: WordNet nouns with 5 or more "
        "kinds) or a text file with one word per line",
    )
    embedding_defaults = EmbeddingConfig()
    disc.add_argument(
        "--label-template",
        default=embedding_defaults.label_template,
        help="embedding discriminators: the text standing for the label, with {label} once",
    )
    disc.add_argument(
        "--example-template",
        default=embedding_defaults.example_template,
        help="embedding discriminators: the text embedded per example, with {word} and/or {text}",
    )
    disc.add_argument("--device", default=model_defaults.device, help="torch device (auto: CUDA when present)")
    disc.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16", "float64"],
        default=model_defaults.dtype,
        help="model dtype",
    )


def configs_from_args(args: argparse.Namespace) -> tuple[LabelConfig, CausalLMConfig, EmbeddingConfig]:
    optimiser = OptimiserConfig(
        restarts=args.restarts,
        max_steps=args.steps,
        label_tokens=args.label_tokens,
        examples_per_step=args.examples_per_step,
        lr=args.lr,
        c_kl=args.c_kl,
        c_entropy=args.c_entropy,
        seed=args.seed,
        rescore_top_k=args.rescore_top_k,
    )
    label = LabelConfig(
        optimiser=optimiser,
        heldout_fraction=args.heldout_fraction,
        active_threshold=args.active_threshold,
        features_per_batch=args.features_per_batch,
    )
    template = PromptTemplate() if args.template is None else _read_template(args.template)
    vocab = VocabFilter(
        alphabetic=not args.vocab_any_chars,
        min_chars=args.vocab_min_chars,
        words=None if args.vocab_words is None else read_word_list(args.vocab_words),
    )
    embedding = EmbeddingConfig(
        label_template=args.label_template, example_template=args.example_template, vocab=vocab, device=args.device
    )
    causal_lm = CausalLMConfig(
        template=template,
        chat=args.chat,
        yes_token=args.yes_token,
        no_token=args.no_token,
        readout=args.readout,
        vocab=vocab,
        dtype=args.dtype,
        device=args.device,
    )
    return label, causal_lm, embedding


def run_label(args: argparse.Namespace) -> int:
    label_config, causal_lm, embedding = configs_from_args(args)
    labels_dir = args.out / "labels"
    if labels_dir.exists() and any(labels_dir.iterdir()):
        raise UsageError(f"{labels_dir} already holds labels; choose a new --out or remove it")
    table = read_exemplars(args.exemplars)
    features = list(group_by_feature(table))
    problems = [(f.feature, r) for f in features if (r := unlabelable_reason(f, label_config.active_threshold))]
    if problems and not args.skip_unlabelable:
        listed = "\n".join(f"  feature {feature}: {reason}" for feature, reason in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise UsageError(
            f"{len(problems)} feature(s) of {args.exemplars} cannot be labelled:\n{listed}{more}\n"
            "Fix the exemplars, or pass --skip-unlabelable to record them as skipped."
        )
    disc = build_discriminator(args.discriminator, causal_lm, embedding)
    if disc.device.type == "cpu":
        keep_freed_memory()
    print(
        f"labelling {len(features)} features ({table.num_rows} examples) with {disc.name}, "
        f"{len(disc.allowed_ids)} allowed label tokens",
        file=sys.stderr,
    )
    records = label_all(disc, features, label_config, args.out)
    write_manifest(args.out, args, disc.name, records)
    counts = Counter(record.status for record in records)
    print(f"done: {dict(counts)}; labels in {labels_dir}", file=sys.stderr)
    print_labels(records)
    return 1 if counts["failed"] == len(records) else 0


def label_all(disc: Any, features: list[Any], config: LabelConfig, out: Path) -> list[LabelRecord]:
    """Label in chunks, writing one Parquet part per chunk as it completes."""
    records: list[LabelRecord] = []
    size = config.features_per_batch
    with tqdm(total=len(features), unit="feature", desc="labelling", file=sys.stderr) as bar:
        for part, start in enumerate(range(0, len(features), size)):
            chunk = label_chunk(disc, features[start : start + size], config)
            write_part(chunk, out, part)
            records.extend(chunk)
            bar.update(len(chunk))
            bar.set_postfix(
                failed=sum(r.status == "failed" for r in records), skipped=sum(r.status == "skipped" for r in records)
            )
    return records


def print_labels(records: list[LabelRecord], limit: int = 50) -> None:
    print(f"{'feature':>8}  {'status':<9} {'auroc':>6}  label / reason")
    for record in records[:limit]:
        auroc = f"{record.heldout_auroc:.3f}" if record.heldout_auroc is not None else "-"
        print(f"{record.feature:>8}  {record.status:<9} {auroc:>6}  {record.label or record.error}")
    if len(records) > limit:
        print(f"... {len(records) - limit} more in the Parquet dataset")


def write_manifest(out: Path, args: argparse.Namespace, discriminator: str, records: list[LabelRecord]) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("run",)}
    manifest = {
        "labeler_version": __version__,
        "discriminator": discriminator,
        "settings": settings,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "features": len(records),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def _read_template(path: Path) -> PromptTemplate:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read the template file {path}: {err}") from err
    known = {f.name for f in fields(PromptTemplate)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise UsageError(f"template file {path} must be a JSON object with keys among {sorted(known)}")
    return PromptTemplate(**{**asdict(PromptTemplate()), **raw})


def run_demo(args: argparse.Namespace) -> int:
    from labeler import demo  # the demo pulls in training code only when asked for

    return demo.run(args.cache, args.out, args.seed)


def add_harvest_command(commands: Any) -> None:
    """`labeler harvest`: exemplars of every SAE feature from a corpus (labeler/harvest.py)."""
    from labeler.harvest import HarvestConfig

    defaults = HarvestConfig(sae="", model="", corpus="", out="")
    harvest = commands.add_parser(
        "harvest",
        help="harvest exemplars of every feature of a sae-lens SAE from a corpus",
        description="One streaming pass over a corpus: per feature, its activation frequency and maximum, its top "
        "examples, examples across its activation quantiles and random inactive ones, written as exemplar "
        "Parquet parts under OUT/exemplars/, with OUT/features.parquet (every feature, dead ones included) and "
        "OUT/manifest.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    harvest.add_argument("--sae", help="sae-lens SAE folder (cfg.json, sae_weights.safetensors) or RELEASE:SAE_ID")
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
    harvest.add_argument("--max-document-bytes", type=int, default=defaults.max_document_bytes,
                         help="a longer corpus line is an error")  # fmt: skip
    harvest.add_argument("--device", default=defaults.device, help="torch device (auto: CUDA when present)")
    harvest.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=defaults.dtype)
    harvest.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random samples")
    harvest.set_defaults(run=run_harvest)


def run_harvest(args: argparse.Namespace) -> int:
    from labeler.corpus import CorpusError
    from labeler.harvest import HarvestConfig, harvest
    from labeler.sae_source import SourceError

    sae, model, corpus = args.sae, args.model, args.corpus
    if args.demo is not None:
        from labeler.demo_sae import build_demo

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
        max_document_bytes=args.max_document_bytes,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    with tqdm(total=args.tokens, unit="tok", unit_scale=True, desc="harvesting", file=sys.stderr) as bar:

        def progress(done: int, expected: int) -> None:
            bar.total = max(expected, done)
            bar.update(done - bar.n)

        try:
            manifest = harvest(config, progress)
        except (SourceError, CorpusError) as err:
            raise UsageError(str(err)) from err
    print(
        f"harvested {manifest.tokens:,} tokens, {manifest.features} features ({manifest.dead} dead, "
        f"{manifest.ultra_rare} ultra-rare), {manifest.exemplar_rows:,} exemplar rows in {manifest.seconds:.0f} s "
        f"-> {args.out}",
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


if __name__ == "__main__":
    sys.exit(main())
