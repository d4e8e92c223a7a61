#!/usr/bin/env bash
# The GPU report: the one command to run whenever an H200 (or any CUDA GPU) is available.
#
#   benchmarks/gpu_report.sh [OUTDIR]      # OUTDIR, else $OUT, else benchmarks/out/<UTC time>
#   benchmarks/gpu_report.sh --list        # print the stages and their time limits, run nothing
#
# Stages, each under `timeout` and all within one budget (ENGINE_REPORT_BUDGET seconds, default 330, so the whole
# run fits a 15-minute device lease with the machine's start): versions, build (pip install -e . of the C++
# sampler), ceilings (copy bandwidth, bf16 matmul), engine-bench (python -m engine bench at CUDA sizes),
# gpu-tests (pytest -m gpu tests/; tests/kernels, the sm_90 build gate, needs no GPU and is left out),
# benchmarks (pytest benchmarks/ with JSON; the attention "sdpa-paths" group times the fp32, head-dim-256 and
# padded-mask paths, test_decode the fp32 head-dim-128 decode).
# A stage that would start with too little budget left is skipped and says so; ENGINE_REPORT_SKIP="a,b" skips
# stages by name. Output: OUTDIR/{report.log, ceilings.json, benchmarks.json, results.json, summary.md,
# summary.txt, attention.png}. The summary table is printed last.
# Exit status: 0 all checks passed; 1 a correctness check (build, engine-bench, gpu-tests, benchmarks) failed;
# 3 nothing failed but a check stage timed out or was skipped (results incomplete).
# Record results in benchmarks/RESULTS.md only from these files:
#   python benchmarks/report.py OUTDIR/results.json --results-md benchmarks/RESULTS.md
set -u -o pipefail

# name:limit seconds:kind:kept seconds. kind check = a failure there is a correctness failure, info = context
# only. "kept": the stages before this one end early enough to leave it at least that much of the budget.
STAGES="versions:20:info:0 build:100:check:0 ceilings:40:info:0 engine-bench:45:check:0 gpu-tests:110:check:0
benchmarks:170:check:150"
BUDGET=${ENGINE_REPORT_BUDGET:-330}
MIN_START=10  # do not start a stage with less than this many seconds of budget left

if [ "${1:-}" = "--list" ]; then
    total=0
    for s in $STAGES; do
        IFS=: read -r name limit kind keep <<<"$s"
        printf '%-14s %4s s  %-5s  guaranteed %s s\n' "$name" "$limit" "$kind" "$keep"
        total=$((total + limit))
    done
    echo "budget ${BUDGET} s (sum of stage limits ${total} s: each stage gets what is left," \
        "less what later stages are guaranteed)"
    exit 0
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd) || exit 1
OUTDIR=${1:-${OUT:-$ROOT/benchmarks/out/$(date -u +%Y%m%d-%H%M%S)}}  # relative to the caller's directory
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) || exit 1
cd "$ROOT" || exit 1
# Files of an earlier run in the same OUTDIR must not pass for this run's results.
rm -f "$OUTDIR"/{report.log,ceilings.json,benchmarks.json,results.json,summary.md,summary.txt,attention.png}
LOG="$OUTDIR/report.log"
: >"$LOG"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x /opt/torch/.venv/bin/python3 ]; then PY=/opt/torch/.venv/bin/python3
else PY=python3; fi
export PYTHONUNBUFFERED=1 ENGINE_CEILINGS="$OUTDIR/ceilings.json"
unset TRITON_INTERPRET
START=$SECONDS
STATUS=""   # lines "name status seconds"
STAGE_TMP=$(mktemp)
STAGE_PID=""
trap 'rm -f "$STAGE_TMP"' EXIT
# If this script is stopped, stop the running stage too (timeout runs it in its own process group).
on_signal() {
    [ -n "$STAGE_PID" ] && kill -TERM -- "-$STAGE_PID" 2>/dev/null
    echo "gpu_report: interrupted" >&2
    exit 130
}
trap on_signal INT TERM

say() { echo "$@" | tee -a "$LOG"; }

# How a pytest log ended: "failed" when it reports failures or errors.
pytest_failed() { tail -n 5 "$1" | grep -Eq '[0-9]+ (failed|errors?)\b'; }

