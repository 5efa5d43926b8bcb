"""The optimiser's settings: one frozen dataclass, the soft label of the paper by default.

Each discriminator kind has its own default (`labeler.discriminators.config.default_optimiser`); this module knows
nothing about discriminators, tokens or files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from labeler.errors import ConfigError


@dataclass(frozen=True)
class OptimiserConfig:
    """Token-space gradient descent settings (defaults follow the paper where it gives one)."""

    restarts: int = 4
    """Random restarts per feature; the best on held-out examples wins."""
    max_steps: int = 100
    """Optimisation steps at most per restart."""
    label_tokens: int = 1
    """L, the number of tokens in a label (the paper uses 1)."""
    examples_per_step: int = 32
    """Training examples per feature per step, half active and half inactive."""
    lr: float = 0.2
    """AdamW learning rate on v (the paper: 0.1 to 0.5)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW moment decay rates."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on v."""
    c_kl: float = 0.1
    """Weight of KL(p || q), q being the discriminator's own next-token distribution (the paper: 0.05 to 0.2)."""
    c_entropy: float = 0.2
    """Weight of the entropy H(p), pushing p towards one token (the paper: 0.1 to 0.3; encoders default to 0)."""
    init_std: float = 1.0
    """v starts as N(0, init_std^2)."""
    converge_prob: float = 0.9
    """A restart has converged when every slot's largest probability exceeds this ..."""
    converge_patience: int = 5
    """... for this many consecutive steps."""
    top_k: int = 5
    """Top tokens per slot recorded with their probabilities."""
    straight_through: bool = False
    """True (encoders' default): score each slot's argmax word, gradients as if soft; False: p @ E (the paper).

    With True the discriminator sees the argmax token of each slot (one-hot p) and the gradient flows as if
    it had seen p (a straight-through estimator), so every step scores a real word and the entropy and KL
    terms still shape p. Encoder discriminators default to True, with c_entropy 0, wherever a run sets
    neither (EmbeddingConfig.default_optimiser); causal LMs to False."""
    rescore_top_k: int = 0
    """0: each restart's label is its argmax (the paper). k > 0: the k most probable tokens of every slot
    of every restart also become candidate labels (one slot changed from the argmax at a time); all
    candidates are scored exactly on the training examples and the best by AUROC wins."""
    rescore_prior: int = 0
    """At the pick, like `rescore_top_k`: the k tokens of every slot that the discriminator's own next-token
    distribution there (q) ranks most above its mean on the inactive training examples, on the active ones, with
    each kept restart's label before that slot (causal LMs; an encoder has no q, so none)."""
    rescore_neighbours: int = 0
    """At the pick, like `rescore_top_k`: the k tokens whose label embeddings lie nearest (cosine) each kept
    restart's token in every slot (a search that settled next to the concept's word: its synonyms, its plural)."""
    search: Literal["gradient", "discrete"] = "gradient"
    """gradient: descend on a soft label (the paper's, or straight-through); discrete: GCG-style token swaps,
    ranked by the gradient at the one-hot label and scored exactly (straight_through and c_entropy do not apply;
    a restart has converged after `converge_patience` steps in a row with no improving swap)."""
    swap_candidates: int = 8
    """Discrete search: tokens per slot per step, the top ones by the gradient's predicted loss drop."""
    target_candidates: int = 4
    """Discrete search: also try, in every slot, the feature's this many most frequent active targets that are
    one allowed token (a token-identity feature's best label is often its token)."""
    prior_candidates: int = 0
    """Discrete search: also try, in every slot, this many tokens that the discriminator's own next-token
    distribution there (q, the KL term's prior) ranks most above its mean on the step's inactive examples, on its
    active ones: the concepts the discriminator itself would name for them (causal LMs; an encoder has no q)."""
    target_prior: float = 0.0
    """At the pick: the feature's most frequent active training target that is one allowed token (among its
    `target_candidates` most frequent) becomes the label where its training AUROC is within this of the picked
    label's (L = 1 only; 0: off). A prior for the words a feature itself fires on."""
    swap_batch: int = 8192
    """Discrete search: (feature, candidate, example) rows per scoring pass at most."""
    halve_every: int = 0
    """0: keep every restart; n: every n steps each feature keeps the better half of its restarts (by the
    step's loss, rounded up) until one is left (successive halving). A feature that stopped before a halving step
    is halved by its final losses, so its kept restarts are the same whatever else shares its batch."""
    seed: int = 0
    """Run seed; each feature's randomness derives from it and the feature id."""

    def __post_init__(self) -> None:
        if self.search not in ("gradient", "discrete"):
            raise ConfigError(f"search must be 'gradient' or 'discrete', got {self.search!r}")
        for name in ("restarts", "max_steps", "label_tokens", "top_k", "converge_patience", "swap_candidates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        # numpy seeds each feature's split from (seed, feature id), and it takes no negative numbers.
        for name in (
            "seed",
            "rescore_top_k",
            "rescore_prior",
            "rescore_neighbours",
            "target_candidates",
            "prior_candidates",
            "halve_every",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not 0 <= self.target_prior <= 1:  # nan fails both
            raise ConfigError(f"target_prior must lie in [0, 1] (an AUROC difference), got {self.target_prior}")
        for name in ("lr", "c_kl", "c_entropy", "init_std", "weight_decay"):
            if not math.isfinite(getattr(self, name)):  # nan passes no comparison, inf every one below
                raise ConfigError(f"{name} must be a finite number, got {getattr(self, name)}")
        for name in ("lr", "init_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "c_kl", "c_entropy"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be at least 0, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"betas must each lie in [0, 1), got {self.betas}: AdamW's two moment decay rates")
        if self.examples_per_step < 2 or self.examples_per_step % 2:
            raise ConfigError(f"examples_per_step must be even and at least 2, got {self.examples_per_step}")
        if self.swap_batch < 1:
            raise ConfigError(f"swap_batch must be at least 1, got {self.swap_batch}")
        if not 0 < self.converge_prob <= 1:
            raise ConfigError(f"converge_prob must lie in (0, 1], got {self.converge_prob}")
