// dynconv: pooling, as PyTorch defines it.
//
//   MaxPool2d(Pool2dOptions)       max over kh x kw windows (dilated), -inf padding, NaN wins
//   AvgPool2d(Pool2dOptions)       mean over kh x kw windows, zero padding; count_include_pad
//                                  chooses the divisor
//   AdaptiveAvgPool2d(oh, ow)      mean over the windows that split H x W into oh x ow:
//                                  rows [floor(i*H/oh), ceil((i+1)*H/oh)), likewise columns
//   global_avg_pool(x)             [N, C, H, W] (Tensor4 NCHW, or NhwcTensor) -> [N, C]
//
// Output size along an axis of input size L (kernel k, stride s, padding p, dilation d):
//   out = floor((L + 2p - d*(k - 1) - 1) / s) + 1             (ceil_mode false)
//   out = ceil((L + 2p - d*(k - 1) - 1) / s) + 1, minus 1 when the last window would start
//         at or past L + p (in the right padding)             (ceil_mode true)
// and must be >= 1. PyTorch's rules hold for the options: kernel, stride, dilation >= 1,
// 0 <= padding <= kernel / 2 (per axis, integer division).
//
// Average pooling's divisor with count_include_pad (default, as PyTorch) is the window's size
// once clipped to the padded input [-p, L + p) (so a ceil-mode window that reaches past the
// padding counts only what lies inside it); without, the number of input pixels it covers.
//
// The sums accumulate in double: a running float sum over 112x112 pixels loses ~3e-6 relative,
// which the attention of ~50 dynamic layers amplifies past PyTorch parity.
//
// The pooling modules split their work over samples x output rows and allocate nothing in
// run() (sums of up to 256 channels at a time live on the stack).
#pragma once

#include <dynconv/conv_options.hpp>
#include <dynconv/elementwise.hpp>
#include <dynconv/error.hpp>
#include <dynconv/module.hpp>
#include <dynconv/runtime.hpp>
#include <dynconv/tensor.hpp>

