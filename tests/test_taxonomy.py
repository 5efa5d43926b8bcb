"""The taxonomy testbed: its world, its exemplars and truth, its command line, and an LM that learned it."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import pathlib

import numpy as np
import pytest
import transformers

from labeler.discriminators.prompt import PromptTemplate
from labeler.discriminators.vocab import VocabFilter, allowed_token_ids
from labeler.records.exemplars import read_exemplars
from labeler.store.dataset import read_runs
from labeler.toys import taxonomy
from labeler.toys.synthetic import word_level_tokenizer
from labeler.toys.taxonomy import (
    SCALES,
    TaxonomyError,
    build,
    cache_key,
    default_features,
    feature_exemplars,
    held_out_accuracy,
    load_taxonomy,
    main,
    read_categories,
)

SMALL_ACCURACY = 0.88
"""Floor of the small testbed LM's held-out answer accuracy: 0.916 on 2,000 questions, trained in 79.9 s (3,000 steps,
the prompts' shared start run once per step) on this project's 2-core CPU machine, 2026-12-02
(python -m labeler.toys.taxonomy build --scale small), with the first training recipe; the second (2026-12-07)
passed this test's floor and was not measured on its own."""
LABEL_AUROC = 0.6
"""Floor of the held-out AUROC of each label `labeler label` gives the testbed's features at default settings: the
8 default features of the small build above got 0.718 to 0.871 (2026-12-01)."""


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
    features = [*default_features(world, 8), "animal"]  # animal: every member word; 100 are sampled
    assert len(world.members["animal"]) > 100
    rows = feature_exemplars(world, features, seed=0)
    for k, category in enumerate(features):
        mine = [row for row in rows if row["feature"] == k]
        active = {(r["context"], r["target"]) for r in mine if r["activation"] == 1.0}
        inactive = {(r["context"], r["target"]) for r in mine if r["activation"] == 0.0}
        assert len(mine) == 200 and len(active) == 100 and len(inactive) == 100
        assert all((r["activation"] == 1.0) == (r["target"] in world.members[category]) for r in mine)
        assert all(r["target"] in r["context"].split() for r in mine)
        # Half the inactive words are just outside the category (its parent's other members), the hardest contrast.
        near = set(world.just_outside[category])
        assert not near or sum(t in near for _, t in inactive) >= 50


def test_the_words_just_outside_a_category_are_its_nearest_ancestors_other_members() -> None:
    """What tells a category's name from its parent's: hawk's features have raptors that are no hawks among their
    inactive words (before, hawk had no kept sibling category, so none, and "raptor" fitted as well as "hawk")."""
    world = load_taxonomy(SCALES["bench"])
    assert world.parent["hawk"] == "raptor"
    assert set(world.just_outside["hawk"]) == world.members["raptor"] - world.members["hawk"] != set()
    # engine's parent (motor) holds no other word, so they come from the next ancestor up (machine).
    assert world.parent["engine"] == "motor" and world.members["motor"] == world.members["engine"]
    assert set(world.just_outside["engine"]) == world.members["machine"] - world.members["engine"] != set()
    rows, near = feature_exemplars(world, ["hawk"], seed=0), set(world.just_outside["hawk"])
    inactive = [row["target"] for row in rows if row["activation"] == 0.0]
    assert sum(word in near for word in inactive) >= 50


def test_training_asks_about_every_category_and_the_words_just_outside_it() -> None:
    """Half the LM's questions start from a category drawn uniformly, so a small category is asked about about as
    often as a large one (from words alone, a tenth of the bench's categories had under 210 yes-questions of 1.9
    million, the largest 73,000), and its "no"s are mostly about the words just outside it."""
    world = load_taxonomy(SCALES["bench"])
    rng, n = np.random.default_rng(0), 120_000
    yes, no_outside = collections.Counter[str](), collections.Counter[str]()
    lemma_of = {names[0]: c for c, names in world.lemmas.items()}
    for _, word, concept, answer in (taxonomy._question(world, rng) for _ in range(n)):
        category = lemma_of.get(concept)
        if category is not None and answer:
            yes[category] += 1
        elif category is not None and word in world.just_outside[category]:
            no_outside[category] += 1
    single = [c for c, names in world.lemmas.items() if len(names) == 1]
    expected = n * 0.5 * 0.5 / len(world.members)  # the category half, half of it yes
    assert min(yes[c] for c in single) >= 0.6 * expected
    has_outside = [c for c in single if world.just_outside[c]]
    assert min(no_outside[c] for c in has_outside) >= 0.5 * expected * 0.6


