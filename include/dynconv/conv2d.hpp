// dynconv: static 2-d convolution.
//
// Conv2d<T> computes PyTorch's conv2d:
//   y[n, co, oh, ow] = bias[co] + sum_{ci in group(co), i, j}
//                      weight[co, ci, i, j] * x[n, g*Cin/g + ci, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
// Input [N, Cin, H, W] -> output [N, Cout, Hout, Wout] (forward of a Tensor4), or the same in
// NHWC (forward of an NhwcTensor), with Hout = (H + ph0 + ph1 - dh*(kh - 1) - 1) / sh + 1
// (padding per side: top, bottom, left, right), likewise Wout.
// Weights are [Cout, Cin/groups, kh, kw] (PyTorch's order), bias [Cout].
//
// Layout note (why activations travel in NHWC between layers). Measured on this project's
// machine (benchmarks/bench_layout.cpp, float, 1 thread, batch 1):
//   depthwise 3x3, MobileNet shapes   NCHW 4.2-10.8 GFLOP/s   NHWC 33-47 GFLOP/s  (x3.0-x10)
//     (C=144 56x56: 754 vs 250 us; C=576 14x14 stride 2: 120 vs 12 us; C=960 7x7: 186 vs 18 us)
//   1x1, 24->144 56x56 .. 160->960 7x7 NCHW 145-167 GFLOP/s    NHWC 143-178 GFLOP/s  (same GEMM)
// In NHWC a depthwise tap is one contiguous multiply-add across all channels (vectorises
// fully, whatever the image width), and a 1x1 convolution is one GEMM [H*W, Cin] x [Cin, Cout]
// with no reshaping; im2col copies whole channel runs. In NCHW the depthwise loop vectorises
// along rows that are only 7 or 14 wide in late MobileNet stages and needs per-row edge
// handling. So forward() converts NCHW at the door, and networks keep NHWC from layer to layer
// (NhwcTensor, NhwcView); weights stay in PyTorch order in the API and are packed once.
//
// Thread safety: forward() and run() are const and may run concurrently on one object; the
// setters, load() and fold_batchnorm() may not run concurrently with anything. (The first pass
// packs the kernel for the GEMM, or transforms it for Winograd, under a lock, and keeps it until
// the weights change: with dynconv's x86 kernels a GEMM layer holds its weights twice, and a
// 3x3 layer run both one image at a time and in batches of small images also its transform.)
#pragma once

#include <dynconv/batchnorm.hpp>
#include <dynconv/conv_options.hpp>
#include <dynconv/module.hpp>
#include <dynconv/tensor.hpp>

#define DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/conv_slice.hpp>
#include <dynconv/detail/matrix.hpp>
#undef DYNCONV_DETAIL_ALLOWED

#include <cmath>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace dynconv {

class Conv2dOptions : public ConvOptionsBase<Conv2dOptions> {
 public:
  Conv2dOptions(Index in_channels, Index out_channels, Index kernel_size)
      : ConvOptionsBase(in_channels, out_channels, Pair{kernel_size, kernel_size}) {}
  Conv2dOptions(Index in_channels, Index out_channels, Pair kernel_size)
      : ConvOptionsBase(in_channels, out_channels, kernel_size) {}
};

template <typename T>
class Conv2d final : public Module<T> {
  static_assert(std::is_floating_point<T>::value,
                "dynconv::Conv2d<T>: T must be a floating-point type (float or double)");

 public:
  /// Validates the options (OptionsError) and initialises weight and bias uniformly in
  /// +-1/sqrt(Cin/groups*kh*kw) from a fixed seed, as PyTorch's default range.
  explicit Conv2d(const Conv2dOptions& options)
      : options_(options),
        layer_(detail::describe_conv("Conv2d", options)),
        conv_(detail::validate_conv(layer_, options)) {
    const Index fan_in = conv_.geometry.in_per_group() * conv_.geometry.kernel_h * conv_.geometry.kernel_w;
    const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
    packed_.resize(static_cast<std::size_t>(conv_.geometry.weight_size()));
    detail::init_uniform(packed_.data(), conv_.geometry.weight_size(), bound, 1);
    if (options.bias()) {
      bias_.resize(static_cast<std::size_t>(conv_.geometry.out_channels));
      detail::init_uniform(bias_.data(), conv_.geometry.out_channels, bound, 2);
    }
  }

  /// The options the layer was built with (set_bias and fold_batchnorm may add a bias:
  /// has_bias() tells).
  const Conv2dOptions& options() const { return options_; }
  const ConvGeometry& geometry() const { return conv_.geometry; }
  /// The algorithm in use (the forced one, or the one select_conv_algorithm() picked).
  ConvAlgorithm algorithm() const { return conv_.algorithm; }
  /// "Conv2d(32 -> 64, 3x3)", prefixed by the name if one was given.
  std::string description() const override { return layer_; }

