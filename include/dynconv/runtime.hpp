// dynconv: the public runtime types every layer, module, graph and program runs on.
//
//   NhwcShape      the shape of an activation inside a network: [N, H, W, C] (NHWC)
//   NhwcView<T>    a view of NHWC activations in memory owned elsewhere (T const for inputs)
//   NhwcTensor<T>  an owning NHWC activation tensor. The public tensors (Tensor4<T>) are NCHW,
//                  as PyTorch's; an NhwcTensor is a different type, so an NHWC activation can
//                  never be passed where an NCHW tensor is expected (or back) by mistake:
//                  nchw_to_nhwc() and nhwc_to_nchw() convert.
//   Workspace<T>   every buffer a forward pass needs: pooled activation buffers (leases) and
//                  per-worker scratch; only grows, so a steady-state pass allocates nothing
//   Context<T>     what a pass runs with: a ThreadPool and a Workspace. Users create one
//                  (Session owns one); each layer splits its work over the context's threads
//   PostOps<T>     what a module applies to its output before it returns: y = after(act(y) +
//                  residual); convolutions fuse it into their epilogue, and write y's channel
//                  means when asked (for an attention that reads y)
//   Inputs<T>      the inputs of a module's run: a small array of NhwcView<const T>
//
// Every module has one run signature (module.hpp):
//   void run(const Inputs<T>& x, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/error.hpp>
#include <dynconv/tensor.hpp>
#include <dynconv/thread_pool.hpp>

#include <Eigen/Core>

#if !EIGEN_VERSION_AT_LEAST(3, 4, 0)
#error "dynconv needs Eigen 3.4 or newer (Debian 12: apt-get install libeigen3-dev); this Eigen is older"
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

namespace dynconv {

/// The shape of NHWC activations: n samples of h x w pixels with c channels.
struct NhwcShape {
  Index n = 0, h = 0, w = 0, c = 0;
  Index pixels() const { return h * w; }
  Index sample_size() const { return h * w * c; }
  Index size() const { return n * h * w * c; }
  bool operator==(const NhwcShape& o) const { return n == o.n && h == o.h && w == o.w && c == o.c; }
  bool operator!=(const NhwcShape& o) const { return !(*this == o); }
  /// The same shape in PyTorch's order, [N, C, H, W].
  std::array<Index, 4> nchw() const { return {n, c, h, w}; }
  /// "[2, 16, 28, 28] (NCHW)": how error messages print an activation shape (PyTorch's order,
  /// as users know their tensors).
  std::string str() const { return shape_str(nchw()) + " (NCHW)"; }
};

/// A view of NHWC activations [n, h, w, c] in memory owned elsewhere. T is const for inputs.
template <typename T>
struct NhwcView {
  T* data = nullptr;
  Index n = 0, h = 0, w = 0, c = 0;

  NhwcView() = default;
  NhwcView(T* d, Index n_, Index h_, Index w_, Index c_) : data(d), n(n_), h(h_), w(w_), c(c_) {}
  NhwcView(T* d, const NhwcShape& s) : data(d), n(s.n), h(s.h), w(s.w), c(s.c) {}
  /// A mutable view converts to a const one.
  template <typename U, typename = std::enable_if_t<std::is_same<const U, T>::value && !std::is_same<U, T>::value>>
  NhwcView(const NhwcView<U>& o) : data(o.data), n(o.n), h(o.h), w(o.w), c(o.c) {}

  Index pixels() const { return h * w; }
  Index sample_size() const { return h * w * c; }
  Index size() const { return n * h * w * c; }
  T* sample(Index b) const { return data + b * sample_size(); }
  NhwcShape shape() const { return {n, h, w, c}; }
};

/// An owning NHWC activation tensor [N, H, W, C]; see the header comment for why it is its own
/// type. Row-major, contiguous, the channel fastest.
template <typename T>
class NhwcTensor {
 public:
  NhwcTensor() = default;
  explicit NhwcTensor(const NhwcShape& s) : t_(s.n, s.h, s.w, s.c) {}
  NhwcTensor(Index n, Index h, Index w, Index c) : t_(n, h, w, c) {}
  /// Takes a row-major tensor whose dimensions already are [N, H, W, C]: the caller states the
  /// layout, so this constructor is explicit.
  explicit NhwcTensor(Tensor4<T> nhwc_ordered) : t_(std::move(nhwc_ordered)) {}

