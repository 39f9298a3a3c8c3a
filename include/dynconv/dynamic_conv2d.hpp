// dynconv: dynamic convolution (Chen et al., CVPR 2020; see paper.md).
//
// DynamicConv2d<T> holds K kernels W_k [Cout, Cin/groups, kh, kw] and, with a bias, K biases
// b_k [Cout]. For every sample n of the input it computes
//   pi_n   = KernelAttention(x_n)                 [K], sums to 1
//   W~_n   = sum_k pi_n[k] W_k,  b~_n = sum_k pi_n[k] b_k
//   y_n    = conv2d(x_n, W~_n, b~_n, stride, padding, dilation, groups)
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
//                 of the K sources is packed once per batch and mixed into the packed block
//                 every sample's micro-kernel reads (few pixels: late layers)
//
// Thread safety: forward*, convolve* and the aggregated_* accessors are const and may run
// concurrently on one object; setters and fold_batchnorm() may not run concurrently with anything.
#pragma once

#include <dynconv/attention.hpp>
#include <dynconv/batchnorm.hpp>
#include <dynconv/conv_options.hpp>
#include <dynconv/module.hpp>

#define DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/conv_slice.hpp>
#include <dynconv/detail/gemm.hpp>
#include <dynconv/detail/mix.hpp>
#undef DYNCONV_DETAIL_ALLOWED

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

/// Whether strategy `m` can compute a convolution of geometry `g` run by algorithm `algo`:
/// channel tiles need groups == 1 or a depthwise convolution, the fused packing a GEMM.
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
};

/// K kernels above this size no longer stay in the L3 cache from one sample to the next: a
/// batch then mixes them in channel tiles, all samples of a tile at once.
constexpr Index kMixTileSourceBytes = Index(8) << 20;
/// Up to this many output pixels a channel tile mixes inside the GEMM's packing.
constexpr Index kMixFusedMaxPixels = 256;

/// The one predicate that picks the mixing strategy (measured on this project's machines;
/// fusing at batch 1 measured slower: K packs per block cost more than one mix):
///  - a batch smaller than the pool with many output rows: RowSplit;
///  - large kernels in a batch, or a batch smaller than the pool: channel tiles, FusedPacking
///    when the batch has few pixels per sample, else ChannelTiles;
///  - otherwise PerSample.
inline MixStrategy select_mix_strategy(const MixProblem& p) {
  const ConvGeometry& g = p.geometry;
  const Index pixels = p.out_h * p.out_w;
  const bool split = p.batch < p.threads && pixels * g.weight_size() >= p.min_parallel_madds;
  const bool big_batch = p.batch > 1 && p.kernels * g.weight_size() * p.scalar_bytes > kMixTileSourceBytes;
  if (split && !big_batch && p.out_h >= 8 * p.threads) return MixStrategy::RowSplit;
  if (mix_strategy_supports(MixStrategy::ChannelTiles, p.algorithm, g) && (big_batch || split)) {
    const bool fused = p.batch > 1 && mix_strategy_supports(MixStrategy::FusedPacking, p.algorithm, g) &&
                       pixels <= kMixFusedMaxPixels;
    return fused ? MixStrategy::FusedPacking : MixStrategy::ChannelTiles;
  }
  return MixStrategy::PerSample;
}

/// The plan of one dynamic convolution for one input shape and thread count.
struct DynamicConvPlan {
  ConvAlgorithm algorithm = ConvAlgorithm::Auto;
  MixStrategy mix = MixStrategy::Auto;
  /// RowSplit: the parts each sample's rows (and its kernel mix) split into.
  Index row_parts = 1;
  /// ChannelTiles / FusedPacking: the output-channel tiles (tasks), and whether each sample's
  /// im2col is built once before them (split into column_parts row ranges).
  Index tiles = 0;
  bool shared_columns = false;
  Index column_parts = 1;
  /// Values taken from the workspace's pool by the strategy (besides the attention's):
  /// the mixed biases, RowSplit's mixed kernels, the shared im2col columns.
  Index bias_values = 0, mixed_kernel_values = 0, column_values = 0;
  /// Values of per-worker kernel scratch (PerSample: one kernel; ChannelTiles: a tile for all
  /// samples). The GEMM's packing buffers are sized by the GEMM kernel.
  Index kernel_scratch_values = 0;
};

