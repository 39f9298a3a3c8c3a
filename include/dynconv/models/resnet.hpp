// dynconv: ResNet-10, -18 and -50 (torchvision's ResNet(BasicBlock, [1,1,1,1]), resnet18 and
// resnet50).
//
// conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4 (widths 64, 128, 256, 512,
// strides 1, 2, 2, 2; blocks[i] basic blocks, or bottleneck blocks of 4x the width in output
// channels) -> avgpool -> flatten -> fc.
#pragma once

#include <dynconv/blocks/basic_block.hpp>
#include <dynconv/blocks/bottleneck.hpp>
#include <dynconv/models/model.hpp>
#include <dynconv/pooling.hpp>

#include <array>

namespace dynconv {
namespace models {

/// The paper-closest policy for ResNets: the convolutions of every block (the two 3x3 of a basic
/// block, the 1x1, 3x3, 1x1 of a bottleneck) are dynamic; the stem and the 1x1 downsample
/// shortcuts stay static.
inline bool resnet_default_policy(const ConvSite& s) { return s.role == ConvRole::BlockConv; }

/// The block a ResNet is made of.
enum class ResNetBlock { Basic, Bottleneck };

/// A ResNet of `blocks` blocks per stage.
template <typename T>
Model<T> resnet(const std::string& name, const std::array<Index, 4>& blocks, ResNetBlock block,
                const DynamicPolicy& policy, const ModelOptions& options) {
  Model<T> m(name, options.num_classes());
  ZooBuilder<T> b(m, policy, options.dynamic_settings());
  Value x = m.input("x", 3);
  x = b.unit("conv1", "bn1", "relu", ConvRole::Stem, x, 3, 64, 7, 2, 1, Activation::ReLU);
  x = m.add("maxpool", MaxPool2d<T>(Pool2dOptions(3).stride(2).padding(1).name("maxpool")), {x});
  Index in = 64;
  const Index widths[] = {64, 128, 256, 512};
  const Index expansion = block == ResNetBlock::Bottleneck ? blocks::kBottleneckExpansion : 1;
  for (int stage = 0; stage < 4; ++stage)
    for (Index i = 0; i < blocks[stage]; ++i) {
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(i);
      const Index stride = (stage > 0 && i == 0) ? 2 : 1;
      x = block == ResNetBlock::Bottleneck ? blocks::bottleneck(b, p, x, in, widths[stage], stride)
                                           : blocks::basic_block(b, p, x, in, widths[stage], stride);
      in = widths[stage] * expansion;
    }
  x = m.add("avgpool", AdaptiveAvgPool2d<T>(1), {x});
  x = m.add("flatten", Flatten<T>(), {x});
  x = m.add("fc", Linear<T>(LinearOptions(in, options.num_classes()).name("fc")), {x});
  m.output("logits", x);
  return m;
}

}  // namespace models
}  // namespace dynconv
