// dynconv: the pieces networks are composed of.
//
// Module<T> is the one composition interface of blocks and models: a network is a list of
// modules that run on NHWC activations ([N, H, W, C], see conv2d.hpp's layout note), load
// their parameters by their PyTorch names, save them under the same names, and count their cost.
//
// ConvUnit<T> is torchvision's "conv -> BatchNorm -> activation" with the convolution either
// static (Conv2d) or dynamic (DynamicConv2d), as a DynamicPolicy decides from the unit's
// ConvSite. The BatchNorm is folded into the convolution when the weights are loaded.
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/batchnorm.hpp>
#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/weights.hpp>

#include <array>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dynconv {

/// The cost of one named layer (a convolution unit, a linear layer) of a network.
struct NamedCost {
  std::string name;
  LayerCost cost;
};

/// Where a convolution sits in its network: what a DynamicPolicy decides on.
enum class ConvRole {
  Stem,        // the first convolution of the network
  Expand,      // 1x1 expansion of an inverted residual
  Depthwise,   // depthwise convolution of an inverted residual
  Project,     // 1x1 projection of an inverted residual
  Last,        // the 1x1 convolution before the pooling (MobileNets)
  BlockConv,   // a 3x3 convolution of a ResNet basic block
  Downsample,  // the 1x1 shortcut convolution of a ResNet block
};

inline const char* role_name(ConvRole r) {
  switch (r) {
    case ConvRole::Stem: return "stem";
    case ConvRole::Expand: return "expand";
    case ConvRole::Depthwise: return "depthwise";
    case ConvRole::Project: return "project";
    case ConvRole::Last: return "last";
    case ConvRole::BlockConv: return "block_conv";
    case ConvRole::Downsample: return "downsample";
  }
  return "?";
}

struct ConvSite {
  std::string name;  // parameter prefix of the convolution, e.g. "features.3.conv.1.0"
  ConvRole role;
  Index in_channels, out_channels, kernel, stride, groups;
};

/// Decides which convolutions of a network are dynamic.
using DynamicPolicy = std::function<bool(const ConvSite&)>;

/// Settings of the dynamic convolutions a policy creates.
struct DynamicSettings {
  Index kernels = 4;
  Index reduction = 4;
  Index min_hidden = 1;
  double temperature = 1.0;
};

/// y += r over n values (a residual added by a module that cannot fuse it).
template <typename T>
void add_residual(T* y, const T* r, Index n) {
  if (r)
    for (Index i = 0; i < n; ++i) y[i] += r[i];
}

template <typename T>
class Module {
 public:
  virtual ~Module() = default;
  /// [N, H, W, Cin] -> [N, Hout, Wout, Cout] (ShapeError if x does not fit), on the calling
  /// thread with buffers of its own. Networks run through models::Session instead.
  Tensor4<T> forward_nhwc(const Tensor4<T>& x) const {
    Tensor4<T> y(output_shape(x.dimensions()));
    ThreadPool pool(1);
    detail::Workspace<T> ws(1);
    detail::Exec<T> ex{pool, ws};
    run(detail::view(x), detail::view(y), ex, nullptr);
    return y;
  }
  /// The output shape [N, Hout, Wout, Cout] of an NHWC input shape; ShapeError if it does
  /// not fit. Allocates nothing unless it throws.
  virtual std::array<Index, 4> output_shape(const std::array<Index, 4>& in) const = 0;
  /// y = module(x) + residual (when not null; laid out as y) into caller memory, shapes
  /// already checked with output_shape, work split over ex's threads, buffers from ex's
  /// workspace.
  virtual void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, detail::Exec<T>& ex,
                   const T* residual) const = 0;
  /// Takes this module's parameters (by their full names) from `weights`.
  virtual void load(WeightLoader& weights) = 0;
  /// Writes this module's parameters under the names load() takes.
  virtual void save(SafeTensorsWriter& out) const = 0;
  /// Appends the cost of each layer for an input of h x w; returns the output size.
  virtual std::array<Index, 2> cost(Index h, Index w, std::vector<NamedCost>& out) const = 0;
};

/// What a ConvUnit is: its convolution, the names of its parameters, and what follows it.
struct ConvUnitSpec {
  std::string conv_name;  // e.g. "features.0.0" or "layer1.0.conv1"
  std::string bn_name;    // e.g. "features.0.1" or "layer1.0.bn1"; empty: no BatchNorm
  ConvRole role;
  Index in_channels, out_channels, kernel, stride = 1, groups = 1;
  Activation activation = Activation::Identity;
  double bn_eps = 1e-5;
  bool conv_bias = false;  // torchvision's convolutions before a BatchNorm have none
};

