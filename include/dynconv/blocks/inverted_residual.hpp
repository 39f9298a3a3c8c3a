// dynconv: MobileNetV2's inverted residual block (torchvision's InvertedResidual).
//
//   [expand 1x1 -> BN -> ReLU6]   (when expand_ratio != 1)
//   depthwise 3x3, stride -> BN -> ReLU6
//   project 1x1 -> BN             (linear bottleneck)
//   + input                       (when stride == 1 and in == out)
// Parameter names under prefix P (e.g. "features.3"): P.conv.0.0/P.conv.0.1 (expand conv/BN),
// P.conv.1.0/P.conv.1.1 (depthwise), P.conv.2 (project conv), P.conv.3 (its BN); without
// expansion the depthwise unit is P.conv.0, the projection P.conv.1 / P.conv.2.
// Input [N, H, W, in] -> output [N, H/stride, W/stride, out] (NHWC).
#pragma once

#include <dynconv/blocks/module.hpp>

#include <cmath>

namespace dynconv {

template <typename T>
class InvertedResidual final : public ResidualBlock<T> {
 public:
  InvertedResidual(const std::string& prefix, Index in, Index out, Index stride,
                   Index expand_ratio, const DynamicPolicy& policy, const DynamicSettings& dyn,
                   double bn_eps = 1e-5)
      : ResidualBlock<T>(stride == 1 && in == out) {
    const Index hidden = static_cast<Index>(std::lround(static_cast<double>(in * expand_ratio)));
    const std::string c = prefix + ".conv.";
    int i = 0;
    if (expand_ratio != 1) {
      const std::string u = c + std::to_string(i++);
      this->body_.template add<ConvUnit<T>>(
          ConvUnitSpec{u + ".0", u + ".1", ConvRole::Expand, in, hidden, 1, 1, 1,
                       Activation::ReLU6, bn_eps},
          policy, dyn);
    }
    const std::string u = c + std::to_string(i++);
    this->body_.template add<ConvUnit<T>>(
        ConvUnitSpec{u + ".0", u + ".1", ConvRole::Depthwise, hidden, hidden, 3, stride, hidden,
                     Activation::ReLU6, bn_eps},
        policy, dyn);
    const std::string project = c + std::to_string(i++), bn = c + std::to_string(i);
    this->body_.template add<ConvUnit<T>>(
        ConvUnitSpec{project, bn, ConvRole::Project, hidden, out, 1, 1, 1, Activation::Identity,
                     bn_eps},
        policy, dyn);
  }

};

}  // namespace dynconv
