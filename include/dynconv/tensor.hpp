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

#include <unsupported/Eigen/CXX11/Tensor>

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
/// dst [n, h, w, c] = src [n, c, h, w]
template <typename T>
void nchw_to_nhwc(const T* src, Index n, Index c, Index h, Index w, T* dst) {
  for (Index b = 0; b < n; ++b)
    for (Index ch = 0; ch < c; ++ch)
      for (Index p = 0; p < h * w; ++p) dst[(b * h * w + p) * c + ch] = src[(b * c + ch) * h * w + p];
}
/// dst [n, c, h, w] = src [n, h, w, c]
template <typename T>
void nhwc_to_nchw(const T* src, Index n, Index h, Index w, Index c, T* dst) {
  for (Index b = 0; b < n; ++b)
    for (Index p = 0; p < h * w; ++p)
      for (Index ch = 0; ch < c; ++ch) dst[(b * c + ch) * h * w + p] = src[(b * h * w + p) * c + ch];
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
