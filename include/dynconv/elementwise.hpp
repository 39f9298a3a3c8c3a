// dynconv: element-wise and shape modules.
//
//   ActivationLayer(a)   y = a(x); named forms ReLU, ReLU6, HardSwish, HardSigmoid, Sigmoid,
//                        SiLU, Tanh, GELU (activation.hpp defines each)
//   Add, Sub, Mul        y = x0 op x1: equal shapes, or one of them [N, C, 1, 1] (one value
//                        per sample and channel) broadcast over the pixels of the other, e.g.
//                        a squeeze-excite gate x * s. The output has the full shape.
//   Concat               the inputs side by side along channels (PyTorch's dim=1); any number
//                        >= 1 of inputs, equal N, H and W
//   Identity             y = x
//   Flatten              [N, C, H, W] -> [N, C*H*W] (as torch.flatten(x, 1) on NCHW), kept as
//                        the activation [N, C*H*W, 1, 1]: element c*H*W + h*W + w of a sample
//                        is x[c, h, w]
//   Softmax, LogSoftmax  over the channels of every pixel (PyTorch's dim=1), computed from
//                        x - max(x), so any finite input gives a finite result; the sum of
//                        the exponentials accumulates in double
//
// Every module applies its PostOps (y = after(act(y) + residual)) inside the same parallel
// task that computed that part of y. None has parameters; none allocates in run().
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/error.hpp>
#include <dynconv/module.hpp>
#include <dynconv/runtime.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dynconv {

