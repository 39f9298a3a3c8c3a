// dynconv: inference-mode batch normalisation.
//
// BatchNorm2d: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel,
// i.e. y = scale * x + shift with scale = weight / sqrt(running_var + eps) and
// shift = bias - scale * running_mean. Input/output [N, C, H, W] (forward) or [N, H, W, C]
// (forward_nhwc). Conv2d::fold_batchnorm and DynamicConv2d::fold_batchnorm fold it exactly
// into the preceding convolution (all K kernels of a dynamic one: paper.md).
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/tensor.hpp>

#include <cmath>
#include <string>
#include <type_traits>

namespace dynconv {

/// Options of a BatchNorm2d: the channel count, and eps. Validated by the BatchNorm2d
/// constructor (@ref errors_batchnorm).
struct BatchNorm2dOptions {
  explicit BatchNorm2dOptions(Index num_features) : num_features_(num_features) {}
  Index num_features() const { return num_features_; }
  /// Added to the variance. Default 1e-5 (PyTorch).
  BatchNorm2dOptions& eps(double e) { eps_ = e; return *this; }
  double eps() const { return eps_; }
  /// A name for error messages. Default empty.
  BatchNorm2dOptions& name(std::string n) { name_ = std::move(n); return *this; }
  const std::string& name() const { return name_; }

 private:
  Index num_features_;
  double eps_ = 1e-5;
  std::string name_;
};

/// Inference-mode batch normalisation, y = scale * x + shift per channel (see batchnorm.hpp),
/// on NCHW (forward) or NHWC (forward_nhwc) input; folds exactly into a preceding convolution
/// (Conv2d::fold_batchnorm, DynamicConv2d::fold_batchnorm).
///
/// Errors: OptionsError for invalid options or a negative running_var, ShapeError for a
/// parameter or input of the wrong shape (@ref errors_batchnorm).
template <typename T>
class BatchNorm2d {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::BatchNorm2d<T>: T must be a floating-point type (float or double)");

 public:
  /// Starts as the identity (weight 1, bias 0, mean 0, var 1), as PyTorch.
  /// @throws OptionsError if num_features < 1 or eps is not finite and > 0 (@ref errors_batchnorm).
  explicit BatchNorm2d(const BatchNorm2dOptions& options) : options_(options) {
    layer_ = detail::describe(options.name(),
                              detail::concat("BatchNorm2d(", options.num_features(), ')'));
    detail::check_range(layer_, "num_features", options.num_features());
    detail::check_positive_finite<T>(layer_, "eps", options.eps());
    const Index c = options.num_features();
    weight_ = Tensor1<T>(c);
    weight_.setConstant(T(1));
    bias_ = Tensor1<T>(c);
    bias_.setZero();
    mean_ = Tensor1<T>(c);
    mean_.setZero();
    var_ = Tensor1<T>(c);
    var_.setConstant(T(1));
  }

  const BatchNorm2dOptions& options() const { return options_; }
  const std::string& description() const { return layer_; }
  Index num_features() const { return options_.num_features(); }

  const Tensor1<T>& weight() const { return weight_; }
  const Tensor1<T>& bias() const { return bias_; }
  const Tensor1<T>& running_mean() const { return mean_; }
  const Tensor1<T>& running_var() const { return var_; }
  void set_weight(const Tensor1<T>& w) { set(weight_, w, "weight"); }
  void set_bias(const Tensor1<T>& b) { set(bias_, b, "bias"); }
  void set_running_mean(const Tensor1<T>& m) { set(mean_, m, "running_mean"); }
  /// Every value must be >= 0.
  /// @throws ShapeError unless v has shape [num_features];
  /// @throws OptionsError if a value is negative or NaN.
  void set_running_var(const Tensor1<T>& v) {
    detail::check_shape<T, 1>(layer_, "running_var", v, {num_features()});
    for (Index i = 0; i < v.size(); ++i)
      if (!(v(i) >= T(0)))
        detail::fail<OptionsError>(layer_, ": running_var[", i, "]=", v(i), " must be >= 0");
    set(var_, v, "running_var");
  }

  /// Per-channel factor weight / sqrt(running_var + eps).
  Tensor1<T> scale() const {
    Tensor1<T> s(num_features());
    for (Index c = 0; c < s.size(); ++c)
      s(c) = weight_(c) / std::sqrt(var_(c) + static_cast<T>(options_.eps()));
    return s;
  }
  /// Per-channel offset bias - scale * running_mean.
  Tensor1<T> shift() const {
    Tensor1<T> s = scale();
    Tensor1<T> b(num_features());
    for (Index c = 0; c < b.size(); ++c) b(c) = bias_(c) - s(c) * mean_(c);
    return b;
  }

  /// [N, C, H, W] -> [N, C, H, W]
  Tensor4<T> forward(const Tensor4<T>& x) const { return apply(x, 1); }
  /// [N, H, W, C] -> [N, H, W, C]
  Tensor4<T> forward_nhwc(const Tensor4<T>& x) const { return apply(x, 3); }

 private:
  void set(Tensor1<T>& field, const Tensor1<T>& value, const char* what) {
    detail::check_shape<T, 1>(layer_, what, value, {num_features()});
    field = value;
  }

  Tensor4<T> apply(const Tensor4<T>& x, int channel_axis) const {
    if (x.dimension(channel_axis) != num_features())
      detail::fail<ShapeError>(layer_, ": input ", shape_str(x.dimensions()), " (",
                               channel_axis == 1 ? "NCHW" : "NHWC", ") has ",
                               x.dimension(channel_axis), " channels, expected ", num_features());
    const Tensor1<T> s = scale(), b = shift();
    Tensor4<T> y(x.dimensions());
    const Index c = num_features();
    const Index inner = channel_axis == 1 ? x.dimension(2) * x.dimension(3) : 1;
    const Index total = x.size();
    for (Index i = 0; i < total; ++i) {
      const Index ch = (i / inner) % c;
      y.data()[i] = s(ch) * x.data()[i] + b(ch);
    }
    return y;
  }

  BatchNorm2dOptions options_;
  std::string layer_;
  Tensor1<T> weight_, bias_, mean_, var_;
};

namespace detail {

/// Folds `bn` into `kernels` convolutions that precede it: each kernel's weights
/// [Cout, per_out] (PyTorch order, consecutive) scale by s = bn.scale() per output channel,
/// each bias [Cout] becomes s * bias + bn.shift().
template <typename T>
void fold_batchnorm(const BatchNorm2d<T>& bn, Index kernels, Index per_out, T* weights, T* bias) {
  const Tensor1<T> s = bn.scale(), shift = bn.shift();
  const Index cout = bn.num_features();
  for (Index k = 0; k < kernels; ++k)
    for (Index c = 0; c < cout; ++c) {
      T* w = weights + (k * cout + c) * per_out;
      for (Index i = 0; i < per_out; ++i) w[i] *= s(c);
      bias[k * cout + c] = s(c) * bias[k * cout + c] + shift(c);
    }
}

}  // namespace detail
}  // namespace dynconv
