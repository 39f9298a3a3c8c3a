// The planned dynamic convolution: every attention kind (DY-Conv, CondConv, ODConv) x every
// mixing strategy, forced, x threads {1, 2, 3} x batch {1, 2, 3} with distinct samples, against a
// naive per-sample reference written here (attention, kernel synthesis and convolution straight
// from paper.md and family.md, in double); and the one predicate select_mix_strategy() on the
// shapes it is meant for.
#include <dynconv/dynamic_conv2d.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace {

using dynconv::Activation;
using dynconv::AttentionKind;
using dynconv::Context;
using dynconv::DynamicConv2d;
using dynconv::DynamicConv2dOptions;
using dynconv::Index;
using dynconv::MixStrategy;
using dynconv::NhwcShape;
using dynconv::NhwcTensor;

/// The epilogue a case runs: y = after(act(conv) + residual), each with PostOps::means.
enum class Post {
  HardSwishResidualReLU,  // vectorised activations, a residual, a final activation
  SiLU,                   // an activation the x86 tile ends do not vectorise, no residual
  IdentityResidual,       // no activation, a residual
};

struct Geometry {
  const char* name;
  Index cin, cout, k, stride, pad, groups, h, w;
  Post post = Post::HardSwishResidualReLU;
};

// Shapes that reach every edge of the strategies: a 1x1 GEMM (no im2col), a 3x3 with im2col,
// a strided one, a strided 1x1 (gathered pixels), depthwise, grouped, one wide enough for
// several channel tiles, one with enough output pixels (22x23 >= 484) for Winograd, and one
// whose GEMM is deeper and wider than a cache block of the x86 kernels (depth 360 > 256, 300
// channels > 256: tiles finished over two depth blocks, two column blocks). A GEMM and a
// depthwise layer end in SiLU (finished and summed apart from the vectorised tile ends), one
// layer in a residual alone.
const Geometry kGeometries[] = {
    {"pointwise", 16, 48, 1, 1, 0, 1, 9, 9},
    {"conv3x3_silu", 8, 40, 3, 1, 1, 1, 12, 10, Post::SiLU},
    {"strided3x3", 8, 32, 3, 2, 1, 1, 11, 13},
    {"strided1x1", 16, 32, 1, 2, 0, 1, 9, 9},
    {"depthwise", 24, 24, 3, 1, 1, 24, 10, 10},
    {"depthwise_silu", 20, 20, 5, 1, 2, 20, 7, 9, Post::SiLU},
    {"grouped", 12, 24, 3, 1, 1, 3, 9, 9},
    {"wide_tiles", 24, 80, 1, 1, 0, 1, 5, 5, Post::IdentityResidual},
    {"winograd", 8, 20, 3, 1, 1, 1, 22, 23},
    {"deep", 40, 300, 3, 1, 1, 1, 5, 6},
};
const MixStrategy kStrategies[] = {MixStrategy::PerSample, MixStrategy::RowSplit, MixStrategy::ChannelTiles,
                                   MixStrategy::FusedPacking, MixStrategy::Auto};
constexpr Index kKernels = 3;  // not a multiple of the mix's four-at-a-time: its remainder path runs

template <typename T>
void fill(std::vector<T>& v, unsigned seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> d(-scale, scale);
  for (T& x : v) x = static_cast<T>(d(gen));
}

DynamicConv2dOptions options_of(const Geometry& g, AttentionKind kind) {
  DynamicConv2dOptions o = kind == AttentionKind::DyConv     ? DynamicConv2dOptions(g.cin, g.cout, g.k).kernels(kKernels)
                           : kind == AttentionKind::CondConv ? DynamicConv2dOptions::condconv(g.cin, g.cout, g.k, kKernels).bias(true)
                                                             : DynamicConv2dOptions::odconv(g.cin, g.cout, g.k, kKernels);
  return o.stride(g.stride).padding(g.pad).groups(g.groups).temperature(1.3).name(g.name);
}

