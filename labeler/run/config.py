"""The run config: one frozen dataclass per stage, composed, filled from YAML or TOML and `--set` overrides.

A config file holds any subset of the fields below, nested as the dataclasses are (see README, "Running
on Ray"); every field has a default, so an empty file is a valid config. Unknown keys and values of the
wrong type are refused with the path of the key and what it accepts. The discriminator is a tagged config
(`kind`), or a short spec (hf:DIR, embedding:DIR, minilm) that stands for one. This module reads no files
other than the one it is given and the word lists a vocabulary names, and knows nothing about Ray.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from labeler.discriminators.config import KINDS, DiscriminatorConfig, default_optimiser, parse_spec
from labeler.discriminators.embedding import EmbeddingConfig
from labeler.discriminators.vocab import read_word_list
from labeler.judge.stage import ScoreConfig
from labeler.optimise.labelling import LabelConfig
from labeler.run.scheduler import SchedulerConfig
from labeler.run.sink import SinkConfig

Engine = Literal["optimise", "noop"]


class ConfigError(ValueError):
    """The run config is wrong; the message names the key and says what it accepts."""


@dataclass(frozen=True)
class SourceConfig:
    """Where a run's exemplars (and optionally its per-feature harvest statistics) are read from."""

    exemplars: str | None = None
    """fsspec URL of the exemplars: a folder of Parquet parts, a .parquet file, or a local .jsonl file."""
    features: str | None = None
    """fsspec URL of a Parquet file with one row per feature (a harvest's features.parquet): `feature`, and
    optionally `status` (dead ones are recorded as dead) and `frequency` (stored as activation_frequency). With it
    the run's features are the ones it lists; without it, the distinct ids in the exemplars."""
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    """fsspec options for both URLs (e.g. {"endpoint_url": ...} for s3); a harvest made by the run is read with
    sink.storage_options, the run folder's."""


@dataclass(frozen=True)
class ProvenanceConfig:
    """Names stored on every label row; a harvest made or named by the run fills in those left unset."""

    run_id: str | None = None
    """Name of this run (default: the run folder's name and the start time)."""
    sae_id: str | None = None
    """The SAE the features belong to."""
    model: str | None = None
    """The model the SAE reads (the subject model)."""
    hook_point: str | None = None
    """Where in the model the SAE reads."""


@dataclass(frozen=True)
class WorkersConfig:
    """How many workers a run starts on Ray and what each one gets (`labeler label` runs one in-process)."""

    count: int = 1
    """Worker actors (each loads the discriminator once)."""
    num_cpus: float = 1.0
    """CPUs reserved per worker."""
    num_gpus: float = 0.0
    """GPUs per worker: 0 for CPU, a fraction (e.g. 0.25) to pack small models on one GPU, 1 or more whole."""
    max_restarts: int = 3
    """Times Ray restarts a worker that died (its chunk is retried by the scheduler)."""
    metrics_port: int = 0
    """Port each worker serves /metrics on: 0 picks a free one (several per node); fix it for one worker per pod."""
    metrics_host: str = "127.0.0.1"
    """Address each worker's /metrics listens on: loopback, or 0.0.0.0 where Prometheus scrapes other nodes."""
    tensor_parallel: int = 1
    """Ranks per worker: above 1 each worker is a gang of this many actors on one node (num_cpus and num_gpus are
    per rank), each holding 1/T of the causal-LM discriminator (hf only)."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"workers.count must be at least 1, got {self.count}")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError("workers.num_cpus and workers.num_gpus must be >= 0")
        if self.tensor_parallel < 1:
            raise ValueError(f"workers.tensor_parallel must be at least 1, got {self.tensor_parallel}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError(f"workers.num_gpus above 1 must be whole, got {self.num_gpus}")
        _check_port("workers.metrics_port", self.metrics_port)


@dataclass(frozen=True)
class MetricsConfig:
    """Where the driver serves its metrics and where Prometheus learns the workers' endpoints."""

    port: int | None = 0
    """Port of the driver's /metrics (0: a free one, printed at start; null: do not serve)."""
    host: str = "127.0.0.1"
    """Address the driver's /metrics listens on: loopback, or 0.0.0.0 where Prometheus scrapes from elsewhere."""
    targets_file: str | None = None
    """Prometheus file_sd JSON listing the driver's and every worker's endpoint, rewritten when workers change
    (default: prometheus_targets.json in the run folder)."""

    def __post_init__(self) -> None:
        if self.port is not None:
            _check_port("metrics.port", self.port)


