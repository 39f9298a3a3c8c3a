// A network that is not in the zoo, built with dynconv's graph: a small dynamic CNN for
// 1-channel 28x28 images (Fashion-MNIST-sized) with a residual block of two dynamic
// convolutions, a squeeze-excite gate, a concat of two branches and two outputs: the class
// logits and a feature map.
//
//   x [N, 1, 28, 28]
//   stem.0 conv 3x3 (1 -> 16) -> stem.1 BatchNorm -> stem.2 ReLU                    s
//   block_conv1 dynamic 3x3 -> block_bn1 -> block_relu1
//   block_conv2 dynamic 3x3 -> block_bn2 -> block_add (+ s) -> block_relu2          r
//   se: r * sigmoid(se_fc2(relu(se_fc1(avgpool(r)))))                              [N, 16, 28, 28]
//   down: 2x2 max pool                                                             [N, 16, 14, 14]
//   branch_conv dynamic 3x3 (16 -> 8, K = 3) -> branch_bn -> branch_act SiLU       [N, 8, 14, 14]
//   cat: concat(down, branch) -> head 1x1 conv (24 -> 32) -> head_act hard-swish   "features"
//   pool -> flatten -> fc Linear(32 -> classes)                                    "logits"
//
// Node names are the PyTorch module names of tools/make_custom_net_data.py's twin, so its
// state_dict loads by name. Everything used here is public API.
#pragma once

#include <dynconv/dynconv.hpp>

template <typename T>
dynconv::Graph<T> custom_network(dynconv::Index classes = 10) {
  using namespace dynconv;
  Graph<T> g("custom_network");
  const Value x = g.input("x", 1);

  Value s = g.add("stem.0", Conv2d<T>(Conv2dOptions(1, 16, 3).padding(1).bias(false).name("stem.0")), {x});
  s = g.add("stem.1", BatchNorm2d<T>(BatchNorm2dOptions(16).name("stem.1")), {s});
  s = g.add("stem.2", ReLU<T>(), {s});

  // The residual block: two dynamic convolutions (K = 4) and the shortcut.
  auto dynamic = [](Index in, Index out, Index kernels, const char* name) {
    return DynamicConv2d<T>(DynamicConv2dOptions(in, out, 3).padding(1).bias(false).kernels(kernels).name(name));
  };
  Value r = g.add("block_conv1", dynamic(16, 16, 4, "block_conv1"), {s});
  r = g.add("block_bn1", BatchNorm2d<T>(BatchNorm2dOptions(16).name("block_bn1")), {r});
  r = g.add("block_relu1", ReLU<T>(), {r});
  r = g.add("block_conv2", dynamic(16, 16, 4, "block_conv2"), {r});
  r = g.add("block_bn2", BatchNorm2d<T>(BatchNorm2dOptions(16).name("block_bn2")), {r});
  r = g.add("block_add", Add<T>(), {r, s});
  r = g.add("block_relu2", ReLU<T>(), {r});

  // Squeeze-and-excitation: a per-channel gate in (0, 1), broadcast over the pixels.
  Value e = g.add("se_pool", AdaptiveAvgPool2d<T>(1), {r});
  e = g.add("se_fc1", Conv2d<T>(Conv2dOptions(16, 4, 1).name("se_fc1")), {e});
  e = g.add("se_relu", ReLU<T>(), {e});
  e = g.add("se_fc2", Conv2d<T>(Conv2dOptions(4, 16, 1).name("se_fc2")), {e});
  e = g.add("se_gate", Sigmoid<T>(), {e});
  const Value gated = g.add("se", Mul<T>(), {r, e});

  // Two branches at 14x14, concatenated along the channels.
  const Value down = g.add("down", MaxPool2d<T>(Pool2dOptions(2).name("down")), {gated});
  Value b = g.add("branch_conv", dynamic(16, 8, 3, "branch_conv"), {down});
  b = g.add("branch_bn", BatchNorm2d<T>(BatchNorm2dOptions(8).name("branch_bn")), {b});
  b = g.add("branch_act", SiLU<T>(), {b});
  Value f = g.add("cat", Concat<T>(), {down, b});
  f = g.add("head", Conv2d<T>(Conv2dOptions(24, 32, 1).name("head")), {f});
  f = g.add("head_act", HardSwish<T>(), {f});

  Value logits = g.add("pool", AdaptiveAvgPool2d<T>(1), {f});
  logits = g.add("flatten", Flatten<T>(), {logits});
  logits = g.add("fc", Linear<T>(LinearOptions(32, classes).name("fc")), {logits});

  g.output("logits", logits);
  g.output("features", f);
  return g;
}
