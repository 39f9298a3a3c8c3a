// dynconv: MobileNetV3's block (torchvision's mobilenetv3.InvertedResidual) and its
// squeeze-and-excitation, as graph nodes.
//
//   [expand 1x1 -> BN -> act]            (when expanded != in)
//   depthwise kxk, stride -> BN -> act
//   [squeeze-excite]                     (when use_se)
//   project 1x1 -> BN
//   + input                              (when stride == 1 and in == out)
// act is ReLU or hard-swish. Node names under prefix P: P.block.<i>.0 / .1 / .2 for each conv
// unit in order (conv, BN, activation), and for the squeeze-excite at P.block.<i>: .avgpool,
// .fc1 (1x1 conv with bias), .activation (ReLU), .fc2, .scale_activation (hard-sigmoid) and
// P.block.<i> itself, the gate (input x scale). The block's output is the value P.
#pragma once

#include <dynconv/models/zoo_builder.hpp>
#include <dynconv/pooling.hpp>

#include <algorithm>

namespace dynconv {

/// torchvision's _make_divisible: v rounded to a multiple of `divisor` (>= divisor), never
/// more than 10% below v.
inline Index make_divisible(double v, Index divisor = 8) {
  Index r = std::max(divisor, static_cast<Index>(v + divisor / 2.0) / divisor * divisor);
  if (static_cast<double>(r) < 0.9 * v) r += divisor;
  return r;
}

namespace blocks {

/// Squeeze-and-excitation at node prefix p: x * HardSigmoid(fc2(ReLU(fc1(avgpool(x))))),
/// fc1/fc2 1x1 convolutions with bias, always static. [N, C, H, W] -> [N, C, H, W].
template <typename T>
Value squeeze_excite(Graph<T>& g, const std::string& p, const Value& x, Index channels, Index squeeze) {
  Value s = g.add(p + ".avgpool", AdaptiveAvgPool2d<T>(1), {x});
  s = g.add(p + ".fc1", Conv2d<T>(Conv2dOptions(channels, squeeze, 1).name(p + ".fc1")), {s});
  s = g.add(p + ".activation", ReLU<T>(), {s});
  s = g.add(p + ".fc2", Conv2d<T>(Conv2dOptions(squeeze, channels, 1).name(p + ".fc2")), {s});
  s = g.add(p + ".scale_activation", HardSigmoid<T>(), {s});
  return g.add(p, Mul<T>(), {x, s});
}

struct MobileNetV3BlockConfig {
  Index in, kernel, expanded, out;
  bool use_se;
  Activation activation;
  Index stride;
};

template <typename T>
Value mobilenet_v3_block(models::ZooBuilder<T>& b, const std::string& prefix, const Value& x,
                         const MobileNetV3BlockConfig& cfg) {
  const std::string p = prefix + ".block.";
  int i = 0;
  Value y = x;
  auto unit = [&](ConvRole role, Index in, Index out, Index k, Index stride, Index groups, Activation act) {
    const std::string u = p + std::to_string(i++);
    y = b.unit(u + ".0", u + ".1", u + ".2", role, y, in, out, k, stride, groups, act);
  };
  if (cfg.expanded != cfg.in) unit(ConvRole::Expand, cfg.in, cfg.expanded, 1, 1, 1, cfg.activation);
  unit(ConvRole::Depthwise, cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, cfg.expanded, cfg.activation);
  if (cfg.use_se)
    y = squeeze_excite(b.graph(), p + std::to_string(i++), y, cfg.expanded,
                       make_divisible(static_cast<double>(cfg.expanded / 4)));
  unit(ConvRole::Project, cfg.expanded, cfg.out, 1, 1, 1, Activation::Identity);
  if (cfg.stride == 1 && cfg.in == cfg.out) return b.graph().add(prefix, Add<T>(), {y, x});
  return b.graph().add(prefix, Identity<T>(), {y});
}

}  // namespace blocks
}  // namespace dynconv