/// A dynamic layer of geometry g with every parameter random (attention logits spread so that
/// different samples get clearly different mixes) and a temperature of 1.3.
template <typename T>
DynamicConv2d<T> make_layer(const Geometry& g, MixStrategy m, AttentionKind kind) {
  DynamicConv2d<T> layer(options_of(g, kind).mix_strategy(m));
  unsigned seed = 100;
  for (const dynconv::ParameterInfo& p : layer.parameters()) {
    if (p.shape.empty()) continue;  // the temperature
    std::vector<T> v(static_cast<std::size_t>(dynconv::element_count(p.shape)));
    const bool attention = p.name.rfind("attention.", 0) == 0 || p.name.rfind("routing_fn.", 0) == 0;
    fill(v, seed++, attention ? 1.5 : 0.5);
    if (p.name.find("running_var") != std::string::npos)
      for (T& x : v) x = static_cast<T>(1.0 + 0.5 * static_cast<double>(x));  // in [0.25, 1.75]
    layer.set_parameter(p.name, v);
  }
  return layer;
}

double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

/// out[o] = b[o] + sum_i w[o, i] x[i] for a dense layer of `outs` outputs (b may be null).
std::vector<double> dense(const std::vector<double>& x, const std::vector<double>& w, const double* b, Index outs) {
  const Index ins = static_cast<Index>(x.size());
  std::vector<double> y(static_cast<std::size_t>(outs));
  for (Index o = 0; o < outs; ++o) {
    double a = b ? b[o] : 0.0;
    for (Index i = 0; i < ins; ++i) a += w[static_cast<std::size_t>(o * ins + i)] * x[static_cast<std::size_t>(i)];
    y[static_cast<std::size_t>(o)] = a;
  }
  return y;
}

/// One sample's attention, straight from family.md: the kernel weights a [K] and the scales
/// (ODConv) of input channels c [Cin], filters f [Cout] and kernel positions s [k*k]; a head the
/// kind does not have is all ones.
struct Heads {
  std::vector<double> a, c, f, s;
};

template <typename T>
Heads reference_heads(const DynamicConv2d<T>& layer, const Geometry& g, const std::vector<double>& pooled) {
  auto param = [&](const std::string& name) {
    const std::vector<T> v = layer.parameter(name);
    return std::vector<double>(v.begin(), v.end());
  };
  const double tau = static_cast<double>(layer.temperature());
  Heads h{std::vector<double>(kKernels, 1.0), std::vector<double>(static_cast<std::size_t>(g.cin), 1.0),
          std::vector<double>(static_cast<std::size_t>(g.cout), 1.0), std::vector<double>(static_cast<std::size_t>(g.k * g.k), 1.0)};
  auto softmax = [tau](std::vector<double> z) {
    double top = -1e300, sum = 0;
    for (double v : z) top = std::max(top, v);
    for (double& v : z) sum += (v = std::exp((v - top) / tau));
    for (double& v : z) v /= sum;
    return z;
  };
  switch (layer.kind()) {
    case AttentionKind::DyConv: {
      std::vector<double> hid = dense(pooled, param("attention.fc1.weight"), param("attention.fc1.bias").data(),
                                      static_cast<Index>(param("attention.fc1.bias").size()));
      for (double& v : hid) v = std::max(v, 0.0);
      h.a = softmax(dense(hid, param("attention.fc2.weight"), param("attention.fc2.bias").data(), kKernels));
      break;
    }
    case AttentionKind::CondConv:
      h.a = dense(pooled, param("routing_fn.weight"), param("routing_fn.bias").data(), kKernels);
      for (double& v : h.a) v = sigmoid(v / tau);
      break;
    case AttentionKind::ODConv: {
      const std::vector<double> gamma = param("attention.bn.weight"), beta = param("attention.bn.bias");
      const std::vector<double> mean = param("attention.bn.running_mean"), var = param("attention.bn.running_var");
      std::vector<double> z = dense(pooled, param("attention.fc.weight"), nullptr, static_cast<Index>(gamma.size()));
      for (std::size_t i = 0; i < z.size(); ++i) z[i] = std::max(0.0, (z[i] - mean[i]) / std::sqrt(var[i] + 1e-5) * gamma[i] + beta[i]);
      auto head = [&](const char* name, Index outs) {
        std::vector<double> v = dense(z, param(std::string("attention.") + name + ".weight"),
                                      param(std::string("attention.") + name + ".bias").data(), outs);
        for (double& x : v) x = sigmoid(x / tau);
        return v;
      };
      h.c = head("channel_fc", g.cin);
      if (!(g.groups == g.cin && g.cin == g.cout)) h.f = head("filter_fc", g.cout);
      if (g.k > 1) h.s = head("spatial_fc", g.k * g.k);
      h.a = softmax(dense(z, param("attention.kernel_fc.weight"), param("attention.kernel_fc.bias").data(), kKernels));
      break;
    }
  }
  return h;
}

