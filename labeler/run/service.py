"""A labelling run as the driver sees it: check the input, plan, write the manifest, drive the pool, resume.

Given a RunConfig and a pool of workers (the Ray adapter's in production), it plans chunks from feature
ids, writes the run folder's manifest once, skips the parts an earlier run committed, and drives the
scheduler until every feature has a committed record. It imports no Ray: the CLI builds the pool.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from labeler import __version__
from labeler.discriminators.config import spec_of, templates_of
from labeler.records.exemplars import unlabelable_reason
from labeler.records.labels import RunInfo, config_hash
from labeler.records.layout import HARVEST, LEASE, MANIFEST
from labeler.records.storage import url_to_fs
from labeler.run.config import ConfigError, RunConfig, SourceConfig
from labeler.run.fingerprint import FINGERPRINT, describe_changes, input_fingerprint
from labeler.run.lease import LeaseLost, RunLease
from labeler.run.loading import build, to_dict
from labeler.run.scheduler import Chunk, ChunkOutcome, Completion, Plan, Pool, Progress, Scheduler, drive, make_plan
from labeler.run.sink import PartSink, SinkConfig, StorageFullError
from labeler.run.worker import LabellerSpec, give_up_chunk, plan_features, read_chunk_exemplars


@dataclass(frozen=True)
class PreparedRun:
    """A run ready to drive: its plan, sink, manifest and the chunks already committed."""

    config: RunConfig
    plan: Plan
    sink: PartSink
    manifest: dict[str, Any]
    committed: frozenset[int]
    lease: RunLease | None = None
    """The lease this driver holds on the run folder, where it took one (the CLI does)."""

    def spec(self) -> LabellerSpec:
        c = self.config
        return LabellerSpec(c.discriminator, c.label, c.source, self.run_info(), c.engine, c.score)

    def run_info(self) -> RunInfo:
        """The provenance stored on every row, from the manifest (so a resumed run writes the same)."""
        c, m = self.config, self.manifest
        prompt_template, label_template = templates_of(c.discriminator)
        return RunInfo(
            run_id=str(m["run_id"]),
            discriminator=spec_of(c.discriminator),
            config_hash=str(m["config_hash"]),
            seed=c.label.optimiser.seed,
            started_at=str(m["started"]),
            code_version=str(m["code_version"]),
            sae_id=m.get("sae"),
            model=m.get("subject_model"),
            hook_point=m.get("hook_point"),
            prompt_template=prompt_template,
            label_template=label_template,
        )


DEMO_HARVEST: dict[str, Any] = {"demo": True, "tokens": 20_000, "features": list(range(16))}
"""The embedded default when a run names neither exemplars nor a harvest: the demo SAE on all-MiniLM-L6-v2 over
WordNet glosses (trained once and cached), 20,000 tokens, its first 16 features."""
DEMO_CACHE = Path.home() / ".cache" / "labeler" / "demo-sae"


def harvest_stage(
    config: RunConfig, progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print
) -> RunConfig:
    """The run with its exemplars: as given, or harvested into OUT/harvest (kept there; a finished harvest is reused).

    `harvest:` holds HarvestConfig's fields (sae, model, corpus, tokens, features, ...; not out), nested as the
    dataclass is (`sampling: {top_examples: 20, ...}`, the SamplingConfig `labeler harvest` and `labeler import` use
    too), and `demo: true` (or a cache folder) for the demo SAE's sae, model and corpus. With neither exemplars nor
    harvest, the demo is the default.
    """
    if config.source.exemplars is not None:
        return config
    from labeler.harvest.config import HarvestConfig
    from labeler.harvest.pipeline import harvest

    settings = dict(DEMO_HARVEST if config.harvest is None else config.harvest)
    if config.harvest is None:
        log(f"no exemplars and no harvest given: harvesting the demo SAE ({DEMO_HARVEST})")
    demo = settings.pop("demo", False)
    if demo:
        from labeler.toys.demo_sae import build_demo

        assets = build_demo(DEMO_CACHE if demo is True else Path(str(demo)), log=log)
        settings = {"sae": str(assets.sae_dir), "model": str(assets.model_dir), "corpus": str(assets.corpus)} | settings
    if "out" in settings:
        raise ConfigError("harvest.out is set by the run: the harvest goes to OUT/harvest")
    if "://" not in config.out:  # before harvesting into it (prepare checks every out again)
        check_new_out(config.out, config.sink)
    # A local run folder is named absolutely in the manifest, so readers find the harvest from anywhere.
    out = f"{_absolute(config.out).rstrip('/')}/harvest"
    harvest_config = build(HarvestConfig, {**settings, "out": out}, "harvest")
    # The harvest lies in the run folder, so it is written and read with the run folder's storage options.
    storage = config.sink.storage_options
    fs, root = url_to_fs(out, storage)
    if fs.exists(f"{root}/manifest.json"):
        log(f"reusing the finished harvest in {out}")
    else:
        harvest(harvest_config, progress, storage)
    source = SourceConfig(exemplars=f"{out}/exemplars", features=f"{out}/features.parquet", storage_options=storage)
    return replace(config, source=source)


def _harvest_provenance(source: SourceConfig) -> dict[str, Any]:
    """SAE, subject model and hook from the manifest.json next to a harvest's features.parquet, if there is one."""
    if source.features is None:
        return {}
    folder = source.features.rstrip("/").rsplit("/", 1)[0]
    fs, root = url_to_fs(folder, source.storage_options)
    try:
        with fs.open(f"{root}/manifest.json", "rb") as f:
            harvest = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return {}
    return {"sae": harvest.get("sae"), "subject_model": harvest.get("model"), "hook_point": harvest.get("hook")}


