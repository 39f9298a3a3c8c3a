// dynconv's own float kernels for x86-64 (GEMM, depthwise rows, kernel mixing), AVX-512 and
// AVX2, chosen at run time (isa.hpp): kernel_isa() is the set in use, the best this CPU runs, or
// the one the environment variable DYNCONV_KERNELS names ("avx512", "avx2" or "generic": the
// build's own code, Eigen's GEMM; the tests force each that way).
//
// Each kernel is compiled for its instruction set with a function-level target attribute
// (GCC and Clang), whatever flags the including project uses: a plain `-O2` build without
// `-march` gets the AVX-512 kernel on a CPU that has it. gemm.hpp lists these kernels in its
// table next to Eigen's and picks the best one the CPU supports (the CPUID check is
// __builtin_cpu_supports, which also checks that the OS saves the vector registers).
//
// The product C[m, n] += A[m, k] * B[k, n] (row-major, leading dimensions) is blocked as
// kc rows of B by nc columns: the block of B is packed into panels of NR columns (zero-padded),
// each panel [kc, NR] contiguous; A is not packed (the micro-kernel broadcasts A[i, p] straight
// from A's rows: MR rows of kc values stay in L1 across every panel of the block). The
// micro-kernel keeps an MR x NR tile of C in registers: AVX-512 12 x 32 (24 zmm accumulators),
// AVX2 6 x 16 (12 ymm accumulators); ragged edges run the same loop with fewer rows and masked
// columns. A convolution's epilogue (GemmEpilogue: bias, activation, residual) is applied to
// each output tile right after its last depth block stores it. The batched mixed-kernel product
// mixes the K packed sources into the packed panel (packing is a permutation, so mixing packed
// blocks is mixing kernels); the sources are float, or BF16/F16 experts widened as they are
// read.
#pragma once
#include <dynconv/detail/internal_check.hpp>
#include <dynconv/detail/packing.hpp>

#include <dynconv/activation.hpp>
#include <dynconv/conv_geometry.hpp>
#include <dynconv/runtime.hpp>

#include <dynconv/error.hpp>

#include <dynconv/detail/isa.hpp>

#include <algorithm>
#include <array>
#include <string>
#include <type_traits>

#if DYNCONV_X86_KERNELS
#include <immintrin.h>
#endif

// GCC 12.0-12.2 warns "'__Y' may be used uninitialized" inside its own avx512fintrin.h
// (_mm512_undefined_*) wherever an AVX-512 intrinsic is inlined: false positives, fixed in GCC
// 12.3, that a project compiling with -Wall would otherwise get by the dozen from these kernels.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define DYNCONV_GCC12_DIAGNOSTICS 1
#endif

namespace dynconv {
namespace detail {

/// The taps [begin, end) of a kernel of `kernel` taps at `dilation` whose input coordinate
/// start + tap * dilation falls inside [0, in): the depthwise loops' padding edges.
inline std::array<Index, 2> taps_inside(Index start, Index dilation, Index kernel, Index in) {
  return {std::max<Index>(0, (-start + dilation - 1) / dilation),
          std::min<Index>(kernel, (in - start + dilation - 1) / dilation)};
}

/// An expert's value as T: float and double as they are, BF16/F16 experts (Eigen::bfloat16,
/// Eigen::half) widened, exactly.
template <typename T, typename S>
inline T widen(S s) {
  if constexpr (std::is_same<S, T>::value) return s;
  else return static_cast<T>(static_cast<float>(s));
}

/// A GEMM's epilogue (a convolution's bias, activation and residual), with pointers relative to
/// the product's output C:  C = after(act(A * B + bias) + residual), C's former values not read.
/// bias [n] at C's columns, or null; residual laid out as C (C's leading dimension), or null.
/// sums [n] at C's columns, or null: the column sums of the finished C are added to it (the
/// pooling of a convolution's output into its channel means, PostOps::means).
/// dynconv's kernels apply it to each output tile right after storing it, while it is in L1;
/// Eigen's entry in loops over C after the product.
template <typename T>
struct GemmEpilogue {
  const T* bias = nullptr;
  const T* residual = nullptr;
  Activation act = Activation::Identity;
  Activation after = Activation::Identity;
  double* sums = nullptr;
};

/// ODConv's kernel scales for a mixed-kernel GEMM (mixed_gemm_batch): sample b's mixed kernel
/// [depth, cols] is multiplied at (r, c) by row(b)[r] * col(b)[c] (its spatial and input-channel
/// attentions by row, its filter attention by column). `rows` null: no scaling (DY-Conv, CondConv).
template <typename T>
struct KernelScales {
  const T* rows = nullptr;
  const T* cols = nullptr;
  Index stride = 0;  // from one sample's scales to the next, in both arrays
  explicit operator bool() const { return rows != nullptr; }
  const T* row(Index b) const { return rows + b * stride; }
  const T* col(Index b) const { return cols + b * stride; }
};

/// C[0:rows, 0:cols] = after(act(C) + residual) in plain loops (residual with leading dimension
/// ldc, or null): the activations the kernels do not vectorise, and Eigen's entry.
template <typename T>
void finish_rows(T* c, Index ldc, Index rows, Index cols, Activation act, const T* residual, Activation after) {
  for (Index i = 0; i < rows; ++i) {
    T* o = c + i * ldc;
    with_activation<T>(act, [&](auto f) { map_inplace(o, cols, f); });
    if (residual)
      for (Index j = 0; j < cols; ++j) o[j] += residual[i * ldc + j];
    with_activation<T>(after, [&](auto f) { map_inplace(o, cols, f); });
  }
}

/// sums[j] += the sum of column j of C[0:rows, 0:cols] (leading dimension ldc), j < cols <= W:
/// blocks of 64 rows summed in T (W a compile-time width: the block's sums stay in registers),
/// the blocks' sums added in double. Float sums of 64 values lose about 1e-7 of their size; the
/// double sum of thousands of rows keeps that.
template <Index W, typename T>
inline void add_column_sums_of(const T* c, Index ldc, Index rows, Index cols, double* sums) {
  constexpr Index kBlock = 64;
  for (Index i0 = 0; i0 < rows; i0 += kBlock) {
    const Index i1 = std::min(rows, i0 + kBlock);
    T block[W] = {};
    const T* p = c + i0 * ldc;
    if (cols == W) {
      for (Index i = i0; i < i1; ++i, p += ldc)
        for (Index j = 0; j < W; ++j) block[j] += p[j];
    } else {
      for (Index i = i0; i < i1; ++i, p += ldc)
        for (Index j = 0; j < cols; ++j) block[j] += p[j];
    }
    for (Index j = 0; j < cols; ++j) sums[j] += static_cast<double>(block[j]);
  }
}

/// sums[0:cols] += the column sums of C[0:rows, 0:cols] (leading dimension ldc), 64 columns at a
/// time (add_column_sums_of). Vectorised for the kernel set in use when run inside
/// run_for_kernel_isa.
template <typename T>
void add_column_sums(const T* c, Index ldc, Index rows, Index cols, double* sums) {
  constexpr Index kWidth = 64;
  for (Index j = 0; j < cols; j += kWidth)
    add_column_sums_of<kWidth>(c + j, ldc, rows, std::min(kWidth, cols - j), sums + j);
}

/// The epilogue C = after(act(bias) + residual) of a product with no depth (k = 0).
template <typename T>
void epilogue_only(T* c, Index ldc, Index m, Index n, const GemmEpilogue<T>& ep) {
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) c[i * ldc + j] = ep.bias ? ep.bias[j] : T(0);
  finish_rows(c, ldc, m, n, ep.act, ep.residual, ep.after);
  if (ep.sums) add_column_sums(c, ldc, m, n, ep.sums);
}

#if DYNCONV_X86_KERNELS

/// Cache blocking shared by both kernels: kc rows of B (a panel of kc x NR stays in L1 with
/// MR rows of A), nc columns (the packed block, kc x nc floats, stays in L2).
struct X86Blocking {
  static constexpr Index kc = 256;
  static constexpr Index block_floats = 64 * 1024;  // 256 KiB of packed B
  static Index nc(Index kcur, Index nr) { return std::max<Index>(nr, block_floats / kcur / nr * nr); }
};

/// Packs B[p0 : p0+kcur, j0 : j0+cols] (row-major with ldb, or B^T: B stored [n, k]; float, or
/// BF16/F16 experts widened) into
/// panels of NR columns, panel q at out + q*kcur*NR, zero-padded to whole panels. Inlined into
/// each instruction set's driver; `copy_row(to, from)` copies a whole row of a panel (NR
/// floats) with that set's vector moves: a memcpy per 128 bytes (a call, or `rep movsq` under
/// -march=native) cost a third of a small product's time.
template <Index NR, bool TransposeB, typename S, typename CopyRow>
inline __attribute__((always_inline)) void x86_pack_b(const S* b, Index ldb, Index p0, Index kcur, Index j0,
                                                      Index cols, float* out, CopyRow copy_row) {
  for (Index q = 0; q * NR < cols; ++q) {
    const Index jq = j0 + q * NR, w = std::min(NR, cols - q * NR);
    float* panel = out + q * kcur * NR;
    if (!TransposeB && w == NR) {
      for (Index p = 0; p < kcur; ++p) copy_row(panel + p * NR, b + (p0 + p) * ldb + jq);
      continue;
    }
    for (Index p = 0; p < kcur; ++p) {
      float* row = panel + p * NR;
      if (!TransposeB) {
        for (Index j = 0; j < w; ++j) row[j] = widen<float>(b[(p0 + p) * ldb + jq + j]);
      } else {
        for (Index j = 0; j < w; ++j) row[j] = widen<float>(b[(jq + j) * ldb + p0 + p]);
      }
      for (Index j = w; j < NR; ++j) row[j] = 0.f;
    }
  }
}

/// Rows per tile when m rows are cut into tiles of at most `mr`: as even as possible (49 rows
/// with mr = 12 make 5 tiles of 10 and 9, not 4 of 12 and a slow one of 1).
inline Index balanced_rows(Index m, Index mr) {
  const Index tiles = (m + mr - 1) / mr;
  return (m + tiles - 1) / tiles;
}

/// How a micro-kernel stores its tile: `overwrite` (the first depth block of a product with an
/// epilogue) C = acc + bias, else C += acc; `finish` (the last depth block) then applies the
/// epilogue's activation, residual (at the tile's origin, leading dimension ldc) and final
/// activation: vectorised for the piecewise-linear activations, else finish_rows on the tile;
/// either way on the tile just stored, in L1 (avx512_tile_ends).
struct TileEnds {
  bool overwrite = false, finish = false;
  const float* bias = nullptr;      // at the tile's first column, or null
  const float* residual = nullptr;  // at the tile's origin, or null
  Activation act = Activation::Identity, after = Activation::Identity;
  double* sums = nullptr;  // at the tile's first column, or null: finishing adds the tile's column sums
};

/// The ends of the tile at row i, column col of a product with epilogue ep (or none).
inline TileEnds tile_ends(const GemmEpilogue<float>* ep, bool first, bool last, Index i, Index col, Index ldc) {
  if (!ep) return {};
  return {first, last, ep->bias ? ep->bias + col : nullptr, ep->residual ? ep->residual + i * ldc + col : nullptr,
          ep->act, ep->after, ep->sums ? ep->sums + col : nullptr};
}

/// Whether the kernels' tile epilogue vectorises activation a (the piecewise-linear ones).
inline bool activation_vectorised(Activation a) {
  return a == Activation::Identity || a == Activation::ReLU || a == Activation::ReLU6 ||
         a == Activation::HardSigmoid || a == Activation::HardSwish;
}

// ---- AVX-512: 12 x 32 --------------------------------------------------------------------------

/// The mask of the first min(n, 16) lanes.
inline __mmask16 lanes16(Index n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFFu : (1u << n) - 1u); }

