// dynconv: the options every convolution layer shares, and per-layer cost counts.
//
// Options are declared the PyTorch way: required values in the constructor, optional ones as
// chainable setters, each getter named like its setter:
//   Conv2dOptions(32, 64, 3).stride(2).padding(1).bias(false)
//   DynamicConv2dOptions(32, 64, 3).padding(1).kernels(4).temperature(1.f)
// Options are plain values; a layer validates them once, at construction, and throws
// OptionsError naming the layer, the offending values and the rule.
#pragma once

#include <dynconv/conv_geometry.hpp>
#include <dynconv/error.hpp>
#include <dynconv/runtime.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <utility>

namespace dynconv {

/// Per-axis value (h, w).
using Pair = std::array<Index, 2>;

/// Parameters and multiply-adds of one layer for one sample at one input size (paper.md:
/// conv = Hout*Wout*Cout*(Cin/g)*kh*kw; attention = H*W*Cin + Cin*hidden + hidden*K;
/// aggregation (the kernel synthesis) = K*Cout*(Cin/g)*kh*kw + K*Cout with a bias; scaling =
/// Cout*(Cin/g)*kh*kw where ODConv's channel, filter and spatial attentions scale the kernel).
struct LayerCost {
  std::int64_t params = 0;
  std::int64_t conv_madds = 0;
  std::int64_t attention_madds = 0;
  std::int64_t aggregation_madds = 0;
  std::int64_t scaling_madds = 0;
  std::int64_t madds() const { return conv_madds + attention_madds + aggregation_madds + scaling_madds; }
  LayerCost& operator+=(const LayerCost& o) {
    params += o.params;
    conv_madds += o.conv_madds;
    attention_madds += o.attention_madds;
    aggregation_madds += o.aggregation_madds;
    scaling_madds += o.scaling_madds;
    return *this;
  }
};

/// Fields shared by Conv2dOptions and DynamicConv2dOptions; setters return the derived type.
template <typename Derived>
class ConvOptionsBase {
 public:
  ConvOptionsBase(Index in_channels, Index out_channels, Pair kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}

  Index in_channels() const { return in_channels_; }
  Index out_channels() const { return out_channels_; }
  const Pair& kernel_size() const { return kernel_size_; }

  /// Stride per axis. Default 1.
  Derived& stride(Index s) { return stride(s, s); }
  Derived& stride(Index h, Index w) { return set(stride_, Pair{h, w}); }
  const Pair& stride() const { return stride_; }
  /// Zero padding added on both sides, per axis. Default 0.
  Derived& padding(Index p) { return padding(p, p); }
  Derived& padding(Index h, Index w) { return padding(h, h, w, w); }
  /// Zero padding per side: top, bottom, left, right (F.pad's order is left, right, top, bottom).
  Derived& padding(Index top, Index bottom, Index left, Index right) {
    padding_ = Pair{top, left};
    padding_end_ = Pair{bottom, right};
    return static_cast<Derived&>(*this);
  }
  /// Padding at the start of each axis (top, left).
  const Pair& padding() const { return padding_; }
  /// Padding at the end of each axis (bottom, right).
  const Pair& padding_end() const { return padding_end_; }
  /// Spacing between kernel taps, per axis. Default 1.
  Derived& dilation(Index d) { return dilation(d, d); }
  Derived& dilation(Index h, Index w) { return set(dilation_, Pair{h, w}); }
  const Pair& dilation() const { return dilation_; }
  /// Channel groups; must divide in_channels and out_channels. groups == in_channels ==
  /// out_channels is a depthwise convolution. Default 1.
  Derived& groups(Index g) { return set(groups_, g); }
  Index groups() const { return groups_; }
  /// Whether the layer adds a learned bias. Default true (as PyTorch).
  Derived& bias(bool b) { return set(bias_, b); }
  bool bias() const { return bias_; }
  /// Forces an algorithm (tests, benchmarks); Auto lets select_conv_algorithm() choose.
  Derived& algorithm(ConvAlgorithm a) { return set(algorithm_, a); }
  ConvAlgorithm algorithm() const { return algorithm_; }
  /// A name for error messages, e.g. the parameter prefix "features.3.conv.0". Default empty.
  Derived& name(std::string n) { return set(name_, std::move(n)); }
  const std::string& name() const { return name_; }