namespace detail {

/// y[begin, begin + count) = after(act(y) + residual): the PostOps of one part of an output
/// (residual laid out as y, so it is read at the same offsets). Compiled for the kernel set in
/// use (isa.hpp), as the layers' own loops below.
template <typename T>
void post_ops_span(const PostOps<T>& post, T* y, Index begin, Index count) {
  if (post.empty() || count <= 0) return;
  run_for_kernel_isa([&] {
    T* p = y + begin;
    activate_inplace(post.act, p, count);
    if (post.residual) {
      const T* q = post.residual + begin;
      for (Index i = 0; i < count; ++i) p[i] += q[i];
    }
    activate_inplace(post.after, p, count);
  });
}

/// Calls f(b, u0, u1) for parts [u0, u1) of `units` (output rows, pixels or channels) of each
/// of n samples, over ctx's pool: one task per sample when the batch keeps the pool busy or a
/// sample's `work` is below ctx.min_parallel_madds(), else each sample split in up to
/// threads() parts (Context::sample_parts). Tasks of one call write disjoint outputs.
template <typename T, typename F>
void for_sample_parts(Context<T>& ctx, Index n, Index units, Index work, F&& f) {
  if (n <= 0 || units <= 0) return;
  const Index parts = std::min(ctx.sample_parts(n, work), units);
  ctx.pool().parallel_for(n * parts, [&](std::int64_t task, int) {
    const Index b = task / parts;
    const std::array<Index, 2> r = split_range(units, parts, task % parts);
    if (r[0] < r[1]) f(b, r[0], r[1]);
  });
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Activations

/// y = a(x) element-wise, then the PostOps. ReLU, ReLU6, ... below are its named forms.
/// Not final: the named forms derive from it (its overrides are final).
template <typename T>
class ActivationLayer : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::ActivationLayer<T>: T must be a floating-point type (float or double)");

 public:
  /// `name` prefixes the description in messages ("features.2: ReLU").
  explicit ActivationLayer(Activation a, std::string name = {})
      : activation_(a), layer_(detail::describe(name, activation_name(a))) {}

  Activation activation() const { return activation_; }
  /// "ReLU", "HardSwish", ... (activation_name), prefixed by the name if one was given.
  std::string description() const final { return layer_; }
  /// The input's shape.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const final {
    this->check_arity(in, 1);
    return in[0];
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const final {
    const NhwcView<const T>& x = in[0];
    const Index c = x.c;
    detail::for_sample_parts(ctx, x.n, x.pixels(), x.sample_size(), [&](Index b, Index p0, Index p1) {
      const Index begin = b * x.sample_size() + p0 * c, count = (p1 - p0) * c;
      const T* __restrict src = x.data + begin;
      T* __restrict dst = y.data + begin;
      if (activation_ == Activation::Identity) {
        std::copy(src, src + count, dst);
      } else {
        detail::run_for_kernel_isa([&] {
          detail::with_activation<T>(activation_, [&](auto f) {
            for (Index i = 0; i < count; ++i) dst[i] = f(src[i]);
          });
        });
      }
      detail::post_ops_span(post, y.data, begin, count);
    });
  }

 private:
  Activation activation_;
  std::string layer_;
};

/// max(x, 0)
template <typename T>
class ReLU final : public ActivationLayer<T> {
 public:
  explicit ReLU(std::string name = {}) : ActivationLayer<T>(Activation::ReLU, std::move(name)) {}
};
/// min(max(x, 0), 6)
template <typename T>
class ReLU6 final : public ActivationLayer<T> {
 public:
  explicit ReLU6(std::string name = {}) : ActivationLayer<T>(Activation::ReLU6, std::move(name)) {}
};
/// x * ReLU6(x + 3) / 6
template <typename T>
class HardSwish final : public ActivationLayer<T> {
 public:
  explicit HardSwish(std::string name = {}) : ActivationLayer<T>(Activation::HardSwish, std::move(name)) {}
};
/// ReLU6(x + 3) / 6
template <typename T>
class HardSigmoid final : public ActivationLayer<T> {
 public:
  explicit HardSigmoid(std::string name = {}) : ActivationLayer<T>(Activation::HardSigmoid, std::move(name)) {}
};
/// 1 / (1 + exp(-x))
template <typename T>
class Sigmoid final : public ActivationLayer<T> {
 public:
  explicit Sigmoid(std::string name = {}) : ActivationLayer<T>(Activation::Sigmoid, std::move(name)) {}
};
/// x * Sigmoid(x)
template <typename T>
class SiLU final : public ActivationLayer<T> {
 public:
  explicit SiLU(std::string name = {}) : ActivationLayer<T>(Activation::SiLU, std::move(name)) {}
};
/// tanh(x)
template <typename T>
class Tanh final : public ActivationLayer<T> {
 public:
  explicit Tanh(std::string name = {}) : ActivationLayer<T>(Activation::Tanh, std::move(name)) {}
};
/// x * (1 + erf(x / sqrt(2))) / 2 (PyTorch's exact GELU)
template <typename T>
class GELU final : public ActivationLayer<T> {
 public:
  explicit GELU(std::string name = {}) : ActivationLayer<T>(Activation::GELU, std::move(name)) {}
};

// ---------------------------------------------------------------------------------------------
// Binary element-wise operations with per-channel broadcast

namespace detail {

struct AddOp {
  static constexpr const char* kind = "Add";
  template <typename T>
  T operator()(T a, T b) const { return a + b; }
};
struct SubOp {
  static constexpr const char* kind = "Sub";
  template <typename T>
  T operator()(T a, T b) const { return a - b; }
};
struct MulOp {
  static constexpr const char* kind = "Mul";
  template <typename T>
  T operator()(T a, T b) const { return a * b; }
};

/// Whether `s` ([N, C, 1, 1]) broadcasts over the pixels of `full`: same N and C.
inline bool broadcasts_over(const NhwcShape& s, const NhwcShape& full) {
  return s.h == 1 && s.w == 1 && s.n == full.n && s.c == full.c;
}

/// y = x0 op x1 with the broadcast rule of Add, Sub and Mul (elementwise.hpp).
template <typename T, typename Op>
class BinaryModule : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::Add/Sub/Mul<T>: T must be a floating-point type (float or double)");

 public:
  explicit BinaryModule(std::string name) : layer_(describe(name, Op::kind)) {}

