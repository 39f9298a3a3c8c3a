// im2col: the patches of a convolution's input as the rows of a GEMM operand.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/conv_geometry.hpp>

namespace dynconv {
namespace detail {

/// im2col of output rows [r0, r1) of group `grp`: [(r1-r0)*Wout, kh*kw*Cin/g], zeros where the
/// window leaves the image. A strided 1x1 convolution gathers its pixels the same way.
template <typename T>
void im2col(const ConvGeometry& g, const T* x, Index in_h, Index in_w, Index r0, Index r1, Index grp, T* col) {
  const Index ow = g.out_w(in_w), cin = g.in_channels, cin_g = g.in_per_group();
  // With one group and no horizontal dilation, a window row inside the image is kw*Cin
  // contiguous input values: one copy instead of kw (a 3-channel stem has 3 values a tap).
  const bool rows_contiguous = g.groups == 1 && g.dilation_w == 1;
  const Index row_len = g.kernel_w * cin;
  // Plain loops, not std::copy: the runs are short, and a memmove call costs more than the copy.
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
          const T* __restrict p = x + (ih * in_w + iw0) * cin;
          for (Index k = 0; k < row_len; ++k) col[k] = p[k];
          col += row_len;
          continue;
        }
        for (Index j = 0; j < g.kernel_w; ++j, col += cin_g) {
          const Index iw = iw0 + j * g.dilation_w;
          if (iw < 0 || iw >= in_w) {
            for (Index k = 0; k < cin_g; ++k) col[k] = T(0);
          } else {
            const T* __restrict p = x + (ih * in_w + iw) * cin + grp * cin_g;
            for (Index k = 0; k < cin_g; ++k) col[k] = p[k];
          }
        }
      }
    }
}

/// Whether the algorithm reads its GEMM operand from an im2col buffer (not x itself).
inline bool needs_columns(ConvAlgorithm algo, const ConvGeometry& g) {
  if (algo == ConvAlgorithm::Depthwise || algo == ConvAlgorithm::Winograd) return false;
  if (algo == ConvAlgorithm::Pointwise) return g.stride_h != 1 || g.stride_w != 1;
  return true;
}

}  // namespace detail
}  // namespace dynconv
