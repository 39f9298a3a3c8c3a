// DynamicConv2d against the naive per-sample reference of the whole operator (reference.hpp:
// attention, mix, convolution) through forward (NCHW, NHWC) and the network path (Module::run
// on a Context, several threads), and the math facts of paper.md.
#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "reference.hpp"

namespace {

using dynconv::ConvAlgorithm;
using dynconv::DynamicConv2d;
using dynconv::DynamicConv2dOptions;
using dynconv::Index;
using dynconv::MixStrategy;
using dynconv::Tensor1;
using dynconv::Tensor2;
using dynconv::Tensor4;
using dynconv::Tensor5;

/// Randomises every parameter; attention FCs get a large range so pi is far from uniform.
template <typename T>
void randomize(DynamicConv2d<T>& layer, unsigned seed) {
  ref::randomize_dynamic(layer, seed);
}

struct Case {
  const char* name;
  Index n, cin, cout, h, w, k, kernel, stride, pad, dil, groups;
  bool bias;
  double tau;
};

// clang-format off
const Case kCases[] = {
  // name                 n cin cout  h   w  K kern s  p  d   g  bias  tau
  {"pw_k4",               2, 16, 24,  7,  7, 4, 1, 1, 0, 1,  1, true,  1.0},
  {"pw_k8_stride2",       3,  8, 16,  9,  8, 8, 1, 2, 0, 1,  1, false, 1.0},
  {"pw_groups2",          2,  8,  8,  5,  5, 4, 1, 1, 0, 1,  2, true,  0.5},
  {"c3x3_k4",             3,  6, 10,  8,  9, 4, 3, 1, 1, 1,  1, true,  1.0},
  {"c3x3_stride2_k2",     2,  8,  8, 11, 11, 2, 3, 2, 1, 1,  1, false, 1.0},
  {"c3x3_dil2_tau30",     2,  4,  6, 10, 10, 4, 3, 1, 2, 2,  1, true, 30.0},
  {"c3x3_groups4",        3, 16,  8,  6,  7, 4, 3, 1, 1, 1,  4, true,  1.0},
  {"c5x5_k3",             2,  4,  4,  9,  9, 3, 5, 1, 2, 1,  1, true,  1.0},
  {"c7x7_stride2",        2,  3,  8, 16, 16, 4, 7, 2, 3, 1,  1, false, 1.0},
  {"dw3x3",               3, 12, 12,  8,  8, 4, 3, 1, 1, 1, 12, true,  1.0},
  {"dw3x3_stride2",       2, 16, 16,  9, 10, 4, 3, 2, 1, 1, 16, false, 1.0},
  {"dw5x5",               2,  8,  8,  7,  7, 4, 5, 1, 2, 1,  8, true,  1.0},
};
// clang-format on

struct Param {
  Case c;
  ConvAlgorithm algo;
};

void PrintTo(const Param& p, std::ostream* os) {
  *os << p.c.name << " with " << dynconv::algorithm_name(p.algo);
}

DynamicConv2dOptions options_of(const Case& c, ConvAlgorithm algo = ConvAlgorithm::Auto) {
  return DynamicConv2dOptions(c.cin, c.cout, c.kernel)
      .stride(c.stride)
      .padding(c.pad)
      .dilation(c.dil)
      .groups(c.groups)
      .bias(c.bias)
      .kernels(c.k)
      .temperature(c.tau)
      .min_hidden(4)  // a single ReLU unit may be dead for every sample: constant attention
      .algorithm(algo);
}

/// The static convolution of the same geometry.
dynconv::Conv2dOptions static_options_of(const Case& c) {
  return dynconv::Conv2dOptions(c.cin, c.cout, c.kernel)
      .stride(c.stride)
      .padding(c.pad)
      .dilation(c.dil)
      .groups(c.groups)
      .bias(c.bias);
}

/// The hyper-parameters of a case for the naive reference (from the table, not the layer).
ref::Conv conv_of(const Case& c) {
  return ref::Conv::symmetric(c.stride, c.stride, c.pad, c.pad, c.dil, c.dil, c.groups);
}

std::vector<Param> all_params() {
  std::vector<Param> out;
  for (const Case& c : kCases) {
    const dynconv::ConvGeometry g = options_of(c).geometry();
    for (ConvAlgorithm a :
         {ConvAlgorithm::Pointwise, ConvAlgorithm::Depthwise, ConvAlgorithm::Im2colGemm})
      if (dynconv::algorithm_supports(a, g)) out.push_back({c, a});
  }
  return out;
}

template <typename T>
Tensor4<T> random_input(const Case& c, unsigned seed) {
  Tensor4<T> x(c.n, c.cin, c.h, c.w);
  ref::fill_random(x, seed, -1, 1);
  // A per-sample, per-channel offset, so that the pooled features (and so the attention)
  // differ clearly between samples.
  Tensor2<T> offset(c.n, c.cin);
  ref::fill_random(offset, seed + 100, -2, 2);
  for (Index e = 0; e < x.size(); ++e) x.data()[e] += offset.data()[e / (c.h * c.w)];
  return x;
}

template <typename T>
double max_abs_diff_between_rows(const Tensor2<T>& pi) {
  double d = 0;
  for (Index b = 1; b < pi.dimension(0); ++b)
    for (Index k = 0; k < pi.dimension(1); ++k)
      d = std::max(d, std::abs(static_cast<double>(pi(b, k) - pi(0, k))));
  return d;
}

class DynamicReference : public ::testing::TestWithParam<Param> {
 protected:
  template <typename T>
  void check() {
    const Case& c = GetParam().c;
    DynamicConv2d<T> layer(options_of(c, GetParam().algo));
    ASSERT_EQ(layer.algorithm(), GetParam().algo);
    randomize(layer, 7);
    const Tensor4<T> x = random_input<T>(c, 11);
    Tensor2<T> pi;
    const Tensor4<T> y = layer.forward(x, &pi);
    const Tensor4<double> expected = ref::dynamic_conv2d(layer, x, conv_of(c));
    ASSERT_EQ(dynconv::shape_str(y.dimensions()), dynconv::shape_str(expected.dimensions()));
    EXPECT_LE(ref::rel_error(y, expected), ref::tolerance<T>());

    const auto pi_ref = ref::attention(layer, x);
    for (Index b = 0; b < c.n; ++b)
      for (Index k = 0; k < c.k; ++k)
        EXPECT_NEAR(pi(b, k), pi_ref[b][k], 10 * ref::tolerance<T>()) << "sample " << b << " kernel " << k;
    // The samples must really get different kernels, or the test would prove little.
    if (c.k > 1 && c.tau < 10) {
      EXPECT_GT(max_abs_diff_between_rows(pi), 1e-3);
    }

    Tensor2<T> pi_nhwc;
    const Tensor4<T> y_nhwc = dynconv::nhwc_to_nchw(layer.forward(dynconv::nchw_to_nhwc(x), &pi_nhwc));
    EXPECT_LE(ref::rel_error(y_nhwc, expected), ref::tolerance<T>()) << "NHWC";
    EXPECT_LE(ref::rel_error(pi_nhwc, pi), 0.0) << "NHWC attention";
    // The network path: threads (channel tiles, samples), fused activation and residual.
    ref::check_network_path(layer, x, expected);
  }
};

TEST_P(DynamicReference, Float) { check<float>(); }
TEST_P(DynamicReference, Double) { check<double>(); }

INSTANTIATE_TEST_SUITE_P(Table, DynamicReference, ::testing::ValuesIn(all_params()),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           return std::string(info.param.c.name) + "_" +
                                  dynconv::algorithm_name(info.param.algo);
                         });

