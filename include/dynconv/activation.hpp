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

/// The activation of one value.
template <typename T>
T activate(Activation a, T x) {
  // Comparisons written so that a NaN input yields NaN.
  auto relu6 = [](T v) { return v < T(0) ? T(0) : (v > T(6) ? T(6) : v); };
  switch (a) {
    case Activation::Identity: return x;
    case Activation::ReLU: return x < T(0) ? T(0) : x;
    case Activation::ReLU6: return relu6(x);
    case Activation::HardSigmoid: return relu6(x + T(3)) / T(6);
    case Activation::HardSwish: return x * relu6(x + T(3)) / T(6);
  }
  return x;
}

/// Applies `a` to every element of t, in place (any layout, any rank).
template <typename T, int Rank>
void activate_inplace(Activation a, Tensor<T, Rank>& t) {
  if (a == Activation::Identity) return;
  T* p = t.data();
  const Index n = t.size();
  for (Index i = 0; i < n; ++i) p[i] = activate(a, p[i]);
}

/// Returns `a` applied to every element of t.
template <typename T, int Rank>
Tensor<T, Rank> activate(Activation a, const Tensor<T, Rank>& t) {
  Tensor<T, Rank> y = t;
  activate_inplace(a, y);
  return y;
}

}  // namespace dynconv
