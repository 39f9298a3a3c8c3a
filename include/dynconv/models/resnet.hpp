// dynconv: ResNet-10 and ResNet-18 (torchvision's ResNet(BasicBlock, [1,1,1,1]) and resnet18).
//
// conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4 (64, 128, 256, 512 channels,
// strides 1, 2, 2, 2; `blocks` basic blocks each) -> avgpool -> flatten -> fc.
#pragma once

#include <dynconv/blocks/basic_block.hpp>
#include <dynconv/models/model.hpp>
#include <dynconv/pooling.hpp>

namespace dynconv {
namespace models {

/// The paper-closest policy for ResNets: the two 3x3 convolutions of every basic block are
/// dynamic; the stem and the 1x1 downsample shortcuts stay static.
inline bool resnet_default_policy(const ConvSite& s) { return s.role == ConvRole::BlockConv; }

template <typename T>
Model<T> resnet(const std::string& name, Index blocks_per_stage, const DynamicPolicy& policy,
                const ModelOptions& options) {
  Model<T> m(name, options.num_classes());
  ZooBuilder<T> b(m, policy, options.dynamic_settings());
  Value x = m.input("x", 3);
  x = b.unit("conv1", "bn1", "relu", ConvRole::Stem, x, 3, 64, 7, 2, 1, Activation::ReLU);
  x = m.add("maxpool", MaxPool2d<T>(Pool2dOptions(3).stride(2).padding(1).name("maxpool")), {x});
  Index in = 64;
  const Index widths[] = {64, 128, 256, 512};
  for (int stage = 0; stage < 4; ++stage)
    for (Index i = 0; i < blocks_per_stage; ++i) {
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(i);
      x = blocks::basic_block(b, p, x, in, widths[stage], (stage > 0 && i == 0) ? 2 : 1);
      in = widths[stage];
    }
  x = m.add("avgpool", AdaptiveAvgPool2d<T>(1), {x});
  x = m.add("flatten", Flatten<T>(), {x});
  x = m.add("fc", Linear<T>(LinearOptions(512, options.num_classes()).name("fc")), {x});
  m.output("logits", x);
  return m;
}

}  // namespace models
}  // namespace dynconv
