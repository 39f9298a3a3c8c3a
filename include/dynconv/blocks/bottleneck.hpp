// dynconv: ResNet's bottleneck block (torchvision's Bottleneck, the "v1.5" form with the stride
// on the 3x3 convolution) as graph nodes.
//
//   y = ReLU(bn3(conv3(ReLU(bn2(conv2(ReLU(bn1(conv1(x)))))))) + shortcut(x))
// conv1 1x1 (in -> width), conv2 3x3 with stride (width -> width), conv3 1x1 (width -> 4 width);
// shortcut = x, or downsample.0 (1x1, stride) + downsample.1 (BN) when the stride or the channel
// count changes. Node names under prefix P (e.g. "layer2.0"): P.conv1, P.bn1, P.relu1, P.conv2,
// P.bn2, P.relu2, P.conv3, P.bn3, P.downsample.0, P.downsample.1, P.add, and P, the final ReLU
// (the block's output). All three convolutions have the role BlockConv.
// [N, in, H, W] -> [N, 4 width, H/stride, W/stride].
#pragma once

#include <dynconv/models/zoo_builder.hpp>

namespace dynconv {
namespace blocks {

/// torchvision's Bottleneck.expansion: the block's output has 4 times its width in channels.
constexpr Index kBottleneckExpansion = 4;

template <typename T>
Value bottleneck(models::ZooBuilder<T>& b, const std::string& p, const Value& x, Index in, Index width,
                 Index stride) {
  const Index out = width * kBottleneckExpansion;
  Value y = b.unit(p + ".conv1", p + ".bn1", p + ".relu1", ConvRole::BlockConv, x, in, width, 1, 1, 1,
                   Activation::ReLU);
  y = b.unit(p + ".conv2", p + ".bn2", p + ".relu2", ConvRole::BlockConv, y, width, width, 3, stride, 1,
             Activation::ReLU);
  y = b.unit(p + ".conv3", p + ".bn3", "", ConvRole::BlockConv, y, width, out, 1, 1, 1, Activation::Identity);
  Value shortcut = x;
  if (stride != 1 || in != out)
    shortcut = b.unit(p + ".downsample.0", p + ".downsample.1", "", ConvRole::Downsample, x, in, out, 1, stride, 1,
                      Activation::Identity);
  const Value sum = b.graph().add(p + ".add", Add<T>(), {y, shortcut});
  return b.graph().add(p, ReLU<T>(), {sum});
}

}  // namespace blocks
}  // namespace dynconv
