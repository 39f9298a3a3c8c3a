#!/bin/sh
# with_kernels.sh <set> <test binary> [args]: runs a test binary with DYNCONV_KERNELS=<set>
# (gemm_x86.hpp), so that every kernel set is tested on a machine whose default is another.
# Exits 77 (ctest: skipped) when this CPU lacks the set, unless DYNCONV_REQUIRE_KERNELS (comma-
# separated; CI sets it) lists it: then it fails.
set -eu
set_name=$1
shift
case $set_name in
  avx512) flags="avx512f avx2 fma" ;;
  avx2) flags="avx2 fma" ;;
  generic) flags="" ;;
  *) echo "with_kernels.sh: unknown kernel set '$set_name' (avx512, avx2 or generic)" >&2; exit 2 ;;
esac
for f in $flags; do
  if ! grep -qw "$f" /proc/cpuinfo 2>/dev/null; then
    case ",${DYNCONV_REQUIRE_KERNELS:-}," in
      *",$set_name,"*) echo "with_kernels.sh: kernel set $set_name is required but this CPU lacks $f" >&2; exit 1 ;;
    esac
    echo "with_kernels.sh: this CPU lacks $f: kernel set $set_name not tested"
    exit 77
  fi
done
DYNCONV_KERNELS=$set_name exec "$@"
