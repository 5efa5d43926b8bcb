#!/usr/bin/env bash
# The whole GPU measurement of issue 20 in at most 7 minutes: benchmarks/gpu_engine.py on the Gemma-2-2B and
# Llama-3-8B shapes (features/s per GPU, MFU against the matmul peak measured in the same run, peak memory,
# the paper loop and the ratio), and torch.profiler's table of one optimisation step per shape.
#
#   benchmarks/gpu_suite.sh OUT_DIR
#
# Writes into OUT_DIR: env.json (interpreter, packages, what is missing, what the engine path imported),
# gpu_engine-SHAPE.jsonl (the JSON lines), profile-SHAPE.txt (key_averages table), SHAPE.stderr.
#
# It runs the project from this source tree (PYTHONPATH = the repository root), with the machine's own
# torch and transformers: nothing is installed from a network. The engine path imports, at run time, only
# torch, transformers, tokenizers, numpy and jinja2 (transformers renders the chat template with it); not
# ray, pyarrow, duckdb, s3fs or sae-lens. If one of the five is missing and GPU_SUITE_WHEELS names a folder of
# wheels, exactly the missing ones are installed from it (pip --no-index) into a folder under OUT_DIR.
#
# Environment: PYTHON (default python3); GPU_SUITE_SHAPES (default "gemma-2-2b llama-3-8b"; "tiny" tests this
# script on a CPU); GPU_SUITE_ARGS (gpu_engine.py arguments, default --loop-features 1); GPU_SUITE_TIMEOUT (seconds per shape,
# default 200); GPU_SUITE_WHEELS (see above).
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_suite.sh OUT_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
SHAPES=${GPU_SUITE_SHAPES:-gemma-2-2b llama-3-8b}
PER_SHAPE=${GPU_SUITE_TIMEOUT:-200}
# The loop's rate per feature needs no second feature, and on a GPU the loop is the slow half of a run.
ARGS=${GPU_SUITE_ARGS-"--loop-features 1"}
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
    import torch, transformers
    env |= {"torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "imported_forbidden": sorted({m.split(".")[0] for m in sys.modules} & {"ray", "pyarrow", "duckdb", "s3fs", "sae_lens"})}
except Exception as err:
    env["import_error"] = f"{type(err).__name__}: {err}"
json.dump(env, open(out, "w"), indent=1)
print(json.dumps(env))
EOF

status=0
for shape in $SHAPES; do
    # shellcheck disable=SC2086  # ARGS is a list of arguments
    timeout --signal=INT --kill-after=10 "$PER_SHAPE" "$PY" benchmarks/gpu_engine.py --shape "$shape" \
        --profile "$OUT/profile-$shape.txt" $ARGS >"$OUT/gpu_engine-$shape.jsonl" 2>"$OUT/$shape.stderr"
    rc=$?
    echo "gpu_suite: $shape exit $rc, $(wc -l <"$OUT/gpu_engine-$shape.jsonl") JSON lines" >&2
    [[ $rc -eq 0 ]] || { status=1; tail -5 "$OUT/$shape.stderr" >&2; }
done
exit $status
