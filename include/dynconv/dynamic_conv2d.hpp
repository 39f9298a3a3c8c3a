// dynconv: dynamic convolution (Chen et al., CVPR 2020; see paper.md).
//
// DynamicConv2d<T> holds K kernels W_k [Cout, Cin/groups, kh, kw] and, with a bias, K biases
// b_k [Cout]. For every sample n of the input it computes
//   pi_n   = KernelAttention(x_n)                 [K], sums to 1
//   W~_n   = sum_k pi_n[k] W_k,  b~_n = sum_k pi_n[k] b_k
//   y_n    = conv2d(x_n, W~_n, b~_n, stride, padding, dilation, groups)
// Input [N, Cin, H, W] -> output [N, Cout, Hout, Wout] (forward), or NHWC (forward_nhwc); the
// output size follows Conv2d's formula. Every sample gets its own kernel: the K kernels are
// mixed in one pass into a per-call buffer and one convolution (one GEMM per group) runs per
// sample. The batch is never folded into convolution groups, so memory does not grow with N.
//
// Weights are stored packed for the convolution algorithm (see detail/conv_kernels.hpp); the
// mix is elementwise, so it happens directly in the packed layout.
//
// Thread safety: forward*, convolve* and the aggregated_* accessors are const and may run
// concurrently on one object; setters and fold_batchnorm() may not run concurrently with anything.
#pragma once

#include <dynconv/attention.hpp>
#include <dynconv/batchnorm.hpp>
#include <dynconv/conv_options.hpp>

#define DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/conv_kernels.hpp>
#undef DYNCONV_DETAIL_ALLOWED

#include <string>
#include <vector>

namespace dynconv {

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
};

