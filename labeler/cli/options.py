"""Command-line flags generated from the config dataclasses, and the config overrides they make.

Every field of the optimiser (OptimiserConfig), data (LabelConfig), discriminator (CausalLMConfig,
EmbeddingConfig and their vocabulary) and provenance configs becomes a flag, `--field-name`, with the
field's docstring as its help and no default of its own: a flag that is not given leaves the config's
value (file, --set or the dataclass default) as it is. Flags are the same on `labeler label` and
`labeler run`. This module knows nothing about what the settings do.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal

from labeler.discriminators.causal_lm import CausalLMConfig
from labeler.discriminators.config import KINDS, default_optimiser
from labeler.discriminators.embedding import EmbeddingConfig
from labeler.discriminators.vocab import VocabFilter
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.labelling import LabelConfig
from labeler.run.config import ProvenanceConfig
from labeler.run.loading import field_docs


@dataclass(frozen=True)
class Section:
    """One config dataclass whose fields become flags of a group."""

    key: str
    """Where its fields sit in the run config, dotted."""
    cls: type
    group: str
    """The help group the flags are listed under."""
    prefix: str = ""
    """Put before each field's name in the flag (e.g. vocab- for --vocab-min-chars)."""
    skip: tuple[str, ...] = ()
    """Fields that have no flag (set in other ways)."""
    description: str = ""
    """Shown under the group's title."""


def _shown(default: Any) -> str:
    if isinstance(default, frozenset):
        return f"{len(default)} words"
    if isinstance(default, Mapping) or is_dataclass(default):
        return "see --print-config-help"
    return repr(default) if isinstance(default, str) else str(default)


def _kind_defaults() -> str:
    """The optimiser fields each discriminator kind defaults to, as the optimiser group's help says them."""
    base = OptimiserConfig()
    said = "; ".join(
        f"{kind}: "
        + ", ".join(
            f"{f.name}={_shown(getattr(config, f.name))}"
            for f in fields(config)
            if getattr(config, f.name) != getattr(base, f.name)
        )
        for kind, config in ((kind, default_optimiser(kind)) for kind in KINDS)
    )
    return f"The defaults below hold for every discriminator kind except where the kind sets its own ({said})."


SECTIONS = (
    Section("label.optimiser", OptimiserConfig, "optimiser", description=_kind_defaults()),
    Section("label", LabelConfig, "data", skip=("optimiser",)),
    Section("discriminator", CausalLMConfig, "discriminator (hf:)", skip=("kind", "model", "vocab", "template")),
    Section("discriminator", EmbeddingConfig, "discriminator (embedding:, minilm)", skip=("kind", "model", "vocab")),
    Section("discriminator.vocab", VocabFilter, "discriminator vocabulary", prefix="vocab-"),
    Section("provenance", ProvenanceConfig, "provenance (stored on every label row)"),
)
ALIASES = {"label.optimiser.max_steps": ("--steps",)}
"""Shorter flags some fields also answer to."""


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add a flag for every field of SECTIONS, grouped, each storing into `dest` "cfg:<dotted key>"."""
    seen: set[str] = set()
    for section in SECTIONS:
        group = parser.add_argument_group(section.group, section.description or None)
        docs = field_docs(section.cls)
        hints = typing.get_type_hints(section.cls)
        for f in fields(section.cls):
            key = f"{section.key}.{f.name}"
            if f.name in section.skip or key in seen:
                continue
            seen.add(key)
            flags = (f"--{section.prefix}{f.name.replace('_', '-')}", *ALIASES.get(key, ()))
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            help_text = f"{docs.get(f.name, '')} ({key}; default: {_shown(default)})"
            kind = _kind(hints[f.name])
            if "action" not in kind and "choices" not in kind:
                kind.setdefault("metavar", f.name.upper())
            group.add_argument(*flags, dest=f"cfg:{key}", default=argparse.SUPPRESS, help=help_text, **kind)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides ("a.b.c" -> value) of the generated flags that were given."""
    return {dest[4:]: value for dest, value in vars(args).items() if dest.startswith("cfg:")}


def _kind(hint: Any) -> dict[str, Any]:
    """argparse settings for a field of type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _kind(options[0])
        return {"type": _number}
    if origin is Literal:
        return {"choices": list(args)}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"type": args[0], "nargs": len(args)}
    if origin is frozenset:
        return {"metavar": "LIST", "type": str}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no flag for a field of type {hint}")


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eEn") else int(text)
