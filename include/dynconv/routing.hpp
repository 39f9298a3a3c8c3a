// dynconv: CondConv's routing (Yang et al., NeurIPS 2019; family.md).
//
//   s = GAP(x)                         [N, Cin]
//   r = sigmoid((W s + b) / tau)       [N, E]    W [E, Cin], b [E]; no hidden layer
//
// Every routing weight lies in (0, 1) and a row need not sum to 1, so a BatchNorm after a
// CondConv keeps its shift as a separate bias (DynamicConv2d::fold_batchnorm). As a module it
// maps NHWC [N, H, W, Cin] to [N, 1, 1, E]: a block computes its routing once and hands it to
// each of its CondConv layers as their second input (DynamicConv2dOptions::shared_routing), as
// timm's CondConvResidual does; a CondConv layer without a shared routing owns one under the
// parameter prefix "routing_fn". Parameters: "weight" [E, Cin] and "bias" [E] (an nn.Linear's,
// so a block's `routing_fn` loads as it is) and "temperature" [] (optional in a file: 1).
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/error.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/module.hpp>
#include <dynconv/pooling.hpp>
#include <dynconv/runtime.hpp>

#include <cmath>
#include <string>
#include <type_traits>

namespace dynconv {

struct CondConvRoutingOptions {
  CondConvRoutingOptions(Index in_channels, Index experts) : in_channels_(in_channels), experts_(experts) {}
  Index in_channels() const { return in_channels_; }
  /// Number of experts E >= 1.
  Index experts() const { return experts_; }
  /// Divides the routing logits before the sigmoid; tau > 0. Default 1 (CondConv has none).
  CondConvRoutingOptions& temperature(double t) { temperature_ = t; return *this; }
  double temperature() const { return temperature_; }
  /// A name for error messages, e.g. "blocks.1.0.routing_fn". Default empty.
  CondConvRoutingOptions& name(std::string n) { name_ = std::move(n); return *this; }
  const std::string& name() const { return name_; }

 private:
  Index in_channels_, experts_;
  double temperature_ = 1.0;
  std::string name_;
};

template <typename T>
class CondConvRouting final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::CondConvRouting<T>: T must be a floating-point type (float or double)");

 public:
  /// OptionsError for channels or experts < 1 or a temperature that is not finite and > 0.
  explicit CondConvRouting(const CondConvRoutingOptions& options)
      : layer_(validated(options)),
        options_(options),
        linear_(LinearOptions(options.in_channels(), options.experts()).name(layer_)),
        temperature_(static_cast<T>(options.temperature())) {}

  /// "CondConvRouting(64 -> 4 experts)", prefixed by the name if one was given.
  std::string description() const override { return layer_; }
  Index in_channels() const { return options_.in_channels(); }
  Index experts() const { return options_.experts(); }
  /// The dense layer: weight [E, Cin], bias [E].
  Linear<T>& linear() { return linear_; }
  const Linear<T>& linear() const { return linear_; }
  T temperature() const { return temperature_; }
  void set_temperature(double tau) {
    detail::check_positive_finite<T>(layer_, "temperature", tau);
    temperature_ = static_cast<T>(tau);
  }

  /// NHWC [N, H, W, Cin] -> [N, 1, 1, E]; ShapeError for another channel count or no pixels.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    if (in[0].c != in_channels() || in[0].pixels() < 1)
      fail<ShapeError>(layer_, ": input ", in[0].str(), " must have ", in_channels(),
                       " channels and at least one pixel");
    return {in[0].n, 1, 1, experts()};
  }
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    route(in[0], y.data, ctx, in.means);
    detail::apply_post_ops(post, y, ctx);
  }
  bool pools_input() const override { return true; }

  /// The routing r [N, E] of NHWC x into caller memory (the network path, unchecked); x's
  /// channel means when its producer wrote them (Inputs::means).
  void route(const NhwcView<const T>& x, T* r, Context<T>& ctx, const T* means = nullptr) const {
    typename Workspace<T>::Lease pooled;
    linear_.forward_into(detail::channel_means(x, means, ctx, pooled), x.n, r, ctx.workspace(), 0);
    const T inv_tau = T(1) / temperature_;
    const detail::SigmoidOf<T> sigmoid;
    for (Index i = 0; i < x.n * experts(); ++i) r[i] = sigmoid(r[i] * inv_tau);
  }

  /// "weight" [E, Cin], "bias" [E], "temperature" [].
  std::vector<ParameterInfo> parameters() const override {
    return {{"weight", {experts(), in_channels()}}, {"bias", {experts()}}, {"temperature", {}}};
  }
  std::vector<T> parameter(const std::string& name) const override {
    if (name == "temperature") return {temperature_};
    if (name == "weight" || name == "bias") return linear_.parameter(name);
    this->unknown_parameter(name);
  }
  void set_parameter(const std::string& name, const std::vector<T>& v) override {
    if (name == "temperature") {
      this->check_count(name, v, {});
      set_temperature(static_cast<double>(v[0]));
    } else if (name == "weight" || name == "bias") {
      linear_.set_parameter(name, v);
    } else {
      this->unknown_parameter(name);
    }
  }
  /// "temperature" is optional: 1 where the file has none (timm's blocks keep no temperature).
  void load(WeightLoader& w, const std::string& prefix) override {
    linear_.load(w, prefix);
    set_temperature(w.take_scalar_or(this->join(prefix, "temperature"), 1.0));
  }

  LayerCost cost(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    return cost(in[0].h, in[0].w);
  }
  /// Parameters and multiply-adds (GAP and the dense layer) of one h x w sample.
  LayerCost cost(Index h, Index w) const {
    LayerCost c;
    c.params = linear_.params();
    c.attention_madds = madds(h, w);
    return c;
  }
  std::int64_t madds(Index h, Index w) const { return h * w * in_channels() + linear_.madds(); }

 private:
  static std::string validated(const CondConvRoutingOptions& o) {
    const std::string layer =
        detail::describe(o.name(), concat("CondConvRouting(", o.in_channels(), " -> ", o.experts(), " experts)"));
    detail::check_range(layer, "in_channels", o.in_channels());
    detail::check_range(layer, "experts", o.experts());
    detail::check_positive_finite<T>(layer, "temperature", o.temperature());
    return layer;
  }

  std::string layer_;
  CondConvRoutingOptions options_;
  Linear<T> linear_;
  T temperature_;
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class CondConvRouting<float>;
extern template class CondConvRouting<double>;
#endif

}  // namespace dynconv
