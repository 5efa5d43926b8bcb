"""Harvesting: one streaming pass over a corpus for all features at once, then exemplar rows per feature.

Per batch of windows (on the device): the model runs up to the hook, the SAE encodes, and running
per-feature state of a fixed size is updated in place (`labeler.harvest.stats`).

The windows' token ids, and a bit per token saying whether it is corpus text, are appended to temporary
files on disk (not memory) so that the chosen examples can be written with their context without
re-tokenising. Contexts and targets are decoded from those windows by `labeler.harvest.texts` (a target
that could not be made whole characters is counted in the manifest).

At the end, per feature: the top examples; `quantile_examples` examples spread over `quantiles` equal-width
bins of (0, max] (in the manner of delphi, `labeler.harvest.select`), drawn from the reservoir and the
top-k; and the inactive sample.

Output under `out` (any fsspec URL): `exemplars/part-NNNNN.parquet` (EXEMPLAR_ROW_SCHEMA, features
[k*features_per_part, (k+1)*features_per_part) in part k), `features.parquet` (FEATURE_SCHEMA: every
feature, dead ones included, with its status) and `manifest.json`. This module knows the SAE only
through `FeatureSource.latents`, the statistics only through `FeatureStats`, and the texts only through `Texts`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from labeler import __version__
from labeler.errors import InputError
from labeler.harvest.config import HarvestConfig
from labeler.harvest.corpus import CorpusError, check_corpus, iter_documents, iter_windows, window_head
from labeler.harvest.sae_source import FeatureSource, SourceError, load_source
from labeler.harvest.select import quantile_picks, selected_features
from labeler.harvest.stats import FeatureStats
from labeler.harvest.texts import Texts
from labeler.records.schema import EXEMPLAR_ROW_SCHEMA, FEATURE_SCHEMA, HARVEST_SCHEMA_VERSION
from labeler.records.storage import url_to_fs
from labeler.run.runtime import keep_freed_memory

Progress = Callable[[int, int], None]
"""Called after every batch with (corpus tokens done, tokens expected in all): the expected total is
`tokens` or, when the corpus is shorter or `tokens` is None, an estimate from the characters read so far."""


@dataclass(frozen=True)
class HarvestManifest:
    """What was harvested; written as manifest.json next to the data."""

    sae: str
    model: str
    hook: str
    hook_module: str
    corpus: str
    tokens: int
    windows: int
    d_sae: int
    features: int
    dead: int
    ultra_rare: int
    failed: int
    skipped_tokens: int
    """Tokens left out because every latent was NaN or infinite there."""
    exemplar_rows: int
    unresolved_targets: int
    """Exemplar rows whose target is a token's text with U+FFFD: the token holds only bytes of a character whose
    other bytes are not in the harvest (the last document was cut by `tokens`), or the corpus has U+FFFD there."""
    parts: int
    seconds: float
    settings: dict[str, Any]
    labeler_version: str = __version__
    schema_version: int = HARVEST_SCHEMA_VERSION


def check_context_len(context_len: int, model_config: Any, model: str) -> None:
    """Refuse windows longer than the subject model's positions (its embedding would fail on every batch)."""
    limits = [getattr(model_config, name, None) for name in ("max_position_embeddings", "n_positions", "n_ctx")]
    limit = next((int(x) for x in limits if isinstance(x, int) and x > 0), None)
    if limit is not None and context_len > limit:
        raise SourceError(
            f"--context-len {context_len} is longer than the subject model {model} takes ({limit} positions); "
            f"give --context-len {limit} or less"
        )