// ---- The math facts of paper.md, in float and double --------------------------------------

template <typename T>
class DynamicFacts : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(DynamicFacts, Scalars);

// Cases the facts are checked on: dense 3x3, grouped, depthwise, 1x1 strided.
const Case& fact_case(int i) {
  static const Case cases[] = {kCases[3], kCases[6], kCases[9], kCases[1]};
  return cases[i];
}
constexpr int kFactCases = 4;

TYPED_TEST(DynamicFacts, OneKernelEqualsConv2d) {
  using T = TypeParam;
  for (int i = 0; i < kFactCases; ++i) {
    Case c = fact_case(i);
    c.k = 1;
    SCOPED_TRACE(c.name);
    DynamicConv2d<T> dyn(options_of(c));
    randomize(dyn, 3);
    dynconv::Conv2d<T> conv(static_options_of(c));
    const Tensor5<T> w5 = dyn.weight();
    Tensor4<T> w4(c.cout, c.cin / c.groups, c.kernel, c.kernel);
    std::copy(w5.data(), w5.data() + w5.size(), w4.data());
    conv.set_weight(w4);
    if (c.bias) {
      const Tensor2<T> b2 = dyn.bias();
      Tensor1<T> b1(c.cout);
      std::copy(b2.data(), b2.data() + b2.size(), b1.data());
      conv.set_bias(b1);
    }
    const Tensor4<T> x = random_input<T>(c, 5);
    Tensor2<T> pi;
    const Tensor4<T> y = dyn.forward(x, &pi);
    for (Index b = 0; b < c.n; ++b) EXPECT_EQ(pi(b, 0), T(1));
    EXPECT_LE(ref::rel_error(y, conv.forward(x)), ref::tolerance<T>());
  }
}