/// conv (static or dynamic) -> BatchNorm (folded at load) -> activation, "same" padding.
template <typename T>
class ConvUnit final : public Module<T> {
 public:
  ConvUnit(const ConvUnitSpec& spec, const DynamicPolicy& policy, const DynamicSettings& dyn)
      : spec_(spec) {
    const ConvSite site{spec.conv_name, spec.role, spec.in_channels, spec.out_channels,
                        spec.kernel, spec.stride, spec.groups};
    if (policy && policy(site)) {
      dynamic_.emplace(DynamicConv2dOptions(spec.in_channels, spec.out_channels, spec.kernel)
                           .stride(spec.stride)
                           .padding((spec.kernel - 1) / 2)
                           .groups(spec.groups)
                           .bias(spec.conv_bias)
                           .kernels(dyn.kernels)
                           .reduction(dyn.reduction)
                           .min_hidden(dyn.min_hidden)
                           .temperature(dyn.temperature)
                           .name(spec.conv_name));
    } else {
      static_.emplace(Conv2dOptions(spec.in_channels, spec.out_channels, spec.kernel)
                          .stride(spec.stride)
                          .padding((spec.kernel - 1) / 2)
                          .groups(spec.groups)
                          .bias(spec.conv_bias)
                          .name(spec.conv_name));
    }
    // A fresh torchvision model in eval mode: BatchNorm with weight 1, bias 0, mean 0, var 1.
    if (!spec.bn_name.empty()) fold(BatchNorm2d<T>(bn_options()));
  }

  bool is_dynamic() const { return dynamic_.has_value(); }
  const ConvUnitSpec& spec() const { return spec_; }
  /// The convolution (BatchNorm folded in); exactly one of them is set.
  const std::optional<Conv2d<T>>& static_conv() const { return static_; }
  const std::optional<DynamicConv2d<T>>& dynamic_conv() const { return dynamic_; }