#define DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/epilogue.hpp>
#include <dynconv/detail/gemm_x86.hpp>
#undef DYNCONV_DETAIL_ALLOWED

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dynconv {

/// [N, C, H, W] -> [N, C]: the mean over H x W of every channel.
template <typename T>
Tensor2<T> global_avg_pool(const Tensor4<T>& x) {
  const Index n = x.dimension(0), c = x.dimension(1), pixels = x.dimension(2) * x.dimension(3);
  if (pixels < 1)
    fail<ShapeError>("global_avg_pool: input ", shape_str(x.dimensions()),
                             " (NCHW) has no pixels");
  Tensor2<T> y(n, c);
  for (Index i = 0; i < n * c; ++i) {
    const T* p = x.data() + i * pixels;
    double sum = 0;
    for (Index k = 0; k < pixels; ++k) sum += static_cast<double>(p[k]);
    y.data()[i] = static_cast<T>(sum / static_cast<double>(pixels));
  }
  return y;
}

/// NHWC activations [N, H, W, C] -> [N, C]: the mean over H x W of every channel (the same
/// values as global_avg_pool of the NCHW tensor).
template <typename T>
Tensor2<T> global_avg_pool(const NhwcTensor<T>& x) {
  const NhwcShape s = x.shape();
  if (s.pixels() < 1) fail<ShapeError>("global_avg_pool: input ", s.str(), " has no pixels");
  Tensor2<T> y(s.n, s.c);
  detail::gap_nhwc(x.data(), s.n, s.pixels(), s.c, y.data());
  return y;
}

// ---------------------------------------------------------------------------------------------
// Options

/// Options of MaxPool2d and AvgPool2d, PyTorch's: the kernel is required, the rest are
/// chainable setters, e.g. Pool2dOptions(3).stride(2).padding(1).
class Pool2dOptions {
 public:
  /// A square kernel; the stride defaults to it.
  explicit Pool2dOptions(Index kernel) : Pool2dOptions(Pair{kernel, kernel}) {}
  /// A kernel {h, w}; the stride defaults to it.
  explicit Pool2dOptions(Pair kernel) : kernel_(kernel), stride_(kernel) {}

  const Pair& kernel_size() const { return kernel_; }
  /// Default: the kernel size (as PyTorch's stride=None).
  Pool2dOptions& stride(Index s) { return stride(s, s); }
  Pool2dOptions& stride(Index h, Index w) { return set(stride_, Pair{h, w}); }
  const Pair& stride() const { return stride_; }
  /// Implicit padding on both sides (-inf for max pooling, zeros for average pooling), at
  /// most kernel / 2 per axis. Default 0.
  Pool2dOptions& padding(Index p) { return padding(p, p); }
  Pool2dOptions& padding(Index h, Index w) { return set(padding_, Pair{h, w}); }
  const Pair& padding() const { return padding_; }
  /// Spacing between window taps: max pooling only. Default 1.
  Pool2dOptions& dilation(Index d) { return dilation(d, d); }
  Pool2dOptions& dilation(Index h, Index w) { return set(dilation_, Pair{h, w}); }
  const Pair& dilation() const { return dilation_; }
  /// Rounds the output size up instead of down (see pooling.hpp). Default false.
  Pool2dOptions& ceil_mode(bool c) { return set(ceil_mode_, c); }
  bool ceil_mode() const { return ceil_mode_; }
  /// Average pooling only: whether padding counts in the divisor. Default true (PyTorch).
  Pool2dOptions& count_include_pad(bool c) { return set(count_include_pad_, c); }
  bool count_include_pad() const { return count_include_pad_; }
  /// A name for error messages, e.g. "features.3". Default empty.
  Pool2dOptions& name(std::string n) { return set(name_, std::move(n)); }
  const std::string& name() const { return name_; }

 private:
  template <typename V>
  Pool2dOptions& set(V& field, V value) {
    field = std::move(value);
    return *this;
  }

  Pair kernel_, stride_;
  Pair padding_{0, 0}, dilation_{1, 1};
  bool ceil_mode_ = false, count_include_pad_ = true;
  std::string name_;
};

namespace detail {

/// floor(a / b) for b > 0 (C++ division truncates towards zero).
inline Index floor_div(Index a, Index b) { return a / b - ((a % b != 0 && a < 0) ? 1 : 0); }

/// PyTorch's pooling output size along one axis (pooling.hpp); may be < 1 (too small an input).
inline Index pool_output_size(Index in, Index kernel, Index stride, Index pad, Index dilation, bool ceil_mode) {
  const Index span = in + 2 * pad - dilation * (kernel - 1) - 1;
  Index out = floor_div(span + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

/// "3" for {3, 3}, "(3, 2)" otherwise.
inline std::string pair_str(const Pair& p) {
  return p[0] == p[1] ? std::to_string(p[0]) : concat('(', p[0], ", ", p[1], ')');
}

/// "MaxPool2d(3x3, stride 2, padding 1)"; dilation, ceil_mode and count_include_pad=false
/// appear when they differ from the defaults.
inline std::string describe_pool(const char* kind, const Pool2dOptions& o, bool avg) {
  std::string s = concat(kind, '(', o.kernel_size()[0], 'x', o.kernel_size()[1], ", stride ", pair_str(o.stride()));
  if (o.padding()[0] != 0 || o.padding()[1] != 0) s += ", padding " + pair_str(o.padding());
  if (o.dilation()[0] != 1 || o.dilation()[1] != 1) s += ", dilation " + pair_str(o.dilation());
  if (o.ceil_mode()) s += ", ceil_mode";
  if (avg && !o.count_include_pad()) s += ", count_include_pad=false";
  return describe(o.name(), s + ')');
}

/// The geometry of a validated pooling layer.
struct PoolGeometry {
  Index kh, kw, sh, sw, ph, pw, dh, dw;
  bool ceil_mode, count_include_pad;
};

/// Validates the options with PyTorch's rules; OptionsError naming `layer` otherwise.
inline PoolGeometry validate_pool(const std::string& layer, const Pool2dOptions& o, bool avg) {
  check_range(layer, "kernel_size[0]", o.kernel_size()[0]);
  check_range(layer, "kernel_size[1]", o.kernel_size()[1]);
  check_range(layer, "stride[0]", o.stride()[0]);
  check_range(layer, "stride[1]", o.stride()[1]);
  check_range(layer, "dilation[0]", o.dilation()[0]);
  check_range(layer, "dilation[1]", o.dilation()[1]);
  check_range(layer, "padding[0]", o.padding()[0], 0);
  check_range(layer, "padding[1]", o.padding()[1], 0);
  for (int a = 0; a < 2; ++a)
    if (o.padding()[a] > o.kernel_size()[a] / 2)
      fail<OptionsError>(layer, ": padding=", pair_str(o.padding()), " with kernel ", o.kernel_size()[0], 'x',
                         o.kernel_size()[1], ": padding must be at most half the kernel size (", o.kernel_size()[a],
                         " / 2 = ", o.kernel_size()[a] / 2, ") along ", a == 0 ? "the height" : "the width");
  if (avg && (o.dilation()[0] != 1 || o.dilation()[1] != 1))
    fail<OptionsError>(layer, ": dilation=", pair_str(o.dilation()), ": dilation applies to max pooling only");
  if (!avg && !o.count_include_pad())
    fail<OptionsError>(layer, ": count_include_pad=false: count_include_pad applies to average pooling only");
  return {o.kernel_size()[0], o.kernel_size()[1], o.stride()[0], o.stride()[1], o.padding()[0],
          o.padding()[1],     o.dilation()[0],    o.dilation()[1], o.ceil_mode(), o.count_include_pad()};
}

/// The output shape of pooling `in`, or ShapeError naming the layer, the input and the rule.
inline NhwcShape pool_output_shape(const std::string& layer, const PoolGeometry& g, const NhwcShape& in) {
  if (in.h < 1 || in.w < 1) fail<ShapeError>(layer, ": input ", in.str(), " has no pixels");
  check_range<ShapeError>(layer, "input height", in.h);
  check_range<ShapeError>(layer, "input width", in.w);
  const Index oh = pool_output_size(in.h, g.kh, g.sh, g.ph, g.dh, g.ceil_mode);
  const Index ow = pool_output_size(in.w, g.kw, g.sw, g.pw, g.dw, g.ceil_mode);
  if (oh < 1 || ow < 1)
    fail<ShapeError>(layer, ": input ", in.str(), " is ", in.h, 'x', in.w, ", too small for the window ",
                     g.dh * (g.kh - 1) + 1, 'x', g.dw * (g.kw - 1) + 1,
                     g.dh != 1 || g.dw != 1 ? concat(" (kernel ", g.kh, 'x', g.kw, ", dilation ", pair_str({g.dh, g.dw}), ')')
                                            : std::string(),
                     " after padding ", pair_str({g.ph, g.pw}), ": the output would be ", oh, 'x', ow,
                     " (needs >= 1x1)");
  return {in.n, oh, ow, in.c};
}

/// Multiply-adds (window taps) of pooling one sample, to decide on splitting it.
inline Index pool_work(const PoolGeometry& g, const NhwcShape& out) { return out.sample_size() * g.kh * g.kw; }

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// MaxPool2d, AvgPool2d

/// PyTorch's MaxPool2d: the maximum over each (dilated) window, padding counting as -inf
/// (a window over padding only gives -inf); a NaN in a window makes its output NaN.
template <typename T>
class MaxPool2d final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::MaxPool2d<T>: T must be a floating-point type (float or double)");

 public:
  /// @throws OptionsError for invalid options (see pooling.hpp), or count_include_pad(false).
  explicit MaxPool2d(const Pool2dOptions& options)
      : options_(options),
        layer_(detail::describe_pool("MaxPool2d", options, false)),
        g_(detail::validate_pool(layer_, options, false)) {}

  const Pool2dOptions& options() const { return options_; }
  /// "MaxPool2d(3x3, stride 2, padding 1)", prefixed by the name if one was given.
  std::string description() const override { return layer_; }
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    return detail::pool_output_shape(layer_, g_, in[0]);
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    const detail::PoolGeometry& g = g_;
    const Index c = x.c;
    detail::for_sample_parts(ctx, x.n, y.h, detail::pool_work(g, y.shape()), [&](Index b, Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r)
        for (Index q = 0; q < y.w; ++q) {
          T* __restrict out = y.data + ((b * y.h + r) * y.w + q) * c;
          std::fill(out, out + c, -std::numeric_limits<T>::infinity());
          for (Index i = 0; i < g.kh; ++i) {
            const Index ih = r * g.sh - g.ph + i * g.dh;
            if (ih < 0 || ih >= x.h) continue;
            for (Index j = 0; j < g.kw; ++j) {
              const Index iw = q * g.sw - g.pw + j * g.dw;
              if (iw < 0 || iw >= x.w) continue;
              const T* __restrict src = x.data + ((b * x.h + ih) * x.w + iw) * c;
              for (Index k = 0; k < c; ++k) out[k] = (src[k] > out[k] || src[k] != src[k]) ? src[k] : out[k];
            }
          }
        }
      detail::post_ops_span(post, y.data, (b * y.h + r0) * y.w * c, (r1 - r0) * y.w * c);
    });
  }

 private:
  Pool2dOptions options_;
  std::string layer_;
  detail::PoolGeometry g_;
};

/// PyTorch's AvgPool2d: the mean over each window with zero padding; the divisor is the
/// window clipped to the padded input (count_include_pad, the default) or the number of input
/// pixels in it. Sums accumulate in double.
template <typename T>
class AvgPool2d final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::AvgPool2d<T>: T must be a floating-point type (float or double)");

 public:
  /// @throws OptionsError for invalid options (see pooling.hpp), or a dilation other than 1.
  explicit AvgPool2d(const Pool2dOptions& options)
      : options_(options),
        layer_(detail::describe_pool("AvgPool2d", options, true)),
        g_(detail::validate_pool(layer_, options, true)) {}

  const Pool2dOptions& options() const { return options_; }
  /// "AvgPool2d(2x2, stride 2)", prefixed by the name if one was given.
  std::string description() const override { return layer_; }
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    return detail::pool_output_shape(layer_, g_, in[0]);
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    const detail::PoolGeometry& g = g_;
    const Index c = x.c;
    detail::for_sample_parts(ctx, x.n, y.h, detail::pool_work(g, y.shape()), [&](Index b, Index r0, Index r1) {
      constexpr Index kChunk = 256;
      double sum[kChunk];
      for (Index r = r0; r < r1; ++r)
        for (Index q = 0; q < y.w; ++q) {
          Index h0 = r * g.sh - g.ph, w0 = q * g.sw - g.pw;
          Index h1 = std::min(h0 + g.kh, x.h + g.ph), w1 = std::min(w0 + g.kw, x.w + g.pw);
          const Index padded = (h1 - h0) * (w1 - w0);
          h0 = std::max<Index>(h0, 0), w0 = std::max<Index>(w0, 0);
          h1 = std::min(h1, x.h), w1 = std::min(w1, x.w);
          const double divisor = static_cast<double>(g.count_include_pad ? padded : (h1 - h0) * (w1 - w0));
          T* out = y.data + ((b * y.h + r) * y.w + q) * c;
          for (Index c0 = 0; c0 < c; c0 += kChunk) {
            const Index len = std::min(kChunk, c - c0);
            std::fill(sum, sum + len, 0.0);
            for (Index ih = h0; ih < h1; ++ih)
              for (Index iw = w0; iw < w1; ++iw) {
                const T* src = x.data + ((b * x.h + ih) * x.w + iw) * c + c0;
                for (Index k = 0; k < len; ++k) sum[k] += static_cast<double>(src[k]);
              }
            for (Index k = 0; k < len; ++k) out[c0 + k] = static_cast<T>(sum[k] / divisor);
          }
        }
      detail::post_ops_span(post, y.data, (b * y.h + r0) * y.w * c, (r1 - r0) * y.w * c);
    });
  }

 private:
  Pool2dOptions options_;
  std::string layer_;
  detail::PoolGeometry g_;
};

