// dynconv: Upsample, PyTorch 1.13's F.interpolate (nn.Upsample) in nearest and bilinear mode.
//
// The output size is the `size` given, or floor(L * scale_factor) along an axis of size L.
// Along each axis, output index d reads input coordinates computed with
//   scale = 1 / scale_factor           when a scale factor was given (recompute_scale_factor
//                                      unset, as PyTorch's default)
//         = L / out                    when a size was given
//   nearest:                    src = min(floor(d * scale), L - 1)
//   bilinear, align_corners=F:  src = max(0, (d + 0.5) * scale - 0.5); when out == L the
//                               axis is copied unchanged (PyTorch does, whatever the scale)
//   bilinear, align_corners=T:  src = d * (L - 1) / (out - 1), 0 when out == 1
// and bilinear mode weighs rows floor(src) and floor(src) + 1 (clamped to L - 1) by
// 1 - frac(src) and frac(src), columns likewise.
//
// Precision, to give PyTorch's indices exactly: scale and coordinates are computed in T (float
// or double), and nearest mode rounds d * scale to float before the floor, as PyTorch's CPU
// kernel for NCHW tensors does. (PyTorch's channels-last kernel, which it also picks for NCHW
// tensors with one channel, rounds differently in rare cases and copies when out == L or
// out == 2L in nearest mode; dynconv follows the NCHW kernel.)
#pragma once

#include <dynconv/elementwise.hpp>
#include <dynconv/error.hpp>
#include <dynconv/module.hpp>
#include <dynconv/runtime.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dynconv {

enum class UpsampleMode { Nearest, Bilinear };

inline const char* upsample_mode_name(UpsampleMode m) {
  switch (m) {
    case UpsampleMode::Nearest: return "nearest";
    case UpsampleMode::Bilinear: return "bilinear";
  }
  return "?";
}

/// Options of an Upsample: exactly one of size and scale_factor, the mode, align_corners.
/// Validated by the Upsample constructor.
class UpsampleOptions {
 public:
  /// The output size (h, w).
  UpsampleOptions& size(Index h, Index w) {
    size_ = Pair{h, w};
    return *this;
  }
  UpsampleOptions& size(Index s) { return size(s, s); }
  const std::optional<Pair>& size() const { return size_; }
  /// The factors (h, w) the input size is multiplied by (the output size is rounded down).
  UpsampleOptions& scale_factor(double h, double w) {
    scale_factor_ = std::array<double, 2>{h, w};
    return *this;
  }
  UpsampleOptions& scale_factor(double s) { return scale_factor(s, s); }
  const std::optional<std::array<double, 2>>& scale_factor() const { return scale_factor_; }
  /// Default Nearest.
  UpsampleOptions& mode(UpsampleMode m) {
    mode_ = m;
    return *this;
  }
  UpsampleMode mode() const { return mode_; }
  /// Bilinear mode only: whether the corner pixels of input and output align (see
  /// upsample.hpp). Default false.
  UpsampleOptions& align_corners(bool a) {
    align_corners_ = a;
    return *this;
  }
  bool align_corners() const { return align_corners_; }
  /// A name for error messages. Default empty.
  UpsampleOptions& name(std::string n) {
    name_ = std::move(n);
    return *this;
  }
  const std::string& name() const { return name_; }

 private:
  std::optional<Pair> size_;
  std::optional<std::array<double, 2>> scale_factor_;
  UpsampleMode mode_ = UpsampleMode::Nearest;
  bool align_corners_ = false;
  std::string name_;
};

