"""Harvesting: one streaming pass over a corpus for all features at once, then exemplar rows per feature.

Per batch of windows (on the device): the model runs up to the hook, the SAE encodes, and running
per-feature state is updated in place. That state has a fixed size, whatever the corpus length:

* counts of active tokens (latent > 0), the maximum and the sum of activations;
* the exact top `top_examples` tokens by activation (a running top-k);
* a uniform random sample of `reservoir` active tokens and of `inactive_examples` inactive tokens
  (each token gets one random key, shared by all features; the largest keys are kept: a reservoir sample,
  batched).

The windows' token ids, and a bit per token saying whether it is corpus text, are appended to temporary
files on disk (not memory) so that the chosen examples can be written with their context without
re-tokenising. An example's context is the text of its own document only: the run of corpus-text tokens
around it in its window, cut at the separators, BOS and padding. Its target is the token's text or, where
the token holds only part of a character's bytes (byte-level BPE splits CJK characters and emoji), the
smallest run of tokens around it that reads as whole characters, reaching into the previous or next window
(where the same document goes on) when the window's edge cut the character. A character cut at either end
of the context is dropped from it unless it is the target's (then the context holds it whole too), and so
are the WordPiece continuation pieces ("##ing") a window that starts mid-word begins with, unless the target
is one of them. A target is never "": one whose character has bytes outside the harvest (the last document
cut by `tokens`) keeps U+FFFD and is counted in the manifest.

At the end, per feature: the top examples; `quantile_examples` examples spread over `quantiles` equal-width
bins of (0, max] (in the manner of delphi), drawn from the reservoir and the top-k, one per bin in turn so
that a bin short of candidates leaves its share to the others; and the inactive sample.

Output under `out` (any fsspec URL): `exemplars/part-NNNNN.parquet` (EXEMPLAR_ROW_SCHEMA, features
[k*features_per_part, (k+1)*features_per_part) in part k), `features.parquet` (FEATURE_SCHEMA: every
feature, dead ones included, with its status) and `manifest.json`. This module knows the SAE only
through `FeatureSource.latents`.
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
from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import decoders
from torch import Tensor

from labeler import __version__
from labeler.harvest.corpus import check_corpus, iter_documents, iter_windows, window_head
from labeler.harvest.sae_source import FeatureSource, load_source
from labeler.run.runtime import keep_freed_memory

SCHEMA_VERSION = 2

EXEMPLAR_ROW_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int64(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("activation", pa.float64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("window", pa.int64(), nullable=False),
        pa.field("window_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("target_id", pa.int32(), nullable=False),
        pa.field("sampling", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)
"""The exemplar contract (feature, context, target, activation) plus where the example came from.

