// dynconv: the attention over K kernels of a dynamic convolution (paper.md).
//
//   s  = GAP(x)                  [N, Cin]
//   z  = fc2(ReLU(fc1(s)))       [N, K]     fc1: Cin -> hidden, fc2: hidden -> K, both with bias
//   pi = softmax(z / tau)        [N, K]     every row sums to 1
//
// hidden = hidden_channels if set, else max(min_hidden, in_channels / reduction).
// The softmax is computed as exp((z_k - max_j z_j) / tau) / sum, so it is finite and sums to 1
// for any finite logits and any tau > 0 (a vanishing tau tends to one-hot on the arg-max;
// ties share the mass). Parameters: fc1.weight [hidden, Cin], fc1.bias [hidden],
// fc2.weight [K, hidden], fc2.bias [K], temperature (a scalar).
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/error.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/pooling.hpp>
#include <dynconv/runtime.hpp>
#include <dynconv/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <type_traits>

namespace dynconv {

/// The members of the dynamic-convolution family one DynamicConv2d computes (family.md):
///  - DyConv    DY-Conv (Chen et al., CVPR 2020): a = softmax(fc2(ReLU(fc1(GAP(x)))) / tau)
///              over the K kernels; rows sum to 1 (KernelAttention).
///  - CondConv  CondConv (Yang et al., NeurIPS 2019): routing r = sigmoid(Linear(GAP(x)) / tau)
///              over the E experts, no hidden layer, rows need not sum to 1; computed by the
///              layer (CondConvRouting) or handed in as a second input (shared by a block).
///  - ODConv    ODConv (Li et al., ICLR 2022): four attentions from one hidden vector, the
///              input channels, the output filters, the kernel positions and the K kernels
///              (OmniAttention); W~ = f . c . s . sum_k a_k W_k, rows of a sum to 1.
enum class AttentionKind { DyConv, CondConv, ODConv };

/// "DY-Conv", "CondConv" or "ODConv".
inline const char* attention_kind_name(AttentionKind k) {
  switch (k) {
    case AttentionKind::DyConv: return "DY-Conv";
    case AttentionKind::CondConv: return "CondConv";
    case AttentionKind::ODConv: return "ODConv";
  }
  return "?";
}
inline std::ostream& operator<<(std::ostream& os, AttentionKind k) { return os << attention_kind_name(k); }

/// What an attention gives a dynamic convolution for a batch of n samples, row-major per
/// sample; a head the kind does not have is null (it is 1):
///   kernel  [n, K]      weights of the K kernels (DY-Conv, ODConv: sum to 1; CondConv: not)
///   channel [n, Cin]    ODConv: scales the input channels (folded into the kernel's columns)
///   filter  [n, Cout]   ODConv: scales the output channels (folded into the kernel's rows)
///   spatial [n, kh*kw]  ODConv: scales every kernel position (row-major over kh, kw)
template <typename T>
struct AttentionHeads {
  const T* kernel = nullptr;
  const T* channel = nullptr;
  const T* filter = nullptr;
  const T* spatial = nullptr;
  /// Whether a head besides the kernel weights scales the mixed kernel.
  bool scaled() const { return channel || filter || spatial; }
};

struct KernelAttentionOptions {
  KernelAttentionOptions(Index in_channels, Index kernels)
      : in_channels_(in_channels), kernels_(kernels) {}
  Index in_channels() const { return in_channels_; }
  /// Number of kernels K >= 1 the attention chooses between.
  KernelAttentionOptions& kernels(Index k) { kernels_ = k; return *this; }
  Index kernels() const { return kernels_; }
  /// hidden = max(min_hidden, in_channels / reduction) unless hidden_channels is set. Default 4.
  KernelAttentionOptions& reduction(Index r) { reduction_ = r; return *this; }
  Index reduction() const { return reduction_; }
  /// Lower bound of the derived hidden size. Default 1.
  KernelAttentionOptions& min_hidden(Index m) { min_hidden_ = m; return *this; }
  Index min_hidden() const { return min_hidden_; }
  /// Explicit hidden size (overrides reduction and min_hidden); 0 = derive. Default 0.
  KernelAttentionOptions& hidden_channels(Index h) { hidden_channels_ = h; return *this; }
  Index hidden_channels() const { return hidden_channels_; }
  /// Softmax temperature tau > 0; 1 for a fully trained model. Default 1.
  KernelAttentionOptions& temperature(double t) { temperature_ = t; return *this; }
  double temperature() const { return temperature_; }
  /// A name for error messages, e.g. "layer1.0.conv1.attention". Default empty.
  KernelAttentionOptions& name(std::string n) { name_ = std::move(n); return *this; }
  const std::string& name() const { return name_; }

  /// The hidden size these options give.
  Index hidden() const {
    return hidden_channels_ > 0 ? hidden_channels_
                                : std::max(min_hidden_, in_channels_ / std::max<Index>(reduction_, 1));
  }

