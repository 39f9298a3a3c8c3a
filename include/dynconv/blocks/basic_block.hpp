// dynconv: ResNet's basic block (torchvision's BasicBlock) as graph nodes.
//
//   y = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x))
// conv1 3x3 with stride, conv2 3x3; shortcut = x, or downsample.0 (1x1, stride) + downsample.1
// (BN) when the stride or the channel count changes. Node names under prefix P (e.g.
// "layer2.0"): P.conv1, P.bn1, P.relu1, P.conv2, P.bn2, P.downsample.0, P.downsample.1, P.add,
// and P, the final ReLU (the block's output). conv2 runs with the add and the ReLU fused in.
// [N, in, H, W] -> [N, out, H/stride, W/stride].
#pragma once

#include <dynconv/models/zoo_builder.hpp>

namespace dynconv {
namespace blocks {

template <typename T>
Value basic_block(models::ZooBuilder<T>& b, const std::string& p, const Value& x, Index in, Index out, Index stride) {
  Value y = b.unit(p + ".conv1", p + ".bn1", p + ".relu1", ConvRole::BlockConv, x, in, out, 3, stride, 1,
                   Activation::ReLU);
  y = b.unit(p + ".conv2", p + ".bn2", "", ConvRole::BlockConv, y, out, out, 3, 1, 1, Activation::Identity);
  Value shortcut = x;
  if (stride != 1 || in != out)
    shortcut = b.unit(p + ".downsample.0", p + ".downsample.1", "", ConvRole::Downsample, x, in, out, 1, stride, 1,
                      Activation::Identity);
  const Value sum = b.graph().add(p + ".add", Add<T>(), {y, shortcut});
  return b.graph().add(p, ReLU<T>(), {sum});
}

}  // namespace blocks
}  // namespace dynconv