/// The naive reference: for each sample its heads (reference_heads), W = f c s sum_k a_k W_k,
/// b = sum_k a_k b_k, y = conv2d(x, W, b), then g.post: y = relu(hardswish(y) + r), silu(y) or
/// y + r. x and r NHWC;
/// returns NHWC, in double. The attention sees x's channel means plus `pooled_shift`.
template <typename T>
std::vector<double> reference(const DynamicConv2d<T>& layer, const Geometry& g, const NhwcTensor<T>& x,
                              const std::vector<T>& residual, double pooled_shift = 0) {
  const NhwcShape s = x.shape();
  const std::vector<T> w = layer.parameter("weight");
  const std::vector<T> b = layer.has_bias() ? layer.parameter("bias") : std::vector<T>(kKernels * g.cout, T(0));
  const Index cin_g = g.cin / g.groups, cout_g = g.cout / g.groups;
  const Index oh = (s.h + 2 * g.pad - g.k) / g.stride + 1, ow = (s.w + 2 * g.pad - g.k) / g.stride + 1;
  const Index wsize = g.cout * cin_g * g.k * g.k;
  auto in = [&](Index n, Index i, Index j, Index c) { return static_cast<double>(x.tensor()(n, i, j, c)); };
  std::vector<double> y(static_cast<std::size_t>(s.n * oh * ow * g.cout));
  for (Index n = 0; n < s.n; ++n) {
    std::vector<double> pooled(static_cast<std::size_t>(g.cin), 0.0);
    for (Index c = 0; c < g.cin; ++c) {
      for (Index i = 0; i < s.h; ++i)
        for (Index j = 0; j < s.w; ++j) pooled[c] += in(n, i, j, c);
      pooled[c] = pooled[c] / static_cast<double>(s.h * s.w) + pooled_shift;
    }
    const Heads hd = reference_heads(layer, g, pooled);
    const std::vector<double>& z = hd.a;
    for (Index co = 0; co < g.cout; ++co) {
      double bias = 0;
      for (Index k = 0; k < kKernels; ++k) bias += z[k] * b[k * g.cout + co];
      const Index grp = co / cout_g;
      for (Index r = 0; r < oh; ++r)
        for (Index c = 0; c < ow; ++c) {
          double acc = bias;
          for (Index ci = 0; ci < cin_g; ++ci)
            for (Index i = 0; i < g.k; ++i)
              for (Index j = 0; j < g.k; ++j) {
                const Index ih = r * g.stride - g.pad + i, iw = c * g.stride - g.pad + j;
                if (ih < 0 || ih >= s.h || iw < 0 || iw >= s.w) continue;
                double wk = 0;
                for (Index k = 0; k < kKernels; ++k)
                  wk += z[k] * w[k * wsize + ((co * cin_g + ci) * g.k + i) * g.k + j];
                wk *= hd.f[co] * hd.c[grp * cin_g + ci] * hd.s[i * g.k + j];
                acc += wk * in(n, ih, iw, grp * cin_g + ci);
              }
          const std::size_t at = static_cast<std::size_t>(((n * oh + r) * ow + c) * g.cout + co);
          const double res = static_cast<double>(residual[at]);
          switch (g.post) {
            case Post::HardSwishResidualReLU:
              y[at] = std::max(acc * std::min(std::max(acc + 3.0, 0.0), 6.0) / 6.0 + res, 0.0);
              break;
            case Post::SiLU: y[at] = acc / (1.0 + std::exp(-acc)); break;
            case Post::IdentityResidual: y[at] = acc + res; break;
          }
        }
    }
  }
  return y;
}

