"""`labeler label` and `labeler run`: one labelling run, in this process or on Ray.

Both commands build the same RunConfig (config file, `--set`, and the flags generated from the config
dataclasses), prepare it with labeler.run.service (plan, manifest, resume) and drive the same scheduler;
`label` on an in-process pool (no Ray started), `run` on Ray worker actors. So both write the same run
folder, and a run started by one can be resumed by the other.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from labeler.cli.errors import UsageError
from labeler.cli.options import LABEL_SECTIONS, RUN_SECTIONS, Section, add_config_flags, overrides_from
from labeler.cli.progress import harvest_bar, progress_bar
from labeler.discriminators.prompt import PromptTemplate
from labeler.errors import InputError
from labeler.run import service
from labeler.run.config import RunConfig
from labeler.run.lease import LeaseLost, RunLease
from labeler.run.loading import describe, load_config, parse_override, to_dict
from labeler.run.scheduler import Pool, Progress
from labeler.run.service import PreparedRun, resume_config
from labeler.run.sink import PartSink, StorageFullError


def add_parsers(commands: Any) -> None:
    label = commands.add_parser(
        "label",
        help="label every feature of an exemplar file, in this process",
        description="Label every feature of the exemplars and write the run folder OUT: OUT/manifest.json and one "
        "committed Parquet part of labels per chunk under OUT/labels/. The same run as `labeler run`, on one worker "
        "in this process (no Ray); continue it with `labeler label` or `labeler run --resume OUT`. Exemplars: JSONL "
        "or Parquet with columns feature, context, target, activation (see README).",
    )
    label.add_argument("--resume", action="store_true", help="continue the run in --out (its own settings are kept)")
    _add_common(label, LABEL_SECTIONS)
    label.set_defaults(run=run_label)

    run = commands.add_parser(
        "run",
        help="label every feature of a run config on Ray (a local Ray, or a cluster), resumable",
        description="Label every feature of the exemplars named in a run config (YAML or TOML; see README and "
        "--print-config-help) with worker actors on Ray, writing one committed Parquet part per chunk to the run "
        "folder (a local folder or s3://...). Without --address (or RAY_ADDRESS, as inside `ray job submit`) a "
        "local Ray is started in this process. Ctrl-C drains: chunks in flight finish, the rest stays for --resume.",
    )
    run.add_argument("--resume", metavar="RUN_URL", default=None, help="continue the run in this run folder")
    run.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--print-config-help", action="store_true", help="print every setting with its default and exit")
    _add_common(run, RUN_SECTIONS)
    run.set_defaults(run=run_on_ray)


def _add_common(parser: argparse.ArgumentParser, sections: tuple[Section, ...]) -> None:
    """What both commands take: the run config, its overrides and the flags generated from `sections`."""
    parser.add_argument("--config", type=Path, default=None, help="run config file, .yaml/.yml or .toml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set label.optimiser.restarts=8 (repeatable; VALUE is read as YAML)",
    )
    parser.add_argument(
        "--template",
        type=Path,
        default=None,
        help="hf: discriminators: JSON file with keys system, user, assistant_prefix; user holds {text}, {word} "
        "and {label} (default: the paper's prompt)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress output, only the start and end lines (without it: a bar on a terminal, else a log line "
        "at most every 30 s)",
    )
    add_config_flags(parser, sections)


def config_from_args(args: argparse.Namespace, resume: str | None = None) -> RunConfig:
    """The run config of the command line: the file (or, resuming, the run's manifest), `--set`, then flags."""
    if resume is not None and args.config is not None:
        raise UsageError("--resume continues a run with the config in its manifest; leave out --config")
    overrides = dict(parse_override(item) for item in args.set)
    if args.template is not None:
        overrides["discriminator.template"] = asdict(_read_template(args.template))
    overrides |= overrides_from(args)
    if resume is None:
        return load_config(args.config, overrides)
    stored = _flatten(to_dict(resume_config(resume, load_config(None, overrides).sink)))
    if "discriminator" in overrides:  # a new discriminator replaces the stored one whole (and is then refused)
        stored = {key: value for key, value in stored.items() if not key.startswith("discriminator.")}
    return load_config(None, {**stored, **overrides, "out": resume})


def run_label(args: argparse.Namespace) -> int:
    """`labeler label`: the run on one worker in this process."""
    config = config_from_args(args, overrides_from(args)["out"] if args.resume else None)
    return execute(config, args, resume=args.resume, on_ray=False)


def run_on_ray(args: argparse.Namespace) -> int:
    """`labeler run`: the run on Ray worker actors (a local Ray started here, or a cluster)."""
    if args.print_config_help:
        print("\n".join(describe()))
        return 0
    config = config_from_args(args, args.resume)
    return execute(config, args, resume=args.resume is not None, on_ray=True)


def execute(config: RunConfig, args: argparse.Namespace, resume: bool, on_ray: bool) -> int:
    """Harvest where needed, take the run's lease, prepare, label every feature on the pool, and print where the
    labels are."""
    if on_ray and _starts_local_ray(args):
        _check_local_gpus(config.workers.num_gpus)
    if not resume and config.source.exemplars is None:  # harvested first: show its progress
        with harvest_bar(None, disable=args.no_progress) as on_tokens:
            config = service.harvest_stage(config, on_tokens, log=lambda line: print(line, file=sys.stderr))
    lease = RunLease(PartSink(config.out, config.sink), config.sink.lease_expiry_seconds)
    try:
        return _label(config, args, resume, on_ray, lease)
    finally:
        lease.release()


def _label(config: RunConfig, args: argparse.Namespace, resume: bool, on_ray: bool, lease: RunLease) -> int:
    prepared = service.prepare(config, resume=resume, lease=lease)
    print(
        f"run {config.out}: {prepared.plan.n_features} features in {prepared.plan.n_chunks} chunks, "
        f"{len(prepared.committed)} chunks already committed; discriminator {prepared.manifest['discriminator']}",
        file=sys.stderr,
    )
    bar = progress_bar(total=prepared.plan.n_features, unit="feature", desc="labelling", disable=args.no_progress)
    steps = config.label.optimiser.max_steps

    def on_step(step: int, live: int) -> None:
        bar.set_postfix(step=f"{step}/{steps}", optimising=live, refresh=False)
        bar.update(0)  # redraws no more often than the bar's own interval

    try:
        if on_ray:
            progress = _on_ray(prepared, args, bar, on_step, resume)
        else:
            progress = _in_process(prepared, args, bar, on_step, resume)
    except (StorageFullError, LeaseLost) as err:
        bar.close()
        print(f"labeler: error: {err}", file=sys.stderr)
        if isinstance(err, StorageFullError):
            print(f"once there is space, continue with: labeler run --resume {config.out}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    return _summary(prepared, progress)


def _in_process(
    prepared: PreparedRun, args: argparse.Namespace, bar: Any, on_step: Callable[[int, int], None], resume: bool
) -> Progress:
    import socket

    from labeler.run import metrics
    from labeler.run.local import LocalPool
    from labeler.run.runtime import keep_freed_memory
    from labeler.run.worker import ChunkWorker

    try:
        worker = ChunkWorker(prepared.spec(), prepared.sink)
    except (InputError, OSError) as err:
        raise _start_failed(prepared, resume, str(err)) from err
    if getattr(worker.device, "type", "cpu") == "cpu":
        keep_freed_memory()
    pool = LocalPool(worker, on_step)
    port = prepared.config.metrics.port
    if port is not None:
        host = prepared.config.metrics.host
        endpoint = metrics.endpoint(host, metrics.serve(port, host), socket.gethostname())
        where = service.write_targets(prepared, [endpoint])
        print(f"metrics: {endpoint} (bound to {host}); Prometheus targets in {where}", file=sys.stderr)
    return _drive(prepared, pool, bar, lambda: None)


def _on_ray(
    prepared: PreparedRun, args: argparse.Namespace, bar: Any, on_step: Callable[[int, int], None], resume: bool
) -> Progress:
    import socket

    config = prepared.config
    started_here = _starts_local_ray(args)
    if started_here:
        _init_local_ray()  # before anything imports ray here
    import ray

    from labeler.ray_pool import WorkerStartError, make_pool
    from labeler.run import metrics

    if not started_here:
        ray.init(address=args.address, log_to_driver=True)
    try:
        driver_port = (
            metrics.serve(config.metrics.port, config.metrics.host) if config.metrics.port is not None else None
        )
        node = ray.util.get_node_ip_address() or socket.gethostname()
        pool = make_pool(config.workers, prepared.spec(), config.out, config.sink)
        try:
            endpoints = pool.ready()
        except WorkerStartError as err:
            raise _start_failed(prepared, resume, str(err)) from err
        driver = [metrics.endpoint(config.metrics.host, driver_port, node)] if driver_port is not None else []
        where = service.write_targets(prepared, driver + endpoints)
        print(
            f"metrics: driver {driver or '-'} (bound to {config.metrics.host}), workers {endpoints} "
            f"(bound to {config.workers.metrics_host}); Prometheus targets in {where}",
            file=sys.stderr,
        )
        last = {"targets": time.monotonic(), "alive": pool.alive(), "steps": 0.0}

        def every_poll() -> None:
            now = time.monotonic()
            if now - last["steps"] > 2:  # the step each worker's batch is at, as `labeler label` shows it
                last["steps"] = now
                busy = [step for step in pool.progress() if step is not None]
                if busy:
                    on_step(max(step for step, _ in busy), sum(live for _, live in busy))
            if now - last["targets"] > 30 or pool.alive() != last["alive"]:
                last.update(targets=now, alive=pool.alive())
                service.write_targets(prepared, driver + pool.endpoints())

        return _drive(prepared, pool, bar, every_poll)
    finally:
        if started_here:
            ray.shutdown()


LOOPBACK_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""The environment that keeps a local Ray on loopback: with it Ray takes 127.0.0.1 as the node's address (as it
does on macOS and Windows, where it is the default) and every process it starts binds that address alone: the GCS,
the raylet, the dashboard and runtime-env agents, each worker's and the driver's core-worker gRPC server. Ray reads
it when it is imported, here and in each process it starts (they inherit this environment); such a Ray takes no
other node."""


def _starts_local_ray(args: argparse.Namespace) -> bool:
    """Whether `labeler run` starts its own Ray (no --address, no RAY_ADDRESS), which then listens on loopback
    only; a cluster named by address is as its own settings make it."""
    return not (args.address or os.environ.get("RAY_ADDRESS"))


def _init_local_ray() -> None:
    """Start a Ray for this run in this process, every one of its servers bound to 127.0.0.1."""
    import ipaddress

    saved = {name: os.environ.get(name) for name in LOOPBACK_RAY_ENV}
    os.environ.update(LOOPBACK_RAY_ENV)
    try:
        import ray

        ray.init(_node_ip_address="127.0.0.1", log_to_driver=True, include_dashboard=False)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    address = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(address).is_loopback:  # Ray was imported before the environment was set
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray took {address} as its address, not loopback: Ray was imported in this process before "
            f"labeler could set {', '.join(f'{k}={v}' for k, v in LOOPBACK_RAY_ENV.items())}; set it before "
            "importing ray, or start Ray yourself and pass --address"
        )


def _check_local_gpus(num_gpus: float) -> None:
    """Refuse, before Ray starts and before the run folder is written, GPU workers on a machine without GPUs."""
    if num_gpus <= 0:
        return
    import torch

    found = torch.cuda.device_count()
    if found == 0:
        raise UsageError(
            f"--num-gpus {num_gpus:g} (workers.num_gpus) asks for a GPU per worker, but this machine has none that "
            "torch can use (torch.cuda.device_count() is 0), and without --address the run starts a local Ray "
            "here; give --num-gpus 0 for CPU workers, or --address of a Ray cluster with GPUs"
        )


def _drive(prepared: PreparedRun, pool: Pool, bar: Any, every_poll: Callable[[], None]) -> Progress:
    """Run the plan on `pool`; the first Ctrl-C drains (the chunk in flight finishes), a second one abandons it."""
    stop = {"asked": False}

    def on_sigint(signum: int, frame: object) -> None:
        if stop["asked"]:
            raise KeyboardInterrupt
        stop["asked"] = True
        print("\nlabeler: draining (chunks in flight finish; Ctrl-C again to abandon them)", file=sys.stderr)

    def on_progress(progress: Progress) -> None:
        bar.set_postfix(failed=progress.statuses["failed"], dead=progress.statuses["dead"], refresh=False)
        bar.update(progress.finished - bar.n)
        every_poll()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return service.execute(prepared, pool, on_progress, stopping=lambda: stop["asked"])
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_failed(prepared: PreparedRun, resume: bool, reason: str) -> UsageError:
    """The error for a worker that could not start; a new run that committed nothing forgets its manifest, so the
    same command can start it again."""
    if not resume and not prepared.committed:
        prepared.sink.discard_manifest()
        return UsageError(f"{reason}\nnothing was labelled; fix that and run the same command again")
    return UsageError(f"{reason}\nfix that and continue with: labeler run --resume {prepared.config.out}")


def _summary(prepared: PreparedRun, progress: Progress) -> int:
    out = prepared.config.out
    print(
        f"done: {dict(progress.statuses)}; {progress.finished} of {progress.total} features committed", file=sys.stderr
    )
    skipped = progress.statuses["skipped"]
    if skipped:
        print(
            f"{skipped} feature(s) skipped (too few active or inactive examples, or no exemplars); reasons: "
            f"labeler query --data {out} \"SELECT feature, error FROM labels WHERE status = 'skipped'\" "
            "(--unlabelable error stops before work instead)",
            file=sys.stderr,
        )
    _print_labels(prepared)
    _print_scores(prepared)
    print(f"labels: {out}/labels/part-*.parquet (one part per chunk)")
    print(f'query:  labeler query --data {out} "SELECT feature, label, confidence, confidence_reason FROM labels"')
    print(f"report: labeler report {out} --out report.html")
    if progress.finished < progress.total:
        print(f"stopped early; continue with: labeler run --resume {out}", file=sys.stderr)
        return 130
    return 1 if progress.statuses["failed"] == progress.total else 0


def _print_scores(prepared: PreparedRun) -> None:
    """How many labels are flagged low confidence, the median self-score, and the score stage's median."""
    import numpy as np

    columns = ["status", "heldout_auroc", "confidence", "independent_score", "independent_scorer", "independent_judge"]
    rows = [
        row
        for index in sorted(prepared.sink.committed())
        for row in prepared.sink.read_part(index).select(columns).to_pylist()
        if row["status"] == "labelled"
    ]
    own = [row["heldout_auroc"] for row in rows if row["heldout_auroc"] is not None]
    if not own:
        return
    low = sum(row["confidence"] == "low" for row in rows)
    line = f"confidence: {low} of {len(rows)} labels low; median held-out AUROC {np.median(own):.3f}"
    independent = [row for row in rows if row["independent_score"] is not None]
    if independent:
        by = f"{independent[0]['independent_scorer']} by {independent[0]['independent_judge']}"
        median = np.median([row["independent_score"] for row in independent])
        line += f"; median independent score ({by}) {median:.3f} of {len(independent)}"
    elif prepared.config.score.enabled:
        line += "; no label could be scored independently"
    print(line, file=sys.stderr)


def _print_labels(prepared: PreparedRun, limit: int = 20) -> None:
    """The first features' labels with their confidence (or the reason they have none), from the committed parts."""
    columns = ["feature", "status", "label", "confidence_score", "confidence", "confidence_reason", "error"]
    rows: list[dict[str, Any]] = []
    for index in sorted(prepared.sink.committed()):
        rows += prepared.sink.read_part(index).select(columns).to_pylist()
        if len(rows) >= limit:
            break
    if not rows:
        return
    width = max(len(row["label"] or "") for row in rows[:limit]) + 2
    print(f"{'feature':>8}  {'label':<{width}}confidence")
    for row in sorted(rows, key=lambda row: row["feature"])[:limit]:
        if row["status"] != "labelled":
            print(f"{row['feature']:>8}  {row['status']}: {row['error']}")
            continue
        said = f"{row['confidence_score']:.2f} {row['confidence']}"
        why = f": {row['confidence_reason']}" if row["confidence_reason"] else ""
        print(f"{row['feature']:>8}  {row['label']:<{width}}{said}{why}")
    total = prepared.plan.n_features
    if total > limit:
        print(f"... {total - limit} more in the Parquet dataset")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("storage_options", "harvest"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_template(path: Path) -> PromptTemplate:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read the template file {path}: {err}") from err
    known = {f.name for f in fields(PromptTemplate)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise UsageError(f"template file {path} must be a JSON object with keys among {sorted(known)}")
    return PromptTemplate(**{**asdict(PromptTemplate()), **raw})