TYPED_TEST(DynamicFacts, OneHotAttentionSelectsItsKernel) {
  using T = TypeParam;
  for (int i = 0; i < kFactCases; ++i) {
    const Case& c = fact_case(i);
    SCOPED_TRACE(c.name);
    DynamicConv2d<T> dyn(options_of(c));
    randomize(dyn, 4);
    const Tensor4<T> x = random_input<T>(c, 6);
    const Tensor5<T> w = dyn.weight();
    const Tensor2<T> bias = dyn.bias();
    const ref::Conv p = conv_of(c);
    for (Index k = 0; k < c.k; ++k) {
      Tensor4<T> wk(c.cout, c.cin / c.groups, c.kernel, c.kernel);
      std::copy(w.data() + k * wk.size(), w.data() + (k + 1) * wk.size(), wk.data());
      const Tensor4<double> expected =
          ref::conv2d(x, wk, c.bias ? bias.data() + k * c.cout : nullptr, p);
      // Through convolve() with an explicit one-hot attention ...
      Tensor2<T> onehot(c.n, c.k);
      onehot.setZero();
      for (Index b = 0; b < c.n; ++b) onehot(b, k) = T(1);
      EXPECT_LE(ref::rel_error(dyn.convolve(x, onehot), expected), ref::tolerance<T>()) << "kernel " << k;
      // ... and through the layer's own attention driven to one-hot by its fc2 bias.
      DynamicConv2d<T> forced = dyn;
      Tensor2<T> w2 = forced.attention().fc2().weight();
      w2.setZero();
      forced.attention().fc2().set_weight(w2);
      Tensor1<T> b2(c.k);
      b2.setZero();
      b2(k) = T(800);  // exp(-800) underflows to exactly 0 in double and float
      forced.attention().fc2().set_bias(b2);
      Tensor2<T> pi;
      EXPECT_LE(ref::rel_error(forced.forward(x, &pi), expected), ref::tolerance<T>()) << "kernel " << k;
      EXPECT_EQ(pi(0, k), T(1));
    }
  }
}

TYPED_TEST(DynamicFacts, AggregateThenConvolveEqualsConvolveEachThenMix) {
  using T = TypeParam;
  for (int i = 0; i < kFactCases; ++i) {
    const Case& c = fact_case(i);
    SCOPED_TRACE(c.name);
    DynamicConv2d<T> dyn(options_of(c));
    randomize(dyn, 8);
    const Tensor4<T> x = random_input<T>(c, 9);
    Tensor2<T> pi;
    const Tensor4<T> y = dyn.forward(x, &pi);
    // sum_k pi[n, k] * conv(x_n, W_k, b_k), each conv computed by the layer itself (one-hot).
    Tensor4<double> mixed(y.dimensions());
    mixed.setZero();
    for (Index k = 0; k < c.k; ++k) {
      Tensor2<T> onehot(c.n, c.k);
      onehot.setZero();
      for (Index b = 0; b < c.n; ++b) onehot(b, k) = T(1);
      const Tensor4<T> yk = dyn.convolve(x, onehot);
      const Index per_sample = yk.size() / c.n;
      for (Index e = 0; e < yk.size(); ++e)
        mixed.data()[e] += static_cast<double>(pi(e / per_sample, k)) * yk.data()[e];
    }
    EXPECT_LE(ref::rel_error(y, mixed), ref::tolerance<T>());
  }
}

TYPED_TEST(DynamicFacts, AggregatedKernelIsTheAttentionWeightedSum) {
  using T = TypeParam;
  const Case& c = fact_case(1);
  DynamicConv2d<T> dyn(options_of(c));
  randomize(dyn, 12);
  Tensor1<T> pi(c.k);
  pi.setValues({T(0.1), T(0.2), T(0.3), T(0.4)});
  const Tensor4<T> agg = dyn.aggregated_weight(pi);
  const Tensor1<T> agg_b = dyn.aggregated_bias(pi);
  const Tensor5<T> w = dyn.weight();
  const Tensor2<T> b = dyn.bias();
  double err = 0;
  for (Index e = 0; e < agg.size(); ++e) {
    double s = 0;
    for (Index k = 0; k < c.k; ++k) s += static_cast<double>(pi(k)) * w.data()[k * agg.size() + e];
    err = std::max(err, std::abs(s - agg.data()[e]));
  }
  for (Index o = 0; o < c.cout; ++o) {
    double s = 0;
    for (Index k = 0; k < c.k; ++k) s += static_cast<double>(pi(k)) * b(k, o);
    err = std::max(err, std::abs(s - agg_b(o)));
  }
  EXPECT_LE(err, 10 * ref::tolerance<T>());
}

