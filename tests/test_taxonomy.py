"""The taxonomy testbed: its world, its feature kinds' exemplars and truth, the shipped LMs, its command line
(`labeler testbed`), and an LM that learned it."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import pathlib
import shutil

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
    GRADED_NOISE,
    NONE_WORDS,
    SCALES,
    FeatureSpec,
    TaxonomyError,
    ancestors,
    build,
    cache_key,
    concept,
    default_features,
    feature_exemplars,
    held_out_accuracy,
    load_taxonomy,
    parse_feature,
    read_features,
    roots,
    ship,
    shipped_manifest,
    shipped_root,
    typicality,
    unrelated_problem,
)

DATA = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "data"

SMALL_ACCURACY = 0.88
"""Floor of the small testbed LM's held-out answer accuracy (the shipped one's is in
labeler/data/testbed/small/accuracy.json)."""
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
    rows = feature_exemplars(world, [concept(c) for c in features], seed=0)
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
    rows, near = feature_exemplars(world, [concept("hawk")], seed=0), set(world.just_outside["hawk"])
    inactive = [row["target"] for row in rows if row["activation"] == 0.0]
    assert sum(word in near for word in inactive) >= 50


@pytest.mark.slow
def test_training_asks_about_every_category_and_the_words_just_outside_it() -> None:
    """Half the LM's questions start from a category drawn uniformly, so a small category is asked about about as
    often as a large one (from words alone, a tenth of the bench's categories had under 210 yes-questions of 1.9
    million, the largest 73,000), and its "no"s are mostly about the words just outside it."""
    world = load_taxonomy(SCALES["bench"])
    rng, n = np.random.default_rng(0), 120_000
    yes, no_outside = collections.Counter[str](), collections.Counter[str]()
    lemma_of = {names[0]: c for c, names in world.lemmas.items()}
    for _, word, asked, answer in (taxonomy._question(world, rng) for _ in range(n)):
        category = lemma_of.get(asked)
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
    """benchmarks/data's feature sets: the report and held-out categories, known to the bench LM, 40 each with at least
    10 members, and none a tuning feature (the scales' defaults) or one of another set; the kinds sets (fit and report),
    each with at least 20 mixtures, 20 graded and 20 no-concept features, whose categories are none of those and
    apart from each other's, and whose no-concept seeds differ; the small kinds set, apart from the small sets."""
    bench, small = load_taxonomy(SCALES["bench"]), load_taxonomy(SCALES["small"])
    report = _categories(read_features(DATA / "taxonomy-bench-report.txt", bench))
    heldout = _categories(read_features(DATA / "taxonomy-bench-heldout.txt", bench))
    small_report = _categories(read_features(DATA / "taxonomy-small-report.txt", small))
    tuning = {*default_features(bench, SCALES["bench"].features), *default_features(small, SCALES["small"].features)}
    for chosen in (report, heldout):
        assert len(chosen) == 40 and all(len(bench.members[c]) >= 10 for c in chosen)
        assert not set(chosen) & tuning
    assert not set(heldout) & {*report, *small_report}
    kinds = {name: read_features(DATA / f"taxonomy-bench-kinds-{name}.txt", bench) for name in ("fit", "report")}
    for features in kinds.values():
        counts = collections.Counter(feature.kind for feature in features)
        assert counts["mixture"] >= 20 and counts["graded"] >= 20 and counts["none"] >= 20
        used = _categories(features)
        assert len(used) == len(set(used))
        assert not set(used) & {*tuning, *report, *heldout, *small_report}
    assert not set(_categories(kinds["fit"])) & set(_categories(kinds["report"]))
    seeds = [{f.seed for f in features if f.kind == "none"} for features in kinds.values()]
    small_kinds = read_features(DATA / "taxonomy-small-kinds.txt", small)
    seeds.append({f.seed for f in small_kinds if f.kind == "none"})
    assert not seeds[0] & seeds[1] and not seeds[2] & (seeds[0] | seeds[1])
    used = _categories(small_kinds)
    small_tuning = default_features(small, SCALES["small"].features)
    assert len(used) == len(set(used)) and not set(used) & {*small_tuning, *small_report}


def _categories(features: list[FeatureSpec]) -> list[str]:
    return [c for feature in features for c in feature.categories]


def test_a_no_concept_features_words_share_no_category_below_the_top() -> None:
    """none:<seed>: NONE_WORDS member words drawn across the world, active; other member words drawn alike, inactive.
    No category below the top ones holds all the active words, and no category is much more frequent among them than
    among the inactive ones (checked on the small world and on every no-concept feature of the bench kinds sets)."""
    small, bench = load_taxonomy(SCALES["small"]), load_taxonomy(SCALES["bench"])
    shipped = [f for name in ("fit", "report") for f in read_features(DATA / f"taxonomy-bench-kinds-{name}.txt", bench)]
    cases = [(small, parse_feature("none:3", small)), *((bench, f) for f in shipped if f.kind == "none")]
    for world, feature in cases:
        rows = feature_exemplars(world, [feature], seed=0)
        active = [r["target"] for r in rows if r["activation"] > 0]
        inactive = [r["target"] for r in rows if r["activation"] == 0]
        assert len(active) == len(inactive) == 100 and len(set(active)) == NONE_WORDS
        assert not set(active) & set(inactive) and set(active) | set(inactive) <= set(world.member_words)
        shared = set.intersection(*(set(world.categories_of[w]) for w in set(active)))
        assert shared <= roots(world), (feature, shared)
        for category, members in world.members.items():
            share = sum(w in members for w in set(active)) / NONE_WORDS
            assert abs(share - sum(w in members for w in inactive) / 100) < 0.35, (feature, category)
        truth = taxonomy.truth_of(world, feature)
        assert truth["kind"] == "none" and truth["names"] == [] and set(truth["words"]) == set(active)
    assert parse_feature("none:3", small) == FeatureSpec("none", (), 3)


def test_a_mixtures_active_words_are_members_of_its_two_unrelated_categories() -> None:
    """mix:<a>+<b>: half the active rows are a's members, half b's; the inactive ones are members of neither; a and b
    share no category below the top ones and no member; naming either counts (truth: both categories' lemmas)."""
    bench = load_taxonomy(SCALES["bench"])
    mix = parse_feature("mix:tableware+hawk", bench)
    rows = feature_exemplars(bench, [concept("dog"), mix], seed=0)
    mine = [r for r in rows if r["feature"] == 1]
    active = [r["target"] for r in mine if r["activation"] > 0]
    inactive = [r["target"] for r in mine if r["activation"] == 0]
    assert sum(w in bench.members["tableware"] for w in active) == 50
    assert sum(w in bench.members["hawk"] for w in active) == 50
    assert not any(w in bench.members["tableware"] | bench.members["hawk"] for w in inactive)
    near = set(bench.just_outside["tableware"]) | set(bench.just_outside["hawk"])
    assert sum(w in near for w in inactive) >= 50  # the hardest contrast: words just outside either category
    assert unrelated_problem(bench, "tableware", "hawk") is None
    assert not set(ancestors(bench, "tableware")) & set(ancestors(bench, "hawk"))
    truth = taxonomy.truth_of(bench, mix)
    assert truth["kind"] == "mixture" and truth["categories"] == ["tableware", "hawk"]
    assert truth["names_by_category"] == {
        "tableware": list(bench.lemmas["tableware"]),
        "hawk": list(bench.lemmas["hawk"]),
    }
    assert set(truth["names"]) == set(bench.lemmas["tableware"]) | set(bench.lemmas["hawk"])
    # Related categories are refused: one within the other, two under a category below the top, one twice.
    for line, reason in [
        ("mix:dog+carnivore", "unrelated categories, but both are carnivores"),
        ("mix:dog+cat", "unrelated categories, but both are carnivores"),
        ("mix:dog+dog", "two different"),
        ("mix:dog", "two categories"),
    ]:
        with pytest.raises(TaxonomyError, match=reason):
            parse_feature(line, bench)


def test_graded_activations_grow_with_typicality_apart_from_the_counted_noise() -> None:
    """graded:<category>: the active members' activations are increasing in `typicality` (0.2 + 0.8 t); the noise is
    GRADED_NOISE false positives (words outside, below every member's activation) and as many misses (members at 0),
    counted in truth.json; no (sentence, word) pair is both active and inactive."""
    world = load_taxonomy(SCALES["small"])
    feature = parse_feature("graded:dog", world)
    rows = feature_exemplars(world, [feature], seed=0)
    members = world.members["dog"]
    on = [(typicality(r["target"]), r["activation"]) for r in rows if r["activation"] > 0 and r["target"] in members]
    on.sort()
    assert len({a for _, a in on}) > 5 and all(a <= b for (_, a), (_, b) in itertools.pairwise(on))
    assert all(a == pytest.approx(0.2 + 0.8 * t) for t, a in on)
    false_positives = [r for r in rows if r["activation"] > 0 and r["target"] not in members]
    misses = [r for r in rows if r["activation"] == 0 and r["target"] in members]
    truth = taxonomy.truth_of(world, feature)
    assert len(false_positives) == truth["false_positives"] == GRADED_NOISE
    assert len(misses) == truth["misses"] == GRADED_NOISE
    assert max(r["activation"] for r in false_positives) < min(a for _, a in on)
    assert truth["kind"] == "graded" and truth["names"] == list(world.lemmas["dog"])
    active = {(r["context"], r["target"]) for r in rows if r["activation"] > 0}
    assert not active & {(r["context"], r["target"]) for r in rows if r["activation"] == 0}
    assert len(rows) == 200 and typicality("dog") == typicality("dog") and 0 <= typicality("dog") < 1


def test_the_new_kinds_change_no_concept_features_exemplars() -> None:
    """A concept feature's rows are the same whatever other kinds the file lists among them (the committed optima
    caches are keyed by those rows)."""
    world = load_taxonomy(SCALES["small"])
    plain = feature_exemplars(world, [concept("dog"), concept("insect")], seed=0)
    mixed = feature_exemplars(
        world,
        [concept("dog"), parse_feature("none:1", world), parse_feature("graded:rodent", world), concept("insect")],
        seed=0,
    )
    strip = [{**r, "feature": 0 if r["feature"] == 0 else 1} for r in mixed if r["feature"] in (0, 3)]
    assert strip == plain


def test_bad_categories_files_get_a_clear_error_naming_the_line(tmp_path: pathlib.Path) -> None:
    world = load_taxonomy(SCALES["small"])
    cases = [
        ("carnivore\nunicorn\n", r"line 2: 'unicorn' is not a category.*categories\.txt"),
        ("dog\nmix:dog+carnivore\n", r"line 2: 'mix:dog\+carnivore': a mixture needs two unrelated"),
        ("graded:unicorn\n", r"line 1: 'unicorn' is not a category"),
        ("none:seven\n", r"line 1: 'none:seven'.*none:<seed>"),
        ("# a comment\nsome:thing\n", r"line 2: .*unknown feature kind 'some'"),
        ("dog\ninsect\ndog\n", r"line 3: 'dog' is listed already \(line 1\)"),
        ("# nothing\n\n", "lists no feature"),
    ]
    for text, message in cases:
        with pytest.raises(TaxonomyError, match=message):
            read_features(_write(tmp_path / "bad.txt", text), world)
    with pytest.raises(TaxonomyError, match="cannot read"):
        read_features(tmp_path / "missing.txt", world)
    good = read_features(_write(tmp_path / "ok.txt", "dog\n  mix:insect+rodent \ngraded:dog\nnone:7\n"), world)
    assert good == [
        concept("dog"), FeatureSpec("mixture", ("insect", "rodent")), FeatureSpec("graded", ("dog",)),
        FeatureSpec("none", (), 7),
    ]  # fmt: skip
    assert [f.text for f in good] == ["dog", "mix:insect+rodent", "graded:dog", "none:7"]


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


def test_the_shipped_small_lm_is_what_this_code_trains_and_build_copies_it(tmp_path: pathlib.Path) -> None:
    """The package ships the small LM under the cache key this code trains under (a change of the training recipe
    without shipping a retrained LM fails here); `build` copies it, and the copies' sha256 are the manifest's."""
    manifest = shipped_manifest("small")
    assert manifest is not None and manifest["cache_key"] == cache_key(SCALES["small"], 0)
    assert {"lm/model.safetensors", "lm/config.json", "lm/tokenizer.json", "accuracy.json"} <= set(manifest["files"])
    messages: list[str] = []
    report = build("small", tmp_path / "out", log=messages.append)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == digest
    assert report == json.loads(shipped_root().joinpath("small", "accuracy.json").read_text())
    assert report["held_out_accuracy"] >= SMALL_ACCURACY
    assert any("copying the shipped small LM" in m for m in messages) and not any("training" in m for m in messages)
    assert json.loads((tmp_path / "out" / "truth.json").read_text())["0"]["kind"] == "concept"


def test_a_stale_missing_or_damaged_shipped_lm_is_refused(tmp_path: pathlib.Path) -> None:
    """A shipped LM under another cache key (recipe, scale, taxonomy or seed) is stale: build says to retrain and
    writes nothing; one whose files do not match their checksums is removed from the out folder again."""
    root = tmp_path / "shipped"
    shutil.copytree(pathlib.Path(str(shipped_root())) / "small", root / "small")
    with pytest.raises(TaxonomyError, match=r"trained with seed 0, not 1.*--retrain"):
        build("small", tmp_path / "seed1", seed=1, shipped=root, log=lambda _: None)
    manifest = json.loads((root / "small" / "manifest.json").read_text())
    (root / "small" / "manifest.json").write_text(json.dumps({**manifest, "cache_key": "seed0-000000000000"}))
    with pytest.raises(TaxonomyError, match=r"stale.*recipe.*--retrain"):
        build("small", tmp_path / "stale", shipped=root, log=lambda _: None)
    assert not (tmp_path / "stale").exists() and not (tmp_path / "seed1").exists()
    with pytest.raises(TaxonomyError, match=r"no bench LM ships.*--retrain"):
        build("bench", tmp_path / "missing", shipped=root, log=lambda _: None)
    (root / "small" / "manifest.json").write_text(json.dumps(manifest))
    weights = root / "small" / "lm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    out = tmp_path / "damaged"
    with pytest.raises(TaxonomyError, match=r"model\.safetensors.*do not match their sha256.*reinstall"):
        build("small", out, shipped=root, log=lambda _: None)
    assert list(out.iterdir()) == []
    (root / "small" / "lm" / "tokenizer.json").unlink()
    with pytest.raises(TaxonomyError, match=r"tokenizer\.json.*missing"):
        build("small", out, shipped=root, log=lambda _: None)
    assert list(out.iterdir()) == []


def test_ship_writes_a_testbeds_lm_with_its_checksums_and_key(tmp_path: pathlib.Path) -> None:
    built = tmp_path / "built"
    build("small", built, log=lambda _: None)
    into = tmp_path / "data"
    folder = ship(built, "small", into)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == {**shipped_manifest("small"), "files": manifest["files"]}  # type: ignore[dict-item]
    assert manifest["files"] == shipped_manifest("small")["files"]  # type: ignore[index]
    # The shipped copy builds like the package's.
    build("small", tmp_path / "again", shipped=into, log=lambda _: None)
    assert (tmp_path / "again" / "lm" / "model.safetensors").read_bytes() == (
        built / "lm" / "model.safetensors"
    ).read_bytes()
    with pytest.raises(TaxonomyError, match="holds a small testbed, not a bench one"):
        ship(built, "bench", into)
    report = json.loads((built / "accuracy.json").read_text())
    (built / "accuracy.json").write_text(json.dumps({**report, "cache_key": "seed0-000000000000"}))
    with pytest.raises(TaxonomyError, match="retrain it with this code"):
        ship(built, "small", into)


def test_the_cache_key_changes_with_the_recipe_the_scale_and_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    small = SCALES["small"]
    key = cache_key(small, 0)
    assert key == cache_key(small, 0) and key.startswith("seed0-")
    assert cache_key(small, 1) != key
    assert cache_key(dataclasses.replace(small, steps=small.steps + 1), 0) != key
    monkeypatch.setattr(taxonomy, "TRAINING_RECIPE", taxonomy.TRAINING_RECIPE + 1)
    assert cache_key(small, 0) != key


def test_the_testbed_command_builds_lists_and_refuses_bad_input(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`labeler testbed`: build from the shipped LM, categories, and exit status 2 with a message for bad input,
    before anything is written."""
    from labeler.cli import main as labeler
    from labeler.cli.testbed import SCALE_NAMES

    assert set(SCALE_NAMES) == set(SCALES)
    features = _write(tmp_path / "features.txt", "carnivore\nmix:insect+rodent\ngraded:dog\nnone:2\n")
    out = tmp_path / "testbed"
    assert labeler(["testbed", "build", "--scale", "small", "--out", str(out), "--categories", str(features)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["cache_key"] == cache_key(SCALES["small"], 0)
    assert "copying the shipped small LM" in captured.err
    assert [entry["kind"] for entry in json.loads((out / "truth.json").read_text()).values()] == [
        "concept", "mixture", "graded", "none",
    ]  # fmt: skip
    assert labeler(["testbed", "categories", "--scale", "small"]) == 0
    assert capsys.readouterr().out.split() == list(load_taxonomy(SCALES["small"]).members)
    bad = _write(tmp_path / "bad.txt", "carnivore\nunicorn\n")
    cases = [
        (["--out", str(tmp_path / "a"), "--categories", str(bad)], "line 2: 'unicorn'"),
        (["--out", str(out)], "already holds a testbed"),
        (["--out", str(features)], "is a file"),
    ]
    for argv, message in cases:
        assert labeler(["testbed", "build", "--scale", "small", *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit) as exit_info:
        labeler(["testbed", "build", "--scale", "huge", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    # ship: a built testbed's LM into a folder of shipped LMs (here not the package's).
    into = tmp_path / "shipped"
    ship_argv = ["testbed", "ship", "--scale", "small", "--from", str(out), "--into", str(into)]
    assert labeler(ship_argv) == 2 and "is not a folder" in capsys.readouterr().err
    into.mkdir()
    assert labeler(ship_argv) == 0 and json.loads(capsys.readouterr().out)["megabytes"] > 0.5
    assert shipped_manifest("small", into) == shipped_manifest("small")
    assert labeler([*ship_argv[:3], "bench", *ship_argv[4:]]) == 2
    assert "holds a small testbed, not a bench one" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_testbed(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, list[str]]:
    """The small testbed with a retrained LM and three features (about 3 min of training on one core), and what the
    build said."""
    out = tmp_path_factory.mktemp("taxonomy") / "small"
    categories = _write(out.parent / "features.txt", "carnivore\ninsect\nrodent\n")
    said: list[str] = []
    build("small", out, categories_file=categories, seed=0, retrain=True, log=said.append)
    return out, said


@pytest.mark.slow
def test_retrain_trains_writes_its_files_and_answers_held_out_questions(
    small_testbed: tuple[pathlib.Path, list[str]],
) -> None:
    """`build --retrain` trains the LM as the recipe does (it costs the minutes of training; the shipped LM spares
    every other test that), says that figures on it differ from the shipped LM's, and records its cache key."""
    out, said = small_testbed
    assert "will differ from those measured on the shipped LM" in said[0]
    world = load_taxonomy(SCALES["small"])
    assert (out / "categories.txt").read_text().split("\n")[:-1] == list(world.members)
    truth = json.loads((out / "truth.json").read_text())
    features = ["carnivore", "insect", "rodent"]
    assert truth == {
        str(k): {"kind": "concept", "categories": [c], "names": list(world.lemmas[c])} for k, c in enumerate(features)
    }
    table = read_exemplars(out / "exemplars.jsonl")
    assert sorted(set(table.column("feature").to_pylist())) == [0, 1, 2]
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "lm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "lm")
    assert tokenizer.unk_token_id not in tokenizer(table.column("context").to_pylist())["input_ids"][0]
    # Fresh questions in sentences the training never drew.
    accuracy = held_out_accuracy(model, tokenizer, world, PromptTemplate(), n=1000, seed=1)
    assert accuracy >= SMALL_ACCURACY
    report = json.loads((out / "accuracy.json").read_text())
    assert report["held_out_accuracy"] >= SMALL_ACCURACY and report["cache_key"] == cache_key(SCALES["small"], 0)


@pytest.mark.slow
def test_label_takes_the_testbeds_lm_and_exemplars_with_no_extra_flags(
    small_testbed: tuple[pathlib.Path, list[str]], tmp_path: pathlib.Path
) -> None:
    from labeler.cli import main as labeler

    testbed, _ = small_testbed
    out = tmp_path / "run"
    argv = [
        "label",
        "--discriminator",
        f"hf:{testbed / 'lm'}",
        "--exemplars",
        str(testbed / "exemplars.jsonl"),
    ]
    assert labeler([*argv, "--out", str(out)]) == 0
    labels = read_runs([str(out)]).labels.sort_by("feature").to_pylist()
    assert [row["feature"] for row in labels] == [0, 1, 2]
    assert all(row["status"] == "labelled" and row["label"] for row in labels)
    print("testbed labels:", [(row["label"], round(row["heldout_auroc"], 3)) for row in labels])
    assert all(row["heldout_auroc"] >= LABEL_AUROC for row in labels)
