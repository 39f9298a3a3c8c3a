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

  std::array<Index, 4> output_shape(const std::array<Index, 4>& in) const override {
    const std::array<Index, 4> out = conv2_.output_shape(conv1_.output_shape(in));
    if (downsample_) downsample_->output_shape(in);
    return out;
  }
  /// conv2's epilogue adds the shortcut and applies the ReLU.
  void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, detail::Exec<T>& ex,
           const T* residual) const override {
    const std::array<Index, 4> m = conv1_.output_shape(x.dims());
    typename detail::Workspace<T>::Lease mid = ex.ws.acquire(m[0] * m[1] * m[2] * m[3]), shortcut;
    const detail::Nhwc<T> mid_view{mid.data(), m[0], m[1], m[2], m[3]};
    conv1_.run(x, mid_view, ex, nullptr);
    const T* skip = x.data;
    if (downsample_) {
      shortcut = ex.ws.acquire(y.size());
      downsample_->run(x, detail::Nhwc<T>{shortcut.data(), y.n, y.h, y.w, y.c}, ex, nullptr);
      skip = shortcut.data();
    }
    conv2_.run(detail::as_const(mid_view), y, ex, skip, Activation::ReLU);
    add_residual(y.data, residual, y.size());
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