namespace detail {

/// "Upsample(size 14x14, nearest)", "Upsample(scale_factor 2x2, bilinear, align_corners)".
inline std::string describe_upsample(const UpsampleOptions& o) {
  std::string s = "Upsample(";
  if (o.size()) s += concat("size ", (*o.size())[0], 'x', (*o.size())[1]);
  if (o.size() && o.scale_factor()) s += ", ";
  if (o.scale_factor()) s += concat("scale_factor ", (*o.scale_factor())[0], 'x', (*o.scale_factor())[1]);
  if (!o.size() && !o.scale_factor()) s += "no size";
  s += concat(", ", upsample_mode_name(o.mode()));
  if (o.align_corners()) s += ", align_corners";
  return describe(o.name(), s + ')');
}

/// Where output index d of one axis reads, in T as PyTorch computes it (upsample.hpp).
template <typename T>
struct UpsampleAxis {
  Index in = 0, out = 0;
  T scale = T(0);
  bool copy = false;  // bilinear, out == in, !align_corners: the identity

  /// Nearest mode: the input index.
  Index nearest(Index d) const {
    const Index s = static_cast<Index>(std::floor(static_cast<float>(scale * static_cast<T>(d))));
    return std::min(s, in - 1);
  }
  /// Bilinear mode: the two input indices and the weight of the second.
  void linear(Index d, bool align_corners, Index& i0, Index& i1, T& w1) const {
    if (copy) {
      i0 = i1 = d;
      w1 = T(0);
      return;
    }
    const T src = align_corners ? scale * static_cast<T>(d)
                                : std::max(T(0), scale * (static_cast<T>(d) + T(0.5)) - T(0.5));
    i0 = static_cast<Index>(src);  // src >= 0: truncation is the floor
    i1 = i0 + (i0 < in - 1 ? 1 : 0);
    w1 = std::min(std::max(src - static_cast<T>(i0), T(0)), T(1));
  }
};

template <typename T>
UpsampleAxis<T> upsample_axis(Index in, Index out, const std::optional<double>& factor, UpsampleMode mode,
                              bool align_corners) {
  UpsampleAxis<T> a;
  a.in = in;
  a.out = out;
  if (mode == UpsampleMode::Bilinear && align_corners)
    a.scale = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
  else
    a.scale = factor ? static_cast<T>(1.0 / *factor) : static_cast<T>(in) / static_cast<T>(out);
  a.copy = mode == UpsampleMode::Bilinear && !align_corners && out == in;
  return a;
}

}  // namespace detail

