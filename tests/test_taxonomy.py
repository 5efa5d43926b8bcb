"""The taxonomy testbed: its world, its exemplars and truth, its command line, and an LM that learned it."""

from __future__ import annotations

import itertools
import pathlib

import pytest

from labeler.discriminators.prompt import PromptTemplate
from labeler.discriminators.vocab import VocabFilter, allowed_token_ids
from labeler.toys.synthetic import word_level_tokenizer
from labeler.toys.taxonomy import (
    SCALES,
    TaxonomyError,
    default_features,
    feature_exemplars,
    load_taxonomy,
    main,
    read_categories,
)


def test_bench_world_is_nested_and_large_enough() -> None:
    world = load_taxonomy(SCALES["bench"])
    assert len(world.members) >= 200
    assert len(world.member_words) >= 3000
    # Nesting: every member of dog is a member of canine, carnivore, mammal and animal; each is its parent's child.
    chain = ["dog", "canine", "carnivore", "placental", "mammal"]
    for inner, outer in itertools.pairwise(chain):
        assert world.parent[inner] == outer
        assert world.members[inner] <= world.members[outer]
    assert world.members["mammal"] <= world.members["animal"]
    tokenizer = word_level_tokenizer(world.words, PromptTemplate())
    candidates = allowed_token_ids(tokenizer, len(tokenizer), VocabFilter())
    assert len(candidates) >= 5000
    names = {name for names in world.lemmas.values() for name in names}
    assert names <= {tokenizer.decode([i]) for i in candidates}  # every acceptable name is one candidate token


def test_small_world_has_about_fifty_categories_and_500_words() -> None:
    world = load_taxonomy(SCALES["small"])
    assert 40 <= len(world.members) <= 60
    assert len(world.member_words) == 500
    assert not set(world.others) & set(world.member_words)


def test_exemplars_have_100_distinct_active_and_inactive_rows_per_feature() -> None:
    world = load_taxonomy(SCALES["small"])
    features = default_features(world, 8)
    rows = feature_exemplars(world, features, seed=0)
    for k, category in enumerate(features):
        mine = [row for row in rows if row["feature"] == k]
        active = {(r["context"], r["target"]) for r in mine if r["activation"] == 1.0}
        inactive = {(r["context"], r["target"]) for r in mine if r["activation"] == 0.0}
        assert len(active) >= 100 and len(inactive) >= 100
        assert all((r["activation"] == 1.0) == (r["target"] in world.members[category]) for r in mine)
        assert all(r["target"] in r["context"].split() for r in mine)
        # Inactive words include members of sibling categories, the hardest contrast.
        near = {w for c in world.near[category] for w in world.members[c]} - world.members[category]
        assert not near or {t for _, t in inactive} & near


def test_bad_categories_files_get_a_clear_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    known = list(load_taxonomy(SCALES["small"]).members)
    bad = tmp_path / "bad.txt"
    bad.write_text("carnivore\nunicorn\n")
    with pytest.raises(TaxonomyError, match=r"unicorn.*categories\.txt"):
        read_categories(bad, known)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(TaxonomyError, match="lists no category"):
        read_categories(empty, known)
    with pytest.raises(TaxonomyError, match="cannot read"):
        read_categories(tmp_path / "missing.txt", known)
    assert read_categories(_write(tmp_path / "ok.txt", "dog\ncarnivore\n"), known) == ["dog", "carnivore"]
    # The command line says so and exits 2 before training anything.
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--scale", "small", "--out", str(tmp_path / "out"), "--categories", str(bad)])
    assert exit_info.value.code == 2
    assert "unicorn" in capsys.readouterr().err
    assert not (tmp_path / "out" / "lm").exists()


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


# The small testbed's training and its held-out accuracy are not tested yet: no build finished on the loaded
# machine of 2026-12-01, so neither its time (aim: 2 minutes on 2 cores) nor an accuracy floor was measured.
