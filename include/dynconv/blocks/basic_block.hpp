// dynconv: ResNet's basic block (torchvision's BasicBlock).
//
//   y = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x))
// conv1 3x3 with stride, conv2 3x3; shortcut = x, or downsample.0 (1x1, stride) + downsample.1
// (BN) when the stride or the channel count changes. Parameter names under prefix P
// (e.g. "layer2.0"): P.conv1, P.bn1, P.conv2, P.bn2, P.downsample.0, P.downsample.1.
// Input [N, H, W, in] -> output [N, H/stride, W/stride, out] (NHWC).
#pragma once

#include <dynconv/blocks/module.hpp>

namespace dynconv {

template <typename T>
class BasicBlock final : public Module<T> {
 public:
  BasicBlock(const std::string& p, Index in, Index out, Index stride, const DynamicPolicy& policy,
             const DynamicSettings& dyn, double bn_eps = 1e-5)
      : conv1_({p + ".conv1", p + ".bn1", ConvRole::BlockConv, in, out, 3, stride, 1,
                Activation::ReLU, bn_eps},
               policy, dyn),
        conv2_({p + ".conv2", p + ".bn2", ConvRole::BlockConv, out, out, 3, 1, 1,
                Activation::Identity, bn_eps},
               policy, dyn) {
    if (stride != 1 || in != out)
      downsample_.emplace(ConvUnitSpec{p + ".downsample.0", p + ".downsample.1",
                                       ConvRole::Downsample, in, out, 1, stride, 1,
                                       Activation::Identity, bn_eps},
                          policy, dyn);
  }

  Tensor4<T> forward_nhwc(const Tensor4<T>& x) const override {
    Tensor4<T> y = conv2_.forward_nhwc(conv1_.forward_nhwc(x));
    if (downsample_)
      y += downsample_->forward_nhwc(x);
    else
      y += x;
    activate_inplace(Activation::ReLU, y);
    return y;
  }
  void load(WeightLoader& w) override {
    conv1_.load(w);
    conv2_.load(w);
    if (downsample_) downsample_->load(w);
  }
  void save(SafeTensorsWriter& out) const override {
    conv1_.save(out);
    conv2_.save(out);
    if (downsample_) downsample_->save(out);
  }
  std::array<Index, 2> cost(Index h, Index w, std::vector<NamedCost>& out) const override {
    const std::array<Index, 2> mid = conv1_.cost(h, w, out);
    if (downsample_) downsample_->cost(h, w, out);
    return conv2_.cost(mid[0], mid[1], out);
  }

 private:
  ConvUnit<T> conv1_, conv2_;
  std::optional<ConvUnit<T>> downsample_;
};

}  // namespace dynconv
