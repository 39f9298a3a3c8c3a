// dynconv: global average pooling.
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/tensor.hpp>

#define DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/exec.hpp>
#undef DYNCONV_DETAIL_ALLOWED

#include <algorithm>
#include <limits>
#include <vector>

namespace dynconv {

// The sums accumulate in double: a running float sum over 112x112 pixels loses ~3e-6 relative,
// which the attention of ~50 dynamic layers amplifies past PyTorch parity.

/// [N, C, H, W] -> [N, C]: the mean over H x W of every channel.
template <typename T>
Tensor2<T> global_avg_pool(const Tensor4<T>& x) {
  const Index n = x.dimension(0), c = x.dimension(1), pixels = x.dimension(2) * x.dimension(3);
  if (pixels < 1)
    detail::fail<ShapeError>("global_avg_pool: input ", shape_str(x.dimensions()),
                             " (NCHW) has no pixels");
  Tensor2<T> y(n, c);
  for (Index i = 0; i < n * c; ++i) {
    const T* p = x.data() + i * pixels;
    double sum = 0;
    for (Index k = 0; k < pixels; ++k) sum += static_cast<double>(p[k]);
    y.data()[i] = static_cast<T>(sum / static_cast<double>(pixels));
  }
  return y;
}

namespace detail {

/// out [n, c] = the mean over `pixels` of NHWC x [n, pixels, c], accumulated in double in
/// chunks of channels on the stack (no allocation).
template <typename T>
void gap_nhwc(const T* x, Index n, Index pixels, Index c, T* out) {
  constexpr Index kChunk = 256;
  double sum[kChunk];
  for (Index b = 0; b < n; ++b)
    for (Index c0 = 0; c0 < c; c0 += kChunk) {
      const Index len = std::min(kChunk, c - c0);
      std::fill(sum, sum + len, 0.0);
      const T* p = x + b * pixels * c + c0;
      for (Index k = 0; k < pixels; ++k, p += c)
        for (Index ch = 0; ch < len; ++ch) sum[ch] += static_cast<double>(p[ch]);
      for (Index ch = 0; ch < len; ++ch)
        out[b * c + c0 + ch] = static_cast<T>(sum[ch] / static_cast<double>(pixels));
    }
}

}  // namespace detail

/// [N, H, W, C] -> [N, C]: the same for NHWC activations (accumulates whole channel rows).
template <typename T>
Tensor2<T> global_avg_pool_nhwc(const Tensor4<T>& x) {
  const Index n = x.dimension(0), pixels = x.dimension(1) * x.dimension(2), c = x.dimension(3);
  if (pixels < 1)
    detail::fail<ShapeError>("global_avg_pool_nhwc: input ", shape_str(x.dimensions()),
                             " (NHWC) has no pixels");
  Tensor2<T> y(n, c);
  detail::gap_nhwc(x.data(), n, pixels, c, y.data());
  return y;
}

/// Output size of a pooling window along one axis (floor mode, as PyTorch's default).
inline Index pool_out_size(Index in, Index kernel, Index stride, Index padding) {
  return (in + 2 * padding - kernel) / stride + 1;
}

namespace detail {

/// The output shape of max pooling an NHWC shape; OptionsError / ShapeError naming `layer`.
inline std::array<Index, 4> max_pool_shape(const std::string& layer, const std::array<Index, 4>& in,
                                           Index kernel, Index stride, Index padding) {
  if (kernel < 1 || stride < 1 || padding < 0 || 2 * padding > kernel)
    fail<OptionsError>(layer, ": kernel=", kernel, ", stride=", stride, ", padding=", padding,
                       ": need kernel >= 1, stride >= 1, 0 <= padding <= kernel/2");
  if (in[1] + 2 * padding < kernel || in[2] + 2 * padding < kernel)
    fail<ShapeError>(layer, ": input ", shape_str(in), " (NHWC) is smaller than the ", kernel, 'x',
                     kernel, " window after padding ", padding);
  return {in[0], pool_out_size(in[1], kernel, stride, padding), pool_out_size(in[2], kernel, stride, padding),
          in[3]};
}

/// Max pooling of output rows [r0, r1) of sample b of x into y (shapes from max_pool_shape);
/// NaN propagates as in PyTorch.
template <typename T>
void max_pool_nhwc(const Nhwc<const T>& x, const Nhwc<T>& y, Index kernel, Index stride, Index padding, Index b,
                   Index r0, Index r1) {
  const Index h = x.h, w = x.w, c = x.c;
  for (Index r = r0; r < r1; ++r)
    for (Index q = 0; q < y.w; ++q) {
      T* out = y.data + ((b * y.h + r) * y.w + q) * c;
      std::fill(out, out + c, -std::numeric_limits<T>::infinity());
      for (Index i = std::max<Index>(0, r * stride - padding); i < std::min(h, r * stride - padding + kernel); ++i)
        for (Index j = std::max<Index>(0, q * stride - padding); j < std::min(w, q * stride - padding + kernel); ++j) {
          const T* in = x.data + ((b * h + i) * w + j) * c;
          for (Index k = 0; k < c; ++k) out[k] = in[k] > out[k] || in[k] != in[k] ? in[k] : out[k];
        }
    }
}

}  // namespace detail

/// Max pooling over kernel x kernel windows with stride and implicit -inf padding (PyTorch's
/// MaxPool2d). [N, H, W, C] -> [N, Hout, Wout, C], Hout = (H + 2*padding - kernel) / stride + 1.
template <typename T>
Tensor4<T> max_pool2d_nhwc(const Tensor4<T>& x, Index kernel, Index stride, Index padding) {
  Tensor4<T> y(detail::max_pool_shape("max_pool2d", x.dimensions(), kernel, stride, padding));
  for (Index b = 0; b < y.dimension(0); ++b)
    detail::max_pool_nhwc(detail::view(x), detail::view(y), kernel, stride, padding, b, 0, y.dimension(1));
  return y;
}

}  // namespace dynconv