  /// "Add", "Sub" or "Mul", prefixed by the name if one was given.
  std::string description() const final { return layer_; }
  int arity() const final { return 2; }
  /// The full shape (of the input that is not broadcast); ShapeError naming both shapes
  /// unless they are equal or one broadcasts over the other.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const final {
    this->check_arity(in, 2);
    const NhwcShape &a = in[0], &b = in[1];
    if (a == b || broadcasts_over(b, a)) return a;
    if (broadcasts_over(a, b)) return b;
    fail<ShapeError>(layer_, ": input shapes ", a.str(), " and ", b.str(),
                     " do not match: they must be equal, or one of them [N, C, 1, 1] with the "
                     "other's N and C (broadcast over its pixels)");
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const final {
    const NhwcView<const T>&a = in[0], &b = in[1];
    const Index c = y.c, pixels = y.pixels();
    // Per input: the distance between the values of consecutive pixels (c, or 0 for a
    // broadcast [N, C, 1, 1] input) and of consecutive samples.
    const bool a_full = a.shape() == y.shape(), b_full = b.shape() == y.shape();
    const Index a_pixel = a_full ? c : 0, b_pixel = b_full ? c : 0;
    const Index a_sample = a_full ? y.sample_size() : c, b_sample = b_full ? y.sample_size() : c;
    const Op op;
    for_sample_parts(ctx, y.n, pixels, y.sample_size(), [&](Index s, Index p0, Index p1) {
      run_for_kernel_isa([&] {
        for (Index p = p0; p < p1; ++p) {
          const T* __restrict pa = a.data + s * a_sample + p * a_pixel;
          const T* __restrict pb = b.data + s * b_sample + p * b_pixel;
          T* __restrict out = y.data + (s * pixels + p) * c;
          for (Index k = 0; k < c; ++k) out[k] = op(pa[k], pb[k]);
        }
      });
      post_ops_span(post, y.data, (s * pixels + p0) * c, (p1 - p0) * c);
    });
  }

 private:
  std::string layer_;
};

}  // namespace detail

/// y = x0 + x1 (equal shapes, or one of them [N, C, 1, 1] broadcast over the other's pixels).
template <typename T>
class Add final : public detail::BinaryModule<T, detail::AddOp> {
 public:
  explicit Add(std::string name = {}) : detail::BinaryModule<T, detail::AddOp>(std::move(name)) {}
};
/// y = x0 - x1 (equal shapes, or one of them [N, C, 1, 1] broadcast over the other's pixels).
template <typename T>
class Sub final : public detail::BinaryModule<T, detail::SubOp> {
 public:
  explicit Sub(std::string name = {}) : detail::BinaryModule<T, detail::SubOp>(std::move(name)) {}
};
/// y = x0 * x1 (equal shapes, or one of them [N, C, 1, 1] broadcast over the other's pixels,
/// e.g. a squeeze-excite gate).
template <typename T>
class Mul final : public detail::BinaryModule<T, detail::MulOp> {
 public:
  explicit Mul(std::string name = {}) : detail::BinaryModule<T, detail::MulOp>(std::move(name)) {}
};

// ---------------------------------------------------------------------------------------------
// Concat, Identity, Flatten

/// The inputs side by side along channels: [N, C0 + C1 + ..., H, W]. One or more inputs with
/// equal N, H and W.
template <typename T>
class Concat final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::Concat<T>: T must be a floating-point type (float or double)");

 public:
  explicit Concat(std::string name = {}) : layer_(detail::describe(name, "Concat")) {}

  std::string description() const override { return layer_; }
  int arity() const override { return Module<T>::kVariadic; }
  /// OptionsError without inputs; ShapeError naming the input and both shapes when an input's
  /// N, H or W differs from input 0's, and when the channels add up to more than
  /// detail::kMaxDimension.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    if (in.empty()) fail<OptionsError>(layer_, ": takes at least 1 input, got 0");
    NhwcShape out = in[0];
    for (std::size_t i = 0; i < in.size(); ++i) {
      const NhwcShape& s = in[i];
      if (s.n != out.n || s.h != out.h || s.w != out.w)
        fail<ShapeError>(layer_, ": input ", i, ' ', s.str(), " does not match input 0 ", in[0].str(),
                         ": N, H and W must be equal (the inputs are concatenated along channels)");
      if (s.c < 0 || s.c > detail::kMaxDimension || (i > 0 && out.c > detail::kMaxDimension - s.c))
        fail<ShapeError>(layer_, ": the channels of inputs 0 to ", i, " add up to more than ", detail::kMaxDimension);
      if (i > 0) out.c += s.c;
    }
    return out;
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const Index pixels = y.pixels(), c = y.c;
    detail::for_sample_parts(ctx, y.n, pixels, y.sample_size(), [&](Index b, Index p0, Index p1) {
      for (Index p = p0; p < p1; ++p) {
        T* out = y.data + (b * pixels + p) * c;
        for (int i = 0; i < in.size; ++i) {
          const NhwcView<const T>& x = in[i];
          const T* src = x.data + (b * pixels + p) * x.c;
          out = std::copy(src, src + x.c, out);
        }
      }
      detail::post_ops_span(post, y.data, (b * pixels + p0) * c, (p1 - p0) * c);
    });
  }

 private:
  std::string layer_;
};

