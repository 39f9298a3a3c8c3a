// dynconv: a Session runs one model with reusable workspaces and, optionally, several threads.
//
//   auto model = dynconv::models::create<float>("dy_mobilenet_v3_small");
//   dynconv::models::Session<float> session(*model, /*threads=*/2);
//   const dynconv::Tensor2<float>& logits = session.forward(images);  // [N, 3, H, W] -> [N, classes]
//
// (STUB: the workspace and threading land next; for now it calls Model::forward.)
#pragma once

#include <dynconv/models/model.hpp>
#include <dynconv/thread_pool.hpp>

namespace dynconv {
namespace models {

template <typename T>
class Session {
 public:
  explicit Session(const Model<T>& model, int threads = 1) : model_(model), pool_(threads) {}
  const Model<T>& model() const { return model_; }
  int threads() const { return pool_.threads(); }
  /// [N, 3, H, W] -> logits [N, classes]; the reference stays valid until the next call.
  const Tensor2<T>& forward(const Tensor4<T>& x) {
    out_ = model_.forward(x);
    return out_;
  }
  const Tensor2<T>& forward_nhwc(const Tensor4<T>& x) {
    out_ = model_.forward_nhwc(x);
    return out_;
  }

 private:
  const Model<T>& model_;
  ThreadPool pool_;
  Tensor2<T> out_;
};

}  // namespace models
}  // namespace dynconv