  NhwcShape shape() const { return {t_.dimension(0), t_.dimension(1), t_.dimension(2), t_.dimension(3)}; }
  Index size() const { return t_.size(); }
  T* data() { return t_.data(); }
  const T* data() const { return t_.data(); }
  NhwcView<T> view() { return {t_.data(), shape()}; }
  NhwcView<const T> view() const { return {t_.data(), shape()}; }
  /// The values as a row-major Eigen tensor with dimensions [N, H, W, C].
  const Tensor4<T>& tensor() const { return t_; }
  Tensor4<T>& tensor() { return t_; }
  void resize(const NhwcShape& s) { t_.resize(s.n, s.h, s.w, s.c); }
  void set_constant(T v) { t_.setConstant(v); }

 private:
  Tensor4<T> t_;
};

/// [N, C, H, W] -> NHWC
template <typename T>
NhwcTensor<T> nchw_to_nhwc(const Tensor4<T>& x) {
  NhwcTensor<T> y(x.dimension(0), x.dimension(2), x.dimension(3), x.dimension(1));
  detail::nchw_to_nhwc(x.data(), x.dimension(0), x.dimension(1), x.dimension(2), x.dimension(3), y.data());
  return y;
}

/// NHWC -> [N, C, H, W]
template <typename T>
Tensor4<T> nhwc_to_nchw(const NhwcTensor<T>& x) {
  const NhwcShape s = x.shape();
  Tensor4<T> y(s.n, s.c, s.h, s.w);
  detail::nhwc_to_nchw(x.data(), s.n, s.h, s.w, s.c, y.data());
  return y;
}

/// The inputs of one module call: `size` views (most modules take one).
/// The views of several inputs are borrowed (the array must outlive the call); a single input
/// is held by value, so Inputs<T>(x.view()) is safe to keep.
template <typename T>
struct Inputs {
  const NhwcView<const T>* views = nullptr;
  int size = 0;
  /// [n, C]: the mean over the pixels of each channel of input 0, when the module that produced
  /// it wrote them (PostOps::means; a Graph asks for them where a module pools its input, see
  /// Module::pools_input), else null: the module pools the input itself. A module that does
  /// not pool input 0 ignores them (a graph passes them to every reader of that value).
  const T* means = nullptr;
  Inputs() = default;
  Inputs(const NhwcView<const T>* v, int n) : views(v), size(n) {}
  /// One input.
  Inputs(const NhwcView<const T>& one) : size(1), one_(one) {}  // NOLINT: implicit on purpose
  const NhwcView<const T>& operator[](int i) const { return views ? views[i] : one_; }

 private:
  NhwcView<const T> one_;
};

/// What a module applies to its output y before returning, in this order:
///   y = after(act(y) + residual)
/// residual (optional) is laid out as y. The graph fuses a following activation, residual add
/// and activation into the producing convolution this way (conv + BatchNorm + ReLU + add + ReLU).
template <typename T>
struct PostOps {
  Activation act = Activation::Identity;
  const T* residual = nullptr;
  Activation after = Activation::Identity;
  /// [n, C] or null: where a module whose writes_means() is true also writes the mean over the
  /// pixels of each channel of the final y (what an attention's pooling of y would compute):
  /// a convolution sums each channel of a sample that is one task (or of the samples a task
  /// holds whole: a static batch of small Winograd images) as it finishes it (tile by tile, in
  /// double), or, when the samples are split into slices over the pool, pools y after the layer.
  /// Not a change of y: empty() ignores it.
  T* means = nullptr;
  bool empty() const { return act == Activation::Identity && !residual && after == Activation::Identity; }
};

/// Scratch kinds of a worker; each is a separate grow-only buffer (Columns: im2col, or
/// Winograd's input tiles; Tiles: Winograd's GEMM results; Transformed: a Winograd kernel;
/// Sums: channel sums in double, a sample's or a run of samples', with_sums).
enum class Scratch { Columns, Kernel, Sources, PackA, PackB, Tiles, Transformed, Sums, Count };

namespace detail {
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

/// Values made from a layer's weights on first use and kept while the weights stay (a static
/// layer's packed kernel and Winograd transform, a dynamic layer's packed experts): the first
/// caller makes them under the lock, later callers read them without it. A layer holds its
/// Kept in a shared_ptr and replaces it when its weights change.
template <typename T>
class Kept {
 public:
  /// The kept values, `make(out)` filling `size` of them on the first call.
  template <typename Make>
  const T* get(Index size, const Make& make) {
    if (!ready_.load(std::memory_order_acquire)) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!ready_.load(std::memory_order_relaxed)) {
        Index allocations = 0;
        T* data = buffer_.get(size, allocations);
        make(data);
        data_ = data;
        ready_.store(true, std::memory_order_release);
      }
    }
    return data_;
  }

