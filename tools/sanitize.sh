#!/usr/bin/env bash
# dynconv's sanitizer stages (CI runs both after tools/quickstart.sh test):
#
#   bash tools/sanitize.sh asan   AddressSanitizer + UndefinedBehaviorSanitizer: builds the tests
#                                 and the examples in build-asan/ and runs the whole ctest suite
#                                 (the PyTorch parity fixtures and test_cli's dynconv-run
#                                 subprocesses included), except the consumer projects
#   bash tools/sanitize.sh tsan   ThreadSanitizer: builds test_threads (one model shared by several
#                                 threads, Session, ThreadPool), test_conv and test_dynamic (the
#                                 layers' split paths on 2 and 3 threads), test_models (its
#                                 Session cases: every zoo model threaded), test_plan, test_graph and
#                                 test_graph_file (exported networks on 2 threads) in build-tsan/;
#                                 runs them
#
# Either stage fails on a failing test and on any sanitizer report. Reports go to files
# (log_path) in <build>/sanitizer-reports/ besides making the process that hit them fail
# (halt_on_error=1, -fno-sanitize-recover=all), so a report in a subprocess whose test expected it
# to fail (test_cli's error cases) cannot pass unnoticed; the script prints every report and
# exits 1 if the directory is not empty.
#
# How the flags get in: CMAKE_CXX_FLAGS on the configure line below (Debug build type, so that
# dynconv_dev_flags adds no -O3 over our -O1; it still adds -march=native, so the vector code
# that runs in production is the code that is checked). The library target dynconv::dynconv
# carries no compile options and never sees these flags.
#
# The consumer tests (ctest label "consumer") are excluded from the asan stage: they configure
# and build separate CMake projects with their own flags (not these), so under the sanitizer
# build they would only repeat what tools/quickstart.sh test already checked. So are the whole-
# model tests rerun with a forced kernel set (label "kernel_models": the same layers and kernels
# as the operator tests with forced sets, which do run here, at several times the cost).
#
# Environment:
#   DYNCONV_SANITIZE_BUILD_DIR  the build directory (default build-asan/ or build-tsan/)
#   DYNCONV_SANITIZE_CXX        the compiler (default clang++: it builds the Eigen-heavy tests in
#                               half the time g++ takes with these flags, 47 s against 96 s of CPU
#                               for test_models.cpp; g++ works too)
#   DYNCONV_SANITIZE_JOBS       parallel build jobs and ctest jobs (default 2)
#   DYNCONV_SKIP_TORCH=1        as for quickstart.sh: the parity fixtures skip without torch
#   CI=true                     a missing torch fails the parity tests instead of skipping them
set -euo pipefail

usage() {
  echo "usage: bash tools/sanitize.sh asan|tsan" >&2
  exit 2
}
[[ $# -eq 1 ]] || usage
mode=$1
[[ $mode == asan || $mode == tsan ]] || usage

cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "dynconv sanitize ($mode): $*"; }

build=${DYNCONV_SANITIZE_BUILD_DIR:-build-$mode}
cxx=${DYNCONV_SANITIZE_CXX:-clang++}
jobs=${DYNCONV_SANITIZE_JOBS:-2}
reports="$build/sanitizer-reports"

# ---- Debian packages: clang and its sanitizer runtimes (tools/quickstart.sh test installed the rest)
if [[ $cxx == clang++ ]]; then
  # shellcheck source=tools/debian_packages.sh
  source tools/debian_packages.sh
  ensure_debian_packages clang libclang-rt-dev
fi

if [[ ${CI:-} == true && ${DYNCONV_SKIP_TORCH:-0} != 1 ]]; then
  export DYNCONV_REQUIRE_TORCH=1
fi

common_flags="-O1 -g -fno-omit-frame-pointer -fno-sanitize-recover=all"
if [[ $mode == asan ]]; then
  # _GLIBCXX_ASSERTIONS: libstdc++'s cheap bounds checks (operator[] of vector, array, string).
  flags="$common_flags -fsanitize=address,undefined -D_GLIBCXX_ASSERTIONS"
  examples=ON
else
  flags="$common_flags -fsanitize=thread"
  examples=OFF
fi

say "configuring $build/ with $cxx $flags"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_CXX_FLAGS="$flags" -DDYNCONV_BUILD_TESTS=ON -DDYNCONV_BUILD_BENCHMARKS=OFF \
  -DDYNCONV_BUILD_EXAMPLES=$examples -DDYNCONV_INSTALL=OFF >/dev/null

# An absolute path: the tests run in other directories (ctest's working directory, test_cli's
# dynconv-run subprocesses).
rm -rf "$reports"
mkdir -p "$reports"
reports=$(cd "$reports" && pwd)
# Options for the tests' run (and for gtest_discover_tests' listing runs during the build). The
# sanitizers of one process share log_path (the last one set wins), so all say report.<pid>.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:print_stacktrace=1:abort_on_error=0:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1:log_path=$reports/report"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$reports/report"
export LSAN_OPTIONS="log_path=$reports/report"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:history_size=4:log_path=$reports/report"

status=0
if [[ $mode == asan ]]; then
  say "building tests and examples (-j$jobs)"
  cmake --build "$build" -j"$jobs"
  say "running ctest (all but the consumer projects and the forced-kernel model reruns)"
  ctest --test-dir "$build" --output-on-failure --no-tests=error -LE 'consumer|kernel_models' -j"$jobs" || status=$?
else
  # test_threads: one model shared by threads, Sessions, the ThreadPool. test_conv and
  # test_dynamic run every layer's split paths (samples, rows, channel tiles) on 2- and 3-thread
  # pools with small shapes; test_models' Session cases run all 14 zoo models on 1, 2 and 3
  # threads (about a minute under TSan; its other cases add nothing threaded and are left out);
  # test_plan every mixing strategy on 1-3 threads, test_graph graphs through Sessions.
  tsan_targets=(test_threads test_conv test_dynamic test_models test_plan test_graph test_graph_file)
  say "building ${tsan_targets[*]} (-j$jobs)"
  cmake --build "$build" --target "${tsan_targets[@]}" -j"$jobs"
  regex='^(test_threads|test_conv|test_dynamic|test_plan|test_graph|test_graph_file)\.|^test_models\.Session\.'
  say "running ctest -R '$regex'"
  ctest --test-dir "$build" --output-on-failure --no-tests=error -R "$regex" -j"$jobs" || status=$?
fi

shopt -s nullglob
found=("$reports"/*)
if [[ ${#found[@]} -gt 0 ]]; then
  say "${#found[@]} sanitizer report(s):"
  for f in "${found[@]}"; do
    echo "---- $f"
    cat "$f"
  done
  status=1
fi
if [[ $status -ne 0 ]]; then
  say "FAILED"
  exit 1
fi
say "clean: no test failed, no sanitizer report"
