// Deliberately naive references for the tests: direct loops straight from the definitions,
// in double, sharing no code with the library's kernels.
//
//   conv2d          PyTorch's conv2d with zero padding per side (F.pad, then conv2d)
//   attention       a DynamicConv2d's attention: GAP -> fc1 -> ReLU -> fc2 -> softmax(z / tau)
//   dynamic_conv2d  a DynamicConv2d, sample by sample: mix the K kernels with that sample's
//                   attention, then conv2d
//   activation      the activations, from their definitions
//
// and the check of a convolution layer's network path (Module::run on a Context, with fused
// PostOps and several threads) against such a reference.
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/runtime.hpp>
#include <dynconv/tensor.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <utility>
#include <vector>

namespace ref {

using dynconv::Index;
using dynconv::Tensor4;

/// A convolution's hyper-parameters, with the zero padding given per side.
struct Conv {
  Index stride_h = 1, stride_w = 1;
  Index pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  Index dil_h = 1, dil_w = 1, groups = 1;

  /// The same padding on both sides of each axis (PyTorch's Conv2d padding=(ph, pw)).
  static Conv symmetric(Index sh, Index sw, Index ph, Index pw, Index dh, Index dw, Index groups) {
    return {sh, sw, ph, ph, pw, pw, dh, dw, groups};
  }
};

/// y[n, co, oh, ow] = b[co] + sum_{ci, i, j} w[co, ci, i, j] * xp[n, g*cin_g + ci, oh*sh + i*dh, ow*sw + j*dw]
/// where xp is x padded with pad_top zero rows above, pad_bottom below, pad_left columns on the
/// left and pad_right on the right. x [N, Cin, H, W], w [Cout, Cin/g, kh, kw], bias [Cout] or
/// null. Computed in double. (Raw indexing, so that it stays fast in unoptimised builds.)
template <typename T, typename W>
Tensor4<double> conv2d(const Tensor4<T>& x, const Tensor4<W>& w, const W* bias, const Conv& p) {
  const Index n = x.dimension(0), cin = x.dimension(1), h = x.dimension(2), wd = x.dimension(3);
  const Index cout = w.dimension(0), cin_g = w.dimension(1), kh = w.dimension(2), kw = w.dimension(3);
  const Index cout_g = cout / p.groups;
  const Index oh = (h + p.pad_top + p.pad_bottom - p.dil_h * (kh - 1) - 1) / p.stride_h + 1;
  const Index ow = (wd + p.pad_left + p.pad_right - p.dil_w * (kw - 1) - 1) / p.stride_w + 1;
  Tensor4<double> y(n, cout, std::max<Index>(oh, 0), std::max<Index>(ow, 0));
  const T* xd = x.data();
  const W* wdata = w.data();
  for (Index b = 0; b < n; ++b)
    for (Index co = 0; co < cout; ++co)
      for (Index r = 0; r < oh; ++r)
        for (Index c = 0; c < ow; ++c) {
          double acc = bias ? static_cast<double>(bias[co]) : 0.0;
          const Index g = co / cout_g;
          for (Index ci = 0; ci < cin_g; ++ci)
            for (Index i = 0; i < kh; ++i) {
              const Index ih = r * p.stride_h - p.pad_top + i * p.dil_h;
              if (ih < 0 || ih >= h) continue;  // a padding row
              const T* xrow = xd + ((b * cin + g * cin_g + ci) * h + ih) * wd;
              const W* wrow = wdata + ((co * cin_g + ci) * kh + i) * kw;
              for (Index j = 0; j < kw; ++j) {
                const Index iw = c * p.stride_w - p.pad_left + j * p.dil_w;
                if (iw < 0 || iw >= wd) continue;  // a padding column
                acc += static_cast<double>(wrow[j]) * static_cast<double>(xrow[iw]);
              }
            }
          y(b, co, r, c) = acc;
        }
  return y;
}

/// A DynamicConv2d's attention by hand: GAP -> fc1 -> ReLU -> fc2 -> softmax(z / tau), in
/// double; pi[n][k]. x [N, Cin, H, W].
template <typename Layer, typename T>
std::vector<std::vector<double>> attention(const Layer& layer, const Tensor4<T>& x) {
  const auto& att = layer.attention();
  const Index n = x.dimension(0), c = x.dimension(1), hw = x.dimension(2) * x.dimension(3);
  const Index hidden = att.hidden(), k = att.kernels();
  std::vector<std::vector<double>> pi(static_cast<std::size_t>(n), std::vector<double>(static_cast<std::size_t>(k)));
  for (Index b = 0; b < n; ++b) {
    std::vector<double> s(static_cast<std::size_t>(c), 0.0), h(static_cast<std::size_t>(hidden)),
        z(static_cast<std::size_t>(k));
    for (Index ch = 0; ch < c; ++ch) {
      for (Index p = 0; p < hw; ++p) s[ch] += x(b, ch, p / x.dimension(3), p % x.dimension(3));
      s[ch] /= static_cast<double>(hw);
    }
    for (Index j = 0; j < hidden; ++j) {
      double acc = att.fc1().bias()(j);
      for (Index ch = 0; ch < c; ++ch) acc += att.fc1().weight()(j, ch) * s[ch];
      h[j] = std::max(acc, 0.0);
    }
    double top = -1e300;
    for (Index i = 0; i < k; ++i) {
      double acc = att.fc2().bias()(i);
      for (Index j = 0; j < hidden; ++j) acc += att.fc2().weight()(i, j) * h[j];
      z[i] = acc / static_cast<double>(att.temperature());
      top = std::max(top, z[i]);
    }
    double sum = 0;
    for (Index i = 0; i < k; ++i) sum += (pi[b][i] = std::exp(z[i] - top));
    for (Index i = 0; i < k; ++i) pi[b][i] /= sum;
  }
  return pi;
}

/// A DynamicConv2d by hand, sample by sample: mix the K kernels (and biases) with the
/// sample's attention (given, or the layer's own by attention() above), then conv2d. The
/// hyper-parameters `p` come from the test, not from the layer.
template <typename Layer, typename T>
Tensor4<double> dynamic_conv2d(const Layer& layer, const Tensor4<T>& x, const Conv& p,
                               const std::vector<std::vector<double>>* given_pi = nullptr) {
  const std::vector<std::vector<double>> own = given_pi ? std::vector<std::vector<double>>{} : attention(layer, x);
  const std::vector<std::vector<double>>& pi = given_pi ? *given_pi : own;
  const auto w = layer.weight();  // [K, Cout, Cin/g, kh, kw]
  const auto b = layer.bias();    // [K, Cout], zeros without bias
  const Index n = x.dimension(0), k = w.dimension(0), cout = w.dimension(1);
  Tensor4<double> out;
  for (Index s = 0; s < n; ++s) {
    Tensor4<double> ws(cout, w.dimension(2), w.dimension(3), w.dimension(4));
    ws.setZero();
    std::vector<double> bs(static_cast<std::size_t>(cout), 0.0);
    for (Index i = 0; i < k; ++i) {
      for (Index e = 0; e < ws.size(); ++e) ws.data()[e] += pi[s][i] * static_cast<double>(w.data()[i * ws.size() + e]);
      for (Index c = 0; c < cout; ++c) bs[c] += pi[s][i] * static_cast<double>(b(i, c));
    }
    Tensor4<T> xs(1, x.dimension(1), x.dimension(2), x.dimension(3));
    std::copy(x.data() + s * xs.size(), x.data() + (s + 1) * xs.size(), xs.data());
    const Tensor4<double> ys = conv2d(xs, ws, layer.has_bias() ? bs.data() : nullptr, p);
    if (s == 0) out = Tensor4<double>(n, ys.dimension(1), ys.dimension(2), ys.dimension(3));
    std::copy(ys.data(), ys.data() + ys.size(), out.data() + s * ys.size());
  }
  return out;
}

/// The activations from their definitions (PyTorch's), in double.
inline double activation(dynconv::Activation a, double x) {
  using dynconv::Activation;
  const double r6 = std::min(std::max(x + 3.0, 0.0), 6.0);
  if (std::isnan(x)) return x;
  switch (a) {
    case Activation::Identity: return x;
    case Activation::ReLU: return std::max(x, 0.0);
    case Activation::ReLU6: return std::min(std::max(x, 0.0), 6.0);
    case Activation::HardSigmoid: return r6 / 6.0;
    case Activation::HardSwish: return x * r6 / 6.0;
    case Activation::Sigmoid: return 1.0 / (1.0 + std::exp(-x));
    case Activation::SiLU: return x / (1.0 + std::exp(-x));
    case Activation::Tanh: return std::tanh(x);
    case Activation::GELU: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
  }
  return x;
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

/// Randomises every parameter of a DynamicConv2d; the attention FCs get a large range so that
/// pi is far from uniform.
template <typename Layer>
void randomize_dynamic(Layer& layer, unsigned seed) {
  auto w = layer.weight();
  fill_random(w, seed);
  layer.set_weight(w);
  if (layer.has_bias()) {
    auto b = layer.bias();
    fill_random(b, seed + 1);
    layer.set_bias(b);
  }
  auto& att = layer.attention();
  auto w1 = att.fc1().weight(), w2 = att.fc2().weight();
  auto b1 = att.fc1().bias(), b2 = att.fc2().bias();
  fill_random(w1, seed + 2, -2, 2);
  fill_random(b1, seed + 3, -0.5, 1);
  fill_random(w2, seed + 4, -4, 4);
  fill_random(b2, seed + 5, -1, 1);
  att.fc1().set_weight(w1);
  att.fc1().set_bias(b1);
  att.fc2().set_weight(w2);
  att.fc2().set_bias(b2);
}

/// The network path of a convolution layer (Conv2d or DynamicConv2d `run` on a Context): for
/// 1, 2 and 3 threads (every sample split, min_parallel_madds 0), with fused PostOps
/// (activation, residual, activation after), against after(act(expected) + residual) computed
/// here in double from the naive reference `expected` [N, Cout, Hout, Wout] (NCHW). Every
/// output element must be written, and a repeated run with the same thread count must give
/// the same bits.
template <typename Layer, typename T>
void check_network_path(const Layer& layer, const Tensor4<T>& x_nchw, const Tensor4<double>& expected,
                        double tol = tolerance<T>()) {
  using dynconv::Activation;
  const dynconv::NhwcTensor<T> x = dynconv::nchw_to_nhwc(x_nchw);
  const dynconv::NhwcShape s = layer.output_shape({x.shape()});
  ASSERT_EQ(dynconv::shape_str(s.nchw()), dynconv::shape_str(expected.dimensions())) << "output_shape";
  dynconv::NhwcTensor<T> residual(s);
  fill_random(residual.tensor(), 99);
  struct Epilogue {
    Activation act;
    bool residual;
    Activation after;
  };
  // Plain; a MobileNet unit's end; a fused activation; a ResNet block's end; SiLU + add.
  const Epilogue epilogues[] = {{Activation::Identity, false, Activation::Identity},
                                {Activation::Identity, true, Activation::Identity},
                                {Activation::HardSwish, false, Activation::Identity},
                                {Activation::ReLU, true, Activation::ReLU},
                                {Activation::SiLU, true, Activation::Identity}};
  const dynconv::NhwcView<const T> in = x.view();
  for (const Epilogue& e : epilogues) {
    // after(act(y) + r) in NHWC order, from the NCHW reference.
    Tensor4<double> want(s.n, s.h, s.w, s.c);
    for (Index b = 0; b < s.n; ++b)
      for (Index r = 0; r < s.h; ++r)
        for (Index q = 0; q < s.w; ++q)
          for (Index c = 0; c < s.c; ++c) {
            double v = activation(e.act, expected(b, c, r, q));
            if (e.residual) v += static_cast<double>(residual.tensor()(b, r, q, c));
            want(b, r, q, c) = activation(e.after, v);
          }
    for (int threads : {1, 2, 3}) {
      dynconv::Context<T> ctx(threads);
      ctx.min_parallel_madds(0);  // split even these small layers
      const dynconv::PostOps<T> post{e.act, e.residual ? residual.data() : nullptr, e.after};
      Tensor4<T> first;
      for (int repeat = 0; repeat < 2; ++repeat) {
        dynconv::NhwcTensor<T> y(s);
        y.set_constant(T(12345));  // every element must be written
        layer.run(dynconv::Inputs<T>(in), y.view(), ctx, post);
        EXPECT_LE(rel_error(y.tensor(), want), tol)
            << threads << " threads, " << dynconv::activation_name(e.act) << (e.residual ? " + residual" : "")
            << " then " << dynconv::activation_name(e.after);
        if (repeat == 0) {
          first = y.tensor();
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
