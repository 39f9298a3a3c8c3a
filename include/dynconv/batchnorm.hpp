// dynconv: inference-mode batch normalisation.
//
// BatchNorm2d: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel,
// i.e. y = scale * x + shift with scale = weight / sqrt(running_var + eps) and
// shift = bias - scale * running_mean. Input/output [N, C, H, W] (forward of a Tensor4) or NHWC
// (forward of an NhwcTensor). Conv2d::fold_batchnorm and DynamicConv2d::fold_batchnorm fold it
// exactly into the preceding convolution (all K kernels of a dynamic one: paper.md); a Graph
// folds every BatchNorm that directly follows a convolution when it loads its weights.
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/module.hpp>
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
/// on NCHW or NHWC input; folds exactly into a preceding convolution
/// (Conv2d::fold_batchnorm, DynamicConv2d::fold_batchnorm).
///
/// Errors: OptionsError for invalid options or a negative running_var, ShapeError for a
/// parameter or input of the wrong shape (@ref errors_batchnorm).
template <typename T>
class BatchNorm2d final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::BatchNorm2d<T>: T must be a floating-point type (float or double)");

 public:
  /// Starts as the identity (weight 1, bias 0, mean 0, var 1), as PyTorch.
  /// @throws OptionsError if num_features < 1 or eps is not finite and > 0 (@ref errors_batchnorm).
  explicit BatchNorm2d(const BatchNorm2dOptions& options) : options_(options) {
    layer_ = detail::describe(options.name(),
                              concat("BatchNorm2d(", options.num_features(), ')'));
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
    update();
  }

  const BatchNorm2dOptions& options() const { return options_; }
  std::string description() const override { return layer_; }
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
        fail<OptionsError>(layer_, ": running_var[", i, "]=", v(i), " must be >= 0");
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

  /// Whether this BatchNorm was folded into the convolution before it (fold_into_identity):
  /// it then computes the identity, its effect being in the convolution.
  bool folded() const { return folded_; }
  /// Marks the BatchNorm as folded into the convolution before it, whose kernels now hold its
  /// scale: it computes the identity from now on, and its parameters become those of a
  /// BatchNorm that is exactly the identity but for `bias` (weight sqrt(1 + eps), mean 0,
  /// var 1), so that saving conv + BatchNorm and loading them again gives the same function.
  void fold_into_identity(const Tensor1<T>& bias) {
    detail::check_shape<T, 1>(layer_, "bias", bias, {num_features()});
    weight_.setConstant(std::sqrt(T(1) + static_cast<T>(options_.eps())));
    mean_.setZero();
    var_.setConstant(T(1));
    bias_ = bias;
    update();
    folded_ = true;
  }

  using Module<T>::forward;
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    if (in[0].c != num_features())
      fail<ShapeError>(layer_, ": input ", in[0].str(), " has ", in[0].c, " channels, expected ", num_features());
    return in[0];
  }
  /// y = post(scale * x + shift) per channel (the identity once folded), split over pixels.
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    const Index c = num_features(), rows = x.n * x.pixels();
    const Index parts = rows * c >= (Index(1) << 16) ? ctx.threads() : 1;
    ctx.pool().parallel_for(parts, [&](std::int64_t part, int) {
      const std::array<Index, 2> r = split_range(rows, parts, part);
      for (Index p = r[0]; p < r[1]; ++p) {
        const T* __restrict a = x.data + p * c;
        T* __restrict o = y.data + p * c;
        if (folded_)
          for (Index k = 0; k < c; ++k) o[k] = a[k];
        else
          for (Index k = 0; k < c; ++k) o[k] = scale_[k] * a[k] + shift_[k];
      }
    });
    detail::apply_post_ops(post, y, ctx);
  }

  /// "weight", "bias", "running_mean", "running_var", each [num_features]. (PyTorch's
  /// "num_batches_tracked" counter is not a parameter; loading ignores it.)
  std::vector<ParameterInfo> parameters() const override {
    const Index c = num_features();
    return {{"weight", {c}}, {"bias", {c}}, {"running_mean", {c}}, {"running_var", {c}}};
  }
  std::vector<T> parameter(const std::string& name) const override {
    const Tensor1<T>* t = name == "weight" ? &weight_ : name == "bias" ? &bias_ : name == "running_mean" ? &mean_
                          : name == "running_var" ? &var_ : nullptr;
    if (!t) this->unknown_parameter(name);
    return std::vector<T>(t->data(), t->data() + t->size());
  }
  void set_parameter(const std::string& name, const std::vector<T>& v) override {
    const Index c = num_features();
    if (name != "weight" && name != "bias" && name != "running_mean" && name != "running_var")
      this->unknown_parameter(name);
    this->check_count(name, v, {c});
    const Tensor1<T> t = Eigen::TensorMap<const Tensor1<T>>(v.data(), c);
    if (name == "weight") set_weight(t);
    if (name == "bias") set_bias(t);
    if (name == "running_mean") set_running_mean(t);
    if (name == "running_var") set_running_var(t);
  }
  /// Loads the four tensors; the BatchNorm is no longer folded afterwards.
  void load(WeightLoader& w, const std::string& prefix) override {
    folded_ = false;
    Module<T>::load(w, prefix);
  }
  /// Parameters: weight and bias (PyTorch counts the running statistics as buffers).
  LayerCost cost(const std::vector<NhwcShape>&) const override {
    LayerCost c;
    c.params = 2 * num_features();
    return c;
  }

 private:
  void set(Tensor1<T>& field, const Tensor1<T>& value, const char* what) {
    detail::check_shape<T, 1>(layer_, what, value, {num_features()});
    field = value;
    update();
  }
  void update() {
    const Tensor1<T> s = scale(), b = shift();
    scale_.assign(s.data(), s.data() + s.size());
    shift_.assign(b.data(), b.data() + b.size());
  }

  BatchNorm2dOptions options_;
  std::string layer_;
  Tensor1<T> weight_, bias_, mean_, var_;
  std::vector<T> scale_, shift_;  // scale() and shift(), kept for run()
  bool folded_ = false;
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

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class BatchNorm2d<float>;
extern template class BatchNorm2d<double>;
#endif

}  // namespace dynconv
