"""Import a delphi latent cache (EleutherAI/delphi's `LatentCache.save_splits`) as exemplars.

The layout, as delphi writes it: `latents/<hook>/<start>_<end>.safetensors`, one file per range of latents
[start, end] (end included), each holding `locations` (Int[entry 3]: sequence, position, latent - start),
`activations` (Float[entry], every activation delphi kept: |a| > 1e-5) and `tokens` (Int[sequence position]: the
cached windows, the same in every file). The cache is complete for the tokens it covers: a (token, latent) not in
`locations` was zero there.

One file at a time (bounded memory: one file's arrays and its latents' fixed-size state), its entries are
replayed in token order, a chunk of tokens at a time, through the harvest's own running state
(`labeler.harvest.stats.FeatureStats`), so each latent gets the harvest's examples (top, quantile,
inactive) with its counts, and the harvest's own text code gives each row its context and target from the
cached window. Windows are independent (delphi shuffles them): no row borrows from a neighbouring window.
Latents with no activation are written as dead. This module knows delphi's files, not delphi's code.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file

from labeler.harvest.config import SamplingConfig
from labeler.harvest.exemplar_parts import ImportManifest, ImportSourceError, PartWriter
from labeler.harvest.pipeline import exemplar_table
from labeler.harvest.select import quantile_picks
from labeler.harvest.stats import FeatureStats
from labeler.harvest.texts import Texts

_SPLIT = re.compile(r"^(\d+)_(\d+)\.safetensors$")
_CHUNK_ENTRIES = 1 << 22
"""Dense (token x latent) entries per replayed chunk at most: 16 MiB of float32."""


@dataclass(frozen=True)
class DelphiImportConfig:
    """What to import, and which examples each feature gets (the harvest's sampling settings)."""

    cache: str
    """The delphi run folder holding latents/<hook>/, the latents folder, or one hook's folder."""
    model: str
    """A Hugging Face tokenizer folder (or the model's): decodes the cached token ids."""
    out: str
    """Output folder or fsspec URL; must not hold exemplars yet."""
    hook: str | None = None
    """Which hook's folder under latents/ (needed only when there are several)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Which examples each latent gets, as `labeler harvest` chooses them (a latent active on fewer than
    min_active_tokens cached tokens is ultra_rare)."""


def import_delphi_cache(config: DelphiImportConfig, storage_options: dict[str, Any] | None = None) -> ImportManifest:
    """Write OUT/exemplars/part-NNNNN.parquet (one per cache file), OUT/features.parquet and OUT/manifest.json."""
    hook, files = hook_files(Path(config.cache), config.hook)
    tokenizer = _tokenizer(config.model)
    writer = PartWriter(config.out, storage_options)
    first_tokens: np.ndarray | None = None
    unresolved = 0
    for path, start, end in files:
        arrays = _read_split(path, start, end)
        tokens = arrays["tokens"]
        if first_tokens is None:
            first_tokens = tokens
            _check_tokenizer(tokens, tokenizer, config.model, path)
        elif not np.array_equal(tokens, first_tokens):
            raise ImportSourceError(
                f"{path}: its tokens differ from those of {files[0][0].name}; the files of one hook must come from "
                "one delphi cache run"
            )
        exemplars, features, n_unresolved = _import_split(config.sampling, tokenizer, arrays, start, end)
        writer.write_part(exemplars, features)
        unresolved += n_unresolved
    assert first_tokens is not None
    return writer.finish(
        source_format="delphi-cache",
        sae=str(config.cache),
        model=config.model,
        hook=hook,
        tokens=int(first_tokens.size),
        windows=int(first_tokens.shape[0]),
        unresolved_targets=unresolved,
        settings={k: v for k, v in asdict(config).items() if k not in ("cache", "model", "out")},
    )


def hook_files(cache: Path, hook: str | None) -> tuple[str, list[tuple[Path, int, int]]]:
    """(the hook's name, its files with their latent ranges [start, end], in order); raises where the folder is not
    a delphi cache."""
    if not cache.is_dir():
        raise ImportSourceError(f"delphi cache folder not found: {cache}")
    if _splits(cache):
        folder = cache
    else:
        base = cache / "latents" if (cache / "latents").is_dir() else cache
        hooks = sorted(p.name for p in base.iterdir() if p.is_dir() and _splits(p))
        if not hooks:
            raise ImportSourceError(
                f"{cache} is not a delphi latent cache: expected latents/<hook>/<start>_<end>.safetensors (as delphi's "
                "LatentCache.save_splits writes), found no such files"
            )
        if hook is None and len(hooks) > 1:
            raise ImportSourceError(f"{cache} holds several hooks {hooks}; choose one with --hook")
        if hook is not None and hook not in hooks:
            raise ImportSourceError(f"{cache} has no hook {hook!r}; it holds {hooks}")
        folder = base / (hook or hooks[0])
    files = sorted(_splits(folder), key=lambda f: f[1])
    for (a, _, a_end), (b, b_start, _) in itertools.pairwise(files):
        if b_start <= a_end:
            raise ImportSourceError(f"{a} and {b} hold overlapping latent ranges")
    return folder.name, files


def _splits(folder: Path) -> list[tuple[Path, int, int]]:
    found = []
    for path in folder.glob("*.safetensors"):
        match = _SPLIT.match(path.name)
        if match:
            found.append((path, int(match[1]), int(match[2])))
    return found


def _tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise ImportSourceError(
            f"cannot load a tokenizer from {model}: {err}; --model must name the tokenizer (or model) folder the "
            "cache was made with"
        ) from err


def _check_tokenizer(tokens: np.ndarray, tokenizer: Any, model: str, path: Path) -> None:
    top = int(tokens.max()) if tokens.size else -1
    if top >= len(tokenizer) or (tokens.size and int(tokens.min()) < 0):
        raise ImportSourceError(
            f"{path}: token ids up to {top}, but the tokenizer at {model} has {len(tokenizer)} tokens; --model must "
            "name the tokenizer the cache was made with"
        )


def _read_split(path: Path, start: int, end: int) -> dict[str, np.ndarray]:
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ImportSourceError(f"cannot read {path} as safetensors: {err}") from err
    missing = [k for k in ("locations", "activations", "tokens") if k not in arrays]
    if missing:
        hint = " (delphi was run with save_tokens=False: cache again with tokens)" if missing == ["tokens"] else ""
        raise ImportSourceError(f"{path}: missing {missing} of locations, activations, tokens{hint}")
    locations, activations, tokens = arrays["locations"], arrays["activations"], arrays["tokens"]
    if locations.ndim != 2 or locations.shape[1] != 3 or activations.shape != (locations.shape[0],) or tokens.ndim != 2:
        raise ImportSourceError(
            f"{path}: expected locations Int[entry 3], activations Float[entry] and tokens Int[sequence position]; "
            f"found {locations.shape}, {activations.shape}, {tokens.shape}"
        )
    locations = locations.astype(np.int64)
    bounds = (tokens.shape[0], tokens.shape[1], end - start + 1)
    for column, (name, bound) in enumerate(zip(("sequence", "position", "latent"), bounds, strict=True)):
        if len(locations) and (locations[:, column].max() >= bound or locations[:, column].min() < 0):
            raise ImportSourceError(
                f"{path}: a location's {name} is outside [0, {bound}); the file is not this cache's"
            )
    return {"locations": locations, "activations": activations.astype(np.float32), "tokens": tokens.astype(np.int64)}


def _import_split(
    sampling: SamplingConfig, tokenizer: Any, arrays: dict[str, np.ndarray], start: int, end: int
) -> tuple[pa.Table, pa.Table, int]:
    """One file's exemplar rows and feature rows, and its rows' unresolved targets."""
    locations, activations, tokens = arrays["locations"], arrays["activations"], arrays["tokens"]
    windows, context_len = tokens.shape
    width = end - start + 1
    features = np.arange(start, end + 1)
    device = torch.device("cpu")
    stats = FeatureStats(width, sampling, device)
    token = locations[:, 0] * context_len + locations[:, 1]
    order = np.argsort(token, kind="stable")
    token, latent, value = token[order], locations[order, 2], activations[order]
    chunk = max(1, _CHUNK_ENTRIES // width)
    n_tokens = windows * context_len
    for first in range(0, n_tokens, chunk):
        last = min(first + chunk, n_tokens)
        a, b = np.searchsorted(token, [first, last])
        dense = torch.zeros((last - first, width))  # Float[token latent]: zero where delphi kept nothing
        dense[torch.as_tensor(token[a:b] - first), torch.as_tensor(latent[a:b])] = torch.as_tensor(value[a:b])
        stats.update(dense, torch.arange(first, last))
    rows, chosen = _picks(sampling, features, stats)
    # Each window gets one invalid column at its end, so the harvest's text code never reads into the next window
    # (delphi's windows are shuffled, not one stream); token indices are renumbered to match.
    padded = np.zeros((windows, context_len + 1), dtype=np.int32)
    padded[:, :context_len] = tokens
    valid = np.zeros((windows, context_len + 1), dtype=bool)
    valid[:, :context_len] = True
    texts = Texts(tokenizer, padded, np.packbits(valid, axis=1), head=0)
    rows = [(at, (t // context_len) * (context_len + 1) + t % context_len, act, kind) for at, t, act, kind in rows]
    table = exemplar_table(features, rows, texts, context_len + 1)
    window = table.column("window").to_numpy()
    offsets = np.arange(len(window) + 1, dtype=np.int32) * context_len
    window_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens[window].ravel(), pa.int32()))
    table = table.set_column(table.schema.get_field_index("window_ids"), table.schema.field("window_ids"), window_ids)
    return table, _feature_rows(sampling, features, stats, chosen, n_tokens), texts.unresolved


def _picks(
    sampling: SamplingConfig, features: np.ndarray, stats: FeatureStats
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], dict[str, np.ndarray]]:
    """The harvest's choice of rows from its state: (index into features, token, activation, kind) per kind."""
    count, non_finite = stats.count.numpy(), stats.non_finite.numpy()
    maxima = stats.max.numpy().astype(np.float64)
    top, sample, inactive = stats.top.kept(), stats.sample.kept(), stats.inactive.kept()
    writes = ((count > 0) & (non_finite == 0))[:, None]  # dead and failed features get no rows
    chosen = {
        "top": (top[0] > -math.inf) & writes,
        "quantile": quantile_picks(sampling, features, maxima, top[1], list(sample)) & writes,
        "inactive": (inactive[0] > -math.inf) & writes,
    }
    kept = {"top": top, "quantile": sample, "inactive": inactive}
    rows = [(np.nonzero(m)[0], kept[kind][1][m], kept[kind][2][m], kind) for kind, m in chosen.items()]
    return rows, chosen


def _feature_rows(
    sampling: SamplingConfig, features: np.ndarray, stats: FeatureStats, chosen: dict[str, np.ndarray], n_tokens: int
) -> pa.Table:
    count, non_finite = stats.count.numpy(), stats.non_finite.numpy()
    sums = stats.sum.numpy()
    used = max(n_tokens - stats.skipped_tokens, 1)
    status = np.select(
        [non_finite > 0, count == 0, count < sampling.min_active_tokens], ["failed", "dead", "ultra_rare"], "alive"
    )
    error = [
        f"the cached activation was NaN or infinite on {n:,} tokens; no examples were written" if n else None
        for n in non_finite.tolist()
    ]
    return pa.table(
        {
            "feature": features.astype(np.int64),
            "status": status.tolist(),
            "active_tokens": count,
            "frequency": count / used,
            "max_activation": stats.max.numpy().astype(np.float64),
            "mean_active_activation": np.divide(sums, count, out=np.zeros(len(count)), where=count > 0),
            "top_examples": chosen["top"].sum(1).astype(np.int32),
            "quantile_examples": chosen["quantile"].sum(1).astype(np.int32),
            "inactive_examples": chosen["inactive"].sum(1).astype(np.int32),
            "non_finite_tokens": non_finite,
            "error": pa.array(error, pa.string()),
        }
    )
