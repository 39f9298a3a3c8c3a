// dynconv: a whole network: features (NHWC modules) -> global average pool -> dense head.
//
// Model<T> takes images [N, 3, H, W] (NCHW, H and W >= 32) and returns logits
// [N, num_classes]. Its parameters carry torchvision's names, so a torchvision state_dict
// saved as safetensors loads into the static model as it is; a dynamic convolution at prefix
// P has P.weight [K, Cout, Cin/groups, kh, kw], P.attention.fc1.weight [hidden, Cin],
// P.attention.fc1.bias, P.attention.fc2.weight [K, hidden], P.attention.fc2.bias and,
// optionally, P.attention.temperature (tau = 1 where absent). BatchNorms fold at load.
//
// Thread safety: forward() is const and may run concurrently; load() may not.
#pragma once

#include <dynconv/blocks/module.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/pooling.hpp>
#include <dynconv/weights.hpp>

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

/// Per-layer and total cost of a model for one sample.
struct ModelCost {
  std::vector<NamedCost> layers;
  LayerCost total;
};

/// One dense layer of the head: Linear, then an activation.
template <typename T>
struct DenseLayer {
  std::string name;  // e.g. "classifier.1" or "fc"
  Linear<T> linear;
  Activation activation = Activation::Identity;
};

template <typename T>
class Model {
 public:
  Model(std::string name, Sequential<T> features, std::vector<DenseLayer<T>> head)
      : name_(std::move(name)), features_(std::move(features)), head_(std::move(head)) {}

  const std::string& name() const { return name_; }
  Index num_classes() const { return head_.back().linear.out_features(); }
  const Sequential<T>& features() const { return features_; }

  /// [N, 3, H, W] (NCHW, H, W >= 32) -> logits [N, num_classes]
  Tensor2<T> forward(const Tensor4<T>& x) const {
    check_input(x, 1);
    return run(nchw_to_nhwc(x));
  }
  /// [N, H, W, 3] (NHWC) -> logits [N, num_classes]
  Tensor2<T> forward_nhwc(const Tensor4<T>& x) const {
    check_input(x, 3);
    return run(x);
  }

  /// Loads every parameter from `file`; missing, unexpected, mis-shaped or non-finite tensors
  /// are errors naming the tensor (and both shapes). BatchNorm folds into the convolutions.
  /// The file sets each dynamic layer's temperature (1 where it holds none). After a failed
  /// load the parameters are partly replaced: load again or discard the model.
  /// LoadMode::Upcycle loads a static model's checkpoint into this dynamic model (weights.hpp).
  void load(const SafeTensors& file, LoadMode mode = LoadMode::Strict) {
    WeightLoader w(file, mode);
    features_.load(w);
    for (DenseLayer<T>& d : head_) {
      const Linear<T>& l = d.linear;
      d.linear.set_weight(w.take<T, 2>(d.name + ".weight", {l.out_features(), l.in_features()}));
      d.linear.set_bias(w.take<T, 1>(d.name + ".bias", {l.out_features()}));
    }
    w.finish();
  }

  /// Writes every parameter under the names load() takes (BatchNorms as folded identities,
  /// so the file loads back into the same function), with the model name as metadata.
  void save(SafeTensorsWriter& out) const {
    features_.save(out);
    for (const DenseLayer<T>& d : head_) {
      out.add(d.name + ".weight", d.linear.weight());
      out.add(d.name + ".bias", d.linear.bias());
    }
    out.set_metadata("model", name_);
    out.set_metadata("num_classes", std::to_string(num_classes()));
  }

  /// Parameters and multiply-adds of one sample of h x w, per layer and in total.
  ModelCost cost(Index h, Index w) const {
    ModelCost c;
    features_.cost(h, w, c.layers);
    for (const DenseLayer<T>& d : head_) {
      LayerCost l;
      l.params = d.linear.params();
      l.conv_madds = d.linear.madds();
      c.layers.push_back({d.name, l});
    }
    for (const NamedCost& l : c.layers) c.total += l.cost;
    return c;
  }

 private:
  /// The network on checked NHWC input.
  Tensor2<T> run(const Tensor4<T>& x) const {
    Tensor2<T> y = global_avg_pool_nhwc(features_.forward_nhwc(x));
    for (const DenseLayer<T>& d : head_) {
      y = d.linear.forward(y);
      activate_inplace(d.activation, y);
    }
    return y;
  }

  void check_input(const Tensor4<T>& x, int channel_axis) const {
    const Index c = x.dimension(channel_axis);
    const Index h = x.dimension(channel_axis == 1 ? 2 : 1),
                w = x.dimension(channel_axis == 1 ? 3 : 2);
    if (c != 3 || h < 32 || w < 32)
      detail::fail<ShapeError>(name_, ": input ", shape_str(x.dimensions()), " (",
                               channel_axis == 1 ? "NCHW" : "NHWC",
                               ") must have 3 channels and be at least 32x32");
  }

  std::string name_;
  Sequential<T> features_;
  std::vector<DenseLayer<T>> head_;
};

}  // namespace models
}  // namespace dynconv
