// The execution context of a forward pass: raw NHWC views, the workspace that owns every
// buffer a pass needs (activation buffers pooled and reused, per-worker scratch), the thread
// pool, and the GEMM the kernels call with workspace-owned packing buffers.
//
// After the first pass with a given input shape (or a few, while buffers find their sizes) a
// pass allocates nothing: Workspace::allocations() stops growing. Tests check that.
#pragma once
#include <dynconv/detail/internal_check.hpp>

#include <dynconv/detail/matrix.hpp>
#include <dynconv/tensor.hpp>
#include <dynconv/thread_pool.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

namespace dynconv {
namespace detail {

/// A view of NHWC activations [n, h, w, c] in memory owned elsewhere.
template <typename T>
struct Nhwc {
  T* data;
  Index n, h, w, c;
  Index pixels() const { return h * w; }
  Index sample_size() const { return h * w * c; }
  Index size() const { return n * h * w * c; }
  T* sample(Index b) const { return data + b * sample_size(); }
  std::array<Index, 4> dims() const { return {n, h, w, c}; }
};

template <typename T>
Nhwc<const T> view(const Tensor4<T>& x) {
  return {x.data(), x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3)};
}
template <typename T>
Nhwc<T> view(Tensor4<T>& x) {
  return {x.data(), x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3)};
}
template <typename T>
Nhwc<const T> as_const(const Nhwc<T>& x) {
  return {x.data, x.n, x.h, x.w, x.c};
}

/// 64-byte aligned, uninitialised storage that only grows; counts its allocations.
template <typename T>
class GrowBuffer {
 public:
  T* get(Index size, Index& allocations) {
    if (size > capacity_) {
      const std::size_t bytes = (static_cast<std::size_t>(size) * sizeof(T) + 63) / 64 * 64;
      void* p = std::aligned_alloc(64, bytes);
      if (!p) throw std::bad_alloc();
      data_.reset(static_cast<T*>(p));
      capacity_ = size;
      ++allocations;
    }
    return data_.get();
  }
  Index capacity() const { return capacity_; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  Index capacity_ = 0;
};

/// Scratch kinds of a worker; each is a separate grow-only buffer.
enum class Scratch { Columns, Kernel, Sources, PackA, PackB, Count };

template <typename T>
class Workspace {
 public:
  explicit Workspace(int workers) : workers_(static_cast<std::size_t>(workers)) {}

  /// An activation buffer from the pool; returned to it when the lease is destroyed.
  class Lease {
   public:
    Lease() = default;
    Lease(Workspace* ws, std::size_t slot, T* data) : ws_(ws), slot_(slot), data_(data) {}
    Lease(Lease&& o) noexcept : ws_(o.ws_), slot_(o.slot_), data_(o.data_) { o.ws_ = nullptr; }
    Lease& operator=(Lease&& o) noexcept {
      if (this != &o) {
        release();
        ws_ = o.ws_, slot_ = o.slot_, data_ = o.data_;
        o.ws_ = nullptr;
      }
      return *this;
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { release(); }
    T* data() const { return data_; }

   private:
    void release() {
      if (ws_) ws_->pool_[slot_].busy = false;
      ws_ = nullptr;
    }
    Workspace* ws_ = nullptr;
    std::size_t slot_ = 0;
    T* data_ = nullptr;
  };

  /// The smallest free pooled buffer that holds `size` values (grown or added if none does).
  /// Called by the thread that runs the pass, never from inside parallel tasks.
  Lease acquire(Index size) {
    std::size_t best = pool_.size();
    for (std::size_t i = 0; i < pool_.size(); ++i) {
      if (pool_[i].busy) continue;
      const Index cap = pool_[i].buffer.capacity();
      if (best == pool_.size()) {
        best = i;
        continue;
      }
      const Index best_cap = pool_[best].buffer.capacity();
      const bool fits = cap >= size, best_fits = best_cap >= size;
      if ((fits && (!best_fits || cap < best_cap)) || (!fits && !best_fits && cap > best_cap)) best = i;
    }
    if (best == pool_.size()) pool_.emplace_back();
    Slot& s = pool_[best];
    s.busy = true;
    return Lease(this, best, s.buffer.get(size, allocations_));
  }

