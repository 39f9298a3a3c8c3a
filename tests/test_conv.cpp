// Conv2d against a naive direct-loop reference, over a named table of geometries, with every
// algorithm that supports the geometry forced, in float and double: the one-off forward on NCHW
// and on NHWC tensors, and the network path (Module::run on a Context with fused PostOps,
// 1 to 3 threads). The per-side padding cases (top, bottom, left, right) and the non-square
// dilated kernels also run through DynamicConv2d, with every algorithm and mixing strategy
// that supports them, against the naive per-sample reference.
#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "reference.hpp"

namespace {

using dynconv::ConvAlgorithm;
using dynconv::Index;
using dynconv::MixStrategy;
using dynconv::Tensor2;
using dynconv::Tensor4;

struct Case {
  const char* name;
  Index n, cin, cout, h, w, kh, kw, sh, sw;
  Index pt, pb, pl, pr;  // zero padding per side: top, bottom, left, right
  Index dh, dw, groups;
  bool bias;
};

// clang-format off
const Case kCases[] = {
  // name                     n cin cout   h    w  kh  kw  sh  sw  pt  pb  pl  pr  dh  dw    g  bias
  {"pw_1x1_basic",            1,  8,  16,  7,   7,  1,  1,  1,  1,  0,  0,  0,  0,  1,  1,   1, true},
  {"pw_1x1_nobias_batch3",    3, 16,   8,  5,   6,  1,  1,  1,  1,  0,  0,  0,  0,  1,  1,   1, false},
  {"pw_1x1_stride2",          2, 12,  24,  9,   9,  1,  1,  2,  2,  0,  0,  0,  0,  1,  1,   1, true},
  {"pw_1x1_stride2x1",        1,  6,  10,  8,   7,  1,  1,  2,  1,  0,  0,  0,  0,  1,  1,   1, true},
  {"pw_1x1_groups2",          2,  8,  12,  6,   5,  1,  1,  1,  1,  0,  0,  0,  0,  1,  1,   2, true},
  {"pw_1x1_groups4_stride2",  1, 16,   8,  7,   9,  1,  1,  2,  2,  0,  0,  0,  0,  1,  1,   4, false},
  {"pw_1x1_pad1",             1,  4,   6,  5,   5,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,   1, true},
  {"pw_1x1_1pixel",           4, 32,  16,  1,   1,  1,  1,  1,  1,  0,  0,  0,  0,  1,  1,   1, true},
  {"pw_1x1_1pixel_batch6",    6, 24,  12,  1,   1,  1,  1,  1,  1,  0,  0,  0,  0,  1,  1,   1, true},
  {"pw_1x1_1pixel_40ch",      3, 72,  40,  1,   1,  1,  1,  1,  1,  0,  0,  0,  0,  1,  1,   1, false},
  {"c3x3_pad1",               1,  3,   8,  8,   8,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, true},
  {"c3x3_pad0",               2,  4,   6,  7,   9,  3,  3,  1,  1,  0,  0,  0,  0,  1,  1,   1, true},
  {"c3x3_stride2_pad1",       1,  8,  16, 12,  12,  3,  3,  2,  2,  1,  1,  1,  1,  1,  1,   1, false},
  {"c3x3_stride2_odd",        2,  5,   7, 11,  13,  3,  3,  2,  2,  1,  1,  1,  1,  1,  1,   1, true},
  {"c3x3_dil2_pad2",          1,  6,   6, 10,  10,  3,  3,  1,  1,  2,  2,  2,  2,  2,  2,   1, true},
  {"c3x3_dil2_stride2",       3,  4,   8, 13,  11,  3,  3,  2,  2,  2,  2,  2,  2,  2,  2,   1, false},
  {"c3x3_groups2",            2,  8,   8,  9,   9,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   2, true},
  {"c3x3_groups4_stride2",    1, 16,  32, 10,  10,  3,  3,  2,  2,  1,  1,  1,  1,  1,  1,   4, true},
  {"c3x3_pad3",               1,  2,   3,  4,   5,  3,  3,  1,  1,  3,  3,  3,  3,  1,  1,   1, true},
  {"c3x3_batch4",             4,  3,   5,  6,   6,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, true},
  {"c3x3_nonsquare_in",       1,  4,   4, 15,   6,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, false},
  {"c3x3_pad_h_only",         1,  3,   4,  7,   7,  3,  3,  1,  1,  1,  1,  0,  0,  1,  1,   1, true},
  {"c3x3_exact_fit",          2,  3,   2,  3,   3,  3,  3,  1,  1,  0,  0,  0,  0,  1,  1,   1, true},
  {"c5x5_pad2",               1,  4,   8, 10,  10,  5,  5,  1,  1,  2,  2,  2,  2,  1,  1,   1, true},
  {"c5x5_stride2_pad2",       2,  6,   4, 11,  12,  5,  5,  2,  2,  2,  2,  2,  2,  1,  1,   1, false},
  {"c5x5_dil2",               1,  3,   3, 14,  14,  5,  5,  1,  1,  4,  4,  4,  4,  2,  2,   1, true},
  {"c5x5_groups2_pad1",       1,  4,   6,  9,   8,  5,  5,  1,  1,  1,  1,  1,  1,  1,  1,   2, true},
  {"c7x7_stem_stride2",       1,  3,  16, 32,  32,  7,  7,  2,  2,  3,  3,  3,  3,  1,  1,   1, false},
  {"c7x7_pad0",               2,  2,   4, 10,   9,  7,  7,  1,  1,  0,  0,  0,  0,  1,  1,   1, true},
  {"c7x7_dil2_pad3",          1,  2,   2, 16,  16,  7,  7,  1,  1,  3,  3,  3,  3,  2,  2,   1, true},
  {"c1x3_pad_w",              1,  4,   5,  6,   8,  1,  3,  1,  1,  0,  0,  1,  1,  1,  1,   1, true},
  {"c3x1_stride2x1",          2,  4,   4,  9,   5,  3,  1,  2,  1,  1,  1,  0,  0,  1,  1,   1, false},
  {"c3x5_asym",               1,  3,   6,  9,  13,  3,  5,  1,  2,  1,  1,  2,  2,  1,  1,   1, true},
  {"c1x7_dil_w2",             1,  2,   4,  5,  20,  1,  7,  1,  1,  0,  0,  3,  3,  1,  2,   1, true},
  {"c2x2_stride2",            1,  4,   8,  8,   8,  2,  2,  2,  2,  0,  0,  0,  0,  1,  1,   1, true},
  {"dw3x3",                   1,  8,   8,  9,   9,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   8, true},
  {"dw3x3_stride2_batch2",    2, 16,  16, 10,  11,  3,  3,  2,  2,  1,  1,  1,  1,  1,  1,  16, false},
  {"dw3x3_dil2",              1, 12,  12, 12,  12,  3,  3,  1,  1,  2,  2,  2,  2,  2,  2,  12, true},
  {"dw5x5_pad2",              3, 10,  10,  8,   8,  5,  5,  1,  1,  2,  2,  2,  2,  1,  1,  10, true},
  {"dw5x5_stride2_nonsquare", 1,  6,   6, 13,   7,  5,  5,  2,  2,  2,  2,  2,  2,  1,  1,   6, false},
  {"dw7x7_pad3",              1,  5,   5, 10,  10,  7,  7,  1,  1,  3,  3,  3,  3,  1,  1,   5, true},
  {"dw3x3_pad0_batch4",       4,  4,   4,  5,   5,  3,  3,  1,  1,  0,  0,  0,  0,  1,  1,   4, true},
  {"dw_multiplier2",          1,  4,   8,  6,   6,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   4, true},
  {"dw1x1",                   1,  7,   7,  4,   4,  1,  1,  1,  1,  0,  0,  0,  0,  1,  1,   7, true},
  {"dw3x3_stride2x1_pad1x0",  2,  6,   6,  9,   8,  3,  3,  2,  1,  1,  1,  0,  0,  1,  1,   6, true},
  {"mbv2_expand_1x1",         1, 24, 144, 14,  14,  1,  1,  1,  1,  0,  0,  0,  0,  1,  1,   1, false},
  {"mbv2_dw_stride2",         1, 96,  96, 14,  14,  3,  3,  2,  2,  1,  1,  1,  1,  1,  1,  96, false},
  {"resnet_3x3_64",           1, 64,  64,  8,   8,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, false},
  {"resnet_down_1x1_s2",      2, 32,  64,  8,   8,  1,  1,  2,  2,  0,  0,  0,  0,  1,  1,   1, false},
  // Winograd F(4x4, 3x3) from 484 output pixels: partial tiles on both axes, channel counts off
  // the 16-lane vectors (tails), 484 pixels exactly, a batch, ResNet's 64 channels.
  {"wino_3x3_pad1_odd",       2, 20,  24, 23,  25,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, true},
  {"wino_3x3_pad0",           1, 16,  33, 24,  26,  3,  3,  1,  1,  0,  0,  0,  0,  1,  1,   1, false},
  {"wino_3x3_484px_batch3",   3,  7,  17, 22,  22,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, true},
  {"wino_resnet_3x3_64",      1, 64,  64, 24,  24,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, false},
  // Smaller outputs run Winograd over a batch of at least 32 tiles, the GEMMs taking several
  // samples' tiles: 10x13 (12 tiles, partial on both axes) x 3, 7x7 (4 tiles) x 8 exactly (32),
  // 8x8 x 8 with a GEMM depth of 260 (two depth blocks of the kept transform) and 40 channels
  // (on 2 and 3 threads, tasks of whole panels start at a channel offset inside it).
  {"wino_batch3_10x13",       3, 20,  40, 10,  13,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, true},
  {"wino_batch8_7x7_pad0",    8, 33,  17,  9,   9,  3,  3,  1,  1,  0,  0,  0,  0,  1,  1,   1, false},
  {"wino_batch8_deep_8x8",    8,260,  40,  8,   8,  3,  3,  1,  1,  1,  1,  1,  1,  1,  1,   1, true},
};

// Per-side padding and non-square kernels with dilation. These also run through DynamicConv2d
// (DynamicPerSide below).
const Case kPerSideCases[] = {
  // name                          n cin cout   h    w  kh  kw  sh  sw  pt  pb  pl  pr  dh  dw    g  bias
  {"c2x2_same_pad0101",            2,  4,   6,  7,   8,  2,  2,  1,  1,  0,  1,  0,  1,  1,  1,   1, true},
  {"c2x2_stride2_pad0101",         1,  3,   5,  9,   8,  2,  2,  2,  2,  0,  1,  0,  1,  1,  1,   1, true},
  {"c3x3_pad2013",                 2,  4,   6,  6,   7,  3,  3,  1,  1,  2,  0,  1,  3,  1,  1,   1, true},
  {"c3x3_stride2_pad2013",         1,  5,   4,  9,  10,  3,  3,  2,  2,  2,  0,  1,  3,  1,  1,   1, false},
  {"c3x2_dil23_pad2013",           2,  4,   6,  8,   9,  3,  2,  1,  1,  2,  0,  1,  3,  2,  3,   1, true},
  {"c2x5_dil21_pad1122",           1,  3,   4,  7,  11,  2,  5,  1,  1,  1,  1,  2,  2,  2,  1,   1, true},
  {"c5x3_dil23_stride21",          2,  4,   4, 15,   9,  5,  3,  2,  1,  4,  4,  3,  3,  2,  3,   1, false},
  {"c1x3_dil3_pad0003",            1,  4,   6,  5,   9,  1,  3,  1,  1,  0,  0,  0,  3,  1,  3,   1, true},
  // The last two output rows see bottom padding only (bias alone).
  {"c2x2_pad0300",                 1,  3,   4,  4,   5,  2,  2,  1,  1,  0,  3,  0,  0,  1,  1,   1, true},
  // A 1x1 kernel padded on the end sides: Im2colGemm only.
  {"c1x1_pad0102",                 2,  6,   4,  5,   6,  1,  1,  1,  1,  0,  1,  0,  2,  1,  1,   1, true},
  {"c3x3_groups2_pad1002",         2,  8,   6,  7,   7,  3,  3,  1,  1,  1,  0,  0,  2,  1,  1,   2, true},
  // Winograd with padding on start and end sides (22x23 output, cropped last tiles).
  {"wino_3x3_pad2013",             2,  5,  20, 22,  21,  3,  3,  1,  1,  2,  0,  1,  3,  1,  1,   1, true},
  // 2x2 plus the end padding is exactly the kernel: one output pixel.
  {"c3x3_exact_fit_pad0101",       1,  3,   4,  2,   2,  3,  3,  1,  1,  0,  1,  0,  1,  1,  1,   1, true},
  {"dw3x3_pad2013",                2,  8,   8,  6,   7,  3,  3,  1,  1,  2,  0,  1,  3,  1,  1,   8, true},
  {"dw2x2_stride2_pad0101",        1, 12,  12,  9,   8,  2,  2,  2,  2,  0,  1,  0,  1,  1,  1,  12, false},
  {"dw3x2_dil23_pad1021",          2,  6,   6,  9,  10,  3,  2,  1,  1,  1,  0,  2,  1,  2,  3,   6, true},
  // 21 channels: the depthwise loop's packet blocks, single packets and scalar tail.
  {"dw5x3_dil21_stride12_pad4022", 1, 21,  21, 11,   9,  5,  3,  1,  2,  4,  0,  2,  2,  2,  1,  21, true},
  {"dw2x2_pad0300",                1,  5,   5,  4,   4,  2,  2,  1,  1,  0,  3,  0,  0,  1,  1,   5, true},
};
// clang-format on

/// Every Conv2d case: the table, then the per-side cases.
const std::vector<Case>& conv_cases() {
  static const std::vector<Case> all = [] {
    std::vector<Case> v(std::begin(kCases), std::end(kCases));
    v.insert(v.end(), std::begin(kPerSideCases), std::end(kPerSideCases));
    return v;
  }();
  return all;
}

/// The geometry of a case, built here (not by the options) to decide which algorithms apply.
dynconv::ConvGeometry geometry_of(const Case& c) {
  dynconv::ConvGeometry g;
  g.in_channels = c.cin;
  g.out_channels = c.cout;
  g.groups = c.groups;
  g.kernel_h = c.kh;
  g.kernel_w = c.kw;
  g.stride_h = c.sh;
  g.stride_w = c.sw;
  g.pad_h = c.pt;
  g.pad_h_end = c.pb;
  g.pad_w = c.pl;
  g.pad_w_end = c.pr;
  g.dilation_h = c.dh;
  g.dilation_w = c.dw;
  return g;
}

ref::Conv ref_conv(const Case& c) { return {c.sh, c.sw, c.pt, c.pb, c.pl, c.pr, c.dh, c.dw, c.groups}; }

struct Param {
  Case c;
  ConvAlgorithm algo;
};

void PrintTo(const Param& p, std::ostream* os) {
  *os << p.c.name << " with " << dynconv::algorithm_name(p.algo);
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::string(info.param.c.name) + "_" + dynconv::algorithm_name(info.param.algo);
}

std::vector<Param> params_of(const std::vector<Case>& cases, bool with_auto) {
  std::vector<Param> out;
  for (const Case& c : cases) {
    const dynconv::ConvGeometry g = geometry_of(c);
    for (ConvAlgorithm a : {ConvAlgorithm::Auto, ConvAlgorithm::Pointwise, ConvAlgorithm::Depthwise,
                            ConvAlgorithm::Im2colGemm, ConvAlgorithm::Winograd})
      if ((with_auto || a != ConvAlgorithm::Auto) && dynconv::algorithm_supports(a, g)) out.push_back({c, a});
  }
  return out;
}

std::vector<Param> all_params() { return params_of(conv_cases(), true); }

/// The options of a case, padding given per side.
template <typename Options>
Options options_of(const Case& c, ConvAlgorithm algo) {
  return Options(c.cin, c.cout, dynconv::Pair{c.kh, c.kw})
      .stride(c.sh, c.sw)
      .padding(c.pt, c.pb, c.pl, c.pr)
      .dilation(c.dh, c.dw)
      .groups(c.groups)
      .bias(c.bias)
      .algorithm(algo);
}

/// The per-side padding reaches the geometry the layer runs with.
void expect_padding(const dynconv::ConvGeometry& g, const Case& c) {
  EXPECT_EQ(g.pad_h, c.pt);
  EXPECT_EQ(g.pad_h_end, c.pb);
  EXPECT_EQ(g.pad_w, c.pl);
  EXPECT_EQ(g.pad_w_end, c.pr);
}

class ConvReference : public ::testing::TestWithParam<Param> {
 protected:
  template <typename T>
  void check() {
    const Case& c = GetParam().c;
    dynconv::Conv2d<T> conv(options_of<dynconv::Conv2dOptions>(c, GetParam().algo));
    if (GetParam().algo != ConvAlgorithm::Auto) {
      ASSERT_EQ(conv.algorithm(), GetParam().algo);
    }
    expect_padding(conv.geometry(), c);
    Tensor4<T> w(c.cout, c.cin / c.groups, c.kh, c.kw);
    ref::fill_random(w, 1);
    conv.set_weight(w);
    dynconv::Tensor1<T> b(c.cout);
    ref::fill_random(b, 2);
    if (c.bias) conv.set_bias(b);
    Tensor4<T> x(c.n, c.cin, c.h, c.w);
    ref::fill_random(x, 3);

    const Tensor4<double> expected = ref::conv2d(x, w, c.bias ? b.data() : nullptr, ref_conv(c));
    const Tensor4<T> y = conv.forward(x);
    ASSERT_EQ(dynconv::shape_str(y.dimensions()), dynconv::shape_str(expected.dimensions()));
    EXPECT_LE(ref::rel_error(y, expected), ref::tolerance<T>()) << "NCHW, " << sizeof(T) * 8 << "-bit";

    // The NHWC entry point computes the same numbers.
    const dynconv::NhwcTensor<T> y_nhwc = conv.forward(dynconv::nchw_to_nhwc(x));
    EXPECT_LE(ref::rel_error(dynconv::nhwc_to_nchw(y_nhwc), expected), ref::tolerance<T>()) << "NHWC";
    // The network path: threads, fused activation and residual.
    ref::check_network_path(conv, x, expected);
  }
};

TEST_P(ConvReference, Float) { check<float>(); }
TEST_P(ConvReference, Double) { check<double>(); }

INSTANTIATE_TEST_SUITE_P(Table, ConvReference, ::testing::ValuesIn(all_params()), param_name);

TEST(ConvTable, CoversTheRequiredSpace) {
  // The table itself is part of the contract: at least 40 geometries, each algorithm used.
  EXPECT_GE(std::size(kCases), 40u);
  int per_algo[5] = {0, 0, 0, 0, 0};
  // Outputs of at least 484 pixels run Winograd sample by sample; smaller ones over the batch's
  // tiles when there are enough, else Im2colGemm.
  int winograd_runs = 0, batch_runs = 0;
  for (const Param& p : all_params()) {
    ++per_algo[static_cast<int>(p.algo)];
    const dynconv::ConvGeometry g = geometry_of(p.c);
    const Index oh = g.out_h(p.c.h), ow = g.out_w(p.c.w);
    const bool runs = p.algo == ConvAlgorithm::Winograd &&
                      dynconv::detail::run_algorithm(p.algo, oh, ow, p.c.n) == ConvAlgorithm::Winograd;
    winograd_runs += runs;
    batch_runs += runs && dynconv::detail::winograd_spans_samples(oh, ow);
  }
  EXPECT_GE(per_algo[static_cast<int>(ConvAlgorithm::Pointwise)], 8);
  EXPECT_GE(per_algo[static_cast<int>(ConvAlgorithm::Depthwise)], 8);
  EXPECT_GE(winograd_runs, 8);
  EXPECT_GE(batch_runs, 3);
  EXPECT_EQ(per_algo[static_cast<int>(ConvAlgorithm::Im2colGemm)], static_cast<int>(conv_cases().size()));
  // The per-side cases are asymmetric or dilated non-square, and reach the depthwise loop too.
  int per_side_depthwise = 0;
  for (const Case& c : kPerSideCases) {
    EXPECT_TRUE(c.pt != c.pb || c.pl != c.pr || (c.kh != c.kw && (c.dh != 1 || c.dw != 1))) << c.name;
    per_side_depthwise += dynconv::algorithm_supports(ConvAlgorithm::Depthwise, geometry_of(c));
  }
  EXPECT_GE(per_side_depthwise, 4);
}

// The rule of run_algorithm at its edges: Winograd per sample from 484 output pixels; below,
// over a batch of at least 32 tiles (4x4 outputs) sharing one kernel; else Im2colGemm.
TEST(WinogradSamples, BatchThreshold) {
  using dynconv::detail::run_algorithm;
  const ConvAlgorithm W = ConvAlgorithm::Winograd, G = ConvAlgorithm::Im2colGemm;
  EXPECT_EQ(run_algorithm(W, 22, 22, 1), W);   // 484 pixels
  EXPECT_EQ(run_algorithm(W, 21, 23, 1), G);   // 483 pixels, one sample
  EXPECT_EQ(run_algorithm(W, 7, 7, 7), G);     // 4 tiles x 7 = 28
  EXPECT_EQ(run_algorithm(W, 7, 7, 8), W);     // 32
  EXPECT_EQ(run_algorithm(W, 4, 4, 31), G);    // 1 tile x 31
  EXPECT_EQ(run_algorithm(W, 4, 4, 32), W);
  EXPECT_EQ(run_algorithm(W, 5, 4, 16), W);    // 2 tiles (a partial row) x 16
  EXPECT_EQ(run_algorithm(W, 10, 13, 2), G);   // 12 tiles x 2 = 24
  EXPECT_EQ(run_algorithm(W, 10, 13, 3), W);   // 36
  EXPECT_EQ(run_algorithm(G, 7, 7, 8), G);     // only a Winograd layer changes
}

// Winograd over several samples (a static layer's batch of small images): blocks of tile rows
// that start and end inside samples (block_rows forced from 1 to all), the epilogue (ReLU,
// residual) and the channel sums (PostOps::means) cut at each sample's edge, the whole
// transform or two channel parts reading their panels of it; then the layer's own path with
// PostOps::means on 1, 2, 3 and 7 threads (tasks of whole panels of the 72 channels; on 7 with
// AVX-512's panels of 32, three channel parts times two runs of samples).
TEST(WinogradSamples, BlocksAcrossSampleEdges) {
  using T = float;
  const Case c{"wino_blocks", 3, 20, 72, 10, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true};
  const dynconv::ConvGeometry g = geometry_of(c);
  const Index oh = g.out_h(c.h), ow = g.out_w(c.w), cin = c.cin, cout = c.cout;
  ASSERT_TRUE(dynconv::detail::winograd_spans_samples(oh, ow));
  Tensor4<T> w(cout, cin, 3, 3), x(c.n, cin, c.h, c.w);
  dynconv::Tensor1<T> bias(cout);
  ref::fill_random(w, 1);
  ref::fill_random(bias, 2);
  ref::fill_random(x, 3);
  const Tensor4<double> conv = ref::conv2d(x, w, bias.data(), ref_conv(c));
  const dynconv::NhwcTensor<T> xs = dynconv::nchw_to_nhwc(x);
  dynconv::NhwcTensor<T> residual(c.n, oh, ow, cout);
  ref::fill_random(residual.tensor(), 4);
  // want = relu(conv) + residual (NHWC), and its per-sample channel means.
  Tensor4<double> want(c.n, oh, ow, cout);
  std::vector<double> mean(static_cast<std::size_t>(c.n * cout), 0.0);
  for (Index b = 0; b < c.n; ++b)
    for (Index r = 0; r < oh; ++r)
      for (Index q = 0; q < ow; ++q)
        for (Index o = 0; o < cout; ++o) {
          want(b, r, q, o) = std::max(conv(b, o, r, q), 0.0) + static_cast<double>(residual.tensor()(b, r, q, o));
          mean[static_cast<std::size_t>(b * cout + o)] += want(b, r, q, o) / static_cast<double>(oh * ow);
        }
  // The kernel as Im2colGemm packs it ([kh][kw][Cin][Cout]), then its transform.
  std::vector<T> k(static_cast<std::size_t>(9 * cin * cout));
  for (Index o = 0; o < cout; ++o)
    for (Index i = 0; i < cin; ++i)
      for (Index t = 0; t < 9; ++t) k[static_cast<std::size_t>((t * cin + i) * cout + o)] = w(o, i, t / 3, t % 3);
  dynconv::detail::GrowBuffer<T> kept;  // 64-byte aligned, as the GEMM reads a packed kernel
  Index allocations = 0;
  T* u = kept.get(dynconv::detail::winograd_kernel_size<T>(cin, cout), allocations);
  dynconv::detail::winograd_kernel(0, cin, cin, k.data(), cout, cout, u);
  dynconv::Workspace<T> ws(1);
  const Index sample_rows = (oh + 3) / 4;  // 3 tile rows per sample
  const Index nr = dynconv::detail::gemm_kernels<T>().packed.nr, cut = nr ? nr : 16;  // a panel's start
  for (Index block_rows : {Index(1), Index(2), Index(4), Index(5), Index(100)})
    for (bool parts : {false, true}) {
      SCOPED_TRACE("block_rows " + std::to_string(block_rows) + (parts ? ", two channel parts" : ""));
      dynconv::NhwcTensor<T> y(c.n, oh, ow, cout);
      y.set_constant(T(12345));
      std::vector<double> sums(static_cast<std::size_t>(c.n * cout + 1), 0.0);
      sums.back() = 7.0;  // nothing written past the samples' sums
      const dynconv::detail::Epilogue<T> ep{bias.data(), dynconv::Activation::ReLU, residual.data(),
                                            dynconv::Activation::Identity, sums.data()};
      if (!parts) {
        dynconv::detail::winograd_slice(g, xs.data(), c.h, c.w, u, dynconv::detail::Slice{0, oh, 0, cout}, ep,
                                        y.data(), ws, 0, c.n, block_rows);
      } else {
        using dynconv::detail::Slice;
        for (const Slice& s : {Slice{0, oh, 0, cut}, Slice{0, oh, cut, cout}})
          dynconv::detail::winograd_slice(g, xs.data(), c.h, c.w, u, s, ep, y.data(), ws, 0, c.n, block_rows, cout);
      }
      EXPECT_LE(ref::rel_error(y.tensor(), want), ref::tolerance<T>()) << sample_rows << " tile rows per sample";
      double worst = 0;
      for (std::size_t i = 0; i < mean.size(); ++i) worst = std::max(worst, std::abs(sums[i] / (oh * ow) - mean[i]));
      EXPECT_LE(worst, 1e-4);
      EXPECT_EQ(sums.back(), 7.0);
    }
  // Conv2d::run: each task whole panels of the channels for all samples or a run of them,
  // with PostOps::means.
  dynconv::Conv2d<T> layer(options_of<dynconv::Conv2dOptions>(c, ConvAlgorithm::Auto));
  ASSERT_EQ(layer.algorithm(), ConvAlgorithm::Winograd);
  layer.set_weight(w);
  layer.set_bias(bias);
  for (int threads : {1, 2, 3, 7}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    dynconv::Context<T> ctx(threads);
    dynconv::NhwcTensor<T> y(c.n, oh, ow, cout);
    y.set_constant(T(12345));
    std::vector<T> means(static_cast<std::size_t>(c.n * cout + 1), T(12345));
    dynconv::PostOps<T> post{dynconv::Activation::ReLU, residual.data(), dynconv::Activation::Identity};
    post.means = means.data();
    layer.run(dynconv::Inputs<T>(xs.view()), y.view(), ctx, post);
    EXPECT_LE(ref::rel_error(y.tensor(), want), ref::tolerance<T>());
    double worst = 0;
    for (std::size_t i = 0; i < mean.size(); ++i)
      worst = std::max(worst, std::abs(static_cast<double>(means[i]) - mean[i]));
    EXPECT_LE(worst, 1e-4);
    EXPECT_EQ(means.back(), T(12345)) << "PostOps::means written past [n, Cout]";
  }
}

// ---- DynamicConv2d with per-side padding and non-square dilated kernels ----------------------

/// An input with a per-sample, per-channel offset, so that the pooled features (and so the
/// attention) differ clearly between samples.
template <typename T>
Tensor4<T> distinct_samples(const Case& c, unsigned seed) {
  Tensor4<T> x(c.n, c.cin, c.h, c.w);
  ref::fill_random(x, seed);
  Tensor2<T> offset(c.n, c.cin);
  ref::fill_random(offset, seed + 100, -2, 2);
  for (Index e = 0; e < x.size(); ++e) x.data()[e] += offset.data()[e / (c.h * c.w)];
  return x;
}

dynconv::DynamicConv2dOptions dynamic_options_of(const Case& c, ConvAlgorithm algo,
                                                  MixStrategy mix = MixStrategy::Auto) {
  return options_of<dynconv::DynamicConv2dOptions>(c, algo)
      .kernels(3)
      .min_hidden(4)  // a single ReLU unit may be dead for every sample: constant attention
      .mix_strategy(mix);
}

class DynamicPerSide : public ::testing::TestWithParam<Param> {
 protected:
  template <typename T>
  void check() {
    const Case& c = GetParam().c;
    const ConvAlgorithm algo = GetParam().algo;
    dynconv::DynamicConv2d<T> layer(dynamic_options_of(c, algo));
    ASSERT_EQ(layer.algorithm(), algo);
    expect_padding(layer.geometry(), c);
    ref::randomize_dynamic(layer, 7);
    const Tensor4<T> x = distinct_samples<T>(c, 11);

    const Tensor4<double> expected = ref::dynamic_conv2d(layer, x, ref_conv(c));
    Tensor2<T> pi;
    const Tensor4<T> y = layer.forward(x, &pi);
    ASSERT_EQ(dynconv::shape_str(y.dimensions()), dynconv::shape_str(expected.dimensions()));
    EXPECT_LE(ref::rel_error(y, expected), ref::tolerance<T>()) << "NCHW";
    const auto pi_ref = ref::attention(layer, x);
    for (Index b = 0; b < c.n; ++b) {
      for (Index k = 0; k < layer.kernels(); ++k)
        EXPECT_NEAR(pi(b, k), pi_ref[b][k], 10 * ref::tolerance<T>()) << "sample " << b << " kernel " << k;
      if (b > 0) {
        double d = 0;
        for (Index k = 0; k < layer.kernels(); ++k) d = std::max(d, std::abs(pi_ref[b][k] - pi_ref[0][k]));
        EXPECT_GT(d, 1e-3) << "sample " << b << " should get another kernel than sample 0";
      }
    }
    const dynconv::NhwcTensor<T> y_nhwc = layer.forward(dynconv::nchw_to_nhwc(x));
    EXPECT_LE(ref::rel_error(dynconv::nhwc_to_nchw(y_nhwc), expected), ref::tolerance<T>()) << "NHWC";

    // The network path with every mixing strategy that runs this geometry, forced (the same
    // parameters: the same seed).
    for (MixStrategy mix : {MixStrategy::Auto, MixStrategy::PerSample, MixStrategy::RowSplit,
                            MixStrategy::ChannelTiles, MixStrategy::FusedPacking}) {
      if (!dynconv::mix_strategy_supports(mix, algo, geometry_of(c))) continue;
      SCOPED_TRACE(dynconv::mix_strategy_name(mix));
      dynconv::DynamicConv2d<T> forced(dynamic_options_of(c, algo, mix));
      ref::randomize_dynamic(forced, 7);
      ref::check_network_path(forced, x, expected);
    }
  }
};

TEST_P(DynamicPerSide, Float) { check<float>(); }
TEST_P(DynamicPerSide, Double) { check<double>(); }

INSTANTIATE_TEST_SUITE_P(Table, DynamicPerSide,
                         ::testing::ValuesIn(params_of({std::begin(kPerSideCases), std::end(kPerSideCases)}, false)),
                         param_name);

// ---- Hand-computed values -------------------------------------------------------------------

TEST(ConvGolden, HandComputed3x3) {
  // 1 channel, 3x3 input 1..9, 3x3 kernel of ones, padding 1: each output is the sum of the
  // neighbourhood; the centre is 45, the corner (0,0) is 1+2+4+5 = 12.
  dynconv::Conv2d<float> conv(dynconv::Conv2dOptions(1, 1, 3).padding(1).bias(false));
  Tensor4<float> w(1, 1, 3, 3);
  w.setConstant(1.f);
  conv.set_weight(w);
  Tensor4<float> x(1, 1, 3, 3);
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
  Tensor4<double> w(2, 1, 1, 1);
  w.setValues({{{{2.0}}}, {{{-1.0}}}});
  conv.set_weight(w);
  dynconv::Tensor1<double> b(2);
  b.setValues({0.0, 0.5});
  conv.set_bias(b);
  Tensor4<double> x(1, 2, 3, 3);
  for (int i = 0; i < 18; ++i) x.data()[i] = i;
  const auto y = conv.forward(x);
  ASSERT_EQ(y.dimension(2), 2);
  EXPECT_DOUBLE_EQ(y(0, 0, 1, 1), 2.0 * 8);           // x(0,0,2,2) = 8
  EXPECT_DOUBLE_EQ(y(0, 1, 0, 1), -1.0 * 11 + 0.5);   // x(0,1,0,2) = 9 + 2
}

TEST(ConvGolden, HandComputedEvenKernelSamePadding) {
  // 2x2 input [1 2; 3 4], 2x2 kernel of ones, padding (top 0, bottom 1, left 0, right 1): the
  // "same" output of an even kernel; each output sums the pixels right of and below it.
  for (ConvAlgorithm algo : {ConvAlgorithm::Depthwise, ConvAlgorithm::Im2colGemm}) {
    SCOPED_TRACE(dynconv::algorithm_name(algo));
    dynconv::Conv2d<float> conv(dynconv::Conv2dOptions(1, 1, 2).padding(0, 1, 0, 1).bias(false).algorithm(algo));
    Tensor4<float> w(1, 1, 2, 2);
    w.setConstant(1.f);
    conv.set_weight(w);
    Tensor4<float> x(1, 1, 2, 2);
    x.setValues({{{{1.f, 2.f}, {3.f, 4.f}}}});
    const auto y = conv.forward(x);
    ASSERT_EQ(dynconv::shape_str(y.dimensions()), "[1, 1, 2, 2]");
    EXPECT_FLOAT_EQ(y(0, 0, 0, 0), 10.f);
    EXPECT_FLOAT_EQ(y(0, 0, 0, 1), 2.f + 4.f);
    EXPECT_FLOAT_EQ(y(0, 0, 1, 0), 3.f + 4.f);
    EXPECT_FLOAT_EQ(y(0, 0, 1, 1), 4.f);
    // The start sides instead: each output sums the pixels left of and above it.
    dynconv::Conv2d<float> start(dynconv::Conv2dOptions(1, 1, 2).padding(1, 0, 1, 0).bias(false).algorithm(algo));
    start.set_weight(w);
    const auto z = start.forward(x);
    ASSERT_EQ(dynconv::shape_str(z.dimensions()), "[1, 1, 2, 2]");
    EXPECT_FLOAT_EQ(z(0, 0, 0, 0), 1.f);
    EXPECT_FLOAT_EQ(z(0, 0, 0, 1), 1.f + 2.f);
    EXPECT_FLOAT_EQ(z(0, 0, 1, 0), 1.f + 3.f);
    EXPECT_FLOAT_EQ(z(0, 0, 1, 1), 10.f);
  }
}

// A static layer keeps its kernel packed for the GEMM (or Winograd's transform of it) from its
// first pass: new weights after a pass must be used by the next one, and a copy that sets its
// own weights must leave the original's alone. Winograd at 24x24 (>= 484 output pixels), the
// GEMM at stride 2 and 1x1; 40 output channels (a padded panel).
template <typename T>
void check_kept_kernels() {
  struct Geometry {
    const char* name;
    Index k, stride, pad;
    ConvAlgorithm algo;
  };
  for (const Geometry& c : {Geometry{"winograd", 3, 1, 1, ConvAlgorithm::Winograd},
                            Geometry{"im2col", 3, 2, 1, ConvAlgorithm::Im2colGemm},
                            Geometry{"pointwise", 1, 1, 0, ConvAlgorithm::Pointwise}}) {
    SCOPED_TRACE(c.name);
    dynconv::Conv2d<T> conv(dynconv::Conv2dOptions(8, 40, c.k).stride(c.stride).padding(c.pad).bias(false).algorithm(c.algo));
    const ref::Conv p{c.stride, c.stride, c.pad, c.pad, c.pad, c.pad, 1, 1, 1};
    Tensor4<T> x(2, 8, 24, 24);
    ref::fill_random(x, 3);
    Tensor4<T> w(40, 8, c.k, c.k);
    ref::fill_random(w, 1);
    conv.set_weight(w);
    EXPECT_LE(ref::rel_error(conv.forward(x), ref::conv2d(x, w, static_cast<const T*>(nullptr), p)),
              ref::tolerance<T>());
    ref::fill_random(w, 4);
    conv.set_weight(w);
    EXPECT_LE(ref::rel_error(conv.forward(x), ref::conv2d(x, w, static_cast<const T*>(nullptr), p)),
              ref::tolerance<T>())
        << "new weights after a pass";
    dynconv::Conv2d<T> copy = conv;
    Tensor4<T> w2(40, 8, c.k, c.k);
    ref::fill_random(w2, 5);
    copy.set_weight(w2);
    EXPECT_LE(ref::rel_error(copy.forward(x), ref::conv2d(x, w2, static_cast<const T*>(nullptr), p)),
              ref::tolerance<T>())
        << "the copy's weights";
    EXPECT_LE(ref::rel_error(conv.forward(x), ref::conv2d(x, w, static_cast<const T*>(nullptr), p)),
              ref::tolerance<T>())
        << "the original after its copy set weights";
  }
}
TEST(ConvKeptKernels, FollowNewWeightsFloat) { check_kept_kernels<float>(); }
TEST(ConvKeptKernels, FollowNewWeightsDouble) { check_kept_kernels<double>(); }

TEST(ConvBatch, ZeroSamplesGiveAnEmptyBatch) {
  dynconv::Conv2d<float> conv(dynconv::Conv2dOptions(3, 4, 3).padding(1));
  Tensor4<float> x(0, 3, 5, 5);
  const auto y = conv.forward(x);
  EXPECT_EQ(y.dimension(0), 0);
  EXPECT_EQ(y.dimension(1), 4);
  dynconv::DynamicConv2d<float> dyn(dynconv::DynamicConv2dOptions(3, 4, 3).padding(1));
  Tensor2<float> pi;
  const auto yd = dyn.forward(x, &pi);
  EXPECT_EQ(dynconv::shape_str(yd.dimensions()), "[0, 4, 5, 5]");
  EXPECT_EQ(pi.dimension(0), 0);
}

}  // namespace