TYPED_TEST(DynamicFacts, AttentionRowsSumToOneAndFlattenAsTauGrows) {
  using T = TypeParam;
  const Case& c = fact_case(0);
  const Tensor4<T> x = random_input<T>(c, 13);
  double previous_spread = 2.0;
  for (double tau : {0.25, 1.0, 4.0, 30.0, 1000.0}) {
    DynamicConv2d<T> dyn(options_of(c).temperature(tau));
    randomize(dyn, 14);
    Tensor2<T> pi;
    dyn.forward(x, &pi);
    double spread = 0;
    for (Index b = 0; b < c.n; ++b) {
      double sum = 0, lo = 1, hi = 0;
      for (Index k = 0; k < c.k; ++k) {
        sum += pi(b, k);
        lo = std::min<double>(lo, pi(b, k));
        hi = std::max<double>(hi, pi(b, k));
      }
      EXPECT_NEAR(sum, 1.0, 10 * ref::tolerance<T>()) << "tau " << tau << " sample " << b;
      spread = std::max(spread, hi - lo);
    }
    EXPECT_LT(spread, previous_spread) << "tau " << tau;
    previous_spread = spread;
  }
  EXPECT_LT(previous_spread, 0.01);  // tau = 1000: nearly uniform
}

TYPED_TEST(DynamicFacts, BatchEqualsSeparateCalls) {
  using T = TypeParam;
  for (int i = 0; i < kFactCases; ++i) {
    Case c = fact_case(i);
    c.n = 3;
    SCOPED_TRACE(c.name);
    DynamicConv2d<T> dyn(options_of(c));
    randomize(dyn, 15);
    const Tensor4<T> x = random_input<T>(c, 16);
    Tensor2<T> pi;
    const Tensor4<T> y = dyn.forward(x, &pi);
    EXPECT_GT(max_abs_diff_between_rows(pi), 1e-3);  // the three samples get different kernels
    const Index in_size = x.size() / 3, out_size = y.size() / 3;
    for (Index b = 0; b < 3; ++b) {
      Tensor4<T> xb(1, c.cin, c.h, c.w);
      std::copy(x.data() + b * in_size, x.data() + (b + 1) * in_size, xb.data());
      const Tensor4<T> yb = dyn.forward(xb);
      Tensor4<T> slice(yb.dimensions());
      std::copy(y.data() + b * out_size, y.data() + (b + 1) * out_size, slice.data());
      // Not bit-identical: the attention FCs run as a GEMM over 3 rows vs a GEMV over 1.
      EXPECT_LE(ref::rel_error(slice, yb), ref::tolerance<T>()) << "sample " << b;
    }
  }
}

TYPED_TEST(DynamicFacts, BatchNormFoldsExactlyIntoAllKernels) {
  using T = TypeParam;
  for (int i = 0; i < kFactCases; ++i) {
    const Case& c = fact_case(i);
    SCOPED_TRACE(c.name);
    DynamicConv2d<T> dyn(options_of(c));
    randomize(dyn, 17);
    dynconv::BatchNorm2d<T> bn(dynconv::BatchNorm2dOptions(c.cout).eps(1e-3));
    Tensor1<T> gamma(c.cout), beta(c.cout), mean(c.cout), var(c.cout);
    ref::fill_random(gamma, 18, 0.5, 2);
    ref::fill_random(beta, 19);
    ref::fill_random(mean, 20);
    ref::fill_random(var, 21, 0.1, 3);
    bn.set_weight(gamma);
    bn.set_bias(beta);
    bn.set_running_mean(mean);
    bn.set_running_var(var);
    const Tensor4<T> x = random_input<T>(c, 22);
    // BN by hand on top of the unfolded layer's output.
    const Tensor4<T> y = dyn.forward(x);
    Tensor4<double> expected(y.dimensions());
    for (Index b = 0; b < y.dimension(0); ++b)
      for (Index o = 0; o < y.dimension(1); ++o)
        for (Index r = 0; r < y.dimension(2); ++r)
          for (Index q = 0; q < y.dimension(3); ++q)
            expected(b, o, r, q) = (y(b, o, r, q) - static_cast<double>(mean(o))) /
                                       std::sqrt(static_cast<double>(var(o)) + 1e-3) * gamma(o) + beta(o);
    Tensor2<T> pi_before, pi_after;
    dyn.forward(x, &pi_before);
    dyn.fold_batchnorm(bn);
    EXPECT_TRUE(dyn.has_bias());
    const Tensor4<T> folded = dyn.forward(x, &pi_after);
    EXPECT_LE(ref::rel_error(pi_after, pi_before), 0.0);  // attention reads the input only
    EXPECT_LE(ref::rel_error(folded, expected), 4 * ref::tolerance<T>());
  }
}