`position` indexes `window_ids` (the window's token ids, BOS included); `sampling` is "top",
"quantile" or "inactive"."""

FEATURE_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("active_tokens", pa.int64(), nullable=False),
        pa.field("frequency", pa.float64(), nullable=False),
        pa.field("max_activation", pa.float64(), nullable=False),
        pa.field("mean_active_activation", pa.float64(), nullable=False),
        pa.field("top_examples", pa.int32(), nullable=False),
        pa.field("quantile_examples", pa.int32(), nullable=False),
        pa.field("inactive_examples", pa.int32(), nullable=False),
        pa.field("part", pa.int32(), nullable=False),
        pa.field("non_finite_tokens", pa.int64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)
"""One row per harvested feature; `status` is "alive", "ultra_rare" (fewer than `min_active_tokens`
active tokens), "dead" (never active: no exemplar rows) or "failed" (its latent was NaN or infinite on
`non_finite_tokens` tokens: no exemplar rows; `error` says so). Tokens where every latent is non-finite
(a model-side overflow) are left out of the harvest instead and counted in the manifest."""

Progress = Callable[[int, int], None]
"""Called after every batch with (corpus tokens done, tokens expected in all): the expected total is
`tokens` or, when the corpus is shorter or `tokens` is None, an estimate from the characters read so far."""


@dataclass(frozen=True)
class HarvestConfig:
    """What to harvest, from where, and how many examples per feature."""

    sae: str
    """A sae-lens SAE folder (cfg.json, sae_weights.safetensors) or RELEASE:SAE_ID."""
    model: str
    """The subject model: a Hugging Face folder or hub id (AutoModel, safetensors)."""
    corpus: str
    """A .txt/.jsonl/.parquet file (optionally compressed), a folder of them, or a saved `datasets` folder."""
    out: str
    """Output folder or fsspec URL; must not hold a harvest yet."""
    text_column: str = "text"
    """The text field of JSONL, Parquet and `datasets` corpora."""
    tokens: int | None = None
    """Corpus tokens to harvest at most (None: the whole corpus)."""
    context_len: int = 64
    """Tokens per window, BOS/CLS included."""
    batch_size: int = 32
    """Windows per forward pass."""
    top_examples: int = 10
    """Exact top-activating examples per feature."""
    quantile_examples: int = 40
    """Further active examples per feature, spread over the activation quantile bins."""
    quantiles: int = 10
    """Equal-width bins of (0, max activation] the quantile examples are spread over."""
    reservoir: int = 200
    """Uniformly sampled active tokens kept per feature to draw the quantile examples from."""
    inactive_examples: int = 50
    """Random non-activating examples per feature."""
    min_active_tokens: int = 10
    """A feature active on fewer tokens is reported as ultra_rare (on none: dead)."""
    features: tuple[int, ...] | None = None
    """Harvest only these features (None: all of the SAE's)."""
    features_per_part: int = 256
    """Features per exemplar Parquet part."""
    hook: str | None = None
    """Override the SAE's hook name (a sae-lens hook name or an HF module path)."""
    max_document_bytes: int = 1_000_000
    """A longer corpus line is an error (it would have to be held in memory whole)."""
    device: str = "auto"
    """torch device; "auto" takes CUDA when present."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """The subject model's dtype."""
    seed: int = 0
    """Seed of the random samples."""

    def __post_init__(self) -> None:
        positive = ("context_len", "batch_size", "quantiles", "features_per_part", "max_document_bytes")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("top_examples", "quantile_examples", "reservoir", "inactive_examples", "min_active_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"tokens must be at least 1 (or None for the whole corpus), got {self.tokens}")
        if self.features is not None and (not self.features or min(self.features) < 0):
            raise ValueError("features must be a non-empty tuple of feature ids >= 0")


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
    schema_version: int = SCHEMA_VERSION


class FeatureStats:
    """Fixed-size running state per feature, updated on the device (see the module docstring).

    A batch is read sparsely: its active (token, feature) entries once, then each running top-k is offered
    only the entries that beat its current k-th best, so after the first batches most of the batch's
    feature x token matrix is never touched again (the counts, maxima and sums come from the same entries).
    """

    def __init__(self, features: int, config: HarvestConfig, device: torch.device) -> None:
        self.count = torch.zeros(features, dtype=torch.int64, device=device)
        self.max = torch.zeros(features, dtype=torch.float32, device=device)
        self.sum = torch.zeros(features, dtype=torch.float64, device=device)
        self.non_finite = torch.zeros(features, dtype=torch.int64, device=device)
        self.skipped_tokens = 0
        self.top = _TopK(features, config.top_examples, device)
        self.sample = _TopK(features, config.reservoir, device)
        self.inactive = _TopK(features, config.inactive_examples, device)
        self.generator = torch.Generator(device=device).manual_seed(config.seed)

    def update(self, acts: Tensor, token: Tensor) -> None:
        """acts: Float[token feature] of valid tokens only; token: Int[token], global token indices.

        A NaN or infinite entry counts in `non_finite` and is neither active nor inactive; a token where every
        latent is (the model overflowed there) is left out and counted in `skipped_tokens`."""
        acts = acts.float()
        features = self.count.shape[0]
        if not bool(torch.isfinite(acts).all()):
            bad = ~torch.isfinite(acts)
            broken = bad.all(1)
            if bool(broken.any()):
                self.skipped_tokens += int(broken.sum())
                acts, token, bad = acts[~broken], token[~broken], bad[~broken]
            self.non_finite += bad.sum(0)
            acts = acts.masked_fill(bad, math.nan)  # NaN compares false both ways: out of every sample
        at, feature = (acts > 0).nonzero(as_tuple=True)  # the active entries, in (token, feature) order
        value = acts[at, feature]
        self.count += torch.bincount(feature, minlength=features)
        self.sum += torch.bincount(feature, weights=value.double(), minlength=features)
        self.max.scatter_reduce_(0, feature, value, "amax")
        at_token = token[at]
        self.top.offer(feature, value, at_token, value)
        # One random key per token, shared by all features: for each feature on its own the keys are still
        # independent and uniform, so keeping the largest keys is an exact uniform sample per feature.
        key = torch.rand(acts.shape[0], generator=self.generator, device=acts.device)
        self.sample.offer(feature, key[at], at_token, value)
        self._update_inactive(acts, key, token)

    def _update_inactive(self, acts: Tensor, key: Tensor, token: Tensor) -> None:
        """The inactive sample, mostly from the head of the batch's tokens by key.

        The head is the batch's tokens with the largest keys: at most 2k + 64 of them, and only those above
        the lowest k-th best key any feature holds (no other token can enter any feature's sample). A
        feature's sample is exact from the head alone when the head holds k of its inactive tokens, or when
        no token outside the head can beat its k-th best key; the others (dense features, active on most of
        the head) are done over the whole batch.
        """
        k = self.inactive.k
        if k == 0:
            return
        floor = self.inactive.score[:, -1]  # Float[feature]: the k-th best key so far (-inf while filling)
        sorted_key, order = key.sort(descending=True)
        head = min(2 * k + 64, int((sorted_key > floor.min()).sum()))
        if head == 0:
            return
        # The best key left out of the head: no feature whose k-th best is at least that can gain from the rest.
        outside = sorted_key[head] if head < len(key) else torch.tensor(-math.inf, device=key.device)
        order = order[:head]
        head_acts = acts[order]  # Float[head feature]
        inactive = (head_acts <= 0).T  # Bool[feature head], head in decreasing key order
        rank = inactive.cumsum(1) - 1
        exact = (rank[:, -1] + 1 >= k) | (outside <= floor)
        head_rows = exact.nonzero(as_tuple=True)[0]
        if len(head_rows):
            self.inactive.merge_ranked(
                head_rows,
                inactive[head_rows],
                rank[head_rows],
                key[order],
                token[order],
                head_acts[:, head_rows].T,
            )
        dense = (~exact).nonzero(as_tuple=True)[0]
        if len(dense):
            acts_dense = acts[:, dense].T  # Float[dense token]
            keys = torch.where(acts_dense <= 0, key, -math.inf)
            score, where = keys.topk(min(k, keys.shape[1]), dim=1)
            self.inactive.merge(dense, score, token[where], acts_dense.gather(1, where))


class _TopK:
    """The k largest scores per feature seen so far, with their token indices and activations.

    Each feature's row is kept sorted, best first; unused slots have score -inf. Scores are >= 0
    (activations of active tokens, or random keys in [0, 1))."""

    def __init__(self, features: int, k: int, device: torch.device) -> None:
        self.k = k
        self.score, self.token, self.act = _unused_slots(features, k, device)

    def offer(self, feature: Tensor, score: Tensor, token: Tensor, act: Tensor) -> None:
        """Sparse candidates (Int/Float[entry]): each feature keeps the k best of its old and its new."""
        if self.k == 0:
            return
        beats = score > self.score[feature, -1]
        feature, score, token, act = feature[beats], score[beats], token[beats], act[beats]
        if len(feature) == 0:
            return
        # Sort by feature, then by score descending, with one int64 key: a float32 >= 0 orders like its bits.
        bits = score.float().view(torch.int32).long()
        order = (feature * 2**31 + (2**31 - 1 - bits)).sort(stable=True).indices  # ties: the earlier token first
        feature, score, token, act = feature[order], score[order], token[order], act[order]
        rows, inverse, counts = torch.unique_consecutive(feature, return_inverse=True, return_counts=True)
        rank = torch.arange(len(feature), device=feature.device) - (counts.cumsum(0) - counts)[inverse]
        keep = rank < self.k
        width = int(min(int(counts.max()), self.k))
        new_score, new_token, new_act = _unused_slots(len(rows), width, score.device)
        at = (inverse[keep], rank[keep])
        new_score[at], new_token[at], new_act[at] = score[keep].float(), token[keep], act[keep].float()
        self.merge(rows, new_score, new_token, new_act)

    def merge_ranked(
        self, rows: Tensor, chosen: Tensor, rank: Tensor, score: Tensor, token: Tensor, act: Tensor
    ) -> None:
        """Candidates shared by all `rows`: score/token (Float/Int[column], score decreasing), chosen and
        rank (Bool/Int[row column]: which columns each row takes, and their order), act (Float[row column])."""
        width = min(score.shape[0], self.k)
        slot = torch.where(chosen & (rank < width), rank, width)  # the rest go to a spare column, dropped
        new_score, new_token, new_act = _unused_slots(len(rows), width + 1, score.device)
        new_score.scatter_(1, slot, score.expand_as(slot).contiguous())
        new_token.scatter_(1, slot, token.expand_as(slot).contiguous())
        new_act.scatter_(1, slot, act.float())
        self.merge(rows, new_score[:, :width], new_token[:, :width], new_act[:, :width])

    def merge(self, rows: Tensor, score: Tensor, token: Tensor, act: Tensor) -> None:
        """Merge sorted new rows (Float/Int[row m], best first) into `rows` of the state; old wins ties."""
        old_score, old_token, old_act = self.score[rows], self.token[rows], self.act[rows]
        k, m = self.k, score.shape[1]
        # Merging two sorted lists: an entry's place is its own index plus how many of the other list go first.
        new_at = torch.searchsorted(-old_score, -score, right=True) + torch.arange(m, device=score.device)
        old_at = torch.searchsorted(-score, -old_score, right=False) + torch.arange(k, device=score.device)
        merged = [torch.empty((len(rows), k + m), dtype=x.dtype, device=x.device) for x in (score, token, act)]
        for out, old, new in zip(merged, (old_score, old_token, old_act), (score, token, act), strict=True):
            out.scatter_(1, old_at, old)
            out.scatter_(1, new_at, new)
        self.score[rows], self.token[rows], self.act[rows] = (x[:, :k] for x in merged)

    def kept(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per feature (numpy): scores, token indices, activations; unused slots have score -inf."""
        return self.score.cpu().numpy(), self.token.cpu().numpy(), self.act.cpu().numpy()


def _unused_slots(rows: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k slots holding nothing: scores -inf, token indices -1, activations 0."""
    return (
        torch.full((rows, width), -math.inf, device=device),
        torch.full((rows, width), -1, dtype=torch.int64, device=device),
        torch.zeros((rows, width), device=device),
    )


def harvest(
    config: HarvestConfig, progress: Progress | None = None, storage_options: Mapping[str, Any] | None = None
) -> HarvestManifest:
    """Harvest exemplars of every (selected) feature and write them under `config.out`.

    `storage_options` are fsspec's for `config.out` (e.g. {"endpoint_url": ...} for an S3 that is not AWS's);
    they are not stored in the manifest, as they may hold credentials."""
    fs, root = fsspec.core.url_to_fs(config.out, **dict(storage_options or {}))
    if fs.exists(f"{root}/manifest.json") or fs.exists(f"{root}/exemplars"):
        raise ValueError(f"{config.out} already holds a harvest; choose a new --out or remove it")
    _, characters = check_corpus(config.corpus, config.text_column, config.max_document_bytes)
    source = load_source(config.sae, config.model, config.device, config.dtype, config.hook)
    if source.device.type == "cpu":
        keep_freed_memory()  # every batch allocates the same large tensors again: reuse, don't page-fault anew
    features = _selected(config, source.d_sae)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labeler-harvest-") as scratch:
        window_file, valid_file = Path(scratch) / "windows.int32", Path(scratch) / "valid.bits"
        stats, tokens, windows = _stream(config, source, features, window_file, valid_file, characters, progress)
        if tokens == 0:
            raise ValueError(f"corpus {config.corpus} yields no tokens")
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
        texts = _Texts(source.tokenizer, window_ids, packed, len(window_head(source.tokenizer)))
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


def _selected(config: HarvestConfig, d_sae: int) -> np.ndarray:
    if config.features is None:
        return np.arange(d_sae)
    bad = [f for f in config.features if f >= d_sae]
    if bad:
        raise ValueError(f"features {bad[:5]} do not exist: the SAE has {d_sae} features (0..{d_sae - 1})")
    return np.array(sorted(set(config.features)))


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
    stats = FeatureStats(len(features), config, device)
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
    texts: _Texts,
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
            "quantile": _quantile_picks(config, features[at], maxima[at], top[1][at], [x[at] for x in sample])
            & writes[:, None],
            "inactive": (inactive[0][at] > -math.inf) & writes[:, None],
        }
        kept = {"top": top, "quantile": sample, "inactive": inactive}
        rows = [
            (np.nonzero(mask)[0], kept[kind][1][at][mask], kept[kind][2][at][mask], kind)
            for kind, mask in chosen.items()
        ]
        table = _exemplar_table(features[at], rows, texts, config.context_len)
        with fs.open(f"{root}/exemplars/part-{part:05d}.parquet", "wb") as f:
            pq.write_table(table, f)
        rows_written += table.num_rows
        error = [
            f"the SAE latent was NaN or infinite on {n:,} tokens; no examples were written" if n else None
            for n in non_finite[at]
        ]
        status = np.select(
            [non_finite[at] > 0, count[at] == 0, count[at] < config.min_active_tokens],
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
                    "schema_version": np.full(len(at), SCHEMA_VERSION, dtype=np.int32),
                },
                schema=FEATURE_SCHEMA,
            )
        )
    feature_table = pa.concat_tables(feature_tables)
    with fs.open(f"{root}/features.parquet", "wb") as f:
        pq.write_table(feature_table, f)
    return feature_table, rows_written, len(parts)


def _quantile_picks(
    config: HarvestConfig, features: np.ndarray, maxima: np.ndarray, top_token: np.ndarray, sample: list[np.ndarray]
) -> np.ndarray:
    """Bool[feature slot] over the sample's slots: each feature's examples spread over the activation bins.

    Candidates are the sampled active tokens that are not already top examples. Bins are `quantiles` equal
    widths of (0, max]. Picks go round robin over the bins, one each per round, in a random order within a bin
    (seeded per feature), so that a bin short of candidates (often the top ones) leaves its share to the others.
    """
    score, token, act = sample
    n_features, width = score.shape
    picked = np.zeros((n_features, width), dtype=bool)
    if config.quantile_examples == 0 or width == 0:
        return picked
    candidate = (score > -math.inf) & ~(token[:, :, None] == top_token[:, None, :]).any(-1)
    edges = np.linspace(0.0, maxima, config.quantiles + 1, axis=-1)  # Float[feature edge]
    bins = np.minimum((edges[:, None, 1:] < act[:, :, None]).sum(-1), config.quantiles - 1)  # (edge_b, edge_b+1]
    bins = np.where(candidate, bins, config.quantiles)  # non-candidates in a last bin, never picked
    noise = np.stack([np.random.default_rng([config.seed, int(f)]).random(width) for f in features])
    order = np.argsort(bins + noise, axis=1)  # by bin, randomly within a bin
    sorted_bins = np.take_along_axis(bins, order, 1)
    position = np.broadcast_to(np.arange(width), (n_features, width))
    starts = np.where(np.diff(sorted_bins, axis=1, prepend=-1) != 0, position, 0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, position - np.maximum.accumulate(starts, axis=1), 1)  # rank within its bin
    round_robin = np.where(candidate, rank * config.quantiles + bins, np.iinfo(np.int64).max)
    first = np.argsort(round_robin, axis=1, kind="stable")[:, : config.quantile_examples]
    np.put_along_axis(picked, first, np.take_along_axis(candidate, first, 1), 1)
    return picked


class _Texts:
    """The texts of exemplar rows, each decoded once per harvest: contexts, tokens' words, and the runs of tokens
    that complete a token's partial characters.

    Windows are consecutive pieces of one token stream (see `labeler.harvest.corpus.iter_windows`), so a character
    that a window's edge cut (byte-level BPE splits CJK characters and emoji over tokens) has its other bytes in the
    previous or next window, in the same document: a target is completed from there, never left empty. What cannot
    be completed is a character whose other bytes are not in the harvest at all (the last document cut by `tokens`):
    such a target keeps the token's U+FFFD, the standard mark of bytes that are not a whole character, and is
    counted in `unresolved` (the manifest's `unresolved_targets`), so it is explicit, never "" (an empty target is a
    word the discriminator cannot be asked about)."""

    longest_run = 7
    """Tokens in a run around a partial token at most: a character is at most 4 bytes and a token at least
    one, so completing the characters at either end of a token takes at most 3 tokens on each side."""
    borrowed = 3
    """Tokens taken at most from a neighbouring window to complete a character its edge cut."""

    def __init__(self, tokenizer: Any, window_ids: np.ndarray, packed_valid: np.ndarray, head: int) -> None:
        self.tokenizer = tokenizer
        self.window_ids = window_ids
        """Int32[window token], on disk."""
        self.packed_valid = packed_valid
        """UInt8[window byte], on disk: the windows' valid masks, 8 tokens a byte."""
        self.head = head
        """Tokens each window starts with before its text (BOS/CLS): 0 or 1."""
        self.prefix = _continuation_prefix(tokenizer)
        """WordPiece's mark of a piece that continues a word ("##"), or None."""
        self.unresolved = 0
        """Rows so far whose target holds U+FFFD (see the class docstring)."""
        self._contexts: dict[tuple[int, int, int, int, int], str] = {}
        self._tokens: dict[int, str] = {}
        self._runs: dict[tuple[int, int], tuple[str, int, int]] = {}

    def documents(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Int[window token] twice: where the run of corpus-text tokens (one document's text) holding each token
        starts and ends. A run is cut by separators, BOS and padding: the tokens that are not valid."""
        context_len = self.window_ids.shape[1]
        valid = self._valid(windows)
        position = np.arange(context_len)
        start = np.maximum.accumulate(np.where(valid, 0, position + 1), axis=1)  # after the last invalid at or before
        end = np.minimum.accumulate(np.where(valid, context_len, position)[:, ::-1], axis=1)[:, ::-1]
        return start, end

    def word_start(self, ids: np.ndarray, window_at: np.ndarray, position: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Per row: `start`, moved past the continuation pieces ("##ing") a window's text begins with when the window
        starts mid-word, unless the row's own token is one of them (its context then keeps them, less the mark).

        ids: Int[window token] of the rows' distinct windows; window_at: Int[row], the row's window in `ids`.
        Only a window's first text token can continue a word: a document never starts with a piece."""
        if self.prefix is None:
            return start
        text = ids[:, self.head :]
        token_ids, inverse = np.unique(text, return_inverse=True)
        pieces = np.array([self._is_piece(i) for i in token_ids.tolist()], dtype=bool)[inverse.reshape(text.shape)]
        lead = np.cumprod(pieces, axis=1).sum(1)[window_at]  # Int[row]: the pieces its window's text begins with
        skip = (start == self.head) & (position >= start + lead)
        return np.where(skip, start + lead, start)

    def contexts(
        self, window: np.ndarray, start: np.ndarray, end: np.ndarray, before: np.ndarray, after: np.ndarray
    ) -> pa.Array:
        """Per row: the text of tokens [start, end) of its window, with `before` tokens of the previous window and
        `after` of the next (those completing a target's character cut by the window's edge), without characters
        cut at either end. Each distinct span is decoded once; rows share its string through an Arrow take."""
        spans, row_span = np.unique(np.stack([window, start, end, before, after], axis=1), axis=0, return_inverse=True)
        keys = [(int(w), int(a), int(b), int(x), int(y)) for w, a, b, x, y in spans]
        new = [k for k in keys if k not in self._contexts]
        if new:
            runs = [self._span(*key) for key in new]
            decoded = self.tokenizer.batch_decode(runs, skip_special_tokens=True)
            for key, run, text in zip(new, runs, decoded, strict=True):
                text = _trim(str(text), True, True)
                if run and self.prefix is not None and self._is_piece(run[0]):
                    text = text.removeprefix(self.prefix)  # a piece kept because it is the target: no "##"
                self._contexts[key] = text
        return pa.array([self._contexts[k] for k in keys], pa.string()).take(pa.array(row_span.ravel()))

    def targets(
        self, window: np.ndarray, position: np.ndarray, start: np.ndarray, end: np.ndarray, ids: np.ndarray
    ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """Per row: its token's word, or for a token holding part of a character, the word of the smallest run of
        tokens around it that reads as whole characters (see `_complete`); and Int[row] twice: the tokens of the
        previous and of the next window that run took (0 but where the window's edge cut the character)."""
        before, after = np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=np.int64)
        token_ids, row_token = np.unique(ids, return_inverse=True)
        texts = [self._token(i) for i in token_ids.tolist()]
        words = pa.array([_token_text(text) for text in texts], pa.string()).take(pa.array(row_token.ravel()))
        partial = np.array(["\ufffd" in text for text in texts], dtype=bool)[row_token.ravel()]
        if not partial.any():
            return words, before, after
        column = words.to_pylist()
        for row in np.flatnonzero(partial).tolist():
            w, p, a, b = int(window[row]), int(position[row]), int(start[row]), int(end[row])
            if (w, p) not in self._runs:
                self._runs[w, p] = self._complete(w, p, a, b, self._token(int(ids[row])))
            column[row], before[row], after[row] = self._runs[w, p]
            self.unresolved += "\ufffd" in column[row]
        return pa.array(column, pa.string()), before, after

    def _complete(self, w: int, p: int, a: int, b: int, text: str) -> tuple[str, int, int]:
        """The whole characters of token `p` of window `w` (its document's text there is [a, b)), with the tokens
        of the previous and the next window they took: where the window's edge cut a character, the same document
        goes on in the neighbouring window, so the run may reach into it."""
        before, after = self._before(w, a), self._after(w, b)
        run = before + self._ids(w, a, b) + after
        word, i, j = self._whole_characters(run, len(before) + p - a, text)
        return word, max(0, len(before) - i), max(0, j - (len(run) - len(after)))

    def _whole_characters(self, ids: list[int], at: int, text: str) -> tuple[str, int, int]:
        """The word of the smallest run [i, j) of `ids` holding `at` that decodes without U+FFFD, and i, j; where
        there is none (see the class docstring), the token's own `text`, U+FFFD included, and at, at + 1.

        No run is taken that drops the U+FFFD of a character cut at an end of `ids`: its text would be the
        neighbouring tokens' characters, not this token's."""
        for length in range(1, min(len(ids), self.longest_run) + 1):
            for i in range(max(0, at - length + 1), min(at, len(ids) - length) + 1):
                run = str(self.tokenizer.decode(ids[i : i + length]))
                if "\ufffd" not in run:
                    return _token_text(run), i, i + length
        return _token_text(text), at, at + 1

    def _before(self, w: int, a: int) -> list[int]:
        """The last tokens (at most `borrowed`) of window w - 1 where the document whose text in window w starts at
        `a` began there; else none."""
        if a != self.head or w == 0:
            return []
        valid = self._valid(w - 1)
        n = min(_leading(valid[::-1]), self.borrowed)
        return self._ids(w - 1, len(valid) - n, len(valid))

    def _after(self, w: int, b: int) -> list[int]:
        """The first tokens (at most `borrowed`) of window w + 1 where the document whose text in window w ends at
        `b` goes on there; else none."""
        context_len = self.window_ids.shape[1]
        if b != context_len or w + 1 == self.window_ids.shape[0]:
            return []
        n = min(_leading(self._valid(w + 1)[self.head :]), self.borrowed)
        return self._ids(w + 1, self.head, self.head + n)

    def _span(self, w: int, a: int, b: int, before: int, after: int) -> list[int]:
        """The ids of tokens [a, b) of window w, with the last `before` of `_before` and the first `after` of
        `_after`."""
        prior = self._before(w, a)[-before:] if before else []
        return prior + self._ids(w, a, b) + (self._after(w, b)[:after] if after else [])

    def _ids(self, w: int, a: int, b: int) -> list[int]:
        return np.asarray(self.window_ids[w, a:b]).tolist()

    def _valid(self, w: int | np.ndarray) -> np.ndarray:
        """Bool[token]: window w's valid mask (Bool[window token] for an array of windows)."""
        return np.unpackbits(np.asarray(self.packed_valid[w]), axis=-1, count=self.window_ids.shape[1]).astype(bool)

    def _token(self, i: int) -> str:
        """Token i decoded alone (cached)."""
        if i not in self._tokens:
            self._tokens[i] = str(self.tokenizer.decode([i]))
        return self._tokens[i]

    def _is_piece(self, i: int) -> bool:
        """Whether token i is a WordPiece continuation piece ("##ing")."""
        text = self._token(i)
        return self.prefix is not None and text.startswith(self.prefix) and len(text) > len(self.prefix)


def _continuation_prefix(tokenizer: Any) -> str | None:
    """WordPiece's mark of a piece that continues a word ("##") where the tokenizer decodes with it, else None (a
    byte-level BPE's "##" token is text, not a mark)."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return str(decoder.prefix) if isinstance(decoder, decoders.WordPiece) else None


def _leading(mask: np.ndarray) -> int:
    """How many entries `mask` (Bool[n]) begins with that are True."""
    return len(mask) if mask.all() else int(np.argmin(mask))


def _trim(text: str, start: bool, end: bool) -> str:
    """`text` without the U+FFFD left by a character whose bytes were cut at its start or end."""
    text = text.lstrip("\ufffd") if start else text
    return text.rstrip("\ufffd") if end else text


def _exemplar_table(
    features: np.ndarray,
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]],
    texts: _Texts,
    context_len: int,
) -> pa.Table:
    """Exemplar rows, a feature's rows together (top, quantile, inactive: each in its state's order), each with
    its context and target (see `_Texts`).

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
        "schema_version": pa.array(np.full(len(token), SCHEMA_VERSION, dtype=np.int32)),
    }
    return pa.table(columns, schema=EXEMPLAR_ROW_SCHEMA)


def _token_text(decoded: str) -> str:
    """A token as a word: surrounding spaces and WordPiece's "##" continuation mark removed."""
    text = decoded.strip()
    return text[2:] if text.startswith("##") and len(text) > 2 else text or decoded
