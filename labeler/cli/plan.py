"""`labeler plan`: hours and GPUs for labelling an SAE, from a measured per-GPU rate (labeler/run/capacity.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from labeler.run.capacity import (
    MeasuredRate,
    NoMeasuredRate,
    default_results,
    make_plan,
    pick_rate,
    read_rates,
    shape_of,
)


def add_parser(commands: Any) -> None:
    plan = commands.add_parser(
        "plan",
        help="hours and GPUs to label an SAE of N features, from a measured per-GPU rate",
        description="Hours and GPU count for labelling an SAE of N features: N / (rate x GPUs). The rate is "
        "--per-gpu-rate, or the latest benchmarks/gpu_engine.py measurement of the discriminator's shape in the "
        "committed results (benchmarks/results/gpu_engine-*.jsonl). It assumes every restart runs all its steps "
        "and that GPUs label their own chunks (time falls as 1 / GPUs); model loading and the harvest are not in it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    plan.add_argument(
        "--discriminator-config",
        required=True,
        help="the discriminator's model: a shape name of the results (gemma-2-2b, llama-3-8b, tiny), or a Hugging "
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
    plan.add_argument("--results", type=Path, default=None, help="a gpu_engine results file (default: committed)")
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
    measured: MeasuredRate | None = None
    if args.tensor_parallel > 1 and args.per_gpu_rate is None:
        raise NoMeasuredRate(
            f"no rate of a gang of {args.tensor_parallel} GPUs is measured (benchmarks/gpu_engine.py measures one "
            "GPU); pass --per-gpu-rate with the features/s of one gang"
        )
    if args.per_gpu_rate is None:
        files = [args.results] if args.results is not None else default_results()
        if not files:
            raise NoMeasuredRate(
                "no benchmarks/results/gpu_engine-*.jsonl in this checkout: pass --per-gpu-rate or --results"
            )
        rates = [rate for path in files for rate in read_rates(path)]
        measured = pick_rate(rates, _shape(args.discriminator_config, rates), args.accelerator)
        rate = measured.features_per_s
    else:
        rate = args.per_gpu_rate
    plan = make_plan(args.features, args.gpus, rate, args.deadline_hours, args.tensor_parallel)
    source = (
        "given with --per-gpu-rate"
        if measured is None
        else f"measured: {measured.shape} on {measured.accelerator} ({measured.processor}), {measured.date}, "
        f"{measured.restarts} restarts x {measured.steps} steps, {measured.features} features per batch; "
        f"{measured.source}"
    )
    if args.json:
        print(json.dumps({**vars(plan), "rate_source": source}))
        return 0
    unit = "GPU" if measured is None or measured.accelerator == "cuda" else "CPU device"
    per = unit if plan.tensor_parallel == 1 else f"gang of {plan.tensor_parallel} {unit}s"
    print(f"{plan.features} features on {plan.devices} {unit}(s) at {plan.per_device_rate:.4g} features/s per {per}")
    print(f"  rate: {source}")
    print(f"  wall-clock: {plan.hours:.3g} hours ({plan.device_hours:.3g} {unit}-hours)")
    print(f"  to finish within {plan.deadline_hours:g} hours: {plan.devices_for_deadline} {unit}(s)")
    print("  assumes: full steps for every restart, independent devices, no model loading or harvest time")
    return 0


def _shape(spec: str, rates: list[MeasuredRate]) -> str:
    """A shape name as given, or the measured shape a Hugging Face config's dimensions match."""
    path = Path(spec)
    if spec in {rate.shape for rate in rates} or not path.exists():
        if path.suffix == ".json" or "/" in spec:
            raise NoMeasuredRate(f"the discriminator config {spec} does not exist")
        return spec  # a shape name; pick_rate says so when none of that name is measured
    config_file = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise NoMeasuredRate(f"cannot read a Hugging Face config from {config_file}: {err}") from err
    shape = shape_of(config, rates)
    if shape is None:
        raise NoMeasuredRate(
            f"the model of {config_file} matches no measured shape ({', '.join(sorted({r.shape for r in rates}))}); "
            "measure it with benchmarks/gpu_engine.py or pass --per-gpu-rate"
        )
    return shape
