#!/usr/bin/env bash
# One command for an H100 (sm_90) machine with torch and no network:
#   scripts/gpu.sh LOG_DIR [STEPS]
# builds the extension, then runs STEPS (default "test sanitize bench demo"; e.g. "test" alone, or
# "bench" with BENCH_ARGS="--suite gemm --quick"), writes logs to LOG_DIR (at most 8 files) and
# prints a short summary last.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=$(realpath -m "${1:-${OUT:-gpu-logs}}")
STEPS=" ${2:-test sanitize bench demo} "
wants() { [[ "$STEPS" == *" $1 "* ]]; }
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1

step() { printf '%-12s %s\n' "$1" "$2" >> "$LOG/summary.txt"; }
: > "$LOG/summary.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$LOG/build.log" 2>&1

# 1. Build (ptxas resource report kept in the build log).
DEEPSEEK_EXT_PTXAS_VERBOSE=1 python -m pip install --no-build-isolation --no-deps -v -e . >> "$LOG/build.log" 2>&1
build_rc=$?
step build "rc=$build_rc; $(grep -c 'spill stores' "$LOG/build.log") ptxas reports, $(grep -E '[1-9][0-9]* bytes spill' -c "$LOG/build.log") with spills"
so=$(python -c "from deepseek_ext import _C; print(_C.__file__)" 2>/dev/null)
if [ -n "$so" ]; then
  { echo "== SASS instruction counts"; cuobjdump -sass "$so" | grep -oE '(QGMMA|HGMMA|UTMALDG|UTMASTG|LDG\.E\.[A-Z.]*128|STG\.E\.[A-Z.]*128)[^ ]*' | sort | uniq -c; } >> "$LOG/build.log" 2>&1
  step sass "QGMMA instructions: $(cuobjdump -sass "$so" 2>/dev/null | grep -c QGMMA)"
fi

# 2. GPU tests.
if wants test; then
  python -m pytest -m gpu -v -rs ${PYTEST_ARGS:-} > "$LOG/pytest_gpu.log" 2>&1
  step pytest-gpu "rc=$?; $(tail -n 1 "$LOG/pytest_gpu.log")"
fi

# 3. compute-sanitizer on every kernel (few shapes).
if wants sanitize; then
  : > "$LOG/sanitizer.log"
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 1 python scripts/sanitize_kernels.py >> "$LOG/sanitizer.log" 2>&1
    step "$tool" "rc=$? ($(grep -c 'ERROR SUMMARY: 0 errors' "$LOG/sanitizer.log") clean summaries so far)"
  done
fi

# 4. Benchmarks (table on stdout, JSON and PNGs packed into one archive).
if wants bench; then
  python bench/run.py ${BENCH_ARGS:---suite all} --out "$LOG/bench" > "$LOG/bench.log" 2>&1
  step bench "rc=$?"
  tar -czf "$LOG/bench_results.tar.gz" -C "$LOG" bench && rm -rf "$LOG/bench"
  echo "== bench"; grep -E '^\|' "$LOG/bench.log" | head -n 80
fi
# 5. The main job on the GPU kernels (FP8 on): tiny, then a short run of small.
if wants demo; then
  : > "$LOG/demo.log"
  mkdir -p "$LOG/demo"
  for preset in tiny small; do
    steps=$([ "$preset" = tiny ] && echo 600 || echo 100)
    python -m deepseek_ext.demo --preset "$preset" --steps "$steps" --device cuda --out "$LOG/demo/$preset" > "$LOG/demo/$preset.log" 2>&1
    rc=$?
    cat "$LOG/demo/$preset.log" >> "$LOG/demo.log"
    step "demo-$preset" "rc=$rc; $(grep -E '^trained' "$LOG/demo/$preset.log")"
  done
  rm -f "$LOG"/demo/*/checkpoint.pt
  tar -czf "$LOG/demo_results.tar.gz" -C "$LOG" demo && rm -rf "$LOG/demo"
  echo "== demo"; grep -vE '^\[' "$LOG/demo.log" | tail -n 30
fi
echo "== summary ($LOG)"; cat "$LOG/summary.txt"
