"""labeler plan and labeler/run/capacity.py: hours and GPUs from a rate, against hand arithmetic."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

import labeler
from labeler.cli import main
from labeler.cli import plan as plan_command
from labeler.discriminators.config import default_optimiser
from labeler.optimise.config import OptimiserConfig
from labeler.run.capacity import (
    NoMeasuredRate,
    differences,
    make_plan,
    packaged_rates,
    pick_rate,
    read_rates,
    shape_of,
)

GEMMA = {"model_type": "gemma2", "hidden_size": 2304, "num_hidden_layers": 26, "intermediate_size": 9216,
         "vocab_size": 256000}  # fmt: skip
DEFAULT = asdict(default_optimiser("hf"))
PAPER = asdict(OptimiserConfig())
ROOT = Path(__file__).resolve().parents[1]


def method_line(
    shape: str, device: str, rate: float, date: str, method: str = "default", batched: bool = True, **model: object
) -> str:
    """A gpu_engine.py method line: `rate` is the features/s at the optimiser's max_steps."""
    return json.dumps(
        {"measurement": "method", "method": method, "batched": batched,
         "optimiser": DEFAULT if method == "default" else PAPER, "shape": shape, "features_per_s": 10 * rate,
         "features_per_s_full": rate, "device": device, "steps": 3, "features": 16, "date": date,
         "processor": "NVIDIA H200" if device.startswith("cuda") else "x86_64", **GEMMA, **model}
    )  # fmt: skip


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "gpu_engine-test.jsonl"
    path.write_text(
        "\n".join(
            [
                "# a comment line",
                json.dumps({"measurement": "matmul_peak", "flops_per_s": 7.9e14}),
                method_line("gemma-2-2b", "cuda:0", 0.4, "2026-12-01"),
                method_line("gemma-2-2b", "cuda", 0.5, "2026-12-02"),
                method_line("gemma-2-2b", "cpu", 0.001, "2026-12-03"),
                method_line("gemma-2-2b", "cuda", 9.0, "2026-12-04", method="paper"),  # newer, another optimiser
                method_line("gemma-2-2b", "cuda", 0.1, "2026-12-04", method="paper_loop", batched=False),
                json.dumps({"measurement": "comparison", "default_over_paper": 0.05}),
            ]
        )
    )
    return path


def test_a_plan_is_the_hand_arithmetic() -> None:
    # 65,536 features at 0.5 features/s: 131,072 GPU-seconds = 36.41 GPU-hours; on 8 GPUs 4.55 hours;
    # within 10 hours: 36.41 / 10 = 3.64, so 4 GPUs.
    plan = make_plan(65536, 8, 0.5, deadline_hours=10)
    assert plan.device_hours == pytest.approx(131072 / 3600)
    assert plan.hours == pytest.approx(131072 / 3600 / 8)
    assert plan.devices_for_deadline == 4
    # Exactly one deadline's work needs exactly one GPU, not two.
    assert make_plan(36000, 1, 1.0, deadline_hours=10).devices_for_deadline == 1