/// activation a of v (one of activation_vectorised), as activation.hpp defines it; NaN stays
/// NaN (max/min return their second operand for NaN).
DYNCONV_TARGET_AVX512 inline __m512 avx512_activate(Activation a, __m512 v) {
  const __m512 zero = _mm512_setzero_ps(), three = _mm512_set1_ps(3.f), six = _mm512_set1_ps(6.f);
  switch (a) {
    case Activation::ReLU: return _mm512_max_ps(zero, v);
    case Activation::ReLU6: return _mm512_min_ps(six, _mm512_max_ps(zero, v));
    case Activation::HardSigmoid:
      return _mm512_div_ps(_mm512_min_ps(six, _mm512_max_ps(zero, _mm512_add_ps(v, three))), six);
    case Activation::HardSwish:
      return _mm512_div_ps(_mm512_mul_ps(v, _mm512_min_ps(six, _mm512_max_ps(zero, _mm512_add_ps(v, three)))), six);
    default: return v;
  }
}

/// sums[l] += v[l] in double for the lanes of m.
DYNCONV_TARGET_AVX512 inline void avx512_add_sums(__m512 v, __mmask16 m, double* sums) {
  const __mmask8 lo = static_cast<__mmask8>(m & 0xFFu), hi = static_cast<__mmask8>(m >> 8);
  const __m512d a0 = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d a1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  _mm512_mask_storeu_pd(sums, lo, _mm512_add_pd(_mm512_maskz_loadu_pd(lo, sums), a0));
  _mm512_mask_storeu_pd(sums + 8, hi, _mm512_add_pd(_mm512_maskz_loadu_pd(hi, sums + 8), a1));
}

/// sums[0:cols] += the column sums of finished rows C[0:rows, 0:cols] (a tile, or a depthwise
/// row of pixels; in L1): the rows added in float, in two chains, then widened and added in double.
DYNCONV_TARGET_AVX512 inline void avx512_tile_sums(const float* c, Index ldc, Index rows, Index cols, double* sums) {
  for (Index j = 0; j < cols; j += 16) {
    const __mmask16 m = lanes16(cols - j);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    Index i = 0;
    for (; i + 2 <= rows; i += 2) {
      s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(m, c + i * ldc + j));
      s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(m, c + (i + 1) * ldc + j));
    }
    if (i < rows) s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(m, c + i * ldc + j));
    avx512_add_sums(_mm512_add_ps(s0, s1), m, sums + j);
  }
}

/// avx512_tile_ends with the activation a compile-time constant (no switch in the loop) and the
/// final activation Identity or ReLU.
template <Activation A>
DYNCONV_TARGET_AVX512 inline void avx512_tile_ends_as(float* c, Index ldc, Index rows, Index cols, const TileEnds& e) {
  const bool bias = e.overwrite && e.bias, finish = e.finish, sums = finish && e.sums;
  const float* residual = e.residual;
  const bool relu_after = e.after == Activation::ReLU;
  for (Index j = 0; j < cols; j += 16) {
    const __mmask16 m = lanes16(cols - j);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(m, e.bias + j) : _mm512_setzero_ps();
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;  // two chains of the column sums
    for (Index i = 0; i < rows; ++i) {
      float* o = c + i * ldc + j;
      __m512 v = _mm512_maskz_loadu_ps(m, o);
      if (bias) v = _mm512_add_ps(v, b);
      if (finish) {
        v = avx512_activate(A, v);
        if (residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, residual + i * ldc + j));
        if (relu_after) v = _mm512_max_ps(_mm512_setzero_ps(), v);
      }
      _mm512_mask_storeu_ps(o, m, v);
      if (sums) {
        if (i & 1) s1 = _mm512_add_ps(s1, v);
        else s0 = _mm512_add_ps(s0, v);
      }
    }
    if (sums) avx512_add_sums(_mm512_add_ps(s0, s1), m, e.sums + j);
  }
}
/// The rest of TileEnds on a stored tile C[0:rows, 0:cols] (in L1): + bias when overwriting,
/// then when finishing act, + residual, after, and the column sums. A call of its own after the
/// micro-kernel's stores: done inside it, the extra vectors made GCC spill accumulators in the
/// depth loop (measured 10-20% slower models).
DYNCONV_TARGET_AVX512 __attribute__((noinline)) inline void avx512_tile_ends(float* c, Index ldc, Index rows,
                                                                             Index cols, const TileEnds& e) {
  const bool vector = activation_vectorised(e.act) &&
                      (e.after == Activation::Identity || e.after == Activation::ReLU);
  if (!e.finish || !vector) {
    if (e.overwrite && e.bias) avx512_tile_ends_as<Activation::Identity>(c, ldc, rows, cols, TileEnds{true, false, e.bias});
    if (e.finish) finish_rows(c, ldc, rows, cols, e.act, e.residual, e.after);
  } else {
    switch (e.act) {
      case Activation::ReLU: avx512_tile_ends_as<Activation::ReLU>(c, ldc, rows, cols, e); break;
      case Activation::ReLU6: avx512_tile_ends_as<Activation::ReLU6>(c, ldc, rows, cols, e); break;
      case Activation::HardSigmoid: avx512_tile_ends_as<Activation::HardSigmoid>(c, ldc, rows, cols, e); break;
      case Activation::HardSwish: avx512_tile_ends_as<Activation::HardSwish>(c, ldc, rows, cols, e); break;
      default: avx512_tile_ends_as<Activation::Identity>(c, ldc, rows, cols, e); break;
    }
  }
  if (e.finish && e.sums && !vector) avx512_tile_sums(c, ldc, rows, cols, e.sums);  // else summed as finished
}

