#!/usr/bin/env bash
# The GPU measurement in one command of about 8 minutes (GPU_SUITE_BUDGET, after a check of the environment that
# takes seconds): benchmarks/gpu_engine.py on the Gemma-2-2B and Llama-3-8B shapes, each measuring the causal-LM
# kind's default optimiser (discrete search and its pick, what an hf: run uses and what `labeler plan` reads)
# beside the paper's soft label, batched and in the paper's one-feature loop: features/s, forward tokens, FLOPs,
# MFU against the matmul peak measured in the same run, peak memory; and torch.profiler's tables of each shape.
#
#   benchmarks/gpu_suite.sh OUT_DIR
#
# The machine's own packages, as they are: the project's code works on every transformers from 5.17 (the GPU
# image's) to the newest (labeler/discriminators/causal_lm.py reads the model's cache under either name it has
# had), which `make test-device-stack` checks on a CPU under transformers 5.17.0 and tokenizers 0.23.2; no wheels
# are carried. It runs from this source tree (PYTHONPATH = the repository root) and installs nothing from a
# network. The engine path imports, at run time, only torch, transformers, tokenizers, numpy and jinja2
# (transformers renders the chat template with it); not ray, pyarrow, duckdb, s3fs or sae-lens. If one of the five
# is missing and GPU_SUITE_WHEELS names a folder of wheels, exactly the missing ones are installed from it
# (pip --no-index) into a folder under OUT_DIR.
#
# Each shape gets the time left divided by the shapes left; one that fails or runs out of time is recorded as such
# and the next one runs. gpu_engine.py prints each measurement as it ends (the default's first), so a shape cut
# short keeps what it measured. Progress goes to the terminal.
#
# Writes into OUT_DIR: suite.json (rewritten after every shape: the environment, and per shape its status, exit
# code, seconds, budget and JSON lines), env.json (interpreter, packages, what is missing, what the engine path
# imported, whether the project's transformers and tokenizers pins admit the machine's), gpu_engine-SHAPE.jsonl (the JSON lines), profile-SHAPE.txt (the profiler's tables), SHAPE.stderr.
#
# Environment: PYTHON (default python3); GPU_SUITE_SHAPES (default "gemma-2-2b llama-3-8b"; "tiny" tests this
# script on a CPU); GPU_SUITE_ARGS (gpu_engine.py arguments, default "--steps 3 --max-features 16 --loop-features
# 1": every step costs the same, so 3 of them give the rate at the optimiser's max_steps); GPU_SUITE_BUDGET
# (seconds for all shapes, after the environment check, default 480); GPU_SUITE_WHEELS (see above).
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_suite.sh OUT_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
read -r -a SHAPES <<<"${GPU_SUITE_SHAPES:-gemma-2-2b llama-3-8b}"
BUDGET=${GPU_SUITE_BUDGET:-480}
ARGS=${GPU_SUITE_ARGS-"--steps 3 --max-features 16 --loop-features 1"}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

