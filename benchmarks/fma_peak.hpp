// The single-core FP32 multiply-add peak of this machine, measured at start-up, so that
// benchmarks report the fraction of peak against a number taken in the same run (the
// machines are shared and their processors differ: a stated figure can be wrong here).
// The widest FMA the CPU runs (AVX-512, else AVX2), whatever the build's flags: the kernels
// dispatch at run time too (detail/gemm_x86.hpp), so the peak is the machine's, not the build's.
#pragma once

#include <chrono>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace bench {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx512f"))) inline double fma_peak_avx512(float seed) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512 a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(-seed);
  const long iterations = 50000000;
  const auto start = std::chrono::steady_clock::now();
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile float sink = 0;
  for (int j = 0; j < 16; ++j) sink = sink + _mm512_cvtss_f32(acc[j]);  // keep the chains alive
  return 2.0 * 16 * 16 * static_cast<double>(iterations) / seconds / 1e9;
}
__attribute__((target("avx2,fma"))) inline double fma_peak_avx2(float seed) {
  __m256 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  const __m256 a = _mm256_set1_ps(1.0000001f), b = _mm256_set1_ps(-seed);
  const long iterations = 50000000;
  const auto start = std::chrono::steady_clock::now();
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile float sink = 0;
  for (int j = 0; j < 16; ++j) sink = sink + _mm256_cvtss_f32(acc[j]);
  return 2.0 * 8 * 16 * static_cast<double>(iterations) / seconds / 1e9;
}
#endif

/// GFLOP/s of 16 independent chains of the widest vector FMAs this CPU runs, ~0.2 s.
inline double measure_fma_peak_gflops() {
  volatile float seed = 1e-7f;  // opaque to the optimiser
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return fma_peak_avx512(seed);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return fma_peak_avx2(seed);
#endif
  // Elsewhere: the build's own vectors (GCC/Clang vector extension, 4 floats).
  typedef float Vec __attribute__((vector_size(4 * sizeof(float))));
  Vec acc[16], a, b;
  for (int i = 0; i < 4; ++i) {
    a[i] = 1.0000001f;
    b[i] = -seed;
  }
  for (int j = 0; j < 16; ++j)
    for (int i = 0; i < 4; ++i) acc[j][i] = static_cast<float>(j);
  const long iterations = 50000000;
  const auto start = std::chrono::steady_clock::now();
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = acc[j] * a + b;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sink = 0;
  for (int j = 0; j < 16; ++j) sink += acc[j][0];
  seed = sink;  // keep the chains alive
  return 2.0 * 4 * 16 * static_cast<double>(iterations) / seconds / 1e9;
}

}  // namespace bench