def harvest(
    config: HarvestConfig, progress: Progress | None = None, storage_options: Mapping[str, Any] | None = None
) -> HarvestManifest:
    """Harvest exemplars of every (selected) feature and write them under `config.out`.

    `storage_options` are fsspec's for `config.out` (e.g. {"endpoint_url": ...} for an S3 that is not AWS's);
    they are not stored in the manifest, as they may hold credentials."""
    fs, root = url_to_fs(config.out, storage_options)
    held = [name for name in ("manifest.json", "exemplars", "features.parquet") if fs.exists(f"{root}/{name}")]
    if held:
        raise InputError(
            f"{config.out} already holds {', '.join(held)} (a harvest's or a run's names); a harvest never writes over "
            "them: choose a new --out"
        )
    _, characters = check_corpus(config.corpus, config.text_column, config.max_document_bytes)
    source = load_source(config.sae, config.model, config.device, config.dtype, config.hook, config.sae_format)
    check_context_len(config.context_len, source.model.config, config.model)
    if source.device.type == "cpu":
        keep_freed_memory()  # every batch allocates the same large tensors again: reuse, don't page-fault anew
    features = selected_features(config, source.d_sae)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labeler-harvest-") as scratch:
        window_file, valid_file = Path(scratch) / "windows.int32", Path(scratch) / "valid.bits"
        stats, tokens, windows = _stream(config, source, features, window_file, valid_file, characters, progress)
        if tokens == 0:
            raise CorpusError(f"corpus {config.corpus} yields no tokens")
        if stats.skipped_tokens:
            warnings.warn(
                f"{stats.skipped_tokens:,} of {tokens:,} tokens were left out: every SAE latent was NaN or infinite "
                "there (the model's activations overflow? try --dtype float32)",
                stacklevel=2,
            )
        if config.tokens is not None and tokens < config.tokens:
            warnings.warn(
                f"the corpus holds only {tokens:,} tokens, fewer than the {config.tokens:,} asked for "
                "(--tokens); harvested all of them",
                stacklevel=2,
            )
        window_ids = np.memmap(window_file, dtype=np.int32, mode="r", shape=(windows, config.context_len))
        packed = np.memmap(valid_file, dtype=np.uint8, mode="r", shape=(windows, -(-config.context_len // 8)))
        texts = Texts(source.tokenizer, window_ids, packed, len(window_head(source.tokenizer)))
        table, rows, parts = _write(config, fs, root, features, stats, tokens, texts)
        unresolved = texts.unresolved
        del window_ids, packed, texts
    statuses = table.column("status").to_pylist()
    manifest = HarvestManifest(
        sae=config.sae,
        model=config.model,
        hook=source.hook.name,
        hook_module=f"{source.hook.module} ({source.hook.side})",
        corpus=config.corpus,
        tokens=tokens,
        windows=windows,
        d_sae=source.d_sae,
        features=len(features),
        dead=statuses.count("dead"),
        ultra_rare=statuses.count("ultra_rare"),
        failed=statuses.count("failed"),
        skipped_tokens=stats.skipped_tokens,
        exemplar_rows=rows,
        unresolved_targets=unresolved,
        parts=parts,
        seconds=round(time.perf_counter() - started, 3),
        settings={k: v for k, v in asdict(config).items() if k not in ("sae", "model", "corpus", "out")},
    )
    with fs.open(f"{root}/manifest.json", "w") as f:
        f.write(json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest


def _stream(
    config: HarvestConfig,
    source: FeatureSource,
    features: np.ndarray,
    window_file: Path,
    valid_file: Path,
    characters: int,
    progress: Progress | None,
) -> tuple[FeatureStats, int, int]:
    """The one pass over the corpus: returns the state, the corpus tokens seen and the windows written (their
    ids to `window_file`, their valid masks to `valid_file`, packed 8 tokens a byte)."""
    device = source.device
    stats = FeatureStats(len(features), config.sampling, device)
    select = None if len(features) == source.d_sae else torch.as_tensor(features, device=device)
    tokens = windows = 0
    read = [0]  # characters handed to the tokenizer so far, for the progress estimate

    def counted(documents: Iterator[str]) -> Iterator[str]:
        for document in documents:
            read[0] += len(document)
            yield document

    documents = counted(iter_documents(config.corpus, config.text_column, config.max_document_bytes))
    batches = iter_windows(documents, source.tokenizer, config.context_len, config.batch_size, config.tokens)
    with open(window_file, "wb") as sink, open(valid_file, "wb") as valid_sink:
        for batch in batches:
            ids = torch.as_tensor(batch.ids, device=device)
            valid = torch.as_tensor(batch.valid, device=device)
            attention = torch.as_tensor(batch.attention, device=device)
            latents = source.latents(ids, attention.long())  # Float[window token feature]
            if select is not None:
                latents = latents.index_select(-1, select)
            token_index = (batch.first * config.context_len + torch.arange(ids.numel(), device=device)).view_as(ids)
            stats.update(latents[valid], token_index[valid])
            batch.ids.astype(np.int32).tofile(sink)
            np.packbits(batch.valid, axis=1).tofile(valid_sink)
            tokens += int(batch.valid.sum())
            windows += len(batch.ids)
            if progress is not None:
                expected = round(tokens * characters / max(read[0], 1))
                progress(tokens, min(expected, config.tokens) if config.tokens else expected)
    return stats, tokens, windows


def _write(
    config: HarvestConfig,
    fs: Any,
    root: str,
    features: np.ndarray,
    stats: FeatureStats,
    tokens: int,
    texts: Texts,
) -> tuple[pa.Table, int, int]:
    """Pick each feature's examples and write the exemplar parts and features.parquet."""
    count = stats.count.cpu().numpy()
    non_finite = stats.non_finite.cpu().numpy()
    used_tokens = max(tokens - stats.skipped_tokens, 1)
    maxima = stats.max.cpu().numpy().astype(np.float64)
    sums = stats.sum.cpu().numpy()
    top, sample, inactive = stats.top.kept(), stats.sample.kept(), stats.inactive.kept()
    fs.makedirs(f"{root}/exemplars", exist_ok=True)
    feature_tables: list[pa.Table] = []
    rows_written = 0
    part_of = features // config.features_per_part
    parts = sorted(set(part_of.tolist()))
    for part in parts:
        at = np.flatnonzero(part_of == part)
        writes = (count[at] > 0) & (non_finite[at] == 0)  # dead and failed features get no rows
        chosen = {
            "top": (top[0][at] > -math.inf) & writes[:, None],
            "quantile": quantile_picks(config.sampling, features[at], maxima[at], top[1][at], [x[at] for x in sample])
            & writes[:, None],
            "inactive": (inactive[0][at] > -math.inf) & writes[:, None],
        }
        kept = {"top": top, "quantile": sample, "inactive": inactive}
        rows = [
            (np.nonzero(mask)[0], kept[kind][1][at][mask], kept[kind][2][at][mask], kind)
            for kind, mask in chosen.items()
        ]
        table = exemplar_table(features[at], rows, texts, config.context_len)
        with fs.open(f"{root}/exemplars/part-{part:05d}.parquet", "wb") as f:
            pq.write_table(table, f)
        rows_written += table.num_rows
        error = [
            f"the SAE latent was NaN or infinite on {n:,} tokens; no examples were written" if n else None
            for n in non_finite[at]
        ]
        status = np.select(
            [non_finite[at] > 0, count[at] == 0, count[at] < config.sampling.min_active_tokens],
            ["failed", "dead", "ultra_rare"],
            "alive",
        )
        feature_tables.append(
            pa.table(
                {
                    "feature": features[at].astype(np.int64),
                    "status": status.tolist(),
                    "active_tokens": count[at],
                    "frequency": count[at] / used_tokens,
                    "max_activation": maxima[at],
                    "mean_active_activation": np.divide(
                        sums[at], count[at], out=np.zeros(len(at)), where=count[at] > 0
                    ),
                    "top_examples": chosen["top"].sum(1).astype(np.int32),
                    "quantile_examples": chosen["quantile"].sum(1).astype(np.int32),
                    "inactive_examples": chosen["inactive"].sum(1).astype(np.int32),
                    "part": np.full(len(at), part, dtype=np.int32),
                    "non_finite_tokens": non_finite[at],
                    "error": pa.array(error, pa.string()),
                    "schema_version": np.full(len(at), HARVEST_SCHEMA_VERSION, dtype=np.int32),
                },
                schema=FEATURE_SCHEMA,
            )
        )
    feature_table = pa.concat_tables(feature_tables)
    with fs.open(f"{root}/features.parquet", "wb") as f:
        pq.write_table(feature_table, f)
    return feature_table, rows_written, len(parts)


def exemplar_table(
    features: np.ndarray,
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]],
    texts: Texts,
    context_len: int,
) -> pa.Table:
    """Exemplar rows, a feature's rows together (top, quantile, inactive: each in its state's order), each with
    its context and target (see `Texts`).

    rows: per sampling kind, (index into `features`, global token index, activation, kind)."""
    feature_at = np.concatenate([r[0] for r in rows]).astype(np.int64)
    token = np.concatenate([r[1] for r in rows]).astype(np.int64)
    activation = np.concatenate([r[2] for r in rows]).astype(np.float64)
    sampling = np.concatenate([np.full(len(r[0]), r[3], dtype=object) for r in rows])
    kind = np.concatenate([np.full(len(r[0]), k) for k, r in enumerate(rows)])
    order = np.lexsort((kind, feature_at))  # stable: per feature top (best first), quantile, inactive
    feature_at, token, activation, sampling = feature_at[order], token[order], activation[order], sampling[order]
    window, position = np.divmod(token, context_len)
    windows, window_at = np.unique(window, return_inverse=True)
    ids = np.asarray(texts.window_ids[windows]).reshape(len(windows), context_len)
    target_id = ids[window_at, position]
    starts, ends = texts.documents(windows)
    start, end = starts[window_at, position], ends[window_at, position]
    target, before, after = texts.targets(window, position, start, end, target_id)
    start = texts.word_start(ids, window_at, position, start)
    offsets = np.arange(len(token) + 1, dtype=np.int32) * context_len
    columns = {
        "feature": pa.array(features[feature_at].astype(np.int64)),
        "context": texts.contexts(window, start, end, before, after),
        "target": target,
        "activation": pa.array(activation),
        "position": pa.array(position, pa.int32()),
        "window": pa.array(window, pa.int64()),
        "window_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids[window_at].ravel(), pa.int32())),
        "target_id": pa.array(target_id, pa.int32()),
        "sampling": pa.array(sampling.tolist(), pa.string()),
        "schema_version": pa.array(np.full(len(token), HARVEST_SCHEMA_VERSION, dtype=np.int32)),
    }
    return pa.table(columns, schema=EXEMPLAR_ROW_SCHEMA)