/// C[0:MR, 0:cols] += A[0:MR, 0:kc] * panel (kc x 32), cols <= 32 (masked beyond).
// The micro-kernels name each accumulator (DYNCONV_X86_ROWS expands a step once per row, the
// rows beyond MR compiled away): GCC keeps an array of accumulators in memory, storing it on
// every step of the depth loop.
#define DYNCONV_X86_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

/// C[0:MR, 0:cols] += A[0:MR, 0:kc] * panel (kc x 32), cols <= 32 (masked beyond); with
/// NV = 1 only the panel's first 16 columns are read (cols <= 16).
template <int MR, int NV = 2>
DYNCONV_TARGET_AVX512 inline void avx512_tile(Index kc, const float* a, Index lda, const float* panel, float* c,
                                              Index ldc, Index cols, const TileEnds& e) {
  static_assert(MR >= 1 && MR <= 12 && (NV == 1 || NV == 2), "avx512_tile: 1 to 12 rows, 1 or 2 vectors");
#define DYNCONV_DECLARE(i) __m512 acc##i##_0 = _mm512_setzero_ps(), acc##i##_1 = acc##i##_0;
#define DYNCONV_STEP(i)                                        \
  if constexpr (MR > i) {                                      \
    const __m512 ai = _mm512_set1_ps(a[i * lda + p]);          \
    acc##i##_0 = _mm512_fmadd_ps(ai, b0, acc##i##_0);          \
    if constexpr (NV == 2) acc##i##_1 = _mm512_fmadd_ps(ai, b1, acc##i##_1); \
  }
#define DYNCONV_STORE(i)                                                                          \
  if constexpr (MR > i) {                                                                         \
    float* ci = c + i * ldc;                                                                      \
    _mm512_mask_storeu_ps(ci, m0, e.overwrite ? acc##i##_0 : _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), acc##i##_0)); \
    if constexpr (NV == 2)                                                                        \
      _mm512_mask_storeu_ps(ci + 16, m1,                                                          \
                            e.overwrite ? acc##i##_1 : _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), acc##i##_1)); \
  }
  DYNCONV_X86_ROWS(DYNCONV_DECLARE)
  for (Index p = 0; p < kc; ++p) {
    const __m512 b0 = _mm512_load_ps(panel + p * 32);
    const __m512 b1 = NV == 2 ? _mm512_load_ps(panel + p * 32 + 16) : b0;
    DYNCONV_X86_ROWS(DYNCONV_STEP)
  }
  const __mmask16 m0 = lanes16(cols), m1 = cols <= 16 ? __mmask16(0) : lanes16(cols - 16);
  DYNCONV_X86_ROWS(DYNCONV_STORE)
  if ((e.overwrite && e.bias) || e.finish) avx512_tile_ends(c, ldc, MR, cols, e);
#undef DYNCONV_DECLARE
#undef DYNCONV_STEP
#undef DYNCONV_STORE
}

/// avx512_tile for `rows` (1 to 12) rows, one vector when the panel is at most 16 wide.
DYNCONV_TARGET_AVX512 inline void avx512_tile_rows(Index rows, Index kc, const float* a, Index lda,
                                                   const float* panel, float* c, Index ldc, Index cols,
                                                   const TileEnds& e) {
#define DYNCONV_CASE(r)                                                                   \
  case r + 1:                                                                             \
    return cols > 16 ? avx512_tile<r + 1, 2>(kc, a, lda, panel, c, ldc, cols, e)          \
                     : avx512_tile<r + 1, 1>(kc, a, lda, panel, c, ldc, cols, e);
  switch (rows) { DYNCONV_X86_ROWS(DYNCONV_CASE) }
#undef DYNCONV_CASE
}

/// Every row of A (m rows) against every panel of a packed block of `cols` columns; with an
/// epilogue, the first depth block (`first`) overwrites C and the last (`last`) finishes it (the
/// block's first column is column col0 of the product).
DYNCONV_TARGET_AVX512 inline void avx512_block(Index m, Index kcur, const float* a, Index lda, const float* packed,
                                               Index cols, float* c, Index ldc,
                                               const GemmEpilogue<float>* ep = nullptr, bool first = false,
                                               bool last = false, Index col0 = 0) {
  const Index mr = balanced_rows(m, 12);
  for (Index i = 0; i < m; i += mr)
    for (Index q = 0; q * 32 < cols; ++q)
      avx512_tile_rows(std::min(mr, m - i), kcur, a + i * lda, lda, packed + q * kcur * 32, c + i * ldc + q * 32, ldc,
                       std::min<Index>(32, cols - q * 32), tile_ends(ep, first, last, i, col0 + q * 32, ldc));
}

// ---- AVX2: 6 x 16 ------------------------------------------------------------------------------

/// The AVX2 twin of avx512_activate.
DYNCONV_TARGET_AVX2 inline __m256 avx2_activate(Activation a, __m256 v) {
  const __m256 zero = _mm256_setzero_ps(), three = _mm256_set1_ps(3.f), six = _mm256_set1_ps(6.f);
  switch (a) {
    case Activation::ReLU: return _mm256_max_ps(zero, v);
    case Activation::ReLU6: return _mm256_min_ps(six, _mm256_max_ps(zero, v));
    case Activation::HardSigmoid:
      return _mm256_div_ps(_mm256_min_ps(six, _mm256_max_ps(zero, _mm256_add_ps(v, three))), six);
    case Activation::HardSwish:
      return _mm256_div_ps(_mm256_mul_ps(v, _mm256_min_ps(six, _mm256_max_ps(zero, _mm256_add_ps(v, three)))), six);
    default: return v;
  }
}

/// The AVX2 twin of avx512_add_sums: the first `lanes` (1 to 8) lanes.
DYNCONV_TARGET_AVX2 inline void avx2_add_sums(__m256 v, Index lanes, double* sums) {
  if (lanes == 8) {
    _mm256_storeu_pd(sums, _mm256_add_pd(_mm256_loadu_pd(sums), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
    _mm256_storeu_pd(sums + 4, _mm256_add_pd(_mm256_loadu_pd(sums + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
    return;
  }
  alignas(32) float each[8];
  _mm256_store_ps(each, v);
  for (Index l = 0; l < lanes; ++l) sums[l] += static_cast<double>(each[l]);
}
/// The AVX2 twin of avx512_tile_sums.
DYNCONV_TARGET_AVX2 inline void avx2_tile_sums(const float* c, Index ldc, Index rows, Index cols, double* sums) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (Index j = 0; j < cols; j += 8) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols - j)), lane);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    Index i = 0;
    for (; i + 2 <= rows; i += 2) {
      s0 = _mm256_add_ps(s0, _mm256_maskload_ps(c + i * ldc + j, m));
      s1 = _mm256_add_ps(s1, _mm256_maskload_ps(c + (i + 1) * ldc + j, m));
    }
    if (i < rows) s0 = _mm256_add_ps(s0, _mm256_maskload_ps(c + i * ldc + j, m));
    avx2_add_sums(_mm256_add_ps(s0, s1), std::min<Index>(8, cols - j), sums + j);
  }
}
/// The AVX2 twin of avx512_tile_ends_as.
template <Activation A>
DYNCONV_TARGET_AVX2 inline void avx2_tile_ends_as(float* c, Index ldc, Index rows, Index cols, const TileEnds& e) {
  const bool bias = e.overwrite && e.bias, finish = e.finish, sums = finish && e.sums;
  const float* residual = e.residual;
  const bool relu_after = e.after == Activation::ReLU;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (Index j = 0; j < cols; j += 8) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols - j)), lane);
    const __m256 b = bias ? _mm256_maskload_ps(e.bias + j, m) : _mm256_setzero_ps();
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (Index i = 0; i < rows; ++i) {
      float* o = c + i * ldc + j;
      __m256 v = _mm256_maskload_ps(o, m);
      if (bias) v = _mm256_add_ps(v, b);
      if (finish) {
        v = avx2_activate(A, v);
        if (residual) v = _mm256_add_ps(v, _mm256_maskload_ps(residual + i * ldc + j, m));
        if (relu_after) v = _mm256_max_ps(_mm256_setzero_ps(), v);
      }
      _mm256_maskstore_ps(o, m, v);
      if (sums) {
        if (i & 1) s1 = _mm256_add_ps(s1, v);
        else s0 = _mm256_add_ps(s0, v);
      }
    }
    if (sums) avx2_add_sums(_mm256_add_ps(s0, s1), std::min<Index>(8, cols - j), e.sums + j);
  }
}
/// The AVX2 twin of avx512_tile_ends.
DYNCONV_TARGET_AVX2 __attribute__((noinline)) inline void avx2_tile_ends(float* c, Index ldc, Index rows, Index cols,
                                                                         const TileEnds& e) {
  const bool vector = activation_vectorised(e.act) &&
                      (e.after == Activation::Identity || e.after == Activation::ReLU);
  if (!e.finish || !vector) {
    if (e.overwrite && e.bias) avx2_tile_ends_as<Activation::Identity>(c, ldc, rows, cols, TileEnds{true, false, e.bias});
    if (e.finish) finish_rows(c, ldc, rows, cols, e.act, e.residual, e.after);
  } else {
    switch (e.act) {
      case Activation::ReLU: avx2_tile_ends_as<Activation::ReLU>(c, ldc, rows, cols, e); break;
      case Activation::ReLU6: avx2_tile_ends_as<Activation::ReLU6>(c, ldc, rows, cols, e); break;
      case Activation::HardSigmoid: avx2_tile_ends_as<Activation::HardSigmoid>(c, ldc, rows, cols, e); break;
      case Activation::HardSwish: avx2_tile_ends_as<Activation::HardSwish>(c, ldc, rows, cols, e); break;
      default: avx2_tile_ends_as<Activation::Identity>(c, ldc, rows, cols, e); break;
    }
  }
  if (e.finish && e.sums && !vector) avx2_tile_sums(c, ldc, rows, cols, e.sums);  // else summed as finished
}

