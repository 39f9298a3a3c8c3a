// The single-core FP32 multiply-add peak of this machine, measured at start-up, so that
// benchmarks report the fraction of peak against a number taken in the same run (the
// machines are shared and their processors differ: a stated figure can be wrong here).
#pragma once

#include <chrono>

namespace bench {

/// GFLOP/s of 16 independent chains of vector FMAs (AVX-512 when compiled for it), ~0.2 s.
inline double measure_fma_peak_gflops() {
#if defined(__AVX512F__)
  constexpr int kWidth = 16;
#else
  constexpr int kWidth = 8;
#endif
  typedef float Vec __attribute__((vector_size(kWidth * sizeof(float))));
  constexpr int kChains = 16;
  volatile float seed = 1e-7f;  // opaque to the optimiser
  Vec acc[kChains], a, b;
  for (int i = 0; i < kWidth; ++i) {
    a[i] = 1.0000001f;
    b[i] = -seed;
  }
  for (int j = 0; j < kChains; ++j)
    for (int i = 0; i < kWidth; ++i) acc[j][i] = static_cast<float>(j);
  const long iterations = 50000000;
  const auto start = std::chrono::steady_clock::now();
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int j = 0; j < kChains; ++j) acc[j] = acc[j] * a + b;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sink = 0;
  for (int j = 0; j < kChains; ++j) sink += acc[j][0];
  seed = sink;  // keep the chains alive
  return 2.0 * kWidth * kChains * static_cast<double>(iterations) / seconds / 1e9;
}

}  // namespace bench
