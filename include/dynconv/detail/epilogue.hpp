// What follows a convolution slice, fused into it: y = after(act(conv + bias) + residual).
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/activation.hpp>
#include <dynconv/detail/gemm_x86.hpp>
#include <dynconv/runtime.hpp>

namespace dynconv {
namespace detail {

/// What follows the convolution of a slice, fused into it: y = act(conv + bias) + residual.
template <typename T>
struct Epilogue {
  const T* bias = nullptr;      // [Cout] (absolute channel index) or null
  Activation act = Activation::Identity;
  const T* residual = nullptr;  // laid out as the sample's output [Hout, Wout, Cout], or null
  Activation after = Activation::Identity;  // applied last (ResNet: ReLU after the shortcut)
};

template <typename T>
void epilogue_begin_loops(const Epilogue<T>& ep, Index pixels, Index cout, Index c0, Index c1, Index p0, T* y) {
  const bool add_residual = ep.residual && ep.act == Activation::Identity;
  for (Index p = p0; p < p0 + pixels; ++p) {
    T* __restrict o = y + p * cout;
    const T* __restrict r = add_residual ? ep.residual + p * cout : nullptr;
    if (ep.bias && r)
      for (Index c = c0; c < c1; ++c) o[c] = ep.bias[c] + r[c];
    else if (ep.bias)
      for (Index c = c0; c < c1; ++c) o[c] = ep.bias[c];
    else if (r)
      for (Index c = c0; c < c1; ++c) o[c] = r[c];
    else
      for (Index c = c0; c < c1; ++c) o[c] = T(0);
  }
}

/// y[p, c0:c1] = bias (+ residual when there is no activation to apply first), p in `pixels`.
/// (The loops of both ends run compiled for the kernel set in use: run_for_kernel_isa.)
template <typename T>
void epilogue_begin(const Epilogue<T>& ep, Index pixels, Index cout, Index c0, Index c1, Index p0, T* y) {
  run_for_kernel_isa([&] { epilogue_begin_loops(ep, pixels, cout, c0, c1, p0, y); });
}

template <typename T, typename F>
void map_rows(Index pixels, Index cout, Index c0, Index c1, Index p0, T* y, const T* residual, F f) {
  for (Index p = p0; p < p0 + pixels; ++p) {
    T* __restrict o = y + p * cout;
    if (residual) {
      const T* __restrict r = residual + p * cout;
      for (Index c = c0; c < c1; ++c) o[c] = f(o[c]) + r[c];
    } else {
      for (Index c = c0; c < c1; ++c) o[c] = f(o[c]);
    }
  }
}

/// y = a(y) (+ residual) over the slice's rows.
template <typename T>
void activate_rows(Activation a, Index pixels, Index cout, Index c0, Index c1, Index p0, T* y, const T* residual) {
  with_activation<T>(a, [&](auto f) { map_rows(pixels, cout, c0, c1, p0, y, residual, f); });
}

/// Applies the activation, adds the residual (unless epilogue_begin already did), then the
/// final activation.
template <typename T>
void epilogue_end(const Epilogue<T>& ep, Index pixels, Index cout, Index c0, Index c1, Index p0, T* y) {
  run_for_kernel_isa([&] {
    activate_rows(ep.act, pixels, cout, c0, c1, p0, y, ep.residual);
    activate_rows(ep.after, pixels, cout, c0, c1, p0, y, static_cast<const T*>(nullptr));
  });
}

/// A slice's epilogue for the GEMM that writes C = y + p0 * cout + c0 (leading dimension cout):
/// the bias and residual pointers moved to C's origin.
template <typename T>
GemmEpilogue<T> gemm_epilogue(const Epilogue<T>& ep, Index cout, Index p0, Index c0) {
  return {ep.bias ? ep.bias + c0 : nullptr, ep.residual ? ep.residual + p0 * cout + c0 : nullptr, ep.act, ep.after};
}

}  // namespace detail
}  // namespace dynconv