/// C[0:MR, 0:cols] += A[0:MR, 0:kc] * panel (kc x 16), cols <= 16 (masked beyond), stored as
/// e says (TileEnds).
template <int MR>
DYNCONV_TARGET_AVX2 inline void avx2_tile(Index kc, const float* a, Index lda, const float* panel, float* c,
                                          Index ldc, Index cols, const TileEnds& e) {
  static_assert(MR >= 1 && MR <= 6, "avx2_tile: 1 to 6 rows");
#define DYNCONV_DECLARE(i) __m256 acc##i##_0 = _mm256_setzero_ps(), acc##i##_1 = acc##i##_0;
#define DYNCONV_STEP(i)                                        \
  if constexpr (MR > i) {                                      \
    const __m256 ai = _mm256_broadcast_ss(a + i * lda + p);    \
    acc##i##_0 = _mm256_fmadd_ps(ai, b0, acc##i##_0);          \
    acc##i##_1 = _mm256_fmadd_ps(ai, b1, acc##i##_1);          \
  }
#define DYNCONV_STORE(i)                                                                          \
  if constexpr (MR > i) {                                                                         \
    float* ci = c + i * ldc;                                                                      \
    _mm256_maskstore_ps(ci, m0, e.overwrite ? acc##i##_0 : _mm256_add_ps(_mm256_maskload_ps(ci, m0), acc##i##_0)); \
    _mm256_maskstore_ps(ci + 8, m1,                                                               \
                        e.overwrite ? acc##i##_1 : _mm256_add_ps(_mm256_maskload_ps(ci + 8, m1), acc##i##_1)); \
  }
  DYNCONV_X86_ROWS(DYNCONV_DECLARE)
  for (Index p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(panel + p * 16), b1 = _mm256_load_ps(panel + p * 16 + 8);
    DYNCONV_X86_ROWS(DYNCONV_STEP)
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols)), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols) - 8), lane);
  DYNCONV_X86_ROWS(DYNCONV_STORE)
  if ((e.overwrite && e.bias) || e.finish) avx2_tile_ends(c, ldc, MR, cols, e);
#undef DYNCONV_DECLARE
#undef DYNCONV_STEP
#undef DYNCONV_STORE
}

/// avx2_tile for `rows` (1 to 6) rows.
DYNCONV_TARGET_AVX2 inline void avx2_tile_rows(Index rows, Index kc, const float* a, Index lda, const float* panel,
                                               float* c, Index ldc, Index cols, const TileEnds& e) {
  switch (rows) {
    case 1: return avx2_tile<1>(kc, a, lda, panel, c, ldc, cols, e);
    case 2: return avx2_tile<2>(kc, a, lda, panel, c, ldc, cols, e);
    case 3: return avx2_tile<3>(kc, a, lda, panel, c, ldc, cols, e);
    case 4: return avx2_tile<4>(kc, a, lda, panel, c, ldc, cols, e);
    case 5: return avx2_tile<5>(kc, a, lda, panel, c, ldc, cols, e);
    default: return avx2_tile<6>(kc, a, lda, panel, c, ldc, cols, e);
  }
}

/// Every row of A (m rows) against every panel of a packed block of `cols` columns.
DYNCONV_TARGET_AVX2 inline void avx2_block(Index m, Index kcur, const float* a, Index lda, const float* packed,
                                           Index cols, float* c, Index ldc, const GemmEpilogue<float>* ep = nullptr,
                                           bool first = false, bool last = false, Index col0 = 0) {
  const Index mr = balanced_rows(m, 6);
  for (Index i = 0; i < m; i += mr)
    for (Index q = 0; q * 16 < cols; ++q)
      avx2_tile_rows(std::min(mr, m - i), kcur, a + i * lda, lda, packed + q * kcur * 16, c + i * ldc + q * 16, ldc,
                     std::min<Index>(16, cols - q * 16), tile_ends(ep, first, last, i, col0 + q * 16, ldc));
}

// ---- depthwise rows and kernel mixing (NHWC, vectorised across channels) -----------------------