def prepare(config: RunConfig, resume: bool = False, lease: RunLease | None = None) -> PreparedRun:
    """Check the input and the run folder, plan the chunks, and write (or, resuming, check) the manifest.

    With a `lease`, it is acquired once the input is checked and before anything is written or the committed
    parts are listed (LeaseHeld while another driver writes the run); the caller releases it."""
    if config.source.exemplars is None:
        raise ConfigError("no exemplars: set source.exemplars (or --exemplars), or run harvest_stage first")
    # Local input paths are named absolutely (in the manifest too), so workers, readers and a resume find them
    # from any working directory.
    features = config.source.features
    source = replace(
        config.source,
        exemplars=_absolute(config.source.exemplars),
        features=None if features is None else _absolute(features),
    )
    config = replace(config, source=source)
    if "://" not in config.out:
        _check_local_folder(Path(config.out))
    sink = PartSink(config.out, config.sink)
    if not resume:
        check_new_out(config.out, config.sink)
    label_ids, dead_ids = plan_features(config.source)
    plan = make_plan(label_ids, dead_ids, config.scheduler.features_per_chunk)
    if plan.n_features == 0:
        raise ConfigError(f"{config.source.exemplars} holds no features")
    if config.label.unlabelable == "error" and not resume:
        _refuse_unlabelable(config, label_ids)
    shape: dict[str, Any] = {
        "features": plan.n_features,
        "dead": len(plan.dead_ids),
        "chunks": plan.n_chunks,
        "features_per_chunk": plan.features_per_chunk,
        PLAN_DIGEST: plan_digest(plan),
        FINGERPRINT: input_fingerprint(
            [u for u in (config.source.exemplars, config.source.features) if u is not None],
            config.source.storage_options,
        ),
    }
    existing = sink.read_manifest() if resume else None  # a new run's out was checked above
    if existing is None and resume:
        raise ConfigError(f"nothing to resume at {config.out}: it has no {MANIFEST}")
    if existing is not None:
        _check_run_manifest(existing, config.out)
        planned = existing.get("plan")
        planned = dict(planned) if isinstance(planned, dict) else planned
        ids = {k: v for k, v in shape.items() if k != FINGERPRINT}
        counts = {k: v for k, v in ids.items() if k != PLAN_DIGEST}
        now = ids if isinstance(planned, dict) and PLAN_DIGEST in planned else counts  # older: counts only
        stored_prints = planned.pop(FINGERPRINT, None) if isinstance(planned, dict) else None
        if planned != now:
            same_counts = isinstance(planned, dict) and all(planned.get(k) == v for k, v in counts.items())
            raise ConfigError(
                f"the input of {config.out} changed since the run started: planned {planned}, now {now}"
                f"{' (the same counts, but other feature ids)' if same_counts else ''}; "
                "a resumed run must see the same features"
            )
        if stored_prints is not None and stored_prints != shape[FINGERPRINT]:  # older manifests: ids only
            raise ConfigError(
                f"the exemplars of {config.out} changed since the run started (the same feature ids, other "
                f"content): {describe_changes(stored_prints, shape[FINGERPRINT])}; a resumed run must see "
                "the same input: restore it, or label the new exemplars in a new run with a new out"
            )
        changed = _changed_label_settings(existing.get("config"), to_dict(config))
        if changed:
            raise ConfigError(
                f"{', '.join(changed)} differ from what {config.out} started with (manifest.json); a resumed run "
                "labels its remaining features as the first ones were, so leave these as they were, or start a new "
                "run with a new out"
            )
        if lease is not None:
            lease.acquire()
        manifest = existing
    else:
        started = datetime.datetime.now(datetime.UTC)
        named = config.provenance
        manifest = {
            "run_id": named.run_id or f"{config.out.rstrip('/').rsplit('/', 1)[-1]}-{started:%Y%m%dT%H%M%SZ}",
            "config_hash": config_hash(config.discriminator, config.label, config.source.exemplars),
            "labeler_version": __version__,
            "code_version": _code_version(),
            "discriminator": spec_of(config.discriminator),
            "discriminator_model": config.discriminator.model or spec_of(config.discriminator),
            "sae": None,
            "exemplars": config.source.exemplars,
            "started": started.isoformat(timespec="seconds"),
            "plan": shape,
            "config": to_dict(config),
        } | _harvest_provenance(config.source)
        given = {"sae": named.sae_id, "subject_model": named.model, "hook_point": named.hook_point}
        manifest |= {key: value for key, value in given.items() if value is not None}
        if lease is not None:
            lease.acquire()
        if not sink.write_manifest(manifest):
            raise ConfigError(f"another driver started a run at {config.out} at the same time")
    return PreparedRun(config, plan, sink, manifest, frozenset(sink.committed()), lease)


