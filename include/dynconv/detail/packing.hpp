// Packed weight layouts and how a convolution's output is cut into slices.
//
// Packed layouts (produced by pack_weights from PyTorch's [Cout, Cin/g, kh, kw]):
//   Pointwise, Im2colGemm, Winograd
//                          [g][kh][kw][Cin/g][Cout/g]: per group a row-major GEMM operand
//                          B_g [kh*kw*Cin/g, Cout/g] whose row order matches the im2col columns
//                          (Winograd transforms it per call: winograd_kernel()).
//   Depthwise              [kh][kw][C]: one contiguous channel vector per tap.
// Both hold exactly weight_size() values, so K packed kernels can be mixed elementwise.
// A GEMM operand packed ahead of time for a kernel entry (the kept kernels of static layers, the
// Winograd transforms) is in that entry's PackedLayout.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/conv_geometry.hpp>
#include <dynconv/runtime.hpp>

#include <algorithm>
#include <array>

namespace dynconv {
namespace detail {

/// The layout in which a GEMM kernel entry's gemm_packed (gemm.hpp) takes B [k, n]: panels of
/// nr columns (zero-padded to whole panels) within depth blocks of kc rows, block p0 at
/// p0 * stride(n), the panel of column j at (j - j % nr) * kcur within it (kcur the block's
/// rows), rows nr apart: exactly what x86_gemm packs per call. nr == 0 is plain row-major
/// [k, n] (the "eigen" entry).
struct PackedLayout {
  Index nr = 0;
  Index kc = 0;
  /// Values per row of B, padding included.
  Index stride(Index n) const { return nr ? (n + nr - 1) / nr * nr : n; }
  /// Values of a packed B [k, n].
  Index size(Index k, Index n) const { return k * stride(n); }
  /// Whether gemm_packed can start at column j (a panel's first).
  bool starts_panel(Index j) const { return !nr || j % nr == 0; }
  /// Where B[p, j] of a [k, n] matrix goes.
  Index offset(Index k, Index n, Index p, Index j) const {
    if (!nr) return p * n + j;
    const Index p0 = p / kc * kc, kcur = std::min(kc, k - p0);
    return p0 * stride(n) + (j - j % nr) * kcur + (p - p0) * nr + j % nr;
  }
};

/// Index of PyTorch weight element (co, ci, i, j) in the packed layout of `algo`.
inline Index packed_index(ConvAlgorithm algo, const ConvGeometry& g, Index co, Index ci, Index i,
                          Index j) {
  if (algo == ConvAlgorithm::Depthwise) return (i * g.kernel_w + j) * g.out_channels + co;
  const Index cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const Index group = co / cout_g;
  const Index row = (i * g.kernel_w + j) * cin_g + ci;
  return group * (g.kernel_h * g.kernel_w * cin_g * cout_g) + row * cout_g + (co - group * cout_g);
}

/// PyTorch order [Cout, Cin/g, kh, kw] -> packed layout of `algo`.
template <typename T>
void pack_weights(ConvAlgorithm algo, const ConvGeometry& g, const T* torch_order, T* packed) {
  const Index cin_g = g.in_per_group();
  for (Index co = 0; co < g.out_channels; ++co)
    for (Index ci = 0; ci < cin_g; ++ci)
      for (Index i = 0; i < g.kernel_h; ++i)
        for (Index j = 0; j < g.kernel_w; ++j)
          packed[packed_index(algo, g, co, ci, i, j)] = *torch_order++;
}

/// Packed layout of `algo` -> PyTorch order [Cout, Cin/g, kh, kw].
template <typename T>
void unpack_weights(ConvAlgorithm algo, const ConvGeometry& g, const T* packed, T* torch_order) {
  const Index cin_g = g.in_per_group();
  for (Index co = 0; co < g.out_channels; ++co)
    for (Index ci = 0; ci < cin_g; ++ci)
      for (Index i = 0; i < g.kernel_h; ++i)
        for (Index j = 0; j < g.kernel_w; ++j)
          *torch_order++ = packed[packed_index(algo, g, co, ci, i, j)];
}

/// The part of one sample's output a kernel call computes: output rows [r0, r1), channels
/// [c0, c1). Channel slices need groups == 1 or a depthwise convolution.
struct Slice {
  Index r0, r1, c0, c1;
};

/// Rows x columns of the packed kernel as a matrix whose columns are output channels (groups
/// == 1 or depthwise; for groups > 1 the columns are the channels of one group).
inline std::array<Index, 2> kernel_matrix(ConvAlgorithm algo, const ConvGeometry& g) {
  if (algo == ConvAlgorithm::Depthwise) return {g.kernel_h * g.kernel_w, g.out_channels};
  return {g.weight_size() / g.out_channels, g.out_channels};
}

/// Whether slices of this convolution may split the output channels (Winograd's are whole
/// rows: one packed transform serves every slice of a sample).
inline bool channel_sliceable(ConvAlgorithm algo, const ConvGeometry& g) {
  if (algo == ConvAlgorithm::Winograd) return false;
  return algo == ConvAlgorithm::Depthwise || g.groups == 1;
}

/// Channels [c0, c1) of part `part` of `parts`, in whole units of 16 channels (the narrowest
/// GEMM panel, AVX2's; conv_slice says why not AVX-512's 32).
inline std::array<Index, 2> channel_part(Index channels, Index parts, Index part) {
  constexpr Index kUnit = 16;
  const std::array<Index, 2> u = split_range((channels + kUnit - 1) / kUnit, parts, part);
  return {std::min(channels, u[0] * kUnit), std::min(channels, u[1] * kUnit)};
}

/// Part `part` of one sample's output split in `parts`: by channels when the convolution
/// allows it and the image has few rows (late layers: 7x7, 14x14), else by rows.
inline Slice slice_of(ConvAlgorithm algo, const ConvGeometry& g, Index out_h, Index parts, Index part) {
  if (parts == 1) return {0, out_h, 0, g.out_channels};
  if (channel_sliceable(algo, g) && out_h < 8 * parts) {
    const std::array<Index, 2> c = channel_part(g.out_channels, parts, part);
    return {0, out_h, c[0], c[1]};
  }
  const std::array<Index, 2> r = split_range(out_h, parts, part);
  return {r[0], r[1], 0, g.out_channels};
}

}  // namespace detail
}  // namespace dynconv
