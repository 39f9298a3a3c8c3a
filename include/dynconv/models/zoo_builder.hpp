// dynconv: how the zoo adds torchvision's "conv -> BatchNorm -> activation" units to a graph,
// each convolution static or dynamic as the model's DynamicPolicy decides from its ConvSite.
//
// Node names are the PyTorch module paths, so parameters carry torchvision's names:
// conv "features.3.conv.0.0" (weight "features.3.conv.0.0.weight"), its BatchNorm
// "features.3.conv.0.1", its activation "features.3.conv.0.2". The BatchNorm folds into the
// convolution when the graph loads its weights (Graph::fold_batchnorms).
#pragma once

#include <dynconv/batchnorm.hpp>
#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/elementwise.hpp>
#include <dynconv/graph.hpp>

#include <functional>
#include <string>
#include <utility>

namespace dynconv {

/// Where a convolution sits in a zoo network: what a DynamicPolicy decides on.
enum class ConvRole {
  Stem,        // the first convolution of the network
  Expand,      // 1x1 expansion of an inverted residual
  Depthwise,   // depthwise convolution of an inverted residual
  Project,     // 1x1 projection of an inverted residual
  Last,        // the 1x1 convolution before the pooling (MobileNets)
  BlockConv,   // a convolution of a ResNet block (basic: both 3x3; bottleneck: 1x1, 3x3, 1x1)
  Downsample,  // the 1x1 shortcut convolution of a ResNet block
};

inline const char* role_name(ConvRole r) {
  switch (r) {
    case ConvRole::Stem: return "stem";
    case ConvRole::Expand: return "expand";
    case ConvRole::Depthwise: return "depthwise";
    case ConvRole::Project: return "project";
    case ConvRole::Last: return "last";
    case ConvRole::BlockConv: return "block_conv";
    case ConvRole::Downsample: return "downsample";
  }
  return "?";
}

/// A convolution of a zoo network, as a DynamicPolicy sees it.
struct ConvSite {
  std::string name;  // parameter prefix of the convolution, e.g. "features.3.conv.1.0"
  ConvRole role;
  Index in_channels, out_channels, kernel, stride, groups;
};

/// Decides which convolutions of a zoo network are dynamic.
using DynamicPolicy = std::function<bool(const ConvSite&)>;

/// Settings of the dynamic convolutions a policy creates. reduction and min_hidden are DY-Conv's;
/// ODConv's attention has OSVAI's hidden size max(Cin / 16, 16); CondConv (each layer its own
/// routing) has no hidden layer.
struct DynamicSettings {
  Index kernels = 4;
  Index reduction = 4;
  Index min_hidden = 1;
  double temperature = 1.0;
  AttentionKind kind = AttentionKind::DyConv;
};

namespace models {

/// Adds zoo units to a graph. One builder per model.
template <typename T>
class ZooBuilder {
 public:
  ZooBuilder(Graph<T>& graph, DynamicPolicy policy, DynamicSettings dynamic, double bn_eps = 1e-5)
      : g_(graph), policy_(std::move(policy)), dyn_(dynamic), eps_(bn_eps) {}

  Graph<T>& graph() { return g_; }

  /// conv (k x k, "same" padding (k - 1) / 2, no bias) at node `conv`, BatchNorm at node `bn`,
  /// then `act` at node `act_name` unless act is Identity. Returns the unit's output.
  Value unit(const std::string& conv, const std::string& bn, const std::string& act_name, ConvRole role, const Value& x,
             Index in, Index out, Index k, Index stride, Index groups, Activation act) {
    const ConvSite site{conv, role, in, out, k, stride, groups};
    Value c;
    if (policy_ && policy_(site)) {
      DynamicConv2dOptions o =
          dyn_.kind == AttentionKind::ODConv     ? DynamicConv2dOptions::odconv(in, out, k, dyn_.kernels)
          : dyn_.kind == AttentionKind::CondConv ? DynamicConv2dOptions::condconv(in, out, k, dyn_.kernels)
                                                 : DynamicConv2dOptions(in, out, k).kernels(dyn_.kernels).reduction(dyn_.reduction).min_hidden(dyn_.min_hidden);
      c = g_.add(conv,
                 DynamicConv2d<T>(o.stride(stride)
                                      .padding((k - 1) / 2)
                                      .groups(groups)
                                      .bias(false)
                                      .temperature(dyn_.temperature)
                                      .name(conv)),
                 {x});
    } else {
      c = g_.add(conv,
                 Conv2d<T>(Conv2dOptions(in, out, k).stride(stride).padding((k - 1) / 2).groups(groups).bias(false).name(conv)),
                 {x});
    }
    Value y = g_.add(bn, BatchNorm2d<T>(BatchNorm2dOptions(out).eps(eps_).name(bn)), {c});
    if (act != Activation::Identity) y = g_.add(act_name, ActivationLayer<T>(act), {y});
    return y;
  }

 private:
  Graph<T>& g_;
  DynamicPolicy policy_;
  DynamicSettings dyn_;
  double eps_;
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class ZooBuilder<float>;
extern template class ZooBuilder<double>;
#endif

}  // namespace models
}  // namespace dynconv
