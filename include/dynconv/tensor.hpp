// dynconv: tensor types and layout conversions.
//
// Tensors are Eigen tensors in row-major order, so that index order equals memory order
// (the last index is contiguous), as in PyTorch:
//   Tensor4<T>  activations, [N, C, H, W] (NCHW, the public layout) or [N, H, W, C] (NHWC)
//   Tensor2<T>  matrices, e.g. attention [N, K] or Linear inputs [N, features]
//   Tensor1<T>  vectors, e.g. biases [C]
//
// The public API speaks NCHW. Inside a network activations travel in NHWC (see the layout
// note in conv2d.hpp for why), as NhwcTensor / NhwcView (runtime.hpp): a different type, so
// the two layouts cannot be mixed up. Each layer's forward() takes either and returns the same.
#pragma once

#include <dynconv/error.hpp>

// (Left defined when an including header defined it.)
#ifdef DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/isa.hpp>
#else
#define DYNCONV_DETAIL_ALLOWED
#include <dynconv/detail/isa.hpp>
#undef DYNCONV_DETAIL_ALLOWED
#endif

#include <unsupported/Eigen/CXX11/Tensor>

#include <algorithm>
#include <array>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace dynconv {

using Index = Eigen::Index;

template <typename T, int Rank>
using Tensor = Eigen::Tensor<T, Rank, Eigen::RowMajor>;
template <typename T>
using Tensor1 = Tensor<T, 1>;
template <typename T>
using Tensor2 = Tensor<T, 2>;
template <typename T>
using Tensor4 = Tensor<T, 4>;
template <typename T>
using Tensor5 = Tensor<T, 5>;

/// "[2, 3, 224, 224]": a shape as error messages print it.
template <typename Dims>
std::string shape_str(const Dims& dims) {
  std::ostringstream os;
  os << '[';
  for (std::size_t i = 0; i < static_cast<std::size_t>(dims.size()); ++i) {
    if (i) os << ", ";
    os << dims[i];
  }
  os << ']';
  return os.str();
}

namespace detail {
/// dst [cols, rows] = src [rows, cols] (row-major), in blocks of 16 x 16 so that the reads and
/// the writes both go along whole cache lines.
template <typename T>
void transpose_blocks(const T* __restrict src, Index rows, Index cols, T* __restrict dst) {
  constexpr Index kBlock = 16;
  for (Index i0 = 0; i0 < rows; i0 += kBlock)
    for (Index j0 = 0; j0 < cols; j0 += kBlock) {
      const Index i1 = std::min(rows, i0 + kBlock), j1 = std::min(cols, j0 + kBlock);
      for (Index j = j0; j < j1; ++j)
        for (Index i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
    }
}
/// dst [pixels, C] = src [C, pixels] for a few channels (C a constant: the compiler vectorises
/// the interleaving of C planes; an image's 3 channels).
template <Index C, typename T>
void interleave_planes(const T* __restrict src, Index pixels, T* __restrict dst) {
  for (Index p = 0; p < pixels; ++p)
    for (Index ch = 0; ch < C; ++ch) dst[p * C + ch] = src[ch * pixels + p];
}
/// dst [n, h, w, c] = src [n, c, h, w] (compiled for the kernel set in use, isa.hpp).
template <typename T>
void nchw_to_nhwc(const T* src, Index n, Index c, Index h, Index w, T* dst) {
  const Index pixels = h * w, size = c * pixels;
  run_for_kernel_isa([&] {
    for (Index b = 0; b < n; ++b) {
      if (c == 1 || pixels == 1) std::copy(src + b * size, src + (b + 1) * size, dst + b * size);
      else if (c == 3) interleave_planes<3>(src + b * size, pixels, dst + b * size);
      else transpose_blocks(src + b * size, c, pixels, dst + b * size);
    }
  });
}
/// dst [n, c, h, w] = src [n, h, w, c] (compiled for the kernel set in use, isa.hpp).
template <typename T>
void nhwc_to_nchw(const T* src, Index n, Index h, Index w, Index c, T* dst) {
  const Index pixels = h * w, size = c * pixels;
  run_for_kernel_isa([&] {
    for (Index b = 0; b < n; ++b) {
      if (c == 1 || pixels == 1) std::copy(src + b * size, src + (b + 1) * size, dst + b * size);
      else transpose_blocks(src + b * size, pixels, c, dst + b * size);
    }
  });
}
}  // namespace detail

namespace detail {

/// Throws ShapeError "<layer>: <what> has shape [..], expected [..]" unless t has `expected`.
template <typename T, int Rank>
void check_shape(const std::string& layer, const char* what, const Tensor<T, Rank>& t,
                 const std::array<Index, Rank>& expected) {
  for (int i = 0; i < Rank; ++i)
    if (t.dimension(i) != expected[i])
      fail<ShapeError>(layer, ": ", what, " has shape ", shape_str(t.dimensions()), ", expected ",
                       shape_str(expected));
}

/// Fills n values uniformly in [-bound, bound] from a fixed-seed generator (PyTorch's default
/// initialisation range), so a freshly built layer computes something non-trivial and
/// reproducible. Real weights come from set_* or a weight file.
template <typename T>
void init_uniform(T* p, Index n, double bound, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(-bound, bound);
  for (Index i = 0; i < n; ++i) p[i] = static_cast<T>(dist(gen));
}

}  // namespace detail
}  // namespace dynconv
