"""A causal LM asked, per example, "is the word W in this text an example of the concept LABEL?".

The prompt is split at the label slot. Everything before it (system text, the example's text and word)
is run once per example in `encode`, keeping its key/value cache and the LM's next-token distribution
at the slot (the reference q of the KL prior). Each `score` then runs only the suffix: the L label
embeddings, the rest of the question and the start of the answer, attending to the cached prefix.
The restarts of an example share its prefix without copying it (see prefix_attention.py).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from labeler.discriminators.base import (
    EncodedExamples,
    Scored,
    label_vocabulary,
    resolve_device,
    score_discrete_by_embedding,
)
from labeler.discriminators.prefix_attention import NAME as SHARED_PREFIX_ATTENTION
from labeler.discriminators.prefix_attention import SharedPrefix
from labeler.discriminators.prompt import PromptTemplate
from labeler.discriminators.vocab import VocabFilter
from labeler.errors import ConfigError, FeatureError, InputError
from labeler.optimise.config import OptimiserConfig

# log q below this is clamped: a reference probability of exactly 0 would make KL(p || q) infinite.
MIN_REFERENCE_LOGPROB = -100.0
_SLOT = "\x00LABEL\x00"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass(frozen=True)
class CausalLMConfig:
    """How to build and ask a causal-LM discriminator (`hf:MODEL_DIR`)."""

    kind: Literal["hf"] = "hf"
    """hf: a Hugging Face causal LM asked the paper's question."""
    model: str = ""
    """A local folder with a Hugging Face causal LM and its tokenizer (or a hub id where a network allows)."""
    template: PromptTemplate = field(default_factory=PromptTemplate)
    """The question; the default is the paper's."""
    chat: Literal["auto", "always", "never"] = "auto"
    """Format the prompt with the tokenizer's chat template ("auto": when it has one)."""
    yes_token: str = "1"
    """The answer token meaning "yes, the word is an example of the label"; must be one token."""
    no_token: str = "0"
    """The answer token meaning "no"; must be one token."""
    readout: Literal["answer_ce", "logit_diff"] = "answer_ce"
    """answer_ce: cross-entropy of the right answer token over the whole vocabulary (the paper's);
    logit_diff: logistic loss on logit(yes) - logit(no)."""
    vocab: VocabFilter = field(default_factory=VocabFilter)
    """Which tokens a label may use."""
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    """Weights and activations dtype."""
    device: str = "auto"
    """torch device; "auto" takes CUDA when present."""
    prefix_batch: int = 64
    """Examples per forward pass when encoding prefixes."""
    score_batch: int = 1024
    """(label, example) pairs per forward pass when scoring discrete labels."""

    default_optimiser: ClassVar[OptimiserConfig] = OptimiserConfig(
        search="discrete", prior_candidates=8, rescore_prior=64, rescore_neighbours=64
    )
    """The optimiser a run of this kind uses where its config sets no optimiser field: discrete (GCG-style) search
    whose swap candidates include the 8 tokens the LM's own next-token distribution favours on the active examples;
    at the pick, the 64 such tokens of every kept restart and its label's 64 nearest tokens, scored exactly on the
    training examples, the best by AUROC kept. Chosen among the methods of benchmarks/label_quality.py on the taxonomy
    testbed's report categories (benchmarks/results/README.md); it costs more forward tokens than the paper's soft
    label (`OptimiserConfig()`), which stays one flag away (`--search gradient` and the three sources at 0)."""


@dataclass(frozen=True)
class EncodedPrefixes:
    """The cached prefixes of a set of examples (duplicates of a (text, word) pair share one row)."""

    row: Tensor
    """Int[E]: example -> row of the cache below."""
    keys: tuple[Tensor, ...]
    """Per layer, Float[U heads P head_dim], left-padded to a common length P."""
    values: tuple[Tensor, ...]
    valid: Tensor
    """Bool[U P]: where the prefix has a real token (it is left-padded)."""
    length: Tensor
    """Int[U]: real prefix length."""
    first_slot_logprobs: Tensor
    """Float[U V]: log q of the first label slot over the allowed tokens."""

    def __len__(self) -> int:
        return len(self.row)