struct Case {
  Geometry geometry;
  MixStrategy strategy;
  AttentionKind kind;
};

std::vector<Case> all_cases() {
  std::vector<Case> v;
  for (AttentionKind kind : {AttentionKind::DyConv, AttentionKind::CondConv, AttentionKind::ODConv})
    for (const Geometry& g : kGeometries)
      for (MixStrategy m : kStrategies) v.push_back({g, m, kind});
  return v;
}

std::string case_name(const testing::TestParamInfo<Case>& info) {
  const char* kind = info.param.kind == AttentionKind::DyConv ? "" : info.param.kind == AttentionKind::CondConv ? "condconv_" : "odconv_";
  return kind + std::string(info.param.geometry.name) + "_" + dynconv::mix_strategy_name(info.param.strategy);
}

template <typename T>
void check_case(const Case& c) {
  const Geometry& g = c.geometry;
  const dynconv::ConvGeometry geometry = options_of(g, c.kind).geometry();
  const bool supported = c.strategy == MixStrategy::Auto ||
                         dynconv::mix_strategy_supports(c.strategy, dynconv::select_conv_algorithm(geometry), geometry);
  if (!supported) {
    // A strategy that cannot run the geometry is refused when the layer is built.
    EXPECT_THAT([&] { make_layer<T>(g, c.strategy, c.kind); },
                testing::ThrowsMessage<dynconv::OptionsError>(testing::AllOf(
                    testing::HasSubstr(g.name), testing::HasSubstr(dynconv::mix_strategy_name(c.strategy)),
                    testing::HasSubstr(dynconv::concat("groups=", g.groups)))));
    return;
  }
  const DynamicConv2d<T> layer = make_layer<T>(g, c.strategy, c.kind);
  for (Index batch : {1, 2, 3}) {
    NhwcTensor<T> x(batch, g.h, g.w, g.cin);
    std::vector<T> xs(static_cast<std::size_t>(x.size()));
    // Distinct samples: each its own values and its own offset, so each gets its own mix.
    fill(xs, 7 + static_cast<unsigned>(batch));
    for (Index n = 0; n < batch; ++n)
      for (Index i = 0; i < x.shape().sample_size(); ++i) xs[n * x.shape().sample_size() + i] += static_cast<T>(0.8 * n);
    std::copy(xs.begin(), xs.end(), x.data());
    const NhwcShape ys = layer.output_shape({x.shape()});
    std::vector<T> residual(static_cast<std::size_t>(ys.size()));
    fill(residual, 11);
    const std::vector<double> expected = reference(layer, g, x, residual);
    // The attention given other channel means (Inputs::means, as a graph passes a producer's):
    // those of x + 0.5.
    const std::vector<double> shifted = reference(layer, g, x, residual, 0.5);
    std::vector<T> given(static_cast<std::size_t>(batch * g.cin), T(0));
    for (Index i = 0; i < x.size(); ++i) given[static_cast<std::size_t>(i / (g.h * g.w * g.cin) * g.cin + i % g.cin)] += xs[i];
    for (T& m : given) m = static_cast<T>(static_cast<double>(m) / static_cast<double>(g.h * g.w) + 0.5);
    double scale = 0;
    for (double e : expected) scale = std::max(scale, std::abs(e));
    for (int threads : {1, 2, 3}) {
      SCOPED_TRACE(testing::Message() << "batch " << batch << ", " << threads << " threads");
      Context<T> ctx(threads);
      ctx.min_parallel_madds(0);  // split even these small layers
      const dynconv::DynamicConvPlan p = layer.plan(x.shape(), threads, 0);
      if (c.strategy != MixStrategy::Auto) {
        EXPECT_EQ(p.mix, c.strategy);
      }
      if (std::string(g.name) == "winograd" && p.mix == MixStrategy::PerSample) {
        EXPECT_EQ(p.algorithm, dynconv::ConvAlgorithm::Winograd);
      }
      NhwcTensor<T> y(ys);
      y.set_constant(T(12345));  // every element must be written
      const dynconv::NhwcView<const T> in = x.view();
      // Every run also writes y's channel means (PostOps::means); on 3 threads the attention
      // reads given means instead of pooling x.
      const bool give = threads == 3;
      std::vector<T> means(static_cast<std::size_t>(batch * g.cout + 1), T(12345));  // + 1: no write past
      dynconv::Inputs<T> inputs(in);
      if (give) inputs.means = given.data();
      dynconv::PostOps<T> post = g.post == Post::HardSwishResidualReLU ? dynconv::PostOps<T>{Activation::HardSwish, residual.data(), Activation::ReLU}
                                 : g.post == Post::SiLU                ? dynconv::PostOps<T>{Activation::SiLU}
                                                                       : dynconv::PostOps<T>{Activation::Identity, residual.data()};
      post.means = means.data();
      layer.run(inputs, y.view(), ctx, post);
      const std::vector<double>& want = give ? shifted : expected;
      double worst = 0;
      Index at = -1;
      for (Index i = 0; i < y.size(); ++i) {
        const double e = std::abs(static_cast<double>(y.data()[i]) - want[static_cast<std::size_t>(i)]);
        if (!(e <= worst)) worst = e, at = i;
      }
      const double tol = sizeof(T) == 4 ? 2e-5 : 1e-12;
      EXPECT_LE(worst / scale, tol) << "plan " << dynconv::mix_strategy_name(p.mix) << ", worst at element " << at
                                    << " (sample " << at / ys.sample_size() << ")" << (give ? ", means given" : "");
      std::vector<double> mean(static_cast<std::size_t>(batch * g.cout), 0.0);
      for (Index i = 0; i < y.size(); ++i)
        mean[static_cast<std::size_t>(i / ys.sample_size() * g.cout + i % g.cout)] += static_cast<double>(y.data()[i]);
      double worst_mean = 0;
      for (std::size_t i = 0; i < mean.size(); ++i)
        worst_mean = std::max(worst_mean, std::abs(mean[i] / static_cast<double>(ys.pixels()) - static_cast<double>(means[i])));
      EXPECT_LE(worst_mean / scale, tol) << "plan " << dynconv::mix_strategy_name(p.mix) << ": PostOps::means";
      EXPECT_EQ(means.back(), T(12345)) << "PostOps::means written past [n, Cout]";
    }
  }
}

