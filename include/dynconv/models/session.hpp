// dynconv: a Session runs one model with reusable workspaces and a pool of threads.
//
//   auto model = dynconv::models::create<float>("dy_mobilenet_v3_small");
//   dynconv::models::Session<float> session(*model, /*threads=*/2);
//   const dynconv::Tensor2<float>& logits = session.forward(images);  // [N, 3, H, W] -> [N, classes]
//
// The session owns every buffer a forward pass needs (activations, im2col columns, mixed
// kernels, GEMM packing) and keeps them between calls: after the first call with a given input
// shape, forward() allocates nothing (allocations() stops counting). Each layer splits its work
// over the session's threads: samples of a batch, or, for a batch smaller than the pool, rows or
// output-channel tiles of one sample. A session reproduces its results bit for bit; sessions
// with different thread counts agree up to float rounding (the split changes the GEMM's edge
// handling), and a one-thread session gives exactly Model::forward's numbers.
//
// Thread safety: a Session is used by one thread at a time; any number of sessions (in any
// threads) may share one model, whose forward pass is const. Loading weights into the model
// while a session runs it is a data race.
#pragma once

#include <dynconv/models/model.hpp>
#include <dynconv/thread_pool.hpp>

namespace dynconv {
namespace models {

template <typename T>
class Session {
 public:
  /// threads >= 1 (OptionsError otherwise); the calling thread is one of them.
  explicit Session(const Model<T>& model, int threads = 1)
      : model_(model), pool_(threads), ws_(threads) {}
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Model<T>& model() const { return model_; }
  int threads() const { return pool_.threads(); }

  /// [N, 3, H, W] (NCHW, H, W >= 32) -> logits [N, num_classes]; ShapeError for other
  /// shapes. The reference stays valid until the next call.
  const Tensor2<T>& forward(const Tensor4<T>& x) {
    model_.check_input(x.dimensions(), 1);
    const Index n = x.dimension(0), c = x.dimension(1), h = x.dimension(2), w = x.dimension(3);
    typename detail::Workspace<T>::Lease nhwc = ws_.acquire(x.size());
    pool_.parallel_for(n, [&](std::int64_t b, int) {
      detail::nchw_to_nhwc(x.data() + b * c * h * w, 1, c, h, w, nhwc.data() + b * c * h * w);
    });
    return run(detail::Nhwc<const T>{nhwc.data(), n, h, w, c});
  }
  /// [N, H, W, 3] (NHWC) -> logits [N, num_classes].
  const Tensor2<T>& forward_nhwc(const Tensor4<T>& x) {
    model_.check_input(x.dimensions(), 3);
    return run(detail::view(x));
  }

  /// Buffers allocated by this session so far; constant once every input shape has been seen.
  Index allocations() const { return ws_.allocations() + output_allocations_; }

 private:
  const Tensor2<T>& run(const detail::Nhwc<const T>& x) {
    if (out_.dimension(0) != x.n || out_.dimension(1) != model_.num_classes()) {
      out_.resize(x.n, model_.num_classes());
      ++output_allocations_;
    }
    detail::Exec<T> ex{pool_, ws_};
    model_.run(x, out_.data(), ex);
    ws_.equalize();
    return out_;
  }

  const Model<T>& model_;
  ThreadPool pool_;
  detail::Workspace<T> ws_;
  Tensor2<T> out_;
  Index output_allocations_ = 0;
};

}  // namespace models
}  // namespace dynconv
