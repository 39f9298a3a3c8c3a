// dynconv: MobileNetV2's inverted residual block (torchvision's InvertedResidual) as graph nodes.
//
//   [expand 1x1 -> BN -> ReLU6]   (when expand_ratio != 1)
//   depthwise 3x3, stride -> BN -> ReLU6
//   project 1x1 -> BN             (linear bottleneck)
//   + input                       (when stride == 1 and in == out)
// Node names under prefix P (e.g. "features.3"): P.conv.0.0/P.conv.0.1 (expand conv/BN),
// P.conv.1.0/P.conv.1.1 (depthwise), P.conv.2 (project conv), P.conv.3 (its BN); without
// expansion the depthwise unit is P.conv.0, the projection P.conv.1 / P.conv.2. The block's
// output is the value P (the residual Add, or an Identity). [N, in, H, W] -> [N, out, H/s, W/s].
#pragma once

#include <dynconv/models/zoo_builder.hpp>

#include <cmath>

namespace dynconv {
namespace blocks {

template <typename T>
Value inverted_residual(models::ZooBuilder<T>& b, const std::string& p, const Value& x, Index in, Index out,
                        Index stride, Index expand_ratio) {
  const Index hidden = static_cast<Index>(std::lround(static_cast<double>(in * expand_ratio)));
  const std::string c = p + ".conv.";
  int i = 0;
  Value y = x;
  if (expand_ratio != 1) {
    const std::string u = c + std::to_string(i++);
    y = b.unit(u + ".0", u + ".1", u + ".2", ConvRole::Expand, y, in, hidden, 1, 1, 1, Activation::ReLU6);
  }
  const std::string u = c + std::to_string(i++);
  y = b.unit(u + ".0", u + ".1", u + ".2", ConvRole::Depthwise, y, hidden, hidden, 3, stride, hidden, Activation::ReLU6);
  const std::string project = c + std::to_string(i++), bn = c + std::to_string(i);
  y = b.unit(project, bn, "", ConvRole::Project, y, hidden, out, 1, 1, 1, Activation::Identity);
  if (stride == 1 && in == out) return b.graph().add(p, Add<T>(), {y, x});
  return b.graph().add(p, Identity<T>(), {y});
}

}  // namespace blocks
}  // namespace dynconv