  /// [Cout, Cin/groups, kh, kw]
  Tensor4<T> weight() const {
    Tensor4<T> w(weight_shape());
    detail::unpack_weights(conv_.algorithm, conv_.geometry, packed_.data(), w.data());
    return w;
  }
  void set_weight(const Tensor4<T>& w) {
    detail::check_shape<T, 4>(layer_, "weight", w, weight_shape());
    detail::pack_weights(conv_.algorithm, conv_.geometry, w.data(), packed_.data());
    kept_ = std::make_shared<KeptKernels>();  // the kept kernels no longer hold
  }
  bool has_bias() const { return !bias_.empty(); }
  /// [Cout]; zeros when the layer has no bias.
  Tensor1<T> bias() const {
    Tensor1<T> b(conv_.geometry.out_channels);
    for (Index c = 0; c < b.size(); ++c) b(c) = has_bias() ? bias_[c] : T(0);
    return b;
  }
  /// Sets the bias [Cout]; a layer built with bias(false) gains one (a parameter from then on).
  void set_bias(const Tensor1<T>& b) {
    detail::check_shape<T, 1>(layer_, "bias", b, {conv_.geometry.out_channels});
    bias_.assign(b.data(), b.data() + b.size());
    bias_param_ = true;
  }
  /// Whether the bias is a parameter (built with bias(true), or set_bias called); a BatchNorm
  /// folded into a layer without one gives it a bias that is not a parameter.
  bool bias_is_parameter() const { return bias_param_; }

  /// Folds an inference BatchNorm2d that follows this layer into weight and bias, exactly:
  /// W' = s W, b' = s b + shift (s = bn.scale(), shift = bn.shift()). In a layer without a
  /// bias parameter the folded bias is not a parameter (save() does not write it): keep the
  /// BatchNorm to hold it, as Graph::fold_batchnorms does.
  void fold_batchnorm(const BatchNorm2d<T>& bn) {
    if (bn.num_features() != conv_.geometry.out_channels)
      fail<ShapeError>(layer_, ": cannot fold ", bn.description(),
                               ": num_features must equal out_channels=", conv_.geometry.out_channels);
    Tensor4<T> w = weight();
    Tensor1<T> b = bias();
    detail::fold_batchnorm(bn, 1, w.size() / conv_.geometry.out_channels, w.data(), b.data());
    set_weight(w);
    bias_.assign(b.data(), b.data() + b.size());
  }

  using Module<T>::forward;

  /// [N, H, W, Cin] -> [N, Hout, Wout, Cout]; ShapeError if the input does not fit.
  NhwcShape output_shape(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    detail::check_conv_input(layer_, conv_.geometry, in[0]);
    return {in[0].n, conv_.geometry.out_h(in[0].h), conv_.geometry.out_w(in[0].w), conv_.geometry.out_channels};
  }
  bool fuses_post_ops() const override { return true; }
  bool writes_means() const override { return true; }