TYPED_TEST(DynamicFacts, UpcycledStaticKernelComputesTheStaticLayer) {
  using T = TypeParam;
  for (int i = 0; i < kFactCases; ++i) {
    const Case& c = fact_case(i);
    SCOPED_TRACE(c.name);
    dynconv::Conv2d<T> conv(static_options_of(c));
    Tensor4<T> w = conv.weight();
    ref::fill_random(w, 23);
    conv.set_weight(w);
    DynamicConv2d<T> dyn(options_of(c));
    randomize(dyn, 24);  // any attention
    Tensor5<T> wk(c.k, w.dimension(0), w.dimension(1), w.dimension(2), w.dimension(3));
    for (Index k = 0; k < c.k; ++k) std::copy(w.data(), w.data() + w.size(), wk.data() + k * w.size());
    dyn.set_weight(wk);
    if (c.bias) {
      Tensor2<T> bk(c.k, c.cout);
      for (Index k = 0; k < c.k; ++k)
        for (Index o = 0; o < c.cout; ++o) bk(k, o) = conv.bias()(o);
      dyn.set_bias(bk);
    }
    const Tensor4<T> x = random_input<T>(c, 25);
    EXPECT_LE(ref::rel_error(dyn.forward(x), conv.forward(x)), ref::tolerance<T>());
  }
}

TYPED_TEST(DynamicFacts, UpcycledCheckpointLoadComputesTheStaticLayer) {
  using T = TypeParam;
  // LoadMode::Upcycle reads a static checkpoint: the static kernel becomes all K kernels and
  // the attention keeps its values; as every attention row sums to 1, the layer computes the
  // static convolution whatever the attention.
  for (int i = 0; i < kFactCases; ++i) {
    const Case& c = fact_case(i);
    SCOPED_TRACE(c.name);
    dynconv::Conv2d<T> conv(static_options_of(c));
    Tensor4<T> w = conv.weight();
    ref::fill_random(w, 26);
    conv.set_weight(w);
    dynconv::SafeTensorsWriter out;
    conv.save(out, "layer1.0.conv1");
    const dynconv::SafeTensors file = dynconv::SafeTensors::parse(out.to_bytes(), "static.safetensors");
    DynamicConv2d<T> dyn(options_of(c));
    randomize(dyn, 27);
    const Tensor4<T> x = random_input<T>(c, 28);
    Tensor2<T> pi_before;
    dyn.forward(x, &pi_before);
    dynconv::WeightLoader loader(file, dynconv::LoadMode::Upcycle);
    dyn.load(loader, "layer1.0.conv1");
    EXPECT_NO_THROW(loader.finish());  // it took every tensor of the file
    Tensor2<T> pi;
    EXPECT_LE(ref::rel_error(dyn.forward(x, &pi), conv.forward(x)), ref::tolerance<T>());
    EXPECT_LE(ref::rel_error(pi, pi_before), 0.0) << "the attention keeps its values";
    EXPECT_GT(max_abs_diff_between_rows(pi), 1e-3) << "the samples should mix differently";
    for (Index k = 0; k < c.k; ++k) {
      Tensor1<T> onehot(c.k);
      onehot.setZero();
      onehot(k) = T(1);
      EXPECT_LE(ref::rel_error(dyn.aggregated_weight(onehot), w), 0.0) << "kernel " << k;
    }
    // A strict load of the same file fails: the attention is missing.
    dynconv::WeightLoader strict(file);
    EXPECT_THROW(dyn.load(strict, "layer1.0.conv1"), dynconv::Error);
  }
}

TYPED_TEST(DynamicFacts, CostFollowsThePaperFormulas) {
  using T = TypeParam;
  // 32 -> 64, 3x3, stride 2, padding 1, K = 4, hidden = 32 / 4 = 8, bias, input 16x16.
  DynamicConv2d<T> dyn(DynamicConv2dOptions(32, 64, 3).stride(2).padding(1));
  const dynconv::LayerCost cost = dyn.cost(16, 16);
  const std::int64_t kernel = 64 * 32 * 3 * 3;
  EXPECT_EQ(cost.conv_madds, 8 * 8 * kernel);
  EXPECT_EQ(cost.attention_madds, 16 * 16 * 32 + 32 * 8 + 8 * 4);
  EXPECT_EQ(cost.aggregation_madds, 4 * kernel + 4 * 64);
  EXPECT_EQ(cost.params, 4 * kernel + 4 * 64 + (32 * 8 + 8) + (8 * 4 + 4));
}

}  // namespace

