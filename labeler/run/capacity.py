"""How long labelling a whole SAE takes, and on how many devices, from a measured per-device rate.

Pure arithmetic over a rate in features per second per device. The rate comes from the user or from a file of
benchmarks/gpu_engine.py lines (JSON lines; its batched `method` lines): the package's own (labeler/data/
gpu_engine_rates.jsonl, the committed measurements) or one the user names. A rate is matched to the
discriminator's model by shape and to the optimiser it was measured for: only a rate of the optimiser that runs
(the caller says which) is used. The plan assumes what the benchmark measured: every restart runs all its steps
(no early stopping), and devices that each label their own chunks, so time falls as 1 / devices. It leaves out
model loading, the harvest and the writing of results. This module reads that one file and knows nothing about
models, optimisers' meanings, Ray or the CLI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from labeler.errors import InputError

RATES_RESOURCE = "data/gpu_engine_rates.jsonl"
"""The package's measured rates (labeler/data/): gpu_engine.py's batched method lines of the committed results."""
SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
"""What identifies a model's shape: a Hugging Face config with these values runs at the shape's rate."""


class NoMeasuredRate(InputError):
    """No measured rate fits the request; the message says what to pass instead."""


@dataclass(frozen=True)
class MeasuredRate:
    """One measured per-device labelling rate (a batched `method` line of benchmarks/gpu_engine.py)."""

    shape: str
    """The benchmark's shape name, e.g. gemma-2-2b."""
    features_per_s: float
    """Features labelled per second on one device, every restart running the optimiser's max_steps."""
    accelerator: str
    """"cuda" or "cpu": the kind of device it was measured on."""
    processor: str
    """The device's name (GPU model, or the CPU's)."""
    date: str
    method: str
    """The benchmark's name for what ran (default: the causal-LM kind's default optimiser; paper: the paper's)."""
    optimiser: Mapping[str, Any]
    """Every field of the optimiser the rate is of, as JSON reads it back (OptimiserConfig's fields)."""
    steps_timed: int
    """Steps every restart ran in the measurement; the rate scales them to the optimiser's max_steps."""
    features: int
    """F, features per batch in the measurement."""
    model: dict[str, object]
    """The shape's SHAPE_KEYS values."""
    source: str
    """The file it was read from."""


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
        raise InputError(f"the SAE must have at least 1 feature, got {features}")
    if devices < 1:
        raise InputError(f"need at least 1 GPU, got {devices}")
    if tensor_parallel < 1 or devices < tensor_parallel or devices % tensor_parallel:
        raise InputError(
            f"need a whole number of gangs: {devices} GPU(s) for gangs of --tensor-parallel {tensor_parallel}"
        )
    if not per_device_rate > 0 or not math.isfinite(per_device_rate):
        raise InputError(f"the per-GPU rate must be a positive number of features per second, got {per_device_rate}")
    if not deadline_hours > 0:
        raise InputError(f"the deadline must be a positive number of hours, got {deadline_hours}")
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


def packaged_rates() -> Path:
    """The package's rates file (labeler/data/gpu_engine_rates.jsonl), wherever the package is installed."""
    return Path(str(resources.files("labeler").joinpath(RATES_RESOURCE)))


def read_rates(path: Path) -> list[MeasuredRate]:
    """Every batched `method` line of a gpu_engine results file (JSON lines; other lines, and lines that do not
    start with "{", such as comments, are skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise NoMeasuredRate(f"cannot read the rates file {path}: {err}") from err
    rates = []
    for number, line in enumerate(lines, 1):
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise NoMeasuredRate(f"{path}:{number} is not a JSON line: {err}") from err
        if row.get("measurement") == "batched_engine":
            raise NoMeasuredRate(
                f"{path}:{number} is a line of an older gpu_engine.py, which records no optimiser; measure again "
                "with benchmarks/gpu_suite.sh"
            )
        if row.get("measurement") != "method" or row.get("batched") is not True:
            continue
        try:
            rates.append(_rate(row, str(path)))
        except (ValueError, KeyError, TypeError) as err:
            raise NoMeasuredRate(f"{path}:{number} is not a gpu_engine.py method line: {err!r}") from err
    return rates


def _rate(row: Mapping[str, Any], source: str) -> MeasuredRate:
    optimiser = row["optimiser"]
    if not isinstance(optimiser, dict):
        raise TypeError(f"its optimiser is {type(optimiser).__name__}, not a mapping")
    return MeasuredRate(
        shape=str(row["shape"]),
        features_per_s=float(row["features_per_s_full"]),
        accelerator=str(row["device"]).split(":")[0],
        processor=str(row["processor"]),
        date=str(row["date"]),
        method=str(row["method"]),
        optimiser=optimiser,
        steps_timed=int(row["steps"]),
        features=int(row["features"]),
        model={key: row[key] for key in SHAPE_KEYS},
        source=source,
    )


def shape_of(model_config: Mapping[str, object], rates: list[MeasuredRate]) -> str | None:
    """The shape whose SHAPE_KEYS all equal a Hugging Face config's (its text config for multimodal models)."""
    text = model_config.get("text_config")
    config = text if isinstance(text, Mapping) else model_config
    for rate in rates:
        if all(config.get(key) == value for key, value in rate.model.items()):
            return rate.shape
    return None


def differences(optimiser: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """The fields whose value in `optimiser` differs from `reference`'s (a field either lacks counts), compared as
    JSON reads them back (a tuple equals its list)."""
    ours, theirs = json.loads(json.dumps(dict(optimiser))), json.loads(json.dumps(dict(reference)))
    return {key: ours.get(key) for key in {**theirs, **ours} if ours.get(key) != theirs.get(key)}


def pick_rate(
    rates: list[MeasuredRate], shape: str, accelerator: str, optimiser: Mapping[str, Any], optimiser_name: str
) -> MeasuredRate:
    """The latest measurement of `shape` on `accelerator` for exactly `optimiser` (named `optimiser_name` in the
    errors); raises saying what exists when there is none, or that those there are of another optimiser."""
    fitting = [r for r in rates if r.shape == shape and r.accelerator == accelerator]
    if not fitting:
        measured = sorted({f"{r.shape} on {r.accelerator}" for r in rates}) or ["nothing"]
        raise NoMeasuredRate(
            f"no measured {accelerator} rate of the {shape} shape (measured: {', '.join(measured)}); "
            f"pass --per-gpu-rate FEATURES_PER_S, or measure one with benchmarks/gpu_suite.sh"
        )
    same = [r for r in fitting if not differences(r.optimiser, optimiser)]
    if same:
        return max(same, key=lambda r: r.date)
    other = max(fitting, key=lambda r: r.date)
    changed = ", ".join(
        f"{key}={value!r} (measured {other.optimiser.get(key)!r})"
        for key, value in sorted(differences(optimiser, other.optimiser).items())
    )
    raise NoMeasuredRate(
        f"the {accelerator} rates of the {shape} shape in {other.source} were measured for another optimiser than "
        f"{optimiser_name}, which differs in {changed}; measure it with benchmarks/gpu_suite.sh, or pass "
        "--per-gpu-rate FEATURES_PER_S"
    )