LABEL_SETTINGS = ("discriminator", "label", "score")
"""The settings that decide a feature's label and its scores: a resume must keep them (workers, sink, metrics may
change)."""
BATCHING_ONLY = {"features_per_batch", "unlabelable"}
"""Settings under label: that change how features are batched (batched equals one at a time), or what is checked
before work, not their labels."""


def _refuse_unlabelable(config: RunConfig, label_ids: np.ndarray) -> None:
    """With label.unlabelable = error: read every feature's examples first and stop, naming those that cannot be
    labelled (too few active or inactive examples), before the run folder is written."""
    problems: list[tuple[int, str]] = []
    step = config.scheduler.features_per_chunk
    for start in range(0, len(label_ids), step):
        exemplars, _ = read_chunk_exemplars(config.source, label_ids[start : start + step])
        problems += [(f.feature, r) for f in exemplars if (r := unlabelable_reason(f, config.label.active_threshold))]
    if problems:
        listed = "\n".join(f"  feature {feature}: {reason}" for feature, reason in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ConfigError(
            f"{len(problems)} feature(s) of {config.source.exemplars} cannot be labelled:\n{listed}{more}\n"
            "Fix the exemplars, or leave label.unlabelable at skip (--unlabelable skip) to record them as skipped."
        )


def _changed_label_settings(stored: Any, now: dict[str, Any]) -> list[str]:
    """The LABEL_SETTINGS (dotted, one level down) whose value differs between a manifest's config and `now`."""
    if not isinstance(stored, dict):
        return []  # a manifest without its config (written by other tools): nothing to compare
    changed = []
    for key in LABEL_SETTINGS:
        before, after = stored.get(key), now[key]
        if isinstance(before, dict) and isinstance(after, dict):
            changed += [
                f"{key}.{name}"
                for name in sorted(set(before) | set(after))
                if before.get(name) != after.get(name) and not (key == "label" and name in BATCHING_ONLY)
            ]
        elif key in stored and before != after:
            changed.append(key)
    return changed


PLAN_DIGEST = "feature_ids_sha256"
"""The key, in the manifest's "plan", of the digest of the planned feature ids (what a resume checks)."""


def plan_digest(plan: Plan) -> str:
    """SHA-256 of the ids to label and the dead ids (int64, little-endian), so a resume sees a changed input."""
    digest = hashlib.sha256()
    for name, ids in ((b"label", plan.label_ids), (b"dead", plan.dead_ids)):
        digest.update(name + len(ids).to_bytes(8, "little") + np.asarray(ids, dtype="<i8").tobytes())
    return digest.hexdigest()


RUN_OWN = {HARVEST, LEASE}
"""What a new run folder may hold before the run writes its manifest: the harvest the run made itself, and the
lease of a driver that stopped before writing it."""


def check_new_out(url: str, sink: SinkConfig) -> None:
    """Refuse, writing nothing, an out that already holds a run, a harvest or anything else this run did not make."""
    existing = PartSink(url, sink).read_manifest()
    if existing is not None:
        if _is_run_manifest(existing):
            raise ConfigError(
                f"{url} already holds a run (manifest.json); continue it with `labeler run --resume {url}` "
                "or choose a new out"
            )
        raise ConfigError(
            f"{url}/{MANIFEST} is not a labelling run's manifest ({_manifest_kind(existing)}); a run never writes "
            "over it: choose a new, empty out"
        )
    fs, root = url_to_fs(url, sink.storage_options)
    try:
        names = (
            sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) if fs.isdir(root) else []
        )
    except FileNotFoundError:
        names = []
    foreign = [name for name in names if name not in RUN_OWN]
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(
            f"{url} is not empty (it holds {listed}); a new run writes only into an empty or new folder, so nothing "
            "there is overwritten: choose a new out"
        )