// Kernels too large to stay cached across a batch (here K x 9.4 MB) are mixed per channel tile
// for the whole batch: fused into the GEMM's packing for few pixels (7x7), mixed tile by tile
// for more (17x17). Each sample must get what the naive per-sample reference gives it (its own
// mix of the K kernels, then the convolution), with 1 and 2 threads.
TEST(DynamicLargeKernels, BatchTilesMatchThePerSampleReference) {
  DynamicConv2d<float> layer(DynamicConv2dOptions(512, 512, 3).padding(1).bias(true));
  for (Index side : {7, 17}) {
    Tensor4<float> x(3, 512, side, side);
    ref::fill_random(x, 5);
    for (Index b = 0; b < 3; ++b)  // distinct attention per sample
      for (Index i = 0; i < 512 * side * side; ++i) x.data()[b * 512 * side * side + i] += 0.5f * float(b);
    const dynconv::NhwcTensor<float> nhwc = dynconv::nchw_to_nhwc(x);
    Tensor2<float> pi;
    layer.forward(nhwc, &pi);
    ASSERT_GT(max_abs_diff_between_rows(pi), 1e-4) << "the samples should mix differently";
    const Tensor4<double> expected = ref::dynamic_conv2d(layer, x, ref::Conv::symmetric(1, 1, 1, 1, 1, 1, 1));
    const dynconv::NhwcView<const float> in = nhwc.view();
    for (int threads : {1, 2}) {
      dynconv::Context<float> ctx(threads);
      // The strategy this test is about (the layer chooses it by itself).
      EXPECT_EQ(layer.plan(nhwc.shape(), threads, ctx.min_parallel_madds()).mix,
                side == 7 ? MixStrategy::FusedPacking : MixStrategy::ChannelTiles)
          << side << "x" << side << ", " << threads << " threads";
      dynconv::NhwcTensor<float> y(3, side, side, 512);
      y.set_constant(12345.0f);
      layer.run(dynconv::Inputs<float>(in), y.view(), ctx, dynconv::PostOps<float>{});
      const Tensor4<float> got = dynconv::nhwc_to_nchw(y);
      for (Index b = 0; b < 3; ++b) {
        const std::array<Index, 4> at{b, 0, 0, 0}, extent{1, 512, side, side};
        const Tensor4<float> yb = got.slice(at, extent);
        const Tensor4<double> want = expected.slice(at, extent);
        EXPECT_LE(ref::rel_error(yb, want), ref::tolerance<float>())
            << side << "x" << side << ", sample " << b << ", " << threads << " threads";
      }
    }
  }
}

// A batch mixes the float experts from a packed copy each layer keeps from its first batch
// (packed_gemm_experts): new experts after a pass must be used by the next one, a copy that
// sets its own must leave the original's alone, and a round trip through BF16 storage must
// mix the rounded experts. 80 channels: a padded panel; 1 and 2 threads (channel tiles).
TEST(DynamicKeptExperts, FollowNewExperts) {
  DynamicConv2d<float> layer(DynamicConv2dOptions(40, 80, 3).padding(1).bias(true).mix_strategy(MixStrategy::FusedPacking));
  randomize(layer, 31);
  Tensor4<float> x(3, 40, 7, 7);
  ref::fill_random(x, 32);
  for (Index b = 0; b < 3; ++b)  // distinct attention per sample
    for (Index i = 0; i < 40 * 7 * 7; ++i) x.data()[b * 40 * 7 * 7 + i] += 0.5f * float(b);
  const dynconv::NhwcTensor<float> nhwc = dynconv::nchw_to_nhwc(x);
  const ref::Conv p = ref::Conv::symmetric(1, 1, 1, 1, 1, 1, 1);
  auto check = [&](const DynamicConv2d<float>& l, const char* what) {
    const Tensor4<double> expected = ref::dynamic_conv2d(l, x, p);
    for (int threads : {1, 2}) {
      dynconv::Context<float> ctx(threads);
      EXPECT_EQ(l.plan(nhwc.shape(), threads, ctx.min_parallel_madds()).mix, MixStrategy::FusedPacking);
      dynconv::NhwcTensor<float> y(3, 7, 7, 80);
      l.run(dynconv::Inputs<float>(nhwc.view()), y.view(), ctx, dynconv::PostOps<float>{});
      EXPECT_LE(ref::rel_error(dynconv::nhwc_to_nchw(y), expected), ref::tolerance<float>())
          << what << ", " << threads << " threads";
    }
  };
  check(layer, "first experts");
  Tensor5<float> w = layer.weight();
  ref::fill_random(w, 33);
  layer.set_weight(w);
  check(layer, "new experts after a pass");
  DynamicConv2d<float> copy = layer;
  ref::fill_random(w, 34);
  copy.set_weight(w);
  check(copy, "the copy's experts");
  check(layer, "the original after its copy set experts");
  layer.set_expert_precision(dynconv::ExpertPrecision::BFloat16);
  check(layer, "BF16 experts");
  layer.set_expert_precision(dynconv::ExpertPrecision::Float32);
  check(layer, "float experts rounded through BF16");
}

