"""The benchmark scripts run end to end on tiny settings and print what their docs say (they are not timed here)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict
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


# float32: a CPU multiplies bfloat16 far below its float32 rate, and a bfloat16 matmul peak that low let the tiny
# engine's MFU come out above 1 in CI. Each method runs its optimiser's own restarts and examples per step.
GPU_ENGINE_TINY = (
    "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--features", "2", "--steps", "2",
    "--examples", "12", "--text-words", "16", "--loop-features", "1", "--matmul", "512",
)  # fmt: skip


def as_json(value: object) -> object:
    """What a value reads back as from a JSON line (tuples become lists)."""
    return json.loads(json.dumps(value))


def test_gpu_engine_counts_tokens_and_flops_by_its_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny shape's encoding and one soft-label step, counted from the model's inputs, against hand arithmetic."""
    import torch

    from labeler.discriminators.causal_lm import CausalLMConfig, CausalLMDiscriminator
    from labeler.optimise.config import OptimiserConfig

    gpu_engine = load_benchmark("gpu_engine", monkeypatch)
    shape = gpu_engine.SHAPES["tiny"]
    tokenizer = gpu_engine.build_tokenizer(shape)
    model = gpu_engine.build_model(shape, torch.device("cpu"), torch.float32)
    disc = CausalLMDiscriminator(model, tokenizer, CausalLMConfig(model="random:tiny"))
    work = gpu_engine.ModelWork(model)
    contexts, targets, tasks = gpu_engine.synthetic_tasks(tokenizer, 2, 12, 16, seed=0)
    encoded, renumbered = gpu_engine.encode_for(disc, contexts, targets, tasks)
    # The tiny Gemma-2 shape by hand: per layer q and o 64x64, k and v 64x32, the MLP 3 x 64x256, four norms;
    # then the final norm. The embedding table is not counted.
    d, layers, vocab, pair = 64, 2, 1024, 2 * 4 * 4 * 16  # pair: 4 heads of 16 dims, QK^T and AV, 2 layers
    params = layers * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 256 + 4 * d) + d
    assert work.params == params
    # Encoding: 24 distinct texts of 16 one-token words and a one-token target: prefixes of one length n; the
    # logits of the last position only; no grad.
    n = len(disc.prompt_ids(contexts[0], targets[0])[0])
    assert {len(disc.prompt_ids(c, t)[0]) for c, t in zip(contexts, targets, strict=True)} == {n}
    assert work.tokens == 24 * n and work.grad_tokens == 0
    assert work.flops == pytest.approx(2 * (params * 24 * n + d * vocab * 24) + pair * 24 * n * (n + 1) / 2)
    # One soft-label step: F x R x N rows of S suffix tokens after their prefix, with grad, logits at the answer.
    work.reset()
    gpu_engine.one_step(disc, encoded, renumbered, OptimiserConfig(restarts=2, examples_per_step=4))
    rows, suffix = 2 * 2 * 4, 1 + len(disc.suffix_ids)
    context = sum(n + s + 1 for s in range(suffix))
    assert work.tokens == work.grad_tokens == rows * suffix
    assert work.flops == pytest.approx(4 * rows * (params * suffix + d * vocab) + 3 * rows * pair * context)