/// One output row r of a depthwise convolution, channels [c0, c1): out[c, ch] = bias[ch] +
/// sum over the taps inside the image of x * kernel (kernel at tap 0, channel c0, tap stride
/// ldk; bias null for none). Four vectors of channels per step, then one, then a masked tail.
DYNCONV_TARGET_AVX512 inline void avx512_depthwise_row(const ConvGeometry& g, const float* x, Index in_h, Index in_w,
                                                       const float* kernel, Index ldk, Index r, Index c0, Index c1,
                                                       const float* bias, float* y) {
  const Index ow = g.out_w(in_w), ch = g.out_channels;
  const Index ih0 = r * g.stride_h - g.pad_h;
  const auto [i_begin, i_end] = taps_inside(ih0, g.dilation_h, g.kernel_h, in_h);
  for (Index c = 0; c < ow; ++c) {
    const Index iw0 = c * g.stride_w - g.pad_w;
    const auto [j_begin, j_end] = taps_inside(iw0, g.dilation_w, g.kernel_w, in_w);
    float* out = y + (r * ow + c) * ch;
    Index cb = c0;
    for (; cb + 64 <= c1; cb += 64) {
      __m512 a0 = bias ? _mm512_loadu_ps(bias + cb) : _mm512_setzero_ps();
      __m512 a1 = bias ? _mm512_loadu_ps(bias + cb + 16) : _mm512_setzero_ps();
      __m512 a2 = bias ? _mm512_loadu_ps(bias + cb + 32) : _mm512_setzero_ps();
      __m512 a3 = bias ? _mm512_loadu_ps(bias + cb + 48) : _mm512_setzero_ps();
      for (Index i = i_begin; i < i_end; ++i)
        for (Index j = j_begin; j < j_end; ++j) {
          const float* in = x + ((ih0 + i * g.dilation_h) * in_w + iw0 + j * g.dilation_w) * ch + cb;
          const float* w = kernel + (i * g.kernel_w + j) * ldk + (cb - c0);
          a0 = _mm512_fmadd_ps(_mm512_loadu_ps(in), _mm512_loadu_ps(w), a0);
          a1 = _mm512_fmadd_ps(_mm512_loadu_ps(in + 16), _mm512_loadu_ps(w + 16), a1);
          a2 = _mm512_fmadd_ps(_mm512_loadu_ps(in + 32), _mm512_loadu_ps(w + 32), a2);
          a3 = _mm512_fmadd_ps(_mm512_loadu_ps(in + 48), _mm512_loadu_ps(w + 48), a3);
        }
      _mm512_storeu_ps(out + cb, a0);
      _mm512_storeu_ps(out + cb + 16, a1);
      _mm512_storeu_ps(out + cb + 32, a2);
      _mm512_storeu_ps(out + cb + 48, a3);
    }
    for (; cb < c1; cb += 16) {
      const __mmask16 m = static_cast<__mmask16>(c1 - cb >= 16 ? 0xFFFFu : (1u << (c1 - cb)) - 1u);
      __m512 a = bias ? _mm512_maskz_loadu_ps(m, bias + cb) : _mm512_setzero_ps();
      for (Index i = i_begin; i < i_end; ++i)
        for (Index j = j_begin; j < j_end; ++j)
          a = _mm512_fmadd_ps(
              _mm512_maskz_loadu_ps(m, x + ((ih0 + i * g.dilation_h) * in_w + iw0 + j * g.dilation_w) * ch + cb),
              _mm512_maskz_loadu_ps(m, kernel + (i * g.kernel_w + j) * ldk + (cb - c0)), a);
      _mm512_mask_storeu_ps(out + cb, m, a);
    }
  }
}

/// The AVX2 twin of avx512_depthwise_row (four vectors of 8 channels, one, a masked tail).
DYNCONV_TARGET_AVX2 inline void avx2_depthwise_row(const ConvGeometry& g, const float* x, Index in_h, Index in_w,
                                                   const float* kernel, Index ldk, Index r, Index c0, Index c1,
                                                   const float* bias, float* y) {
  const Index ow = g.out_w(in_w), ch = g.out_channels;
  const Index ih0 = r * g.stride_h - g.pad_h;
  const auto [i_begin, i_end] = taps_inside(ih0, g.dilation_h, g.kernel_h, in_h);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (Index c = 0; c < ow; ++c) {
    const Index iw0 = c * g.stride_w - g.pad_w;
    const auto [j_begin, j_end] = taps_inside(iw0, g.dilation_w, g.kernel_w, in_w);
    float* out = y + (r * ow + c) * ch;
    Index cb = c0;
    for (; cb + 32 <= c1; cb += 32) {
      __m256 a0 = bias ? _mm256_loadu_ps(bias + cb) : _mm256_setzero_ps();
      __m256 a1 = bias ? _mm256_loadu_ps(bias + cb + 8) : _mm256_setzero_ps();
      __m256 a2 = bias ? _mm256_loadu_ps(bias + cb + 16) : _mm256_setzero_ps();
      __m256 a3 = bias ? _mm256_loadu_ps(bias + cb + 24) : _mm256_setzero_ps();
      for (Index i = i_begin; i < i_end; ++i)
        for (Index j = j_begin; j < j_end; ++j) {
          const float* in = x + ((ih0 + i * g.dilation_h) * in_w + iw0 + j * g.dilation_w) * ch + cb;
          const float* w = kernel + (i * g.kernel_w + j) * ldk + (cb - c0);
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(in), _mm256_loadu_ps(w), a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(in + 8), _mm256_loadu_ps(w + 8), a1);
          a2 = _mm256_fmadd_ps(_mm256_loadu_ps(in + 16), _mm256_loadu_ps(w + 16), a2);
          a3 = _mm256_fmadd_ps(_mm256_loadu_ps(in + 24), _mm256_loadu_ps(w + 24), a3);
        }
      _mm256_storeu_ps(out + cb, a0);
      _mm256_storeu_ps(out + cb + 8, a1);
      _mm256_storeu_ps(out + cb + 16, a2);
      _mm256_storeu_ps(out + cb + 24, a3);
    }
    for (; cb < c1; cb += 8) {
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(c1 - cb)), lane);
      __m256 a = bias ? _mm256_maskload_ps(bias + cb, m) : _mm256_setzero_ps();
      for (Index i = i_begin; i < i_end; ++i)
        for (Index j = j_begin; j < j_end; ++j)
          a = _mm256_fmadd_ps(
              _mm256_maskload_ps(x + ((ih0 + i * g.dilation_h) * in_w + iw0 + j * g.dilation_w) * ch + cb, m),
              _mm256_maskload_ps(kernel + (i * g.kernel_w + j) * ldk + (cb - c0), m), a);
      _mm256_maskstore_ps(out + cb, m, a);
    }
  }
}

// Source loads: float, or BF16/F16 experts widened to float in the register (BF16 is the
// upper half of a float; F16 through the F16C/AVX-512 conversion).

/// 16 values at p, the lanes outside m zero (masked: nothing outside m is read).
DYNCONV_TARGET_AVX512 inline __m512 avx512_load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
DYNCONV_TARGET_AVX512 inline __m512 avx512_load(const Eigen::half* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
DYNCONV_TARGET_AVX512 inline __m512 avx512_load(const Eigen::bfloat16* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

/// 8 values at p (8 or more readable), and the first n < 8 of them, zeros after (avx2_load_tail
/// reads nothing beyond p + n).
DYNCONV_TARGET_AVX2 inline __m256 avx2_load(const float* p) { return _mm256_loadu_ps(p); }
DYNCONV_TARGET_AVX2 inline __m256 avx2_load(const Eigen::half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
DYNCONV_TARGET_AVX2 inline __m256 avx2_load(const Eigen::bfloat16* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
DYNCONV_TARGET_AVX2 inline __m256 avx2_load_tail(const float* p, Index n) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane));
}
template <typename S>
DYNCONV_TARGET_AVX2 inline __m256 avx2_load_tail(const S* p, Index n) {
  S part[8] = {};
  std::copy(p, p + n, part);
  return avx2_load(part);
}
/// 8 values at p when n >= 8 are readable, else the first n.
template <typename S>
DYNCONV_TARGET_AVX2 inline __m256 avx2_load(const S* p, Index n) {
  return n >= 8 ? avx2_load(p) : avx2_load_tail(p, n);
}

/// o[r, 0:len] = sum_k pi[k] * s_k[r, 0:len] (s_k = src + k*stride, row strides ls and lo),
/// unaligned, any len, float or BF16/F16 sources: mix()'s float kernel.
template <typename S>
DYNCONV_TARGET_AVX512 inline void avx512_mix_rows(const S* src, Index stride, Index kernels, const float* pi,
                                                  Index rows, Index len, Index ls, float* o, Index lo) {
  for (Index r = 0; r < rows; ++r) {
    const S* s = src + r * ls;
    float* out = o + r * lo;
    for (Index i = 0; i < len; i += 16) {
      const __mmask16 m = lanes16(len - i);
      __m512 acc = _mm512_mul_ps(_mm512_set1_ps(pi[0]), avx512_load(s + i, m));
      for (Index k = 1; k < kernels; ++k)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(pi[k]), avx512_load(s + k * stride + i, m), acc);
      _mm512_mask_storeu_ps(out + i, m, acc);
    }
  }
}

