// Conv2d against a naive direct-loop reference, over a named table of geometries, with every
// algorithm that supports the geometry forced, in float and double.
#include <dynconv/conv2d.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "reference.hpp"

namespace {

using dynconv::ConvAlgorithm;
using dynconv::Index;

struct Case {
  const char* name;
  Index n, cin, cout, h, w, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  bool bias;
};

// clang-format off
const Case kCases[] = {
  // name                     n cin cout  h   w kh kw sh sw ph pw dh dw  g  bias
  {"pw_1x1_basic",            1,  8, 16,  7,  7, 1, 1, 1, 1, 0, 0, 1, 1, 1, true},
  {"pw_1x1_nobias_batch3",    3, 16,  8,  5,  6, 1, 1, 1, 1, 0, 0, 1, 1, 1, false},
  {"pw_1x1_stride2",          2, 12, 24,  9,  9, 1, 1, 2, 2, 0, 0, 1, 1, 1, true},
  {"pw_1x1_stride2x1",        1,  6, 10,  8,  7, 1, 1, 2, 1, 0, 0, 1, 1, 1, true},
  {"pw_1x1_groups2",          2,  8, 12,  6,  5, 1, 1, 1, 1, 0, 0, 1, 1, 2, true},
  {"pw_1x1_groups4_stride2",  1, 16,  8,  7,  9, 1, 1, 2, 2, 0, 0, 1, 1, 4, false},
  {"pw_1x1_pad1",             1,  4,  6,  5,  5, 1, 1, 1, 1, 1, 1, 1, 1, 1, true},
  {"pw_1x1_1pixel",           4, 32, 16,  1,  1, 1, 1, 1, 1, 0, 0, 1, 1, 1, true},
  {"c3x3_pad1",               1,  3,  8,  8,  8, 3, 3, 1, 1, 1, 1, 1, 1, 1, true},
  {"c3x3_pad0",               2,  4,  6,  7,  9, 3, 3, 1, 1, 0, 0, 1, 1, 1, true},
  {"c3x3_stride2_pad1",       1,  8, 16, 12, 12, 3, 3, 2, 2, 1, 1, 1, 1, 1, false},
  {"c3x3_stride2_odd",        2,  5,  7, 11, 13, 3, 3, 2, 2, 1, 1, 1, 1, 1, true},
  {"c3x3_dil2_pad2",          1,  6,  6, 10, 10, 3, 3, 1, 1, 2, 2, 2, 2, 1, true},
  {"c3x3_dil2_stride2",       3,  4,  8, 13, 11, 3, 3, 2, 2, 2, 2, 2, 2, 1, false},
  {"c3x3_groups2",            2,  8,  8,  9,  9, 3, 3, 1, 1, 1, 1, 1, 1, 2, true},
  {"c3x3_groups4_stride2",    1, 16, 32, 10, 10, 3, 3, 2, 2, 1, 1, 1, 1, 4, true},
  {"c3x3_pad3",               1,  2,  3,  4,  5, 3, 3, 1, 1, 3, 3, 1, 1, 1, true},
  {"c3x3_batch4",             4,  3,  5,  6,  6, 3, 3, 1, 1, 1, 1, 1, 1, 1, true},
  {"c3x3_nonsquare_in",       1,  4,  4, 15,  6, 3, 3, 1, 1, 1, 1, 1, 1, 1, false},
  {"c3x3_pad_h_only",         1,  3,  4,  7,  7, 3, 3, 1, 1, 1, 0, 1, 1, 1, true},
  {"c3x3_exact_fit",          2,  3,  2,  3,  3, 3, 3, 1, 1, 0, 0, 1, 1, 1, true},
  {"c5x5_pad2",               1,  4,  8, 10, 10, 5, 5, 1, 1, 2, 2, 1, 1, 1, true},
  {"c5x5_stride2_pad2",       2,  6,  4, 11, 12, 5, 5, 2, 2, 2, 2, 1, 1, 1, false},
  {"c5x5_dil2",               1,  3,  3, 14, 14, 5, 5, 1, 1, 4, 4, 2, 2, 1, true},
  {"c5x5_groups2_pad1",       1,  4,  6,  9,  8, 5, 5, 1, 1, 1, 1, 1, 1, 2, true},
  {"c7x7_stem_stride2",       1,  3, 16, 32, 32, 7, 7, 2, 2, 3, 3, 1, 1, 1, false},
  {"c7x7_pad0",               2,  2,  4, 10,  9, 7, 7, 1, 1, 0, 0, 1, 1, 1, true},
  {"c7x7_dil2_pad3",          1,  2,  2, 16, 16, 7, 7, 1, 1, 3, 3, 2, 2, 1, true},
  {"c1x3_pad_w",              1,  4,  5,  6,  8, 1, 3, 1, 1, 0, 1, 1, 1, 1, true},
  {"c3x1_stride2x1",          2,  4,  4,  9,  5, 3, 1, 2, 1, 1, 0, 1, 1, 1, false},
  {"c3x5_asym",               1,  3,  6,  9, 13, 3, 5, 1, 2, 1, 2, 1, 1, 1, true},
  {"c1x7_dil_w2",             1,  2,  4,  5, 20, 1, 7, 1, 1, 0, 3, 1, 2, 1, true},
  {"c2x2_stride2",            1,  4,  8,  8,  8, 2, 2, 2, 2, 0, 0, 1, 1, 1, true},
  {"dw3x3",                   1,  8,  8,  9,  9, 3, 3, 1, 1, 1, 1, 1, 1, 8, true},
  {"dw3x3_stride2_batch2",    2, 16, 16, 10, 11, 3, 3, 2, 2, 1, 1, 1, 1, 16, false},
  {"dw3x3_dil2",              1, 12, 12, 12, 12, 3, 3, 1, 1, 2, 2, 2, 2, 12, true},
  {"dw5x5_pad2",              3, 10, 10,  8,  8, 5, 5, 1, 1, 2, 2, 1, 1, 10, true},
  {"dw5x5_stride2_nonsquare", 1,  6,  6, 13,  7, 5, 5, 2, 2, 2, 2, 1, 1, 6, false},
  {"dw7x7_pad3",              1,  5,  5, 10, 10, 7, 7, 1, 1, 3, 3, 1, 1, 5, true},
  {"dw3x3_pad0_batch4",       4,  4,  4,  5,  5, 3, 3, 1, 1, 0, 0, 1, 1, 4, true},
  {"dw_multiplier2",          1,  4,  8,  6,  6, 3, 3, 1, 1, 1, 1, 1, 1, 4, true},
  {"dw1x1",                   1,  7,  7,  4,  4, 1, 1, 1, 1, 0, 0, 1, 1, 7, true},
  {"dw3x3_stride2x1_pad1x0",  2,  6,  6,  9,  8, 3, 3, 2, 1, 1, 0, 1, 1, 6, true},
  {"mbv2_expand_1x1",         1, 24, 144, 14, 14, 1, 1, 1, 1, 0, 0, 1, 1, 1, false},
  {"mbv2_dw_stride2",         1, 96, 96, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1, 96, false},
  {"resnet_3x3_64",           1, 64, 64,  8,  8, 3, 3, 1, 1, 1, 1, 1, 1, 1, false},
  {"resnet_down_1x1_s2",      2, 32, 64,  8,  8, 1, 1, 2, 2, 0, 0, 1, 1, 1, false},
};
// clang-format on

struct Param {
  Case c;
  ConvAlgorithm algo;
};

void PrintTo(const Param& p, std::ostream* os) {
  *os << p.c.name << " with " << dynconv::algorithm_name(p.algo);
}

std::vector<Param> all_params() {
  std::vector<Param> out;
  for (const Case& c : kCases) {
    dynconv::ConvGeometry g;
    g.in_channels = c.cin;
    g.out_channels = c.cout;
    g.groups = c.groups;
    g.kernel_h = c.kh;
    g.kernel_w = c.kw;
    g.pad_h = c.ph;
    g.pad_w = c.pw;
    for (ConvAlgorithm a : {ConvAlgorithm::Auto, ConvAlgorithm::Pointwise,
                            ConvAlgorithm::Depthwise, ConvAlgorithm::Im2colGemm})
      if (dynconv::algorithm_supports(a, g)) out.push_back({c, a});
  }
  return out;
}

dynconv::Conv2dOptions options_of(const Case& c, ConvAlgorithm algo) {
  return dynconv::Conv2dOptions(c.cin, c.cout, dynconv::Pair{c.kh, c.kw})
      .stride(c.sh, c.sw)
      .padding(c.ph, c.pw)
      .dilation(c.dh, c.dw)
      .groups(c.groups)
      .bias(c.bias)
      .algorithm(algo);
}

class ConvReference : public ::testing::TestWithParam<Param> {
 protected:
  template <typename T>
  void check() {
    const Case& c = GetParam().c;
    dynconv::Conv2d<T> conv(options_of(c, GetParam().algo));
    if (GetParam().algo != ConvAlgorithm::Auto) {
      ASSERT_EQ(conv.algorithm(), GetParam().algo);
    }
    dynconv::Tensor4<T> w(c.cout, c.cin / c.groups, c.kh, c.kw);
    ref::fill_random(w, 1);
    conv.set_weight(w);
    dynconv::Tensor1<T> b(c.cout);
    ref::fill_random(b, 2);
    if (c.bias) conv.set_bias(b);
    dynconv::Tensor4<T> x(c.n, c.cin, c.h, c.w);
    ref::fill_random(x, 3);

    ref::Conv p{c.sh, c.sw, c.ph, c.pw, c.dh, c.dw, c.groups};
    const dynconv::Tensor4<double> expected = ref::conv2d(x, w, c.bias ? b.data() : nullptr, p);
    const dynconv::Tensor4<T> y = conv.forward(x);
    ASSERT_EQ(dynconv::shape_str(y.dimensions()), dynconv::shape_str(expected.dimensions()));
    EXPECT_LE(ref::rel_error(y, expected), ref::tolerance<T>()) << "NCHW, " << sizeof(T) * 8 << "-bit";

    // The NHWC entry point computes the same numbers.
    const dynconv::Tensor4<T> y_nhwc = dynconv::nhwc_to_nchw(conv.forward_nhwc(dynconv::nchw_to_nhwc(x)));
    EXPECT_LE(ref::rel_error(y_nhwc, expected), ref::tolerance<T>()) << "NHWC";
    // The network path: threads, fused activation and residual.
    ref::check_network_path(conv, x);
  }
};

TEST_P(ConvReference, Float) { check<float>(); }
TEST_P(ConvReference, Double) { check<double>(); }

INSTANTIATE_TEST_SUITE_P(Table, ConvReference, ::testing::ValuesIn(all_params()),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           return std::string(info.param.c.name) + "_" +
                                  dynconv::algorithm_name(info.param.algo);
                         });