@pytest.mark.slow
def test_gpu_suite_measures_the_default_beside_the_papers_method(tmp_path: Path) -> None:
    """The suite's tiny shape on the CPU, as the GPU machine runs it: gpu_engine's lines (the kind's default, the
    paper's soft label batched and in its loop), their relations, the side-by-side table, the profile, suite.json.
    About a minute here: the GPU suite is run nowhere else before a GPU is lent."""
    from labeler.discriminators.config import default_optimiser
    from labeler.optimise.config import OptimiserConfig

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
    assert set(machine["project_pins"]) == {"transformers", "tokenizers"}
    assert all(pin["met"] for pin in machine["project_pins"].values()), machine
    lines = [json.loads(line) for line in (out / "gpu_engine-tiny.jsonl").read_text().splitlines()]
    assert [line["measurement"] for line in lines] == [
        "setup", "matmul_peak", "method", "method", "method", "comparison", "profile",
    ]  # fmt: skip
    peak = lines[1]["flops_per_s"]
    by_method = {line["method"]: line for line in lines[2:5]}
    assert list(by_method) == ["default", "paper", "paper_loop"]
    default, paper, loop = by_method.values()
    assert default["optimiser"] == as_json(asdict(default_optimiser("hf")))
    assert paper["optimiser"] == loop["optimiser"] == as_json(asdict(OptimiserConfig()))
    assert default["over_paper"] == {"search": "discrete", "prior_candidates": 8, "rescore_prior": 64,
                                     "rescore_neighbours": 64}  # fmt: skip
    assert paper["over_paper"] == loop["over_paper"] == {}
    assert [line["features"] for line in by_method.values()] == [2, 2, 1]
    for line in by_method.values():
        assert line["failed_features"] == 0 and line["steps"] == 2 and line["max_steps"] == 100
        assert line["features_per_s"] == pytest.approx(line["features"] / line["seconds"], rel=1e-9)
        # Every step costs the same: the step phase scaled from 2 steps to the optimiser's 100.
        full = line["seconds"] + line["step_seconds"] * (100 / 2 - 1)
        assert 0 < line["step_seconds"] < line["seconds"]
        assert line["features_per_s_full"] == pytest.approx(line["features"] / full, rel=1e-9)
        assert line["achieved_flops_per_s"] == pytest.approx(line["flops"] / line["seconds"], rel=1e-9)
        assert line["mfu"] == pytest.approx(line["achieved_flops_per_s"] / peak, rel=1e-9)
        assert 0 < line["mfu"] < 1 and line["peak_memory_gib"] > 0
        assert 0 < line["grad_tokens"] < line["forward_tokens"]
    # The paper's soft label: 2 steps of F x R x N rows of S suffix tokens with grad; its loop: half the features.
    assert paper["grad_tokens"] == 2 * 2 * 4 * 32 * paper["suffix_tokens"] == 2 * loop["grad_tokens"]
    # Discrete search scores its swap candidates and the pick's without grad: more tokens than the soft label.
    assert default["forward_tokens"] > 2 * paper["forward_tokens"]
    comparison = lines[5]
    assert comparison["default_over_paper"] == pytest.approx(
        default["features_per_s_full"] / paper["features_per_s_full"], rel=1e-9
    )
    assert comparison["paper_over_loop"] == pytest.approx(
        paper["features_per_s_full"] / loop["features_per_s_full"], rel=1e-9
    )
    stderr = (out / "tiny.stderr").read_text()
    table = stderr[stderr.index("| method |") :]
    assert "| default | rescore_prior=64, rescore_neighbours=64, search=discrete, prior_candidates=8 |" in table
    assert "| paper | the paper's soft label |" in table and "| paper_loop |" in table
    profile = (out / "profile-tiny.txt").read_text()
    assert lines[-1]["written"] == str(out / "profile-tiny.txt")
    assert "## default: one step and the pick" in profile and "## paper: one step" in profile
    assert profile.count("aten::mm") >= 2 and "Self CPU" in profile
    summary = json.loads((out / "suite.json").read_text())
    assert summary["env"] == machine and summary["budget_s"] == 480
    (shape,) = summary["shapes"]
    assert shape["shape"] == "tiny" and shape["status"] == "ok" and shape["exit"] == 0
    assert shape["lines"] == lines