def test_the_benchmarks_feature_sets_are_apart() -> None:
    """benchmarks/data's report and held-out categories: known to the bench LM, 40 each with at least 10 members, and
    none a tuning feature (the scales' defaults) or one of another set, as their files say."""
    bench, small = load_taxonomy(SCALES["bench"]), load_taxonomy(SCALES["small"])
    data = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "data"
    report = read_categories(data / "taxonomy-bench-report.txt", list(bench.members))
    heldout = read_categories(data / "taxonomy-bench-heldout.txt", list(bench.members))
    small_report = read_categories(data / "taxonomy-small-report.txt", list(small.members))
    tuning = {*default_features(bench, SCALES["bench"].features), *default_features(small, SCALES["small"].features)}
    for chosen in (report, heldout):
        assert len(chosen) == 40 and all(len(bench.members[c]) >= 10 for c in chosen)
        assert not set(chosen) & tuning
    assert not set(heldout) & {*report, *small_report}


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


def test_a_cached_lm_is_reused_only_under_its_own_recipe_scale_and_seed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = SCALES["small"]
    key = cache_key(small, 0)
    assert key == cache_key(small, 0) and key.startswith("seed0-")
    assert cache_key(small, 1) != key
    assert cache_key(dataclasses.replace(small, steps=small.steps + 1), 0) != key
    with monkeypatch.context() as patch:
        patch.setattr(taxonomy, "TRAINING_RECIPE", taxonomy.TRAINING_RECIPE + 1)
        assert cache_key(small, 0) != key
    # An LM under the key is copied, not trained again (training would take minutes and measure its own accuracy).
    cached = tmp_path / "cache" / key
    (cached / "lm").mkdir(parents=True)
    (cached / "lm" / "config.json").write_text("{}")
    (cached / "accuracy.json").write_text(json.dumps({"scale": "small", "held_out_accuracy": 0.5}))
    report = build("small", tmp_path / "out", seed=0, cache=tmp_path / "cache", log=lambda _: None)
    assert report["held_out_accuracy"] == 0.5
    assert (tmp_path / "out" / "lm" / "config.json").read_text() == "{}"
    assert json.loads((tmp_path / "out" / "accuracy.json").read_text()) == report


@pytest.fixture(scope="module")
def small_testbed(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The small testbed with three features (about 80 s of training on two cores)."""
    out = tmp_path_factory.mktemp("taxonomy") / "small"
    categories = _write(out.parent / "features.txt", "carnivore\ninsect\nrodent\n")
    build("small", out, categories_file=categories, seed=0, log=lambda _: None)
    return out


@pytest.mark.slow
def test_small_testbed_writes_its_files_and_answers_held_out_questions(small_testbed: pathlib.Path) -> None:
    out = small_testbed
    world = load_taxonomy(SCALES["small"])
    assert (out / "categories.txt").read_text().split("\n")[:-1] == list(world.members)
    truth = json.loads((out / "truth.json").read_text())
    features = ["carnivore", "insect", "rodent"]
    assert truth == {str(k): {"category": c, "names": list(world.lemmas[c])} for k, c in enumerate(features)}
    table = read_exemplars(out / "exemplars.jsonl")
    assert sorted(set(table.column("feature").to_pylist())) == [0, 1, 2]
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "lm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "lm")
    assert tokenizer.unk_token_id not in tokenizer(table.column("context").to_pylist())["input_ids"][0]
    # Fresh questions in sentences the training never drew.
    accuracy = held_out_accuracy(model, tokenizer, world, PromptTemplate(), n=1000, seed=1)
    assert accuracy >= SMALL_ACCURACY
    assert json.loads((out / "accuracy.json").read_text())["held_out_accuracy"] >= SMALL_ACCURACY


@pytest.mark.slow
def test_label_takes_the_testbeds_lm_and_exemplars_with_no_extra_flags(
    small_testbed: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from labeler.cli import main as labeler

    out = tmp_path / "run"
    argv = [
        "label",
        "--discriminator",
        f"hf:{small_testbed / 'lm'}",
        "--exemplars",
        str(small_testbed / "exemplars.jsonl"),
    ]
    assert labeler([*argv, "--out", str(out)]) == 0
    labels = read_runs([str(out)]).labels.sort_by("feature").to_pylist()
    assert [row["feature"] for row in labels] == [0, 1, 2]
    assert all(row["status"] == "labelled" and row["label"] for row in labels)
    print("testbed labels:", [(row["label"], round(row["heldout_auroc"], 3)) for row in labels])
    assert all(row["heldout_auroc"] >= LABEL_AUROC for row in labels)