def _check_port(name: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{name} must be a TCP port, 0 to 65535 (0: a free one), got {port!r}")


def _minilm() -> DiscriminatorConfig:
    return EmbeddingConfig(kind="minilm")


@dataclass(frozen=True)
class RunConfig:
    """A whole labelling run."""

    out: str = "labeler-run"
    """The run folder, any fsspec URL (a local folder, s3://bucket/prefix): manifest.json and labels/."""
    discriminator: DiscriminatorConfig = field(default_factory=_minilm)
    """The discriminator, loaded once per worker: hf:MODEL_DIR, embedding:MODEL_DIR or minilm, or in full
    ({kind: hf, model: DIR, readout: ...}: the fields of its kind)."""
    engine: Engine = "optimise"
    """optimise: label with the engine; noop: record every feature as skipped without a model (benchmarks)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    harvest: Mapping[str, Any] | None = None
    """When source.exemplars is not given, the harvest that produces them into OUT/harvest: HarvestConfig's fields
    (sae, model, corpus, tokens, features, ...; labeler/harvest/pipeline.py), or {demo: true} for the demo SAE.
    Neither exemplars nor harvest: the demo (service.DEMO_HARVEST)."""
    label: LabelConfig = field(default_factory=LabelConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """The score stage (off by default): each chunk's labels judged by other models before the chunk is committed."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)

    def __post_init__(self) -> None:
        check_no_credentials(self.source.storage_options, "source.storage_options")
        check_no_credentials(self.sink.storage_options, "sink.storage_options")
        harvest_options = (self.harvest or {}).get("storage_options")
        if isinstance(harvest_options, Mapping):
            check_no_credentials(harvest_options, "harvest.storage_options")


CREDENTIAL_WORDS = frozenset({"key", "secret", "token", "password", "passwd", "session", "credential", "credentials"})
"""A storage option whose name holds one of these words (split at `_`, `-`, `.` and camelCase) is a credential."""


def check_no_credentials(options: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError where a key of `options` (at any depth, e.g. client_kwargs.aws_session_token) names a
    credential: the config is written verbatim into the run folder's manifest.json, so a secret there would
    be stored next to the labels. The value is never echoed."""
    for name, value in options.items():
        key = f"{where}.{name}"
        words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower())
        if CREDENTIAL_WORDS.intersection(words):
            raise ConfigError(
                f"{key}: credentials are refused in a run config (it is written verbatim into the run folder's "
                "manifest.json); remove it and give them the environment or IAM way: AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or AWS_PROFILE) in the environment of the driver and "
                "every worker, or an IAM role (IRSA on Kubernetes, an instance profile on EC2); keep only "
                "non-secret options here, e.g. endpoint_url"
            )
        if isinstance(value, Mapping):
            check_no_credentials(value, key)


def load_config(path: str | Path | None, overrides: Mapping[str, Any] = {}) -> RunConfig:
    """The config in a YAML or TOML file (or the defaults), with `overrides` ("a.b.c" -> value) applied in order."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read the config file {path}: {err}") from err
        try:
            loaded = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings at the top level")
        raw = loaded or {}
    _expand_spec(raw)
    # The discriminator's kind first: its short spec replaces the whole section, which its fields then change.
    for dotted, value in sorted(overrides.items(), key=lambda item: item[0] != "discriminator"):
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {dotted}: {key} is not a section")
        node[leaf] = value
        if dotted == "discriminator":
            _expand_spec(raw)
    if isinstance(raw.get("discriminator"), dict):  # fields set without a kind change the default, minilm
        raw["discriminator"].setdefault("kind", RunConfig().discriminator.kind)
    _kind_optimiser_defaults(raw)
    return build(RunConfig, raw, "")


def _expand_spec(raw: dict[str, Any]) -> None:
    """A short discriminator spec (hf:DIR, embedding:DIR, minilm) becomes the mapping it stands for."""
    spec = raw.get("discriminator")
    if isinstance(spec, str):
        try:
            raw["discriminator"] = parse_spec(spec)
        except ValueError as err:
            raise ConfigError(f"discriminator: {err}") from err


def _kind_optimiser_defaults(raw: dict[str, Any]) -> None:
    """Resolve the optimiser once: the discriminator kind's default (`default_optimiser`), every field written out,
    with the fields the config sets over it. The manifest then records the optimiser in full."""
    disc = raw.get("discriminator", {})
    kind = disc.get("kind", "minilm") if isinstance(disc, dict) else None
    if not isinstance(kind, str) or kind not in KINDS:
        return  # a malformed or unknown discriminator is reported by build()
    label = raw.setdefault("label", {})
    if not isinstance(label, dict):
        return  # a malformed `label:` is reported by build()
    optimiser = label.setdefault("optimiser", {})
    if isinstance(optimiser, dict):
        label["optimiser"] = {**to_dict(default_optimiser(kind)), **optimiser}


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` with the value read as YAML (numbers, true/false, null, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set takes KEY=VALUE (e.g. workers.count=4), got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:  # e.g. a tag (!!python/object) that safe_load refuses
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"--set {text!r}: the value is not plain YAML ({problem}); give a number, true/false, null, a string, "
            "a list or a mapping"
        ) from None


def to_dict(config: Any) -> Any:
    """A config as plain JSON-able data (what the manifest records and `--resume` reads back)."""
    if is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    if isinstance(config, frozenset | set):
        return sorted(to_dict(v) for v in config)
    return config


def build(cls: type, raw: Any, where: str) -> Any:
    """An instance of the dataclass `cls` from a mapping, checking keys and types."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {[_join(where, k) for k in unknown]}; {where or 'the config'} accepts {sorted(known)}"
        )
    values = {name: _value(hints[name], raw[name], _join(where, name)) for name in raw}
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where or 'the config'}: {err}") from err


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _value(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if is_dataclass(hint):
        return build(hint, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if all(is_dataclass(a) and "kind" in {f.name for f in fields(a)} for a in options):
            return _tagged(options, value, where)
        errors = []
        for option in options:
            try:
                return _value(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {options}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin is frozenset:  # a vocabulary's word list: the words, or the name of a list (vocab.read_word_list)
        if isinstance(value, str):
            try:
                return read_word_list(value)
            except ValueError as err:
                raise ConfigError(f"{where}: {err}") from err
        if not isinstance(value, list | tuple | set | frozenset):
            raise ConfigError(f"{where} must be a word list's name (category-nouns, a file) or a list, got {value!r}")
        return frozenset(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(value)
    if origin in (Mapping, dict) or hint in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    if hint is Any:
        return value
    return value


def _tagged(options: list[Any], value: Any, where: str) -> Any:
    """A tagged config: the dataclass among `options` whose `kind` takes value["kind"]."""
    if not isinstance(value, Mapping) or "kind" not in value:
        kinds = [k for option in options for k in typing.get_args(typing.get_type_hints(option)["kind"])]
        raise ConfigError(f"{where} must name its kind, one of {kinds} (or be a short spec such as hf:DIR)")
    for option in options:
        if value["kind"] in typing.get_args(typing.get_type_hints(option)["kind"]):
            return build(option, value, where)
    kinds = [k for option in options for k in typing.get_args(typing.get_type_hints(option)["kind"])]
    raise ConfigError(f"{where}.kind must be one of {kinds}, got {value['kind']!r}")


def describe(cls: type = RunConfig, where: str = "") -> list[str]:
    """Every setting as `key: default  # doc`, for `labeler run --print-config-help`."""
    lines = []
    docs = field_docs(cls)
    for f in fields(cls):
        key = _join(where, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            lines.append(f"{key}:  # {docs.get(f.name) or (type(default).__doc__ or '').splitlines()[0]}")
            lines.extend(describe(type(default), key))
        else:
            lines.append(f"{key}: {json.dumps(to_dict(default))}  # {docs.get(f.name, '')}")
    return lines


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass's source, its lines joined into one."""
    import inspect

    try:
        source = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    last: str | None = None
    open_doc: list[str] | None = None
    for line in source:
        stripped = line.strip()
        if open_doc is not None and last:  # inside a docstring of several lines
            open_doc.append(stripped.split('"""')[0])
            if '"""' in stripped:
                docs[last], open_doc, last = " ".join(part for part in open_doc if part), None, None
            continue
        if last and stripped.startswith('"""'):
            body = stripped[3:]
            if '"""' in body:
                docs[last] = body.split('"""')[0]
                last = None
            else:
                open_doc = [body]
            continue
        name = stripped.split(":", 1)[0]
        last = name if ":" in stripped and name.isidentifier() and not stripped.startswith(("def", "class")) else None
    return docs
