// dynconv: MobileNetV2 (torchvision's mobilenet_v2(width_mult=...)).
//
// features.0 stem 3x3/2 -> 17 inverted residuals (t, c, n, s) = (1,16,1,1) (6,24,2,2)
// (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1) -> features.18 1x1 to 1280 ->
// avgpool -> flatten -> classifier.0 (dropout: identity) -> classifier.1 Linear. Channels scale
// by width_mult, rounded by make_divisible(., 8).
#pragma once

#include <dynconv/blocks/inverted_residual.hpp>
#include <dynconv/blocks/mobilenet_v3_block.hpp>
#include <dynconv/models/model.hpp>

namespace dynconv {
namespace models {

/// The paper-closest policy for MobileNetV2: every convolution inside the inverted residual
/// blocks is dynamic (expand, depthwise, project); the stem and the last 1x1 stay static.
inline bool mobilenet_v2_default_policy(const ConvSite& s) {
  return s.role == ConvRole::Expand || s.role == ConvRole::Depthwise || s.role == ConvRole::Project;
}

template <typename T>
Model<T> mobilenet_v2(const std::string& name, double width_mult, const DynamicPolicy& policy,
                      const ModelOptions& options) {
  Model<T> m(name, options.num_classes());
  ZooBuilder<T> b(m, policy, options.dynamic_settings());
  const struct { Index t, c, n, s; } stages[] = {{1, 16, 1, 1},  {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                                 {6, 96, 3, 1},  {6, 160, 3, 2}, {6, 320, 1, 1}};
  Index in = make_divisible(32 * width_mult);
  const Index last = make_divisible(1280 * std::max(1.0, width_mult));
  Value x = m.input("x", 3);
  x = b.unit("features.0.0", "features.0.1", "features.0.2", ConvRole::Stem, x, 3, in, 3, 2, 1, Activation::ReLU6);
  int index = 1;
  for (const auto& st : stages) {
    const Index out = make_divisible(static_cast<double>(st.c) * width_mult);
    for (Index i = 0; i < st.n; ++i, ++index) {
      x = blocks::inverted_residual(b, "features." + std::to_string(index), x, in, out, i == 0 ? st.s : 1, st.t);
      in = out;
    }
  }
  const std::string l = "features." + std::to_string(index);
  x = b.unit(l + ".0", l + ".1", l + ".2", ConvRole::Last, x, in, last, 1, 1, 1, Activation::ReLU6);
  x = m.add("avgpool", AdaptiveAvgPool2d<T>(1), {x});
  x = m.add("flatten", Flatten<T>(), {x});
  x = m.add("classifier.0", Identity<T>(), {x});
  x = m.add("classifier.1", Linear<T>(LinearOptions(last, options.num_classes()).name("classifier.1")), {x});
  m.output("logits", x);
  return m;
}

}  // namespace models
}  // namespace dynconv