/// y = x.
template <typename T>
class Identity final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::Identity<T>: T must be a floating-point type (float or double)");

 public:
  explicit Identity(std::string name = {}) : layer_(detail::describe(name, "Identity")) {}

  std::string description() const override { return layer_; }
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    return in[0];
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    detail::for_sample_parts(ctx, x.n, x.pixels(), x.sample_size(), [&](Index b, Index p0, Index p1) {
      const Index begin = b * x.sample_size() + p0 * x.c, count = (p1 - p0) * x.c;
      std::copy(x.data + begin, x.data + begin + count, y.data + begin);
      detail::post_ops_span(post, y.data, begin, count);
    });
  }

 private:
  std::string layer_;
};

/// [N, C, H, W] -> [N, C*H*W, 1, 1], in PyTorch's flatten order of NCHW: output channel
/// c*H*W + h*W + w of a sample is input (c, h, w).
template <typename T>
class Flatten final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::Flatten<T>: T must be a floating-point type (float or double)");

 public:
  explicit Flatten(std::string name = {}) : layer_(detail::describe(name, "Flatten")) {}

  std::string description() const override { return layer_; }
  /// ShapeError when H x W x C exceeds detail::kMaxDimension (the features a Linear takes).
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    const NhwcShape& x = in[0];
    const Index hw = detail::checked_mul<ShapeError>(layer_, "the flattened size", x.h, x.w);
    const Index features = detail::checked_mul<ShapeError>(layer_, "the flattened size", hw, x.c);
    if (features > detail::kMaxDimension)
      fail<ShapeError>(layer_, ": input ", x.str(), " flattens to ", features, " features, more than ",
                       detail::kMaxDimension);
    return {x.n, 1, 1, features};
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    const Index pixels = x.pixels(), c = x.c;
    // Split by input channel: each part writes whole runs out[ch*pixels .. (ch+1)*pixels).
    detail::for_sample_parts(ctx, x.n, c, x.sample_size(), [&](Index b, Index c0, Index c1) {
      const T* src = x.sample(b);
      T* out = y.data + b * x.sample_size();
      for (Index ch = c0; ch < c1; ++ch)
        for (Index p = 0; p < pixels; ++p) out[ch * pixels + p] = src[p * c + ch];
      detail::post_ops_span(post, y.data, b * x.sample_size() + c0 * pixels, (c1 - c0) * pixels);
    });
  }

 private:
  std::string layer_;
};

// ---------------------------------------------------------------------------------------------
// Softmax and LogSoftmax over channels

namespace detail {

/// Softmax (log = false) or log-softmax of every pixel of x over its channels (dim=1 of NCHW).
template <typename T>
class ChannelSoftmax : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::Softmax/LogSoftmax<T>: T must be a floating-point type (float or double)");

 public:
  ChannelSoftmax(bool log, const std::string& name)
      : log_(log), layer_(describe(name, log ? "LogSoftmax(dim=1)" : "Softmax(dim=1)")) {}