// One image whose large kernels are mixed inside the GEMM's packing, on 2 and 3 threads: the
// depth splits into parts (each a run of whole-row blocks), their partial outputs summed before
// the epilogue; here with a residual and no activation, which the epilogue adds first.
TEST(DynamicLargeKernels, OneImageInDepthPartsMatchesTheReference) {
  DynamicConv2d<float> layer(DynamicConv2dOptions(512, 512, 3).padding(1).bias(true).mix_strategy(MixStrategy::FusedPacking));
  Tensor4<float> x(1, 512, 7, 7);
  ref::fill_random(x, 8);
  Tensor4<float> residual(1, 512, 7, 7);
  ref::fill_random(residual, 9);
  Tensor4<double> expected = ref::dynamic_conv2d(layer, x, ref::Conv::symmetric(1, 1, 1, 1, 1, 1, 1));
  for (Index i = 0; i < expected.size(); ++i) expected.data()[i] += static_cast<double>(residual.data()[i]);
  const dynconv::NhwcTensor<float> nhwc = dynconv::nchw_to_nhwc(x), res = dynconv::nchw_to_nhwc(residual);
  for (int threads : {2, 3}) {
    dynconv::Context<float> ctx(threads);
    EXPECT_EQ(layer.plan(nhwc.shape(), threads, ctx.min_parallel_madds()).depth_parts, threads);
    dynconv::NhwcTensor<float> y(1, 7, 7, 512);
    y.set_constant(12345.0f);
    layer.run(dynconv::Inputs<float>(nhwc.view()), y.view(), ctx,
              dynconv::PostOps<float>{dynconv::Activation::Identity, res.data(), dynconv::Activation::Identity});
    EXPECT_LE(ref::rel_error(dynconv::nhwc_to_nchw(y), expected), ref::tolerance<float>()) << threads << " threads";
  }
}

// One image on a pool, many output rows (early layers): the kernel is mixed once and the rows
// are split over the threads, for any groups; each must equal the naive per-sample reference.
TEST(DynamicRowSplit, OneImageOnSeveralThreadsMatchesThePerSampleReference) {
  for (Index groups : {1, 2}) {
    DynamicConv2d<float> layer(DynamicConv2dOptions(16, 32, 3).padding(1).groups(groups).bias(true));
    Tensor4<float> x(1, 16, 40, 37);
    ref::fill_random(x, 21);
    const dynconv::NhwcTensor<float> nhwc = dynconv::nchw_to_nhwc(x);
    const Tensor4<double> expected = ref::dynamic_conv2d(layer, x, ref::Conv::symmetric(1, 1, 1, 1, 1, 1, groups));
    const dynconv::NhwcView<const float> in = nhwc.view();
    for (int threads : {2, 3}) {
      dynconv::Context<float> ctx(threads);
      EXPECT_EQ(layer.plan(nhwc.shape(), threads, ctx.min_parallel_madds()).mix, MixStrategy::RowSplit)
          << "groups " << groups << ", " << threads << " threads";
      dynconv::NhwcTensor<float> y(layer.output_shape({nhwc.shape()}));
      y.set_constant(12345.0f);
      layer.run(dynconv::Inputs<float>(in), y.view(), ctx, dynconv::PostOps<float>{});
      EXPECT_LE(ref::rel_error(dynconv::nhwc_to_nchw(y), expected), ref::tolerance<float>())
          << "groups " << groups << ", " << threads << " threads";
    }
  }
}