@pytest.mark.slow
def test_gpu_suite_records_a_failed_shape_and_one_out_of_time(tmp_path: Path) -> None:
    """A shape gpu_engine refuses, then a shape cut at its time budget: each is recorded in suite.json with what it
    printed, the suite goes on after the first and exits 1."""
    env = {**os.environ, "PYTHON": sys.executable, "GPU_SUITE_ARGS": " ".join(GPU_ENGINE_TINY[2:])}
    suite = ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")]
    failing = subprocess.run(
        [*suite, str(tmp_path / "a")], capture_output=True, text=True, env={**env, "GPU_SUITE_SHAPES": "nosuch tiny",
                                                                              "GPU_SUITE_BUDGET": "2"}
    )  # fmt: skip
    assert failing.returncode == 1, failing.stderr[-3000:]
    assert "gpu_suite: [1/2] nosuch: at most 1 s" in failing.stderr
    first, second = json.loads((tmp_path / "a" / "suite.json").read_text())["shapes"]
    assert first["shape"] == "nosuch" and first["status"] in ("failed", "out of time")
    assert second["shape"] == "tiny" and second["status"] == "out of time" and second["exit"] == 124
    assert second["lines"] == [] and second["seconds"] <= second["budget_s"] + 11  # INT, then KILL after 10 s
    refused = subprocess.run(
        [*suite, str(tmp_path / "b")], capture_output=True, text=True, env={**env, "GPU_SUITE_SHAPES": "nosuch"}
    )
    assert refused.returncode == 1
    (shape,) = json.loads((tmp_path / "b" / "suite.json").read_text())["shapes"]
    assert shape["status"] == "failed" and shape["exit"] == 2 and shape["lines"] == []
    assert any("invalid choice: 'nosuch'" in line for line in shape["stderr_tail"])


