// dynconv: a zoo network: a Graph with one input "x" [N, 3, H, W] and one output "logits"
// [N, num_classes], with the model's name and options.
//
// Its parameters carry torchvision's names, so a torchvision state_dict saved as safetensors
// loads into the static model as it is; a dynamic convolution at prefix P has P.weight
// [K, Cout, Cin/groups, kh, kw], P.attention.fc1.weight [hidden, Cin], P.attention.fc1.bias,
// P.attention.fc2.weight [K, hidden], P.attention.fc2.bias and, optionally,
// P.attention.temperature (tau = 1 where absent). BatchNorms fold at load.
//
// Thread safety: forward() is const and may run concurrently; load() may not.
#pragma once

#include <dynconv/graph.hpp>
#include <dynconv/models/zoo_builder.hpp>
#include <dynconv/session.hpp>

#include <string>
#include <utility>
#include <vector>

namespace dynconv {
namespace models {

/// Options of a zoo model. Defaults: 1000 classes, K = 4, attention hidden =
/// max(1, Cin / 4), tau = 1, and the model's own paper-closest policy.
struct ModelOptions {
  ModelOptions& num_classes(Index n) {
    num_classes_ = n;
    return *this;
  }
  Index num_classes() const { return num_classes_; }
  ModelOptions& kernels(Index k) {
    dynamic_.kernels = k;
    return *this;
  }
  ModelOptions& reduction(Index r) {
    dynamic_.reduction = r;
    return *this;
  }
  ModelOptions& min_hidden(Index m) {
    dynamic_.min_hidden = m;
    return *this;
  }
  /// The temperature of a freshly built (or upcycled) model; load() takes it from the file.
  ModelOptions& temperature(double t) {
    dynamic_.temperature = t;
    return *this;
  }
  /// The attention kind of the dynamic convolutions; the zoo sets ODConv for the od_ models.
  ModelOptions& attention_kind(AttentionKind k) {
    dynamic_.kind = k;
    return *this;
  }
  const DynamicSettings& dynamic_settings() const { return dynamic_; }
  /// Which convolutions of a dy_ model are dynamic; unset: the model's default (see zoo.hpp).
  ModelOptions& policy(DynamicPolicy p) {
    policy_ = std::move(p);
    return *this;
  }
  const DynamicPolicy& policy() const { return policy_; }

 private:
  Index num_classes_ = 1000;
  DynamicSettings dynamic_;
  DynamicPolicy policy_;
};

/// Per-node and total cost of a model for one sample.
struct ModelCost {
  std::vector<NamedCost> layers;
  LayerCost total;
};

template <typename T>
class Model : public Graph<T> {
 public:
  Model(const std::string& name, Index num_classes) : Graph<T>(name), num_classes_(num_classes) {}

  Index num_classes() const { return num_classes_; }

  /// [N, 3, H, W] (NCHW) -> logits [N, num_classes], on the calling thread. A Session runs the
  /// same with reused buffers and threads.
  Tensor2<T> forward(const Tensor4<T>& x) const {
    Session<T> s(*this, 1);
    return s.forward(x);
  }
  /// NHWC images -> logits [N, num_classes].
  Tensor2<T> forward(const NhwcTensor<T>& x) const {
    Session<T> s(*this, 1);
    return s.forward(x);
  }

  /// Writes every parameter (Graph::save) with the model name and class count as metadata.
  void save(SafeTensorsWriter& out) const {
    Graph<T>::save(out);
    out.set_metadata("model", this->name());
    out.set_metadata("num_classes", std::to_string(num_classes_));
  }

  /// Parameters and multiply-adds of one h x w image, per node and in total.
  ModelCost cost(Index h, Index w) const {
    ModelCost c;
    c.layers = Graph<T>::cost({NhwcShape{1, h, w, 3}});
    for (const NamedCost& l : c.layers) c.total += l.cost;
    return c;
  }

 private:
  Index num_classes_;
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class Model<float>;
extern template class Model<double>;
#endif

}  // namespace models
}  // namespace dynconv