// Opt-in BF16/F16 expert storage: every value rounded to nearest even once (checked against
// Eigen's conversion of the float kernels, not through the layer), then every mixing strategy,
// on 1 and 2 threads, computes the naive reference of the rounded kernels.
namespace {

template <typename S, typename T>
Tensor5<T> rounded(const Tensor5<T>& w) {
  Tensor5<T> r(w.dimensions());
  for (Index i = 0; i < w.size(); ++i) r.data()[i] = static_cast<T>(static_cast<float>(S(static_cast<float>(w.data()[i]))));
  return r;
}

template <typename T, typename S>
void check_expert_precision(dynconv::ExpertPrecision precision) {
  struct Geometry {
    Index cin, cout, kernel, groups, n, side;
  };
  for (const Geometry& geo : {Geometry{16, 24, 3, 1, 1, 9}, Geometry{12, 20, 1, 1, 3, 6}, Geometry{16, 16, 3, 16, 2, 8}})
    for (MixStrategy m : {MixStrategy::PerSample, MixStrategy::RowSplit, MixStrategy::ChannelTiles, MixStrategy::FusedPacking}) {
      const auto opt = DynamicConv2dOptions(geo.cin, geo.cout, geo.kernel).padding(geo.kernel / 2).groups(geo.groups).bias(true);
      const ConvAlgorithm algo = DynamicConv2d<T>(opt).algorithm();
      if (!dynconv::mix_strategy_supports(m, algo, opt.geometry())) continue;
      SCOPED_TRACE(testing::Message() << dynconv::expert_precision_name(precision) << " " << geo.cin << " -> " << geo.cout
                                      << " " << geo.kernel << "x" << geo.kernel << " groups " << geo.groups << " "
                                      << dynconv::mix_strategy_name(m));
      DynamicConv2d<T> layer(DynamicConv2dOptions(opt).mix_strategy(m));
      randomize(layer, 31);
      const Tensor5<T> want = rounded<S>(layer.weight());
      layer.set_expert_precision(precision);
      EXPECT_EQ(layer.expert_precision(), precision);
      const Tensor5<T> got = layer.weight();
      Index differ = 0;
      for (Index i = 0; i < got.size(); ++i) differ += got.data()[i] != want.data()[i];
      EXPECT_EQ(differ, 0) << "stored kernels are not the float kernels rounded to nearest even";
      Tensor4<T> x(geo.n, geo.cin, geo.side, geo.side);
      ref::fill_random(x, 32);
      for (Index b = 0; b < geo.n; ++b)
        for (Index i = 0; i < geo.cin * geo.side * geo.side; ++i) x.data()[b * geo.cin * geo.side * geo.side + i] += T(0.7) * T(b);
      const Tensor4<double> expected =
          ref::dynamic_conv2d(layer, x, ref::Conv::symmetric(1, 1, geo.kernel / 2, geo.kernel / 2, 1, 1, geo.groups));
      EXPECT_LE(ref::rel_error(layer.forward(x), expected), ref::tolerance<T>()) << "forward";
      const dynconv::NhwcTensor<T> nhwc = dynconv::nchw_to_nhwc(x);
      for (int threads : {1, 2}) {
        dynconv::Context<T> ctx(threads);
        ctx.min_parallel_madds(0);
        dynconv::NhwcTensor<T> y(layer.output_shape({nhwc.shape()}));
        y.set_constant(T(12345));
        layer.run(dynconv::Inputs<T>(nhwc.view()), y.view(), ctx, dynconv::PostOps<T>{});
        EXPECT_LE(ref::rel_error(dynconv::nhwc_to_nchw(y), expected), ref::tolerance<T>()) << threads << " threads";
      }
    }
}

}  // namespace

TEST(DynamicExpertPrecision, BFloat16ExpertsComputeTheRoundedKernelsInEveryStrategy) {
  check_expert_precision<float, Eigen::bfloat16>(dynconv::ExpertPrecision::BFloat16);
  check_expert_precision<double, Eigen::bfloat16>(dynconv::ExpertPrecision::BFloat16);
}
TEST(DynamicExpertPrecision, Float16ExpertsComputeTheRoundedKernelsInEveryStrategy) {
  check_expert_precision<float, Eigen::half>(dynconv::ExpertPrecision::Float16);
}

TEST(DynamicExpertPrecision, Float32IsTheDefaultAndWidensBackWithTheRoundingKept) {
  DynamicConv2d<float> layer(DynamicConv2dOptions(8, 8, 3));
  EXPECT_EQ(layer.expert_precision(), dynconv::ExpertPrecision::Float32);
  randomize(layer, 3);
  const Tensor5<float> want = rounded<Eigen::bfloat16>(layer.weight());
  layer.set_expert_precision(dynconv::ExpertPrecision::BFloat16);
  layer.set_expert_precision(dynconv::ExpertPrecision::Float32);
  const Tensor5<float> back = layer.weight();
  for (Index i = 0; i < back.size(); ++i) ASSERT_EQ(back.data()[i], want.data()[i]) << i;
  // set_weight in a low precision rounds what it stores.
  layer.set_expert_precision(dynconv::ExpertPrecision::Float16);
  Tensor5<float> w = layer.weight();
  w.data()[5] = 1.f + 1.f / 4096;
  layer.set_weight(w);
  EXPECT_EQ(layer.weight().data()[5], 1.f);
}

TEST(DynamicExpertPrecision, Float16RefusesAValueBeyondItsRangeAndKeepsTheLayer) {
  DynamicConv2d<float> layer(DynamicConv2dOptions(4, 4, 1).kernels(3).name("blocks.2.conv"));
  Tensor5<float> w = layer.weight();
  w(2, 1, 3, 0, 0) = -70000.f;
  layer.set_weight(w);
  try {
    layer.set_expert_precision(dynconv::ExpertPrecision::Float16);
    ADD_FAILURE() << "no error";
  } catch (const dynconv::OptionsError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("blocks.2.conv"), std::string::npos) << what;
    EXPECT_NE(what.find("kernel 2 holds -70000"), std::string::npos) << what;
    EXPECT_NE(what.find("beyond float16's range (magnitudes up to 65504)"), std::string::npos) << what;
  }
  EXPECT_EQ(layer.expert_precision(), dynconv::ExpertPrecision::Float32);
  EXPECT_EQ(layer.weight()(2, 1, 3, 0, 0), -70000.f);
  layer.set_expert_precision(dynconv::ExpertPrecision::BFloat16);  // float's range: fine
  EXPECT_EQ(layer.weight()(2, 1, 3, 0, 0), -70144.f);              // 0x1.12p16, rounded
}