  std::array<Index, 4> output_shape(const std::array<Index, 4>& in) const override {
    const ConvGeometry& g = geometry();
    detail::check_conv_input(dynamic_ ? dynamic_->description() : static_->description(), g, in, 3);
    return {in[0], g.out_h(in[1]), g.out_w(in[2]), g.out_channels};
  }
  /// conv -> (folded BN) -> activation, then + residual, fused into the convolution.
  void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, detail::Exec<T>& ex,
           const T* residual) const override {
    run(x, y, ex, residual, Activation::Identity);
  }
  /// The same, then `after` (a ResNet block's ReLU after its shortcut), still fused.
  void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, detail::Exec<T>& ex, const T* residual,
           Activation after) const {
    if (dynamic_)
      dynamic_->run(x, y, spec_.activation, residual, ex, after);
    else
      static_->run(x, y, spec_.activation, residual, ex, after);
  }

  void load(WeightLoader& w) override {
    const ConvGeometry& g = geometry();
    const std::string& p = spec_.conv_name;
    const std::array<Index, 4> kshape{g.out_channels, g.in_per_group(), g.kernel_h, g.kernel_w};
    if (dynamic_) {
      DynamicConv2d<T>& d = *dynamic_;
      const Index k = d.kernels(), hidden = d.attention().hidden();
      const bool upcycle = w.mode() == LoadMode::Upcycle && !w.contains(p + ".attention.fc1.weight");
      if (upcycle) {
        // A static checkpoint: its kernel (and bias) becomes all K kernels (and biases).
        const Tensor4<T> one = w.take<T, 4>(p + ".weight", kshape);
        d.set_weight(one.reshape(std::array<Index, 5>{1, kshape[0], kshape[1], kshape[2], kshape[3]})
                         .broadcast(std::array<Index, 5>{k, 1, 1, 1, 1}));
        if (spec_.conv_bias) {
          const Tensor1<T> b = w.take<T, 1>(p + ".bias", {g.out_channels});
          d.set_bias(b.reshape(std::array<Index, 2>{1, g.out_channels})
                         .broadcast(std::array<Index, 2>{k, 1}));
        }
      } else {
        d.set_weight(w.take<T, 5>(p + ".weight", {k, kshape[0], kshape[1], kshape[2], kshape[3]}));
        if (spec_.conv_bias) d.set_bias(w.take<T, 2>(p + ".bias", {k, g.out_channels}));
        auto& att = d.attention();
        att.fc1().set_weight(w.take<T, 2>(p + ".attention.fc1.weight", {hidden, g.in_channels}));
        att.fc1().set_bias(w.take<T, 1>(p + ".attention.fc1.bias", {hidden}));
        att.fc2().set_weight(w.take<T, 2>(p + ".attention.fc2.weight", {k, hidden}));
        att.fc2().set_bias(w.take<T, 1>(p + ".attention.fc2.bias", {k}));
        att.set_temperature(w.take_scalar_or(p + ".attention.temperature", 1.0));
      }
    } else {
      static_->set_weight(w.take<T, 4>(p + ".weight", kshape));
      if (spec_.conv_bias) static_->set_bias(w.take<T, 1>(p + ".bias", {g.out_channels}));
    }
    if (spec_.bn_name.empty()) return;
    if (!spec_.conv_bias) clear_bias();
    const std::string& b = spec_.bn_name;
    BatchNorm2d<T> bn(bn_options());
    bn.set_weight(w.take<T, 1>(b + ".weight", {g.out_channels}));
    bn.set_bias(w.take<T, 1>(b + ".bias", {g.out_channels}));
    bn.set_running_mean(w.take<T, 1>(b + ".running_mean", {g.out_channels}));
    bn.set_running_var(w.take<T, 1>(b + ".running_var", {g.out_channels}));
    fold(bn);
    // Finite tensors can still fold into infinite ones (weight 3e38 / sqrt(var + eps)).
    if (!folded_finite())
      detail::fail<FormatError>(w.source(), ": folding BatchNorm '", b, "' into '", p,
                                "' overflows ", sizeof(T) == sizeof(float) ? "float" : "the scalar type",
                                ": the weight, running_var and bias values give non-finite kernels");
  }

  /// Writes the folded convolution and, in place of the BatchNorm, one that is exactly the
  /// identity but for its bias (weight sqrt(1 + eps), var 1, mean 0, bias = folded bias), so
  /// that loading the file again gives the same function.
  void save(SafeTensorsWriter& out) const override {
    const std::string& p = spec_.conv_name;
    const Index cout = geometry().out_channels;
    Tensor1<T> folded_bias(cout);
    if (dynamic_) {
      const DynamicConv2d<T>& d = *dynamic_;
      out.add(p + ".weight", d.weight());
      const Tensor2<T> b = d.bias();
      if (spec_.conv_bias || spec_.bn_name.empty()) {
        if (spec_.conv_bias) out.add(p + ".bias", b);
        folded_bias.setZero();
      } else {
        // Folding a BatchNorm into bias-free kernels gives every kernel the same bias.
        for (Index c = 0; c < cout; ++c) folded_bias(c) = b(0, c);
      }
      const auto& att = d.attention();
      out.add(p + ".attention.fc1.weight", att.fc1().weight());
      out.add(p + ".attention.fc1.bias", att.fc1().bias());
      out.add(p + ".attention.fc2.weight", att.fc2().weight());
      out.add(p + ".attention.fc2.bias", att.fc2().bias());
      Tensor<T, 0> tau;
      tau() = att.temperature();
      out.add(p + ".attention.temperature", tau);
    } else {
      out.add(p + ".weight", static_->weight());
      if (spec_.conv_bias) {
        out.add(p + ".bias", static_->bias());
        folded_bias.setZero();
      } else {
        folded_bias = static_->bias();
      }
    }
    if (spec_.bn_name.empty()) return;
    const std::string& b = spec_.bn_name;
    Tensor1<T> gamma(cout), zeros(cout), ones(cout);
    gamma.setConstant(std::sqrt(T(1) + static_cast<T>(spec_.bn_eps)));
    zeros.setZero();
    ones.setConstant(T(1));
    out.add(b + ".weight", gamma);
    out.add(b + ".bias", folded_bias);
    out.add(b + ".running_mean", zeros);
    out.add(b + ".running_var", ones);
  }

  /// Parameters and MAdds are counted as PyTorch counts the unfolded unit: convolution (K
  /// kernels and the attention FCs when dynamic) plus the BatchNorm's weight and bias. (At run
  /// time the folded BatchNorm bias is aggregated too: K x Cout more multiply-adds, not counted.)
  std::array<Index, 2> cost(Index h, Index w, std::vector<NamedCost>& out) const override {
    LayerCost c = dynamic_ ? dynamic_->cost(h, w) : static_->cost(h, w);
    const Index cout = geometry().out_channels;
    if (!spec_.bn_name.empty() && !spec_.conv_bias) {
      // The folded bias is the BatchNorm's, not a parameter of the convolution.
      c.params -= dynamic_ ? dynamic_->kernels() * cout : cout;
      c.aggregation_madds -= dynamic_ ? dynamic_->kernels() * cout : 0;
    }
    if (!spec_.bn_name.empty()) c.params += 2 * cout;
    out.push_back({spec_.conv_name, c});
    return {geometry().out_h(h), geometry().out_w(w)};
  }

 private:
  const ConvGeometry& geometry() const {
    return dynamic_ ? dynamic_->geometry() : static_->geometry();
  }
  BatchNorm2dOptions bn_options() const {
    return BatchNorm2dOptions(spec_.out_channels).eps(spec_.bn_eps).name(spec_.bn_name);
  }
  void fold(const BatchNorm2d<T>& bn) {
    if (dynamic_)
      dynamic_->fold_batchnorm(bn);
    else
      static_->fold_batchnorm(bn);
  }
  bool folded_finite() const {
    auto finite = [](const auto& t) {
      for (Index i = 0; i < t.size(); ++i)
        if (!std::isfinite(t.data()[i])) return false;
      return true;
    };
    return dynamic_ ? finite(dynamic_->weight()) && finite(dynamic_->bias())
                    : finite(static_->weight()) && finite(static_->bias());
  }
  /// Drops the bias a previous fold left, before folding freshly loaded BatchNorm statistics.
  void clear_bias() {
    const Index cout = geometry().out_channels;
    if (dynamic_) {
      Tensor2<T> zero(dynamic_->kernels(), cout);
      zero.setZero();
      dynamic_->set_bias(zero);
    } else {
      Tensor1<T> zero(cout);
      zero.setZero();
      static_->set_bias(zero);
    }
  }

  ConvUnitSpec spec_;
  std::optional<Conv2d<T>> static_;
  std::optional<DynamicConv2d<T>> dynamic_;
};

