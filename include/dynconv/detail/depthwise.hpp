// The depthwise convolution kernel: a direct loop vectorised across channels (NHWC); for float
// the rows run on the kernel set in use (gemm_x86.hpp), else on Eigen's packets.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/detail/epilogue.hpp>
#include <dynconv/detail/gemm_x86.hpp>
#include <dynconv/detail/packing.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <type_traits>

namespace dynconv {
namespace detail {

/// The epilogue of output row r after the bias was added: activation, residual, final
/// activation (finish_rows, the row's ow pixels as rows of leading dimension ch), then the row's
/// channel sums (Epilogue::sums) while it is in L1.
template <typename T>
void depthwise_row_epilogue(const Epilogue<T>& ep, Index ow, Index ch, Index c0, Index c1, Index r, T* y) {
  const Index origin = r * ow * ch + c0;
  run_for_kernel_isa([&] {
    finish_rows(y + origin, ch, ow, c1 - c0, ep.act, ep.residual ? ep.residual + origin : nullptr, ep.after);
    if (ep.sums) add_column_sums(y + origin, ch, ow, c1 - c0, ep.sums + c0);
  });
}

#if DYNCONV_X86_KERNELS
/// depthwise_row_epilogue on the kernel set's tile ends (the row's ow pixels as the rows of a
/// tile with leading dimension ch): activation, residual, final activation and the sums in one
/// pass over the row while it is in L1 (for the activations the tile ends vectorise; else
/// finish_rows, then the sums).
inline void x86_depthwise_row_ends(KernelIsa isa, const Epilogue<float>& ep, Index ow, Index ch, Index c0, Index c1,
                                   Index r, float* y) {
  if (ep.act == Activation::Identity && !ep.residual && ep.after == Activation::Identity && !ep.sums) return;
  const Index origin = r * ow * ch + c0;
  const TileEnds e{false, true, nullptr, ep.residual ? ep.residual + origin : nullptr, ep.act, ep.after,
                   ep.sums ? ep.sums + c0 : nullptr};
  if (isa == KernelIsa::Avx512) avx512_tile_ends(y + origin, ch, ow, c1 - c0, e);
  else avx2_tile_ends(y + origin, ch, ow, c1 - c0, e);
}
#endif

/// Depthwise slice, vectorised across channels with Eigen's packets: for one output pixel,
/// kBlock packets of channels accumulate in registers over all taps (independent FMA chains),
/// then single packets, then a scalar tail. kernel points at tap 0, channel c0; ldk is the
/// stride between taps.
template <typename T>
void depthwise_slice(const ConvGeometry& g, const T* x, Index in_h, Index in_w, const T* kernel, Index ldk,
                     const Slice& s, const Epilogue<T>& ep, T* y) {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  constexpr Index kLanes = Eigen::internal::packet_traits<T>::size;
  constexpr Index kBlock = 4;
  const Index ow = g.out_w(in_w), ch = g.out_channels;
  const Index c0 = s.c0, c1 = s.c1;
  [[maybe_unused]] const KernelIsa isa = std::is_same<T, float>::value ? kernel_isa() : KernelIsa::Generic;
  for (Index r = s.r0; r < s.r1; ++r) {
#if DYNCONV_X86_KERNELS
    if constexpr (std::is_same<T, float>::value) {  // the kernel set in use (gemm_x86.hpp)
      if (isa == KernelIsa::Avx512)
        avx512_depthwise_row(g, x, in_h, in_w, kernel, ldk, r, c0, c1, ep.bias, y);
      else if (isa == KernelIsa::Avx2)
        avx2_depthwise_row(g, x, in_h, in_w, kernel, ldk, r, c0, c1, ep.bias, y);
      if (isa != KernelIsa::Generic) {
        x86_depthwise_row_ends(isa, ep, ow, ch, c0, c1, r, y);
        continue;
      }
    }
#endif
    const Index ih0 = r * g.stride_h - g.pad_h;
    // The taps whose input row is inside the image.
    const auto [i_begin, i_end] = taps_inside(ih0, g.dilation_h, g.kernel_h, in_h);
    for (Index c = 0; c < ow; ++c) {
      const Index iw0 = c * g.stride_w - g.pad_w;
      const auto [j_begin, j_end] = taps_inside(iw0, g.dilation_w, g.kernel_w, in_w);
      T* out = y + (r * ow + c) * ch;
      auto init = [&](Index k) {
        return ep.bias ? Eigen::internal::ploadu<Packet>(ep.bias + k) : Eigen::internal::pset1<Packet>(T(0));
      };
      Index cb = c0;
      for (; cb + kBlock * kLanes <= c1; cb += kBlock * kLanes) {
        Packet acc[kBlock];
        for (Index v = 0; v < kBlock; ++v) acc[v] = init(cb + v * kLanes);
        for (Index i = i_begin; i < i_end; ++i) {
          const T* in_row = x + ((ih0 + i * g.dilation_h) * in_w) * ch + cb;
          const T* w_row = kernel + i * g.kernel_w * ldk + (cb - c0);
          for (Index j = j_begin; j < j_end; ++j) {
            const T* in = in_row + (iw0 + j * g.dilation_w) * ch;
            const T* w = w_row + j * ldk;
            for (Index v = 0; v < kBlock; ++v)
              acc[v] = Eigen::internal::pmadd(Eigen::internal::ploadu<Packet>(in + v * kLanes),
                                              Eigen::internal::ploadu<Packet>(w + v * kLanes), acc[v]);
          }
        }
        for (Index v = 0; v < kBlock; ++v) Eigen::internal::pstoreu(out + cb + v * kLanes, acc[v]);
      }
      for (; cb + kLanes <= c1; cb += kLanes) {
        Packet acc = init(cb);
        for (Index i = i_begin; i < i_end; ++i)
          for (Index j = j_begin; j < j_end; ++j)
            acc = Eigen::internal::pmadd(
                Eigen::internal::ploadu<Packet>(x + ((ih0 + i * g.dilation_h) * in_w + iw0 + j * g.dilation_w) * ch + cb),
                Eigen::internal::ploadu<Packet>(kernel + (i * g.kernel_w + j) * ldk + (cb - c0)), acc);
        Eigen::internal::pstoreu(out + cb, acc);
      }
      for (; cb < c1; ++cb) {
        T acc = ep.bias ? ep.bias[cb] : T(0);
        for (Index i = i_begin; i < i_end; ++i)
          for (Index j = j_begin; j < j_end; ++j)
            acc += x[((ih0 + i * g.dilation_h) * in_w + iw0 + j * g.dilation_w) * ch + cb] *
                   kernel[(i * g.kernel_w + j) * ldk + (cb - c0)];
        out[cb] = acc;
      }
    }
    depthwise_row_epilogue(ep, ow, ch, c0, c1, r, y);
  }
}

}  // namespace detail
}  // namespace dynconv
