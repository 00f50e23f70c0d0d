#!/usr/bin/env bash
# One call on an H200/H100 (sm_90, torch, no network) that fits a 15-minute lease: at most 8 minutes in all.
#   scripts/gpu.sh LOG_DIR [STEPS]
# Builds the extension, then runs STEPS in this order (default "test sanitize bench demo"; e.g. "test" alone,
# or "bench" with BENCH_ARGS="--suite gemm --quick"); every step has a time limit, and one that runs out is
# reported as TIMEOUT and the next step runs. Logs go to LOG_DIR (at most 8 files); a short summary is printed last.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# Wall-clock limits in seconds: their sum (445) plus the kill grace of each (2) stays under 480.
T_INFO=10 T_BUILD=90 T_SASS=15 T_TEST=120 T_SANITIZE=40 T_REBUILD=60 T_BENCH=70 T_DEMO=40 GRACE=2
T_EACH_TEST=60   # pytest-timeout, per test
DEMO_STEPS=200   # tiny preset (600 by default)

LOG=$(realpath -m "${1:-${OUT:-gpu-logs}}")
STEPS=" ${2:-test sanitize bench demo} "
wants() { [[ "$STEPS" == *" $1 "* ]]; }
mkdir -p "$LOG"
: > "$LOG/summary.txt"
export PYTHONUNBUFFERED=1

# run LIMIT LOGFILE CMD...: appends CMD's output to LOGFILE, stops it (children too) after LIMIT s; sets RC and ST.
run() {
  local limit=$1 log=$2 t=$SECONDS pid
  shift 2
  timeout -k "$GRACE" "$limit" "$@" >> "$log" 2>&1 &
  pid=$!
  wait "$pid"
  RC=$?
  kill -KILL -- "-$pid" 2>/dev/null  # timeout leads its own process group: leftovers (spawned ranks) go too
  case $RC in 0) ST=ok ;; 124 | 137) ST=TIMEOUT ;; *) ST="FAIL($RC)" ;; esac
  ST="$ST $((SECONDS - t))/${limit}s"
}
step() { printf '%-10s %-17s %s\n' "$1" "$ST" "$2" >> "$LOG/summary.txt"; }

# 1. Build with every core (ptxas resource report and SASS counts kept in the build log), with
# DEEPSEEK_EXT_DEBUG_HANGS=1 for the test and sanitizer steps: a hung mbarrier wait prints where and traps.
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
export CMAKE_BUILD_PARALLEL_LEVEL CMAKE_GENERATOR=Ninja
: > "$LOG/build.log"
run "$T_INFO" "$LOG/build.log" nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
echo "== build: $CMAKE_GENERATOR, CMAKE_BUILD_PARALLEL_LEVEL=$CMAKE_BUILD_PARALLEL_LEVEL" >> "$LOG/build.log"
# The emulation module is for machines without a GPU: not built here.
run "$T_BUILD" "$LOG/build.log" env DEEPSEEK_EXT_PTXAS_VERBOSE=1 DEEPSEEK_EXT_EMULATE=0 DEEPSEEK_EXT_DEBUG_HANGS=1 \
  python -m pip install --no-build-isolation --no-deps -v -e .
build_rc=$RC
step build "$(grep -c 'spill stores' "$LOG/build.log") ptxas reports, $(grep -cE '[1-9][0-9]* bytes spill' "$LOG/build.log") with spills"
so=$(find build -maxdepth 2 -name '_C*.so' 2>/dev/null | head -n 1)
if [ -n "$so" ]; then
  sass=$(mktemp)
  run "$T_SASS" "$sass" cuobjdump -sass "$so"
  { echo "== SASS instruction counts ($so)"; grep -oE '(QGMMA|HGMMA|UTMALDG|UTMASTG|LDG\.E\.[A-Z.]*128|STG\.E\.[A-Z.]*128)[^ ]*' "$sass" | sort | uniq -c; } >> "$LOG/build.log"
  step sass "QGMMA instructions: $(grep -c QGMMA "$sass")"
  rm -f "$sass"
