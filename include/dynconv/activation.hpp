// dynconv: element-wise activations, as PyTorch defines them.
//   ReLU        max(x, 0)
//   ReLU6       min(max(x, 0), 6)
//   HardSigmoid ReLU6(x + 3) / 6
//   HardSwish   x * ReLU6(x + 3) / 6
//   Sigmoid     1 / (1 + exp(-x))
//   SiLU        x * Sigmoid(x)
//   Tanh        tanh(x)
//   GELU        x * (1 + erf(x / sqrt(2))) / 2   (PyTorch's default, exact form)
// NaN inputs stay NaN for every activation.
#pragma once

#include <dynconv/tensor.hpp>

#include <algorithm>
#include <cmath>

namespace dynconv {

enum class Activation { Identity, ReLU, ReLU6, HardSigmoid, HardSwish, Sigmoid, SiLU, Tanh, GELU };

inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::Identity: return "Identity";
    case Activation::ReLU: return "ReLU";
    case Activation::ReLU6: return "ReLU6";
    case Activation::HardSigmoid: return "HardSigmoid";
    case Activation::HardSwish: return "HardSwish";
    case Activation::Sigmoid: return "Sigmoid";
    case Activation::SiLU: return "SiLU";
    case Activation::Tanh: return "Tanh";
    case Activation::GELU: return "GELU";
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
template <typename T>
struct SigmoidOf {
  T operator()(T v) const { return T(1) / (T(1) + std::exp(-v)); }
};
template <typename T>
struct SiluOf {
  T operator()(T v) const { return v / (T(1) + std::exp(-v)); }
};
template <typename T>
struct TanhOf {
  T operator()(T v) const { return std::tanh(v); }
};
template <typename T>
struct GeluOf {
  T operator()(T v) const { return T(0.5) * v * (T(1) + std::erf(v * T(0.70710678118654752440))); }
};

/// Calls f(functor) with the function object of activation a (not for Identity).
template <typename T, typename F>
void with_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::Identity: return;
    case Activation::ReLU: return f(ReluOf<T>());
    case Activation::ReLU6: return f(Relu6Of<T>());
    case Activation::HardSigmoid: return f(HardSigmoidOf<T>());
    case Activation::HardSwish: return f(HardSwishOf<T>());
    case Activation::Sigmoid: return f(SigmoidOf<T>());
    case Activation::SiLU: return f(SiluOf<T>());
    case Activation::Tanh: return f(TanhOf<T>());
    case Activation::GELU: return f(GeluOf<T>());
  }
}

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
    case Activation::Sigmoid: return detail::SigmoidOf<T>()(x);
    case Activation::SiLU: return detail::SiluOf<T>()(x);
    case Activation::Tanh: return detail::TanhOf<T>()(x);
    case Activation::GELU: return detail::GeluOf<T>()(x);
  }
  return x;
}

namespace detail {
/// Applies `a` to p[0..n), in place (compiled for the kernel set in use, isa.hpp).
template <typename T>
void activate_inplace(Activation a, T* p, Index n) {
  if (a == Activation::Identity) return;
  run_for_kernel_isa([&] { with_activation<T>(a, [&](auto f) { map_inplace(p, n, f); }); });
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