def test_each_kinds_default_optimiser_is_one_value_in_the_manifest_gpu_engine_and_label_quality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`default_optimiser(kind)` is what a run's manifest records (the service's own `prepare`, every kind), what
    gpu_engine measures as the default (hf; its recorded line is checked in the suite's test) and what label_quality's
    testbeds start from (hf: the taxonomy testbed of the shipped small LM; minilm: the paper's, whose model and
    datasets are replaced here, as only its optimiser is looked at)."""
    import pyarrow as pa
    from servers import exemplar_parts

    from labeler.discriminators.config import KINDS, default_optimiser
    from labeler.run.loading import load_config, to_dict
    from labeler.run.service import prepare
    from labeler.toys import taxonomy

    exemplars = exemplar_parts(tmp_path / "exemplars", 6)
    for kind, spec in zip(KINDS, ["hf:/models/lm", "embedding:/models/encoder", "minilm"], strict=True):
        config = load_config(None, {"out": str(tmp_path / kind), "source.exemplars": str(exemplars),
                                    "discriminator": spec})  # fmt: skip
        assert config.discriminator.kind == kind
        manifest = prepare(config).manifest
        assert manifest["config"]["label"]["optimiser"] == to_dict(default_optimiser(kind)), kind
        stored = json.loads((tmp_path / kind / "manifest.json").read_text())
        assert stored["config"]["label"]["optimiser"] == as_json(to_dict(default_optimiser(kind))), kind

    gpu_engine = load_benchmark("gpu_engine", monkeypatch)
    measured = {method.name: method.optimiser for method in gpu_engine.methods(None, None)}
    assert measured["default"] == default_optimiser("hf")

    label_quality = load_benchmark("label_quality", monkeypatch)
    folder = tmp_path / "taxonomy"
    taxonomy.build("small", folder, log=lambda message: None)  # from the shipped small LM: seconds
    assert label_quality.taxonomy_testbed(folder).base == default_optimiser("hf")
    monkeypatch.setattr(label_quality, "EmbeddingDiscriminator", type("Loader", (), {"minilm": staticmethod(str)}))
    monkeypatch.setattr(label_quality, "paper_exemplars", lambda root: pa.table({"feature": pa.array([], pa.int64())}))
    monkeypatch.setattr(label_quality, "group_by_feature", lambda table: [])
    assert label_quality.paper_testbed(tmp_path).base == default_optimiser("minilm")


@pytest.mark.slow
def test_label_quality_rows_obey_what_their_columns_mean(tmp_path: Path) -> None:
    """One paper feature with minilm, discrete search at L = 1 and the soft label at L = 2: the label's training AUROC
    cannot beat the exhaustive single-token optimum on the same examples at L = 1, the shares are shares, and the
    Markdown table holds the rows. About a minute here (minilm over a real feature's examples, both methods): the
    check that the quality table's columns mean what its header says."""
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
    assert "| paper six, minilm | discrete | 1 | concept | 1 |" in table and row["labels"][0] in table
    assert "| paper six, minilm | soft | 2 | concept | 1 |" in table and multi["labels"][0] in table
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


@pytest.mark.slow
def test_label_quality_refuses_a_folder_that_is_not_a_taxonomy_testbed(tmp_path: Path) -> None:
    (tmp_path / "lm").mkdir()  # a folder with an LM but no truth.json
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "label_quality.py"), "--taxonomy", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"{tmp_path} is not a taxonomy testbed (no truth.json)" in done.stderr
    assert "labeler testbed build" in done.stderr


def test_label_quality_refuses_conflicting_or_bad_testbed_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--taxonomy (a built testbed) with --scale or --categories (one built from the shipped LM), --categories with
    only --paper, a bad categories file, and a testbed written before the feature kinds: exit 2, nothing written."""
    bad = tmp_path / "bad.txt"
    bad.write_text("carnivore\nunicorn\n")
    old = tmp_path / "old"
    old.mkdir()
    (old / "truth.json").write_text(json.dumps({"0": {"category": "dog", "names": ["dog"]}}))
    out = tmp_path / "table.md"
    cases = [
        (["--taxonomy", str(old), "--scale", "small"], "give one or the other"),
        (["--paper", str(PAPER_ROOT), "--categories", str(bad)], "--categories needs --scale"),
        (["--scale", "small", "--categories", str(bad)], f"{bad}, line 2: 'unicorn' is not a category"),
        (["--taxonomy", str(old)], "gives no feature kinds (an older build)"),
    ]
    label_quality = load_benchmark("label_quality", monkeypatch)
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["label_quality.py", *args, "--out", str(out)])
        with pytest.raises(SystemExit) as exit_info:
            label_quality.main()
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_label_quality_reads_the_shipped_optima_and_writes_only_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An optimum in a shipped file (benchmarks/data/optima-*.json) is used as one of --optimum-cache's, and the
    shipped file is never written; an optimum cache that is not JSON is refused."""
    label_quality = load_benchmark("label_quality", monkeypatch)
    shipped = tmp_path / "optima-shipped.json"
    shipped.write_text(json.dumps({"k1": {"feature": 3, "token_ids": [7], "aurocs": [0.9]}}))
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"k2": {"feature": 4, "token_ids": [8], "aurocs": [0.8]}}))
    cache = label_quality.OptimumCache(own, [shipped])
    assert cache.best(None, None, None, "k1").token_ids == (7,)
    assert cache.best(None, None, None, "k2").aurocs == (0.8,)
    assert cache.hits == 2 and "k1" not in json.loads(own.read_text())
    shipped_files = sorted(label_quality.SHIPPED_OPTIMA.glob("optima-*.json"))
    assert shipped_files and all(path.parent == ROOT / "benchmarks" / "data" for path in shipped_files)
    shipped.write_text("not json")
    with pytest.raises(SystemExit, match="is not an optimum cache"):
        label_quality.OptimumCache(None, [shipped])