/// The AVX2 twin of avx512_mix_rows.
template <typename S>
DYNCONV_TARGET_AVX2 inline void avx2_mix_rows(const S* src, Index stride, Index kernels, const float* pi,
                                              Index rows, Index len, Index ls, float* o, Index lo) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (Index r = 0; r < rows; ++r) {
    const S* s = src + r * ls;
    float* out = o + r * lo;
    Index i = 0;
    for (; i + 8 <= len; i += 8) {
      __m256 acc = _mm256_mul_ps(_mm256_set1_ps(pi[0]), avx2_load(s + i));
      for (Index k = 1; k < kernels; ++k)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(pi[k]), avx2_load(s + k * stride + i), acc);
      _mm256_storeu_ps(out + i, acc);
    }
    if (i < len) {
      __m256 acc = _mm256_mul_ps(_mm256_set1_ps(pi[0]), avx2_load_tail(s + i, len - i));
      for (Index k = 1; k < kernels; ++k)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(pi[k]), avx2_load_tail(s + k * stride + i, len - i), acc);
      _mm256_maskstore_ps(out + i, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(len - i)), lane), acc);
    }
  }
}

/// y[b * ldy + o] = bias[o] + W[o, :] . x[b * ldx + :] for o in [0, rows), b in [0, n) (W
/// row-major with ldw; bias may be null): the dense layers' and attentions' products for a few
/// samples, four rows of W at a time against each sample in turn, so that W crosses the memory
/// bus once for the batch (its four rows are in L1 for the samples after the first). A GEMM
/// would pack W^T per call: a gather of every value.
DYNCONV_TARGET_AVX512 inline void avx512_gemv(Index rows, Index cols, const float* w, Index ldw, const float* x,
                                              Index ldx, Index n, const float* bias, float* y, Index ldy) {
  Index o = 0;
  for (; o + 4 <= rows; o += 4) {
    const float* w0 = w + o * ldw;
    for (Index b = 0; b < n; ++b) {
      const float* xb = x + b * ldx;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (Index i = 0; i < cols; i += 16) {
        const __mmask16 m = static_cast<__mmask16>(cols - i >= 16 ? 0xFFFFu : (1u << (cols - i)) - 1u);
        const __m512 xv = _mm512_maskz_loadu_ps(m, xb + i);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + i), xv, a0);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + ldw + i), xv, a1);
        a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + 2 * ldw + i), xv, a2);
        a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + 3 * ldw + i), xv, a3);
      }
      float* yb = y + b * ldy;
      yb[o] = (bias ? bias[o] : 0.f) + _mm512_reduce_add_ps(a0);
      yb[o + 1] = (bias ? bias[o + 1] : 0.f) + _mm512_reduce_add_ps(a1);
      yb[o + 2] = (bias ? bias[o + 2] : 0.f) + _mm512_reduce_add_ps(a2);
      yb[o + 3] = (bias ? bias[o + 3] : 0.f) + _mm512_reduce_add_ps(a3);
    }
  }
  for (; o < rows; ++o)
    for (Index b = 0; b < n; ++b) {
      __m512 a = _mm512_setzero_ps();
      for (Index i = 0; i < cols; i += 16) {
        const __mmask16 m = static_cast<__mmask16>(cols - i >= 16 ? 0xFFFFu : (1u << (cols - i)) - 1u);
        a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + o * ldw + i), _mm512_maskz_loadu_ps(m, x + b * ldx + i), a);
      }
      y[b * ldy + o] = (bias ? bias[o] : 0.f) + _mm512_reduce_add_ps(a);
    }
}

/// Horizontal sum of 8 floats.
DYNCONV_TARGET_AVX2 inline float avx2_sum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/// The AVX2 twin of avx512_gemv (one row of W at a time against each sample in turn).
DYNCONV_TARGET_AVX2 inline void avx2_gemv(Index rows, Index cols, const float* w, Index ldw, const float* x,
                                          Index ldx, Index n, const float* bias, float* y, Index ldy) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (Index o = 0; o < rows; ++o) {
    const float* wo = w + o * ldw;
    for (Index b = 0; b < n; ++b) {
      const float* xb = x + b * ldx;
      __m256 a = _mm256_setzero_ps(), c = a;
      Index i = 0;
      for (; i + 16 <= cols; i += 16) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(wo + i), _mm256_loadu_ps(xb + i), a);
        c = _mm256_fmadd_ps(_mm256_loadu_ps(wo + i + 8), _mm256_loadu_ps(xb + i + 8), c);
      }
      for (; i < cols; i += 8) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols - i)), lane);
        a = _mm256_fmadd_ps(_mm256_maskload_ps(wo + i, m), _mm256_maskload_ps(xb + i, m), a);
      }
      y[b * ldy + o] = (bias ? bias[o] : 0.f) + avx2_sum(_mm256_add_ps(a, c));
    }
  }
}

// ---- drivers (one per instruction set, the kernel a policy) -------------------------------------