class DynamicConv2dOptions : public ConvOptionsBase<DynamicConv2dOptions> {
 public:
  DynamicConv2dOptions(Index in_channels, Index out_channels, Index kernel_size)
      : DynamicConv2dOptions(in_channels, out_channels, Pair{kernel_size, kernel_size}) {}
  DynamicConv2dOptions(Index in_channels, Index out_channels, Pair kernel_size)
      : ConvOptionsBase(in_channels, out_channels, kernel_size),
        attention_(in_channels, /*kernels=*/4) {}

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
    a.name((name().empty() ? detail::describe_conv("DynamicConv2d", *this) : name()) +
           ".attention");
    return a;
  }

 private:
  KernelAttentionOptions attention_;
  MixStrategy mix_ = MixStrategy::Auto;
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
        layer_(detail::describe_conv("DynamicConv2d", options)),
        conv_(detail::validate_conv(layer_, options)),
        attention_(validated_attention_options()) {
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
  /// "DynamicConv2d(32 -> 64, 3x3)", prefixed by the name if one was given.
  std::string description() const override { return layer_; }
  Index kernels() const { return options_.kernels(); }

  KernelAttention<T>& attention() { return attention_; }
  const KernelAttention<T>& attention() const { return attention_; }

  /// [K, Cout, Cin/groups, kh, kw]
  Tensor5<T> weight() const {
    Tensor5<T> w(weight_shape());
    const Index size = conv_.geometry.weight_size();
    for (Index k = 0; k < kernels(); ++k)
      detail::unpack_weights(conv_.algorithm, conv_.geometry, packed_.data() + k * size, w.data() + k * size);
    return w;
  }
  void set_weight(const Tensor5<T>& w) {
    detail::check_shape<T, 5>(layer_, "weight", w, weight_shape());
    const Index size = conv_.geometry.weight_size();
    for (Index k = 0; k < kernels(); ++k)
      detail::pack_weights(conv_.algorithm, conv_.geometry, w.data() + k * size, packed_.data() + k * size);
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
  void set_bias(const Tensor2<T>& b) {
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
    detail::aggregate(packed_.data(), kernels(), m[0], m[1], pi.data(), 0, m[1], mixed.data());
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

  /// Folds an inference BatchNorm2d that follows this layer into all K kernels and biases,
  /// exactly (because every attention row sums to 1): W_k' = s W_k, b_k' = s b_k + shift.
  /// In a layer without a bias parameter the folded bias is not a parameter (save() does not
  /// write it): keep the BatchNorm to hold it, as Graph::fold_batchnorms does.
  void fold_batchnorm(const BatchNorm2d<T>& bn) {
    if (bn.num_features() != conv_.geometry.out_channels)
      fail<ShapeError>(layer_, ": cannot fold ", bn.description(),
                               ": num_features must equal out_channels=", conv_.geometry.out_channels);
    Tensor5<T> w = weight();
    Tensor2<T> b = bias();
    detail::fold_batchnorm(bn, kernels(), conv_.geometry.weight_size() / conv_.geometry.out_channels,
                           w.data(), b.data());
    set_weight(w);
    set_bias_values(b);
  }

  /// [N, Cin, H, W] -> [N, Cout, Hout, Wout]. If `attention` is given, it receives pi [N, K].
  Tensor4<T> forward(const Tensor4<T>& x, Tensor2<T>* attention = nullptr) const {
    return nhwc_to_nchw(forward(nchw_to_nhwc(x), attention));
  }
  /// The same in NHWC. If `attention` is given, it receives pi [N, K].
  NhwcTensor<T> forward(const NhwcTensor<T>& x, Tensor2<T>* attention = nullptr) const {
    detail::check_conv_input(layer_, conv_.geometry, x.shape());
    Tensor2<T> pi = attention_.forward(x);
    NhwcTensor<T> y = convolve(x, pi);
    if (attention) *attention = std::move(pi);
    return y;
  }

  /// The convolution with a given attention pi [N, K] instead of the layer's own (rows need
  /// not sum to 1: any per-sample mix of the K kernels). [N, Cin, H, W] -> [N, Cout, Hout, Wout].
  Tensor4<T> convolve(const Tensor4<T>& x, const Tensor2<T>& pi) const {
    return nhwc_to_nchw(convolve(nchw_to_nhwc(x), pi));
  }
  /// The same in NHWC.
  NhwcTensor<T> convolve(const NhwcTensor<T>& x, const Tensor2<T>& pi) const {
    const NhwcShape s = x.shape();
    NhwcTensor<T> y(output_shape({s}));
    detail::check_shape<T, 2>(layer_, "attention", pi, {s.n, kernels()});
    Context<T> ctx(1);
    convolve_run(x.view(), pi.data(), y.view(), ctx, PostOps<T>{});
    return y;
  }

  /// [N, H, W, Cin] -> [N, Hout, Wout, Cout]; ShapeError if the input does not fit.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    detail::check_conv_input(layer_, conv_.geometry, in[0]);
    return {in[0].n, conv_.geometry.out_h(in[0].h), conv_.geometry.out_w(in[0].w), conv_.geometry.out_channels};
  }
  bool fuses_post_ops() const override { return true; }

  /// y = post(conv(x, mixed kernel) + mixed bias): the attention, then the plan's strategy,
  /// split over ctx's threads, no allocation in a steady state.
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    typename Workspace<T>::Lease pi = ctx.workspace().acquire(x.n * kernels());
    attention_.run(x, pi.data(), ctx);
    convolve_run(x, pi.data(), y, ctx, post);
  }

  /// The plan for an NHWC input of shape `in` on `threads` threads: the forced or selected
  /// mixing strategy, the split and the buffers (min_parallel_madds as Context's).
  DynamicConvPlan plan(const NhwcShape& in, int threads, Index min_parallel_madds = Index(1) << 18) const {
    const ConvGeometry& g = conv_.geometry;
    const Index oh = g.out_h(in.h), ow = g.out_w(in.w), n = in.n, cout = g.out_channels, size = g.weight_size();
    const std::array<Index, 2> m = detail::kernel_matrix(conv_.algorithm, g);
    DynamicConvPlan p;
    p.algorithm = conv_.algorithm;
    p.mix = options_.mix_strategy() != MixStrategy::Auto
                ? options_.mix_strategy()
                : select_mix_strategy({g, conv_.algorithm, kernels(), n, oh, ow, threads, min_parallel_madds,
                                       static_cast<Index>(sizeof(T))});
    p.bias_values = has_bias() ? n * cout : 0;
    const bool split = n < threads && oh * ow * size >= min_parallel_madds;
    switch (p.mix) {
      case MixStrategy::Auto:
      case MixStrategy::PerSample: p.kernel_scratch_values = size; break;
      case MixStrategy::RowSplit:
        p.row_parts = threads;
        p.mixed_kernel_values = n * size;
        break;
      case MixStrategy::ChannelTiles:
      case MixStrategy::FusedPacking: {
        const bool big_batch = n > 1 && kernels() * size * static_cast<Index>(sizeof(T)) > kMixTileSourceBytes;
        Index tiles = 1;
        if (big_batch && p.mix == MixStrategy::ChannelTiles) {
          const Index width = std::max<Index>(48, kMixedTileBytes / (n * m[0] * static_cast<Index>(sizeof(T))));
          tiles = (cout + width - 1) / width;
        }
        tiles = std::min<Index>(std::max<Index>(tiles, threads), (cout + 15) / 16);
        if (tiles % threads) tiles += threads - tiles % threads;
        p.tiles = tiles;
        p.shared_columns = detail::needs_columns(conv_.algorithm, g);
        p.column_parts = split ? threads : 1;
        p.column_values = p.shared_columns ? n * oh * ow * m[0] : 0;
        Index widest = 0;
        for (Index t = 0; t < tiles; ++t) {
          const std::array<Index, 2> c = detail::channel_part(cout, tiles, t);
          widest = std::max(widest, c[1] - c[0]);
        }
        p.kernel_scratch_values = p.mix == MixStrategy::ChannelTiles ? n * m[0] * widest : 0;
        break;
      }
    }
    return p;
  }

  /// The plan run() follows on `ctx`.
  DynamicConvPlan plan(const NhwcShape& in, const Context<T>& ctx) const {
    return plan(in, ctx.threads(), ctx.min_parallel_madds());
  }

  /// "weight" [K, Cout, Cin/groups, kh, kw], "bias" [K, Cout] when the biases are a parameter,
  /// and the attention's "attention.fc1.weight" [hidden, Cin], "attention.fc1.bias" [hidden],
  /// "attention.fc2.weight" [K, hidden], "attention.fc2.bias" [K], "attention.temperature" [].
  std::vector<ParameterInfo> parameters() const override {
    const std::array<Index, 5> w = weight_shape();
    std::vector<ParameterInfo> p{{"weight", {w[0], w[1], w[2], w[3], w[4]}}};
    if (bias_param_) p.push_back({"bias", {w[0], w[1]}});
    const Index hidden = attention_.hidden(), cin = conv_.geometry.in_channels;
    p.push_back({"attention.fc1.weight", {hidden, cin}});
    p.push_back({"attention.fc1.bias", {hidden}});
    p.push_back({"attention.fc2.weight", {w[0], hidden}});
    p.push_back({"attention.fc2.bias", {w[0]}});
    p.push_back({"attention.temperature", {}});
    return p;
  }
  std::vector<T> parameter(const std::string& name) const override {
    auto flat = [](const auto& t) { return std::vector<T>(t.data(), t.data() + t.size()); };
    if (name == "weight") return flat(weight());
    if (name == "bias" && bias_param_) return bias_;
    if (name == "attention.fc1.weight") return flat(attention_.fc1().weight());
    if (name == "attention.fc1.bias") return flat(attention_.fc1().bias());
    if (name == "attention.fc2.weight") return flat(attention_.fc2().weight());
    if (name == "attention.fc2.bias") return flat(attention_.fc2().bias());
    if (name == "attention.temperature") return {attention_.temperature()};
    this->unknown_parameter(name);
  }
  void set_parameter(const std::string& name, const std::vector<T>& v) override {
    const std::array<Index, 5> w = weight_shape();
    const Index hidden = attention_.hidden(), cin = conv_.geometry.in_channels, k = w[0];
    auto as2 = [&](Index a, Index b) {
      this->check_count(name, v, {a, b});
      return Tensor2<T>(Eigen::TensorMap<const Tensor2<T>>(v.data(), a, b));
    };
    auto as1 = [&](Index a) {
      this->check_count(name, v, {a});
      return Tensor1<T>(Eigen::TensorMap<const Tensor1<T>>(v.data(), a));
    };
    if (name == "weight") {
      this->check_count(name, v, {w[0], w[1], w[2], w[3], w[4]});
      set_weight(Eigen::TensorMap<const Tensor5<T>>(v.data(), w));
    } else if (name == "bias" && bias_param_) {
      set_bias_values(as2(k, w[1]));
    } else if (name == "attention.fc1.weight") {
      attention_.fc1().set_weight(as2(hidden, cin));
    } else if (name == "attention.fc1.bias") {
      attention_.fc1().set_bias(as1(hidden));
    } else if (name == "attention.fc2.weight") {
      attention_.fc2().set_weight(as2(k, hidden));
    } else if (name == "attention.fc2.bias") {
      attention_.fc2().set_bias(as1(k));
    } else if (name == "attention.temperature") {
      this->check_count(name, v, {});
      attention_.set_temperature(static_cast<double>(v[0]));
    } else {
      this->unknown_parameter(name);
    }
  }
  /// Loads every parameter; "attention.temperature" is optional (tau = 1 where the file has
  /// none). A bias left by an earlier BatchNorm fold is dropped first. With LoadMode::Upcycle
  /// and no attention in the file (a static checkpoint), the static kernel [Cout, Cin/g, kh,
  /// kw] (and bias) becomes all K kernels (and biases) and the attention keeps its values.
  void load(WeightLoader& w, const std::string& prefix) override {
    if (!bias_param_) bias_.clear();
    const std::array<Index, 5> ws = weight_shape();
    const Index k = ws[0];
    if (w.mode() == LoadMode::Upcycle && !w.contains(this->join(prefix, "attention.fc1.weight"))) {
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
      if (p.name == "attention.temperature")
        attention_.set_temperature(w.take_scalar_or(name, 1.0));
      else
        set_parameter(p.name, w.take_flat<T>(name, p.shape));
    }
  }

  /// Parameters and multiply-adds (conv, attention with GAP, aggregation) of one sample of
  /// this input shape, as paper.md counts them.
  LayerCost cost(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    return cost(in[0].h, in[0].w);
  }
  /// The same for an in_h x in_w input.
  LayerCost cost(Index in_h, Index in_w) const {
    detail::check_fits(layer_, conv_.geometry, in_h, in_w, [&] { return concat(in_h, 'x', in_w); });
    LayerCost c;
    const Index k = kernels(), cout = conv_.geometry.out_channels, size = conv_.geometry.weight_size();
    c.params = k * size + (bias_param_ ? k * cout : 0) + attention_.params();
    c.conv_madds = conv_.geometry.out_h(in_h) * conv_.geometry.out_w(in_w) * size;
    c.attention_madds = attention_.madds(in_h, in_w);
    c.aggregation_madds = k * size + (bias_param_ ? k * cout : 0);
    return c;
  }

 private:
  /// The mixed tiles of all samples of a batch, at most (they are consumed from L2/L3).
  static constexpr Index kMixedTileBytes = Index(4) << 20;

  void set_bias_values(const Tensor2<T>& b) {
    detail::check_shape<T, 2>(layer_, "bias", b, {kernels(), conv_.geometry.out_channels});
    bias_.assign(b.data(), b.data() + b.size());
  }

  /// What every strategy shares: the per-sample mixed biases and the epilogue of sample b.
  struct Batch {
    const NhwcView<const T>& x;
    const T* pi;
    const NhwcView<T>& y;
    const PostOps<T>& post;
    const T* biases;  // [n, Cout] or null
    detail::Epilogue<T> epilogue(Index b, Index cout) const {
      return {biases ? biases + b * cout : nullptr, post.act, post.residual ? post.residual + b * y.sample_size() : nullptr,
              post.after};
    }
  };

  /// The convolution of every sample with its own mix pi [N, K] of the K kernels, by the plan.
  void convolve_run(const NhwcView<const T>& x, const T* pi, const NhwcView<T>& y, Context<T>& ctx,
                    const PostOps<T>& post) const {
    const DynamicConvPlan p = plan(x.shape(), ctx.threads(), ctx.min_parallel_madds());
    const Index n = x.n, k = kernels(), cout = conv_.geometry.out_channels;
    typename Workspace<T>::Lease biases;
    if (p.bias_values) {
      biases = ctx.workspace().acquire(p.bias_values);
      for (Index b = 0; b < n; ++b)
        detail::aggregate(bias_.data(), k, 1, cout, pi + b * k, 0, cout, biases.data() + b * cout);
    }
    const Batch batch{x, pi, y, post, p.bias_values ? biases.data() : nullptr};
    switch (p.mix) {
      case MixStrategy::Auto:
      case MixStrategy::PerSample: return mix_per_sample(batch, ctx);
      case MixStrategy::RowSplit: return mix_row_split(batch, p, ctx);
      case MixStrategy::ChannelTiles:
      case MixStrategy::FusedPacking: return mix_channel_tiles(batch, p, ctx);
    }
  }

  /// PerSample: one task per sample mixes the whole kernel, then convolves it.
  void mix_per_sample(const Batch& bt, Context<T>& ctx) const {
    const ConvGeometry& g = conv_.geometry;
    const std::array<Index, 2> m = detail::kernel_matrix(conv_.algorithm, g);
    const Index size = g.weight_size(), k = kernels();
    ctx.pool().parallel_for(bt.x.n, [&](std::int64_t b, int worker) {
      T* kernel = ctx.workspace().scratch(worker, Scratch::Kernel, size);
      detail::aggregate(packed_.data(), k, m[0], m[1], bt.pi + b * k, 0, m[1], kernel);
      detail::conv_slice(conv_.algorithm, g, bt.x.sample(b), bt.x.h, bt.x.w, kernel, m[1],
                         detail::Slice{0, bt.y.h, 0, g.out_channels}, bt.epilogue(b, g.out_channels), bt.y.sample(b),
                         static_cast<const T*>(nullptr), ctx.workspace(), worker);
    });
  }

  /// RowSplit: each sample's kernel mixed once (split over the pool), then its output rows
  /// split over the pool as the static convolution does.
  void mix_row_split(const Batch& bt, const DynamicConvPlan& p, Context<T>& ctx) const {
    const ConvGeometry& g = conv_.geometry;
    const std::array<Index, 2> m = detail::kernel_matrix(conv_.algorithm, g);
    const Index size = g.weight_size(), k = kernels(), parts = p.row_parts;
    typename Workspace<T>::Lease mixed = ctx.workspace().acquire(p.mixed_kernel_values);
    ctx.pool().parallel_for(bt.x.n * parts, [&](std::int64_t task, int) {
      const Index b = task / parts;
      const std::array<Index, 2> r = split_range(size, parts, task % parts);
      detail::mix(packed_.data() + r[0], size, k, bt.pi + b * k, 1, r[1] - r[0], 0, mixed.data() + b * size + r[0], 0);
    });
    ctx.pool().parallel_for(bt.x.n * parts, [&](std::int64_t task, int worker) {
      const Index b = task / parts;
      const std::array<Index, 2> r = split_range(bt.y.h, parts, task % parts);
      detail::conv_slice(conv_.algorithm, g, bt.x.sample(b), bt.x.h, bt.x.w, mixed.data() + b * size, m[1],
                         detail::Slice{r[0], r[1], 0, g.out_channels}, bt.epilogue(b, g.out_channels), bt.y.sample(b),
                         static_cast<const T*>(nullptr), ctx.workspace(), worker);
    });
  }

  /// ChannelTiles / FusedPacking: tasks are output-channel tiles; every tile needs each
  /// sample's whole im2col matrix, built once first. FusedPacking mixes inside the GEMM's
  /// packing; ChannelTiles mixes the tile for all samples, then convolves each.
  void mix_channel_tiles(const Batch& bt, const DynamicConvPlan& p, Context<T>& ctx) const {
    const ConvGeometry& g = conv_.geometry;
    const ConvAlgorithm algo = conv_.algorithm;
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
    const bool fused = p.mix == MixStrategy::FusedPacking;
    ctx.pool().parallel_for(p.tiles, [&](std::int64_t t, int worker) {
      const std::array<Index, 2> c = detail::channel_part(cout, p.tiles, t);
      if (c[0] >= c[1]) return;
      const Index width = c[1] - c[0];
      if (fused) {
        for (Index b = 0; b < n; ++b) detail::epilogue_begin(bt.epilogue(b, cout), pixels, cout, c[0], c[1], 0, bt.y.sample(b));
        const T* a = p.shared_columns ? columns.data() : bt.x.data;
        const Index a_stride = p.shared_columns ? col_size : bt.x.sample_size();
        detail::mixed_gemm_batch(packed_.data(), k, m[0], m[1], bt.pi, n, c[0], c[1], a, a_stride, pixels, bt.y.data,
                                 bt.y.sample_size(), cout, ctx.workspace(), worker);
        for (Index b = 0; b < n; ++b) detail::epilogue_end(bt.epilogue(b, cout), pixels, cout, c[0], c[1], 0, bt.y.sample(b));
        return;
      }
      T* tile = ctx.workspace().scratch(worker, Scratch::Kernel, n * m[0] * width);
      detail::aggregate_batch(packed_.data(), k, m[0], m[1], bt.pi, n, c[0], width, tile);
      for (Index b = 0; b < n; ++b)
        detail::conv_slice(algo, g, bt.x.sample(b), bt.x.h, bt.x.w, tile + b * m[0] * width, width,
                           detail::Slice{0, bt.y.h, c[0], c[1]}, bt.epilogue(b, cout), bt.y.sample(b),
                           p.shared_columns ? columns.data() + b * col_size : nullptr, ctx.workspace(), worker);
    });
  }

  KernelAttentionOptions validated_attention_options() const {
    // Attention option errors are reported under this layer's description.
    detail::validate_attention<T>(layer_, options_.attention_options());
    return options_.attention_options();
  }

  std::array<Index, 5> weight_shape() const {
    return {kernels(), conv_.geometry.out_channels, conv_.geometry.in_per_group(), conv_.geometry.kernel_h,
            conv_.geometry.kernel_w};
  }

  DynamicConv2dOptions options_;
  std::string layer_;
  detail::ResolvedConv conv_;
  KernelAttention<T> attention_;
  std::vector<T> packed_;  // K kernels, each in the packed_index() layout of conv_.algorithm
  std::vector<T> bias_;    // [K, Cout] or empty
  bool bias_param_ = options_.bias();
};

}  // namespace dynconv
