// dynconv: global average pooling.
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/tensor.hpp>

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

/// [N, H, W, C] -> [N, C]: the same for NHWC activations (accumulates whole channel rows).
template <typename T>
Tensor2<T> global_avg_pool_nhwc(const Tensor4<T>& x) {
  const Index n = x.dimension(0), pixels = x.dimension(1) * x.dimension(2), c = x.dimension(3);
  if (pixels < 1)
    detail::fail<ShapeError>("global_avg_pool_nhwc: input ", shape_str(x.dimensions()),
                             " (NHWC) has no pixels");
  Tensor2<T> y(n, c);
  std::vector<double> sum(static_cast<std::size_t>(c));
  for (Index b = 0; b < n; ++b) {
    std::fill(sum.begin(), sum.end(), 0.0);
    const T* p = x.data() + b * pixels * c;
    for (Index k = 0; k < pixels; ++k, p += c)
      for (Index ch = 0; ch < c; ++ch) sum[ch] += static_cast<double>(p[ch]);
    for (Index ch = 0; ch < c; ++ch)
      y(b, ch) = static_cast<T>(sum[ch] / static_cast<double>(pixels));
  }
  return y;
}

/// Output size of a pooling window along one axis (floor mode, as PyTorch's default).
inline Index pool_out_size(Index in, Index kernel, Index stride, Index padding) {
  return (in + 2 * padding - kernel) / stride + 1;
}

/// Max pooling over kernel x kernel windows with stride and implicit -inf padding (PyTorch's
/// MaxPool2d). [N, H, W, C] -> [N, Hout, Wout, C], Hout = (H + 2*padding - kernel) / stride + 1.
template <typename T>
Tensor4<T> max_pool2d_nhwc(const Tensor4<T>& x, Index kernel, Index stride, Index padding) {
  const Index n = x.dimension(0), h = x.dimension(1), w = x.dimension(2), c = x.dimension(3);
  if (kernel < 1 || stride < 1 || padding < 0 || 2 * padding > kernel)
    detail::fail<OptionsError>("max_pool2d: kernel=", kernel, ", stride=", stride, ", padding=",
                               padding, ": need kernel >= 1, stride >= 1, 0 <= padding <= kernel/2");
  if (h + 2 * padding < kernel || w + 2 * padding < kernel)
    detail::fail<ShapeError>("max_pool2d: input ", shape_str(x.dimensions()),
                             " (NHWC) is smaller than the ", kernel, 'x', kernel,
                             " window after padding ", padding);
  const Index oh = pool_out_size(h, kernel, stride, padding);
  const Index ow = pool_out_size(w, kernel, stride, padding);
  Tensor4<T> y(n, oh, ow, c);
  for (Index b = 0; b < n; ++b)
    for (Index r = 0; r < oh; ++r)
      for (Index q = 0; q < ow; ++q) {
        T* out = y.data() + ((b * oh + r) * ow + q) * c;
        std::fill(out, out + c, -std::numeric_limits<T>::infinity());
        for (Index i = std::max<Index>(0, r * stride - padding);
             i < std::min(h, r * stride - padding + kernel); ++i)
          for (Index j = std::max<Index>(0, q * stride - padding);
               j < std::min(w, q * stride - padding + kernel); ++j) {
            const T* in = x.data() + ((b * h + i) * w + j) * c;
            for (Index k = 0; k < c; ++k) out[k] = in[k] > out[k] || in[k] != in[k] ? in[k] : out[k];
          }
      }
  return y;
}

}  // namespace dynconv