@pytest.mark.parametrize(
    ("features", "gpus", "rate", "hours", "words"),
    [(0, 1, 1.0, 10.0, "at least 1 feature"), (10, 0, 1.0, 10.0, "at least 1 GPU"),
     (10, 1, 0.0, 10.0, "positive number"), (10, 1, float("nan"), 10.0, "positive number"),
     (10, 1, 1.0, 0.0, "deadline")],
)  # fmt: skip
def test_a_plan_refuses_what_cannot_be_planned(features: int, gpus: int, rate: float, hours: float, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        make_plan(features, gpus, rate, hours)


def test_the_latest_rate_of_the_shape_on_the_accelerator_for_the_optimiser_is_picked(results: Path) -> None:
    rates = read_rates(results)
    assert [r.features_per_s for r in rates] == [0.4, 0.5, 0.001, 9.0]  # batched lines, at max_steps
    assert pick_rate(rates, "gemma-2-2b", "cuda", DEFAULT, "the hf default").features_per_s == 0.5
    assert pick_rate(rates, "gemma-2-2b", "cuda", PAPER, "the paper's").features_per_s == 9.0
    assert pick_rate(rates, "gemma-2-2b", "cpu", DEFAULT, "the hf default").processor == "x86_64"
    with pytest.raises(NoMeasuredRate, match=r"no measured cuda rate of the llama-3-8b shape.*gemma-2-2b on cpu"):
        pick_rate(rates, "llama-3-8b", "cuda", DEFAULT, "the hf default")


def test_a_rate_of_another_optimiser_than_the_default_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paper_only = tmp_path / "paper.jsonl"
    paper_only.write_text(method_line("gemma-2-2b", "cuda", 9.0, "2026-12-04", method="paper") + "\n")
    rates = read_rates(paper_only)
    with pytest.raises(NoMeasuredRate, match="measured for another optimiser than the hf default") as refused:
        pick_rate(rates, "gemma-2-2b", "cuda", DEFAULT, "the hf default")
    assert "search='discrete' (measured 'gradient')" in str(refused.value)
    assert "prior_candidates=8 (measured 0)" in str(refused.value)
    # A default changed since the measurement is another optimiser too, by one field.
    with pytest.raises(NoMeasuredRate, match=r"differs in max_steps=50 \(measured 100\)"):
        pick_rate(read_rates(paper_only), "gemma-2-2b", "cuda", {**PAPER, "max_steps": 50}, "the paper's")
    argv = ["plan", "--discriminator-config", "gemma-2-2b", "--features", "10", "--results", str(paper_only)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "another optimiser than the hf default" in captured.err and captured.out == ""


def test_a_line_of_the_older_gpu_engine_or_a_broken_line_is_refused(tmp_path: Path) -> None:
    older = tmp_path / "older.jsonl"
    older.write_text(json.dumps({"measurement": "batched_engine", "shape": "gemma-2-2b", "features_per_s": 1.0}))
    with pytest.raises(NoMeasuredRate, match=r"older.jsonl:1 is a line of an older gpu_engine.py.*no optimiser"):
        read_rates(older)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"measurement": "method", "batched": True, "optimiser": DEFAULT}))
    with pytest.raises(NoMeasuredRate, match=r"broken.jsonl:1 is not a gpu_engine.py method line: KeyError"):
        read_rates(broken)
    (tmp_path / "cut.jsonl").write_text('{"measurement": "method", "batch')
    with pytest.raises(NoMeasuredRate, match=r"cut.jsonl:1 is not a JSON line"):
        read_rates(tmp_path / "cut.jsonl")


def test_a_hugging_face_config_finds_its_shape_by_dimensions(results: Path) -> None:
    rates = read_rates(results)
    assert shape_of({**GEMMA, "torch_dtype": "bfloat16"}, rates) == "gemma-2-2b"
    assert shape_of({"text_config": GEMMA}, rates) == "gemma-2-2b"
    assert shape_of({**GEMMA, "num_hidden_layers": 42}, rates) is None  # gemma-2-9b is not gemma-2-2b


