// Mixing K packed kernels with per-sample weights: out = sum_k pi[k] W_k, in one pass over the K
// sources (four at a time), for whole kernels, channel slices or a whole batch at once. The
// sources are T, or BF16/F16 experts (Eigen::bfloat16, Eigen::half: the opt-in low-precision
// storage) widened as they are read; the mixed kernel is always T.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/detail/gemm_x86.hpp>
#include <dynconv/tensor.hpp>

#include <algorithm>
#include <type_traits>

namespace dynconv {
namespace detail {

/// o[r, 0:len] (+)= sum_{g < G} w[g] * s[g][r, 0:len] for `rows` rows (source row stride ls,
/// output row stride lo), in one pass: G loads and one store per element.
template <int G, bool First, typename S, typename T>
void mix_group(const S* const* s, const T* w, Index rows, Index len, Index ls, T* o, Index lo) {
  const T w0 = w[0], w1 = G > 1 ? w[1] : T(0), w2 = G > 2 ? w[2] : T(0), w3 = G > 3 ? w[3] : T(0);
  for (Index r = 0; r < rows; ++r) {
    const S* __restrict s0 = s[0] + r * ls;
    const S* __restrict s1 = s[G > 1 ? 1 : 0] + r * ls;
    const S* __restrict s2 = s[G > 2 ? 2 : 0] + r * ls;
    const S* __restrict s3 = s[G > 3 ? 3 : 0] + r * ls;
    T* __restrict out = o + r * lo;
    for (Index i = 0; i < len; ++i) {
      T v = First ? w0 * widen<T>(s0[i]) : out[i] + w0 * widen<T>(s0[i]);
      if (G > 1) v += w1 * widen<T>(s1[i]);
      if (G > 2) v += w2 * widen<T>(s2[i]);
      if (G > 3) v += w3 * widen<T>(s3[i]);
      out[i] = v;
    }
  }
}

/// o[r, 0:len] = sum_k pi[k] * (src + k*stride)[r, 0:len] for `rows` rows (source row stride
/// ls, output row stride lo), the kernels taken four at a time.
template <typename S, typename T>
void mix(const S* src, Index stride, Index kernels, const T* pi, Index rows, Index len, Index ls, T* o,
         Index lo) {
#if DYNCONV_X86_KERNELS
  if constexpr (std::is_same<T, float>::value) {  // the kernel set in use (gemm_x86.hpp)
    const KernelIsa isa = kernel_isa();
    if (isa == KernelIsa::Avx512) return avx512_mix_rows(src, stride, kernels, pi, rows, len, ls, o, lo);
    if (isa == KernelIsa::Avx2) return avx2_mix_rows(src, stride, kernels, pi, rows, len, ls, o, lo);
  }
#endif
  for (Index k = 0; k < kernels; k += 4) {
    const S* s[4] = {src + k * stride, src + std::min(k + 1, kernels - 1) * stride,
                     src + std::min(k + 2, kernels - 1) * stride, src + std::min(k + 3, kernels - 1) * stride};
    const T* w = pi + k;
    const bool first = k == 0;
    switch (std::min<Index>(4, kernels - k)) {
      case 1: first ? mix_group<1, true>(s, w, rows, len, ls, o, lo) : mix_group<1, false>(s, w, rows, len, ls, o, lo); break;
      case 2: first ? mix_group<2, true>(s, w, rows, len, ls, o, lo) : mix_group<2, false>(s, w, rows, len, ls, o, lo); break;
      case 3: first ? mix_group<3, true>(s, w, rows, len, ls, o, lo) : mix_group<3, false>(s, w, rows, len, ls, o, lo); break;
      default: first ? mix_group<4, true>(s, w, rows, len, ls, o, lo) : mix_group<4, false>(s, w, rows, len, ls, o, lo); break;
    }
  }
}

/// out[r, 0:width] = sum_k pi[k] * src_k[r, c0:c0+width] for the K row-major [rows, cols]
/// matrices src_k = src + k*rows*cols: mixes K packed kernels (or a channel slice of them),
/// reading each source once; whole kernels in blocks that keep the output in L1.
template <typename S, typename T>
void aggregate(const S* src, Index kernels, Index rows, Index cols, const T* pi, Index c0, Index width,
               T* out) {
  const Index size = rows * cols;
  if (c0 == 0 && width == cols) {
    constexpr Index kBlock = 2048;
    for (Index start = 0; start < size; start += kBlock)
      mix(src + start, size, kernels, pi, 1, std::min(kBlock, size - start), 0, out + start, 0);
    return;
  }
  mix(src + c0, size, kernels, pi, rows, width, cols, out, width);
}

/// The mixes of n samples at once: out[b][r, 0:width] = sum_k pi[b, k] * src_k[r, c0:c0+width].
/// The K sources are read from memory once for all n samples (a block of rows at a time stays
/// in L1 while the n mixes read it).
template <typename S, typename T>
void aggregate_batch(const S* src, Index kernels, Index rows, Index cols, const T* pi, Index n, Index c0,
                     Index width, T* out) {
  const Index size = rows * cols;
  const Index block = std::max<Index>(1, 2048 / std::max<Index>(width, 1));
  for (Index r0 = 0; r0 < rows; r0 += block) {
    const Index len = std::min(block, rows - r0);
    for (Index b = 0; b < n; ++b)
      mix(src + r0 * cols + c0, size, kernels, pi + b * kernels, len, width, cols, out + (b * rows + r0) * width,
          width);
  }
}

/// Multiplies elements [begin, end) of a packed kernel, viewed as consecutive row-major blocks
/// of [rows, cols] (one per group), by row[R] * col[(R / rows) * cols + c] for element (R, c) of
/// the stacked blocks: ODConv's spatial and channel attentions as row scales, its filter
/// attention as column scales, folded into the mixed kernel.
template <typename T>
void scale_kernel(T* kernel, Index rows, Index cols, const T* row, const T* col, Index begin, Index end) {
  for (Index i = begin; i < end;) {
    const Index r = i / cols, c0 = i - r * cols, len = std::min(cols - c0, end - i);
    const T rs = row[r];
    const T* __restrict cs = col + (r / rows) * cols + c0;
    T* __restrict o = kernel + i;
    for (Index c = 0; c < len; ++c) o[c] *= rs * cs[c];
    i += len;
  }
}

/// The same for a tile [rows, width] holding columns [c0, c0 + width) of a one-block kernel;
/// `col` points at column c0's scale.
template <typename T>
void scale_tile(T* tile, Index rows, Index width, const T* row, const T* col) {
  for (Index r = 0; r < rows; ++r) {
    const T rs = row[r];
    T* __restrict o = tile + r * width;
    for (Index c = 0; c < width; ++c) o[c] *= rs * col[c];
  }
}

}  // namespace detail
}  // namespace dynconv
