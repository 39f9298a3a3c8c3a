// dynconv: ODConv's omni-dimensional attention (Li, Zhou, Yao, ICLR 2022; family.md).
//
//   z = ReLU(BN(fc(GAP(x))))         [N, hidden]   fc: Cin -> hidden without bias, BN in
//                                                  inference form (eps 1e-5, as PyTorch's)
//   c = sigmoid(channel_fc(z) / tau)  [N, Cin]      scales the input channels
//   f = sigmoid(filter_fc(z) / tau)   [N, Cout]     scales the output channels; absent (1) for a
//                                                  depthwise convolution (groups = Cin = Cout)
//   s = sigmoid(spatial_fc(z) / tau)  [N, kh*kw]    scales every kernel position; absent for 1x1
//   a = softmax(kernel_fc(z) / tau)   [N, K]        weights of the K kernels; absent for K = 1
//
// hidden = max(Cin / reduction, min_hidden): ODConv's max(int(Cin * 1/16), 16) with reduction
// 16 and min_hidden 16. The heads are dense layers with a bias. Parameter names and shapes are
// those of OSVAI's ODConv2d attention (1x1 convolutions): "fc.weight" [hidden, Cin, 1, 1],
// "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var" [hidden], "channel_fc.weight"
// [Cin, hidden, 1, 1] and "channel_fc.bias" [Cin], "filter_fc.*", "spatial_fc.*", "kernel_fc.*"
// for the heads that exist, and "temperature" [] (optional in a file: 1, ODConv's default).
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/attention.hpp>
#include <dynconv/batchnorm.hpp>
#include <dynconv/error.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/module.hpp>
#include <dynconv/pooling.hpp>
#include <dynconv/runtime.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

namespace dynconv {

/// What ODConv's attention needs of its convolution (DynamicConv2d fills it in).
struct OmniAttentionOptions {
  Index in_channels = 1, out_channels = 1, kernel_h = 1, kernel_w = 1, groups = 1, kernels = 1, hidden = 16;
  double temperature = 1.0;
  /// For error messages, e.g. "layer1.0.conv1.attention".
  std::string name;

  /// The heads that exist: filter unless depthwise, spatial unless 1x1, kernel unless K = 1.
  bool has_filter() const { return !(groups == in_channels && in_channels == out_channels); }
  bool has_spatial() const { return kernel_h * kernel_w > 1; }
  bool has_kernel() const { return kernels > 1; }
};

template <typename T>
class OmniAttention {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::OmniAttention<T>: T must be a floating-point type (float or double)");

 public:
  explicit OmniAttention(const OmniAttentionOptions& o)
      : options_(validated(o)),
        fc_(LinearOptions(o.in_channels, o.hidden).bias(false).name(head_name("fc"))),
        bn_(BatchNorm2dOptions(o.hidden).name(head_name("bn"))),
        channel_fc_(LinearOptions(o.hidden, o.in_channels).name(head_name("channel_fc"))),
        filter_fc_(LinearOptions(o.hidden, o.has_filter() ? o.out_channels : 1).name(head_name("filter_fc"))),
        spatial_fc_(LinearOptions(o.hidden, o.has_spatial() ? o.kernel_h * o.kernel_w : 1).name(head_name("spatial_fc"))),
        kernel_fc_(LinearOptions(o.hidden, o.has_kernel() ? o.kernels : 1).name(head_name("kernel_fc"))),
        temperature_(static_cast<T>(o.temperature)) {
    update_bn();
  }

  const OmniAttentionOptions& options() const { return options_; }
  const std::string& description() const { return layer_; }
  Index hidden() const { return options_.hidden; }
  T temperature() const { return temperature_; }
  void set_temperature(double tau) {
    detail::check_positive_finite<T>(layer_, "temperature", tau);
    temperature_ = static_cast<T>(tau);
    options_.temperature = tau;
  }

  /// Values of the heads for n samples, laid out as AttentionHeads (kernel [n, K] is always
  /// written, all ones for K = 1, so that the kernel mix needs no special case).
  Index head_values(Index n) const {
    const OmniAttentionOptions& o = options_;
    return n * (o.kernels + o.in_channels + (o.has_filter() ? o.out_channels : 0) +
                (o.has_spatial() ? o.kernel_h * o.kernel_w : 0));
  }

  /// The heads of NHWC x into `out` (head_values(x.n) values; the network path, unchecked);
  /// x's channel means when its producer wrote them (Inputs::means).
  AttentionHeads<T> run(const NhwcView<const T>& x, T* out, Context<T>& ctx, const T* means = nullptr) const {
    const OmniAttentionOptions& o = options_;
    const Index n = x.n, cin = o.in_channels, hid = o.hidden;
    AttentionHeads<T> heads;
    T* kernel = out;
    T* channel = kernel + n * o.kernels;
    T* filter = channel + n * cin;
    T* spatial = filter + (o.has_filter() ? n * o.out_channels : 0);
    typename Workspace<T>::Lease pooled;
    const T* mean = detail::channel_means(x, means, ctx, pooled);
    typename Workspace<T>::Lease z = ctx.workspace().acquire(n * hid);
    fc_.forward_into(mean, n, z.data(), ctx.workspace(), 0);
    const std::vector<T>& scale = bn_scale_;
    const std::vector<T>& shift = bn_shift_;
    for (Index b = 0; b < n; ++b)
      for (Index i = 0; i < hid; ++i) {
        T& v = z.data()[b * hid + i];
        v = std::max(T(0), v * scale[static_cast<std::size_t>(i)] + shift[static_cast<std::size_t>(i)]);
      }
    const T tau = temperature_;
    auto sigmoid_head = [&](const Linear<T>& fc, T* dst) {
      fc.forward_into(z.data(), n, dst, ctx.workspace(), 0);
      const detail::SigmoidOf<T> sigmoid;
      for (Index i = 0; i < n * fc.out_features(); ++i) dst[i] = sigmoid(dst[i] / tau);
    };
    sigmoid_head(channel_fc_, channel);
    heads.channel = channel;
    if (o.has_filter()) {
      sigmoid_head(filter_fc_, filter);
      heads.filter = filter;
    }
    if (o.has_spatial()) {
      sigmoid_head(spatial_fc_, spatial);
      heads.spatial = spatial;
    }
    if (o.has_kernel()) {
      kernel_fc_.forward_into(z.data(), n, kernel, ctx.workspace(), 0);
      for (Index b = 0; b < n; ++b) detail::softmax_row(kernel + b * o.kernels, o.kernels, tau);
    } else {
      std::fill(kernel, kernel + n, T(1));
    }
    heads.kernel = kernel;
    return heads;
  }

