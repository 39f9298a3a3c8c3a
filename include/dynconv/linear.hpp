// dynconv: fully connected layer.
//
// Linear<T>: y = x W^T + b. Input [N, in_features] -> output [N, out_features];
// weight [out_features, in_features] (PyTorch's order), bias [out_features]. As a module it
// takes NHWC values [N, 1, 1, in_features] (flatten or pool to 1x1 first) and gives
// [N, 1, 1, out_features].
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/module.hpp>
#include <dynconv/tensor.hpp>

#define DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/gemm.hpp>
#include <dynconv/detail/matrix.hpp>
#undef DYNCONV_DETAIL_ALLOWED

#include <cmath>
#include <string>
#include <type_traits>

namespace dynconv {

struct LinearOptions {
  LinearOptions(Index in_features, Index out_features)
      : in_features_(in_features), out_features_(out_features) {}
  Index in_features() const { return in_features_; }
  Index out_features() const { return out_features_; }
  /// Whether the layer adds a bias. Default true.
  LinearOptions& bias(bool b) { bias_ = b; return *this; }
  bool bias() const { return bias_; }
  /// A name for error messages. Default empty.
  LinearOptions& name(std::string n) { name_ = std::move(n); return *this; }
  const std::string& name() const { return name_; }

 private:
  Index in_features_, out_features_;
  bool bias_ = true;
  std::string name_;
};

template <typename T>
class Linear final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::Linear<T>: T must be a floating-point type (float or double)");

 public:
  /// Validates the options and initialises weight and bias uniformly in +-1/sqrt(in_features).
  explicit Linear(const LinearOptions& options) : options_(options) {
    layer_ = detail::describe(options.name(), concat("Linear(", options.in_features(), " -> ",
                                                             options.out_features(), ')'));
    detail::check_range(layer_, "in_features", options.in_features());
    detail::check_range(layer_, "out_features", options.out_features());
    detail::checked_mul<OptionsError>(layer_, "the weight size", options.in_features(),
                                      options.out_features());
    const double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
    weight_ = Tensor2<T>(options.out_features(), options.in_features());
    detail::init_uniform(weight_.data(), weight_.size(), bound, 3);
    bias_ = Tensor1<T>(options.out_features());
    if (options.bias())
      detail::init_uniform(bias_.data(), bias_.size(), bound, 4);
    else
      bias_.setZero();
  }

  const LinearOptions& options() const { return options_; }
  std::string description() const override { return layer_; }
  Index in_features() const { return options_.in_features(); }
  Index out_features() const { return options_.out_features(); }

  /// [out_features, in_features]
  const Tensor2<T>& weight() const { return weight_; }
  void set_weight(const Tensor2<T>& w) {
    detail::check_shape<T, 2>(layer_, "weight", w, {out_features(), in_features()});
    weight_ = w;
  }
  bool has_bias() const { return has_bias_; }
  /// [out_features]; zeros for a layer without bias.
  const Tensor1<T>& bias() const { return bias_; }
  /// Sets the bias; a layer built with bias(false) gains one.
  void set_bias(const Tensor1<T>& b) {
    detail::check_shape<T, 1>(layer_, "bias", b, {out_features()});
    bias_ = b;
    has_bias_ = true;
  }

  /// [N, in_features] -> [N, out_features]
  Tensor2<T> forward(const Tensor2<T>& x) const {
    check_input(x.dimensions());
    const Index n = x.dimension(0);
    Tensor2<T> y(n, out_features());
    Workspace<T> ws(1);
    forward_into(x.data(), n, y.data(), ws, 0);
    return y;
  }
  using Module<T>::forward;