TEST(ConvTable, CoversTheRequiredSpace) {
  // The table itself is part of the contract: at least 40 geometries, each algorithm used.
  EXPECT_GE(std::size(kCases), 40u);
  int per_algo[4] = {0, 0, 0, 0};
  for (const Param& p : all_params()) ++per_algo[static_cast<int>(p.algo)];
  EXPECT_GE(per_algo[static_cast<int>(ConvAlgorithm::Pointwise)], 8);
  EXPECT_GE(per_algo[static_cast<int>(ConvAlgorithm::Depthwise)], 8);
  EXPECT_EQ(per_algo[static_cast<int>(ConvAlgorithm::Im2colGemm)], static_cast<int>(std::size(kCases)));
}

TEST(ConvGolden, HandComputed3x3) {
  // 1 channel, 3x3 input 1..9, 3x3 kernel of ones, padding 1: each output is the sum of the
  // neighbourhood; the centre is 45, the corner (0,0) is 1+2+4+5 = 12.
  dynconv::Conv2d<float> conv(dynconv::Conv2dOptions(1, 1, 3).padding(1).bias(false));
  dynconv::Tensor4<float> w(1, 1, 3, 3);
  w.setConstant(1.f);
  conv.set_weight(w);
  dynconv::Tensor4<float> x(1, 1, 3, 3);
  for (int i = 0; i < 9; ++i) x.data()[i] = static_cast<float>(i + 1);
  const auto y = conv.forward(x);
  EXPECT_FLOAT_EQ(y(0, 0, 1, 1), 45.f);
  EXPECT_FLOAT_EQ(y(0, 0, 0, 0), 12.f);
  EXPECT_FLOAT_EQ(y(0, 0, 2, 2), 5.f + 6.f + 8.f + 9.f);
  EXPECT_FLOAT_EQ(y(0, 0, 0, 1), 1.f + 2.f + 3.f + 4.f + 5.f + 6.f);
}