def test_plan_prints_hours_and_the_optimiser_from_the_results_file(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["plan", "--discriminator-config", "gemma-2-2b", "--features", "16384", "--gpus", "2"]
    assert main([*args, "--results", str(results), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # 16,384 / 0.5 = 32,768 GPU-seconds: 9.10 GPU-hours, 4.55 hours on 2 GPUs, 1 GPU within 10 hours.
    assert plan["per_device_rate"] == 0.5 and plan["hours"] == pytest.approx(32768 / 3600 / 2)
    assert plan["devices_for_deadline"] == 1 and "2026-12-02" in plan["rate_source"]
    assert plan["optimiser"] == "the hf default"
    assert plan["optimiser_over_paper"] == {"search": "discrete", "prior_candidates": 8, "rescore_prior": 64,
                                            "rescore_neighbours": 64}  # fmt: skip
    assert main([*args, "--results", str(results)]) == 0
    text = capsys.readouterr().out
    assert "optimiser: the hf default (settings over the paper's soft label: " in text
    assert "search=discrete" in text and "rescore_neighbours=64" in text
    assert "4 restarts x 100 steps (from 3 timed), 16 features per batch" in text
    assert main([*args, "--per-gpu-rate", "2", "--deadline-hours", "1"]) == 0
    text = capsys.readouterr().out
    assert "wall-clock: 1.14 hours (2.28 GPU-hours)" in text and "within 1 hours: 3 GPU(s)" in text
    assert "optimiser: the hf default" in text and "rate: given with --per-gpu-rate" in text


def test_plan_matches_a_model_folder_to_its_measured_shape(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "gemma"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**GEMMA, "architectures": ["Gemma2ForCausalLM"]}))
    argv = ["plan", "--discriminator-config", str(model), "--features", "100", "--results", str(results), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["per_device_rate"] == 0.5
    other = tmp_path / "gemma-9b.json"
    other.write_text(json.dumps({**GEMMA, "num_hidden_layers": 42}))
    assert main(["plan", "--discriminator-config", str(other), "--features", "100", "--results", str(results)]) == 2
    assert "matches no measured shape (gemma-2-2b)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "/etc/passwd is not a Hugging Face model config (not JSON"),
     ("[1, 2]", "is not a Hugging Face model config (a JSON object with a model_type)"),
     ('{"hidden_size": 64}', "is not a Hugging Face model config (a JSON object with a model_type)"),
     ("folder", "cannot read"), ("missing", "cannot read")],
)  # fmt: skip
@pytest.mark.parametrize("rate", [[], ["--per-gpu-rate", "1"]])
def test_plan_refuses_a_discriminator_config_that_is_not_a_model_config(
    content: str | None, words: str, rate: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even where the rate is given, a path that is not a model's config is refused (exit 2, no plan)."""
    path = Path("/etc/passwd")
    if content == "folder":
        path = tmp_path / "empty-folder"
        path.mkdir()
    elif content == "missing":
        path = tmp_path / "no" / "config.json"
    elif content is not None:
        path = tmp_path / "config.json"
        path.write_text(content)
    assert main(["plan", "--discriminator-config", str(path), "--features", "10", *rate]) == 2
    captured = capsys.readouterr()
    assert f"--discriminator-config {path}" in captured.err and words in captured.err
    assert captured.out == ""


def test_plan_reads_the_packages_rates(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The rates come from the package (labeler/data), not from benchmarks/results; they hold CPU figures only
    until a GPU is lent: a GPU plan is refused, a CPU one given, labelled as CPU; without the file, it says so."""
    packaged = packaged_rates()
    assert packaged.parent == Path(labeler.__file__).parent / "data"
    rates = read_rates(packaged)
    tiny = [r for r in rates if r.shape == "tiny" and r.method == "default"]
    assert tiny and all(not differences(r.optimiser, DEFAULT) for r in tiny)
    if any(r.accelerator == "cuda" for r in rates):
        pytest.skip("a GPU rate is in the package now")
    assert main(["plan", "--discriminator-config", "tiny", "--features", "10"]) == 2
    assert "no measured cuda rate of the tiny shape" in capsys.readouterr().err
    assert main(["plan", "--discriminator-config", "tiny", "--features", "10", "--accelerator", "cpu", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["per_device_rate"] == max(tiny, key=lambda r: r.date).features_per_s
    assert "tiny on cpu" in plan["rate_source"] and str(packaged) in plan["rate_source"]
    monkeypatch.setattr(plan_command, "packaged_rates", lambda: Path("/nonexistent/gpu_engine_rates.jsonl"))
    assert main(["plan", "--discriminator-config", "tiny", "--features", "10"]) == 2
    assert "cannot read the rates file /nonexistent/gpu_engine_rates.jsonl" in capsys.readouterr().err


def test_the_packages_rates_are_lines_of_the_committed_results() -> None:
    """Each rate the package carries is, byte for byte, a line of a results file under benchmarks/results (where
    its command, machine and date are written), so no figure is typed in by hand."""
    results = ROOT / "benchmarks" / "results"
    if not results.is_dir():
        pytest.skip("not a source checkout")
    committed = {line for path in results.glob("gpu_engine-*.jsonl") for line in path.read_text().splitlines()}
    packaged = [line for line in packaged_rates().read_text().splitlines() if line.startswith("{")]
    assert packaged and all(line in committed for line in packaged)


def test_tensor_parallel_gangs_count_their_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    """Gangs of T GPUs: the rate is per gang, time falls with the number of gangs, GPUs come in multiples of T."""
    from labeler.run.capacity import make_plan

    plan = make_plan(65_536, 8, 0.5, deadline_hours=10.0, tensor_parallel=2)
    assert plan.hours == pytest.approx(65_536 / 0.5 / 4 / 3600)  # 4 gangs
    assert plan.device_hours == pytest.approx(65_536 / 0.5 * 2 / 3600)
    assert plan.devices_for_deadline == 2 * 4  # ceil(36.4 gang-hours / 10 h) = 4 gangs of 2
    with pytest.raises(ValueError, match="whole number of gangs"):
        make_plan(100, 3, 0.5, tensor_parallel=2)
    assert main(["plan", "--discriminator-config", "llama-3-70b", "--features", "10", "--gpus", "4",
                 "--tensor-parallel", "4"]) == 2  # fmt: skip
    assert "no rate of a gang of 4 GPUs is measured" in capsys.readouterr().err