missing=$("$PY" -c '
import importlib.util
need = ["torch", "transformers", "tokenizers", "numpy", "jinja2"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
')
if [[ -n "$missing" ]]; then
    echo "gpu_suite: missing packages: $missing" >&2
    if [[ -n "${GPU_SUITE_WHEELS:-}" && -d "$GPU_SUITE_WHEELS" ]]; then
        # shellcheck disable=SC2086  # missing is a list of package names
        "$PY" -m pip install --quiet --no-index --find-links "$GPU_SUITE_WHEELS" --target "$OUT/site" $missing \
            || echo "gpu_suite: could not install $missing from $GPU_SUITE_WHEELS" >&2
        export PYTHONPATH="$PYTHONPATH:$OUT/site"
    fi
fi

# What the machine has, and what importing the engine path pulls in (it must not need Ray, pyarrow or sae-lens).
"$PY" - "$OUT/env.json" "$missing" <<'EOF'
import importlib.util, json, platform, sys
sys.argv, (out, missing) = sys.argv[:1], sys.argv[1:]
spec = importlib.util.spec_from_file_location("gpu_engine", "benchmarks/gpu_engine.py")
env = {"python": sys.version.split()[0], "platform": platform.platform(), "missing": missing.split()}
try:
    module = sys.modules["gpu_engine"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up there
    spec.loader.exec_module(module)
    import tokenizers, torch, transformers
    env |= {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "imported_forbidden": sorted({m.split(".")[0] for m in sys.modules} & {"ray", "pyarrow", "duckdb", "s3fs", "sae_lens"})}
    # Whether the project's own pins (pyproject.toml) admit this transformers and tokenizers (torch's pin names the
    # CPU wheel of the development machines, not a GPU image's).
    import tomllib
    from packaging.requirements import Requirement
    with open("pyproject.toml", "rb") as f:
        pins = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    env["project_pins"] = {r.name: {"pin": str(r.specifier), "installed": env[r.name], "met": r.specifier.contains(env[r.name])}
                           for r in pins if r.name in ("transformers", "tokenizers")}
except Exception as err:
    env["import_error"] = f"{type(err).__name__}: {err}"
json.dump(env, open(out, "w"), indent=1)
print(json.dumps(env))
EOF

# suite.json from what is on disk now: env.json and, per shape run so far, its status file and JSON lines.
write_summary() {
    "$PY" - "$OUT" "$BUDGET" "${SHAPES[@]}" <<'EOF'
import json, pathlib, sys
out, budget, shapes = pathlib.Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
env_file = out / "env.json"
summary = {"budget_s": budget, "env": json.loads(env_file.read_text()) if env_file.exists() else None, "shapes": []}
for shape in shapes:
    status_file = out / f"{shape}.status.json"
    if not status_file.exists():
        summary["shapes"].append({"shape": shape, "status": "not run yet"})
        continue
    lines = []
    jsonl = out / f"gpu_engine-{shape}.jsonl"
    for line in (jsonl.read_text(errors="replace").splitlines() if jsonl.exists() else []):
        try:
            lines.append(json.loads(line))
        except ValueError:
            lines.append({"unparsed": line})
    stderr = out / f"{shape}.stderr"
    tail = stderr.read_text(errors="replace").splitlines()[-20:] if stderr.exists() else []
    summary["shapes"].append({**json.loads(status_file.read_text()), "lines": lines, "stderr_tail": tail})
(out / "suite.json").write_text(json.dumps(summary, indent=1))
EOF
}

status=0
begun=$SECONDS
for i in "${!SHAPES[@]}"; do
    shape=${SHAPES[$i]}
    left=$((BUDGET - (SECONDS - begun)))
    budget=$((left > 0 ? left / (${#SHAPES[@]} - i) : 0))
    started=$SECONDS
    if ((budget < 1)); then
        rc=124 state="out of time"
        echo "gpu_suite: [$((i + 1))/${#SHAPES[@]}] $shape: no time left of the ${BUDGET} s budget" >&2
    else
        echo "gpu_suite: [$((i + 1))/${#SHAPES[@]}] $shape: at most $budget s" >&2
        # shellcheck disable=SC2086  # ARGS is a list of arguments
        # stdout (the JSON lines) to its file; stderr (progress) to the terminal and its file.
        timeout --signal=INT --kill-after=10 "$budget" "$PY" benchmarks/gpu_engine.py --shape "$shape" \
            --profile "$OUT/profile-$shape.txt" $ARGS 2>&1 >"$OUT/gpu_engine-$shape.jsonl" \
            | tee "$OUT/$shape.stderr" >&2
        rc=${PIPESTATUS[0]}
        case $rc in
            0) state="ok" ;;
            124 | 137) state="out of time" ;;
            *) state="failed" ;;
        esac
    fi
    seconds=$((SECONDS - started))
    printf '{"shape": "%s", "status": "%s", "exit": %d, "seconds": %d, "budget_s": %d}\n' \
        "$shape" "$state" "$rc" "$seconds" "$budget" >"$OUT/$shape.status.json"
    write_summary
    lines=$(cat "$OUT/gpu_engine-$shape.jsonl" 2>/dev/null | wc -l)
    echo "gpu_suite: $shape: $state (exit $rc) in $seconds s, $lines JSON lines; $OUT/suite.json written" >&2
    [[ $state == "ok" ]] || status=1
done
exit $status