struct X86Avx512 {
  static constexpr Index nr = 32;
  template <bool TransposeB, typename S>
  DYNCONV_TARGET_AVX512 static void pack(const S* b, Index ldb, Index p0, Index kcur, Index j0, Index cols,
                                         float* out) {
    x86_pack_b<32, TransposeB>(b, ldb, p0, kcur, j0, cols, out, CopyRow());
  }
  struct CopyRow {  // a functor, not a lambda: a lambda has no target attribute
    template <typename S>
    DYNCONV_TARGET_AVX512 void operator()(float* to, const S* from) const {
      _mm512_store_ps(to, avx512_load(from, 0xFFFF));
      _mm512_store_ps(to + 16, avx512_load(from + 16, 0xFFFF));
    }
  };
  DYNCONV_TARGET_AVX512 static void block(Index m, Index kcur, const float* a, Index lda, const float* packed,
                                          Index cols, float* c, Index ldc, const GemmEpilogue<float>* ep = nullptr,
                                          bool first = false, bool last = false, Index col0 = 0) {
    avx512_block(m, kcur, a, lda, packed, cols, c, ldc, ep, first, last, col0);
  }
  /// pack() of the mixed kernel sum_k pi[k] W_k (W_k = src + k*stride, row-major with ldb) in
  /// one pass over the K sources: each source value read once, each mixed value written once.
  template <typename S>
  DYNCONV_TARGET_AVX512 static void mix_pack(const S* src, Index stride, Index kernels, const float* pi,
                                             Index ldb, Index p0, Index kcur, Index j0, Index cols, float* out) {
    // Row by row of the sources (each row's columns [j0, j0 + cols) read in order, which the
    // hardware prefetchers follow), panel by panel within the row.
    for (Index p = 0; p < kcur; ++p) {
      const S* row = src + (p0 + p) * ldb + j0;
      for (Index q = 0; q * 32 < cols; ++q) {
        const Index w = std::min<Index>(32, cols - q * 32);
        const __mmask16 m0 = lanes16(w), m1 = w <= 16 ? __mmask16(0) : lanes16(w - 16);
        const S* s = row + q * 32;
        __m512 a0 = _mm512_mul_ps(_mm512_set1_ps(pi[0]), avx512_load(s, m0));
        __m512 a1 = _mm512_mul_ps(_mm512_set1_ps(pi[0]), avx512_load(s + 16, m1));
        for (Index k = 1; k < kernels; ++k) {
          const __m512 wk = _mm512_set1_ps(pi[k]);
          a0 = _mm512_fmadd_ps(wk, avx512_load(s + k * stride, m0), a0);
          a1 = _mm512_fmadd_ps(wk, avx512_load(s + k * stride + 16, m1), a1);
        }
        float* panel = out + q * kcur * 32 + p * 32;
        _mm512_store_ps(panel, a0);
        _mm512_store_ps(panel + 16, a1);
      }
    }
  }
  DYNCONV_TARGET_AVX512 static void mix(const float* src, Index stride, Index kernels, const float* pi, Index len,
                                        float* o) {
    avx512_mix_rows(src, stride, kernels, pi, 1, len, 0, o, 0);
  }
  /// Multiplies a packed block of kcur rows by cols columns (panels of 32 columns, each [kcur,
  /// 32]) at (p, j) by row[p] * col[j]: ODConv's scales, applied while the block is in L2.
  DYNCONV_TARGET_AVX512 static void scale_packed(float* block, Index kcur, Index cols, const float* row,
                                                 const float* col) {
    for (Index q = 0; q * 32 < cols; ++q) {
      const Index w = std::min<Index>(32, cols - q * 32);
      const __m512 s0 = avx512_load(col + q * 32, lanes16(w));
      const __m512 s1 = avx512_load(col + q * 32 + 16, w <= 16 ? __mmask16(0) : lanes16(w - 16));
      float* panel = block + q * kcur * 32;
      for (Index p = 0; p < kcur; ++p) {
        const __m512 r = _mm512_set1_ps(row[p]);
        _mm512_store_ps(panel + p * 32, _mm512_mul_ps(_mm512_load_ps(panel + p * 32), _mm512_mul_ps(r, s0)));
        _mm512_store_ps(panel + p * 32 + 16, _mm512_mul_ps(_mm512_load_ps(panel + p * 32 + 16), _mm512_mul_ps(r, s1)));
      }
    }
  }
};
struct X86Avx2 {
  static constexpr Index nr = 16;
  template <bool TransposeB, typename S>
  DYNCONV_TARGET_AVX2 static void pack(const S* b, Index ldb, Index p0, Index kcur, Index j0, Index cols,
                                       float* out) {
    x86_pack_b<16, TransposeB>(b, ldb, p0, kcur, j0, cols, out, CopyRow());
  }
  struct CopyRow {
    template <typename S>
    DYNCONV_TARGET_AVX2 void operator()(float* to, const S* from) const {
      _mm256_store_ps(to, avx2_load(from));
      _mm256_store_ps(to + 8, avx2_load(from + 8));
    }
  };
  DYNCONV_TARGET_AVX2 static void block(Index m, Index kcur, const float* a, Index lda, const float* packed,
                                        Index cols, float* c, Index ldc, const GemmEpilogue<float>* ep = nullptr,
                                        bool first = false, bool last = false, Index col0 = 0) {
    avx2_block(m, kcur, a, lda, packed, cols, c, ldc, ep, first, last, col0);
  }
  /// The AVX2 twin of X86Avx512::mix_pack.
  template <typename S>
  DYNCONV_TARGET_AVX2 static void mix_pack(const S* src, Index stride, Index kernels, const float* pi,
                                           Index ldb, Index p0, Index kcur, Index j0, Index cols, float* out) {
    for (Index p = 0; p < kcur; ++p) {  // row by row, as X86Avx512::mix_pack
      const S* row = src + (p0 + p) * ldb + j0;
      for (Index q = 0; q * 16 < cols; ++q) {
        const Index w = std::min<Index>(16, cols - q * 16), w1 = std::max<Index>(0, w - 8);
        const S* s = row + q * 16;
        __m256 a0 = _mm256_mul_ps(_mm256_set1_ps(pi[0]), avx2_load(s, w));
        __m256 a1 = _mm256_mul_ps(_mm256_set1_ps(pi[0]), avx2_load(s + 8, w1));
        for (Index k = 1; k < kernels; ++k) {
          const __m256 wk = _mm256_set1_ps(pi[k]);
          a0 = _mm256_fmadd_ps(wk, avx2_load(s + k * stride, w), a0);
          a1 = _mm256_fmadd_ps(wk, avx2_load(s + k * stride + 8, w1), a1);
        }
        float* panel = out + q * kcur * 16 + p * 16;
        _mm256_store_ps(panel, a0);
        _mm256_store_ps(panel + 8, a1);
      }
    }
  }
  DYNCONV_TARGET_AVX2 static void mix(const float* src, Index stride, Index kernels, const float* pi, Index len,
                                      float* o) {
    avx2_mix_rows(src, stride, kernels, pi, 1, len, 0, o, 0);
  }
  /// The AVX2 twin of X86Avx512::scale_packed (panels of 16 columns).
  DYNCONV_TARGET_AVX2 static void scale_packed(float* block, Index kcur, Index cols, const float* row,
                                               const float* col) {
    for (Index q = 0; q * 16 < cols; ++q) {
      const Index w = std::min<Index>(16, cols - q * 16);
      const __m256 s0 = avx2_load(col + q * 16, w), s1 = avx2_load(col + q * 16 + 8, std::max<Index>(0, w - 8));
      float* panel = block + q * kcur * 16;
      for (Index p = 0; p < kcur; ++p) {
        const __m256 r = _mm256_set1_ps(row[p]);
        _mm256_store_ps(panel + p * 16, _mm256_mul_ps(_mm256_load_ps(panel + p * 16), _mm256_mul_ps(r, s0)));
        _mm256_store_ps(panel + p * 16 + 8, _mm256_mul_ps(_mm256_load_ps(panel + p * 16 + 8), _mm256_mul_ps(r, s1)));
      }
    }
  }
};

/// The driver of x86_gemm and x86_gemm_packed: B is packed block by block into `worker`'s
/// buffer, or (Packed) read from B packed ahead of time (packing.hpp's PackedLayout {nr, kc} with
/// stride ldb: the block at (p0, j0) of columns from col0 is at b + p0 * ldb + (col0 + j0) * kcur).
template <typename Isa, bool TransposeB, bool Packed>
void x86_gemm_driver(Index m, Index n, Index k, const float* a, Index lda, const float* b, Index ldb, Index col0,
                     float* c, Index ldc, Workspace<float>& ws, int worker, const GemmEpilogue<float>* ep) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (ep) epilogue_only(c, ldc, m, n, *ep);
    return;
  }
  constexpr Index nr = Isa::nr;
  const Index kc = std::min(k, X86Blocking::kc);
  const Index nc = std::min((n + nr - 1) / nr * nr, X86Blocking::nc(kc, nr));
  float* packed = Packed ? nullptr : ws.scratch(worker, Scratch::PackB, kc * nc);
  for (Index p0 = 0; p0 < k; p0 += kc) {
    const Index kcur = std::min(kc, k - p0);
    for (Index j0 = 0; j0 < n; j0 += nc) {
      const Index cols = std::min(nc, n - j0);
      const float* block = packed;
      if constexpr (Packed) block = b + p0 * ldb + (col0 + j0) * kcur;
      else Isa::template pack<TransposeB>(b, ldb, p0, kcur, j0, cols, packed);
      Isa::block(m, kcur, a + p0, lda, block, cols, c + j0, ldc, ep, p0 == 0, p0 + kcur == k, j0);
    }
  }
}

/// C[m, n] += A[m, k] * B[k, n] (B^T [n, k] when TransposeB), row-major, with `worker`'s
/// packing buffer from the workspace; with an epilogue, C = after(act(A B + bias) + residual)
/// (GemmEpilogue), tile by tile.
template <typename Isa, bool TransposeB>
void x86_gemm(Index m, Index n, Index k, const float* a, Index lda, const float* b, Index ldb, float* c, Index ldc,
              Workspace<float>& ws, int worker, const GemmEpilogue<float>* ep) {
  x86_gemm_driver<Isa, TransposeB, false>(m, n, k, a, lda, b, ldb, 0, c, ldc, ws, worker, ep);
}