// ---------------------------------------------------------------------------------------------
// AdaptiveAvgPool2d

/// PyTorch's AdaptiveAvgPool2d: [N, C, H, W] -> [N, C, out_h, out_w], output (i, j) the mean
/// over rows [floor(i*H/out_h), ceil((i+1)*H/out_h)) and likewise columns. Any input of at
/// least one pixel fits (out_h may exceed H: windows then repeat). Sums accumulate in double,
/// the same on any number of threads. A global pool (1x1) whose input's producer wrote the
/// channel means (Inputs::means, in a graph) takes those: the attentions' pooling, 64 pixels
/// summed in float and those sums in double, which can differ in the last bit.
template <typename T>
class AdaptiveAvgPool2d final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::AdaptiveAvgPool2d<T>: T must be a floating-point type (float or double)");

 public:
  /// A square output size x size. @throws OptionsError unless size >= 1.
  explicit AdaptiveAvgPool2d(Index size, std::string name = {}) : AdaptiveAvgPool2d(size, size, std::move(name)) {}
  /// @throws OptionsError unless out_h, out_w >= 1.
  AdaptiveAvgPool2d(Index out_h, Index out_w, std::string name = {})
      : out_h_(out_h), out_w_(out_w), layer_(detail::describe(name, concat("AdaptiveAvgPool2d(", out_h, 'x', out_w, ')'))) {
    detail::check_range(layer_, "output height", out_h);
    detail::check_range(layer_, "output width", out_w);
  }

  Index out_h() const { return out_h_; }
  Index out_w() const { return out_w_; }
  /// "AdaptiveAvgPool2d(3x3)", prefixed by the name if one was given.
  std::string description() const override { return layer_; }
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    if (in[0].h < 1 || in[0].w < 1) fail<ShapeError>(layer_, ": input ", in[0].str(), " has no pixels");
    detail::check_range<ShapeError>(layer_, "input height", in[0].h);
    detail::check_range<ShapeError>(layer_, "input width", in[0].w);
    return {in[0].n, out_h_, out_w_, in[0].c};
  }
  bool pools_input() const override { return out_h_ == 1 && out_w_ == 1; }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    const Index c = x.c, oh = out_h_, ow = out_w_;
    if (in.means && pools_input()) {
      std::copy(in.means, in.means + x.n * c, y.data);
      return detail::apply_post_ops(post, y, ctx);
    }
    // Every input pixel is read about max(1, out/in) times per axis.
    const Index work = std::max(x.h, oh) * std::max(x.w, ow) * c;
    detail::for_sample_parts(ctx, x.n, oh, work, [&](Index b, Index r0, Index r1) {
      constexpr Index kChunk = 256;
      double sum[kChunk];
      for (Index r = r0; r < r1; ++r) {
        const Index h0 = r * x.h / oh, h1 = ((r + 1) * x.h + oh - 1) / oh;
        for (Index q = 0; q < ow; ++q) {
          const Index w0 = q * x.w / ow, w1 = ((q + 1) * x.w + ow - 1) / ow;
          const double count = static_cast<double>((h1 - h0) * (w1 - w0));
          T* out = y.data + ((b * oh + r) * ow + q) * c;
          for (Index c0 = 0; c0 < c; c0 += kChunk) {
            const Index len = std::min(kChunk, c - c0);
            std::fill(sum, sum + len, 0.0);
            for (Index ih = h0; ih < h1; ++ih)
              for (Index iw = w0; iw < w1; ++iw) {
                const T* src = x.data + ((b * x.h + ih) * x.w + iw) * c + c0;
                for (Index k = 0; k < len; ++k) sum[k] += static_cast<double>(src[k]);
              }
            for (Index k = 0; k < len; ++k) out[c0 + k] = static_cast<T>(sum[k] / count);
          }
        }
      }
      detail::post_ops_span(post, y.data, (b * oh + r0) * ow * c, (r1 - r0) * ow * c);
    });
  }

 private:
  Index out_h_, out_w_;
  std::string layer_;
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class MaxPool2d<float>;
extern template class MaxPool2d<double>;
extern template class AvgPool2d<float>;
extern template class AvgPool2d<double>;
extern template class AdaptiveAvgPool2d<float>;
extern template class AdaptiveAvgPool2d<double>;
#endif

}  // namespace dynconv
