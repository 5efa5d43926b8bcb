"""The token label against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.optimise.token_label import TokenLabel, token_key, token_label

#            0     1     2    3      4      5     6      7      8
TARGETS = ["a", " A", "an", "the", "dog", "cat", "a", "an", "tree"]
ACTIVATIONS = np.array([4.0, 2.0, 3.0, 1.0, 0.0, 0.0, 1.0, 0.5, 0.0])


def test_the_fewest_strings_holding_the_share_in_their_most_frequent_spelling() -> None:
    # training actives 0-3: a 4 + " A" 2 (one key "a": 6), an 3, the 1 -> shares 0.6, 0.9, 1.0
    train_active = np.array([0, 1, 2, 3])
    heldout, heldout_active = np.array([6, 7, 4, 5, 8]), np.array([True, True, False, False, False])
    one = token_label(TARGETS, ACTIVATIONS, train_active, heldout, heldout_active, share=0.6)
    assert one.strings == ("a",) and one.share == pytest.approx(0.6) and one.label == 'token: "a"'
    # held out: "a" (active) is in, "an" (active) out, three inactive out -> AUROC (1*3 + 0.5*3) / 6 = 0.75
    assert one.heldout_auroc == pytest.approx(0.75)
    two = token_label(TARGETS, ACTIVATIONS, train_active, heldout, heldout_active, share=0.85)
    assert two.strings == ("a", "an") and two.share == pytest.approx(0.9) and two.heldout_auroc == 1.0
    assert two.label == 'tokens: "a" / "an"'
    never = token_label(TARGETS, ACTIVATIONS, train_active, heldout, heldout_active, share=1.0)
    assert never.strings == ("a", "an", "the") and never.share == pytest.approx(1.0)


def test_a_spread_feature_reaches_no_share_with_three_strings() -> None:
    targets = [f"w{i}" for i in range(10)] + ["x"] * 4
    activations = np.array([1.0] * 10 + [0.0] * 4)
    found = token_label(targets, activations, np.arange(10), np.array([0, 10]), np.array([True, False]), share=0.6)
    assert len(found.strings) == 3 and found.share == pytest.approx(0.3)


def test_token_key_and_label_text() -> None:
    assert token_key(" The\n") == "the"
    assert TokenLabel(("(",), 1.0, 1.0).label == 'token: "("'
