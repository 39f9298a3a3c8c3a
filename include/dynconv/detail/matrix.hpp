// Row-major Eigen matrix views of raw buffers: how the kernels hand buffers to Eigen's GEMM.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <Eigen/Core>

namespace dynconv {
namespace detail {

template <typename T>
using RowMajorMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using StridedMap = Eigen::Map<RowMajorMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename T>
using ConstStridedMap = Eigen::Map<const RowMajorMatrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

}  // namespace detail
}  // namespace dynconv