/// Nearest or bilinear resizing of every channel (PyTorch 1.13's F.interpolate; the rules are
/// in upsample.hpp). [N, C, H, W] -> [N, C, out_h, out_w].
template <typename T>
class Upsample final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::Upsample<T>: T must be a floating-point type (float or double)");

 public:
  /// @throws OptionsError unless exactly one of size (each >= 1) and scale_factor (each
  /// finite and > 0) is set, or with align_corners in nearest mode.
  explicit Upsample(const UpsampleOptions& options) : options_(options), layer_(detail::describe_upsample(options)) {
    const UpsampleOptions& o = options_;
    if (!o.size() && !o.scale_factor())
      fail<OptionsError>(layer_, ": set one of size and scale_factor");
    if (o.size() && o.scale_factor())
      fail<OptionsError>(layer_, ": set only one of size and scale_factor, not both");
    if (o.size()) {
      detail::check_range(layer_, "size[0]", (*o.size())[0]);
      detail::check_range(layer_, "size[1]", (*o.size())[1]);
    } else {
      for (int a = 0; a < 2; ++a) {
        const double f = (*o.scale_factor())[static_cast<std::size_t>(a)];
        if (!(f > 0) || !std::isfinite(f))
          fail<OptionsError>(layer_, ": scale_factor[", a, "]=", f, " must be finite and > 0");
      }
    }
    if (o.align_corners() && o.mode() != UpsampleMode::Bilinear)
      fail<OptionsError>(layer_, ": align_corners applies to bilinear mode only (mode is ",
                         upsample_mode_name(o.mode()), ')');
  }

  const UpsampleOptions& options() const { return options_; }
  /// "Upsample(scale_factor 2x2, nearest)", prefixed by the name if one was given.
  std::string description() const override { return layer_; }

  /// ShapeError for an input without pixels, or one a scale factor shrinks to no pixels.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    const NhwcShape& x = in[0];
    if (x.h < 1 || x.w < 1) fail<ShapeError>(layer_, ": input ", x.str(), " has no pixels");
    detail::check_range<ShapeError>(layer_, "input height", x.h);
    detail::check_range<ShapeError>(layer_, "input width", x.w);
    if (options_.size()) return {x.n, (*options_.size())[0], (*options_.size())[1], x.c};
    const std::array<double, 2>& f = *options_.scale_factor();
    const double oh = std::floor(static_cast<double>(x.h) * f[0]), ow = std::floor(static_cast<double>(x.w) * f[1]);
    if (oh < 1 || ow < 1)
      fail<ShapeError>(layer_, ": input ", x.str(), " is ", x.h, 'x', x.w, ", scaled by ", f[0], 'x', f[1],
                       " to floor(", static_cast<double>(x.h) * f[0], ") x floor(", static_cast<double>(x.w) * f[1],
                       ") = ", oh, 'x', ow, " pixels: the output needs >= 1x1");
    if (oh > static_cast<double>(detail::kMaxDimension) || ow > static_cast<double>(detail::kMaxDimension))
      fail<ShapeError>(layer_, ": input ", x.str(), " scaled by ", f[0], 'x', f[1], " is ", oh, 'x', ow,
                       " pixels, more than ", detail::kMaxDimension, " along an axis");
    return {x.n, static_cast<Index>(oh), static_cast<Index>(ow), x.c};
  }

  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    const UpsampleMode mode = options_.mode();
    const bool ac = options_.align_corners();
    const std::optional<std::array<double, 2>>& f = options_.scale_factor();
    const detail::UpsampleAxis<T> ah = detail::upsample_axis<T>(
        x.h, y.h, f ? std::optional<double>((*f)[0]) : std::nullopt, mode, ac);
    const detail::UpsampleAxis<T> aw = detail::upsample_axis<T>(
        x.w, y.w, f ? std::optional<double>((*f)[1]) : std::nullopt, mode, ac);
    const Index c = x.c;
    const Index work = y.sample_size() * (mode == UpsampleMode::Bilinear ? 4 : 1);
    detail::for_sample_parts(ctx, x.n, y.h, work, [&](Index b, Index r0, Index r1) {
      const T* xs = x.sample(b);
      for (Index r = r0; r < r1; ++r) {
        T* out = y.sample(b) + r * y.w * c;
        if (mode == UpsampleMode::Nearest) {
          const T* row = xs + ah.nearest(r) * x.w * c;
          for (Index q = 0; q < y.w; ++q, out += c) {
            const T* src = row + aw.nearest(q) * c;
            std::copy(src, src + c, out);
          }
        } else {
          Index h0, h1;
          T v1;
          ah.linear(r, ac, h0, h1, v1);
          const T v0 = T(1) - v1;
          const T* row0 = xs + h0 * x.w * c;
          const T* row1 = xs + h1 * x.w * c;
          for (Index q = 0; q < y.w; ++q, out += c) {
            Index w0, w1;
            T u1;
            aw.linear(q, ac, w0, w1, u1);
            const T u0 = T(1) - u1;
            const T *__restrict p00 = row0 + w0 * c, *__restrict p01 = row0 + w1 * c;
            const T *__restrict p10 = row1 + w0 * c, *__restrict p11 = row1 + w1 * c;
            for (Index k = 0; k < c; ++k)
              out[k] = v0 * (u0 * p00[k] + u1 * p01[k]) + v1 * (u0 * p10[k] + u1 * p11[k]);
          }
        }
      }
      detail::post_ops_span(post, y.data, (b * y.h + r0) * y.w * c, (r1 - r0) * y.w * c);
    });
  }

 private:
  UpsampleOptions options_;
  std::string layer_;
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class Upsample<float>;
extern template class Upsample<double>;
#endif

}  // namespace dynconv
