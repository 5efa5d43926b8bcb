"""The package's layout: Ray only in its adapter and the CLI, no import cycles, nothing imports upwards, and
every optimiser and data setting has a flag on both labelling commands, as do the run's source, out and
discriminator."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from labeler.cli import build_parser
from labeler.optimise.config import OptimiserConfig
from labeler.optimise.labelling import LabelConfig

PACKAGE = Path(__file__).resolve().parent.parent / "labeler"
RAY_ALLOWED = ("labeler.ray_pool", "labeler.cli")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The labeler modules `name` imports anywhere in its source (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found |= {target for target in targets if target in known and target != name}
    return found


@pytest.mark.slow
def test_only_the_ray_adapter_and_the_cli_import_ray() -> None:
    """Import every other module in a fresh interpreter: `ray` must not be loaded."""
    names = [name for name in modules() if not name.startswith(RAY_ALLOWED) and not name.endswith("__main__")]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
    code += "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", f"ray imported by one of {names}"
    assert len(names) > 30


def test_no_import_cycle_and_nothing_below_the_cli_imports_upwards() -> None:
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    assert graph["labeler.cli.labelling"] >= {"labeler.run.service", "labeler.cli.options"}  # the walk sees imports
    cycles = []
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target] if target in trail else [name, target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
    upwards = {
        (name, target)
        for name, targets in graph.items()
        for target in targets
        if (target.startswith("labeler.cli") and not name.startswith("labeler.cli"))
        or (target == "labeler.ray_pool" and not name.startswith("labeler.cli"))
    }
    assert upwards == set()


def test_every_optimiser_and_data_setting_has_a_flag_on_both_commands() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    settings = [f"label.optimiser.{f.name}" for f in fields(OptimiserConfig)]
    settings += [f"label.{f.name}" for f in fields(LabelConfig) if f.name != "optimiser"]
    for command in ("label", "run"):
        dests = {action.dest for action in commands[command]._actions}
        assert [key for key in settings if f"cfg:{key}" not in dests] == [], command
    args = parser.parse_args(
        ["run", "--restarts", "1", "--steps", "3", "--heldout-fraction", "0.25", "--no-straight-through"]
    )
    from labeler.cli.options import overrides_from

    assert overrides_from(args) == {
        "label.optimiser.restarts": 1,
        "label.optimiser.max_steps": 3,
        "label.heldout_fraction": 0.25,
        "label.optimiser.straight_through": False,
    }


def test_the_runs_own_settings_are_generated_flags_with_listed_aliases() -> None:
    """Where the data comes from and goes and what runs it are RunConfig fields too; the short names are ALIASES."""
    from labeler.cli.options import ALIASES, overrides_from

    parser = build_parser()
    paths = ["--exemplars", "e.jsonl", "--features", "f.parquet", "--out", "o", "--discriminator", "hf:/m"]
    args = parser.parse_args(["run", *paths, "--workers", "3", "--num-gpus", "0.5", "--workers-max-restarts", "1"])
    assert overrides_from(args) == {
        "source.exemplars": "e.jsonl",
        "source.features": "f.parquet",
        "out": "o",
        "discriminator": "hf:/m",
        "workers.count": 3,
        "workers.num_gpus": 0.5,
        "workers.max_restarts": 1,
    }
    assert ALIASES["workers.count"] == ("--workers",) and ALIASES["workers.num_gpus"] == ("--num-gpus",)
    assert overrides_from(parser.parse_args(["label", *paths])) == {
        key: value for key, value in overrides_from(args).items() if not key.startswith("workers.")
    }
    commands = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    required = {a.dest for a in commands["label"]._actions if a.required}
    assert required == {"cfg:source.exemplars", "cfg:out", "cfg:discriminator"}
    assert not any(a.required for a in commands["run"]._actions)
    assert not any(a.dest.startswith("cfg:workers.") for a in commands["label"]._actions)  # one in-process worker
