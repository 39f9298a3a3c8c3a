// What follows a convolution slice, fused into it: y = after(act(conv + bias) + residual), and
// the pooling of y into its channel means (PostOps::means; an attention's pooling of its input).
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/activation.hpp>
#include <dynconv/detail/gemm_x86.hpp>
#include <dynconv/runtime.hpp>

#include <algorithm>
#include <array>
#include <cstdint>

namespace dynconv {
namespace detail {

/// What follows the convolution of a slice, fused into it: y = act(conv + bias) + residual.
template <typename T>
struct Epilogue {
  const T* bias = nullptr;      // [Cout] (absolute channel index) or null
  Activation act = Activation::Identity;
  const T* residual = nullptr;  // laid out as the output [Hout, Wout, Cout] (of each sample), or null
  Activation after = Activation::Identity;  // applied last (ResNet: ReLU after the shortcut)
  /// [Cout] (absolute channel index; [n, Cout] for a Winograd slice of n samples) or null:
  /// conv_slice adds the sum over the slice's pixels of each finished output channel
  /// (with_sums' channel means), while the values are in L1 (a GEMM's tiles, a depthwise row)
  /// or L2 (a block of Winograd rows; L3 for a batch of small images).
  double* sums = nullptr;
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

/// out [c] = scale * the sum over `pixels` of one sample's NHWC x [pixels, c] (no allocation):
/// 64 channels at a time, their sums in double (add_column_sums_of). 1.7-1.9x the speed of
/// summing every value in double from L2 (28x28x192 to 7x7x960, AMD EPYC Zen 4); larger
/// activations stream from L3 either way.
template <typename T>
void gap_sum(const T* x, Index pixels, Index c, double scale, T* out) {
  run_for_kernel_isa([&] {  // the sums vectorise for the kernel set in use
    constexpr Index kWidth = 64;
    for (Index c0 = 0; c0 < c; c0 += kWidth) {
      const Index len = std::min(kWidth, c - c0);
      double sum[kWidth] = {};
      add_column_sums_of<kWidth>(x + c0, c, pixels, len, sum);
      for (Index ch = 0; ch < len; ++ch) out[c0 + ch] = static_cast<T>(sum[ch] * scale);
    }
  });
}

/// out [n, c] = the mean over `pixels` of NHWC x [n, pixels, c] (no allocation).
template <typename T>
void gap_nhwc(const T* x, Index n, Index pixels, Index c, T* out) {
  for (Index b = 0; b < n; ++b) gap_sum(x + b * pixels * c, pixels, c, 1.0 / static_cast<double>(pixels), out + b * c);
}

/// pooled [x.n, x.c] = the mean over the pixels of each sample of x, on ctx's pool: a task per
/// sample, or, for fewer samples than threads (Context::sample_parts), a task per range of
/// pixels of a sample, whose partial means (from the workspace) are added in double.
template <typename T>
void gap_nhwc(const NhwcView<const T>& x, T* pooled, Context<T>& ctx) {
  const Index pixels = x.pixels(), c = x.c, parts = ctx.sample_parts(x.n, pixels * c);
  const double scale = 1.0 / static_cast<double>(pixels);
  if (parts == 1) {
    ctx.pool().parallel_for(x.n, [&](std::int64_t b, int) { gap_sum(x.sample(b), pixels, c, scale, pooled + b * c); });
    return;
  }
  typename Workspace<T>::Lease partial = ctx.workspace().acquire(x.n * parts * c);
  ctx.pool().parallel_for(x.n * parts, [&](std::int64_t task, int) {
    const std::array<Index, 2> r = split_range(pixels, parts, task % parts);
    gap_sum(x.sample(task / parts) + r[0] * c, r[1] - r[0], c, scale, partial.data() + task * c);
  });
  for (Index b = 0; b < x.n; ++b)
    for (Index ch = 0; ch < c; ++ch) {
      double sum = 0;
      for (Index part = 0; part < parts; ++part) sum += static_cast<double>(partial.data()[(b * parts + part) * c + ch]);
      pooled[b * c + ch] = static_cast<T>(sum);
    }
}

/// The channel means [x.n, x.c] of x: `given` when the module that produced x wrote them
/// (Inputs::means), else pooled here into a buffer from ctx's workspace that `lease` holds.
template <typename T>
const T* channel_means(const NhwcView<const T>& x, const T* given, Context<T>& ctx, typename Workspace<T>::Lease& lease) {
  if (given) return given;
  lease = ctx.workspace().acquire(x.n * x.c);
  gap_nhwc(x, lease.data(), ctx);
  return lease.data();
}

/// A slice's epilogue for the GEMM that writes C = y + p0 * cout + c0 (leading dimension cout):
/// the bias and residual pointers moved to C's origin.
template <typename T>
GemmEpilogue<T> gemm_epilogue(const Epilogue<T>& ep, Index cout, Index p0, Index c0) {
  return {ep.bias ? ep.bias + c0 : nullptr, ep.residual ? ep.residual + p0 * cout + c0 : nullptr, ep.act, ep.after,
          ep.sums ? ep.sums + c0 : nullptr};
}

}  // namespace detail
}  // namespace dynconv