 private:
  std::mutex mutex_;
  std::atomic<bool> ready_{false};
  GrowBuffer<T> buffer_;
  const T* data_ = nullptr;
};
}  // namespace detail

/// Every buffer a forward pass needs: activation buffers leased from a pool (returned when the
/// lease ends) and per-worker scratch. Buffers only grow: after the first pass at an input
/// shape (or a few, while they find their sizes), a pass allocates nothing and allocations()
/// stops growing.
template <typename T>
class Workspace {
 public:
  explicit Workspace(int workers) : workers_(static_cast<std::size_t>(workers)) {}
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

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
    /// Returns the buffer to the pool now.
    void release() {
      if (ws_) ws_->pool_[slot_].busy = false;
      ws_ = nullptr;
    }

   private:
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
    return Lease(this, best, s.buffer.get(std::max<Index>(size, 1), allocations_));
  }

  /// Worker `worker`'s scratch buffer of kind `kind`, at least `size` values. Safe to call
  /// from parallel tasks (each worker has its own buffers).
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
      for (std::size_t k = 0; k < w.size(); ++k) w[k].get(largest_[k].load(std::memory_order_relaxed), allocations_);
  }

  /// Buffers allocated so far (pooled and scratch): constant in a steady state.
  Index allocations() const {
    Index total = allocations_;
    for (Index a : worker_allocations_) total += a;
    return total;
  }

 private:
  struct Slot {
    detail::GrowBuffer<T> buffer;
    bool busy = false;
  };
  static constexpr std::size_t kCounters = 64;
  std::vector<Slot> pool_;
  std::vector<std::array<detail::GrowBuffer<T>, static_cast<std::size_t>(Scratch::Count)>> workers_;
  Index allocations_ = 0;
  // One counter per worker (modulo 64), so that workers never write the same counter.
  std::array<Index, kCounters> worker_allocations_{};
  std::array<std::atomic<Index>, static_cast<std::size_t>(Scratch::Count)> largest_{};
};

/// The execution context of forward passes: a thread pool and the workspace its workers use.
/// Create one per thread that runs passes (a Session owns one); a context is used by one
/// thread at a time.
template <typename T>
class Context {
 public:
  /// threads >= 1 (the calling thread is one of them); OptionsError otherwise.
  explicit Context(int threads = 1) : pool_(threads), ws_(threads) {}
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  ThreadPool& pool() { return pool_; }
  Workspace<T>& workspace() { return ws_; }
  const Workspace<T>& workspace() const { return ws_; }
  int threads() const { return pool_.threads(); }

  /// A sample with less work (multiply-adds) than this is not split over the pool: waking it
  /// costs a few microseconds. Default 2^18; tests set 0 to drive the split paths on small layers.
  Context& min_parallel_madds(Index m) {
    min_parallel_madds_ = m;
    return *this;
  }
  Index min_parallel_madds() const { return min_parallel_madds_; }

  /// Into how many parts each of n samples is split: one when the batch alone keeps the pool
  /// busy or a sample is too small to pay for it, else threads().
  Index sample_parts(Index n, Index madds_per_sample) const {
    return n >= threads() || madds_per_sample < min_parallel_madds_ ? 1 : threads();
  }

 private:
  ThreadPool pool_;
  Workspace<T> ws_;
  Index min_parallel_madds_ = Index(1) << 18;
};

/// Splits [0, total) into `parts` nearly equal ranges; range i is [begin, end).
inline std::array<Index, 2> split_range(Index total, Index parts, Index i) {
  const Index base = total / parts, extra = total % parts;
  const Index begin = i * base + std::min(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class NhwcTensor<float>;
extern template class NhwcTensor<double>;
extern template class Workspace<float>;
extern template class Workspace<double>;
extern template class Context<float>;
extern template class Context<double>;
#endif

}  // namespace dynconv
