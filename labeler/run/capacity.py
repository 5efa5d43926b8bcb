"""How long labelling a whole SAE takes, and on how many devices, from a measured per-device rate.

Pure arithmetic over a rate in features per second per device. The rate comes from the user or from a
results file of benchmarks/gpu_engine.py (JSON lines; its `batched_engine` lines), matched to the
discriminator's model by shape. The plan assumes what the benchmark measured: full steps for every
restart (no early stopping), and devices that each label their own chunks, so time falls as 1 / devices.
It leaves out model loading, the harvest and the writing of results. This module reads that one file and
knows nothing about models, Ray or the CLI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
"""Where a source checkout keeps the committed benchmark results (absent from an installed wheel)."""
RESULTS_GLOB = "gpu_engine-*.jsonl"
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
"""What identifies a model's shape: a Hugging Face config with these values runs at the shape's rate."""


class NoMeasuredRate(ValueError):
    """No measured rate fits the request; the message says what to pass instead."""


@dataclass(frozen=True)
class MeasuredRate:
    """One measured per-device labelling rate (a `batched_engine` line of benchmarks/gpu_engine.py)."""

    shape: str
    """The benchmark's shape name, e.g. gemma-2-2b."""
    features_per_s: float
    """Features labelled per second on one device."""
    accelerator: str
    """"cuda" or "cpu": the kind of device it was measured on."""
    processor: str
    """The device's name (GPU model, or the CPU's)."""
    date: str
    steps: int
    """Steps every restart ran (no early stopping)."""
    restarts: int
    features: int
    """F, features per batch in the measurement."""
    model: dict[str, object]
    """The shape's SHAPE_KEYS values."""
    source: str
    """The results file it was read from."""


@dataclass(frozen=True)
class Plan:
    """Hours and devices for labelling an SAE."""

    features: int
    devices: int
    per_device_rate: float
    """Features per second per device."""
    hours: float
    """Wall-clock hours on `devices`."""
    device_hours: float
    deadline_hours: float
    devices_for_deadline: int
    """The fewest devices that finish within `deadline_hours`."""
    tensor_parallel: int = 1
    """Devices per worker (a gang of T ranks holds one sharded discriminator); the rate is then per gang."""


def make_plan(
    features: int, devices: int, per_device_rate: float, deadline_hours: float = 10.0, tensor_parallel: int = 1
) -> Plan:
    """hours = features / (rate x workers) / 3600 with workers = devices / T; devices for the deadline =
    T x ceil(features / (rate x deadline)). With T = 1 the rate is per device, with T > 1 per gang of T devices."""
    if features < 1:
        raise ValueError(f"the SAE must have at least 1 feature, got {features}")
    if devices < 1:
        raise ValueError(f"need at least 1 GPU, got {devices}")
    if tensor_parallel < 1 or devices < tensor_parallel or devices % tensor_parallel:
        raise ValueError(
            f"need a whole number of gangs: {devices} GPU(s) for gangs of --tensor-parallel {tensor_parallel}"
        )
    if not per_device_rate > 0 or not math.isfinite(per_device_rate):
        raise ValueError(f"the per-GPU rate must be a positive number of features per second, got {per_device_rate}")
    if not deadline_hours > 0:
        raise ValueError(f"the deadline must be a positive number of hours, got {deadline_hours}")
    worker_seconds = features / per_device_rate
    return Plan(
        features=features,
        devices=devices,
        per_device_rate=per_device_rate,
        hours=worker_seconds / (devices // tensor_parallel) / 3600,
        device_hours=worker_seconds * tensor_parallel / 3600,
        deadline_hours=deadline_hours,
        devices_for_deadline=tensor_parallel * math.ceil(worker_seconds / (deadline_hours * 3600) - 1e-9),
        tensor_parallel=tensor_parallel,
    )


def default_results() -> list[Path]:
    """The committed gpu_engine results files of this checkout, oldest first (by name: they carry the date)."""
    return sorted(RESULTS_DIR.glob(RESULTS_GLOB)) if RESULTS_DIR.is_dir() else []


def read_rates(path: Path) -> list[MeasuredRate]:
    """Every `batched_engine` line of a gpu_engine results file (JSON lines; other lines are skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise NoMeasuredRate(f"cannot read the results file {path}: {err}") from err
    rates = []
    for number, line in enumerate(lines, 1):
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
            if row.get("measurement") != "batched_engine":
                continue
            rates.append(
                MeasuredRate(
                    shape=str(row["shape"]),
                    features_per_s=float(row["features_per_s"]),
                    accelerator=str(row["device"]).split(":")[0],
                    processor=str(row["processor"]),
                    date=str(row["date"]),
                    steps=int(row["steps"]),
                    restarts=int(row["restarts"]),
                    features=int(row["features"]),
                    model={key: row[key] for key in SHAPE_KEYS},
                    source=str(path),
                )
            )
        except (ValueError, KeyError, TypeError) as err:
            raise NoMeasuredRate(f"{path}:{number} is not a gpu_engine.py batched_engine line: {err}") from err
    return rates


def shape_of(model_config: Mapping[str, object], rates: list[MeasuredRate]) -> str | None:
    """The shape whose SHAPE_KEYS all equal a Hugging Face config's (its text config for multimodal models)."""
    text = model_config.get("text_config")
    config = text if isinstance(text, Mapping) else model_config
    for rate in rates:
        if all(config.get(key) == value for key, value in rate.model.items()):
            return rate.shape
    return None


def pick_rate(rates: list[MeasuredRate], shape: str, accelerator: str) -> MeasuredRate:
    """The latest measurement of `shape` on `accelerator`; raises saying what exists when there is none."""
    fitting = [r for r in rates if r.shape == shape and r.accelerator == accelerator]
    if fitting:
        return max(fitting, key=lambda r: r.date)
    measured = sorted({f"{r.shape} on {r.accelerator}" for r in rates}) or ["nothing"]
    raise NoMeasuredRate(
        f"no measured {accelerator} rate of the {shape} shape is committed (measured: {', '.join(measured)}); "
        f"pass --per-gpu-rate FEATURES_PER_S, or measure one with benchmarks/gpu_suite.sh"
    )