  /// Names relative to the attention (see the header comment), in a fixed order.
  std::vector<ParameterInfo> parameters() const {
    const OmniAttentionOptions& o = options_;
    std::vector<ParameterInfo> p{{"fc.weight", {o.hidden, o.in_channels, 1, 1}}};
    for (const char* b : {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}) p.push_back({b, {o.hidden}});
    for (const Linear<T>* h : heads()) {
      const std::string name = head_of(h);
      p.push_back({name + ".weight", {h->out_features(), o.hidden, 1, 1}});
      p.push_back({name + ".bias", {h->out_features()}});
    }
    p.push_back({"temperature", {}});
    return p;
  }
  std::vector<T> parameter(const std::string& name) const {
    if (name == "temperature") return {temperature_};
    if (name == "fc.weight") return fc_.parameter("weight");
    if (name.rfind("bn.", 0) == 0) return bn_.parameter(name.substr(3));
    for (const Linear<T>* h : heads()) {
      const std::string head = head_of(h);
      if (name == head + ".weight") return h->parameter("weight");
      if (name == head + ".bias") return h->parameter("bias");
    }
    unknown(name);
  }
  void set_parameter(const std::string& name, const std::vector<T>& v) {
    if (name == "temperature") {
      set_temperature(static_cast<double>(v.at(0)));
      return;
    }
    if (name == "fc.weight") return fc_.set_parameter("weight", v);
    if (name.rfind("bn.", 0) == 0) {
      bn_.set_parameter(name.substr(3), v);
      update_bn();
      return;
    }
    for (Linear<T>* h : heads()) {
      const std::string head = head_of(h);
      if (name == head + ".weight") return h->set_parameter("weight", v);
      if (name == head + ".bias") return h->set_parameter("bias", v);
    }
    unknown(name);
  }

  /// Multiply-adds of one h x w sample: GAP, fc and the heads (the BatchNorm and the
  /// activations are not counted, as paper.md does not count them).
  std::int64_t madds(Index h, Index w) const {
    std::int64_t m = h * w * options_.in_channels + fc_.madds();
    for (const Linear<T>* head : heads()) m += head->madds();
    return m;
  }
  std::int64_t params() const {
    std::int64_t p = fc_.params() + 2 * options_.hidden;  // the BatchNorm's weight and bias
    for (const Linear<T>* head : heads()) p += head->params();
    return p;
  }

 private:
  std::vector<const Linear<T>*> heads() const {
    std::vector<const Linear<T>*> v{&channel_fc_};
    if (options_.has_filter()) v.push_back(&filter_fc_);
    if (options_.has_spatial()) v.push_back(&spatial_fc_);
    if (options_.has_kernel()) v.push_back(&kernel_fc_);
    return v;
  }
  std::vector<Linear<T>*> heads() {
    std::vector<Linear<T>*> v;
    for (const Linear<T>* h : static_cast<const OmniAttention&>(*this).heads()) v.push_back(const_cast<Linear<T>*>(h));
    return v;
  }
  std::string head_of(const Linear<T>* h) const {
    if (h == &channel_fc_) return "channel_fc";
    if (h == &filter_fc_) return "filter_fc";
    if (h == &spatial_fc_) return "spatial_fc";
    return "kernel_fc";
  }
  [[noreturn]] void unknown(const std::string& name) const {
    std::string known;
    for (const ParameterInfo& p : parameters()) known += (known.empty() ? "" : ", ") + p.name;
    fail<OptionsError>(layer_, ": no parameter '", name, "'; it has: ", known);
  }
  std::string head_name(const char* head) const { return concat(layer_, '.', head); }
  void update_bn() {
    const Tensor1<T> s = bn_.scale(), b = bn_.shift();
    bn_scale_.assign(s.data(), s.data() + s.size());
    bn_shift_.assign(b.data(), b.data() + b.size());
  }

  OmniAttentionOptions validated(const OmniAttentionOptions& o) {
    layer_ = o.name.empty() ? concat("OmniAttention(", o.in_channels, " -> ", o.hidden, ")") : o.name;
    detail::check_range(layer_, "hidden", o.hidden);
    detail::check_range(layer_, "kernels", o.kernels);
    detail::check_positive_finite<T>(layer_, "temperature", o.temperature);
    return o;
  }

  std::string layer_;  // set by validated(), before the members that use it
  OmniAttentionOptions options_;
  Linear<T> fc_;
  BatchNorm2d<T> bn_;
  Linear<T> channel_fc_, filter_fc_, spatial_fc_, kernel_fc_;
  T temperature_;
  std::vector<T> bn_scale_, bn_shift_;  // the BatchNorm's scale() and shift()
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class OmniAttention<float>;
extern template class OmniAttention<double>;
#endif

}  // namespace dynconv