def _is_run_manifest(manifest: dict[str, Any]) -> bool:
    return "run_id" in manifest and "config" in manifest


def _manifest_kind(manifest: dict[str, Any]) -> str:
    if "windows" in manifest and "exemplar_rows" in manifest:
        return "a harvest's: pass its exemplars/ and features.parquet as --exemplars and --features"
    return f"keys {sorted(manifest)[:6]}"


def _check_run_manifest(manifest: dict[str, Any], url: str) -> None:
    if not _is_run_manifest(manifest):
        raise ConfigError(
            f"nothing to resume at {url}: {url}/{MANIFEST} is not a labelling run's manifest "
            f"({_manifest_kind(manifest)})"
        )


def _check_local_folder(folder: Path) -> None:
    """Refuse, before any work and without creating anything, a run folder that could not be created or written."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create the run folder {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create the run folder {folder}: {existing} is not writable")


def _absolute(url: str) -> str:
    """A local path made absolute (against the working directory); URLs with a protocol as given."""
    return url if "://" in url else os.path.abspath(url)


def execute(
    run: PreparedRun,
    pool: Pool,
    on_progress: Callable[[Progress], None] = lambda progress: None,
    stopping: Callable[[], bool] = lambda: False,
) -> Progress:
    """Drive the run on `pool` until every feature is committed, or until `stopping()` and a drain.

    Two more things stop the run with a drain, and are raised once the chunks in flight have finished: the run
    folder's device filling up (StorageFullError; a chunk that failed for it is never recorded as failed, so a
    resume labels it), and another driver taking the run's lease over (LeaseLost)."""
    scheduler = Scheduler(run.plan, run.config.scheduler, committed=run.committed)
    info = run.run_info()
    watched = _StorageWatch(pool)

    def give_up(chunk: Chunk, error: str) -> ChunkOutcome:
        if watched.full is not None:
            raise StorageFullError(watched.full)
        return give_up_chunk(run.sink, info, chunk, error)

    def lost() -> bool:
        return run.lease is not None and run.lease.lost is not None

    progress = drive(scheduler, watched, give_up, on_progress, lambda: stopping() or watched.full is not None or lost())
    if watched.full is not None:
        raise StorageFullError(watched.full)
    if run.lease is not None and run.lease.lost is not None:
        raise LeaseLost(
            f"another {run.lease.lost.describe(datetime.datetime.now(datetime.UTC))} took {run.config.out} over: "
            f"this driver's heartbeat had not been written for longer than the lease's {run.lease.expiry:g} s (it "
            "stalled, or lost its storage), so it stopped sending chunks; the parts it committed are kept"
        )
    return progress


class _StorageWatch:
    """The pool, with each completion's error read for a full run folder (the first such message is kept)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.full: str | None = None

    def size(self) -> int:
        return self.pool.size()

    def alive(self) -> int:
        return self.pool.alive()

    def available(self, worker: int) -> bool:
        return self.pool.available(worker)

    def submit(self, worker: int, chunk: Chunk) -> None:
        self.pool.submit(worker, chunk)

    def poll(self, timeout: float) -> list[Completion]:
        done = self.pool.poll(timeout)
        kind = f"{StorageFullError.__name__}: "
        for completion in done:
            if self.full is None and (completion.error or "").startswith(kind):
                self.full = str(completion.error)[len(kind) :]
        return done


def resume_config(url: str, sink: SinkConfig) -> RunConfig:
    """The config a run at `url` was started with (from its manifest), to continue it."""
    manifest = PartSink(url, sink).read_manifest()
    if manifest is None:
        raise ConfigError(f"nothing to resume at {url}: it has no {MANIFEST}")
    _check_run_manifest(manifest, url)
    raw = dict(manifest["config"])
    raw["out"] = url
    config: RunConfig = build(RunConfig, raw, "")
    return config


def write_targets(run: PreparedRun, endpoints: list[str]) -> str:
    """Write the Prometheus file_sd targets (driver and workers); returns where."""
    groups = [{"targets": endpoints, "labels": {"job": "labeler", "run": run.config.out}}]
    data = (json.dumps(groups, indent=2) + "\n").encode()
    target = run.config.metrics.targets_file
    if target is None:
        run.sink.write_file("prometheus_targets.json", data)
        return f"{run.config.out}/prometheus_targets.json"
    with fsspec.open(target, "wb") as f:
        f.write(data)
    return target


def _code_version() -> str:
    """labeler's version and, from a git checkout, the commit (with +dirty when it has changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty=+dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