  ConvGeometry geometry() const {
    ConvGeometry g;
    g.in_channels = in_channels_;
    g.out_channels = out_channels_;
    g.groups = groups_;
    g.kernel_h = kernel_size_[0];
    g.kernel_w = kernel_size_[1];
    g.stride_h = stride_[0];
    g.stride_w = stride_[1];
    g.pad_h = padding_[0];
    g.pad_w = padding_[1];
    g.pad_h_end = padding_end_[0];
    g.pad_w_end = padding_end_[1];
    g.dilation_h = dilation_[0];
    g.dilation_w = dilation_[1];
    return g;
  }

 private:
  template <typename V>
  Derived& set(V& field, V value) {
    field = std::move(value);
    return static_cast<Derived&>(*this);
  }

  Index in_channels_, out_channels_;
  Pair kernel_size_;
  Pair stride_{1, 1}, padding_{0, 0}, padding_end_{0, 0}, dilation_{1, 1};
  Index groups_ = 1;
  bool bias_ = true;
  ConvAlgorithm algorithm_ = ConvAlgorithm::Auto;
  std::string name_;
};

namespace detail {

/// "(1, 2)" for padding symmetric per axis (h, w), else "(top 0, bottom 1, left 0, right 1)".
inline std::string padding_str(const ConvGeometry& g) {
  if (g.pad_h == g.pad_h_end && g.pad_w == g.pad_w_end) return concat('(', g.pad_h, ", ", g.pad_w, ')');
  return concat("(top ", g.pad_h, ", bottom ", g.pad_h_end, ", left ", g.pad_w, ", right ", g.pad_w_end, ')');
}

/// "name: Kind(in -> out, khxkw)" or "Kind(in -> out, khxkw)" without a name.
template <typename Options>
std::string describe_conv(const char* kind, const Options& o) {
  return describe(o.name(), concat(kind, '(', o.in_channels(), " -> ", o.out_channels(), ", ",
                                   o.kernel_size()[0], 'x', o.kernel_size()[1], ')'));
}

/// A validated convolution: its geometry and the algorithm that computes it (never Auto).
struct ResolvedConv {
  ConvGeometry geometry;
  ConvAlgorithm algorithm;
};

/// Validates the shared convolution options; returns the geometry and the resolved algorithm.
template <typename Options>
ResolvedConv validate_conv(const std::string& layer, const Options& o) {
  check_range(layer, "in_channels", o.in_channels());
  check_range(layer, "out_channels", o.out_channels());
  check_range(layer, "kernel_size[0]", o.kernel_size()[0]);
  check_range(layer, "kernel_size[1]", o.kernel_size()[1]);
  check_range(layer, "stride[0]", o.stride()[0]);
  check_range(layer, "stride[1]", o.stride()[1]);
  check_range(layer, "dilation[0]", o.dilation()[0]);
  check_range(layer, "dilation[1]", o.dilation()[1]);
  check_range(layer, "groups", o.groups());
  if (o.padding()[0] < 0 || o.padding()[1] < 0 || o.padding_end()[0] < 0 || o.padding_end()[1] < 0)
    fail<OptionsError>(layer, ": padding=", padding_str(o.geometry()), " must be >= 0");
  check_range(layer, "padding[0]", o.padding()[0], 0);
  check_range(layer, "padding[1]", o.padding()[1], 0);
  check_range(layer, "padding_end[0]", o.padding_end()[0], 0);
  check_range(layer, "padding_end[1]", o.padding_end()[1], 0);
  if (o.in_channels() % o.groups() != 0)
    fail<OptionsError>(layer, ": groups=", o.groups(), " must divide in_channels=",
                       o.in_channels());
  if (o.out_channels() % o.groups() != 0)
    fail<OptionsError>(layer, ": groups=", o.groups(), " must divide out_channels=",
                       o.out_channels());
  const ConvGeometry g = o.geometry();
  checked_mul<OptionsError>(
      layer, "the weight size",
      checked_mul<OptionsError>(layer, "the weight size", g.out_channels, g.in_per_group()),
      checked_mul<OptionsError>(layer, "the weight size", g.kernel_h, g.kernel_w));
  ConvAlgorithm algo = o.algorithm();
  if (algo == ConvAlgorithm::Auto) {
    algo = select_conv_algorithm(g);
  } else if (!algorithm_supports(algo, g)) {
    const std::string steps = algo == ConvAlgorithm::Winograd ? concat(", stride (", g.stride_h, ", ", g.stride_w,
                                                                       "), dilation (", g.dilation_h, ", ",
                                                                       g.dilation_w, ')')
                                                                : std::string();
    fail<OptionsError>(layer, ": algorithm=", algorithm_name(algo), " needs ",
                       algorithm_requirement(algo), ", got kernel ", g.kernel_h, 'x', g.kernel_w, steps,
                       ", padding ", padding_str(g), ", groups=", g.groups,
                       ", in_channels=", g.in_channels, ", out_channels=", g.out_channels);
  }
  return {g, algo};
}

/// Throws ShapeError unless an input of in_h x in_w fits the kernel and the output and im2col
/// sizes of one sample fit in int64. input() describes the input; it is called only to fail.
template <typename Describe>
void check_fits(const std::string& layer, const ConvGeometry& g, Index in_h, Index in_w,
                const Describe& input) {
  if (in_h < 1 || in_w < 1)
    fail<ShapeError>(layer, ": input ", input(), " has no pixels (", in_h, 'x', in_w, ')');
  check_range<ShapeError>(layer, "input height", in_h);
  check_range<ShapeError>(layer, "input width", in_w);
  if (!g.fits(in_h, in_w))
    fail<ShapeError>(layer, ": input ", input(), " is ", in_h, 'x', in_w,
                     ", smaller than the dilated kernel ", g.dilation_h * (g.kernel_h - 1) + 1,
                     'x', g.dilation_w * (g.kernel_w - 1) + 1, " after padding ", padding_str(g));
  const Index pixels = checked_mul<ShapeError>(layer, "the output size", g.out_h(in_h), g.out_w(in_w));
  checked_mul<ShapeError>(layer, "the output size", pixels, g.out_channels);
  checked_mul<ShapeError>(layer, "the im2col size", pixels,
                          g.kernel_h * g.kernel_w * g.in_per_group());
}

/// Checks the dimensions of an NHWC (channel_axis 3) or NCHW (channel_axis 1) input against
/// the geometry.
template <typename Dims>
void check_conv_input(const std::string& layer, const ConvGeometry& g, const Dims& dims,
                      int channel_axis) {
  const char* layout = channel_axis == 1 ? "NCHW" : "NHWC";
  const Index c = dims[static_cast<std::size_t>(channel_axis)];
  const Index h = dims[channel_axis == 1 ? 2 : 1];
  const Index w = dims[channel_axis == 1 ? 3 : 2];
  if (c != g.in_channels)
    fail<ShapeError>(layer, ": input ", shape_str(dims), " (", layout, ") has ", c,
                     " channels, expected in_channels=", g.in_channels);
  check_fits(layer, g, h, w, [&] { return concat(shape_str(dims), " (", layout, ')'); });
}

/// The same for an NHWC activation shape (messages print it in PyTorch's NCHW order).
inline void check_conv_input(const std::string& layer, const ConvGeometry& g, const NhwcShape& s) {
  if (s.c != g.in_channels)
    fail<ShapeError>(layer, ": input ", s.str(), " has ", s.c, " channels, expected in_channels=", g.in_channels);
  check_fits(layer, g, s.h, s.w, [&] { return s.str(); });
}

}  // namespace detail
}  // namespace dynconv
