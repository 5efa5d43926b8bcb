"""Command-line flags generated from the config dataclasses, and the config overrides they make.

Each command's sections list the dataclasses whose fields become its flags: for `labeler label` and
`labeler run` the run's out and discriminator (RunConfig), its source (SourceConfig), the optimiser
(OptimiserConfig), data (LabelConfig), discriminator (CausalLMConfig, EmbeddingConfig and their vocabulary)
and provenance configs, and for `labeler run` its workers (WorkersConfig); for `labeler harvest`
HarvestConfig and its SamplingConfig; for `labeler import delphi-cache` DelphiImportConfig and the same
SamplingConfig. A field becomes `--field-name`, with the field's docstring as its help and no default of its
own: a flag that is not given leaves the config's value (file, --set or the dataclass default) as it is.
The few flags a field also answers to are listed in ALIASES. This module knows nothing about what the
settings do.
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
from labeler.discriminators.config import KINDS, default_optimiser, spec_of
from labeler.discriminators.embedding import EmbeddingConfig
from labeler.discriminators.vocab import VocabFilter
from labeler.harvest.config import HarvestConfig, SamplingConfig
from labeler.harvest.delphi_cache import DelphiImportConfig
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.labelling import LabelConfig
from labeler.run.config import ProvenanceConfig, RunConfig, SourceConfig, WorkersConfig
from labeler.run.loading import field_docs


@dataclass(frozen=True)
class Section:
    """One config dataclass whose fields become flags of a group."""

    key: str
    """Where its fields sit in the config the command builds, dotted ("" for the top level)."""
    cls: type
    group: str
    """The help group the flags are listed under."""
    prefix: str = ""
    """Put before each field's name in the flag (e.g. vocab- for --vocab-min-chars)."""
    skip: tuple[str, ...] = ()
    """Fields that have no flag (set in other ways)."""
    only: tuple[str, ...] = ()
    """The only fields that get a flag, where the dataclass's other fields are other sections' (empty: all)."""
    required: tuple[str, ...] | None = None
    """The fields whose flags the command requires (None: those without a default)."""
    description: str = ""
    """Shown under the group's title."""


def _shown(default: Any) -> str:
    if isinstance(default, frozenset):
        return f"{len(default)} words"
    if isinstance(default, CausalLMConfig | EmbeddingConfig):
        return spec_of(default)
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
"""The flags of the labelling settings, on `labeler label` and `labeler run`: their config is the run config."""
LABEL_SECTIONS = (
    Section("", RunConfig, "run", only=("out", "discriminator"), required=("out", "discriminator")),
    Section("source", SourceConfig, "source", skip=("storage_options",), required=("exemplars",)),
    *SECTIONS,
)
"""The flags of `labeler label` (one worker in this process): the exemplars, run folder and discriminator required."""
RUN_SECTIONS = (
    Section("", RunConfig, "run", only=("out", "discriminator"), required=()),
    Section("source", SourceConfig, "source", skip=("storage_options",), required=()),
    Section("workers", WorkersConfig, "workers", prefix="workers-"),
    *SECTIONS,
)
"""The flags of `labeler run`, where the config file may give every setting."""
_SAMPLING = (
    "Which examples each feature gets: the same settings on `labeler harvest`, `labeler import delphi-cache` and in "
    "a run config's harvest.sampling."
)
HARVEST_SECTIONS = (
    Section("harvest", HarvestConfig, "harvest", skip=("sampling",), required=("out",)),
    Section("harvest.sampling", SamplingConfig, "sampling", description=_SAMPLING),
)
"""The flags of `labeler harvest`: its config is a HarvestConfig, keyed as a run config's `harvest:` section."""
DELPHI_SECTIONS = (
    Section("", DelphiImportConfig, "import", skip=("cache", "sampling")),
    Section("sampling", SamplingConfig, "sampling", description=_SAMPLING),
)
"""The flags of `labeler import delphi-cache`: its config is a DelphiImportConfig (the cache is its argument)."""
ALIASES = {
    "label.optimiser.max_steps": ("--steps",),
    "workers.count": ("--workers",),
    "workers.num_gpus": ("--num-gpus",),
    "harvest.sampling.top_examples": ("--top",),
    "harvest.sampling.quantile_examples": ("--per-feature",),
    "harvest.sampling.inactive_examples": ("--inactive",),
}
"""The other flags a field also answers to, by the field's key: shorter names (--steps, --workers, --num-gpus), and
`labeler harvest`'s short names of its example counts."""


def add_config_flags(parser: argparse.ArgumentParser, sections: tuple[Section, ...]) -> None:
    """Add a flag for every field of `sections`, grouped, each storing into `dest` "cfg:<dotted key>"."""
    seen: set[str] = set()
    for section in sections:
        group = parser.add_argument_group(section.group, section.description or None)
        docs = field_docs(section.cls)
        hints = typing.get_type_hints(section.cls)
        for f in fields(section.cls):
            key = f"{section.key}.{f.name}" if section.key else f.name
            if f.name in section.skip or (section.only and f.name not in section.only) or key in seen:
                continue
            seen.add(key)
            flags = (f"--{section.prefix}{f.name.replace('_', '-')}", *ALIASES.get(key, ()))
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            said = "required" if default is dataclasses.MISSING else f"default: {_shown(default)}"
            help_text = f"{docs.get(f.name, '')} ({key}; {said})"
            kind = _kind(hints[f.name])
            if "action" not in kind and "choices" not in kind:
                kind.setdefault("metavar", f.name.upper())
            if f.name in (section.required if section.required is not None else _without_default(section.cls)):
                kind["required"] = True
            group.add_argument(*flags, dest=f"cfg:{key}", default=argparse.SUPPRESS, help=help_text, **kind)


def _without_default(cls: type) -> tuple[str, ...]:
    return tuple(
        f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides ("a.b.c" -> value) of the generated flags that were given."""
    return {dest[4:]: value for dest, value in vars(args).items() if dest.startswith("cfg:")}


def settings_from(args: argparse.Namespace, root: str = "") -> dict[str, Any]:
    """The generated flags that were given, nested as a config file nests them, from the section `root` down
    (e.g. "harvest": {"sae": ..., "sampling": {"top_examples": 5}}), for `labeler.run.loading.build`."""
    settings: dict[str, Any] = {}
    prefix = f"{root}." if root else ""
    for key, value in overrides_from(args).items():
        *parents, leaf = key.removeprefix(prefix).split(".")
        node = settings
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return settings


def _kind(hint: Any) -> dict[str, Any]:
    """argparse settings for a field of type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _kind(options[0])
        if all(is_dataclass(option) for option in options):  # a tagged config: its short spec (hf:DIR)
            return {"type": str, "metavar": "SPEC"}
        return {"type": _number}
    if origin is Literal:
        return {"choices": list(args)}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple and args[1:] == (Ellipsis,) and args[0] is int:
        return {"type": _int_list, "metavar": "A-B|I,J,..."}
    if origin is tuple:
        return {"type": args[0], "nargs": len(args)}
    if origin is frozenset:
        return {"metavar": "LIST", "type": str}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no flag for a field of type {hint}")


def _int_list(text: str) -> list[int]:
    """A range A-B (B excluded) or a list I,J,... of integers."""
    try:
        if "-" in text:
            start, stop = (int(x) for x in text.split("-", 1))
            return list(range(start, stop))
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a range A-B (B excluded) or a list 1,5,9") from None


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eEn") else int(text)