class StrategyTable : public testing::TestWithParam<Case> {};
TEST_P(StrategyTable, Float) { check_case<float>(GetParam()); }
TEST_P(StrategyTable, Double) { check_case<double>(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Table, StrategyTable, testing::ValuesIn(all_cases()), case_name);

// ---- The predicate on the shapes it is meant for -----------------------------------------------

dynconv::MixProblem problem(Index cin, Index cout, Index k, Index n, Index oh, Index ow, int threads,
                            dynconv::ConvAlgorithm algo = dynconv::ConvAlgorithm::Im2colGemm) {
  dynconv::ConvGeometry g;
  g.in_channels = cin;
  g.out_channels = cout;
  g.kernel_h = g.kernel_w = k;
  return {g, algo, 4, n, oh, ow, threads, Index(1) << 18, 4};
}

TEST(SelectMixStrategy, OneImageOnTwoThreadsWithManyRowsSplitsRows) {
  // DY-ResNet-18 layer1 at 224x224: 64 -> 64 3x3, 56x56 output.
  EXPECT_EQ(dynconv::select_mix_strategy(problem(64, 64, 3, 1, 56, 56, 2)), MixStrategy::RowSplit);
}
TEST(SelectMixStrategy, OneImageOnTwoThreadsWithFewRowsTilesChannels) {
  // layer4: 512 -> 512 3x3 at 7x7.
  EXPECT_EQ(dynconv::select_mix_strategy(problem(512, 512, 3, 1, 7, 7, 2)), MixStrategy::ChannelTiles);
}
TEST(SelectMixStrategy, LargeKernelsInABatchWithFewPixelsFuseTheMixIntoPacking) {
  // 4 x 512 x 512 x 9 floats = 37.7 MB of experts, 7x7 output, batch 8.
  EXPECT_EQ(dynconv::select_mix_strategy(problem(512, 512, 3, 8, 7, 7, 1)), MixStrategy::FusedPacking);
}
TEST(SelectMixStrategy, LargeKernelsInABatchWithManyPixelsMixChannelTiles) {
  EXPECT_EQ(dynconv::select_mix_strategy(problem(256, 256, 3, 8, 28, 28, 1)), MixStrategy::ChannelTiles);
}
TEST(SelectMixStrategy, MidSizeKernelsMixPerSample) {
  EXPECT_EQ(dynconv::select_mix_strategy(problem(64, 64, 3, 8, 56, 56, 2)), MixStrategy::PerSample);
  EXPECT_EQ(dynconv::select_mix_strategy(problem(64, 64, 3, 1, 56, 56, 1)), MixStrategy::PerSample);
}
TEST(SelectMixStrategy, OneImageFusesLargeKernelsWhenTheKernelsMixWhilePacking) {
  // dynconv's x86 kernels mix one sample's kernel while packing it (one pass over the experts).
  dynconv::MixProblem late = problem(512, 512, 3, 1, 7, 7, 1);  // 37.7 MB of experts
  EXPECT_EQ(dynconv::select_mix_strategy(late), MixStrategy::PerSample);
  late.mixes_while_packing = true;
  EXPECT_EQ(dynconv::select_mix_strategy(late), MixStrategy::FusedPacking);
  late.threads = 2;  // and on two threads (in depth parts: DynamicConvPlan)
  EXPECT_EQ(dynconv::select_mix_strategy(late), MixStrategy::FusedPacking);
  // Kernels that stay in L2 (4 x 64 x 64 x 9 floats = 0.6 MB), or many pixels: no.
  dynconv::MixProblem small = problem(64, 64, 3, 1, 7, 7, 1);
  small.mixes_while_packing = true;
  EXPECT_EQ(dynconv::select_mix_strategy(small), MixStrategy::PerSample);
  dynconv::MixProblem early = problem(256, 256, 3, 1, 28, 28, 1);
  early.mixes_while_packing = true;
  EXPECT_EQ(dynconv::select_mix_strategy(early), MixStrategy::PerSample);
  // ODConv's scaled kernels fuse where the kernels mix while packing; Eigen's fused path mixes
  // each sample's scaled block on its own, so a batch keeps ChannelTiles there.
  late.threads = 1;
  late.scaled = true;
  EXPECT_EQ(dynconv::select_mix_strategy(late), MixStrategy::FusedPacking);
  dynconv::MixProblem batch = problem(512, 512, 3, 8, 7, 7, 1);
  batch.scaled = true;
  EXPECT_EQ(dynconv::select_mix_strategy(batch), MixStrategy::ChannelTiles);
  batch.mixes_while_packing = true;
  EXPECT_EQ(dynconv::select_mix_strategy(batch), MixStrategy::FusedPacking);
}
TEST(SelectMixStrategy, SmallLayersAreNotSplit) {
  // 16 -> 16 1x1 at 4x4: far below 2^18 multiply-adds.
  EXPECT_EQ(dynconv::select_mix_strategy(problem(16, 16, 1, 1, 4, 4, 2, dynconv::ConvAlgorithm::Pointwise)),
            MixStrategy::PerSample);
}
TEST(SelectMixStrategy, DepthwiseNeverFusesIntoPacking) {
  dynconv::MixProblem p = problem(960, 960, 3, 8, 7, 7, 1, dynconv::ConvAlgorithm::Depthwise);
  p.geometry.groups = 960;
  p.kernels = 800;  // enough experts to pass the size threshold
  EXPECT_EQ(dynconv::select_mix_strategy(p), MixStrategy::ChannelTiles);
}

TEST(DynamicConvPlan, ReportsTheBuffersOfItsStrategy) {
  const DynamicConv2d<float> layer(DynamicConv2dOptions(64, 64, 3).padding(1).kernels(4).bias(true));
  const dynconv::DynamicConvPlan rows = layer.plan({1, 56, 56, 64}, 2);
  EXPECT_EQ(rows.mix, MixStrategy::RowSplit);
  EXPECT_EQ(rows.row_parts, 2);
  EXPECT_EQ(rows.mixed_kernel_values, 64 * 64 * 9);
  EXPECT_EQ(rows.bias_values, 64);
  const dynconv::DynamicConvPlan one = layer.plan({3, 56, 56, 64}, 1);
  EXPECT_EQ(one.mix, MixStrategy::PerSample);
  EXPECT_EQ(one.kernel_scratch_values, 64 * 64 * 9);
  EXPECT_EQ(one.bias_values, 3 * 64);
  // Both run Winograd at 56x56: the transformed kernels, 36 points of Cin x Cout.
  EXPECT_EQ(rows.algorithm, dynconv::ConvAlgorithm::Winograd);
  EXPECT_EQ(rows.transformed_values, 36 * 64 * 64);
  EXPECT_EQ(one.algorithm, dynconv::ConvAlgorithm::Winograd);
  EXPECT_EQ(one.transformed_values, 36 * 64 * 64);
  // One image fused into the packing on two threads: its depth (9 x 512 rows) in two parts,
  // one partial output [49, 512] besides the layer's; a batch: channel tiles.
  const DynamicConv2d<float> late(
      DynamicConv2dOptions(512, 512, 3).padding(1).kernels(4).mix_strategy(MixStrategy::FusedPacking));
  const dynconv::DynamicConvPlan image = late.plan({1, 7, 7, 512}, 2);
  EXPECT_EQ(image.depth_parts, 2);
  EXPECT_EQ(image.tiles, 1);
  EXPECT_EQ(image.partial_values, 49 * 512);
  const dynconv::DynamicConvPlan batch = late.plan({2, 7, 7, 512}, 2);
  EXPECT_EQ(batch.depth_parts, 1);
  EXPECT_EQ(batch.tiles, 2);
  EXPECT_EQ(batch.partial_values, 0);
  EXPECT_EQ(late.plan({1, 7, 7, 512}, 1).depth_parts, 1);
}

TEST(DynamicConvPlan, WinogradFromTwentyTwoSquaredPixels) {
  using dynconv::ConvAlgorithm;
  const DynamicConv2d<float> layer(DynamicConv2dOptions(64, 64, 3).padding(1).kernels(4));
  ASSERT_EQ(layer.algorithm(), ConvAlgorithm::Winograd);
  // 22x22 = 484 output pixels run Winograd; 21x23 = 483 the layer's im2col GEMM, with nothing
  // transformed.
  EXPECT_EQ(layer.plan({1, 22, 22, 64}, 1).algorithm, ConvAlgorithm::Winograd);
  const dynconv::DynamicConvPlan small = layer.plan({1, 21, 23, 64}, 1);
  EXPECT_EQ(small.algorithm, ConvAlgorithm::Im2colGemm);
  EXPECT_EQ(small.transformed_values, 0);
  EXPECT_EQ(dynconv::detail::run_algorithm(ConvAlgorithm::Winograd, 21, 23), ConvAlgorithm::Im2colGemm);
  EXPECT_EQ(dynconv::detail::run_algorithm(ConvAlgorithm::Im2colGemm, 56, 56), ConvAlgorithm::Im2colGemm);
  // FusedPacking mixes into the im2col GEMM's packing: that layer runs Im2colGemm at any size.
  const DynamicConv2d<float> fused(
      DynamicConv2dOptions(64, 64, 3).padding(1).kernels(4).mix_strategy(MixStrategy::FusedPacking));
  const dynconv::DynamicConvPlan f = fused.plan({2, 56, 56, 64}, 1);
  EXPECT_EQ(f.mix, MixStrategy::FusedPacking);
  EXPECT_EQ(f.algorithm, ConvAlgorithm::Im2colGemm);
  EXPECT_TRUE(f.shared_columns);
  // ChannelTiles transforms one sample's channel tile at a time.
  const DynamicConv2d<float> tiles(
      DynamicConv2dOptions(64, 64, 3).padding(1).kernels(4).mix_strategy(MixStrategy::ChannelTiles));
  const dynconv::DynamicConvPlan t = tiles.plan({2, 56, 56, 64}, 2);
  EXPECT_EQ(t.algorithm, ConvAlgorithm::Winograd);
  EXPECT_FALSE(t.shared_columns);
  EXPECT_EQ(t.transformed_values, 36 * 64 * 32);  // two tiles of 32 channels
}

}  // namespace