TEST(ConvGolden, HandComputedStridedGroups) {
  // 2 groups, 1x1 kernels, stride 2: out channel 0 = 2 * in channel 0, out 1 = -1 * in 1 + 0.5.
  dynconv::Conv2d<double> conv(dynconv::Conv2dOptions(2, 2, 1).groups(2).stride(2));
  dynconv::Tensor4<double> w(2, 1, 1, 1);
  w.setValues({{{{2.0}}}, {{{-1.0}}}});
  conv.set_weight(w);
  dynconv::Tensor1<double> b(2);
  b.setValues({0.0, 0.5});
  conv.set_bias(b);
  dynconv::Tensor4<double> x(1, 2, 3, 3);
  for (int i = 0; i < 18; ++i) x.data()[i] = i;
  const auto y = conv.forward(x);
  ASSERT_EQ(y.dimension(2), 2);
  EXPECT_DOUBLE_EQ(y(0, 0, 1, 1), 2.0 * 8);           // x(0,0,2,2) = 8
  EXPECT_DOUBLE_EQ(y(0, 1, 0, 1), -1.0 * 11 + 0.5);   // x(0,1,0,2) = 9 + 2
}

TEST(ConvBatch, ZeroSamplesGiveAnEmptyBatch) {
  dynconv::Conv2d<float> conv(dynconv::Conv2dOptions(3, 4, 3).padding(1));
  dynconv::Tensor4<float> x(0, 3, 5, 5);
  const auto y = conv.forward(x);
  EXPECT_EQ(y.dimension(0), 0);
  EXPECT_EQ(y.dimension(1), 4);
}

}  // namespace
