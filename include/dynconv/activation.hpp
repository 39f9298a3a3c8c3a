// dynconv: element-wise activations, as PyTorch defines them.
//   ReLU        max(x, 0)
//   ReLU6       min(max(x, 0), 6)
//   HardSigmoid ReLU6(x + 3) / 6
//   HardSwish   x * ReLU6(x + 3) / 6
// NaN inputs stay NaN for ReLU6/HardSigmoid/HardSwish; ReLU maps NaN to NaN as well.
#pragma once

#include <dynconv/tensor.hpp>

#include <algorithm>

namespace dynconv {

enum class Activation { Identity, ReLU, ReLU6, HardSigmoid, HardSwish };

inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::Identity: return "Identity";
    case Activation::ReLU: return "ReLU";
    case Activation::ReLU6: return "ReLU6";
    case Activation::HardSigmoid: return "HardSigmoid";
    case Activation::HardSwish: return "HardSwish";
  }
  return "?";
}

namespace detail {

// The activations as function objects; comparisons written so that a NaN input yields NaN.
template <typename T>
struct Relu6Of {
  T operator()(T v) const { return v < T(0) ? T(0) : (v > T(6) ? T(6) : v); }
};
template <typename T>
struct ReluOf {
  T operator()(T v) const { return v < T(0) ? T(0) : v; }
};
template <typename T>
struct HardSigmoidOf {
  T operator()(T v) const { return Relu6Of<T>()(v + T(3)) / T(6); }
};
template <typename T>
struct HardSwishOf {
  T operator()(T v) const { return v * Relu6Of<T>()(v + T(3)) / T(6); }
};

/// p[i] = f(p[i]): one branch-free loop per activation, which the compiler vectorises.
template <typename T, typename F>
void map_inplace(T* p, Index n, F f) {
  for (Index i = 0; i < n; ++i) p[i] = f(p[i]);
}

}  // namespace detail

/// The activation of one value.
template <typename T>
T activate(Activation a, T x) {
  switch (a) {
    case Activation::Identity: return x;
    case Activation::ReLU: return detail::ReluOf<T>()(x);
    case Activation::ReLU6: return detail::Relu6Of<T>()(x);
    case Activation::HardSigmoid: return detail::HardSigmoidOf<T>()(x);
    case Activation::HardSwish: return detail::HardSwishOf<T>()(x);
  }
  return x;
}

namespace detail {
/// Applies `a` to p[0..n), in place.
template <typename T>
void activate_inplace(Activation a, T* p, Index n) {
  switch (a) {
    case Activation::Identity: return;
    case Activation::ReLU: return map_inplace(p, n, ReluOf<T>());
    case Activation::ReLU6: return map_inplace(p, n, Relu6Of<T>());
    case Activation::HardSigmoid: return map_inplace(p, n, HardSigmoidOf<T>());
    case Activation::HardSwish: return map_inplace(p, n, HardSwishOf<T>());
  }
}
}  // namespace detail

/// Applies `a` to every element of t, in place (any layout, any rank).
template <typename T, int Rank>
void activate_inplace(Activation a, Tensor<T, Rank>& t) {
  detail::activate_inplace(a, t.data(), t.size());
}

/// Returns `a` applied to every element of t.
template <typename T, int Rank>
Tensor<T, Rank> activate(Activation a, const Tensor<T, Rank>& t) {
  Tensor<T, Rank> y = t;
  activate_inplace(a, y);
  return y;
}

}  // namespace dynconv
