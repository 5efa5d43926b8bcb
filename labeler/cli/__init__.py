"""The `labeler` command line: the only place that parses arguments and prints progress."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from labeler import __version__
from labeler.discriminators import (
    ENCODER_OPTIMISER,
    CausalLMConfig,
    EmbeddingConfig,
    build_discriminator,
    optimiser_defaults,
    templates_of,
)
from labeler.discriminators.prompt import PromptTemplate
from labeler.discriminators.vocab import VocabFilter, read_word_list
from labeler.optimise.engine import OptimiserConfig
from labeler.optimise.labelling import LabelConfig, label_chunk
from labeler.records.exemplars import ExemplarError, group_by_feature, read_exemplars, unlabelable_reason
from labeler.records.labels import LabelRecord, RunInfo, config_hash, with_activation_frequency, write_part
from labeler.run.runtime import keep_freed_memory

FREQUENCY_COLUMNS = ("frequency", "activation_frequency")
"""Where --activation-frequency finds the frequency: the harvest's features.parquet calls it `frequency`."""


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
    except OSError as err:  # a file or folder that cannot be read or written; storage errors were retried already
        print(f"labeler: error: {err}", file=sys.stderr)
        return 1
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
    label.add_argument(
        "--exemplars", required=True, type=Path, help="exemplar file (.jsonl or .parquet) or a folder of Parquet files"
    )
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
        description="A small toy (the main job on embedded defaults is `labeler run`): builds (once, cached) a "
        "tiny causal LM that knows five concepts "
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
    add_run_command(commands)
    add_dataset_commands(commands)
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
    opt.add_argument(
        "--c-entropy",
        type=float,
        default=None,
        help=f"weight of the entropy H(p) (default: {defaults.c_entropy} for hf:, "
        f"{ENCODER_OPTIMISER['c_entropy']} for encoders)",
    )
    opt.add_argument("--seed", type=int, default=defaults.seed, help="run seed")
    opt.add_argument(
        "--straight-through",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="score each step's argmax word instead of the soft label, gradients flowing as if soft (default: "
        "on for encoders, off for hf: as in the paper)",
    )
    opt.add_argument(
        "--rescore-top-k",
        type=int,
        default=defaults.rescore_top_k,
        help="also score the k most probable tokens of every restart's soft label exactly and keep the best on the "
        "training examples (0: each restart's argmax, as in the paper)",
    )
    opt.add_argument(
        "--baseline",
        choices=["none", "exhaustive"],
        default=LabelConfig().baseline,
        help="exhaustive: also record the best single-token label found by scoring every allowed token on the "
        "held-out examples (the baseline_* columns)",
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
        help="share of each class's distinct (context, target) pairs held out to score labels",
    )
    data.add_argument(
        "--active-threshold",
        type=float,
        default=label_defaults.active_threshold,
        help="an example is active when its activation exceeds this",
    )
    data.add_argument(
        "--activation-frequency",
        type=Path,
        default=None,
        help="Parquet file with columns feature and frequency (the SAE harvest's features.parquet) or "
        "activation_frequency; recorded with each label",
    )
    prov = parser.add_argument_group("provenance (stored on every label row)")
    prov.add_argument("--run-id", default=None, help="name of this run (default: the --out folder's name and the time)")
    prov.add_argument("--sae-id", default=None, help="the SAE the features belong to")
    prov.add_argument("--model", default=None, help="the model the SAE reads")
    prov.add_argument("--hook-point", default=None, help="where in the model the SAE reads")
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
    kind_defaults = {**asdict(OptimiserConfig()), **optimiser_defaults(args.discriminator)}
    optimiser = OptimiserConfig(
        restarts=args.restarts,
        max_steps=args.steps,
        label_tokens=args.label_tokens,
        examples_per_step=args.examples_per_step,
        lr=args.lr,
        c_kl=args.c_kl,
        c_entropy=kind_defaults["c_entropy"] if args.c_entropy is None else args.c_entropy,
        seed=args.seed,
        rescore_top_k=args.rescore_top_k,
        straight_through=kind_defaults["straight_through"] if args.straight_through is None else args.straight_through,
    )
    label = LabelConfig(
        optimiser=optimiser,
        heldout_fraction=args.heldout_fraction,
        active_threshold=args.active_threshold,
        features_per_batch=args.features_per_batch,
        baseline=args.baseline,
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
    _check_writable(labels_dir)
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
    frequency = _read_frequency(args.activation_frequency) if args.activation_frequency else {}
    disc = build_discriminator(args.discriminator, causal_lm, embedding)
    run = run_info(args, disc.name, label_config, causal_lm, embedding)
    if disc.device.type == "cpu":
        keep_freed_memory()
    print(
        f"labelling {len(features)} features ({table.num_rows} examples) with {disc.name}, "
        f"{len(disc.allowed_ids)} allowed label tokens",
        file=sys.stderr,
    )
    records = label_all(disc, features, label_config, args.out, run, frequency)
    write_manifest(args.out, args, run, records)
    counts = Counter(record.status for record in records)
    print(f"done: {dict(counts)}; labels in {labels_dir}", file=sys.stderr)
    print_labels(records)
    return 1 if counts["failed"] == len(records) else 0


def run_info(
    args: argparse.Namespace,
    discriminator: str,
    label: LabelConfig,
    causal_lm: CausalLMConfig,
    embedding: EmbeddingConfig,
) -> RunInfo:
    """The provenance of a `labeler label` run, from its arguments and settings."""
    started = datetime.now(UTC)
    is_embedding = not args.discriminator.startswith("hf:")
    prompt_template, label_template = templates_of(args.discriminator, causal_lm, embedding)
    return RunInfo(
        run_id=args.run_id or f"{args.out.resolve().name}-{started:%Y%m%dT%H%M%SZ}",
        discriminator=discriminator,
        config_hash=config_hash(label, embedding if is_embedding else causal_lm, args.discriminator),
        seed=label.optimiser.seed,
        started_at=started.isoformat(),
        code_version=f"labeler {__version__}",
        sae_id=args.sae_id,
        model=args.model,
        hook_point=args.hook_point,
        prompt_template=prompt_template,
        label_template=label_template,
    )


def _check_writable(folder: Path) -> None:
    """Refuse, before any work and without creating anything, a folder that could not be created or written."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot create the output folder {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create the output folder {folder}: {existing} is not writable")


def _read_frequency(path: Path) -> dict[int, float]:
    """{feature: activation frequency} from a harvest's features.parquet (column `frequency`) or a file with
    a column `activation_frequency`."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        column = next((name for name in FREQUENCY_COLUMNS if name in names), None)
        if "feature" not in names or column is None:
            raise ValueError(f"found columns {names}")
        table = pq.read_table(path, columns=["feature", column])
    except (OSError, ValueError) as err:
        raise UsageError(
            f"cannot read --activation-frequency {path}: {err} (a Parquet file with a column feature and a column "
            f"{' or '.join(FREQUENCY_COLUMNS)} is needed)"
        ) from err
    return dict(zip(table.column("feature").to_pylist(), table.column(column).to_pylist(), strict=True))


def label_all(
    disc: Any,
    features: list[Any],
    config: LabelConfig,
    out: Path,
    run: RunInfo,
    frequency: dict[int, float] | None = None,
) -> list[LabelRecord]:
    """Label in chunks, writing one Parquet part per chunk as it completes."""
    records: list[LabelRecord] = []
    size = config.features_per_batch
    with progress_bar(total=len(features), unit="feature", desc="labelling") as bar:

        def on_step(step: int, live: int) -> None:  # the bar moves a batch at a time; show the steps between
            bar.set_postfix(step=f"{step}/{config.optimiser.max_steps}", optimising=live, refresh=False)
            bar.update(0)  # redraws no more often than the bar's own interval

        for part, start in enumerate(range(0, len(features), size)):
            chunk = with_activation_frequency(
                label_chunk(disc, features[start : start + size], config, on_step), frequency or {}
            )
            write_part(chunk, run, out, part)
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


def write_manifest(out: Path, args: argparse.Namespace, run: RunInfo, records: list[LabelRecord]) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("run",)}
    manifest = {
        "labeler_version": __version__,
        "discriminator": run.discriminator,
        "run": asdict(run),
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
    from labeler.toys import demo  # the demo pulls in training code only when asked for

    return demo.run(args.cache, args.out, args.seed)


def add_run_command(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="label every feature of a run config on Ray (a local Ray, or a cluster), resumable",
        description="Label every feature of the exemplars named in a run config (YAML or TOML; see README and "
        "--print-config-help) with worker actors on Ray, writing one committed Parquet part per chunk to the run "
        "folder (a local folder or s3://...). Without --address (or RAY_ADDRESS, as inside `ray job submit`) a "
        "local Ray is started in this process. Ctrl-C drains: chunks in flight finish, the rest stays for --resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--config", type=Path, default=None, help="run config file, .yaml/.yml or .toml")
    run.add_argument("--resume", metavar="RUN_URL", default=None, help="continue the run in this run folder")
    run.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--exemplars", default=None, help="overrides source.exemplars: URL of the exemplar rows")
    run.add_argument("--features", default=None, help="overrides source.features: URL of a harvest's features.parquet")
    run.add_argument("--out", default=None, help="overrides out: the run folder URL")
    run.add_argument("--discriminator", default=None, help="overrides discriminator (hf:DIR, embedding:DIR, minilm)")
    run.add_argument("--workers", type=int, default=None, help="overrides workers.count")
    run.add_argument("--num-gpus", type=float, default=None, help="overrides workers.num_gpus (GPUs per worker)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set label.optimiser.restarts=8 (repeatable; VALUE is read as YAML)",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output, only the start and end lines (without it: a bar on a terminal, else a log line "
        "at most every 30 s)",
    )
    run.add_argument("--print-config-help", action="store_true", help="print every setting with its default and exit")
    run.set_defaults(run=run_service)


def run_service(args: argparse.Namespace) -> int:
    """`labeler run`: connect to Ray (or start it here), then plan, label and commit every feature."""
    import signal
    import socket

    import ray

    from labeler.ray_pool import RayPool, WorkerStartError
    from labeler.run import metrics, service
    from labeler.run.config import describe, load_config, parse_override, to_dict
    from labeler.run.service import resume_config

    if args.print_config_help:
        print("\n".join(describe()))
        return 0
    overrides = dict(parse_override(item) for item in args.set)
    for flag, key in (
        ("exemplars", "source.exemplars"),
        ("features", "source.features"),
        ("out", "out"),
        ("discriminator", "discriminator"),
        ("workers", "workers.count"),
        ("num_gpus", "workers.num_gpus"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.resume is not None:
        if args.config is not None:
            raise UsageError("--resume continues a run with the config in its manifest; leave out --config")
        base = resume_config(args.resume, load_config(None, overrides).sink)
        config = load_config(None, {**_flatten(to_dict(base)), **overrides, "out": args.resume})
    else:
        config = load_config(args.config, overrides)
        if config.source.exemplars is None:  # harvested first: show its progress
            with harvest_bar(None, disable=args.no_progress) as on_tokens:
                config = service.harvest_stage(config, on_tokens, log=lambda line: print(line, file=sys.stderr))
    prepared = service.prepare(config, resume=args.resume is not None)
    todo = prepared.plan.n_features
    print(
        f"run {config.out}: {prepared.plan.n_features} features in {prepared.plan.n_chunks} chunks, "
        f"{len(prepared.committed)} chunks already committed; discriminator {config.discriminator}",
        file=sys.stderr,
    )
    started_here = not (args.address or os.environ.get("RAY_ADDRESS"))
    ray.init(address=args.address, log_to_driver=True, include_dashboard=False if started_here else None)
    try:
        driver_port = (
            metrics.serve(config.metrics.port, config.metrics.host) if config.metrics.port is not None else None
        )
        node = ray.util.get_node_ip_address() or socket.gethostname()
        pool = RayPool(config.workers, prepared.spec(), config.out, config.sink)
        try:
            endpoints = pool.ready()
        except WorkerStartError as err:
            if args.resume is None and not prepared.committed:
                prepared.sink.discard_manifest()
                raise UsageError(f"{err}\nnothing was labelled; fix that and run the same command again") from err
            raise UsageError(f"{err}\nfix that and continue with: labeler run --resume {config.out}") from err
        driver = [metrics.endpoint(config.metrics.host, driver_port, node)] if driver_port is not None else []
        where = service.write_targets(prepared, driver + endpoints)
        print(
            f"metrics: driver {driver or '-'} (bound to {config.metrics.host}), workers {endpoints} "
            f"(bound to {config.workers.metrics_host}); Prometheus targets in {where}",
            file=sys.stderr,
        )
        stop = {"asked": False}

        def on_sigint(signum: int, frame: object) -> None:
            if stop["asked"]:
                raise KeyboardInterrupt
            stop["asked"] = True
            print("\nlabeler: draining (chunks in flight finish; Ctrl-C again to abandon them)", file=sys.stderr)

        previous = signal.signal(signal.SIGINT, on_sigint)
        bar = progress_bar(total=todo, unit="feature", desc="labelling", disable=args.no_progress)
        last_targets = [time.monotonic(), pool.alive()]

        def on_progress(progress: service.Progress) -> None:
            bar.set_postfix(failed=progress.statuses["failed"], dead=progress.statuses["dead"], refresh=False)
            bar.update(progress.finished - bar.n)
            if time.monotonic() - last_targets[0] > 30 or pool.alive() != last_targets[1]:
                last_targets[:] = [time.monotonic(), pool.alive()]
                service.write_targets(prepared, driver + pool.endpoints())

        try:
            progress = service.execute(prepared, pool, on_progress, stopping=lambda: stop["asked"])
        finally:
            signal.signal(signal.SIGINT, previous)
            bar.close()
    finally:
        if started_here:
            ray.shutdown()
    print(
        f"done: {dict(progress.statuses)}; {progress.finished} of {progress.total} features committed", file=sys.stderr
    )
    labels = f"{config.out}/labels"
    print(f"labels: {labels}/part-*.parquet (one part per chunk)")
    print(f'query:  labeler query --data {config.out} "SELECT feature, status, label, heldout_auroc FROM labels"')
    print(f"report: labeler report {config.out} --out report.html")
    if progress.finished < progress.total:
        print(f"stopped early; continue with: labeler run --resume {config.out}", file=sys.stderr)
        return 130
    return 1 if progress.statuses["failed"] == progress.total else 0


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("storage_options", "harvest"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def add_dataset_commands(commands: Any) -> None:
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
    export.add_argument("--format", choices=["neuronpedia", "jsonl"], required=True, help="output format")
    export.add_argument("--out", required=True, type=Path, help="output folder (neuronpedia) or file (jsonl)")
    export.add_argument("--model-id", default=None, help="Neuronpedia modelId (default: the run's model)")
    export.add_argument("--source-id", default=None, help="Neuronpedia source id, e.g. 6-res-jb (default: sae_id)")
    export.add_argument("--author-id", default="labeler", help="Neuronpedia authorId of the explanations")
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
    report.set_defaults(run=run_report)


def run_query(args: argparse.Namespace) -> int:
    from labeler.store.dataset import read_runs
    from labeler.store.query import render
    from labeler.store.query import run_query as query

    result = query(read_runs(args.data), args.sql)
    sys.stdout.write(render(result, args.format))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from labeler.store.dataset import read_runs
    from labeler.store.export import neuronpedia_explanations, write_jsonl, write_neuronpedia

    labels = read_runs(args.data).labels
    if args.format == "jsonl":
        print(f"wrote {labels.num_rows} rows to {write_jsonl(labels, args.out)}", file=sys.stderr)
        return 0
    rows = neuronpedia_explanations(labels, args.author_id, args.model_id, args.source_id)
    paths = write_neuronpedia(rows, args.out)
    print(f"wrote {len(rows)} explanations in {len(paths)} batch file(s) under {args.out}", file=sys.stderr)
    return 0


def run_report(args: argparse.Namespace) -> int:
    from labeler.store.dataset import read_runs
    from labeler.store.report import render_report

    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    data = read_runs([args.run_url])
    page = render_report(data.labels, data.exemplars, title=f"labeler run {args.run_url}", top_n=args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out} ({data.labels.num_rows} features)", file=sys.stderr)
    return 0


def add_harvest_command(commands: Any) -> None:
    """`labeler harvest`: exemplars of every SAE feature from a corpus (labeler/harvest/pipeline.py)."""
    from labeler.harvest.pipeline import HarvestConfig

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
    from labeler.harvest.corpus import CorpusError
    from labeler.harvest.pipeline import HarvestConfig, harvest
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


def progress_bar(**settings: Any) -> tqdm:
    """A tqdm progress bar on stderr: redrawn in place on a terminal; where stderr is a log (a file, a pipe,
    `ray job logs`), one plain line at start, at most every 30 s, and at the end."""
    if sys.stderr.isatty():
        return tqdm(file=sys.stderr, **settings)
    return tqdm(file=_LogLines(sys.stderr), mininterval=30, ascii=True, **settings)


class _LogLines:
    """A stream for tqdm that turns each redraw into a line of its own (no carriage returns in a log)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def harvest_bar(total: int | None, disable: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A tokens progress bar (tokens/s, ETA) and the progress callback `harvest()` calls with (done, expected)."""
    with progress_bar(total=total, unit="tok", unit_scale=True, desc="harvesting", disable=disable) as bar:

        def progress(done: int, expected: int) -> None:
            bar.total = max(expected, done)
            bar.update(done - bar.n)

        yield progress


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