@pytest.mark.slow
def test_label_quality_reports_one_row_per_feature_kind_on_the_shipped_lm(tmp_path: Path) -> None:
    """On a testbed built from the shipped small LM (no --taxonomy), one feature of each kind: one row per kind, each
    'named' as its kind means it (a no-concept feature: labelled with any category's name)."""
    from labeler.toys.taxonomy import SCALES, load_taxonomy

    features = tmp_path / "kinds.txt"
    features.write_text("carnivore\nmix:insect+rodent\ngraded:dog\nnone:2\n")
    out = tmp_path / "table.md"
    rows = run_script(
        "label_quality.py", "--scale", "small", "--categories", str(features), "--methods", "discrete",
        "--label-tokens", "1", "--out", str(out),
    )  # fmt: skip
    assert [(row["kind"], row["features"], row["testbed_features"]) for row in rows] == [
        ("concept", 1, 4), ("mixture", 1, 4), ("graded", 1, 4), ("none", 1, 4),
    ]  # fmt: skip
    world = load_taxonomy(SCALES["small"])
    every_name = {name.replace("_", " ") for names in world.lemmas.values() for name in names}
    accepted = {
        "concept": set(world.lemmas["carnivore"]),
        "mixture": set(world.lemmas["insect"]) | set(world.lemmas["rodent"]),
        "graded": set(world.lemmas["dog"]),
        "none": every_name,
    }
    for row in rows:
        (label,) = row["labels"]
        assert row["named_exact"] == float(label in accepted[row["kind"]]), row
        assert row["optimum_named"] == float(row["optimum_labels"][0] in accepted[row["kind"]]), row
        assert row["mean_train_auroc_over_optimum"] <= 1 + 1e-9
    table = out.read_text()
    for kind in accepted:
        assert f"| taxonomy small | discrete | 1 | {kind} | 1 |" in table
    assert "insect or rodent" in table and "no concept" in table and "UNFINISHED" not in table


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_the_quality_guard_file_names_known_categories_and_the_shipped_lm() -> None:
    """benchmarks/data/quality-guard.json: per scale a sample of categories the scale knows (bench's from the held-out
    set), and a recorded figure only with the sha256 of the LM it was measured on, which is the shipped one."""
    from labeler.toys.taxonomy import SCALES, load_taxonomy, shipped_manifest

    guard = json.loads((ROOT / "benchmarks" / "data" / "quality-guard.json").read_text())
    heldout = (ROOT / "benchmarks" / "data" / "taxonomy-bench-heldout.txt").read_text().split("\n")
    assert set(guard["bench"]["categories"]) <= set(heldout) and len(guard["bench"]["categories"]) == 12
    for scale in ("small", "bench"):
        entry = guard[scale]
        assert set(entry["categories"]) <= set(load_taxonomy(SCALES[scale]).members)
        if entry["named"] is not None:
            manifest = shipped_manifest(scale)
            assert manifest is not None and entry["lm_sha256"] == manifest["files"]["lm/model.safetensors"]
            assert 0 < entry["named"] <= len(entry["categories"])
    assert guard["small"]["named"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["small", "bench"])
def test_the_quality_guard_the_default_names_no_fewer_than_recorded(
    scale: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI's label-quality guard: the default method (as `labeler label` runs it) labels the guard's 12 categories on
    the shipped LM of the scale and must name at least as many as recorded. It buys a check, on real vocabulary, that
    a change did not make the default's labels worse; about a minute per scale on two cores. A scale whose figure is
    not recorded yet is skipped, saying how to record it."""
    guard = load_benchmark("quality_guard", monkeypatch)
    entry = guard.recorded(scale)
    if entry["named"] is None:
        pytest.skip(
            f"no {scale} figure recorded: ship the {scale} LM, then run "
            f"`python benchmarks/quality_guard.py --scale {scale} --record`, and commit "
            "benchmarks/data/quality-guard.json"
        )
    result = guard.measure(scale, tmp_path)
    assert result["features"] == len(entry["categories"])
    problem = guard.shortfall(result, entry)
    assert problem is None, problem


@pytest.mark.slow
def test_the_quality_guard_fails_on_a_broken_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard can fail: with a causal-LM default of one search step and no pick beyond its own restarts, the small
    sample is named less often than recorded, and the guard says which categories it missed (about 30 s)."""
    from dataclasses import replace

    from labeler.discriminators.causal_lm import CausalLMConfig

    guard = load_benchmark("quality_guard", monkeypatch)
    broken = {"max_steps": 1, "rescore_prior": 0, "rescore_neighbours": 0, "prior_candidates": 0}
    monkeypatch.setattr(CausalLMConfig, "default_optimiser", replace(CausalLMConfig.default_optimiser, **broken))
    result = guard.measure("small", tmp_path)
    problem = guard.shortfall(result, guard.recorded("small"))
    assert problem is not None and "fewer than the" in problem and result["not_named"][0] in problem
    assert guard.shortfall({**result, "lm_sha256": "0" * 64}, guard.recorded("small")) is not None  # another LM
