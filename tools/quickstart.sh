#!/usr/bin/env bash
# dynconv quick start: the two commands of README's "Quick start".
#
#   bash tools/quickstart.sh demo   build and run examples/mobilenet_v3_small (in build-demo/):
#                                   the shipped dynamic model classifying bundled images
#   bash tools/quickstart.sh test   build everything and run every test with ctest (in build/)
#
# Installs the Debian packages it needs first (as root; otherwise it prints the apt-get line).
# Environment:
#   DYNCONV_SKIP_TORCH=1   do not install python3-torch(vision) (the PyTorch parity tests then skip)
#   DYNCONV_NATIVE=ON|OFF  passed to CMake: -O3 -march=native (default) or the build type's flags
#   CI=true                a missing torch fails the parity tests instead of skipping them
set -euo pipefail

usage() {
  echo "usage: bash tools/quickstart.sh demo|test" >&2
  exit 2
}

[[ $# -eq 1 ]] || usage
mode=$1
[[ $mode == demo || $mode == test ]] || usage

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "dynconv: $*"; }

# ---- Debian packages -------------------------------------------------------------------------
packages=(g++ cmake make pkg-config libeigen3-dev nlohmann-json3-dev libstb-dev zlib1g-dev
  libcli11-dev)
if [[ $mode == test ]]; then
  packages+=(libgtest-dev libgmock-dev libbenchmark-dev dataset-fashion-mnist doxygen)
  if [[ ${DYNCONV_SKIP_TORCH:-0} != 1 ]]; then
    packages+=(python3-torch python3-torchvision python3-pil)
  fi
fi

# shellcheck source=tools/debian_packages.sh
source tools/debian_packages.sh
ensure_debian_packages "${packages[@]}"

cmake_args=()
if [[ -n ${DYNCONV_NATIVE:-} ]]; then
  cmake_args+=("-DDYNCONV_NATIVE=${DYNCONV_NATIVE}")
fi

# ---- Build and run ---------------------------------------------------------------------------
if [[ $mode == demo ]]; then
  say "configuring build-demo/ (example only)"
  cmake -S . -B build-demo -DDYNCONV_BUILD_EXAMPLES=ON -DDYNCONV_BUILD_TESTS=OFF \
    -DDYNCONV_BUILD_BENCHMARKS=OFF ${cmake_args[@]+"${cmake_args[@]}"}
  say "building mobilenet_v3_small"
  cmake --build build-demo --target mobilenet_v3_small -j2
  say "running build-demo/examples/mobilenet_v3_small"
  ./build-demo/examples/mobilenet_v3_small
  say "demo done"
else
  if [[ ${CI:-} == true && ${DYNCONV_SKIP_TORCH:-0} != 1 ]]; then
    say "CI=true: the PyTorch parity tests must run (DYNCONV_REQUIRE_TORCH=1)"
    export DYNCONV_REQUIRE_TORCH=1
  fi
  say "configuring build/ (library, tests, benchmarks, examples)"
  cmake -S . -B build -DDYNCONV_BUILD_TESTS=ON -DDYNCONV_BUILD_BENCHMARKS=ON \
    -DDYNCONV_BUILD_EXAMPLES=ON ${cmake_args[@]+"${cmake_args[@]}"}
  say "building everything (-j2)"
  cmake --build build -j2
  say "running ctest"
  ctest --test-dir build --output-on-failure --no-tests=error
fi
