// The convolution kernels: lean loops and Eigen GEMMs over raw NHWC buffers of ONE sample.
// No argument checks here (the operators validate once); eigen_assert guards debug builds.
//
// Packed weight layouts (produced by pack_weights below from PyTorch's [Cout, Cin/g, kh, kw]):
//   Pointwise, Im2colGemm  [g][kh][kw][Cin/g][Cout/g]: per group a row-major GEMM operand
//                          B_g [kh*kw*Cin/g, Cout/g] whose row order matches the im2col columns.
//   Depthwise              [kh][kw][C]: one contiguous channel vector per tap.
// Both hold exactly weight_size() values, so K packed kernels can be mixed elementwise.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/conv_geometry.hpp>
#include <dynconv/detail/matrix.hpp>

#include <algorithm>
#include <vector>

namespace dynconv {
namespace detail {

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

/// Scratch memory of a convolution call; grows on demand and is reused across samples.
template <typename T>
struct ConvScratch {
  std::vector<T> columns;  // im2col matrix of one group: [Hout*Wout, kh*kw*Cin/g]
};

/// Writes bias (or zeros) into every pixel of y: [P, C].
template <typename T>
void fill_bias(Index pixels, Index channels, const T* bias, T* y) {
  for (Index p = 0; p < pixels; ++p, y += channels) {
    if (bias)
      std::copy(bias, bias + channels, y);
    else
      std::fill(y, y + channels, T(0));
  }
}

/// 1x1 convolution: per group Y_g[P, Cout/g] += X_g[P, Cin/g] * B_g. Stride > 1 subsamples X.
/// x: [H, W, Cin], y: [Hout, Wout, Cout].
template <typename T>
void conv_pointwise(const ConvGeometry& g, const T* x, Index in_h, Index in_w, const T* packed,
                    const T* bias, T* y, ConvScratch<T>& scratch) {
  const Index oh = g.out_h(in_h), ow = g.out_w(in_w), pixels = oh * ow;
  const Index cin = g.in_channels, cout = g.out_channels;
  const Index cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const T* src = x;
  if (g.stride_h != 1 || g.stride_w != 1) {
    // [H, W, Cin] -> [Hout, Wout, Cin]: keep every stride-th pixel.
    scratch.columns.resize(static_cast<std::size_t>(pixels * cin));
    T* dst = scratch.columns.data();
    for (Index r = 0; r < oh; ++r)
      for (Index c = 0; c < ow; ++c, dst += cin) {
        const T* p = x + ((r * g.stride_h) * in_w + c * g.stride_w) * cin;
        std::copy(p, p + cin, dst);
      }
    src = scratch.columns.data();
  }
  fill_bias(pixels, cout, bias, y);
  for (Index grp = 0; grp < g.groups; ++grp) {
    ConstStridedMap<T> a(src + grp * cin_g, pixels, cin_g, Eigen::OuterStride<>(cin));
    ConstStridedMap<T> b(packed + grp * cin_g * cout_g, cin_g, cout_g, Eigen::OuterStride<>(cout_g));
    StridedMap<T> out(y + grp * cout_g, pixels, cout_g, Eigen::OuterStride<>(cout));
    out.noalias() += a * b;
  }
}

/// Depthwise convolution (one filter per channel), vectorised across channels.
/// x: [H, W, C], packed: [kh, kw, C], y: [Hout, Wout, C].
template <typename T>
void conv_depthwise(const ConvGeometry& g, const T* x, Index in_h, Index in_w, const T* packed,
                    const T* bias, T* y) {
  const Index oh = g.out_h(in_h), ow = g.out_w(in_w), ch = g.out_channels;
  fill_bias(oh * ow, ch, bias, y);
  for (Index r = 0; r < oh; ++r) {
    for (Index c = 0; c < ow; ++c) {
      T* __restrict out = y + (r * ow + c) * ch;
      for (Index i = 0; i < g.kernel_h; ++i) {
        const Index ih = r * g.stride_h - g.pad_h + i * g.dilation_h;
        if (ih < 0 || ih >= in_h) continue;
        for (Index j = 0; j < g.kernel_w; ++j) {
          const Index iw = c * g.stride_w - g.pad_w + j * g.dilation_w;
          if (iw < 0 || iw >= in_w) continue;
          const T* __restrict in = x + (ih * in_w + iw) * ch;
          const T* __restrict w = packed + (i * g.kernel_w + j) * ch;
          for (Index k = 0; k < ch; ++k) out[k] += in[k] * w[k];
        }
      }
    }
  }
}

/// General convolution: per group, im2col [Hout*Wout, kh*kw*Cin/g] then one GEMM with B_g.
/// x: [H, W, Cin], y: [Hout, Wout, Cout].
template <typename T>
void conv_im2col(const ConvGeometry& g, const T* x, Index in_h, Index in_w, const T* packed,
                 const T* bias, T* y, ConvScratch<T>& scratch) {
  const Index oh = g.out_h(in_h), ow = g.out_w(in_w), pixels = oh * ow;
  const Index cin = g.in_channels, cout = g.out_channels;
  const Index cin_g = g.in_per_group(), cout_g = g.out_per_group();
  const Index depth = g.kernel_h * g.kernel_w * cin_g;
  scratch.columns.resize(static_cast<std::size_t>(pixels * depth));
  fill_bias(pixels, cout, bias, y);
  for (Index grp = 0; grp < g.groups; ++grp) {
    T* col = scratch.columns.data();
    for (Index r = 0; r < oh; ++r)
      for (Index c = 0; c < ow; ++c)
        for (Index i = 0; i < g.kernel_h; ++i) {
          const Index ih = r * g.stride_h - g.pad_h + i * g.dilation_h;
          for (Index j = 0; j < g.kernel_w; ++j, col += cin_g) {
            const Index iw = c * g.stride_w - g.pad_w + j * g.dilation_w;
            if (ih < 0 || ih >= in_h || iw < 0 || iw >= in_w) {
              std::fill(col, col + cin_g, T(0));
            } else {
              const T* p = x + (ih * in_w + iw) * cin + grp * cin_g;
              std::copy(p, p + cin_g, col);
            }
          }
        }
    Eigen::Map<const RowMajorMatrix<T>> a(scratch.columns.data(), pixels, depth);
    Eigen::Map<const RowMajorMatrix<T>> b(packed + grp * depth * cout_g, depth, cout_g);
    StridedMap<T> out(y + grp * cout_g, pixels, cout_g, Eigen::OuterStride<>(cout));
    out.noalias() += a * b;
  }
}

/// Runs one sample through the algorithm `algo` (never Auto).
template <typename T>
void run_conv(ConvAlgorithm algo, const ConvGeometry& g, const T* x, Index in_h, Index in_w,
              const T* packed, const T* bias, T* y, ConvScratch<T>& scratch) {
  switch (algo) {
    case ConvAlgorithm::Pointwise: conv_pointwise(g, x, in_h, in_w, packed, bias, y, scratch); break;
    case ConvAlgorithm::Depthwise: conv_depthwise(g, x, in_h, in_w, packed, bias, y); break;
    default: conv_im2col(g, x, in_h, in_w, packed, bias, y, scratch); break;
  }
}

/// out[i] = sum_k pi[k] * src[k*size + i]: mixes K packed kernels in one pass over each,
/// block by block so the output block stays in L1 while the K sources stream through.
template <typename T>
void aggregate(const T* src, Index kernels, Index size, const T* pi, T* out) {
  constexpr Index kBlock = 1024;
  for (Index start = 0; start < size; start += kBlock) {
    const Index len = std::min(kBlock, size - start);
    T* __restrict o = out + start;
    const T* __restrict s0 = src + start;
    for (Index i = 0; i < len; ++i) o[i] = pi[0] * s0[i];
    for (Index k = 1; k < kernels; ++k) {
      const T* __restrict s = src + k * size + start;
      const T w = pi[k];
      for (Index i = 0; i < len; ++i) o[i] += w * s[i];
    }
  }
}

}  // namespace detail
}  // namespace dynconv