 private:
  Index in_channels_, kernels_;
  Index reduction_ = 4, min_hidden_ = 1, hidden_channels_ = 0;
  double temperature_ = 1.0;
  std::string name_;
};

namespace detail {

/// Validates attention options, reporting errors under `layer` (the attention's own
/// description, or the DynamicConv2d that owns it).
template <typename T>
void validate_attention(const std::string& layer, const KernelAttentionOptions& o) {
  check_range(layer, "in_channels", o.in_channels());
  check_range(layer, "kernels", o.kernels());
  check_range(layer, "reduction", o.reduction());
  check_range(layer, "min_hidden", o.min_hidden());
  if (o.hidden_channels() < 0)
    fail<OptionsError>(layer, ": hidden_channels=", o.hidden_channels(),
                       " must be >= 0 (0 derives it from reduction)");
  check_range(layer, "hidden_channels", o.hidden_channels(), 0);
  check_positive_finite<T>(layer, "temperature", o.temperature());
}

/// row[0:k] = softmax(row / tau), computed as exp((z_i - max_j z_j) / tau) / sum: finite and
/// summing to 1 for any finite logits and tau > 0.
template <typename T>
void softmax_row(T* row, Index k, T tau) {
  const T top = *std::max_element(row, row + k);
  T sum(0);
  for (Index i = 0; i < k; ++i) sum += (row[i] = std::exp((row[i] - top) / tau));
  for (Index i = 0; i < k; ++i) row[i] /= sum;
}

}  // namespace detail

template <typename T>
class KernelAttention {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::KernelAttention<T>: T must be a floating-point type (float or double)");

 public:
  explicit KernelAttention(const KernelAttentionOptions& options)
      : options_(validated(options)),
        fc1_(LinearOptions(options.in_channels(), options.hidden()).name(prefix() + "fc1")),
        fc2_(LinearOptions(options.hidden(), options.kernels()).name(prefix() + "fc2")),
        temperature_(static_cast<T>(options.temperature())) {}

  /// The options, temperature included (set_temperature updates it).
  const KernelAttentionOptions& options() const { return options_; }
  const std::string& description() const { return layer_; }
  Index in_channels() const { return options_.in_channels(); }
  Index kernels() const { return options_.kernels(); }
  Index hidden() const { return options_.hidden(); }

  Linear<T>& fc1() { return fc1_; }
  const Linear<T>& fc1() const { return fc1_; }
  Linear<T>& fc2() { return fc2_; }
  const Linear<T>& fc2() const { return fc2_; }
  T temperature() const { return temperature_; }
  void set_temperature(double tau) {
    detail::check_positive_finite<T>(layer_, "temperature", tau);
    temperature_ = static_cast<T>(tau);
    options_.temperature(tau);
  }

  /// [N, Cin, H, W] -> pi [N, K]
  Tensor2<T> forward(const Tensor4<T>& x) const {
    check_input(x, 1);
    return attend(global_avg_pool(x));
  }
  /// NHWC [N, H, W, Cin] -> pi [N, K]
  Tensor2<T> forward(const NhwcTensor<T>& x) const {
    const NhwcShape s = x.shape();
    if (s.c != in_channels() || s.pixels() < 1)
      fail<ShapeError>(layer_, ": input ", s.str(), " must have ", in_channels(), " channels and at least one pixel");
    return attend(global_avg_pool(x));
  }

  /// Pooled features [N, Cin] -> pi [N, K].
  Tensor2<T> attend(const Tensor2<T>& pooled) const {
    fc1_.check_input(pooled.dimensions());
    const Index n = pooled.dimension(0);
    Tensor2<T> pi(n, kernels());
    Workspace<T> ws(1);
    attend_into(pooled.data(), n, pi.data(), ws);
    return pi;
  }

  /// The network path: pi [N, K] of NHWC x [N, H, W, Cin] into caller memory, unchecked,
  /// buffers from the workspace, the pooling split over the pool (by samples, or by pixels),
  /// or x's channel means [N, Cin] when its producer wrote them (Inputs::means).
  void run(const NhwcView<const T>& x, T* pi, Context<T>& ctx, const T* means = nullptr) const {
    typename Workspace<T>::Lease pooled;
    attend_into(detail::channel_means(x, means, ctx, pooled), x.n, pi, ctx.workspace());
  }

 private:
  /// pooled [n, Cin] -> pi [n, K]
  void attend_into(const T* pooled, Index n, T* pi, Workspace<T>& ws) const {
    typename Workspace<T>::Lease h = ws.acquire(n * hidden());
    fc1_.forward_into(pooled, n, h.data(), ws, 0);
    detail::map_inplace(h.data(), n * hidden(), detail::ReluOf<T>());
    fc2_.forward_into(h.data(), n, pi, ws, 0);
    for (Index b = 0; b < n; ++b) detail::softmax_row(pi + b * kernels(), kernels(), temperature_);
  }

 public:
  /// Multiply-adds of one sample of size h x w: GAP + fc1 + fc2.
  std::int64_t madds(Index h, Index w) const {
    return h * w * in_channels() + fc1_.madds() + fc2_.madds();
  }
  std::int64_t params() const { return fc1_.params() + fc2_.params(); }

 private:
  std::string prefix() const { return options_.name().empty() ? "" : options_.name() + "."; }

  KernelAttentionOptions validated(const KernelAttentionOptions& o) {
    layer_ = detail::describe(o.name(), concat("KernelAttention(", o.in_channels(), " -> ",
                                                       o.hidden(), " -> ", o.kernels(), ')'));
    detail::validate_attention<T>(layer_, o);
    return o;
  }

  void check_input(const Tensor4<T>& x, int channel_axis) const {
    const Index c = x.dimension(channel_axis);
    const Index pixels = channel_axis == 1 ? x.dimension(2) * x.dimension(3)
                                           : x.dimension(1) * x.dimension(2);
    if (c != in_channels() || pixels < 1)
      fail<ShapeError>(layer_, ": input ", shape_str(x.dimensions()), " (",
                               channel_axis == 1 ? "NCHW" : "NHWC", ") must have ", in_channels(),
                               " channels and at least one pixel");
  }

  std::string layer_;  // set by validated(), before the members that use it
  KernelAttentionOptions options_;
  Linear<T> fc1_, fc2_;
  T temperature_;
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class KernelAttention<float>;
extern template class KernelAttention<double>;
#endif

}  // namespace dynconv
