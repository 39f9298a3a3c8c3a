// dynconv: the geometry of a 2-d convolution and the choice of its algorithm.
//
// ConvGeometry holds what every convolution kernel needs to know besides the tensors:
// channels, groups, kernel size, stride, padding and dilation, each per axis (h, w); the
// zero padding per side (top pad_h, bottom pad_h_end, left pad_w, right pad_w_end).
//
// Output size (PyTorch's formula, per axis; symmetric padding p gives H + 2p):
//   Hout = floor((H + pad_h + pad_h_end - dil_h*(kh - 1) - 1) / stride_h) + 1
//
// Four algorithms compute the same convolution; select_conv_algorithm() is the one predicate
// that picks between them, and options may force any algorithm that supports the geometry:
//   Pointwise   1x1 kernel, no padding: a plain GEMM over the pixels, no im2col
//               (a stride > 1 only subsamples the pixels first).
//   Depthwise   groups == in_channels == out_channels: a direct loop vectorised across channels.
//   Winograd    3x3, stride 1, dilation 1, groups 1: Winograd F(4x4, 3x3), 36 GEMMs over 4x4
//               output tiles with 4x fewer multiply-adds (detail/winograd.hpp); the kernel is
//               packed as Im2colGemm's and transformed per call, and an output of fewer than
//               484 pixels (22x22) runs as Im2colGemm.
//   Im2colGemm  anything: im2col of each group's patches, then one GEMM per group and sample.
#pragma once

#include <dynconv/tensor.hpp>

#include <ostream>

namespace dynconv {

/// How a convolution is computed; options may force one (ConvOptionsBase::algorithm()).
/// - `Auto`: let select_conv_algorithm() choose (the default).
/// - `Pointwise`: 1x1 kernel, no padding: one GEMM over the pixels, no im2col.
/// - `Depthwise`: groups == in_channels == out_channels: a direct loop across channels.
/// - `Im2colGemm`: any geometry: im2col of each group, then one GEMM per group and sample.
/// - `Winograd`: 3x3, stride 1, dilation 1, groups 1: Winograd F(4x4, 3x3) over 4x4 output
///   tiles (an output of fewer than 484 pixels runs as Im2colGemm, with the same packed kernel).
enum class ConvAlgorithm { Auto, Pointwise, Depthwise, Im2colGemm, Winograd };

/// "Auto", "Pointwise", "Depthwise", "Im2colGemm" or "Winograd".
inline const char* algorithm_name(ConvAlgorithm a) {
  switch (a) {
    case ConvAlgorithm::Auto: return "Auto";
    case ConvAlgorithm::Pointwise: return "Pointwise";
    case ConvAlgorithm::Depthwise: return "Depthwise";
    case ConvAlgorithm::Im2colGemm: return "Im2colGemm";
    case ConvAlgorithm::Winograd: return "Winograd";
  }
  return "?";
}

/// Writes algorithm_name(a).
inline std::ostream& operator<<(std::ostream& os, ConvAlgorithm a) { return os << algorithm_name(a); }

/// The shape of a 2-d convolution: channels, groups, and kernel size, stride, zero padding and
/// dilation per axis (h, w); padding per side: pad_h (top), pad_h_end (bottom), pad_w (left),
/// pad_w_end (right). A plain value; layers validate it (@ref errors_conv).
struct ConvGeometry {
  Index in_channels = 0, out_channels = 0, groups = 1;
  Index kernel_h = 1, kernel_w = 1;
  Index stride_h = 1, stride_w = 1;
  Index pad_h = 0, pad_w = 0;
  Index pad_h_end = 0, pad_w_end = 0;
  Index dilation_h = 1, dilation_w = 1;

  /// Input channels per group: in_channels / groups.
  Index in_per_group() const { return in_channels / groups; }
  /// Output channels per group: out_channels / groups.
  Index out_per_group() const { return out_channels / groups; }
  /// Weights of one kernel: out_channels * in_channels/groups * kh * kw.
  Index weight_size() const { return out_channels * in_per_group() * kernel_h * kernel_w; }
  /// Output rows/cols; <= 0 means the (padded) input is smaller than the dilated kernel.
  Index out_h(Index in_h) const {
    return (in_h + pad_h + pad_h_end - dilation_h * (kernel_h - 1) - 1) / stride_h + 1;
  }
  /// Output columns, as out_h().
  Index out_w(Index in_w) const {
    return (in_w + pad_w + pad_w_end - dilation_w * (kernel_w - 1) - 1) / stride_w + 1;
  }
  /// Whether an in_h x in_w input, once padded, is at least as large as the dilated kernel.
  bool fits(Index in_h, Index in_w) const {
    return in_h + pad_h + pad_h_end >= dilation_h * (kernel_h - 1) + 1 &&
           in_w + pad_w + pad_w_end >= dilation_w * (kernel_w - 1) + 1;
  }
  /// Whether there is no padding on any side.
  bool unpadded() const { return pad_h == 0 && pad_w == 0 && pad_h_end == 0 && pad_w_end == 0; }
};

/// Whether algorithm `a` can compute a convolution of geometry `g`.
inline bool algorithm_supports(ConvAlgorithm a, const ConvGeometry& g) {
  switch (a) {
    case ConvAlgorithm::Auto:
    case ConvAlgorithm::Im2colGemm: return true;
    case ConvAlgorithm::Pointwise:
      return g.kernel_h == 1 && g.kernel_w == 1 && g.unpadded();
    case ConvAlgorithm::Depthwise:
      return g.groups == g.in_channels && g.out_channels == g.in_channels;
    case ConvAlgorithm::Winograd:
      return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dilation_h == 1 &&
             g.dilation_w == 1 && g.groups == 1;
  }
  return false;
}

/// The rule a forced algorithm must satisfy, for error messages.
inline const char* algorithm_requirement(ConvAlgorithm a) {
  switch (a) {
    case ConvAlgorithm::Pointwise: return "a 1x1 kernel with padding 0";
    case ConvAlgorithm::Depthwise: return "groups == in_channels == out_channels";
    case ConvAlgorithm::Winograd: return "a 3x3 kernel with stride 1, dilation 1 and groups == 1";
    default: return "nothing";
  }
}

/// The one predicate that picks the algorithm for a geometry.
inline ConvAlgorithm select_conv_algorithm(const ConvGeometry& g) {
  if (algorithm_supports(ConvAlgorithm::Depthwise, g)) return ConvAlgorithm::Depthwise;
  if (algorithm_supports(ConvAlgorithm::Pointwise, g)) return ConvAlgorithm::Pointwise;
  if (algorithm_supports(ConvAlgorithm::Winograd, g)) return ConvAlgorithm::Winograd;
  return ConvAlgorithm::Im2colGemm;
}

}  // namespace dynconv
