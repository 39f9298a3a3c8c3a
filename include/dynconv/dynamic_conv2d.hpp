// dynconv: dynamic convolution, the whole family as one operator (paper.md, family.md).
//
// DynamicConv2d<T> holds K kernels W_k [Cout, Cin/groups, kh, kw] and, with a bias, K biases
// b_k [Cout]. For every sample n of the input it computes
//   pi_n   = attention(x_n)                       [K]
//   W~_n   = sum_k pi_n[k] W_k,  b~_n = sum_k pi_n[k] b_k (+ shift)
//   y_n    = conv2d(x_n, W~_n, b~_n, stride, padding, dilation, groups)
// The attention is a kind (AttentionKind, attention.hpp):
//   DyConv    pi = KernelAttention: softmax over K, rows sum to 1 (the default)
//   CondConv  pi = CondConvRouting: sigmoid routing, rows need not sum to 1; the layer's own, or
//             handed in as a second input [N, 1, 1, E] (shared_routing: one routing per block)
//   ODConv    OmniAttention: pi = softmax over K, and the channel, filter and spatial
//             attentions scale the mixed kernel: W~_n[o, i, p] = f[o] c[i] s[p] sum_k pi[k] W_k,
//             which equals ODConv's f . conv(c . x, sum_k s pi_k W_k) (no convolution bias)
// shift [Cout] is what a BatchNorm fold leaves outside the experts where the weights need not
// sum to 1 (CondConv) or an attention multiplies the output before the BatchNorm (ODConv).
// Input [N, Cin, H, W] -> output [N, Cout, Hout, Wout] (forward of a Tensor4), or NHWC (forward
// of an NhwcTensor); the output size follows Conv2d's formula. Every sample gets its own kernel: the K kernels are
// mixed in one pass into a per-call buffer and one convolution (one GEMM per group) runs per
// sample. The batch is never folded into convolution groups, so memory does not grow with N.
//
// Weights are stored packed for the convolution algorithm (see detail/packing.hpp); the
// mix is elementwise, so it happens directly in the packed layout.
//
// Plan, then run: plan(input shape, threads) gives a DynamicConvPlan: the algorithm, the
// mixing strategy select_mix_strategy() picks (options may force any), the work split and the
// buffers it takes. Each strategy is one function:
//   PerSample     one task per sample mixes the whole kernel into the worker's scratch and
//                 convolves (mid-size kernels: the K sources stay in cache between samples)
//   RowSplit      each sample's kernel mixed once (split over the pool), then the output rows
//                 split over the pool (a batch smaller than the pool, early layers)
//   ChannelTiles  tasks are output-channel tiles; a tile's K sources are read once for the
//                 whole batch and mixed for all samples, then each sample convolves (large
//                 kernels in a batch, or one sample split by channels)
//   FusedPacking  as ChannelTiles, with the mix fused into the GEMM's packing: each cache block
//                 of the K sources is packed once per batch (x86 and float experts: read from
//                 the packed copy the layer keeps, packed_gemm_experts) and mixed into the
//                 packed block every sample's micro-kernel reads (few pixels: late layers);
//                 one image on several threads splits the GEMM's depth instead of the channels
//
// The attention's scales are folded into the mixed kernel as it is synthesised (row scales
// s[p] c[i], column scales f[o], applied to each block right after the mix), so the
// convolution itself is the same for every kind.
//
// Thread safety: forward*, convolve* and the aggregated_* accessors are const and may run
// concurrently on one object; setters and fold_batchnorm() may not run concurrently with anything.
#pragma once

#include <dynconv/attention.hpp>
#include <dynconv/batchnorm.hpp>
#include <dynconv/conv_options.hpp>
#include <dynconv/module.hpp>
#include <dynconv/omni_attention.hpp>
#include <dynconv/routing.hpp>

