// dynconv: MobileNetV3-Small (torchvision's mobilenet_v3_small).
//
// features.0 stem 3x3/2 hard-swish -> 11 blocks (features.1..11) -> features.12 1x1 96->576
// hard-swish -> avgpool -> flatten -> classifier.0 Linear(576, 1024) -> classifier.1
// hard-swish -> classifier.2 (dropout: identity) -> classifier.3 Linear. BatchNorm eps = 0.001
// (torchvision's choice for MobileNetV3).
#pragma once

#include <dynconv/blocks/mobilenet_v3_block.hpp>
#include <dynconv/models/model.hpp>

namespace dynconv {
namespace models {

/// The paper-closest policy for MobileNetV3-Small: every convolution but the stem is dynamic
/// (depthwise and the 96->576 convolution included); squeeze-excite and classifier are not
/// convolution sites and stay static.
inline bool mobilenet_v3_default_policy(const ConvSite& s) { return s.role != ConvRole::Stem; }

template <typename T>
Model<T> mobilenet_v3_small(const std::string& name, const DynamicPolicy& policy, const ModelOptions& options) {
  Model<T> m(name, options.num_classes());
  ZooBuilder<T> b(m, policy, options.dynamic_settings(), /*bn_eps=*/0.001);
  constexpr Activation RE = Activation::ReLU, HS = Activation::HardSwish;
  // in, kernel, expanded, out, SE, activation, stride
  const blocks::MobileNetV3BlockConfig cfgs[] = {
      {16, 3, 16, 16, true, RE, 2},  {16, 3, 72, 24, false, RE, 2}, {24, 3, 88, 24, false, RE, 1},
      {24, 5, 96, 40, true, HS, 2},  {40, 5, 240, 40, true, HS, 1}, {40, 5, 240, 40, true, HS, 1},
      {40, 5, 120, 48, true, HS, 1}, {48, 5, 144, 48, true, HS, 1}, {48, 5, 288, 96, true, HS, 2},
      {96, 5, 576, 96, true, HS, 1}, {96, 5, 576, 96, true, HS, 1}};
  Value x = m.input("x", 3);
  x = b.unit("features.0.0", "features.0.1", "features.0.2", ConvRole::Stem, x, 3, 16, 3, 2, 1, HS);
  int index = 1;
  for (const blocks::MobileNetV3BlockConfig& cfg : cfgs)
    x = blocks::mobilenet_v3_block(b, "features." + std::to_string(index++), x, cfg);
  x = b.unit("features.12.0", "features.12.1", "features.12.2", ConvRole::Last, x, 96, 576, 1, 1, 1, HS);
  x = m.add("avgpool", AdaptiveAvgPool2d<T>(1), {x});
  x = m.add("flatten", Flatten<T>(), {x});
  x = m.add("classifier.0", Linear<T>(LinearOptions(576, 1024).name("classifier.0")), {x});
  x = m.add("classifier.1", HardSwish<T>(), {x});
  x = m.add("classifier.2", Identity<T>(), {x});
  x = m.add("classifier.3", Linear<T>(LinearOptions(1024, options.num_classes()).name("classifier.3")), {x});
  m.output("logits", x);
  return m;
}

}  // namespace models
}  // namespace dynconv
