"""Filling a RunConfig: from a YAML or TOML file, `--set` overrides ("a.b.c" -> value), and back to plain data.

A config file holds any subset of RunConfig's fields (labeler/run/config.py), nested as the dataclasses are;
every field has a default, so an empty file is a valid config. Unknown keys and values of the wrong type are
refused with the path of the key and what it accepts. The discriminator is a tagged config (`kind`), or a short
spec (hf:DIR, embedding:DIR, minilm) that stands for one; its kind's default optimiser is resolved here, once,
with every field written out. `build` fills any config dataclass the same way (the harvest's too). This module
reads no files other than the one it is given and the word lists a vocabulary names, and knows nothing about Ray.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from labeler.discriminators.config import KINDS, default_optimiser, parse_spec
from labeler.discriminators.vocab import read_word_list
from labeler.errors import ConfigError, InputError
from labeler.optimise.confidence import read_calibration
from labeler.run.config import RunConfig


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
    config: RunConfig = build(RunConfig, raw, "")
    if config.label.calibration is not None:
        read_calibration(config.label.calibration)  # a file that is not one stops the run before any work
    return config


def _expand_spec(raw: dict[str, Any]) -> None:
    """A short discriminator spec (hf:DIR, embedding:DIR, minilm) becomes the mapping it stands for."""
    spec = raw.get("discriminator")
    if isinstance(spec, str):
        try:
            raw["discriminator"] = parse_spec(spec)
        except InputError as err:
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
        nested = {
            key: _join(where, name)
            for name in known
            if is_dataclass(hints[name])
            for key in (f.name for f in fields(hints[name]))
            if key in unknown
        }
        moved = "".join(f"; {key} belongs under {section}" for key, section in sorted(nested.items()))
        raise ConfigError(
            f"unknown setting(s) {[_join(where, k) for k in unknown]}; {where or 'the config'} accepts "
            f"{sorted(known)}{moved}"
        )
    values = {name: _value(hints[name], raw[name], _join(where, name)) for name in raw}
    try:
        return cls(**values)
    except (InputError, TypeError) as err:  # TypeError: a required setting left out
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
            except InputError as err:
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
