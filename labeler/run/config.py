"""The run config: one frozen dataclass per stage, composed, filled from YAML or TOML and `--set` overrides.

A config file holds any subset of the fields below, nested as the dataclasses are (see README, "Running
on Ray"); every field has a default, so an empty file is a valid config. Unknown keys and values of the
wrong type are refused with the path of the key and what it accepts. This module reads no files other
than the one it is given and knows nothing about Ray.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from labeler.discriminators import CausalLMConfig, EmbeddingConfig, check_spec, optimiser_defaults
from labeler.optimise.labelling import LabelConfig
from labeler.ray_pool import WorkersConfig
from labeler.run.scheduler import SchedulerConfig
from labeler.run.sink import SinkConfig
from labeler.run.worker import Engine, SourceConfig


class ConfigError(ValueError):
    """The run config is wrong; the message names the key and says what it accepts."""


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


@dataclass(frozen=True)
class RunConfig:
    """A whole labelling run."""

    out: str = "labeler-run"
    """The run folder, any fsspec URL (a local folder, s3://bucket/prefix): manifest.json and labels/."""
    discriminator: str = "minilm"
    """hf:MODEL_DIR, embedding:MODEL_DIR or minilm (as for `labeler label`); loaded once per worker."""
    engine: Engine = "optimise"
    """optimise: label with the engine; noop: record every feature as skipped without a model (benchmarks)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    harvest: Mapping[str, Any] | None = None
    """When source.exemplars is not given, the harvest that produces them into OUT/harvest: HarvestConfig's fields
    (sae, model, corpus, tokens, features, ...; labeler/harvest/pipeline.py), or {demo: true} for the demo SAE. Neither
    exemplars nor harvest: the demo (service.DEMO_HARVEST)."""
    label: LabelConfig = field(default_factory=LabelConfig)
    causal_lm: CausalLMConfig = field(default_factory=CausalLMConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        check_spec(self.discriminator)  # the workers load it; a typo is caught before the run folder is written


def load_config(path: str | Path | None, overrides: Mapping[str, Any] = {}) -> RunConfig:
    """The config in a YAML or TOML file (or the defaults), with `overrides` ("a.b.c" -> value) applied."""
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
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"cannot set {dotted}: {key} is not a section")
        node[leaf] = value
    _encoder_optimiser_defaults(raw)
    return build(RunConfig, raw, "")


def _encoder_optimiser_defaults(raw: dict[str, Any]) -> None:
    """Fill in the optimiser settings the discriminator's kind defaults to, where the config sets none."""
    spec = raw.get("discriminator", RunConfig.discriminator)
    defaults = optimiser_defaults(spec) if isinstance(spec, str) else {}
    if not defaults:
        return
    label = raw.setdefault("label", {})
    if not isinstance(label, dict):
        return  # a malformed `label:` is reported by build()
    optimiser = label.setdefault("optimiser", {})
    if isinstance(optimiser, dict):
        for key, value in defaults.items():
            optimiser.setdefault(key, value)


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` with the value read as YAML (numbers, true/false, null, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set takes KEY=VALUE (e.g. workers.count=4), got {text!r}")
    return key.strip(), yaml.safe_load(value)


def to_dict(config: Any) -> Any:
    """A config as plain JSON-able data (what the manifest records and `--resume` reads back)."""
    if is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
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
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(value)
    if origin in (Mapping, dict) or hint in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    if hint is Any:
        return value
    return value


def describe(cls: type = RunConfig, where: str = "") -> list[str]:
    """Every setting as `key: default  # doc`, for `labeler run --print-config-help`."""
    lines = []
    docs = _field_docs(cls)
    for f in fields(cls):
        key = _join(where, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            lines.append(f"{key}:  # {docs.get(f.name) or (type(default).__doc__ or '').splitlines()[0]}")
            lines.extend(describe(type(default), key))
        else:
            lines.append(f"{key}: {json.dumps(to_dict(default))}  # {docs.get(f.name, '')}")
    return lines


def _field_docs(cls: type) -> dict[str, str]:
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