/// x86_gemm with B = columns [col0, col0 + n) of a matrix packed ahead of time in panels of
/// Isa::nr columns, depth blocks of X86Blocking::kc rows, stride ldb (packing.hpp's PackedLayout).
template <typename Isa>
void x86_gemm_packed(Index m, Index n, Index k, const float* a, Index lda, const float* packed_b, Index ldb,
                     Index col0, float* c, Index ldc, Workspace<float>& ws, int worker,
                     const GemmEpilogue<float>* ep) {
  x86_gemm_driver<Isa, false, true>(m, n, k, a, lda, packed_b, ldb, col0, c, ldc, ws, worker, ep);
}

/// Packs all of B [k, n] (row-major, ldb) into the layout x86_gemm_packed reads, block by block
/// as x86_gemm packs per call: depth block p0 at out + p0 * (n rounded up to whole panels).
template <typename Isa>
void x86_pack_whole_b(Index k, Index n, const float* b, Index ldb, float* out) {
  const Index stride = PackedLayout{Isa::nr, X86Blocking::kc}.stride(n);
  for (Index p0 = 0; p0 < k; p0 += X86Blocking::kc)
    Isa::template pack<false>(b, ldb, p0, std::min(X86Blocking::kc, k - p0), 0, n, out + p0 * stride);
}

/// For each sample b in [0, n): mixes the K packed source blocks (source k at sources + k *
/// stride: the rows [p0, p0 + kcur) and columns [col, col + w) of each kernel, in panels) with
/// pi[b, :] into `mixed`, scales it (ODConv), and adds A_b's columns [p0, p0 + kcur) times it to
/// C_b's columns [col, col + w): the part of a mixed-kernel GEMM that follows a block's sources.
template <typename Isa>
inline void x86_mix_samples(const float* sources, Index stride, Index kernels, const float* pi,
                            const KernelScales<float>& scales, Index n, Index p0, Index kcur, Index col, Index w,
                            const float* a, Index a_stride, Index depth, Index pixels, float* c, Index c_stride,
                            Index ldc, float* mixed) {
  const Index len = kcur * ((w + Isa::nr - 1) / Isa::nr * Isa::nr);
  for (Index b = 0; b < n; ++b) {
    Isa::mix(sources, stride, kernels, pi + b * kernels, len, mixed);
    if (scales) Isa::scale_packed(mixed, kcur, w, scales.row(b) + p0, scales.col(b) + col);
    Isa::block(pixels, kcur, a + b * a_stride + p0, depth, mixed, w, c + b * c_stride + col, ldc);
  }
}

/// C_b[P, c0:c1] += A_b[P, d0:d1] * (sum_k pi[b, k] W_k)[d0:d1, c0:c1] for b in [0, n) (see
/// eigen_mixed_gemm_batch): for every block of the kernels the K sources are packed once for
/// the whole batch and mixed into the packed block each sample's product reads; one sample
/// mixes straight from the sources into the packed block (mix_pack). Float or BF16/F16 sources
/// (widened as they are mixed or packed). With `scales`, each sample's mixed block is scaled in
/// place (scale_packed) before its product reads it.
template <typename Isa, typename S>
void x86_mixed_gemm_batch(const S* src, Index kernels, Index depth, Index cols, const float* pi,
                          const KernelScales<float>& scales, Index n, Index c0, Index c1, Index d0, Index d1,
                          const float* a, Index a_stride, Index pixels, float* c, Index c_stride, Index ldc,
                          Workspace<float>& ws, int worker) {
  const Index width = c1 - c0, rows = d1 - d0;
  if (width <= 0 || pixels <= 0 || rows <= 0 || n <= 0) return;
  constexpr Index nr = Isa::nr;
  const Index kc = std::min(rows, X86Blocking::kc);
  const Index nc = std::min((width + nr - 1) / nr * nr, X86Blocking::nc(kc, nr));
  const Index block = kc * nc;  // a multiple of nr, so of 16: every packed source stays aligned
  float* mixed = ws.scratch(worker, Scratch::PackB, block);
  if (n == 1) {
    // One sample: mixing while packing reads each source once and writes no mixed kernel. The
    // sources stream from memory here (a batch packs them once for all its samples), so a block
    // spans all the columns [c0, c1) when 16 rows of them fit, with fewer rows: each source is
    // then read in runs of whole rows (of the tile), which the hardware prefetchers stream at
    // about twice the rate of half rows (Zen 4, four sources of 512 columns: 25 against 12 GB/s;
    // ResNet-18's 512-channel 3x3 layer at batch 1: 4.0 against 5.9 ms).
    const Index wide = (width + nr - 1) / nr * nr;
    const Index kcb = wide * 16 <= block ? std::min(rows, block / wide) : kc;
    const Index ncb = wide * 16 <= block ? wide : nc;
    for (Index p0 = d0; p0 < d1; p0 += kcb) {
      const Index kcur = std::min(kcb, d1 - p0);
      for (Index j0 = 0; j0 < width; j0 += ncb) {
        const Index w = std::min(ncb, width - j0);
        Isa::mix_pack(src, depth * cols, kernels, pi, cols, p0, kcur, c0 + j0, w, mixed);
        if (scales) Isa::scale_packed(mixed, kcur, w, scales.row(0) + p0, scales.col(0) + c0 + j0);
        Isa::block(pixels, kcur, a + p0, depth, mixed, w, c + c0 + j0, ldc);
      }
    }
    return;
  }
  float* sources = ws.scratch(worker, Scratch::Sources, kernels * block);
  for (Index p0 = d0; p0 < d1; p0 += kc) {
    const Index kcur = std::min(kc, d1 - p0);
    for (Index j0 = 0; j0 < width; j0 += nc) {
      const Index w = std::min(nc, width - j0);
      for (Index k = 0; k < kernels; ++k)
        Isa::template pack<false, S>(src + k * depth * cols, cols, p0, kcur, c0 + j0, w, sources + k * block);
      x86_mix_samples<Isa>(sources, block, kernels, pi, scales, n, p0, kcur, c0 + j0, w, a, a_stride, depth, pixels,
                           c, c_stride, ldc, mixed);
    }
  }
}

/// x86_mixed_gemm_batch over the whole depth with float experts packed ahead of time: expert k
/// at packed + k * PackedLayout{Isa::nr, X86Blocking::kc}.size(depth, cols), each [depth, cols]
/// in that layout (the layout x86_gemm_packed reads), c0 a multiple of Isa::nr. Each block of
/// the sources is mixed where it is kept: no packing per call.
template <typename Isa>
void x86_mixed_gemm_packed(const float* packed, Index kernels, Index depth, Index cols, const float* pi,
                           const KernelScales<float>& scales, Index n, Index c0, Index c1, const float* a,
                           Index a_stride, Index pixels, float* c, Index c_stride, Index ldc, Workspace<float>& ws,
                           int worker) {
  const Index width = c1 - c0;
  if (width <= 0 || pixels <= 0 || depth <= 0 || n <= 0) return;
  constexpr Index nr = Isa::nr;
  const PackedLayout layout{nr, X86Blocking::kc};
  const Index kc = std::min(depth, X86Blocking::kc);
  const Index nc = std::min((width + nr - 1) / nr * nr, X86Blocking::nc(kc, nr));
  float* mixed = ws.scratch(worker, Scratch::PackB, kc * nc);
  for (Index p0 = 0; p0 < depth; p0 += kc) {
    const Index kcur = std::min(kc, depth - p0);
    for (Index j0 = 0; j0 < width; j0 += nc)
      x86_mix_samples<Isa>(packed + p0 * layout.stride(cols) + (c0 + j0) * kcur, layout.size(depth, cols), kernels,
                           pi, scales, n, p0, kcur, c0 + j0, std::min(nc, width - j0), a, a_stride, depth, pixels, c,
                           c_stride, ldc, mixed);
  }
}


#undef DYNCONV_X86_ROWS

#endif  // DYNCONV_X86_KERNELS

}  // namespace detail
}  // namespace dynconv

#ifdef DYNCONV_GCC12_DIAGNOSTICS
#pragma GCC diagnostic pop
#undef DYNCONV_GCC12_DIAGNOSTICS
#endif