stage_versions() {
    "$PY" - <<'PY'
import platform, importlib
print(f"python {platform.python_version()} ({platform.machine()})")
for name in ("torch", "triton", "transformers", "pytest", "pytest_benchmark", "matplotlib", "numpy"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:
        print(f"{name}: not importable ({type(exc).__name__})")
import torch
print(f"CUDA available {torch.cuda.is_available()}, torch CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
PY
    local rc=$?
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || true
    (git rev-parse --short HEAD 2>/dev/null && git status --short 2>/dev/null | head -n 20) || echo "git: not available"
    return $rc
}

stage_build() {
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -q -e . || return 1
    "$PY" -c "import engine, engine._sampler; print('engine', engine.__version__, 'built:', engine._sampler.__file__)"
}

stage_ceilings() { "$PY" benchmarks/ceilings.py --json "$OUTDIR/ceilings.json"; }

stage_engine_bench() { "$PY" -m engine bench; }

stage_gpu_tests() {
    # Most of this stage is Triton compiling kernels on first use; with pytest-xdist (on the H200 image) the
    # compiles run in parallel on the host's cores while the tests share the one GPU.
    local par=()
    "$PY" -c "import xdist" 2>/dev/null && par=(-n "${ENGINE_REPORT_WORKERS:-8}")
    "$PY" -m pytest -m gpu tests/ --ignore=tests/kernels -q -rfE -p no:cacheprovider "${par[@]}"
    local rc=$?
    if [ $rc -eq 5 ]; then echo "no GPU-marked tests were collected"; return 0; fi
    return $rc
}

stage_benchmarks() {
    # Kernel grids first (attention feeds the plot), then the patched transformers BERT-base (test_hf.py: the
    # issue-15 target, engine.patch >= 1.3x sdpa at 32 x 512 60% fill), then T5 (issue 14's H200 cases:
    # flan-t5-base generation at batch 1, the T5-XL-sized encoder at 8 x 512), then the corpus embedding job
    # (issue 17: MiniLM bf16 >= 2M tokens/s, BERT-base >= 1M, >= 2x transformers), then every other benchmark
    # file: if the stage runs out of time, what finished is still reported.
    local files=() f first="attention layernorm gelu decode hf t5 corpus"
    shopt -s nullglob
    for f in $first; do [ -f "benchmarks/test_$f.py" ] && files+=("benchmarks/test_$f.py"); done
    for f in benchmarks/test_*.py; do [[ " ${files[*]} " == *" $f "* ]] || files+=("$f"); done
    if [ ${#files[@]} -eq 0 ]; then echo "no benchmark files"; return 1; fi
    echo "benchmark files in order: ${files[*]}"
    "$PY" -m pytest "${files[@]}" -q -p no:cacheprovider -rfE \
        --benchmark-json="$OUTDIR/benchmarks.json" --engine-report "$OUTDIR" \
        --benchmark-max-time=0.1 --benchmark-min-rounds=3 --benchmark-warmup=off \
        --benchmark-columns=median,iqr,rounds --benchmark-sort=name
}

run_stage() {  # name limit kind seconds-to-leave-for-later-stages
    local name=$1 limit=$2 kind=$3 later=$4 left=$((BUDGET - (SECONDS - START))) t0 rc st
    if [[ ",${ENGINE_REPORT_SKIP:-}," == *",$name,"* ]]; then
        say "== $name: skipped (ENGINE_REPORT_SKIP)"; STATUS+="$name skipped($kind) 0"$'\n'; return
    fi
    if [ "$left" -lt "$MIN_START" ]; then
        say "== $name: skipped (budget spent: ${left}s left of ${BUDGET}s)"; STATUS+="$name skipped($kind) 0"$'\n'
        return
    fi
    [ "$limit" -gt "$((left - later))" ] && limit=$((left - later))
    if [ "$limit" -lt "$MIN_START" ]; then
        say "== $name: skipped (${left}s left, ${later}s of it kept for later stages)"
        STATUS+="$name skipped($kind) 0"$'\n'; return
    fi
    say "== $name (limit ${limit}s, $(date -u +%H:%M:%S))"
    t0=$SECONDS
    # SIGINT first, so pytest still writes its JSON and our report for what finished; KILL 20 s later.
    timeout -s INT -k 20 "$limit" bash -c "stage_${name//-/_}" >"$STAGE_TMP" 2>&1 &
    STAGE_PID=$!
    wait "$STAGE_PID"
    rc=$?
    STAGE_PID=""
    cat "$STAGE_TMP" >>"$LOG"
    if [ $rc -eq 0 ]; then st=ok
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        if pytest_failed "$STAGE_TMP"; then st=FAILED; else st=TIMEOUT; fi
    else st=FAILED; fi
    [ "$kind" = info ] && [ "$st" != ok ] && st="$st(info)"
    STATUS+="$name $st $((SECONDS - t0))"$'\n'
    # Keep the terminal short (the device tool returns only the last 12k characters): the stage's tail.
    case $name in
        versions|ceilings) cat "$STAGE_TMP" ;;
        engine-bench) tail -n 16 "$STAGE_TMP" ;;
        *) grep -E '^(FAILED|ERROR)' "$STAGE_TMP" | head -n 15; tail -n 3 "$STAGE_TMP" ;;
    esac
    echo "-- $name: $st (rc $rc, $((SECONDS - t0)) s)" | tee -a "$LOG"
}

export PY OUTDIR
export -f stage_versions stage_build stage_ceilings stage_engine_bench stage_gpu_tests stage_benchmarks
say "gpu_report: out=$OUTDIR python=$PY budget=${BUDGET}s"
stages=($STAGES)
for i in "${!stages[@]}"; do
    IFS=: read -r name limit kind _ <<<"${stages[$i]}"
    later=0  # the most any later stage asks to be kept
    for s in "${stages[@]:$((i + 1))}"; do
        IFS=: read -r sname _ _ keep <<<"$s"
        [[ ",${ENGINE_REPORT_SKIP:-}," == *",$sname,"* ]] && continue  # a skipped stage keeps nothing
        [ "$keep" -gt "$later" ] && later=$keep
    done
    run_stage "$name" "$limit" "$kind" "$later"
done

if [ ! -f "$OUTDIR/summary.txt" ] && [ -s "$OUTDIR/benchmarks.json" ]; then  # pytest was cut short: rebuild
    ceil=(); [ -f "$OUTDIR/ceilings.json" ] && ceil=(--ceilings "$OUTDIR/ceilings.json")
    timeout 60 "$PY" benchmarks/report.py "$OUTDIR/benchmarks.json" "${ceil[@]}" --out "$OUTDIR" >>"$LOG" 2>&1 \
        || say "report from benchmarks.json failed (see report.log)"
fi
echo
echo "==================== engine GPU report ($((SECONDS - START)) s) ===================="
[ -f "$OUTDIR/ceilings.json" ] && "$PY" -c "import json,sys; sys.path.insert(0,'benchmarks'); import ceilings; \
print(ceilings.describe(json.load(open('$OUTDIR/ceilings.json'))))" 2>/dev/null
if [ ! -f "$OUTDIR/summary.txt" ]; then echo "(no benchmark summary was written)"
elif [ "$(wc -c <"$OUTDIR/summary.txt")" -le 9000 ]; then cat "$OUTDIR/summary.txt"
else  # keep the end of the output under the device tool's 12k characters: first rows, then the geo-means
    head -c 8000 "$OUTDIR/summary.txt" | sed '$d'
    echo "... (rows cut here; the full table is in summary.txt)"
    tail -n 1 "$OUTDIR/summary.txt"
fi
[ -f "$OUTDIR/attention.png" ] || echo "(no attention plot: matplotlib missing or no attention rows)"
echo "files: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
printf '%s' "$STATUS" | awk '{printf "  %-14s %-16s %5s s\n", $1, $2, $3}' | tee -a "$LOG"
if printf '%s' "$STATUS" | grep -Eq ' FAILED '; then echo "RESULT: FAILED"; exit 1; fi
if printf '%s' "$STATUS" | grep -Eq ' (TIMEOUT|skipped\(check\)) '; then echo "RESULT: INCOMPLETE"; exit 3; fi
echo "RESULT: all checks passed"
exit 0
