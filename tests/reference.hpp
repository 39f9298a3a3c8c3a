// Deliberately naive references for the tests: direct loops straight from the definitions,
// in double, sharing no code with the library's kernels.
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/tensor.hpp>
#include <dynconv/thread_pool.hpp>

#define DYNCONV_DETAIL_ALLOWED  // the tests drive the network path (run) directly
#include <dynconv/detail/exec.hpp>
#undef DYNCONV_DETAIL_ALLOWED

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <utility>

namespace ref {

using dynconv::Index;
using dynconv::Tensor4;

struct Conv {
  Index stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1, groups = 1;
};

/// y[n, co, oh, ow] = b[co] + sum_{ci, i, j} w[co, ci, i, j] * x[n, g*cin_g + ci, ih, iw]
/// x [N, Cin, H, W], w [Cout, Cin/g, kh, kw], bias [Cout] or null. Computed in double.
template <typename T>
Tensor4<double> conv2d(const Tensor4<T>& x, const Tensor4<T>& w, const T* bias, const Conv& p) {
  const Index n = x.dimension(0), cin = x.dimension(1), h = x.dimension(2), wd = x.dimension(3);
  const Index cout = w.dimension(0), cin_g = w.dimension(1), kh = w.dimension(2), kw = w.dimension(3);
  const Index cout_g = cout / p.groups;
  const Index oh = (h + 2 * p.pad_h - p.dil_h * (kh - 1) - 1) / p.stride_h + 1;
  const Index ow = (wd + 2 * p.pad_w - p.dil_w * (kw - 1) - 1) / p.stride_w + 1;
  (void)cin;
  Tensor4<double> y(n, cout, oh, ow);
  for (Index b = 0; b < n; ++b)
    for (Index co = 0; co < cout; ++co)
      for (Index r = 0; r < oh; ++r)
        for (Index c = 0; c < ow; ++c) {
          double acc = bias ? static_cast<double>(bias[co]) : 0.0;
          const Index g = co / cout_g;
          for (Index ci = 0; ci < cin_g; ++ci)
            for (Index i = 0; i < kh; ++i)
              for (Index j = 0; j < kw; ++j) {
                const Index ih = r * p.stride_h - p.pad_h + i * p.dil_h;
                const Index iw = c * p.stride_w - p.pad_w + j * p.dil_w;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                acc += static_cast<double>(w(co, ci, i, j)) *
                       static_cast<double>(x(b, g * cin_g + ci, ih, iw));
              }
          y(b, co, r, c) = acc;
        }
  return y;
}

/// max |a - b| / max(max |b|, tiny): the relative error measure of all tests. It is +infinity,
/// so that an EXPECT_LE on it fails cleanly, when the shapes differ in any dimension (even
/// with equal sizes) or when a difference is NaN (which std::max would otherwise skip).
template <typename A, typename B, int Rank>
double rel_error(const dynconv::Tensor<A, Rank>& a, const dynconv::Tensor<B, Rank>& b) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  for (int d = 0; d < Rank; ++d)
    if (a.dimension(d) != b.dimension(d)) return kInf;
  double diff = 0, scale = 0;
  for (Index i = 0; i < b.size(); ++i) {
    const double e = std::abs(static_cast<double>(a.data()[i]) - static_cast<double>(b.data()[i]));
    if (std::isnan(e)) return kInf;
    diff = std::max(diff, e);
    scale = std::max(scale, std::abs(static_cast<double>(b.data()[i])));
  }
  return diff / std::max(scale, 1e-300);
}

/// Fills t uniformly in [lo, hi] from a seeded generator.
template <typename T, int Rank>
void fill_random(dynconv::Tensor<T, Rank>& t, unsigned seed, double lo = -1, double hi = 1) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(dist(gen));
}

/// Tolerance of relative errors for float and double arithmetic.
template <typename T>
constexpr double tolerance() {
  return sizeof(T) == 4 ? 2e-5 : 1e-12;
}

/// The network path of a convolution layer (Conv2d or DynamicConv2d `run`): for 1, 2 and 3
/// threads, with a fused activation and residual, against act(forward_nhwc(x)) + r computed
/// here. Thread counts may differ in the last bits (the split changes Eigen's remainder
/// paths); a repeated run with the same count must give the same bits.
template <typename Layer, typename T>
void check_network_path(const Layer& layer, const dynconv::Tensor4<T>& x_nchw) {
  using dynconv::Activation;
  const dynconv::Tensor4<T> x = dynconv::nchw_to_nhwc(x_nchw);
  const dynconv::Tensor4<T> plain = layer.forward_nhwc(x);
  dynconv::Tensor4<T> residual(plain.dimensions());
  fill_random(residual, 99);
  // (activation, activation after the residual): MobileNet units, a ResNet block's end.
  const std::pair<Activation, Activation> epilogues[] = {{Activation::Identity, Activation::Identity},
                                                         {Activation::HardSwish, Activation::Identity},
                                                         {Activation::Identity, Activation::ReLU}};
  for (const auto& [act, after] : epilogues) {
    dynconv::Tensor4<T> expected = plain;
    for (Index i = 0; i < expected.size(); ++i)
      expected.data()[i] =
          dynconv::activate(after, dynconv::activate(act, expected.data()[i]) + residual.data()[i]);
    for (int threads : {1, 2, 3}) {
      dynconv::ThreadPool pool(threads);
      dynconv::detail::Workspace<T> ws(threads);
      dynconv::detail::Exec<T> ex{pool, ws};
      ex.min_parallel_madds = 0;  // split even these small layers
      dynconv::Tensor4<T> first;
      for (int repeat = 0; repeat < 2; ++repeat) {
        dynconv::Tensor4<T> y(plain.dimensions());
        y.setConstant(T(12345));  // every element must be written
        layer.run(dynconv::detail::view(x), dynconv::detail::view(y), act, residual.data(), ex, after);
        EXPECT_LE(rel_error(y, expected), tolerance<T>()) << threads << " threads, " << activation_name(act) << " then "
                                                      << activation_name(after);
        if (repeat == 0) {
          first = y;
        } else {
          bool same = true;
          for (Index i = 0; i < y.size(); ++i) same = same && y.data()[i] == first.data()[i];
          EXPECT_TRUE(same) << threads << " threads: a second run differs";
        }
      }
    }
  }
}

}  // namespace ref

