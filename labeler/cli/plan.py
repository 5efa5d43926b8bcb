"""`labeler plan`: hours and GPUs for labelling an SAE, from a measured per-GPU rate (labeler/run/capacity.py)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from labeler.cli.errors import UsageError
from labeler.discriminators.config import default_optimiser
from labeler.optimise.config import OptimiserConfig
from labeler.run.capacity import (
    MeasuredRate,
    NoMeasuredRate,
    differences,
    make_plan,
    packaged_rates,
    pick_rate,
    read_rates,
    shape_of,
)

KIND = "hf"
"""The discriminator kind a plan is for: the causal LMs whose shapes benchmarks/gpu_engine.py measures."""


def add_parser(commands: Any) -> None:
    plan = commands.add_parser(
        "plan",
        help="hours and GPUs to label an SAE of N features, from a measured per-GPU rate",
        description="Hours and GPU count for labelling an SAE of N features with a causal-LM (hf:) discriminator "
        "and its default optimiser: N / (rate x GPUs). The rate is --per-gpu-rate, or the latest "
        "benchmarks/gpu_engine.py measurement of the discriminator's shape for that optimiser, from the package's "
        "rates (labeler/data/gpu_engine_rates.jsonl) or --results; a rate of another optimiser is refused. It "
        "assumes every restart runs all its steps and that GPUs label their own chunks (time falls as 1 / GPUs); "
        "model loading and the harvest are not in it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    plan.add_argument(
        "--discriminator-config",
        required=True,
        help="the discriminator's model: a measured shape name (gemma-2-2b, llama-3-8b, tiny), or a Hugging "
        "Face model folder or its config.json (matched to a measured shape by its dimensions)",
    )
    plan.add_argument("--features", type=int, required=True, help="features of the SAE")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs labelling in parallel")
    plan.add_argument(
        "--per-gpu-rate",
        type=float,
        default=None,
        help="features/s per GPU (default: measured); with --tensor-parallel T > 1, features/s per gang of T GPUs",
    )
    plan.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        help="GPUs per worker (workers.tensor_parallel): a gang of T ranks holds one sharded discriminator",
    )
    plan.add_argument(
        "--results", type=Path, default=None, help="a gpu_engine results file (default: the package's rates)"
    )
    plan.add_argument(
        "--accelerator",
        choices=["cuda", "cpu"],
        default="cuda",
        help="which measurements to use: GPU ones, or the CPU figures (a CPU per 'GPU')",
    )
    plan.add_argument("--deadline-hours", type=float, default=10.0, help="'overnight': GPUs needed to finish in this")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    plan.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    if args.tensor_parallel > 1 and args.per_gpu_rate is None:
        raise NoMeasuredRate(
            f"no rate of a gang of {args.tensor_parallel} GPUs is measured (benchmarks/gpu_engine.py measures one "
            "GPU); pass --per-gpu-rate with the features/s of one gang"
        )
    model_config = _model_config(args.discriminator_config)  # refused when bad, even where the rate is given
    given = args.per_gpu_rate is not None
    rates = [] if given else read_rates(args.results if args.results is not None else packaged_rates())
    shape = args.discriminator_config if model_config is None else shape_of(model_config, rates)
    optimiser = asdict(default_optimiser(KIND))
    name = f"the {KIND} default"
    settings = differences(optimiser, asdict(OptimiserConfig()))
    described = ", ".join(f"{key}={value}" for key, value in settings.items()) or "none"
    measured: MeasuredRate | None = None
    if given:
        rate = args.per_gpu_rate
    elif shape is None:
        raise NoMeasuredRate(
            f"the model of {args.discriminator_config} matches no measured shape "
            f"({', '.join(sorted({r.shape for r in rates})) or 'none'}); measure it with benchmarks/gpu_engine.py "
            "or pass --per-gpu-rate"
        )
    else:
        measured = pick_rate(rates, shape, args.accelerator, optimiser, name)
        rate = measured.features_per_s
    plan = make_plan(args.features, args.gpus, rate, args.deadline_hours, args.tensor_parallel)
    source = (
        "given with --per-gpu-rate"
        if measured is None
        else f"measured: {measured.shape} on {measured.accelerator} ({measured.processor}), {measured.date}, "
        f"{measured.optimiser['restarts']} restarts x {measured.optimiser['max_steps']} steps "
        f"(from {measured.steps_timed} timed), {measured.features} features per batch; {measured.source}"
    )
    if args.json:
        print(json.dumps({**vars(plan), "optimiser": name, "optimiser_over_paper": settings, "rate_source": source}))
        return 0
    unit = "GPU" if measured is None or measured.accelerator == "cuda" else "CPU device"
    per = unit if plan.tensor_parallel == 1 else f"gang of {plan.tensor_parallel} {unit}s"
    print(f"{plan.features} features on {plan.devices} {unit}(s) at {plan.per_device_rate:.4g} features/s per {per}")
    print(f"  optimiser: {name} (settings over the paper's soft label: {described})")
    print(f"  rate: {source}")
    print(f"  wall-clock: {plan.hours:.3g} hours ({plan.device_hours:.3g} {unit}-hours)")
    print(f"  to finish within {plan.deadline_hours:g} hours: {plan.devices_for_deadline} {unit}(s)")
    print("  assumes: full steps for every restart, independent devices, no model loading or harvest time")
    return 0


def _model_config(spec: str) -> dict[str, Any] | None:
    """The Hugging Face config a spec names (a model folder or its config.json), or None for a shape name (a spec
    that is no existing path, has no "/" and does not end in .json). A path that is not a readable Hugging Face
    config is refused."""
    path = Path(spec)
    if not path.exists() and path.suffix != ".json" and "/" not in spec:
        return None  # a shape name; pick_rate says so when none of that name is measured
    config_file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(
            f"--discriminator-config {spec}: cannot read {config_file} ({err}); give a Hugging Face model folder, "
            "its config.json, or a measured shape name"
        ) from err
    except ValueError as err:
        raise UsageError(
            f"--discriminator-config {spec}: {config_file} is not a Hugging Face model config (not JSON: {err}); "
            "give a model folder, its config.json, or a measured shape name"
        ) from err
    text = config.get("text_config") if isinstance(config, dict) else None
    model_type = (text if isinstance(text, dict) else config).get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str):
        raise UsageError(
            f"--discriminator-config {spec}: {config_file} is not a Hugging Face model config (a JSON object with "
            "a model_type); give a model folder, its config.json, or a measured shape name"
        )
    return config
