// im2col: the patches of a convolution's input as the rows of a GEMM operand.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/detail/gemm_x86.hpp>

#include <dynconv/conv_geometry.hpp>

#include <type_traits>

namespace dynconv {
namespace detail {

/// im2col's loops (below); copy_run(to, from, len) copies the runs of input values that lie
/// inside the image.
template <typename T, typename CopyRun>
DYNCONV_ALWAYS_INLINE void im2col_loops(const ConvGeometry& g, const T* x, Index in_h, Index in_w, Index r0, Index r1,
                                        Index grp, T* col, CopyRun copy_run) {
  const Index ow = g.out_w(in_w), cin = g.in_channels, cin_g = g.in_per_group();
  // With one group and no horizontal dilation, a window row inside the image is kw*Cin
  // contiguous input values: one copy instead of kw (a 3-channel stem has 3 values a tap).
  const bool rows_contiguous = g.groups == 1 && g.dilation_w == 1;
  const Index row_len = g.kernel_w * cin;
  for (Index r = r0; r < r1; ++r)
    for (Index c = 0; c < ow; ++c) {
      const Index iw0 = c * g.stride_w - g.pad_w;
      const bool inside_w = iw0 >= 0 && iw0 + g.kernel_w <= in_w;
      for (Index i = 0; i < g.kernel_h; ++i) {
        const Index ih = r * g.stride_h - g.pad_h + i * g.dilation_h;
        if (ih < 0 || ih >= in_h) {
          for (Index k = 0; k < g.kernel_w * cin_g; ++k) col[k] = T(0);
          col += g.kernel_w * cin_g;
          continue;
        }
        if (rows_contiguous && inside_w) {
          copy_run(col, x + (ih * in_w + iw0) * cin, row_len);
          col += row_len;
          continue;
        }
        for (Index j = 0; j < g.kernel_w; ++j, col += cin_g) {
          const Index iw = iw0 + j * g.dilation_w;
          if (iw < 0 || iw >= in_w) {
            for (Index k = 0; k < cin_g; ++k) col[k] = T(0);
          } else {
            copy_run(col, x + (ih * in_w + iw) * cin + grp * cin_g, cin_g);
          }
        }
      }
    }
}

#if DYNCONV_X86_KERNELS
/// A run of floats copied 16 at a time by masked loads and stores: a 3-channel stem's runs (9
/// values of a 3x3 window row, 21 of a 7x7 one) as one or two vector moves instead of a loop of
/// runtime length (perf, DY-MobileNetV3-Small at batch 1 on an Intel Xeon: im2col's share of a
/// pass 7.0 -> 5.4%; what remains is writing the columns to memory).
struct Avx512CopyRun {
  DYNCONV_TARGET_AVX512 void operator()(float* to, const float* from, Index len) const {
    for (Index k = 0; k < len; k += 16) {
      const __mmask16 m = lanes16(len - k);
      _mm512_mask_storeu_ps(to + k, m, _mm512_maskz_loadu_ps(m, from + k));
    }
  }
};
DYNCONV_TARGET_AVX512 inline void avx512_im2col(const ConvGeometry& g, const float* x, Index in_h, Index in_w, Index r0,
                                                Index r1, Index grp, float* col) {
  im2col_loops(g, x, in_h, in_w, r0, r1, grp, col, Avx512CopyRun{});
}
#endif

/// im2col of output rows [r0, r1) of group `grp`: [(r1-r0)*Wout, kh*kw*Cin/g], zeros where the
/// window leaves the image. A strided 1x1 convolution gathers its pixels the same way. Floats
/// with the AVX-512 kernel set in use move by masked vectors (Avx512CopyRun).
template <typename T>
void im2col(const ConvGeometry& g, const T* x, Index in_h, Index in_w, Index r0, Index r1, Index grp, T* col) {
#if DYNCONV_X86_KERNELS
  if constexpr (std::is_same<T, float>::value)
    if (kernel_isa() == KernelIsa::Avx512) return avx512_im2col(g, x, in_h, in_w, r0, r1, grp, col);
#endif
  // Plain loops, not std::copy: the runs are short, and a memmove call costs more than the copy.
  im2col_loops(g, x, in_h, in_w, r0, r1, grp, col, [](T* __restrict to, const T* __restrict from, Index len) {
    for (Index k = 0; k < len; ++k) to[k] = from[k];
  });
}

/// Whether the algorithm reads its GEMM operand from an im2col buffer (not x itself).
inline bool needs_columns(ConvAlgorithm algo, const ConvGeometry& g) {
  if (algo == ConvAlgorithm::Depthwise || algo == ConvAlgorithm::Winograd) return false;
  if (algo == ConvAlgorithm::Pointwise) return g.stride_h != 1 || g.stride_w != 1;
  return true;
}

}  // namespace detail
}  // namespace dynconv
