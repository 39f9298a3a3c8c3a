// dynconv: global average pooling.
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/tensor.hpp>

namespace dynconv {

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
    T sum(0);
    for (Index k = 0; k < pixels; ++k) sum += p[k];
    y.data()[i] = sum / static_cast<T>(pixels);
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
  y.setZero();
  for (Index b = 0; b < n; ++b) {
    T* out = y.data() + b * c;
    const T* p = x.data() + b * pixels * c;
    for (Index k = 0; k < pixels; ++k, p += c)
      for (Index ch = 0; ch < c; ++ch) out[ch] += p[ch];
    for (Index ch = 0; ch < c; ++ch) out[ch] /= static_cast<T>(pixels);
  }
  return y;
}

}  // namespace dynconv