fi
if [ "$build_rc" -ne 0 ]; then
  printf '%-10s %s\n' skipped "${STEPS:1}(build failed: see build.log)" >> "$LOG/summary.txt"
  STEPS=" "
  echo "== build log tail"; tail -n 25 "$LOG/build.log"
fi

# 2. Correctness: the GPU tests (a hung test is dumped and ends the step, not the run).
if wants test; then
  read -ra pytest_args <<< "${PYTEST_ARGS:-}"
  run "$T_TEST" "$LOG/pytest_gpu.log" python -m pytest -m gpu -v -rfEs --timeout="$T_EACH_TEST" --timeout-method=thread "${pytest_args[@]}"
  res=$(grep -E '^=+ .* in [0-9.]+s' "$LOG/pytest_gpu.log" | tail -n 1)
  last=$(grep -oE '^tests/[^ ]+::[^ ]+' "$LOG/pytest_gpu.log" | tail -n 1)
  if grep -q ' Timeout +' "$LOG/pytest_gpu.log"; then res="test TIMEOUT (${T_EACH_TEST}s) in $last"; fi
  step pytest-gpu "${res:-stopped in $last}"
  echo "== pytest failures"; grep -E '^(FAILED|ERROR) ' "$LOG/pytest_gpu.log" | head -n 20
fi

# 3. compute-sanitizer on every kernel, smallest shapes (no caching allocator: each tensor its own allocation).
if wants sanitize; then
  : > "$LOG/sanitizer.log"
  for tool in memcheck racecheck; do
    echo "== $tool" >> "$LOG/sanitizer.log"
    run "$T_SANITIZE" "$LOG/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      compute-sanitizer --tool "$tool" --error-exitcode 1 python scripts/sanitize_kernels.py
    out=$(sed -n "/^== $tool\$/,\$p" "$LOG/sanitizer.log")
    res=$(grep -oE '[A-Z]+ SUMMARY: .*' <<< "$out" | tail -n 1)
    step "$tool" "${res:-no summary}; reached: $(grep -E '^sanitize' <<< "$out" | tail -n 1)"
  done
fi

# The timed steps run the kernels as shipped: rebuilt without the hang checks.
if wants bench || wants demo; then
  run "$T_REBUILD" "$LOG/build.log" env DEEPSEEK_EXT_EMULATE=0 DEEPSEEK_EXT_DEBUG_HANGS=0 \
    python -m pip install --no-build-isolation --no-deps -e .
  step rebuild "without DEEPSEEK_EXT_DEBUG_HANGS"
fi

# 4. Benchmarks, quick mode (table on stdout, JSON and PNGs packed into one archive).
if wants bench; then
  read -ra bench_args <<< "${BENCH_ARGS:---suite all --quick}"
  run "$T_BENCH" "$LOG/bench.log" python bench/run.py "${bench_args[@]}" --out "$LOG/bench"
  step bench "suites done: $(find "$LOG/bench" -name '*.json' ! -name all.json -printf '%f ' 2>/dev/null | sed 's/\.json//g')"
  if [ -d "$LOG/bench" ]; then tar -czf "$LOG/bench_results.tar.gz" -C "$LOG" bench && rm -rf "$LOG/bench"; fi
  echo "== bench"; grep -E '^\|' "$LOG/bench.log" | head -n 60
fi

# 5. The main job on the GPU kernels: the tiny preset, shortened to fit its limit.
if wants demo; then
  : > "$LOG/demo.log"
  run "$T_DEMO" "$LOG/demo.log" python -m deepseek_ext.demo --preset tiny --steps "$DEMO_STEPS" --device cuda --out "$LOG/demo"
  step demo-tiny "$(grep -E '^trained' "$LOG/demo.log")"
  rm -f "$LOG/demo/checkpoint.pt"
  if [ -d "$LOG/demo" ]; then tar -czf "$LOG/demo_results.tar.gz" -C "$LOG" demo && rm -rf "$LOG/demo"; fi
  echo "== demo"; grep -vE '^\[' "$LOG/demo.log" | tail -n 15
fi
echo "total      $SECONDS/480s" >> "$LOG/summary.txt"
echo "== summary ($LOG)"; cat "$LOG/summary.txt"