/// Runs modules one after the other.
template <typename T>
class Sequential final : public Module<T> {
 public:
  template <typename M, typename... Args>
  M& add(Args&&... args) {
    auto m = std::make_unique<M>(std::forward<Args>(args)...);
    M& ref = *m;
    modules_.push_back(std::move(m));
    return ref;
  }
  std::size_t size() const { return modules_.size(); }
  const Module<T>& operator[](std::size_t i) const { return *modules_[i]; }

  std::array<Index, 4> output_shape(const std::array<Index, 4>& in) const override {
    std::array<Index, 4> shape = in;
    for (const auto& m : modules_) shape = m->output_shape(shape);
    return shape;
  }
  /// Each module's output goes to a pooled buffer that is released once the next module has
  /// read it; the last module writes y and takes the residual.
  void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, detail::Exec<T>& ex,
           const T* residual) const override {
    if (modules_.empty()) {
      std::copy(x.data, x.data + x.size(), y.data);
      add_residual(y.data, residual, y.size());
      return;
    }
    typename detail::Workspace<T>::Lease held;
    detail::Nhwc<const T> in = x;
    for (std::size_t i = 0; i < modules_.size(); ++i) {
      if (i + 1 == modules_.size()) {
        modules_[i]->run(in, y, ex, residual);
        return;
      }
      const std::array<Index, 4> s = modules_[i]->output_shape(in.dims());
      typename detail::Workspace<T>::Lease out = ex.ws.acquire(s[0] * s[1] * s[2] * s[3]);
      const detail::Nhwc<T> o{out.data(), s[0], s[1], s[2], s[3]};
      modules_[i]->run(in, o, ex, nullptr);
      in = detail::as_const(o);
      held = std::move(out);  // releases the buffer `in` was read from
    }
  }
  void load(WeightLoader& w) override {
    for (auto& m : modules_) m->load(w);
  }
  void save(SafeTensorsWriter& out) const override {
    for (const auto& m : modules_) m->save(out);
  }
  std::array<Index, 2> cost(Index h, Index w, std::vector<NamedCost>& out) const override {
    std::array<Index, 2> hw{h, w};
    for (const auto& m : modules_) hw = m->cost(hw[0], hw[1], out);
    return hw;
  }

 private:
  std::vector<std::unique_ptr<Module<T>>> modules_;
};

/// A body of modules plus, when `residual`, the block's input: the shape of MobileNet blocks.
template <typename T>
class ResidualBlock : public Module<T> {
 public:
  explicit ResidualBlock(bool residual) : residual_(residual) {}

  std::array<Index, 4> output_shape(const std::array<Index, 4>& in) const override {
    return body_.output_shape(in);
  }
  /// The body's last convolution adds the block's input in its epilogue.
  void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, detail::Exec<T>& ex,
           const T* residual) const override {
    body_.run(x, y, ex, residual_ ? x.data : residual);
    if (residual_) add_residual(y.data, residual, y.size());
  }
  void load(WeightLoader& w) override { body_.load(w); }
  void save(SafeTensorsWriter& out) const override { body_.save(out); }
  std::array<Index, 2> cost(Index h, Index w, std::vector<NamedCost>& out) const override {
    return body_.cost(h, w, out);
  }

 protected:
  Sequential<T> body_;

 private:
  bool residual_;
};

}  // namespace dynconv
