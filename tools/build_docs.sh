#!/usr/bin/env bash
# Builds dynconv's API reference (Doxygen) and fails on any warning: the check CI runs.
#
#   bash tools/build_docs.sh [BUILD_DIR]     default BUILD_DIR: build-docs/
#
# Configures BUILD_DIR with the library only (no tests, benchmarks or examples, so neither
# GTest nor Google Benchmark is needed), builds the `docs` target and prints where the HTML
# is. Needs cmake, doxygen, libeigen3-dev and nlohmann-json3-dev (Debian package names). Exits
# non-zero if Doxygen is missing, fails, or prints a single warning (WARN_AS_ERROR in
# docs/Doxyfile.in makes Doxygen fail too; the log is checked as well, so that warnings
# about the configuration itself also count).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
build_dir=${1:-build-docs}

# shellcheck source=tools/debian_packages.sh
source tools/debian_packages.sh
ensure_debian_packages doxygen cmake libeigen3-dev nlohmann-json3-dev

echo "build_docs: configuring ${build_dir}/ (library only, Doxygen $(doxygen --version))"
cmake -S . -B "$build_dir" -DDYNCONV_BUILD_TESTS=OFF -DDYNCONV_BUILD_BENCHMARKS=OFF \
  -DDYNCONV_BUILD_EXAMPLES=OFF -DDYNCONV_INSTALL=OFF -DDYNCONV_BUILD_DOCS=ON >/dev/null

log="${build_dir}/docs-build.log"
status=0
cmake --build "$build_dir" --target docs >"$log" 2>&1 || status=$?
warnings=$(grep -ciE '(warning|error):' "$log" || true)
if [[ $status -ne 0 || $warnings -ne 0 ]]; then
  cat "$log" >&2
  echo "build_docs: FAILED (exit status ${status}, ${warnings} warning or error lines above)" >&2
  exit 1
fi
echo "build_docs: 0 warnings; open ${build_dir}/docs/html/index.html"