template <typename T>
class DynamicConv2d {
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
  }

  /// The options the layer was built with (set_bias and fold_batchnorm may add biases:
  /// has_bias() tells; the current temperature is attention().temperature()).
  const DynamicConv2dOptions& options() const { return options_; }
  const ConvGeometry& geometry() const { return conv_.geometry; }
  ConvAlgorithm algorithm() const { return conv_.algorithm; }
  /// "DynamicConv2d(32 -> 64, 3x3)", prefixed by the name if one was given.
  const std::string& description() const { return layer_; }
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
  /// Sets the K biases [K, Cout]; a layer built with bias(false) gains them.
  void set_bias(const Tensor2<T>& b) {
    detail::check_shape<T, 2>(layer_, "bias", b, {kernels(), conv_.geometry.out_channels});
    bias_.assign(b.data(), b.data() + b.size());
  }

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
  void fold_batchnorm(const BatchNorm2d<T>& bn) {
    if (bn.num_features() != conv_.geometry.out_channels)
      detail::fail<ShapeError>(layer_, ": cannot fold ", bn.description(),
                               ": num_features must equal out_channels=", conv_.geometry.out_channels);
    Tensor5<T> w = weight();
    Tensor2<T> b = bias();
    detail::fold_batchnorm(bn, kernels(), conv_.geometry.weight_size() / conv_.geometry.out_channels,
                           w.data(), b.data());
    set_weight(w);
    set_bias(b);
  }

  /// [N, Cin, H, W] -> [N, Cout, Hout, Wout]. If `attention` is given, it receives pi [N, K].
  Tensor4<T> forward(const Tensor4<T>& x, Tensor2<T>* attention = nullptr) const {
    detail::check_conv_input(layer_, conv_.geometry, x.dimensions(), 1);
    return nhwc_to_nchw(forward_nhwc(nchw_to_nhwc(x), attention));
  }
  /// [N, H, W, Cin] -> [N, Hout, Wout, Cout]. If `attention` is given, it receives pi [N, K].
  Tensor4<T> forward_nhwc(const Tensor4<T>& x, Tensor2<T>* attention = nullptr) const {
    detail::check_conv_input(layer_, conv_.geometry, x.dimensions(), 3);
    Tensor2<T> pi = attention_.forward_nhwc(x);
    Tensor4<T> y = convolve_nhwc(x, pi);
    if (attention) *attention = std::move(pi);
    return y;
  }

  /// The convolution with a given attention pi [N, K] instead of the layer's own (rows need
  /// not sum to 1: any per-sample mix of the K kernels). [N, Cin, H, W] -> [N, Cout, Hout, Wout].
  Tensor4<T> convolve(const Tensor4<T>& x, const Tensor2<T>& pi) const {
    detail::check_conv_input(layer_, conv_.geometry, x.dimensions(), 1);
    return nhwc_to_nchw(convolve_nhwc(nchw_to_nhwc(x), pi));
  }
  /// The same in NHWC: [N, H, W, Cin] -> [N, Hout, Wout, Cout].
  Tensor4<T> convolve_nhwc(const Tensor4<T>& x, const Tensor2<T>& pi) const {
    detail::check_conv_input(layer_, conv_.geometry, x.dimensions(), 3);
    detail::check_shape<T, 2>(layer_, "attention", pi, {x.dimension(0), kernels()});
    Tensor4<T> y(x.dimension(0), conv_.geometry.out_h(x.dimension(1)), conv_.geometry.out_w(x.dimension(2)),
                 conv_.geometry.out_channels);
    ThreadPool pool(1);
    detail::Workspace<T> ws(1);
    detail::Exec<T> ex{pool, ws};
    convolve_run(detail::view(x), pi.data(), detail::view(y), Activation::Identity, nullptr, ex);
    return y;
  }

  /// The network path (modules call it; forward_nhwc is the checked one): x [N, H, W, Cin] ->
  /// y [N, Hout, Wout, Cout] in caller-owned memory, y = act(conv(x, mixed kernel) + mixed
  /// bias) + residual (optional, laid out as y), split over ex's threads, no allocation in a
  /// steady state. The shapes are the caller's duty.
  /// `after` is applied last (a ResNet block's ReLU after its shortcut).
  void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, Activation act, const T* residual,
           detail::Exec<T>& ex, Activation after = Activation::Identity) const {
    typename detail::Workspace<T>::Lease pi = ex.ws.acquire(x.n * kernels());
    attention_.run(x, pi.data(), ex);
    convolve_run(x, pi.data(), y, act, residual, ex, after);
  }

  /// Parameters and multiply-adds (conv, attention with GAP, aggregation) of one sample of
  /// size in_h x in_w, as paper.md counts them.
  LayerCost cost(Index in_h, Index in_w) const {
    detail::check_fits(layer_, conv_.geometry, in_h, in_w, [&] { return detail::concat(in_h, 'x', in_w); });
    LayerCost c;
    const Index k = kernels(), cout = conv_.geometry.out_channels, size = conv_.geometry.weight_size();
    c.params = k * size + (has_bias() ? k * cout : 0) + attention_.params();
    c.conv_madds = conv_.geometry.out_h(in_h) * conv_.geometry.out_w(in_w) * size;
    c.attention_madds = attention_.madds(in_h, in_w);
    c.aggregation_madds = k * size + (has_bias() ? k * cout : 0);
    return c;
  }

 private:
  /// K kernels above this size no longer stay in the L3 cache from one sample to the next: a
  /// batch then mixes them in channel tiles, all samples of a tile at once.
  static constexpr Index kTileSourceBytes = Index(8) << 20;
  /// The mixed tiles of all samples of a batch, at most (they are consumed from L2/L3).
  static constexpr Index kMixedTileBytes = Index(4) << 20;
  /// Up to this many output pixels a channel tile mixes inside the GEMM's packing.
  static constexpr Index kFusedMaxPixels = 256;

  /// The convolution of every sample with its own mix pi [N, K] of the K kernels.
  ///  - Mid-size kernels: one task per sample mixes the whole kernel into the worker's buffer
  ///    and convolves (the K sources stay in cache from one sample to the next).
  ///  - A batch smaller than the pool, early layers (many rows): each kernel mixed once, then
  ///    the output rows split over the pool.
  ///  - Large kernels in a batch, or a batch smaller than the pool: tasks are channel tiles
  ///    and the tile's K sources are read from memory once for the whole batch. With few
  ///    pixels (late layers) the mix is fused into the GEMM: each cache block of the K sources
  ///    is packed once and mixed into the packed block every sample's micro-kernel reads (no
  ///    mixed kernel is written out). Otherwise a task mixes its tile for all samples at once,
  ///    then convolves each (tiles at least 48 channels wide, the GEMM's register block).
  ///    (Fusing at batch 1 measured slower: K packs per block cost more than one mix.)
  void convolve_run(const detail::Nhwc<const T>& x, const T* pi, const detail::Nhwc<T>& y, Activation act,
                    const T* residual, detail::Exec<T>& ex, Activation after = Activation::Identity) const {
    const ConvGeometry& g = conv_.geometry;
    const ConvAlgorithm algo = conv_.algorithm;
    const Index n = x.n, k = kernels(), cout = g.out_channels, size = g.weight_size();
    const std::array<Index, 2> m = detail::kernel_matrix(algo, g);
    const int threads = ex.threads();

    typename detail::Workspace<T>::Lease biases;
    if (has_bias()) {
      biases = ex.ws.acquire(n * cout);
      for (Index b = 0; b < n; ++b)
        detail::aggregate(bias_.data(), k, 1, cout, pi + b * k, 0, cout, biases.data() + b * cout);
    }
    auto epilogue = [&](Index b) {
      return detail::Epilogue<T>{has_bias() ? biases.data() + b * cout : nullptr, act,
                                 residual ? residual + b * y.sample_size() : nullptr, after};
    };

    // Channel tiles when the K kernels would not stay cached across a batch, or to split one
    // sample over the pool; with few pixels the mix happens inside the GEMM's packing.
    const bool sliceable = detail::channel_sliceable(algo, g);
    const Index source_bytes = k * size * static_cast<Index>(sizeof(T));
    const bool big_batch = n > 1 && source_bytes > kTileSourceBytes;
    const bool fused = n > 1 && algo != ConvAlgorithm::Depthwise && y.pixels() <= kFusedMaxPixels;
    Index tiles = 0;  // 0: one task per sample
    const bool split = ex.sample_parts(n, y.pixels() * size) > 1;
    if (split && !big_batch && y.h >= 8 * threads) {
      // A batch smaller than the pool, many rows (early layers): mix each kernel once, split
      // over the pool, then split the rows as the static convolution does (channel tiles would
      // make GEMMs narrower than the micro-kernel there).
      typename detail::Workspace<T>::Lease mixed = ex.ws.acquire(n * size);
      ex.pool.parallel_for(n * threads, [&](std::int64_t task, int) {
        const Index b = task / threads;
        const std::array<Index, 2> r = detail::split_range(size, threads, task % threads);
        detail::mix(packed_.data() + r[0], size, k, pi + b * k, 1, r[1] - r[0], 0, mixed.data() + b * size + r[0], 0);
      });
      ex.pool.parallel_for(n * threads, [&](std::int64_t task, int worker) {
        const Index b = task / threads;
        const std::array<Index, 2> r = detail::split_range(y.h, threads, task % threads);
        detail::conv_slice(algo, g, x.sample(b), x.h, x.w, mixed.data() + b * size, m[1],
                           detail::Slice{r[0], r[1], 0, cout}, epilogue(b), y.sample(b),
                           static_cast<const T*>(nullptr), ex.ws, worker);
      });
      return;
    }
    if (sliceable && (big_batch || split)) {
      tiles = 1;
      if (big_batch && !fused) {
        const Index width = std::max<Index>(48, kMixedTileBytes / (n * m[0] * static_cast<Index>(sizeof(T))));
        tiles = (cout + width - 1) / width;
      }
      tiles = std::min<Index>(std::max<Index>(tiles, threads), (cout + 15) / 16);
      if (tiles % threads) tiles += threads - tiles % threads;
    }

    if (tiles == 0) {
      ex.pool.parallel_for(n, [&](std::int64_t b, int worker) {
        T* kernel = ex.ws.scratch(worker, detail::Scratch::Kernel, size);
        detail::aggregate(packed_.data(), k, m[0], m[1], pi + b * k, 0, m[1], kernel);
        detail::conv_slice(algo, g, x.sample(b), x.h, x.w, kernel, m[1], detail::Slice{0, y.h, 0, cout},
                           epilogue(b), y.sample(b), static_cast<const T*>(nullptr), ex.ws, worker);
      });
      return;
    }

    // Channel tiles: every tile needs each sample's whole im2col matrix, built once here.
    typename detail::Workspace<T>::Lease columns;
    const Index col_size = y.pixels() * m[0];
    const bool shared_columns = detail::needs_columns(algo, g);
    if (shared_columns) {
      columns = ex.ws.acquire(n * col_size);
      const Index parts = split ? threads : 1;  // rows of one sample split over the pool
      ex.pool.parallel_for(n * parts, [&](std::int64_t task, int) {
        const Index b = task / parts;
        const std::array<Index, 2> r = detail::split_range(y.h, parts, task % parts);
        detail::im2col(g, x.sample(b), x.h, x.w, r[0], r[1], 0, columns.data() + b * col_size + r[0] * y.w * m[0]);
      });
    }
    ex.pool.parallel_for(tiles, [&](std::int64_t t, int worker) {
      const std::array<Index, 2> c = detail::channel_part(cout, tiles, t);
      if (c[0] >= c[1]) return;
      const Index width = c[1] - c[0];
      if (fused) {
        // Few pixels: the mix fused into the GEMM's packing, all samples of the tile at once.
        for (Index b = 0; b < n; ++b)
          detail::epilogue_begin(epilogue(b), y.pixels(), cout, c[0], c[1], 0, y.sample(b));
        const T* a = shared_columns ? columns.data() : x.data;
        const Index a_stride = shared_columns ? col_size : x.sample_size();
        detail::mixed_gemm_batch(packed_.data(), k, m[0], m[1], pi, n, c[0], c[1], a, a_stride, y.pixels(), y.data,
                                 y.sample_size(), cout, ex.ws, worker);
        for (Index b = 0; b < n; ++b)
          detail::epilogue_end(epilogue(b), y.pixels(), cout, c[0], c[1], 0, y.sample(b));
        return;
      }
      T* kernels = ex.ws.scratch(worker, detail::Scratch::Kernel, n * m[0] * width);
      detail::aggregate_batch(packed_.data(), k, m[0], m[1], pi, n, c[0], width, kernels);
      for (Index b = 0; b < n; ++b) {
        detail::conv_slice(algo, g, x.sample(b), x.h, x.w, kernels + b * m[0] * width, width,
                           detail::Slice{0, y.h, c[0], c[1]},
                           epilogue(b), y.sample(b), shared_columns ? columns.data() + b * col_size : nullptr,
                           ex.ws, worker);
      }
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
};

}  // namespace dynconv
