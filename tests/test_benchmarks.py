"""The benchmark scripts run end to end on tiny settings and print what their docs say (they are not timed here)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from labeler.discriminators.embedding import MINILM_PACKAGE
from labeler.toys.paper_datasets import CONCEPT_WORDS

ROOT = Path(__file__).resolve().parents[1]
PAPER_ROOT = ROOT.parent / "shared" / "paper-datasets"


def run_script(name: str, *args: str) -> list[dict]:
    """Run benchmarks/NAME with ARGS; return the JSON lines it printed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def load_benchmark(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import benchmarks/NAME.py as module NAME (registered, since its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_label_quality_methods_mean_the_same_whatever_the_kinds_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each method names every pick and candidate source, so over the causal-LM defaults it is the method itself;
    and those defaults are the table's discrete+pick."""
    from dataclasses import replace

    from labeler.discriminators.config import default_optimiser
    from labeler.optimise.config import OptimiserConfig

    methods = load_benchmark("label_quality", monkeypatch).METHODS
    hf = default_optimiser("hf")
    assert hf != OptimiserConfig()
    for name, settings in methods.items():
        assert replace(hf, **settings) == replace(OptimiserConfig(), **settings), name
    assert hf == replace(OptimiserConfig(), **methods["discrete+pick"])


@pytest.mark.slow
def test_engine_throughput_prints_both_methods_and_their_ratio() -> None:
    lines = run_script(
        "engine_throughput.py", "--features", "3", "--restarts", "2", "--steps", "2", "--examples", "12",
        "--examples-per-step", "4",
    )  # fmt: skip
    by_name = {line["measurement"]: line for line in lines}
    assert list(by_name) == ["batched_engine", "paper_loop", "speedup"]
    batched, loop = by_name["batched_engine"], by_name["paper_loop"]
    for line in (batched, loop):
        assert line["features"] == 3 and line["restarts"] == 2 and line["steps"] == 2
        # seconds are printed to 1 ms, a few per cent of these tiny runs: the rate must lie within that rounding.
        low, high = 3 / (line["seconds"] + 0.0005), 3 / max(line["seconds"] - 0.0005, 1e-9)
        assert low * 0.999 <= line["features_per_s"] <= high * 1.001, line
    assert by_name["speedup"]["ratio"] == pytest.approx(batched["features_per_s"] / loop["features_per_s"], abs=0.01)


@pytest.mark.slow
def test_paper_table_rows_obey_what_the_baselines_mean(tmp_path: Path) -> None:
    pytest.importorskip(MINILM_PACKAGE)
    if not PAPER_ROOT.is_dir():
        pytest.skip(f"the paper's datasets are not at {PAPER_ROOT}")
    variant = "category nouns, encoder defaults"
    out = tmp_path / "table.md"
    rows = run_script(
        "paper_table.py", "--data", str(PAPER_ROOT), "--variants", variant, "--restarts", "1", "--steps", "3",
        "--seeds", "0", "1", "--out", str(out),
    )  # fmt: skip
    table, written = [row for row in rows if "variant" in row], rows[-1]
    assert written["written"] == str(out)
    features = ["animals", "mammals", "mammals_words", "numbers", "chinese", "palindromes"]
    assert [(row["seed"], row["feature"]) for row in table] == [(seed, f) for seed in (0, 1) for f in features]
    # Each seed is its own split (its own exhaustive search): the held-out examples differ somewhere.
    by_seed = {seed: [row["exhaustive_label"] for row in table if row["seed"] == seed] for seed in (0, 1)}
    assert by_seed[0] != by_seed[1]
    for row in table:
        optimum = row["exhaustive_auroc"]
        # The optimum is the best single token on the held-out examples: no single token beats it there,
        # not GD's (L = 1; AUROC ignores the head's positive scale and offset), nor the training pick, nor a
        # concept word; and at least the optimum itself is within 97% of it.
        assert row["heldout_auroc"] <= optimum + 1e-4
        assert row["by_training_auroc"] <= optimum + 1e-4
        assert row["concept_auroc"] is None or row["concept_auroc"] <= optimum + 1e-4
        assert row["fraction_of_optimum"] == pytest.approx(row["heldout_auroc"] / optimum, abs=1e-3)
        # Likewise on the training examples: the training optimum is the best single token there.
        assert row["train_auroc"] <= row["train_optimum"] + 1e-4
        assert row["fraction_of_train_optimum"] == pytest.approx(row["train_auroc"] / row["train_optimum"], abs=1e-3)
        assert row["tokens_at_97pct"] >= 1
    assert table[-1]["concept_word"] is None  # no word names a palindrome in the category nouns
    # The training pick is ranked on other examples: on these small splits it is never the held-out optimum
    # on all six features (the committed tables: on none of them).
    assert any(row["by_training_label"] != row["exhaustive_label"] for row in table)
    text = out.read_text()
    assert f"## {variant} (seed 0):" in text and f"## {variant} (seed 1):" in text
    # Per seed one row per feature, and one more per feature in the summary over seeds.
    assert sum(line.startswith(f"| {feature} |") for feature in features for line in text.splitlines()) == 18
    summary = text.split("## Over 2 seeds (0, 1)")[1]
    for feature in features:
        mine = [row for row in table if row["feature"] == feature]
        cells = next(line for line in summary.splitlines() if line.startswith(f"| {feature} |")).split(" | ")
        assert cells[2] == ", ".join(row["label"] for row in mine)
        assert cells[4] == f"{sum(row['fraction_of_optimum'] >= 0.97 for row in mine)} of 2"
        assert cells[8] == f"{sum(row['fraction_of_train_optimum'] >= 0.97 for row in mine)} of 2 |"


@pytest.mark.slow
def test_paper_table_scores_a_label_on_the_training_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's training AUROC of a label agrees with exhaustive search's ranking on the training examples."""
    pytest.importorskip(MINILM_PACKAGE)
    if not PAPER_ROOT.is_dir():
        pytest.skip(f"the paper's datasets are not at {PAPER_ROOT}")
    from labeler.discriminators.embedding import EmbeddingConfig, EmbeddingDiscriminator
    from labeler.discriminators.vocab import VocabFilter, read_word_list
    from labeler.optimise.exhaustive import exhaustive_search
    from labeler.optimise.labelling import LabelConfig, prepare_tasks
    from labeler.records.exemplars import group_by_feature
    from labeler.toys.paper_datasets import paper_exemplars

    paper_table = load_benchmark("paper_table", monkeypatch)

    disc = EmbeddingDiscriminator.minilm(EmbeddingConfig(vocab=VocabFilter(words=read_word_list("category-nouns"))))
    mammals = next(f for f in group_by_feature(paper_exemplars(PAPER_ROOT)) if f.feature == 1)
    contexts, targets, (task,) = prepare_tasks([mammals], LabelConfig())
    encoded = disc.encode(contexts, targets)
    on_train = exhaustive_search(disc, encoded, task, on="train")
    on_heldout = exhaustive_search(disc, encoded, task)
    for token, expected in [
        *zip(on_train.token_ids[:3], on_train.aurocs[:3], strict=True),
        (on_train.token_ids[-1], on_train.aurocs[-1]),
    ]:
        assert paper_table.training_auroc(disc, encoded, task, (token,)) == pytest.approx(expected, abs=1e-9)
    # Not the held-out examples: the held-out optimum scores otherwise on the training examples.
    best = on_heldout.token_ids[0]
    assert paper_table.training_auroc(disc, encoded, task, (best,)) == pytest.approx(
        dict(zip(on_train.token_ids, on_train.aurocs, strict=True))[best], abs=1e-9
    )
    assert paper_table.training_auroc(disc, encoded, task, (best,)) != pytest.approx(on_heldout.aurocs[0], abs=1e-6)


# float32: a CPU multiplies bfloat16 far below its float32 rate (0.85 GFLOP/s against 80-150 here, 2026-12-02),
# and a bfloat16 matmul peak that low let the tiny engine's MFU come out above 1 in CI (1.31, 1.44).
GPU_ENGINE_TINY = (
    "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--features", "2", "--restarts", "2", "--steps", "2",
    "--examples", "12", "--examples-per-step", "4", "--text-words", "16", "--loop-features", "1", "--matmul", "512",
)  # fmt: skip


@pytest.mark.slow
def test_gpu_engine_counts_flops_by_its_formula_and_compares_with_the_loop(tmp_path: Path) -> None:
    profile = tmp_path / "profile.txt"
    lines = run_script("gpu_engine.py", *GPU_ENGINE_TINY, "--profile", str(profile))
    by_name = {line["measurement"]: line for line in lines}
    assert list(by_name) == ["setup", "matmul_peak", "batched_engine", "paper_loop", "ratio", "profile"]
    batched, loop, ratio = by_name["batched_engine"], by_name["paper_loop"], by_name["ratio"]
    assert batched["features"] == 2 and batched["restarts"] == 2 and batched["steps"] == 2
    assert batched["failed_features"] == 0
    assert batched["features_per_s"] == pytest.approx(2 / batched["seconds"], rel=1e-3)
    assert loop["features_per_s"] == pytest.approx(1 / loop["seconds"], rel=1e-3)
    assert ratio["ratio"] == pytest.approx(batched["features_per_s"] / loop["features_per_s"], rel=1e-9)
    assert batched["mfu"] == pytest.approx(batched["achieved_flops_per_s"] / by_name["matmul_peak"]["flops_per_s"])
    assert 0 < batched["mfu"] < 1 and batched["peak_memory_gib"] > 0
    # The tiny Gemma-2 shape by hand: per layer q and o 64x64, k and v 64x32, the MLP 3 x 64x256, four norms;
    # then the final norm. The embedding table is not counted.
    d, layers = 64, 2
    params = layers * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 256 + 4 * d) + d
    assert batched["non_embedding_params"] == params
    # The formula of the module docstring, from what the line reports (every prefix has the same length here:
    # 16 one-token words, a one-token target word, the fixed prompt).
    rows, suffix, prefix = 2 * 2 * 4, batched["suffix_tokens"], batched["prefix_tokens_mean"]
    assert prefix > 16 and suffix >= 2
    context = sum(prefix + s + 1 for s in range(suffix))
    expected = (
        4 * rows * (params * suffix + d * 1024 * 1)
        + 3 * rows * layers * 4 * 4 * 16 * context
        + 4 * 2 * 2 * 1 * batched["allowed_tokens"] * d
    )
    assert batched["step_flops"] == pytest.approx(expected, rel=1e-6)
    assert 0 < batched["allowed_tokens"] <= batched["vocab_size"] == 1024
    table = profile.read_text()
    assert "aten::mm" in table and "Self CPU" in table


@pytest.mark.slow
def test_gpu_suite_writes_lines_profile_and_an_environment_free_of_ray_and_pyarrow(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_SUITE_SHAPES": "tiny",
        "GPU_SUITE_ARGS": " ".join(GPU_ENGINE_TINY[2:]),  # the shape comes from GPU_SUITE_SHAPES
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    machine = json.loads((out / "env.json").read_text())
    assert machine["missing"] == [] and machine["imported_forbidden"] == [], machine
    lines = [json.loads(line) for line in (out / "gpu_engine-tiny.jsonl").read_text().splitlines()]
    assert [line["measurement"] for line in lines] == [
        "setup", "matmul_peak", "batched_engine", "paper_loop", "ratio", "profile",
    ]  # fmt: skip
    assert lines[-1]["written"] == str(out / "profile-tiny.txt")
    assert "aten::mm" in (out / "profile-tiny.txt").read_text()


@pytest.mark.slow
def test_label_quality_rows_obey_what_their_columns_mean(tmp_path: Path) -> None:
    """One paper feature with minilm, discrete search at L = 1 and the soft label at L = 2: the label's training AUROC
    cannot beat the exhaustive single-token optimum on the same examples at L = 1, the shares are shares, and the
    Markdown table holds the rows."""
    pytest.importorskip(MINILM_PACKAGE)
    if not PAPER_ROOT.is_dir():
        pytest.skip(f"the paper's datasets are not at {PAPER_ROOT}")
    out = tmp_path / "table.md"
    args = ["--paper", str(PAPER_ROOT), "--features", "1", "--methods", "discrete", "--label-tokens", "1", "2",
            "--multi-token-methods", "soft"]  # fmt: skip
    cache = tmp_path / "optima.json"
    row, multi = run_script("label_quality.py", *args, "--out", str(out), "--optimum-cache", str(cache))
    assert (multi["method"], multi["label_tokens"], len(multi["labels"][0].split())) == ("soft", 2, 2)
    assert row["testbed"] == "paper six, minilm" and row["method"] == "discrete" and row["features"] == 1
    assert row["mean_train_auroc_over_optimum"] <= 1 + 1e-9
    assert row["train_auroc_over_optimum"] == [round(row["mean_train_auroc_over_optimum"], 4)]
    assert row["reach_0.99_of_optimum"] == float(row["mean_train_auroc_over_optimum"] >= 0.99)
    assert row["named_exact"] == float(row["labels"][0] in CONCEPT_WORDS["animals"])
    optimum_named = row["optimum_labels"][0] in CONCEPT_WORDS["animals"]
    assert row["optimum_named"] == float(optimum_named)
    if optimum_named:
        assert row["named_where_optimum_named"] == row["named_exact"]
    else:
        assert row["named_where_optimum_named"] != row["named_where_optimum_named"]  # NaN: no such feature
    assert row["forward_tokens_per_feature"] >= row["grad_tokens_per_feature"] > 0
    table = out.read_text()
    assert "| paper six, minilm | discrete | 1 | 1 |" in table and row["labels"][0] in table
    assert "| paper six, minilm | soft | 2 | 1 |" in table and multi["labels"][0] in table
    assert "UNFINISHED" not in table  # rewritten after its last row
    searched = f"(`best_token`): paper six, minilm {row['exhaustive_seconds_per_feature']:.1f} s per feature searched."
    assert searched in table and row["optima_from_cache"] == 0
    # Again with the cache the first run wrote: the optimum is read, not searched, and every figure is the same.
    again = tmp_path / "again.md"
    (cached,) = run_script("label_quality.py", *args[:-3], "--out", str(again), "--optimum-cache", str(cache))
    assert cached["optima_from_cache"] == 1 and "(1 of 1 optima from the cache)" in again.read_text()
    same = ("optimum_labels", "labels", "train_auroc_over_optimum", "reach_0.99_of_optimum", "mean_heldout_auroc")
    assert {key: cached[key] for key in same} == {key: row[key] for key in same}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "label_quality.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "exists; name a new file" in done.stderr


def test_label_quality_refuses_a_folder_that_is_not_a_taxonomy_testbed(tmp_path: Path) -> None:
    (tmp_path / "lm").mkdir()  # a folder with an LM but no truth.json
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "label_quality.py"), "--taxonomy", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"{tmp_path} is not a taxonomy testbed (no truth.json)" in done.stderr
    assert "python -m labeler.toys.taxonomy build" in done.stderr


def test_label_quality_refuses_an_optimum_cache_it_did_not_write(tmp_path: Path) -> None:
    cache = tmp_path / "optima.json"
    cache.write_text("not json")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "label_quality.py"), "--paper", str(PAPER_ROOT),
         "--optimum-cache", str(cache)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"{cache} is not an optimum cache this script wrote" in done.stderr


def test_label_quality_refuses_an_unknown_multi_token_method(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "label_quality.py"), "--paper", str(PAPER_ROOT),
         "--multi-token-methods", "gcg", "--out", str(out)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--multi-token-methods: invalid choice: 'gcg'" in done.stderr
    assert not out.exists()