  /// [N, 1, 1, in_features] -> [N, 1, 1, out_features]; ShapeError for other shapes.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    const NhwcShape& s = in[0];
    if (s.h != 1 || s.w != 1 || s.c != in_features())
      fail<ShapeError>(layer_, ": input ", s.str(), " must be [N, ", in_features(),
                       "] (in_features features per sample, one pixel: flatten or pool first)");
    return {s.n, 1, 1, out_features()};
  }
  bool fuses_post_ops() const override { return true; }
  /// The dense layer is memory-bound on its weights: threads split the output features.
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    const Index n = x.n, outs = out_features();
    const Index parts = ctx.sample_parts(1, n * madds());
    ctx.pool().parallel_for(parts, [&](std::int64_t part, int worker) {
      const std::array<Index, 2> o = split_range(outs, parts, part);
      forward_into(x.data, n, y.data, o[0], o[1], ctx.workspace(), worker);
      for (Index b = 0; b < n; ++b) {
        T* row = y.data + b * outs + o[0];
        const Index len = o[1] - o[0];
        detail::activate_inplace(post.act, row, len);
        if (post.residual)
          for (Index i = 0; i < len; ++i) row[i] += post.residual[b * outs + o[0] + i];
        detail::activate_inplace(post.after, row, len);
      }
    });
  }

  /// "weight" [out_features, in_features] and, with a bias, "bias" [out_features].
  std::vector<ParameterInfo> parameters() const override {
    std::vector<ParameterInfo> p{{"weight", {out_features(), in_features()}}};
    if (has_bias_) p.push_back({"bias", {out_features()}});
    return p;
  }
  std::vector<T> parameter(const std::string& name) const override {
    if (name == "weight") return std::vector<T>(weight_.data(), weight_.data() + weight_.size());
    if (name == "bias" && has_bias_) return std::vector<T>(bias_.data(), bias_.data() + bias_.size());
    this->unknown_parameter(name);
  }
  void set_parameter(const std::string& name, const std::vector<T>& v) override {
    if (name == "weight") {
      this->check_count(name, v, {out_features(), in_features()});
      set_weight(Eigen::TensorMap<const Tensor2<T>>(v.data(), out_features(), in_features()));
    } else if (name == "bias" && has_bias_) {
      this->check_count(name, v, {out_features()});
      set_bias(Eigen::TensorMap<const Tensor1<T>>(v.data(), out_features()));
    } else {
      this->unknown_parameter(name);
    }
  }
  /// Parameters and multiply-adds of one sample.
  LayerCost cost(const std::vector<NhwcShape>&) const override {
    LayerCost c;
    c.params = params();
    c.conv_madds = madds();
    return c;
  }

  /// ShapeError unless an input of shape `dims` [N, features] has in_features features.
  void check_input(const std::array<Index, 2>& dims) const {
    if (dims[1] != in_features())
      fail<ShapeError>(layer_, ": input ", shape_str(dims), " has ", dims[1],
                               " features, expected in_features=", in_features());
  }

  /// Up to this many samples, dynconv's x86 kernels multiply W by each sample in turn, four rows
  /// of W (AVX2: one) at a time (detail::avx512_gemv): W is read once, and a GEMM would gather
  /// W^T into its packed panels on every call (on the AMD EPYC Zen 4 machine that gather was 11%
  /// of MobileNetV3-Small's time at batch 8).
  static constexpr Index kGemvSamples = 16;

  /// The network path: y [n, out_features] = x [n, in_features] W^T + b in caller memory,
  /// unchecked; a GEMV per sample for small n (kGemvSamples with dynconv's x86 kernels, 4 with
  /// Eigen's), else a GEMM with `worker`'s buffers from ws.
  void forward_into(const T* x, Index n, T* y, Workspace<T>& ws, int worker) const {
    forward_into(x, n, y, 0, out_features(), ws, worker);
  }
  /// The same for output features [o0, o1) only (y keeps its row stride out_features), so that
  /// threads can split the weight matrix between them.
  void forward_into(const T* x, Index n, T* y, Index o0, Index o1, Workspace<T>& ws, int worker) const {
    using Mat = detail::RowMajorMatrix<T>;
    using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
    const Index in = in_features(), out = out_features(), len = o1 - o0;
    if (len <= 0) return;
    Eigen::Map<const Mat> wm(weight_.data() + o0 * in, len, in);
    Eigen::Map<const Vec> bias(bias_.data() + o0, len);
#if DYNCONV_X86_KERNELS
    if constexpr (std::is_same<T, float>::value) {  // the kernel set in use (gemm_x86.hpp)
      const detail::KernelIsa isa = detail::kernel_isa();
      if (isa != detail::KernelIsa::Generic && n <= kGemvSamples) {
        (isa == detail::KernelIsa::Avx512 ? detail::avx512_gemv : detail::avx2_gemv)(
            len, in, weight_.data() + o0 * in, in, x, in, n, bias_.data() + o0, y + o0, out);
        return;
      }
    }
#endif
    if (n <= 4) {
      for (Index i = 0; i < n; ++i) {
        Eigen::Map<Vec> yv(y + i * out + o0, len);
        yv = bias;
        yv.noalias() += wm * Eigen::Map<const Vec>(x + i * in, in);
      }
      return;
    }
    for (Index i = 0; i < n; ++i) std::copy(bias_.data() + o0, bias_.data() + o1, y + i * out + o0);
    detail::gemm<T, /*TransposeB=*/true>(n, len, in, x, in, weight_.data() + o0 * in, in, y + o0, out, ws, worker);
  }

  /// Parameters and multiply-adds for one sample.
  std::int64_t params() const {
    return in_features() * out_features() + (has_bias_ ? out_features() : 0);
  }
  std::int64_t madds() const { return in_features() * out_features(); }

 private:
  LinearOptions options_;
  std::string layer_;
  Tensor2<T> weight_;
  Tensor1<T> bias_;  // zeros without a bias, so forward() needs no branch
  bool has_bias_ = options_.bias();
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class Linear<float>;
extern template class Linear<double>;
#endif

}  // namespace dynconv