class CausalLMDiscriminator:
    """The paper's discriminator over any Hugging Face causal LM, with the prefix computed once."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: CausalLMConfig, name: str = ""
    ) -> None:
        self.config = config
        self.name = name or f"hf:{config.model}"
        self.kind: str = config.kind
        self.model = model.eval().requires_grad_(False)
        self.model.set_attn_implementation(SHARED_PREFIX_ATTENTION)
        self.n_layers = int(model.config.get_text_config().num_hidden_layers)
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.head_init = torch.zeros(0, device=self.device)
        self.embed, self.allowed_ids, self.label_embeddings = label_vocabulary(model, tokenizer, config.vocab)
        self.use_chat = config.chat == "always" or (config.chat == "auto" and bool(tokenizer.chat_template))
        if config.chat == "always" and not tokenizer.chat_template:
            raise ConfigError("chat='always' but the tokenizer has no chat template")
        self.yes_id = self._single_token(config.yes_token, "yes_token")
        self.no_id = self._single_token(config.no_token, "no_token")
        _, suffix = self._split_prompt("text", "word")
        self.suffix_ids = torch.tensor(self._ids(suffix, first=False), device=self.device)
        text_config = model.config.get_text_config()
        limit = getattr(text_config, "max_position_embeddings", None) or getattr(text_config, "n_positions", None)
        self.max_positions: int | None = int(limit) if isinstance(limit, int) and limit > 0 else None
        """Positions the model takes (None: not limited); a longer prompt's context is cut (`encode`)."""
        self.label_positions = 1
        """Positions kept free for the label slot (reserve_label)."""
        self.contexts_cut = 0
        """Examples whose context was cut to fit max_positions, over this discriminator's life."""

    def reserve_label(self, label_tokens: int) -> None:
        """Keep `label_tokens` positions for the label slot; refuse a label that leaves no room for a prompt."""
        if self.max_positions is not None:
            prompt, _ = self._split_prompt("", "")
            least = len(self._ids(prompt, first=True)) + len(self.suffix_ids) + label_tokens
            if least > self.max_positions:
                raise ConfigError(
                    f"label_tokens {label_tokens} does not fit {self.name}: the prompt with an empty context and a "
                    f"{label_tokens}-token label is {least} positions, the model takes {self.max_positions}; lower "
                    "--label-tokens"
                )
        self.label_positions = label_tokens

    @classmethod
    def from_config(cls, config: CausalLMConfig) -> CausalLMDiscriminator:
        """Load the model and tokenizer named by `config.model`; errors say what failed to load."""
        if not config.model:
            raise ConfigError("no discriminator model given: pass a folder with a Hugging Face causal LM")
        local = Path(config.model)
        if config.model.startswith((".", "/", "~")) and not local.expanduser().is_dir():
            raise InputError(f"discriminator model folder not found: {config.model}")
        device = resolve_device(config.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(local.expanduser()) if local.is_dir() else config.model)
            model = AutoModelForCausalLM.from_pretrained(
                str(local.expanduser()) if local.is_dir() else config.model,
                dtype=DTYPES[config.dtype],
                use_safetensors=True,
            )
        except (OSError, ValueError, KeyError) as err:
            raise InputError(
                f"cannot load a causal LM and tokenizer from {config.model!r}: {err}. The discriminator needs a "
                "folder holding config.json, safetensors weights and a tokenizer (save_pretrained output)."
            ) from err
        return cls(model.to(device), tokenizer, config)  # type: ignore[arg-type]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)).strip()

    def prompt_ids(self, context: str, target: str) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before and after the label slot, for one example."""
        prefix, _ = self._split_prompt(context, target)
        return self._ids(prefix, first=True), self.suffix_ids.tolist()

    @torch.no_grad()
    def encode(self, contexts: Sequence[str], targets: Sequence[str]) -> EncodedPrefixes:
        """Run every distinct (text, word) prefix once; keep its KV cache and the first slot's log q."""
        if len(contexts) != len(targets):
            raise ValueError(f"{len(contexts)} contexts but {len(targets)} targets")
        distinct: dict[tuple[str, str], int] = {}
        row = [distinct.setdefault(pair, len(distinct)) for pair in zip(contexts, targets, strict=True)]
        fitted = [self._fitted_prefix(context, target) for context, target in distinct]
        prefixes = [ids for ids, _ in fitted]
        per_prefix = np.bincount(np.asarray(row, dtype=np.int64), minlength=len(distinct))
        cut = int(sum(n for n, (_, was_cut) in zip(per_prefix, fitted, strict=True) if was_cut))
        if cut:
            self.contexts_cut += int(cut)
            warnings.warn(
                f"{cut} example(s) have a context longer than {self.name} takes ({self.max_positions} positions with "
                "the prompt and label): their context's start was cut, its end kept",
                stacklevel=2,
            )
        width = max(len(ids) for ids in prefixes)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prefixes], device=self.device)
        mask = (
            torch.arange(width, device=self.device)
            >= width - torch.tensor([len(p) for p in prefixes], device=self.device)[:, None]
        ).long()
        keys: list[list[Tensor]] = []
        values: list[list[Tensor]] = []
        first_slot: list[Tensor] = []
        for start in range(0, len(prefixes), self.config.prefix_batch):
            part = slice(start, start + self.config.prefix_batch)
            out = self.model(
                input_ids=ids[part],
                attention_mask=mask[part],
                position_ids=_positions(mask[part]),
                use_cache=True,
                logits_to_keep=1,
            )
            for layer, cached in enumerate(returned_cache(out).layers):
                key, value = getattr(cached, "keys", None), getattr(cached, "values", None)
                if not isinstance(key, Tensor) or not isinstance(value, Tensor):
                    raise RuntimeError(
                        f"layer {layer} of {self.name} caches no keys and values ({type(cached).__name__}): the "
                        "causal-LM discriminator needs a model whose every layer is attention"
                    )
                if start == 0:
                    keys.append([])
                    values.append([])
                keys[layer].append(key)
                values[layer].append(value)
            first_slot.append(self._reference_logprobs(out.logits[:, -1]))
        return EncodedPrefixes(
            row=torch.tensor(row, device=self.device),
            keys=tuple(torch.cat(k) for k in keys),
            values=tuple(torch.cat(v) for v in values),
            valid=mask.bool(),
            length=mask.sum(1),
            first_slot_logprobs=torch.cat(first_slot),
        )

    def score_discrete(
        self, examples: EncodedExamples, rows: np.ndarray, label_ids: Tensor, head: Tensor | None = None
    ) -> np.ndarray:
        return score_discrete_by_embedding(self, examples, rows, label_ids, head, self.config.score_batch)

    def score(self, examples: EncodedExamples, example: Tensor, label: Tensor, head: Tensor | None = None) -> Scored:
        """Run the suffix for every (feature, example, restart) against the cached prefixes (no head)."""
        if not isinstance(examples, EncodedPrefixes):
            raise TypeError(f"expected examples encoded by this discriminator, got {type(examples).__name__}")
        n_feature, n_restart, n_slot, width = label.shape
        n_example = example.shape[1]
        cache_row: Tensor = examples.row[example]  # [F N]
        group = cache_row.reshape(-1)  # one group per (feature, example); its R restarts are consecutive rows
        batch = group.shape[0] * n_restart
        prefix = SharedPrefix(examples.keys, examples.values, examples.valid, group, group_size=n_restart)
        label_rows = label.transpose(1, 2)[:, :, None].expand(n_feature, n_slot, n_example, n_restart, width)
        label_rows = label_rows.permute(0, 2, 3, 1, 4).reshape(batch, n_slot, width)  # rows in (F, N, R) order
        with torch.no_grad():
            tail = self.embed(self.suffix_ids)
        inputs = torch.cat([label_rows.to(tail.dtype), tail[None].expand(batch, *tail.shape)], dim=1)
        suffix_len = inputs.shape[1]
        positions = examples.length[group].repeat_interleave(n_restart)[:, None] + torch.arange(
            suffix_len, device=self.device
        )
        # Logits are needed only where the next token is a label slot (for q) and at the answer.
        keep = torch.tensor([*range(n_slot - 1), suffix_len - 1], device=self.device)
        logits = self.model(
            inputs_embeds=inputs, position_ids=positions, shared_prefix=prefix, use_cache=False, logits_to_keep=keep
        ).logits.to(self.label_embeddings.dtype)
        if prefix.calls != self.n_layers:
            raise RuntimeError(
                f"{type(self.model).__name__} ran {prefix.calls} of {self.n_layers} attention layers over the cached "
                "prefix: its attention does not take keyword arguments through ALL_ATTENTION_FUNCTIONS, which the "
                "causal-LM discriminator needs"
            )
        answer = logits[:, -1]
        score = answer[:, self.yes_id] - answer[:, self.no_id]
        if self.config.readout == "answer_ce":
            logp = answer.log_softmax(-1)
            nll = torch.stack([-logp[:, self.no_id], -logp[:, self.yes_id]], dim=-1)
        else:
            nll = torch.stack([F.softplus(score), F.softplus(-score)], dim=-1)
        grid = (n_feature, n_example, n_restart)
        first = examples.first_slot_logprobs[cache_row][:, None]  # [F 1 N V]
        later = [_by_restart(self._reference_logprobs(logits[:, slot]).view(*grid, -1)) for slot in range(n_slot - 1)]
        return Scored(
            score=_by_restart(score.view(grid)),
            answer_nll=_by_restart(nll.view(*grid, 2)),
            reference_logprobs=(first, *later),
        )

    def _reference_logprobs(self, logits: Tensor) -> Tensor:
        """log q over the allowed tokens (renormalised among them)."""
        logprobs = logits[:, self.allowed_ids].to(self.label_embeddings.dtype).log_softmax(-1)
        return logprobs.clamp_min(MIN_REFERENCE_LOGPROB)

    def _fitted_prefix(self, context: str, target: str) -> tuple[list[int], bool]:
        """(the prompt's ids before the label slot, whether the context was cut): the context's first tokens are
        cut until the whole prompt (prefix, label slot, suffix) fits max_positions. The documented side is the
        start, so the end of the context is kept."""
        ids = self.prompt_ids(context, target)[0]
        if self.max_positions is None:
            return ids, False
        room = self.max_positions - len(self.suffix_ids) - self.label_positions
        context_ids: list[int] = self.tokenizer(context, add_special_tokens=False).input_ids
        cut = False
        while len(ids) > room and context_ids:
            context_ids = context_ids[max(1, len(ids) - room) :]
            text = str(self.tokenizer.decode(context_ids, clean_up_tokenization_spaces=False))
            ids, cut = self.prompt_ids(text, target)[0], True
        if len(ids) > room:
            raise FeatureError(f"the prompt of {self.name} does not fit its {self.max_positions} positions")
        return ids, cut

    def _split_prompt(self, context: str, target: str) -> tuple[str, str]:
        """The prompt's text before and after the label slot."""
        template = self.config.template
        if not self.use_chat:
            prompt = template.render_plain(context, target, _SLOT)
        else:
            before, after = template.split_user(context, target)
            user = f"{before}{_SLOT}{after}"
            messages = [{"role": "system", "content": template.system}, {"role": "user", "content": user}]
            try:
                prompt = str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            except Exception:
                merged = [{"role": "user", "content": f"{template.system}\n\n{user}"}]
                prompt = str(self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True))
            prompt = f"{prompt}{template.assistant_prefix}"
        prefix, suffix = prompt.split(_SLOT)
        return prefix, suffix

    def _ids(self, text: str, first: bool) -> list[int]:
        """Tokenize a piece of the prompt; the first piece starts with the BOS token when the model has one."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=False).input_ids
        bos = self.tokenizer.bos_token_id
        if first and not self.use_chat and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def _single_token(self, text: str, what: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ConfigError(f"{what} {text!r} must be exactly one token of this tokenizer; it is {len(ids)}: {ids}")
        return int(ids[0])


def returned_cache(output: ModelOutput) -> Cache:
    """The key/value cache a forward with use_cache=True returned, under either of transformers' names for it: the
    output's `cache` field (5.24 on) or its `past_key_values` (before; 5.24 on keeps it as a deprecated alias that
    logs a warning, so the declared field is read). It knows nothing about what the cache holds."""
    declared = getattr(output, "__dataclass_fields__", {})
    name = "cache" if "cache" in declared else "past_key_values"
    cache = getattr(output, name, None)
    if not isinstance(cache, Cache):
        raise RuntimeError(
            f"{type(output).__name__} returned no key/value cache (its {name!r} is {type(cache).__name__}): the "
            "model must be called with use_cache=True and return a transformers Cache"
        )
    return cache


def cache_argument(model: torch.nn.Module, cache: Cache) -> dict[str, Cache]:
    """The keyword argument that hands `cache` to `model`'s forward: `cache` where the forward takes it (transformers
    5.24 on), else `past_key_values` (before)."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


def _by_restart(x: Tensor) -> Tensor:
    """[F N R ...] -> [F R N ...]."""
    return x.transpose(1, 2)


def _positions(mask: Tensor) -> Tensor:
    """Position ids that start at 0 on the first real token of a left-padded row."""
    return (mask.cumsum(1) - 1).clamp_min(0)
