"""The token label: what a feature fires on, named by its own target strings (`tokens: "a" / "an"`).

Every real SAE has token, punctuation and affix detectors: most of their activation lies on a few target strings.
A word label cannot name "(" or "-able", and a search forced to find one returns an unrelated word. The token label
lists the fewest of the feature's most active target strings that hold a given share of the activation of its
active training examples, and scores "the target is one of these strings" on the held-out examples like any label.
The caller decides which label a feature gets (labeler/optimise/labelling.py). Knows nothing about discriminators.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labeler.optimise.scoring import auroc

MAX_STRINGS = 3
"""A token label lists at most this many strings: more is a word list, not a token detector."""


@dataclass(frozen=True)
class TokenLabel:
    """The token-identity label of one feature."""

    strings: tuple[str, ...]
    """The target strings, most activation first, each as written most often."""
    share: float
    """The share of the active training examples' activation that lies on `strings`."""
    heldout_auroc: float
    """AUROC of "the target is one of `strings`" on the held-out examples: comparable with a searched label's."""

    @property
    def label(self) -> str:
        """`token: "("` for one string, `tokens: "a" / "an" / "the"` for several."""
        quoted = " / ".join(f'"{s}"' for s in self.strings)
        return f"token: {quoted}" if len(self.strings) == 1 else f"tokens: {quoted}"


def token_key(target: str) -> str:
    """What counts as the same string: the target without surrounding spaces, case-folded."""
    return target.strip().casefold()


def token_label(
    targets: Sequence[str],
    activations: np.ndarray,
    train_active: np.ndarray,
    heldout: np.ndarray,
    heldout_active: np.ndarray,
    share: float,
) -> TokenLabel:
    """The token label of a feature: the fewest (at most MAX_STRINGS) of its strings holding `share` of the activation
    on its active training rows (`train_active`, indices into `targets` and `activations`), or the MAX_STRINGS most
    active where none do; scored on the held-out rows (indices, with Bool `heldout_active`)."""
    keys = [token_key(t) for t in targets]
    mass: defaultdict[str, float] = defaultdict(float)
    for row in train_active:
        mass[keys[row]] += float(activations[row])
    total = sum(mass.values())
    ranked = sorted(mass.items(), key=lambda item: -item[1])[:MAX_STRINGS]  # ties: first seen first
    cumulative = np.cumsum([m for _, m in ranked]) / total if total > 0 else np.zeros(len(ranked))
    reached = np.flatnonzero(cumulative >= share)
    k = int(reached[0]) + 1 if len(reached) else len(ranked)
    chosen = [key for key, _ in ranked[:k]]
    spelled = Counter(targets[row].strip() for row in train_active if keys[row] in chosen)
    written = {token_key(s): s for s, _ in reversed(spelled.most_common())}  # the most frequent spelling wins
    held = np.array([keys[row] in chosen for row in heldout], dtype=float)
    return TokenLabel(
        strings=tuple(written[key] for key in chosen),
        share=float(cumulative[k - 1]) if k else 0.0,
        heldout_auroc=auroc(held, heldout_active),
    )
