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

  /// [N, 3, H, W] (NCHW, H, W >= 32) -> logits [N, num_classes], on the calling thread. A
  /// Session runs the same with reused buffers and threads.
  Tensor2<T> forward(const Tensor4<T>& x) const {
    check_input(x.dimensions(), 1);
    return forward_nhwc(nchw_to_nhwc(x));
  }
  /// [N, H, W, 3] (NHWC) -> logits [N, num_classes]
  Tensor2<T> forward_nhwc(const Tensor4<T>& x) const {
    check_input(x.dimensions(), 3);
    Tensor2<T> y(x.dimension(0), num_classes());
    ThreadPool pool(1);
    detail::Workspace<T> ws(1);
    detail::Exec<T> ex{pool, ws};
    run(detail::view(x), y.data(), ex);
    return y;
  }

  /// Throws ShapeError unless `dims` (NCHW: channel_axis 1, NHWC: 3) is a valid input: 3
  /// channels, at least 32x32, and every layer fits.
  void check_input(const std::array<Index, 4>& dims, int channel_axis) const {
    const Index c = dims[static_cast<std::size_t>(channel_axis)];
    const Index h = dims[channel_axis == 1 ? 2 : 1], w = dims[channel_axis == 1 ? 3 : 2];
    if (c != 3 || h < 32 || w < 32)
      detail::fail<ShapeError>(name_, ": input ", shape_str(dims), " (", channel_axis == 1 ? "NCHW" : "NHWC",
                               ") must have 3 channels and be at least 32x32");
    features_.output_shape({dims[0], h, w, c});
  }

  /// The network path: checked NHWC x -> logits [N, num_classes] in caller memory.
  void run(const detail::Nhwc<const T>& x, T* logits, detail::Exec<T>& ex) const {
    const std::array<Index, 4> s = features_.output_shape(x.dims());
    typename detail::Workspace<T>::Lease features = ex.ws.acquire(s[0] * s[1] * s[2] * s[3]);
    features_.run(x, detail::Nhwc<T>{features.data(), s[0], s[1], s[2], s[3]}, ex, nullptr);
    typename detail::Workspace<T>::Lease in = ex.ws.acquire(s[0] * s[3]), out;
    ex.pool.parallel_for(s[0], [&](std::int64_t b, int) {
      detail::gap_nhwc(features.data() + b * s[1] * s[2] * s[3], 1, s[1] * s[2], s[3], in.data() + b * s[3]);
    });
    for (std::size_t i = 0; i < head_.size(); ++i) {
      const DenseLayer<T>& d = head_[i];
      const bool last = i + 1 == head_.size();
      if (!last) out = ex.ws.acquire(s[0] * d.linear.out_features());
      T* y = last ? logits : out.data();
      // The dense layers are memory-bound on their weights: threads split the output features.
      const Index outs = d.linear.out_features();
      const Index parts = ex.sample_parts(1, s[0] * d.linear.madds());
      ex.pool.parallel_for(parts, [&](std::int64_t part, int worker) {
        const std::array<Index, 2> o = detail::split_range(outs, parts, part);
        d.linear.forward_into(in.data(), s[0], y, o[0], o[1], ex.ws, worker);
        for (Index b = 0; b < s[0]; ++b) detail::activate_inplace(d.activation, y + b * outs + o[0], o[1] - o[0]);
      });
      if (!last) std::swap(in, out);
    }
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
  std::string name_;
  Sequential<T> features_;
  std::vector<DenseLayer<T>> head_;
};

}  // namespace models
}  // namespace dynconv