  /// y = post(conv(x) + bias), split over ctx's threads: each sample is one task; a batch
  /// smaller than the pool splits every sample into row or channel slices. A 1x1 convolution
  /// of 1x1 inputs (a squeeze-excite FC) is one GEMM over the whole batch. The GEMMs read the
  /// kept packed kernel; Winograd the kept transform: outputs of at least 484 pixels sample by
  /// sample, smaller ones when the batch has at least 32 tiles of 4x4 (else Im2colGemm) with
  /// GEMMs over the tiles of several samples, tasks taking whole panels of the channels (and,
  /// with fewer panels than threads, runs of samples). PostOps::means: a task that holds whole
  /// samples sums its channels as it finishes them (conv_sample, winograd_batch); samples
  /// split into row or channel slices are pooled after.
  void run(const Inputs<T>& in, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const override {
    const NhwcView<const T>& x = in[0];
    const ConvGeometry& g = conv_.geometry;
    const T* bias = has_bias() ? bias_.data() : nullptr;
    if (x.h == 1 && x.w == 1 && conv_.algorithm == ConvAlgorithm::Pointwise && g.groups == 1 && g.stride_h == 1 &&
        g.stride_w == 1) {
      // [N, Cin] x [Cin, Cout]: the samples are the GEMM's rows. With dynconv's x86 kernels one
      // GEMM over the kept packed kernel, its epilogue inside; with Eigen's, a few samples are
      // GEMVs (a GEMM would pack the whole weight matrix for each call).
      const detail::Epilogue<T> ep{bias, post.act, post.residual, post.after};
      const Index cin = g.in_channels, cout = g.out_channels;
      const detail::PackedLayout& layout = detail::gemm_kernels<T>().packed;
      if (layout.nr) {
        const detail::GemmEpilogue<T> e = detail::gemm_epilogue(ep, cout, 0, 0);
        detail::gemm_packed(x.n, cout, cin, x.data, cin, packed_gemm_kernel(), layout.stride(cout), 0, y.data, cout,
                            ctx.workspace(), 0, &e);
        if (post.means) std::copy(y.data, y.data + y.size(), post.means);  // one pixel: its own mean
        return;
      }
      detail::epilogue_begin(ep, x.n, cout, 0, cout, 0, y.data);
      if (x.n <= 4) {
        using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
        const Eigen::Map<const detail::RowMajorMatrix<T>> w(packed_.data(), cin, cout);
        for (Index b = 0; b < x.n; ++b)
          Eigen::Map<Vec>(y.data + b * cout, cout).noalias() += w.transpose() * Eigen::Map<const Vec>(x.data + b * cin, cin);
      } else {
        detail::gemm(x.n, cout, cin, x.data, cin, packed_.data(), cout, y.data, cout, ctx.workspace(), 0);
      }
      detail::epilogue_end(ep, x.n, cout, 0, cout, 0, y.data);
      if (post.means) std::copy(y.data, y.data + y.size(), post.means);  // one pixel: its own mean
      return;
    }
    const ConvAlgorithm algo = detail::run_algorithm(conv_.algorithm, y.h, y.w, x.n);
    if (algo == ConvAlgorithm::Winograd && detail::winograd_spans_samples(y.h, y.w)) {
      // A batch of small images (run_algorithm picked Winograd for the batch's tiles): each
      // task takes whole panels of the channels, so that it reads its part of the transform
      // once, for every sample's tiles; with fewer panels than threads, for a run of samples.
      const T* u = winograd_kernel(ctx);
      const Index nr = detail::gemm_kernels<T>().packed.nr, unit = nr ? nr : 16;
      const Index panels = (g.out_channels + unit - 1) / unit;
      const Index channel_parts = std::min<Index>(panels, ctx.threads());
      const Index sample_parts = std::min<Index>(x.n, std::max<Index>(1, ctx.threads() / channel_parts));
      ctx.pool().parallel_for(channel_parts * sample_parts, [&](std::int64_t task, int worker) {
        const std::array<Index, 2> c = split_range(panels, channel_parts, task % channel_parts);
        const std::array<Index, 2> b = split_range(x.n, sample_parts, task / channel_parts);
        const detail::Slice s{0, y.h, c[0] * unit, std::min(g.out_channels, c[1] * unit)};
        const detail::Epilogue<T> ep{bias, post.act, post.residual ? post.residual + b[0] * y.sample_size() : nullptr,
                                     post.after};
        detail::winograd_batch(g, x.sample(b[0]), b[1] - b[0], x.h, x.w, u, s, ep, y.sample(b[0]), ctx.workspace(),
                               worker, post.means ? post.means + b[0] * y.c : nullptr);
      });
      return;
    }
    const Index parts = ctx.sample_parts(x.n, y.pixels() * g.weight_size());
    const bool by_channel = detail::channel_sliceable(algo, g);
    const T* kernel = algo == ConvAlgorithm::Winograd ? winograd_kernel(ctx) : packed_.data();
    // The GEMM's own packing, kept (a row-major layout, Eigen's, is the packed kernel itself).
    const bool gemm = (algo == ConvAlgorithm::Im2colGemm || algo == ConvAlgorithm::Pointwise) && g.groups == 1;
    const T* packed = gemm && detail::gemm_kernels<T>().packed.nr ? packed_gemm_kernel() : nullptr;
    ctx.pool().parallel_for(x.n * parts, [&](std::int64_t task, int worker) {
      const Index b = task / parts;
      const detail::Epilogue<T> ep{bias, post.act, post.residual ? post.residual + b * y.sample_size() : nullptr,
                                   post.after};
      if (parts == 1)
        return detail::conv_sample(algo, g, x.sample(b), x.h, x.w, kernel, g.out_channels, ep, y.sample(b),
                                   ctx.workspace(), worker, packed, post.means ? post.means + b * y.c : nullptr);
      const detail::Slice s = detail::slice_of(algo, g, y.h, parts, task % parts);
      detail::conv_slice(algo, g, x.sample(b), x.h, x.w, kernel + (by_channel ? s.c0 : 0), g.out_channels, s, ep,
                         y.sample(b), static_cast<const T*>(nullptr), ctx.workspace(), worker, packed);
    });
    if (parts > 1 && post.means) detail::gap_nhwc(NhwcView<const T>(y), post.means, ctx);
  }

  /// "weight" [Cout, Cin/groups, kh, kw] and, when the bias is a parameter, "bias" [Cout].
  std::vector<ParameterInfo> parameters() const override {
    const ConvGeometry& g = conv_.geometry;
    std::vector<ParameterInfo> p{{"weight", {g.out_channels, g.in_per_group(), g.kernel_h, g.kernel_w}}};
    if (bias_param_) p.push_back({"bias", {g.out_channels}});
    return p;
  }
  std::vector<T> parameter(const std::string& name) const override {
    if (name == "weight") {
      const Tensor4<T> w = weight();
      return std::vector<T>(w.data(), w.data() + w.size());
    }
    if (name == "bias" && bias_param_) return bias_;
    this->unknown_parameter(name);
  }
  void set_parameter(const std::string& name, const std::vector<T>& v) override {
    const std::array<Index, 4> ws = weight_shape();
    if (name == "weight") {
      this->check_count(name, v, {ws[0], ws[1], ws[2], ws[3]});
      set_weight(Eigen::TensorMap<const Tensor4<T>>(v.data(), ws));
    } else if (name == "bias" && bias_param_) {
      this->check_count(name, v, {ws[0]});
      bias_ = v;
    } else {
      this->unknown_parameter(name);
    }
  }
  /// Loads weight (and bias); a bias left by an earlier BatchNorm fold is dropped first.
  void load(WeightLoader& w, const std::string& prefix) override {
    if (!bias_param_) bias_.clear();
    Module<T>::load(w, prefix);
  }

  /// Parameters and multiply-adds of one sample of this input shape.
  LayerCost cost(const std::vector<NhwcShape>& in) const override {
    this->check_arity(in, 1);
    return cost(in[0].h, in[0].w);
  }

  /// Parameters and multiply-adds for one sample of size in_h x in_w (ShapeError if the
  /// input does not fit the kernel).
  LayerCost cost(Index in_h, Index in_w) const {
    detail::check_fits(layer_, conv_.geometry, in_h, in_w, [&] { return concat(in_h, 'x', in_w); });
    LayerCost c;
    c.params = conv_.geometry.weight_size() + (bias_param_ ? conv_.geometry.out_channels : 0);
    c.conv_madds = conv_.geometry.out_h(in_h) * conv_.geometry.out_w(in_w) * conv_.geometry.weight_size();
    return c;
  }

 private:
  std::array<Index, 4> weight_shape() const {
    return {conv_.geometry.out_channels, conv_.geometry.in_per_group(), conv_.geometry.kernel_h,
            conv_.geometry.kernel_w};
  }

  /// Kernels made from the weights on first use and kept until set_weight: Winograd's
  /// transform (detail::winograd_kernel) and the GEMM's packed kernel (detail::pack_b).
  struct KeptKernels {
    detail::Kept<T> winograd, packed;
  };

  /// The kept Winograd transform (made split over ctx's pool by input channels).
  const T* winograd_kernel(Context<T>& ctx) const {
    const ConvGeometry& g = conv_.geometry;
    return kept_->winograd.get(detail::winograd_kernel_size<T>(g.in_channels, g.out_channels), [&](T* u) {
      const int threads = ctx.threads();
      ctx.pool().parallel_for(threads, [&](std::int64_t part, int) {
        const std::array<Index, 2> r = split_range(g.in_channels, threads, part);
        detail::winograd_kernel(r[0], r[1], g.in_channels, packed_.data(), g.out_channels, g.out_channels, u);
      });
    });
  }

  /// The kept GEMM kernel [depth, Cout] in the GEMM's packed layout (one group only).
  const T* packed_gemm_kernel() const {
    const ConvGeometry& g = conv_.geometry;
    const std::array<Index, 2> m = detail::kernel_matrix(ConvAlgorithm::Im2colGemm, g);
    const detail::PackedLayout& layout = detail::gemm_kernels<T>().packed;
    return kept_->packed.get(layout.size(m[0], m[1]),
                            [&](T* out) { detail::pack_b(m[0], m[1], packed_.data(), m[1], out); });
  }

  Conv2dOptions options_;
  std::string layer_;
  detail::ResolvedConv conv_;
  std::vector<T> packed_;  // packed_index() layout of conv_.algorithm
  std::vector<T> bias_;    // [Cout] or empty
  bool bias_param_ = options_.bias();
  // Shared by copies until either sets its weights (set_weight makes a new one).
  std::shared_ptr<KeptKernels> kept_ = std::make_shared<KeptKernels>();
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class Conv2d<float>;
extern template class Conv2d<double>;
#endif

}  // namespace dynconv
