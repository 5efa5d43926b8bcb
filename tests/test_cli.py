"""`labeler label` end to end: the convergence test on the synthetic world, and errors that name the problem."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import duckdb
import pytest

from labeler import __version__
from labeler.cli import build_parser, main
from labeler.cli.labelling import config_from_args
from labeler.optimise.config import OptimiserConfig
from labeler.store.dataset import read_runs
from labeler.toys.synthetic import default_world, feature_exemplars

HF_DEFAULTS = OptimiserConfig(
    search="discrete", prior_candidates=8, rescore_prior=64, rescore_neighbours=64, rescore_top_k=0
)
"""What a causal-LM discriminator's run gets where it sets no optimiser field (CausalLMConfig.default_optimiser)."""


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def exemplars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(
        tmp_path_factory.mktemp("ex") / "exemplars.jsonl", feature_exemplars(default_world(), 80, seed=7)
    )


@pytest.mark.slow
def test_label_recovers_the_concepts(trained_lm: Path, exemplars: Path, tmp_path: Path) -> None:
    """The honest convergence test: each feature fires on one concept's members; the label should name it. About a
    minute here with its fixture (a tiny LM trained on the concepts): the one end-to-end check that the command line
    finds concepts."""
    out = tmp_path / "run"
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "labeler.cli",
            "label",
            "--exemplars",
            str(exemplars),
            "--discriminator",
            f"hf:{trained_lm}",
            "--out",
            str(out),
            "--seed",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert status.returncode == 0, status.stderr
    concepts = list(default_world().categories)
    rows = duckdb.sql(
        f"SELECT feature, label, status, heldout_auroc FROM read_parquet('{out}/labels/*.parquet') ORDER BY feature"
    ).fetchall()
    assert [row[0] for row in rows] == list(range(len(concepts)))
    assert all(row[2] == "labelled" for row in rows)
    recovered = [row[1] for row in rows if row[1] == concepts[row[0]]]
    assert len(recovered) >= 4, rows
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["features"] == len(concepts) and manifest["discriminator"] == f"hf:{trained_lm}"
    assert read_runs([str(out)]).labels.num_rows == len(concepts)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_missing_column_is_an_error_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "e.jsonl", [{"feature": 0, "context": "a dog", "activation": 1.0}])
    code, err = run_cli(
        ["label", "--exemplars", str(path), "--discriminator", "hf:/nowhere", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "missing column(s) ['target']" in err


@pytest.mark.slow
def test_unlabelable_feature_is_named_or_skipped(
    trained_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = feature_exemplars(default_world(), 30, seed=1)
    rows = [row for row in rows if not (row["feature"] == 2 and row["activation"] == 0.0)]  # feature 2: all active
    path = write_jsonl(tmp_path / "e.jsonl", rows)
    args = ["label", "--exemplars", str(path), "--discriminator", f"hf:{trained_lm}", "--steps", "2"]
    code, err = run_cli([*args, "--out", str(tmp_path / "a"), "--unlabelable", "error"], capsys)
    assert code == 2 and "feature 2: needs at least 2 active and 2 inactive" in err and "and 0 inactive" in err
    assert "--unlabelable skip" in err and not (tmp_path / "a").exists()
    code, err = run_cli([*args, "--out", str(tmp_path / "b")], capsys)  # the default: skipped, and counted
    assert code == 0, err
    assert "1 feature(s) skipped" in err
    statuses = dict(duckdb.sql(f"SELECT feature, status FROM read_parquet('{tmp_path}/b/labels/*.parquet')").fetchall())
    assert statuses == {0: "labelled", 1: "labelled", 2: "skipped", 3: "labelled", 4: "labelled"}


def test_model_folder_that_does_not_load(exemplars: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model").mkdir()
    code, err = run_cli(
        [
            "label",
            "--exemplars",
            str(exemplars),
            "--discriminator",
            f"hf:{tmp_path / 'model'}",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "cannot load a causal LM" in err


@pytest.mark.parametrize("field", ["prior_candidates", "rescore_prior", "rescore_neighbours"])
def test_negative_candidate_counts_are_refused_before_any_work(
    exemplars: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str
) -> None:
    out = tmp_path / "o"
    argv = ["label", "--exemplars", str(exemplars), "--discriminator", "hf:/m", "--search", "discrete"]
    flag = "--" + field.replace("_", "-")
    code, err = run_cli([*argv, flag, "-1", "--out", str(out)], capsys)
    assert code == 2 and f"{field} must be at least 0, got -1" in err
    assert not out.exists()


def test_unknown_discriminator_and_bad_template(
    exemplars: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(
        ["label", "--exemplars", str(exemplars), "--discriminator", "gpt4", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "unknown discriminator 'gpt4'" in err
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"user": 'Is "{word}" in "{text}" a thing?'}))
    code, err = run_cli(
        [
            "label",
            "--exemplars",
            str(exemplars),
            "--discriminator",
            "hf:/x",
            "--out",
            str(tmp_path / "o"),
            "--template",
            str(template),
        ],
        capsys,
    )
    assert code == 2 and "label slot {label}" in err


@pytest.mark.slow
def test_help_lists_the_options() -> None:
    out = subprocess.run([sys.executable, "-m", "labeler.cli", "label", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for option in ("--exemplars", "--discriminator", "--out", "--restarts", "--steps", "--label-tokens", "--seed"):
        assert option in out.stdout
    said = " ".join(out.stdout.split())  # the kinds' own defaults, as the optimiser group says them
    hf = said.partition("hf: ")[2].partition("; embedding: ")[0]
    assert {"search='discrete'", "prior_candidates=8", "rescore_prior=64", "rescore_neighbours=64"} <= set(
        hf.replace(",", " ").split()
    )
    assert "minilm: c_entropy=0.0, straight_through=True" in said


def test_optimiser_defaults_follow_the_discriminator_kind(exemplars: Path, tmp_path: Path) -> None:
    base = ["label", "--exemplars", str(exemplars), "--out", str(tmp_path / "o")]

    def optimiser(*args: str) -> OptimiserConfig:
        return config_from_args(build_parser().parse_args([*base, *args])).label.optimiser

    assert (
        optimiser("--discriminator", "minilm").straight_through
        and optimiser("--discriminator", "minilm").c_entropy == 0
    )
    assert optimiser("--discriminator", "hf:/m") == HF_DEFAULTS
    paper = ["--search", "gradient", "--rescore-prior", "0", "--rescore-neighbours", "0", "--prior-candidates", "0"]
    assert optimiser("--discriminator", "hf:/m", *paper) == OptimiserConfig()  # the paper's soft label and pick
    chosen = optimiser("--discriminator", "minilm", "--no-straight-through", "--c-entropy", "0.2")
    assert not chosen.straight_through and chosen.c_entropy == 0.2
    assert optimiser("--discriminator", "hf:/m", "--straight-through").straight_through


@pytest.mark.slow
def test_harvest_import_and_a_runs_harvest_share_one_sampling_config() -> None:
    """One set of sampling defaults (HarvestConfig's), the same fields on `labeler harvest`, `labeler import
    delphi-cache` and a run config's harvest.sampling; harvest's short flags are aliases, listed in its help."""
    from labeler.cli.harvest import config_from_args as harvest_config
    from labeler.cli.importing import delphi_config
    from labeler.harvest.config import HarvestConfig, SamplingConfig
    from labeler.run.loading import build, load_config

    parser = build_parser()
    harvest = ["harvest", "--sae", "s", "--model", "m", "--corpus", "c", "--out", "o"]
    delphi = ["import", "delphi-cache", "cache", "--model", "m", "--out", "o"]
    defaults = SamplingConfig()
    assert (defaults.top_examples, defaults.quantile_examples, defaults.inactive_examples) == (20, 80, 100)
    assert harvest_config(parser.parse_args(harvest)).sampling == defaults
    assert delphi_config(parser.parse_args(delphi)).sampling == defaults

    chosen = SamplingConfig(top_examples=3, quantile_examples=4, inactive_examples=5, quantiles=2, seed=7)
    generated = ["--top-examples", "3", "--quantile-examples", "4", "--inactive-examples", "5", "--quantiles", "2"]
    short = ["--top", "3", "--per-feature", "4", "--inactive", "5", "--quantiles", "2"]
    assert harvest_config(parser.parse_args([*harvest, *generated, "--seed", "7"])).sampling == chosen
    assert harvest_config(parser.parse_args([*harvest, *short, "--seed", "7"])).sampling == chosen
    assert delphi_config(parser.parse_args([*delphi, *generated, "--seed", "7"])).sampling == chosen
    run = load_config(None, {"harvest": {"sae": "s", "model": "m", "corpus": "c", "sampling": asdict(chosen)}})
    assert build(HarvestConfig, {**run.harvest, "out": "o"}, "harvest").sampling == chosen  # as harvest_stage builds

    shown = subprocess.run([sys.executable, "-m", "labeler.cli", "harvest", "--help"], capture_output=True, text=True)
    said = " ".join(shown.stdout.split())
    assert "--top-examples TOP_EXAMPLES, --top TOP_EXAMPLES" in said
    assert "--quantile-examples QUANTILE_EXAMPLES, --per-feature QUANTILE_EXAMPLES" in said
    assert "--inactive-examples INACTIVE_EXAMPLES, --inactive INACTIVE_EXAMPLES" in said


def test_vocab_words_option(exemplars: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["label", "--exemplars", str(exemplars), "--discriminator", "minilm", "--out", str(tmp_path / "o")]
    code, err = run_cli([*args, "--vocab-words", str(tmp_path / "no-such-list.txt")], capsys)
    assert code == 2 and "cannot read the word list" in err
    config = config_from_args(build_parser().parse_args([*args, "--vocab-words", "category-nouns"]))
    assert config.discriminator.vocab.words is not None and "animal" in config.discriminator.vocab.words


@pytest.mark.slow
def test_label_records_provenance_frequency_and_baseline(
    trained_lm: Path, exemplars: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`labeler label` writes schema version 2 with the run's provenance on every row; `labeler query` reads it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frequency = tmp_path / "features.parquet"
    pq.write_table(pa.table({"feature": [0, 1, 2], "frequency": [0.01, 0.002, 0.3]}), frequency)
    out = tmp_path / "run"
    args = ["label", "--exemplars", str(exemplars), "--discriminator", f"hf:{trained_lm}", "--out", str(out)]
    args += ["--steps", "2", "--restarts", "2", "--baseline", "exhaustive", "--features", str(frequency)]
    args += ["--run-id", "r1", "--sae-id", "toy-sae", "--model", "toy-lm", "--hook-point", "blocks.1.hook_resid_post"]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    sql = (
        "SELECT feature, run_id, sae_id, model, hook_point, discriminator, activation_frequency, baseline_method, "
        "baseline_label IS NOT NULL AS has_baseline, heldout_f1 BETWEEN 0 AND 1 AS f1_ok, seed, length(config_hash), "
        "prompt_template LIKE '%{label}%' AS template_ok, code_version FROM labels ORDER BY feature"
    )
    assert main(["query", "--data", str(out), sql, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["feature"] for r in rows] == list(range(len(default_world().categories)))
    assert [r["activation_frequency"] for r in rows][:4] == [0.01, 0.002, 0.3, None]
    for row in rows:
        assert (row["run_id"], row["sae_id"], row["model"], row["hook_point"]) == (
            "r1",
            "toy-sae",
            "toy-lm",
            "blocks.1.hook_resid_post",
        )
        assert row["discriminator"] == f"hf:{trained_lm}" and row["seed"] == 0 and row["length(config_hash)"] == 16
        assert row["baseline_method"] == "exhaustive" and row["has_baseline"] and row["f1_ok"] and row["template_ok"]
        assert row["code_version"].startswith(__version__)
    assert json.loads((out / "manifest.json").read_text())["run_id"] == "r1"


def test_an_output_that_cannot_be_written_is_named_without_a_traceback(
    exemplars: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    # --out under a file: refused before the model (here a folder that does not exist) is even looked at.
    args = ["label", "--exemplars", str(exemplars), "--discriminator", f"hf:{tmp_path / 'nope'}"]
    code, err = run_cli([*args, "--out", str(blocker / "sub")], capsys)
    assert code == 2 and f"cannot create the run folder {blocker / 'sub'}: {blocker} is a file" in err
    from label_runs import write_run

    write_run(str(tmp_path / "run"), "r")
    export = ["export", "--data", str(tmp_path / "run"), "--format", "jsonl", "--out", str(blocker / "x.jsonl")]
    code, err = run_cli(export, capsys)
    assert code == 1 and err.startswith("labeler: error:") and str(blocker) in err


def test_a_bare_value_error_is_a_bug_and_an_input_error_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() prints an InputError (a domain error) and exits 2, but lets a plain ValueError (a bug) propagate."""
    from labeler.cli import demo
    from labeler.errors import ConfigError

    def raises(error: Exception) -> None:
        def run(args: object) -> int:
            raise error

        monkeypatch.setattr(demo, "run_demo", run)

    raises(ConfigError("workers.count must be at least 1, got 0"))
    code, err = run_cli(["demo"], capsys)
    assert code == 2 and err == "labeler: error: workers.count must be at least 1, got 0\n"
    raises(ValueError("operands could not be broadcast together"))
    with pytest.raises(ValueError, match="could not be broadcast"):
        main(["demo"])