#define DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/conv_slice.hpp>
#include <dynconv/detail/gemm.hpp>
#include <dynconv/detail/mix.hpp>
#undef DYNCONV_DETAIL_ALLOWED

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace dynconv {

/// How a dynamic convolution mixes its K kernels for a batch (see the header comment).
/// `Auto` lets select_mix_strategy() choose (the default).
enum class MixStrategy { Auto, PerSample, RowSplit, ChannelTiles, FusedPacking };

/// "Auto", "PerSample", "RowSplit", "ChannelTiles" or "FusedPacking".
inline const char* mix_strategy_name(MixStrategy m) {
  switch (m) {
    case MixStrategy::Auto: return "Auto";
    case MixStrategy::PerSample: return "PerSample";
    case MixStrategy::RowSplit: return "RowSplit";
    case MixStrategy::ChannelTiles: return "ChannelTiles";
    case MixStrategy::FusedPacking: return "FusedPacking";
  }
  return "?";
}
inline std::ostream& operator<<(std::ostream& os, MixStrategy m) { return os << mix_strategy_name(m); }

/// How a dynamic convolution stores its K kernels (the experts). Float32 (the default) is exact;
/// BFloat16 and Float16 are opt-in: every expert value rounded to nearest even once, the
/// experts widened to T as they are mixed, so the mixed kernel, the convolution and everything
/// else stay T. Half the bytes to read per mix: the mix of large kernels runs at memory speed.
/// BFloat16 keeps float's range (8 significant bits); Float16 has 11 significant bits and
/// holds magnitudes up to 65504 only.
enum class ExpertPrecision { Float32, BFloat16, Float16 };

/// "float32", "bfloat16" or "float16".
inline const char* expert_precision_name(ExpertPrecision p) {
  switch (p) {
    case ExpertPrecision::Float32: return "float32";
    case ExpertPrecision::BFloat16: return "bfloat16";
    case ExpertPrecision::Float16: return "float16";
  }
  return "?";
}
inline std::ostream& operator<<(std::ostream& os, ExpertPrecision p) { return os << expert_precision_name(p); }

/// Whether strategy `m` can compute a convolution of geometry `g` run by algorithm `algo`:
/// channel tiles need groups == 1 or a depthwise convolution, the fused packing a GEMM with
/// groups == 1.
inline bool mix_strategy_supports(MixStrategy m, ConvAlgorithm algo, const ConvGeometry& g) {
  switch (m) {
    case MixStrategy::ChannelTiles: return algo == ConvAlgorithm::Depthwise || g.groups == 1;
    case MixStrategy::FusedPacking: return algo != ConvAlgorithm::Depthwise && g.groups == 1;
    default: return true;
  }
}

/// What select_mix_strategy() decides on: the layer, the input and the context.
struct MixProblem {
  ConvGeometry geometry;
  ConvAlgorithm algorithm;
  Index kernels, batch, out_h, out_w;
  int threads;
  Index min_parallel_madds;
  Index scalar_bytes;
  /// Whether an attention scales the mixed kernel (ODConv): it fuses into the packing only with
  /// kernels that mix while packing (Eigen's fused path mixes each sample's scaled block on
  /// its own, giving up the batch's shared packing).
  bool scaled = false;
  /// Whether the GEMM kernels in use mix one sample's kernel while packing it (dynconv's x86
  /// kernels): FusedPacking then pays at batch 1 too, for kernels that leave the L2 cache.
  bool mixes_while_packing = false;
};

/// K kernels above this size no longer stay in the L3 cache from one sample to the next: a
/// batch then mixes them in channel tiles, all samples of a tile at once.
constexpr Index kMixTileSourceBytes = Index(8) << 20;
/// Up to this many output pixels a channel tile mixes inside the GEMM's packing.
constexpr Index kMixFusedMaxPixels = 256;
/// K kernels above this size (beyond a core's L2) are mixed inside the GEMM's packing at batch 1
/// when the kernels in use mix while packing: the mixed kernel is then never written out.
constexpr Index kMixFusedSingleBytes = Index(2) << 20;

/// The one predicate that picks the mixing strategy (measured on this project's machines;
/// with Eigen's kernels fusing at batch 1 measured slower: K packs per block cost more than one
/// mix; dynconv's x86 kernels mix while packing, in one pass):
///  - a batch smaller than the pool with many output rows: RowSplit;
///  - large kernels in a batch, or a batch smaller than the pool, or one sample whose kernels
///    leave L2 and that the kernels in use mix while packing: channel tiles, FusedPacking when
///    there are few pixels per sample (and a batch, or mixing while packing; scaled kernels:
///    mixing while packing), else ChannelTiles;
///  - otherwise PerSample.
inline MixStrategy select_mix_strategy(const MixProblem& p) {
  const ConvGeometry& g = p.geometry;
  const Index pixels = p.out_h * p.out_w;
  const bool split = p.batch < p.threads && pixels * g.weight_size() >= p.min_parallel_madds;
  const Index source_bytes = p.kernels * g.weight_size() * p.scalar_bytes;
  const bool big_batch = p.batch > 1 && source_bytes > kMixTileSourceBytes;
  const bool can_fuse = mix_strategy_supports(MixStrategy::FusedPacking, p.algorithm, g) &&
                        pixels <= kMixFusedMaxPixels && (!p.scaled || p.mixes_while_packing);
  const bool fuse_one = p.batch == 1 && p.mixes_while_packing && can_fuse && source_bytes > kMixFusedSingleBytes;
  if (split && !big_batch && !fuse_one && p.out_h >= 8 * p.threads) return MixStrategy::RowSplit;
  if (mix_strategy_supports(MixStrategy::ChannelTiles, p.algorithm, g) && (big_batch || split || fuse_one)) {
    const bool fused = can_fuse && (p.batch > 1 || fuse_one);
    return fused ? MixStrategy::FusedPacking : MixStrategy::ChannelTiles;
  }
  return MixStrategy::PerSample;
}

/// The plan of one dynamic convolution for one input shape and thread count.
struct DynamicConvPlan {
  /// The algorithm the convolution runs (detail::run_algorithm(): a Winograd layer runs as
  /// Im2colGemm below 484 output pixels, and with FusedPacking, which mixes into the im2col GEMM).
  ConvAlgorithm algorithm = ConvAlgorithm::Auto;
  MixStrategy mix = MixStrategy::Auto;
  /// RowSplit: the parts each sample's rows (and its kernel mix) split into.
  Index row_parts = 1;
  /// ChannelTiles / FusedPacking: the output-channel tiles (tasks; 1 with depth_parts), and
  /// whether each sample's im2col is built once before them (split into column_parts row
  /// ranges).
  Index tiles = 0;
  bool shared_columns = false;
  Index column_parts = 1;
  /// FusedPacking of one image on several threads: the parts its GEMM's depth splits into
  /// (tasks; tiles is then 1), each reading whole rows of the K kernels; every part but the
  /// first adds into its own partial output, summed into the output before the epilogue.
  Index depth_parts = 1;
  /// Values taken from the workspace's pool by the strategy (besides the attention's):
  /// the mixed biases, the kernel scales (ODConv: rows and columns per sample), RowSplit's
  /// mixed kernels, the shared im2col columns, the depth parts' partial outputs.
  Index bias_values = 0, scale_values = 0, mixed_kernel_values = 0, column_values = 0, partial_values = 0;
  /// Values of per-worker kernel scratch (PerSample: one kernel; ChannelTiles: a tile for all
  /// samples). The GEMM's own buffers (packing; Eigen's fused path: a widened or scaled block)
  /// are sized by the GEMM kernel.
  Index kernel_scratch_values = 0;
  /// Winograd: values of the transformed kernels (RowSplit: every sample's, from the pool;
  /// PerSample and ChannelTiles: one sample's kernel or tile, per-worker scratch).
  Index transformed_values = 0;
};

class DynamicConv2dOptions : public ConvOptionsBase<DynamicConv2dOptions> {
 public:
  /// DY-Conv options (K = 4, with a bias, as PyTorch's convolutions).
  DynamicConv2dOptions(Index in_channels, Index out_channels, Index kernel_size)
      : DynamicConv2dOptions(in_channels, out_channels, Pair{kernel_size, kernel_size}) {}
  DynamicConv2dOptions(Index in_channels, Index out_channels, Pair kernel_size)
      : ConvOptionsBase(in_channels, out_channels, kernel_size),
        attention_(in_channels, /*kernels=*/4) {}

  /// CondConv options with timm's CondConv2d defaults: `experts` kernels, no bias, the layer's
  /// own routing (shared_routing(true) takes a block's instead).
  static DynamicConv2dOptions condconv(Index in_channels, Index out_channels, Pair kernel_size, Index experts = 4) {
    return DynamicConv2dOptions(in_channels, out_channels, kernel_size)
        .attention_kind(AttentionKind::CondConv)
        .kernels(experts)
        .bias(false);
  }
  static DynamicConv2dOptions condconv(Index in_channels, Index out_channels, Index kernel_size, Index experts = 4) {
    return condconv(in_channels, out_channels, Pair{kernel_size, kernel_size}, experts);
  }
  /// ODConv options with OSVAI's ODConv2d defaults: K = 4, no bias, hidden = max(Cin / 16, 16).
  static DynamicConv2dOptions odconv(Index in_channels, Index out_channels, Pair kernel_size, Index kernels = 4) {
    return DynamicConv2dOptions(in_channels, out_channels, kernel_size)
        .attention_kind(AttentionKind::ODConv)
        .kernels(kernels)
        .bias(false)
        .reduction(16)
        .min_hidden(16);
  }
  static DynamicConv2dOptions odconv(Index in_channels, Index out_channels, Index kernel_size, Index kernels = 4) {
    return odconv(in_channels, out_channels, Pair{kernel_size, kernel_size}, kernels);
  }

  /// The attention kind. Default DyConv; condconv() and odconv() set the others with their
  /// defaults. ODConv has no convolution bias (OptionsError with bias(true)).
  DynamicConv2dOptions& attention_kind(AttentionKind k) { kind_ = k; return *this; }
  AttentionKind attention_kind() const { return kind_; }
  /// CondConv: the routing [N, 1, 1, E] is the layer's second input (a CondConvRouting computed
  /// once per block) instead of its own. Default false; OptionsError for the other kinds.
  DynamicConv2dOptions& shared_routing(bool s) { shared_routing_ = s; return *this; }
  bool shared_routing() const { return shared_routing_; }

  // The attention's options, forwarded to KernelAttentionOptions (which holds their
  // defaults): K = 4, temperature 1, reduction 4, min_hidden 1, hidden_channels 0 (derive).
  DynamicConv2dOptions& kernels(Index k) { attention_.kernels(k); return *this; }
  Index kernels() const { return attention_.kernels(); }
  DynamicConv2dOptions& temperature(double t) { attention_.temperature(t); return *this; }
  double temperature() const { return attention_.temperature(); }
  DynamicConv2dOptions& reduction(Index r) { attention_.reduction(r); return *this; }
  Index reduction() const { return attention_.reduction(); }
  DynamicConv2dOptions& min_hidden(Index m) { attention_.min_hidden(m); return *this; }
  Index min_hidden() const { return attention_.min_hidden(); }
  DynamicConv2dOptions& hidden_channels(Index h) { attention_.hidden_channels(h); return *this; }
  Index hidden_channels() const { return attention_.hidden_channels(); }
  /// Forces a mixing strategy (tests, benchmarks); Auto lets select_mix_strategy() choose.
  /// OptionsError at construction if the strategy cannot run the geometry.
  DynamicConv2dOptions& mix_strategy(MixStrategy m) { mix_ = m; return *this; }
  MixStrategy mix_strategy() const { return mix_; }

  /// The attention's options; its name is this layer's name + ".attention" (or the layer's
  /// description + ".attention" without a name), so its errors name the layer.
  KernelAttentionOptions attention_options() const {
    KernelAttentionOptions a = attention_;
    a.name(layer_name() + ".attention");
    return a;
  }
  /// CondConv's own routing: E = kernels(), the temperature, named "<layer>.routing_fn".
  CondConvRoutingOptions routing_options() const {
    return CondConvRoutingOptions(in_channels(), kernels()).temperature(temperature()).name(layer_name() + ".routing_fn");
  }
  /// ODConv's attention: the hidden size as attention_options() derives it.
  OmniAttentionOptions omni_attention_options() const {
    OmniAttentionOptions o;
    o.in_channels = in_channels();
    o.out_channels = out_channels();
    o.kernel_h = kernel_size()[0];
    o.kernel_w = kernel_size()[1];
    o.groups = groups();
    o.kernels = kernels();
    o.hidden = attention_.hidden();
    o.temperature = temperature();
    o.name = layer_name() + ".attention";
    return o;
  }

 private:
  std::string layer_name() const { return name().empty() ? detail::describe_conv("DynamicConv2d", *this) : name(); }

  KernelAttentionOptions attention_;
  MixStrategy mix_ = MixStrategy::Auto;
  AttentionKind kind_ = AttentionKind::DyConv;
  bool shared_routing_ = false;
};

template <typename T>
class DynamicConv2d final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::DynamicConv2d<T>: T must be a floating-point type (float or double)");

 public:
  /// Validates the options (OptionsError) and initialises the K kernels, biases and attention
  /// FCs uniformly in PyTorch's default ranges from fixed seeds.
  explicit DynamicConv2d(const DynamicConv2dOptions& options)
      : options_(options),
        layer_(detail::describe_conv(kind_label(options.attention_kind()), options)),
        conv_(detail::validate_conv(layer_, options)) {
    validate_kind();
    switch (kind()) {
      case AttentionKind::DyConv: attention_.emplace(options_.attention_options()); break;
      case AttentionKind::CondConv:
        if (!options_.shared_routing()) routing_.emplace(options_.routing_options());
        break;
      case AttentionKind::ODConv: omni_.emplace(options_.omni_attention_options()); break;
    }
    const Index k = kernels(), size = conv_.geometry.weight_size();
    detail::checked_mul<OptionsError>(layer_, "the size of the K kernels", k, size);
    const Index fan_in = conv_.geometry.in_per_group() * conv_.geometry.kernel_h * conv_.geometry.kernel_w;
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    packed_.resize(static_cast<std::size_t>(k * size));
    for (Index i = 0; i < k; ++i)
      detail::init_uniform(packed_.data() + i * size, size, bound, 10 + static_cast<unsigned>(i));
    if (options.bias()) {
      bias_.resize(static_cast<std::size_t>(k * conv_.geometry.out_channels));
      detail::init_uniform(bias_.data(), k * conv_.geometry.out_channels, bound, 9);
    }
    const MixStrategy m = options.mix_strategy();
    if (m != MixStrategy::Auto && !mix_strategy_supports(m, conv_.algorithm, conv_.geometry))
      fail<OptionsError>(layer_, ": mix_strategy=", mix_strategy_name(m), " needs ",
                         m == MixStrategy::FusedPacking ? "a GEMM algorithm (not Depthwise) and groups == 1"
                                                        : "groups == 1 or a depthwise convolution",
                         ", got algorithm ", algorithm_name(conv_.algorithm), ", groups=", conv_.geometry.groups);
  }

  /// The options the layer was built with (set_bias and fold_batchnorm may add biases:
  /// has_bias() tells; the current temperature is attention().temperature()).
  const DynamicConv2dOptions& options() const { return options_; }
  const ConvGeometry& geometry() const { return conv_.geometry; }
  ConvAlgorithm algorithm() const { return conv_.algorithm; }
  /// "DynamicConv2d(32 -> 64, 3x3)" (CondConv2d, ODConv2d for those kinds), prefixed by the
  /// name if one was given.
  std::string description() const override { return layer_; }
  Index kernels() const { return options_.kernels(); }
  AttentionKind kind() const { return options_.attention_kind(); }
  /// Whether every row of the kernel weights sums to 1 (DY-Conv, ODConv), so that a BatchNorm's
  /// shift folds into the kernels' biases; CondConv's routing does not.
  bool weights_sum_to_one() const { return kind() != AttentionKind::CondConv; }
  /// CondConv with the routing as second input.
  bool shared_routing() const { return options_.shared_routing(); }
  int arity() const override { return shared_routing() ? 2 : 1; }

  /// The DY-Conv attention; OptionsError for the other kinds.
  KernelAttention<T>& attention() { return *require(attention_, "attention()"); }
  const KernelAttention<T>& attention() const { return *require(attention_, "attention()"); }
  /// CondConv's own routing; OptionsError for the other kinds and a shared routing.
  CondConvRouting<T>& routing() { return *require(routing_, "routing()"); }
  const CondConvRouting<T>& routing() const { return *require(routing_, "routing()"); }
  /// ODConv's attention; OptionsError for the other kinds.
  OmniAttention<T>& omni_attention() { return *require(omni_, "omni_attention()"); }
  const OmniAttention<T>& omni_attention() const { return *require(omni_, "omni_attention()"); }
  /// The temperature of whichever attention the layer has (OptionsError for a shared routing:
  /// its CondConvRouting holds it).
  T temperature() const {
    if (attention_) return attention_->temperature();
    if (omni_) return omni_->temperature();
    return routing().temperature();
  }
  void set_temperature(double tau) {
    if (attention_) return attention_->set_temperature(tau);
    if (omni_) return omni_->set_temperature(tau);
    routing().set_temperature(tau);
  }

  /// [K, Cout, Cin/groups, kh, kw] (BFloat16/Float16 experts widened: the values the layer
  /// computes with).
  Tensor5<T> weight() const {
    Tensor5<T> w(weight_shape());
    const std::vector<T> packed = packed_experts();
    const Index size = conv_.geometry.weight_size();
    for (Index k = 0; k < kernels(); ++k)
      detail::unpack_weights(conv_.algorithm, conv_.geometry, packed.data() + k * size, w.data() + k * size);
    return w;
  }
  /// Sets the K kernels, stored in the layer's expert precision (rounded for BFloat16/Float16;
  /// OptionsError for a Float16 value beyond its range, see set_expert_precision).
  void set_weight(const Tensor5<T>& w) {
    detail::check_shape<T, 5>(layer_, "weight", w, weight_shape());
    const Index size = conv_.geometry.weight_size();
    std::vector<T> packed(static_cast<std::size_t>(kernels() * size));
    for (Index k = 0; k < kernels(); ++k)
      detail::pack_weights(conv_.algorithm, conv_.geometry, w.data() + k * size, packed.data() + k * size);
    store_experts(precision_, std::move(packed));
  }

  /// How the K kernels are stored (ExpertPrecision); Float32 unless set.
  ExpertPrecision expert_precision() const { return precision_; }
  /// Stores the K kernels as `p` from now on: BFloat16 and Float16 round each value to nearest
  /// even (once: set_weight, load and fold_batchnorm round again what they write), Float32
  /// widens them back (the rounding stays). Biases, attention and activations stay T. Fold
  /// BatchNorms before (Graph::load does) so that the folded kernels are what is rounded.
  /// OptionsError naming the layer, the kernel and the value for Float16 and a value beyond
  /// +-65504 (Float16's largest); the layer is unchanged then.
  void set_expert_precision(ExpertPrecision p) {
    if (p != precision_) store_experts(p, packed_experts());
  }
  bool has_bias() const { return !bias_.empty(); }
  /// [K, Cout]; zeros when the layer has no bias.
  Tensor2<T> bias() const {
    Tensor2<T> b(kernels(), conv_.geometry.out_channels);
    for (Index i = 0; i < b.size(); ++i) b.data()[i] = has_bias() ? bias_[i] : T(0);
    return b;
  }
  /// Sets the K biases [K, Cout]; a layer built with bias(false) gains them (a parameter from
  /// then on).
  /// OptionsError for ODConv, which has no convolution bias.
  void set_bias(const Tensor2<T>& b) {
    if (kind() == AttentionKind::ODConv)
      fail<OptionsError>(layer_, ": ODConv has no convolution bias (its filter attention scales the output)");
    set_bias_values(b);
    bias_param_ = true;
  }
  /// Whether the biases are a parameter (see Conv2d::bias_is_parameter).
  bool bias_is_parameter() const { return bias_param_; }

  /// The kernel sum_k pi[k] W_k [Cout, Cin/groups, kh, kw] for one attention row pi [K].
  Tensor4<T> aggregated_weight(const Tensor1<T>& pi) const {
    detail::check_shape<T, 1>(layer_, "attention", pi, {kernels()});
    std::vector<T> mixed(static_cast<std::size_t>(conv_.geometry.weight_size()));
    const std::array<Index, 2> m = detail::kernel_matrix(conv_.algorithm, conv_.geometry);
    with_experts([&](const auto* experts) {
      detail::aggregate(experts, kernels(), m[0], m[1], pi.data(), 0, m[1], mixed.data());
    });
    Tensor4<T> w(conv_.geometry.out_channels, conv_.geometry.in_per_group(), conv_.geometry.kernel_h,
                 conv_.geometry.kernel_w);
    detail::unpack_weights(conv_.algorithm, conv_.geometry, mixed.data(), w.data());
    return w;
  }
  /// The bias sum_k pi[k] b_k [Cout] for one attention row pi [K] (zeros without bias).
  Tensor1<T> aggregated_bias(const Tensor1<T>& pi) const {
    detail::check_shape<T, 1>(layer_, "attention", pi, {kernels()});
    Tensor1<T> b(conv_.geometry.out_channels);
    b.setZero();
    if (has_bias())
      detail::aggregate(bias_.data(), kernels(), 1, conv_.geometry.out_channels, pi.data(), 0,
                        conv_.geometry.out_channels, b.data());
    return b;
  }

  /// Folds an inference BatchNorm2d that follows this layer into it, exactly, for every kind:
  /// the scale s into all K kernels (and biases), W_k' = s W_k, b_k' = s b_k. The shift t goes
  /// into the kernels' biases where the weights sum to 1 and no attention scales the output
  /// (DY-Conv: b_k' = s b_k + t), else it stays a separate per-channel bias (shift' = s shift +
  /// t): CondConv's routing need not sum to 1, and ODConv's filter attention multiplies the
  /// output before the BatchNorm. What the fold leaves outside the parameters (a DY-Conv layer
  /// without a bias parameter, the shift) is folded_bias(): the folded BatchNorm keeps it, as
  /// Graph::fold_batchnorms does, so that saving and loading gives the same function.
  void fold_batchnorm(const BatchNorm2d<T>& bn) {
    const Index cout = conv_.geometry.out_channels;
    if (bn.num_features() != cout)
      fail<ShapeError>(layer_, ": cannot fold ", bn.description(),
                               ": num_features must equal out_channels=", cout);
    Tensor5<T> w = weight();
    Tensor2<T> b = bias();
    const Index per_out = conv_.geometry.weight_size() / cout;
    if (kind() == AttentionKind::DyConv) {
      detail::fold_batchnorm(bn, kernels(), per_out, w.data(), b.data());
      set_weight(w);
      set_bias_values(b);
      return;
    }
    const Tensor1<T> scale = bn.scale(), t = bn.shift();
    for (Index k = 0; k < kernels(); ++k)
      for (Index c = 0; c < cout; ++c) {
        T* wk = w.data() + (k * cout + c) * per_out;
        for (Index i = 0; i < per_out; ++i) wk[i] *= scale(c);
        b(k, c) *= scale(c);
      }
    set_weight(w);
    if (has_bias()) set_bias_values(b);
    if (shift_.empty()) shift_.assign(static_cast<std::size_t>(cout), T(0));
    for (Index c = 0; c < cout; ++c) shift_[static_cast<std::size_t>(c)] = scale(c) * shift_[static_cast<std::size_t>(c)] + t(c);
  }
  /// The per-channel bias [Cout] a BatchNorm fold left outside the parameters (zeros if none).
  Tensor1<T> folded_bias() const {
    const Index cout = conv_.geometry.out_channels;
    Tensor1<T> rest(cout);
    for (Index c = 0; c < cout; ++c) {
      const std::size_t i = static_cast<std::size_t>(c);
      if (kind() != AttentionKind::DyConv) rest(c) = shift_.empty() ? T(0) : shift_[i];
      else rest(c) = bias_param_ || bias_.empty() ? T(0) : bias_[i];
    }
    return rest;
  }

  /// [N, Cin, H, W] -> [N, Cout, Hout, Wout]. If `attention` is given, it receives the kernel
  /// weights pi [N, K]. A layer with a shared routing takes it as forward(x, routing).
  Tensor4<T> forward(const Tensor4<T>& x, Tensor2<T>* attention = nullptr) const {
    return nhwc_to_nchw(forward(nchw_to_nhwc(x), attention));
  }
  /// The same in NHWC.
  NhwcTensor<T> forward(const NhwcTensor<T>& x, Tensor2<T>* attention = nullptr) const {
    if (shared_routing())
      fail<OptionsError>(layer_, ": the routing is shared (an input of the layer): call forward(x, routing)");
    NhwcTensor<T> y(output_shape({x.shape()}));
    Context<T> ctx(1);
    typename Workspace<T>::Lease values;
    const AttentionHeads<T> heads = attend(x.view(), ctx, values);
    if (attention) {
      *attention = Tensor2<T>(x.shape().n, kernels());
      std::copy(heads.kernel, heads.kernel + attention->size(), attention->data());
    }
    convolve_run(x.view(), heads, y.view(), ctx, PostOps<T>{});
    return y;
  }
  /// CondConv with a shared routing: routing [N, E] computed by the block's CondConvRouting.
  Tensor4<T> forward(const Tensor4<T>& x, const Tensor2<T>& routing) const {
    return nhwc_to_nchw(forward(nchw_to_nhwc(x), routing));
  }
  NhwcTensor<T> forward(const NhwcTensor<T>& x, const Tensor2<T>& routing) const {
    if (!shared_routing())
      fail<OptionsError>(layer_, ": the layer computes its own attention: call forward(x)");
    detail::check_shape<T, 2>(layer_, "routing", routing, {x.shape().n, kernels()});
    return convolve(x, routing);
  }

  /// Every attention head of the layer for NCHW or NHWC x, as tensors [N, size] (a head the
  /// kind does not have is empty, size 0): the kernel weights [N, K] and ODConv's channel
  /// [N, Cin], filter [N, Cout] and spatial [N, kh*kw] attentions.
  struct HeadValues {
    Tensor2<T> kernel, channel, filter, spatial;
  };
  HeadValues attention_heads(const Tensor4<T>& x) const { return attention_heads(nchw_to_nhwc(x)); }
  HeadValues attention_heads(const NhwcTensor<T>& x) const {
    if (shared_routing())
      fail<OptionsError>(layer_, ": the routing is shared (an input of the layer), not computed by it");
    output_shape({x.shape()});
    Context<T> ctx(1);
    typename Workspace<T>::Lease values;
    const AttentionHeads<T> h = attend(x.view(), ctx, values);
    const Index n = x.shape().n;
    auto copy = [n](const T* p, Index size) {
      Tensor2<T> t(n, p ? size : 0);
      if (p) std::copy(p, p + n * size, t.data());
      return t;
    };
    const ConvGeometry& g = conv_.geometry;
    return {copy(h.kernel, kernels()), copy(h.channel, g.in_channels), copy(h.filter, g.out_channels),
            copy(h.spatial, g.kernel_h * g.kernel_w)};
  }

  /// The convolution with given kernel weights pi [N, K] instead of the layer's own attention
  /// (rows need not sum to 1: any per-sample mix of the K kernels; ODConv's other attentions
  /// are not applied). [N, Cin, H, W] -> [N, Cout, Hout, Wout].
  Tensor4<T> convolve(const Tensor4<T>& x, const Tensor2<T>& pi) const {
    return nhwc_to_nchw(convolve(nchw_to_nhwc(x), pi));
  }
  /// The same in NHWC.
  NhwcTensor<T> convolve(const NhwcTensor<T>& x, const Tensor2<T>& pi) const {
    const NhwcShape s = x.shape();
    detail::check_conv_input(layer_, conv_.geometry, s);
    NhwcTensor<T> y(NhwcShape{s.n, conv_.geometry.out_h(s.h), conv_.geometry.out_w(s.w), conv_.geometry.out_channels});
    detail::check_shape<T, 2>(layer_, "attention", pi, {s.n, kernels()});
    Context<T> ctx(1);
    AttentionHeads<T> heads;
    heads.kernel = pi.data();
    convolve_run(x.view(), heads, y.view(), ctx, PostOps<T>{});
    return y;
  }

  /// [N, H, W, Cin] -> [N, Hout, Wout, Cout]; with a shared routing also [N, 1, 1, E] second.
  /// ShapeError if an input does not fit.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, arity());
    detail::check_conv_input(layer_, conv_.geometry, in[0]);
    if (shared_routing()) {
      // in.back() is in[1] (check_arity made sure; GCC 12 cannot see it and warns of in[1]).
      const NhwcShape& routing = in.back();
      const NhwcShape want{in[0].n, 1, 1, kernels()};
      if (!(routing == want))
        fail<ShapeError>(layer_, ": routing input ", routing.str(), " must be ", want.str(), " (one weight per expert for each of the ",
                         in[0].n, " samples of input ", in[0].str(), ')');
    }
    return {in[0].n, conv_.geometry.out_h(in[0].h), conv_.geometry.out_w(in[0].w), conv_.geometry.out_channels};
  }
  bool fuses_post_ops() const override { return true; }
  bool writes_means() const override { return true; }
  /// The layer's own attention pools its input; a shared routing is a second input.
  bool pools_input() const override { return !shared_routing(); }

  /// y = post(conv(x, synthesised kernel) + mixed bias): the attention, then the plan's
  /// strategy, split over ctx's threads, no allocation in a steady state. PostOps::means:
  /// PerSample sums each sample's channels as it finishes them (conv_sample); the other
  /// strategies pool y after.
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    typename Workspace<T>::Lease values;
    AttentionHeads<T> heads;
    if (shared_routing()) heads.kernel = in[1].data;
    else heads = attend(in[0], ctx, values, in.means);
    convolve_run(in[0], heads, y, ctx, post);
  }

  /// The plan for an NHWC input of shape `in` on `threads` threads: the forced or selected
  /// mixing strategy, the split and the buffers (min_parallel_madds as Context's).
  DynamicConvPlan plan(const NhwcShape& in, int threads, Index min_parallel_madds = Index(1) << 18) const {
    const ConvGeometry& g = conv_.geometry;
    const Index oh = g.out_h(in.h), ow = g.out_w(in.w), n = in.n, cout = g.out_channels, size = g.weight_size();
    const std::array<Index, 2> m = detail::kernel_matrix(conv_.algorithm, g);
    DynamicConvPlan p;
    p.mix = options_.mix_strategy() != MixStrategy::Auto
                ? options_.mix_strategy()
                : select_mix_strategy({g, conv_.algorithm, kernels(), n, oh, ow, threads, min_parallel_madds,
                                       expert_bytes(), scaled(), detail::gemm_kernels<T>().mixes_while_packing});
    p.algorithm = detail::run_algorithm(conv_.algorithm, oh, ow);
    if (p.algorithm == ConvAlgorithm::Winograd && p.mix == MixStrategy::FusedPacking) p.algorithm = ConvAlgorithm::Im2colGemm;
    const bool winograd = p.algorithm == ConvAlgorithm::Winograd;
    const Index transformed = detail::winograd_kernel_size<T>(g.in_channels, cout);
    p.bias_values = has_bias() || !shift_.empty() ? n * cout : 0;
    p.scale_values = scaled() ? n * (scale_rows() + cout) : 0;
    const bool split = n < threads && oh * ow * size >= min_parallel_madds;
    switch (p.mix) {
      case MixStrategy::Auto:
      case MixStrategy::PerSample:
        p.kernel_scratch_values = size;
        p.transformed_values = winograd ? transformed : 0;
        break;
      case MixStrategy::RowSplit:
        p.row_parts = threads;
        p.mixed_kernel_values = n * size;
        p.transformed_values = winograd ? n * transformed : 0;
        break;
      case MixStrategy::ChannelTiles:
      case MixStrategy::FusedPacking: {
        const bool big_batch = n > 1 && kernels() * size * expert_bytes() > kMixTileSourceBytes;
        Index tiles = 1;
        if (big_batch && p.mix == MixStrategy::ChannelTiles) {
          const Index width = std::max<Index>(48, kMixedTileBytes / (n * m[0] * static_cast<Index>(sizeof(T))));
          tiles = (cout + width - 1) / width;
        }
        tiles = std::min<Index>(std::max<Index>(tiles, threads), (cout + 15) / 16);
        if (tiles % threads) tiles += threads - tiles % threads;
        if (p.mix == MixStrategy::FusedPacking && n == 1 && std::min<Index>(threads, m[0]) > 1) {
          // Channel tiles would give each thread part of every row of the K kernels, which
          // stream from memory here; depth parts read whole rows (on the Zen 4 machine, one
          // 512-channel 3x3 layer at 7x7: 2.0 against 3.1 ms on two threads).
          tiles = 1;
          p.depth_parts = std::min<Index>(threads, m[0]);
          p.partial_values = (p.depth_parts - 1) * oh * ow * cout;
        }
        p.tiles = tiles;
        p.shared_columns = detail::needs_columns(p.algorithm, g);
        p.column_parts = split ? threads : 1;
        p.column_values = p.shared_columns ? n * oh * ow * m[0] : 0;
        Index widest = 0;
        for (Index t = 0; t < tiles; ++t) {
          const std::array<Index, 2> c = detail::channel_part(cout, tiles, t);
          widest = std::max(widest, c[1] - c[0]);
        }
        p.kernel_scratch_values = p.mix == MixStrategy::ChannelTiles ? n * m[0] * widest : 0;
        p.transformed_values = winograd ? detail::winograd_kernel_size<T>(g.in_channels, widest) : 0;
        break;
      }
    }
    return p;
  }

  /// The plan run() follows on `ctx`.
  DynamicConvPlan plan(const NhwcShape& in, const Context<T>& ctx) const {
    return plan(in, ctx.threads(), ctx.min_parallel_madds());
  }

  /// By kind, with the PyTorch modules' state_dict names and shapes:
  ///  - DY-Conv: "weight" [K, Cout, Cin/groups, kh, kw], "bias" [K, Cout] when the biases are a
  ///    parameter, "attention.fc1.weight" [hidden, Cin], "attention.fc1.bias" [hidden],
  ///    "attention.fc2.weight" [K, hidden], "attention.fc2.bias" [K], "attention.temperature" [];
  ///  - CondConv (timm's CondConv2d): "weight" [E, Cout*Cin/groups*kh*kw], "bias" [E, Cout],
  ///    and without a shared routing "routing_fn.weight" [E, Cin], "routing_fn.bias" [E],
  ///    "routing_fn.temperature" [];
  ///  - ODConv (OSVAI's ODConv2d): "weight" [K, Cout, Cin/groups, kh, kw] and "attention." +
  ///    OmniAttention's names.
  std::vector<ParameterInfo> parameters() const override {
    const std::array<Index, 5> w = weight_shape();
    std::vector<ParameterInfo> p{{"weight", kind() == AttentionKind::CondConv
                                                ? std::vector<Index>{w[0], w[1] * w[2] * w[3] * w[4]}
                                                : std::vector<Index>{w[0], w[1], w[2], w[3], w[4]}}};
    if (bias_param_) p.push_back({"bias", {w[0], w[1]}});
    if (attention_) {
      const Index hidden = attention_->hidden(), cin = conv_.geometry.in_channels;
      p.push_back({"attention.fc1.weight", {hidden, cin}});
      p.push_back({"attention.fc1.bias", {hidden}});
      p.push_back({"attention.fc2.weight", {w[0], hidden}});
      p.push_back({"attention.fc2.bias", {w[0]}});
      p.push_back({"attention.temperature", {}});
    }
    if (routing_)
      for (const ParameterInfo& r : routing_->parameters()) p.push_back({"routing_fn." + r.name, r.shape});
    if (omni_)
      for (const ParameterInfo& a : omni_->parameters()) p.push_back({"attention." + a.name, a.shape});
    return p;
  }
  std::vector<T> parameter(const std::string& name) const override {
    auto flat = [](const auto& t) { return std::vector<T>(t.data(), t.data() + t.size()); };
    if (name == "weight") return flat(weight());
    if (name == "bias" && bias_param_) return bias_;
    if (routing_ && name.rfind("routing_fn.", 0) == 0) return routing_->parameter(name.substr(11));
    if (omni_ && name.rfind("attention.", 0) == 0 && has_parameter(name)) return omni_->parameter(name.substr(10));
    if (attention_) {
      if (name == "attention.fc1.weight") return flat(attention_->fc1().weight());
      if (name == "attention.fc1.bias") return flat(attention_->fc1().bias());
      if (name == "attention.fc2.weight") return flat(attention_->fc2().weight());
      if (name == "attention.fc2.bias") return flat(attention_->fc2().bias());
      if (name == "attention.temperature") return {attention_->temperature()};
    }
    this->unknown_parameter(name);
  }
  void set_parameter(const std::string& name, const std::vector<T>& v) override {
    const std::array<Index, 5> w = weight_shape();
    const Index k = w[0];
    if (name == "weight") {
      this->check_count(name, v, {w[0], w[1], w[2], w[3], w[4]});
      set_weight(Eigen::TensorMap<const Tensor5<T>>(v.data(), w));
      return;
    }
    if (name == "bias" && bias_param_) {
      this->check_count(name, v, {k, w[1]});
      return set_bias_values(Eigen::TensorMap<const Tensor2<T>>(v.data(), k, w[1]));
    }
    if (routing_ && name.rfind("routing_fn.", 0) == 0) return routing_->set_parameter(name.substr(11), v);
    if (omni_ && has_parameter(name)) {
      if (name == "attention.temperature") this->check_count(name, v, {});
      for (const ParameterInfo& p : parameters())
        if (p.name == name) this->check_count(name, v, p.shape);
      return omni_->set_parameter(name.substr(10), v);
    }
    if (!attention_) this->unknown_parameter(name);
    const Index hidden = attention_->hidden(), cin = conv_.geometry.in_channels;
    auto as2 = [&](Index a, Index b) {
      this->check_count(name, v, {a, b});
      return Tensor2<T>(Eigen::TensorMap<const Tensor2<T>>(v.data(), a, b));
    };
    auto as1 = [&](Index a) {
      this->check_count(name, v, {a});
      return Tensor1<T>(Eigen::TensorMap<const Tensor1<T>>(v.data(), a));
    };
    if (name == "attention.fc1.weight") {
      attention_->fc1().set_weight(as2(hidden, cin));
    } else if (name == "attention.fc1.bias") {
      attention_->fc1().set_bias(as1(hidden));
    } else if (name == "attention.fc2.weight") {
      attention_->fc2().set_weight(as2(k, hidden));
    } else if (name == "attention.fc2.bias") {
      attention_->fc2().set_bias(as1(k));
    } else if (name == "attention.temperature") {
      this->check_count(name, v, {});
      attention_->set_temperature(static_cast<double>(v[0]));
    } else {
      this->unknown_parameter(name);
    }
  }
  /// Loads every parameter; the temperature is optional (tau = 1 where the file has none). A
  /// bias or shift left by an earlier BatchNorm fold is dropped first. With LoadMode::Upcycle
  /// and no attention in the file (a static checkpoint), the static kernel [Cout, Cin/g, kh,
  /// kw] (and bias) of a DY-Conv layer becomes all K kernels (and biases) and the attention
  /// keeps its values (exact because its weights sum to 1; the other kinds load strictly).
  void load(WeightLoader& w, const std::string& prefix) override {
    if (!bias_param_) bias_.clear();
    shift_.clear();
    const std::array<Index, 5> ws = weight_shape();
    const Index k = ws[0];
    if (w.mode() == LoadMode::Upcycle && kind() == AttentionKind::DyConv &&
        !w.contains(this->join(prefix, "attention.fc1.weight"))) {
      const std::vector<T> one = w.take_flat<T>(this->join(prefix, "weight"), {ws[1], ws[2], ws[3], ws[4]});
      std::vector<T> all;
      for (Index i = 0; i < k; ++i) all.insert(all.end(), one.begin(), one.end());
      set_parameter("weight", all);
      if (bias_param_) {
        const std::vector<T> b = w.take_flat<T>(this->join(prefix, "bias"), {ws[1]});
        std::vector<T> bk;
        for (Index i = 0; i < k; ++i) bk.insert(bk.end(), b.begin(), b.end());
        set_parameter("bias", bk);
      }
      return;
    }
    for (const ParameterInfo& p : parameters()) {
      const std::string name = this->join(prefix, p.name);
      if (p.shape.empty())  // the temperature
        set_parameter(p.name, {static_cast<T>(w.take_scalar_or(name, 1.0))});
      else
        set_parameter(p.name, w.take_flat<T>(name, p.shape));
    }
  }

  /// Parameters and multiply-adds (conv, attention with GAP, kernel synthesis, ODConv's
  /// scaling of the kernel) of one sample of this input shape, as paper.md counts them. A
  /// shared routing is counted where it is computed (its CondConvRouting).
  LayerCost cost(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, arity());
    return cost(in[0].h, in[0].w);
  }
  /// The same for an in_h x in_w input.
  LayerCost cost(Index in_h, Index in_w) const {
    detail::check_fits(layer_, conv_.geometry, in_h, in_w, [&] { return concat(in_h, 'x', in_w); });
    LayerCost c;
    const Index k = kernels(), cout = conv_.geometry.out_channels, size = conv_.geometry.weight_size();
    c.params = k * size + (bias_param_ ? k * cout : 0);
    c.conv_madds = conv_.geometry.out_h(in_h) * conv_.geometry.out_w(in_w) * size;
    c.aggregation_madds = k * size + (bias_param_ ? k * cout : 0);
    if (attention_) {
      c.params += attention_->params();
      c.attention_madds = attention_->madds(in_h, in_w);
    } else if (routing_) {
      c.params += routing_->linear().params();
      c.attention_madds = routing_->madds(in_h, in_w);
    } else if (omni_) {
      c.params += omni_->params();
      c.attention_madds = omni_->madds(in_h, in_w);
      c.scaling_madds = size;
    }
    return c;
  }

 private:
  /// The mixed tiles of all samples of a batch, at most (they are consumed from L2/L3).
  static constexpr Index kMixedTileBytes = Index(4) << 20;

  void set_bias_values(const Tensor2<T>& b) {
    detail::check_shape<T, 2>(layer_, "bias", b, {kernels(), conv_.geometry.out_channels});
    bias_.assign(b.data(), b.data() + b.size());
  }

  static const char* kind_label(AttentionKind k) {
    return k == AttentionKind::DyConv ? "DynamicConv2d" : k == AttentionKind::CondConv ? "CondConv2d" : "ODConv2d";
  }
  void validate_kind() const {
    if (options_.shared_routing() && kind() != AttentionKind::CondConv)
      fail<OptionsError>(layer_, ": shared_routing needs the CondConv attention kind, got ", attention_kind_name(kind()));
    if (kind() == AttentionKind::ODConv && options_.bias())
      fail<OptionsError>(layer_, ": ODConv has no convolution bias (its filter attention scales the output): "
                                 "set bias(false), as DynamicConv2dOptions::odconv() does");
    if (kind() == AttentionKind::DyConv) {
      detail::validate_attention<T>(layer_, options_.attention_options());
    } else {
      detail::check_range(layer_, "kernels", options_.kernels());
      detail::check_positive_finite<T>(layer_, "temperature", options_.temperature());
    }
    if (kind() == AttentionKind::ODConv) detail::validate_attention<T>(layer_, options_.attention_options());
  }
  template <typename A>
  static A* require_impl(A* a, const std::string& layer, const char* what, AttentionKind k, bool shared) {
    if (!a)
      fail<OptionsError>(layer, ": ", what, " does not exist for this layer (attention ", attention_kind_name(k),
                         shared ? ", routing shared" : "", ")");
    return a;
  }
  template <typename A>
  A* require(std::optional<A>& a, const char* what) {
    return require_impl(a ? &*a : static_cast<A*>(nullptr), layer_, what, kind(), shared_routing());
  }
  template <typename A>
  const A* require(const std::optional<A>& a, const char* what) const {
    return require_impl(a ? &*a : static_cast<const A*>(nullptr), layer_, what, kind(), shared_routing());
  }
  bool has_parameter(const std::string& name) const {
    for (const ParameterInfo& p : parameters())
      if (p.name == name) return true;
    return false;
  }

  /// ODConv: the attentions scale the mixed kernel.
  bool scaled() const { return kind() == AttentionKind::ODConv; }
  /// The packed kernel as stacked row-major blocks (one per group; one block for depthwise)
  /// of [scale_block_rows(), scale_block_cols()]: scale_kernel's view.
  bool depthwise_layout() const { return conv_.algorithm == ConvAlgorithm::Depthwise; }
  Index scale_block_rows() const {
    const ConvGeometry& g = conv_.geometry;
    return depthwise_layout() ? g.kernel_h * g.kernel_w : g.kernel_h * g.kernel_w * g.in_per_group();
  }
  Index scale_block_cols() const { return depthwise_layout() ? conv_.geometry.out_channels : conv_.geometry.out_per_group(); }
  /// Row scales per sample: one per row of all the blocks.
  Index scale_rows() const { return depthwise_layout() ? scale_block_rows() : scale_block_rows() * conv_.geometry.groups; }

  /// Sample b's row scales s[p] c[i] (depthwise: s[p]) and column scales f[o] (depthwise:
  /// c[o] f[o]) of the packed layout, from the heads (absent heads are 1).
  void kernel_scales(const AttentionHeads<T>& h, Index b, T* row, T* col) const {
    const ConvGeometry& g = conv_.geometry;
    const Index taps = g.kernel_h * g.kernel_w, cin = g.in_channels, cout = g.out_channels;
    const T* s = h.spatial ? h.spatial + b * taps : nullptr;
    const T* c = h.channel ? h.channel + b * cin : nullptr;
    const T* f = h.filter ? h.filter + b * cout : nullptr;
    if (depthwise_layout()) {
      for (Index t = 0; t < taps; ++t) row[t] = s ? s[t] : T(1);
      for (Index o = 0; o < cout; ++o) col[o] = (c ? c[o] : T(1)) * (f ? f[o] : T(1));
      return;
    }
    const Index cin_g = g.in_per_group();
    for (Index grp = 0; grp < g.groups; ++grp)
      for (Index t = 0; t < taps; ++t)
        for (Index i = 0; i < cin_g; ++i)
          row[(grp * taps + t) * cin_g + i] = (s ? s[t] : T(1)) * (c ? c[grp * cin_g + i] : T(1));
    for (Index o = 0; o < cout; ++o) col[o] = f ? f[o] : T(1);
  }

  /// The heads of the layer's own attention for x (its channel means: `means` when given, see
  /// Inputs::means), their values leased from ctx's workspace.
  AttentionHeads<T> attend(const NhwcView<const T>& x, Context<T>& ctx, typename Workspace<T>::Lease& values,
                           const T* means = nullptr) const {
    AttentionHeads<T> heads;
    if (omni_) {
      values = ctx.workspace().acquire(omni_->head_values(x.n));
      return omni_->run(x, values.data(), ctx, means);
    }
    values = ctx.workspace().acquire(x.n * kernels());
    if (attention_) attention_->run(x, values.data(), ctx, means);
    else routing().route(x, values.data(), ctx, means);
    heads.kernel = values.data();
    return heads;
  }

  /// What every strategy shares: the kernel weights, the per-sample mixed biases, the kernel
  /// scales (ODConv) and the epilogue of sample b.
  struct Batch {
    const NhwcView<const T>& x;
    const T* pi;
    const NhwcView<T>& y;
    const PostOps<T>& post;
    const T* biases;  // [n, Cout] or null
    detail::KernelScales<T> scales;  // rows and columns of each sample, [n, scale_rows() + Cout]; or none
    detail::Epilogue<T> epilogue(Index b, Index cout) const {
      return {biases ? biases + b * cout : nullptr, post.act, post.residual ? post.residual + b * y.sample_size() : nullptr,
              post.after};
    }
  };

  /// The convolution of every sample with its own kernel synthesised from the heads, by the plan.
  void convolve_run(const NhwcView<const T>& x, const AttentionHeads<T>& heads, const NhwcView<T>& y, Context<T>& ctx,
                    const PostOps<T>& post) const {
    const DynamicConvPlan p = plan(x.shape(), ctx.threads(), ctx.min_parallel_madds());
    const Index n = x.n, k = kernels(), cout = conv_.geometry.out_channels;
    const T* pi = heads.kernel;
    typename Workspace<T>::Lease biases, scales;
    if (p.bias_values) {
      biases = ctx.workspace().acquire(p.bias_values);
      for (Index b = 0; b < n; ++b) {
        T* bb = biases.data() + b * cout;
        if (has_bias()) detail::aggregate(bias_.data(), k, 1, cout, pi + b * k, 0, cout, bb);
        else std::fill(bb, bb + cout, T(0));
        if (!shift_.empty())
          for (Index c = 0; c < cout; ++c) bb[c] += shift_[static_cast<std::size_t>(c)];
      }
    }
    const Index stride = scale_rows() + cout;
    if (p.scale_values) {
      scales = ctx.workspace().acquire(p.scale_values);
      for (Index b = 0; b < n; ++b)
        kernel_scales(heads, b, scales.data() + b * stride, scales.data() + b * stride + scale_rows());
    }
    detail::KernelScales<T> kernel_scale;
    if (p.scale_values) kernel_scale = {scales.data(), scales.data() + scale_rows(), stride};
    const Batch batch{x, pi, y, post, p.bias_values ? biases.data() : nullptr, kernel_scale};
    switch (p.mix) {
      case MixStrategy::Auto:
      case MixStrategy::PerSample: return mix_per_sample(batch, p, ctx);
      case MixStrategy::RowSplit: mix_row_split(batch, p, ctx); break;
      case MixStrategy::ChannelTiles:
      case MixStrategy::FusedPacking: mix_channel_tiles(batch, p, ctx); break;
    }
    if (post.means) detail::gap_nhwc(NhwcView<const T>(y), post.means, ctx);
  }

  /// PerSample: one task per sample mixes the whole kernel (Winograd: and transforms it), then
  /// convolves it (summing its channels for PostOps::means as it finishes them).
  void mix_per_sample(const Batch& bt, const DynamicConvPlan& p, Context<T>& ctx) const {
    const ConvGeometry& g = conv_.geometry;
    const std::array<Index, 2> m = detail::kernel_matrix(conv_.algorithm, g);
    const Index size = g.weight_size(), k = kernels();
    ctx.pool().parallel_for(bt.x.n, [&](std::int64_t b, int worker) {
      T* kernel = ctx.workspace().scratch(worker, Scratch::Kernel, size);
      with_experts([&](const auto* experts) { detail::aggregate(experts, k, m[0], m[1], bt.pi + b * k, 0, m[1], kernel); });
      if (bt.scales)
        detail::scale_kernel(kernel, scale_block_rows(), scale_block_cols(), bt.scales.row(b), bt.scales.col(b), 0, size);
      if (p.algorithm == ConvAlgorithm::Winograd) {
        T* u = ctx.workspace().scratch(worker, Scratch::Transformed, p.transformed_values);
        detail::winograd_kernel(0, g.in_channels, g.in_channels, kernel, m[1], m[1], u);
        kernel = u;
      }
      detail::conv_sample(p.algorithm, g, bt.x.sample(b), bt.x.h, bt.x.w, kernel, m[1], bt.epilogue(b, g.out_channels),
                          bt.y.sample(b), ctx.workspace(), worker, static_cast<const T*>(nullptr),
                          bt.post.means ? bt.post.means + b * g.out_channels : nullptr);
    });
  }

  /// RowSplit: each sample's kernel mixed once (split over the pool; Winograd: then transformed,
  /// split by input channels), then its output rows split over the pool as the static convolution does.
  void mix_row_split(const Batch& bt, const DynamicConvPlan& p, Context<T>& ctx) const {
    const ConvGeometry& g = conv_.geometry;
    const std::array<Index, 2> m = detail::kernel_matrix(conv_.algorithm, g);
    const Index size = g.weight_size(), k = kernels(), parts = p.row_parts;
    typename Workspace<T>::Lease mixed = ctx.workspace().acquire(p.mixed_kernel_values);
    ctx.pool().parallel_for(bt.x.n * parts, [&](std::int64_t task, int) {
      const Index b = task / parts;
      const std::array<Index, 2> r = split_range(size, parts, task % parts);
      with_experts([&](const auto* experts) {
        detail::mix(experts + r[0], size, k, bt.pi + b * k, 1, r[1] - r[0], 0, mixed.data() + b * size + r[0], 0);
      });
      if (bt.scales)
        detail::scale_kernel(mixed.data() + b * size, scale_block_rows(), scale_block_cols(), bt.scales.row(b),
                             bt.scales.col(b), r[0], r[1]);
    });
    const T* sample_kernels = mixed.data();
    Index kernel_stride = size;
    typename Workspace<T>::Lease transformed;
    if (p.algorithm == ConvAlgorithm::Winograd) {
      transformed = ctx.workspace().acquire(p.transformed_values);
      kernel_stride = detail::winograd_kernel_size<T>(g.in_channels, m[1]);
      ctx.pool().parallel_for(bt.x.n * parts, [&](std::int64_t task, int) {
        const Index b = task / parts;
        const std::array<Index, 2> r = split_range(g.in_channels, parts, task % parts);
        detail::winograd_kernel(r[0], r[1], g.in_channels, mixed.data() + b * size, m[1], m[1],
                                transformed.data() + b * kernel_stride);
      });
      sample_kernels = transformed.data();
    }
    ctx.pool().parallel_for(bt.x.n * parts, [&](std::int64_t task, int worker) {
      const Index b = task / parts;
      const std::array<Index, 2> r = split_range(bt.y.h, parts, task % parts);
      detail::conv_slice(p.algorithm, g, bt.x.sample(b), bt.x.h, bt.x.w, sample_kernels + b * kernel_stride, m[1],
                         detail::Slice{r[0], r[1], 0, g.out_channels}, bt.epilogue(b, g.out_channels), bt.y.sample(b),
                         static_cast<const T*>(nullptr), ctx.workspace(), worker);
    });
  }

  /// ChannelTiles / FusedPacking: tasks are output-channel tiles (FusedPacking of one image on
  /// several threads: ranges of the depth, mix_depth_parts); every task needs each sample's
  /// whole im2col matrix, built once first. FusedPacking mixes inside the GEMM's packing;
  /// ChannelTiles mixes the tile for all samples, then convolves each (Winograd: transforming
  /// each sample's tile first, with no im2col).
  void mix_channel_tiles(const Batch& bt, const DynamicConvPlan& p, Context<T>& ctx) const {
    const ConvGeometry& g = conv_.geometry;
    const ConvAlgorithm algo = p.algorithm;
    const std::array<Index, 2> m = detail::kernel_matrix(algo, g);
    const Index n = bt.x.n, k = kernels(), cout = g.out_channels, pixels = bt.y.pixels();
    const Index col_size = pixels * m[0];
    typename Workspace<T>::Lease columns;
    if (p.shared_columns) {
      columns = ctx.workspace().acquire(p.column_values);
      const Index parts = p.column_parts;
      ctx.pool().parallel_for(n * parts, [&](std::int64_t task, int) {
        const Index b = task / parts;
        const std::array<Index, 2> r = split_range(bt.y.h, parts, task % parts);
        detail::im2col(g, bt.x.sample(b), bt.x.h, bt.x.w, r[0], r[1], 0,
                       columns.data() + b * col_size + r[0] * bt.y.w * m[0]);
      });
    }
    const T* a = p.shared_columns ? columns.data() : bt.x.data;
    if (p.depth_parts > 1) return mix_depth_parts(bt, p, ctx, a);
    const bool fused = p.mix == MixStrategy::FusedPacking;
    // A batch's experts packed once, before the tasks that read them (null: packed per call).
    const T* packed = fused && n > 1 ? packed_gemm_experts() : nullptr;
    const detail::PackedLayout& layout = detail::gemm_kernels<T>().packed;
    ctx.pool().parallel_for(p.tiles, [&](std::int64_t t, int worker) {
      const std::array<Index, 2> c = detail::channel_part(cout, p.tiles, t);
      if (c[0] >= c[1]) return;
      const Index width = c[1] - c[0];
      if (fused) {
        for (Index b = 0; b < n; ++b) detail::epilogue_begin(bt.epilogue(b, cout), pixels, cout, c[0], c[1], 0, bt.y.sample(b));
        const Index a_stride = p.shared_columns ? col_size : bt.x.sample_size();
        if (packed && layout.starts_panel(c[0]))  // (a tile from an AVX-512 half panel packs per call)
          detail::mixed_gemm_packed(packed, k, m[0], m[1], bt.pi, bt.scales, n, c[0], c[1], a, a_stride, pixels,
                                    bt.y.data, bt.y.sample_size(), cout, ctx.workspace(), worker);
        else
          with_experts([&](const auto* experts) {
            detail::mixed_gemm_batch(experts, k, m[0], m[1], bt.pi, bt.scales, n, c[0], c[1], Index(0), m[0], a,
                                     a_stride, pixels, bt.y.data, bt.y.sample_size(), cout, ctx.workspace(), worker);
          });
        for (Index b = 0; b < n; ++b) detail::epilogue_end(bt.epilogue(b, cout), pixels, cout, c[0], c[1], 0, bt.y.sample(b));
        return;
      }
      T* tile = ctx.workspace().scratch(worker, Scratch::Kernel, n * m[0] * width);
      with_experts([&](const auto* experts) { detail::aggregate_batch(experts, k, m[0], m[1], bt.pi, n, c[0], width, tile); });
      if (bt.scales)
        for (Index b = 0; b < n; ++b)
          detail::scale_tile(tile + b * m[0] * width, m[0], width, bt.scales.row(b), bt.scales.col(b) + c[0]);
      T* u = algo == ConvAlgorithm::Winograd ? ctx.workspace().scratch(worker, Scratch::Transformed, p.transformed_values)
                                             : nullptr;
      for (Index b = 0; b < n; ++b) {
        const T* kernel = tile + b * m[0] * width;
        if (u) {
          detail::winograd_kernel(0, g.in_channels, g.in_channels, kernel, width, width, u);
          kernel = u;
        }
        detail::conv_slice(algo, g, bt.x.sample(b), bt.x.h, bt.x.w, kernel, width,
                           detail::Slice{0, bt.y.h, c[0], c[1]}, bt.epilogue(b, cout), bt.y.sample(b),
                           p.shared_columns ? columns.data() + b * col_size : nullptr, ctx.workspace(), worker);
      }
    });
  }

  /// FusedPacking of one image (x.n == 1) in p.depth_parts tasks, `a` its im2col matrix (or its
  /// input): each part mixes and multiplies its range of the depth for all channels, part 0
  /// into the output, the others into their partial outputs from the pool, which a second
  /// pass over pixel ranges adds into the output before the epilogue's end.
  void mix_depth_parts(const Batch& bt, const DynamicConvPlan& p, Context<T>& ctx, const T* a) const {
    const std::array<Index, 2> m = detail::kernel_matrix(p.algorithm, conv_.geometry);
    const Index cout = conv_.geometry.out_channels, pixels = bt.y.pixels(), parts = p.depth_parts;
    typename Workspace<T>::Lease partial = ctx.workspace().acquire(p.partial_values);
    const detail::Epilogue<T> ep = bt.epilogue(0, cout);
    ctx.pool().parallel_for(parts, [&](std::int64_t t, int worker) {
      const std::array<Index, 2> d = split_range(m[0], parts, t);
      T* out = t == 0 ? bt.y.data : partial.data() + (t - 1) * pixels * cout;
      if (t == 0) detail::epilogue_begin(ep, pixels, cout, 0, cout, 0, out);
      else std::fill(out, out + pixels * cout, T(0));
      with_experts([&](const auto* experts) {
        detail::mixed_gemm_batch(experts, kernels(), m[0], m[1], bt.pi, bt.scales, 1, 0, cout, d[0], d[1], a, 0, pixels,
                                 out, 0, cout, ctx.workspace(), worker);
      });
    });
    ctx.pool().parallel_for(parts, [&](std::int64_t t, int) {
      const std::array<Index, 2> r = split_range(pixels, parts, t);
      T* y = bt.y.data + r[0] * cout;
      for (Index part = 1; part < parts; ++part) {
        const T* from = partial.data() + (part - 1) * pixels * cout + r[0] * cout;
        for (Index i = 0; i < (r[1] - r[0]) * cout; ++i) y[i] += from[i];
      }
      detail::epilogue_end(ep, r[1] - r[0], cout, 0, cout, r[0], bt.y.data);
    });
  }

  /// f(experts) with the K packed kernels as stored: const T*, const Eigen::bfloat16* or
  /// const Eigen::half* (the mixing functions widen the last two).
  template <typename F>
  void with_experts(const F& f) const {
    switch (precision_) {
      case ExpertPrecision::Float32: return f(static_cast<const T*>(packed_.data()));
      case ExpertPrecision::BFloat16: return f(static_cast<const Eigen::bfloat16*>(packed_bf16_.data()));
      case ExpertPrecision::Float16: return f(static_cast<const Eigen::half*>(packed_f16_.data()));
    }
  }
  /// The K float experts, each [depth, Cout] in the GEMM's packed layout, made on first use and
  /// kept until the experts change: a batch's fused mixed GEMM mixes their blocks where they lie
  /// instead of packing the K sources per call (about 4 ms of ResNet-18's 512-channel layer at
  /// batch 8). Batches only: one image mixes while packing, in one pass over the experts as
  /// stored, and a model run on single images keeps one copy of its experts. Null when the
  /// kernel set has no such path (Eigen's), the experts are BF16/F16, or groups > 1.
  const T* packed_gemm_experts() const {
    const detail::GemmKernels<T>& e = detail::gemm_kernels<T>();
    if (!e.mixed_gemm_packed || precision_ != ExpertPrecision::Float32 || conv_.geometry.groups != 1) return nullptr;
    const std::array<Index, 2> m = detail::kernel_matrix(ConvAlgorithm::Im2colGemm, conv_.geometry);
    const Index size = e.packed.size(m[0], m[1]);
    return kept_experts_->get(kernels() * size, [&](T* out) {
      for (Index i = 0; i < kernels(); ++i)
        detail::pack_b(m[0], m[1], packed_.data() + i * m[0] * m[1], m[1], out + i * size);
    });
  }
  /// Bytes of one stored expert value.
  Index expert_bytes() const { return precision_ == ExpertPrecision::Float32 ? Index(sizeof(T)) : Index(2); }
  /// The K packed kernels as T (widened from BFloat16/Float16).
  std::vector<T> packed_experts() const {
    if (precision_ == ExpertPrecision::Float32) return packed_;
    std::vector<T> wide(static_cast<std::size_t>(kernels() * conv_.geometry.weight_size()));
    with_experts([&](const auto* experts) {
      for (std::size_t i = 0; i < wide.size(); ++i) wide[i] = detail::widen<T>(experts[i]);
    });
    return wide;
  }
  /// Stores the K packed kernels `packed` as `p` (the only writer of the experts): checks
  /// Float16's range first, so a refused value leaves the layer as it was.
  void store_experts(ExpertPrecision p, std::vector<T> packed) {
    if (p == ExpertPrecision::Float16) {
      constexpr double kHalfMax = 65504.0;
      const Index size = conv_.geometry.weight_size();
      for (std::size_t i = 0; i < packed.size(); ++i)
        if (!(std::abs(static_cast<double>(packed[i])) <= kHalfMax))
          fail<OptionsError>(layer_, ": expert precision float16: kernel ", static_cast<Index>(i) / size, " holds ",
                             packed[i], ", beyond float16's range (magnitudes up to 65504); keep float32 or use bfloat16");
    }
    std::vector<Eigen::bfloat16> bf16;
    std::vector<Eigen::half> f16;
    if (p == ExpertPrecision::BFloat16) {
      bf16.reserve(packed.size());
      for (const T v : packed) bf16.push_back(Eigen::bfloat16(static_cast<float>(v)));
    }
    if (p == ExpertPrecision::Float16) {
      f16.reserve(packed.size());
      for (const T v : packed) f16.push_back(Eigen::half(static_cast<float>(v)));
    }
    if (p != ExpertPrecision::Float32) packed = {};
    packed_ = std::move(packed);
    packed_bf16_ = std::move(bf16);
    packed_f16_ = std::move(f16);
    precision_ = p;
    kept_experts_ = std::make_shared<detail::Kept<T>>();  // the packed copy no longer holds
  }

  std::array<Index, 5> weight_shape() const {
    return {kernels(), conv_.geometry.out_channels, conv_.geometry.in_per_group(), conv_.geometry.kernel_h,
            conv_.geometry.kernel_w};
  }

  DynamicConv2dOptions options_;
  std::string layer_;
  detail::ResolvedConv conv_;
  std::optional<KernelAttention<T>> attention_;  // DY-Conv
  std::optional<CondConvRouting<T>> routing_;    // CondConv with its own routing
  std::optional<OmniAttention<T>> omni_;         // ODConv
  // The K kernels, each in the packed_index() layout of conv_.algorithm, stored in one of
  // three vectors by precision_ (the other two empty).
  std::vector<T> packed_;
  std::vector<Eigen::bfloat16> packed_bf16_;
  std::vector<Eigen::half> packed_f16_;
  ExpertPrecision precision_ = ExpertPrecision::Float32;
  std::shared_ptr<detail::Kept<T>> kept_experts_ = std::make_shared<detail::Kept<T>>();  // packed_gemm_experts()
  std::vector<T> bias_;    // [K, Cout] or empty
  std::vector<T> shift_;   // [Cout] left by a BatchNorm fold outside the experts, or empty
  bool bias_param_ = options_.bias();
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class DynamicConv2d<float>;
extern template class DynamicConv2d<double>;
#endif

}  // namespace dynconv