  /// Worker `worker`'s scratch buffer of kind `kind`, at least `size` values.
  T* scratch(int worker, Scratch kind, Index size) {
    std::atomic<Index>& largest = largest_[static_cast<std::size_t>(kind)];
    for (Index seen = largest.load(std::memory_order_relaxed);
         size > seen && !largest.compare_exchange_weak(seen, size, std::memory_order_relaxed);) {
    }
    return workers_[static_cast<std::size_t>(worker)][static_cast<std::size_t>(kind)].get(
        size, worker_allocations_[static_cast<std::size_t>(worker) % kCounters]);
  }

  /// Grows every worker's scratch to the largest size any worker asked for: tasks go to
  /// whichever worker is free, so after one pass and this call no worker needs to grow again.
  /// Call it between passes (not while tasks run).
  void equalize() {
    for (auto& w : workers_)
      for (std::size_t k = 0; k < w.size(); ++k)
        w[k].get(largest_[k].load(std::memory_order_relaxed), allocations_);
  }

  /// Buffers allocated so far (pooled and scratch): constant in a steady state.
  Index allocations() const {
    Index total = allocations_;
    for (Index a : worker_allocations_) total += a;
    return total;
  }

 private:
  struct Slot {
    GrowBuffer<T> buffer;
    bool busy = false;
  };
  static constexpr std::size_t kCounters = 64;
  std::vector<Slot> pool_;
  std::vector<std::array<GrowBuffer<T>, static_cast<std::size_t>(Scratch::Count)>> workers_;
  Index allocations_ = 0;
  // One counter per worker (modulo 64), so that workers never write the same counter.
  std::array<Index, kCounters> worker_allocations_{};
  std::array<std::atomic<Index>, static_cast<std::size_t>(Scratch::Count)> largest_{};
};

/// What a module's run() gets: the pool to split work over and the workspace.
template <typename T>
struct Exec {
  ThreadPool& pool;
  Workspace<T>& ws;
  /// A sample with less work (multiply-adds) is not split over the pool: waking it costs a
  /// few microseconds. (Tests set 0 to drive the split paths with small layers.)
  Index min_parallel_madds = Index(1) << 18;
  int threads() const { return pool.threads(); }
  /// Into how many parts each of n samples is split: one when the batch alone keeps the pool
  /// busy or a sample is too small to pay for it, else threads().
  Index sample_parts(Index n, Index madds_per_sample) const {
    return n >= threads() || madds_per_sample < min_parallel_madds ? 1 : threads();
  }
};

/// C[m, n] += A[m, k] * B[k, n] (or * B^T for B [n, k] when TransposeB), all row-major with
/// leading dimensions lda, ldb, ldc, on the calling thread, with `worker`'s packing buffers from
/// the workspace (so Eigen's GEMM allocates nothing). Eigen's internal GEMM driver of 3.4.
template <typename T, bool TransposeB = false>
void gemm(Index m, Index n, Index k, const T* a, Index lda, const T* b, Index ldb, T* c, Index ldc,
          Workspace<T>& ws, int worker) {
  if (m == 0 || n == 0 || k == 0) return;
  // Eigen computes the row-major product as the column-major C^T [n, m] = B^T [n, k] A^T [k, m]:
  // B row-major [k, n] is B^T column-major; a transposed B [n, k] row-major is B^T row-major.
  struct Blocking : Eigen::internal::level3_blocking<T, T> {
    Blocking(Index rows, Index cols, Index depth, Workspace<T>& w, int worker) {
      this->m_mc = rows;
      this->m_nc = cols;
      this->m_kc = depth;
      Eigen::internal::computeProductBlockingSizes<T, T, 1, Index>(this->m_kc, this->m_mc, this->m_nc, Index(1));
      this->m_blockA = w.scratch(worker, Scratch::PackA, this->m_kc * this->m_mc);
      this->m_blockB = w.scratch(worker, Scratch::PackB, this->m_kc * this->m_nc);
    }
  } blocking(n, m, k, ws, worker);
  constexpr int kLhsOrder = TransposeB ? Eigen::RowMajor : Eigen::ColMajor;
  Eigen::internal::general_matrix_matrix_product<Index, T, kLhsOrder, false, T, Eigen::ColMajor, false,
                                                 Eigen::ColMajor, 1>::run(n, m, k, b, ldb, a, lda, c, 1, ldc,
                                                                          T(1), blocking, nullptr);
}

/// Splits [0, total) into `parts` nearly equal ranges; range i is [begin, end).
inline std::array<Index, 2> split_range(Index total, Index parts, Index i) {
  const Index base = total / parts, extra = total % parts;
  const Index begin = i * base + std::min(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

}  // namespace detail
}  // namespace dynconv