  /// "Softmax(dim=1)" or "LogSoftmax(dim=1)", prefixed by the name if one was given.
  std::string description() const final { return layer_; }
  /// The input's shape; ShapeError for an input without channels.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const final {
    this->check_arity(in, 1);
    if (in[0].c < 1) fail<ShapeError>(layer_, ": input ", in[0].str(), " has no channels");
    return in[0];
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const final {
    const NhwcView<const T>& x = in[0];
    const Index c = x.c;
    for_sample_parts(ctx, x.n, x.pixels(), x.sample_size(), [&](Index b, Index p0, Index p1) {
      for (Index p = p0; p < p1; ++p) {
        const Index at = b * x.sample_size() + p * c;
        const T* __restrict src = x.data + at;
        T* __restrict out = y.data + at;
        // A NaN anywhere makes the maximum NaN, and so every output of the pixel NaN.
        T top = src[0];
        for (Index k = 1; k < c; ++k) top = (src[k] > top || src[k] != src[k]) ? src[k] : top;
        double sum = 0;
        if (log_) {
          for (Index k = 0; k < c; ++k) sum += std::exp(static_cast<double>(src[k] - top));
          const T lse = static_cast<T>(std::log(sum));
          for (Index k = 0; k < c; ++k) out[k] = (src[k] - top) - lse;
        } else {
          for (Index k = 0; k < c; ++k) sum += static_cast<double>(out[k] = std::exp(src[k] - top));
          const double inv = 1.0 / sum;
          for (Index k = 0; k < c; ++k) out[k] = static_cast<T>(static_cast<double>(out[k]) * inv);
        }
      }
      post_ops_span(post, y.data, b * x.sample_size() + p0 * c, (p1 - p0) * c);
    });
  }

 private:
  bool log_;
  std::string layer_;
};

}  // namespace detail

/// exp(x - max) / sum(exp(x - max)) over the channels of every pixel (torch.softmax(x, dim=1)).
template <typename T>
class Softmax final : public detail::ChannelSoftmax<T> {
 public:
  explicit Softmax(std::string name = {}) : detail::ChannelSoftmax<T>(false, name) {}
};
/// (x - max) - log(sum(exp(x - max))) over the channels of every pixel
/// (torch.log_softmax(x, dim=1)).
template <typename T>
class LogSoftmax final : public detail::ChannelSoftmax<T> {
 public:
  explicit LogSoftmax(std::string name = {}) : detail::ChannelSoftmax<T>(true, name) {}
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class ActivationLayer<float>;
extern template class ActivationLayer<double>;
extern template class ReLU<float>;
extern template class ReLU<double>;
extern template class ReLU6<float>;
extern template class ReLU6<double>;
extern template class HardSwish<float>;
extern template class HardSwish<double>;
extern template class HardSigmoid<float>;
extern template class HardSigmoid<double>;
extern template class Sigmoid<float>;
extern template class Sigmoid<double>;
extern template class SiLU<float>;
extern template class SiLU<double>;
extern template class Tanh<float>;
extern template class Tanh<double>;
extern template class GELU<float>;
extern template class GELU<double>;
extern template class detail::BinaryModule<float, detail::AddOp>;
extern template class detail::BinaryModule<double, detail::AddOp>;
extern template class detail::BinaryModule<float, detail::SubOp>;
extern template class detail::BinaryModule<double, detail::SubOp>;
extern template class detail::BinaryModule<float, detail::MulOp>;
extern template class detail::BinaryModule<double, detail::MulOp>;
extern template class Add<float>;
extern template class Add<double>;
extern template class Sub<float>;
extern template class Sub<double>;
extern template class Mul<float>;
extern template class Mul<double>;
extern template class Concat<float>;
extern template class Concat<double>;
extern template class Identity<float>;
extern template class Identity<double>;
extern template class Flatten<float>;
extern template class Flatten<double>;
extern template class detail::ChannelSoftmax<float>;
extern template class detail::ChannelSoftmax<double>;
extern template class Softmax<float>;
extern template class Softmax<double>;
extern template class LogSoftmax<float>;
extern template class LogSoftmax<double>;
#endif

}  // namespace dynconv
