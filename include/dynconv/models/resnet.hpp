// dynconv: ResNet-10 and ResNet-18 (torchvision's ResNet(BasicBlock, [1,1,1,1]) and resnet18).
//
// conv1 7x7/2 -> bn1 -> ReLU -> 3x3/2 max pool -> layer1..layer4 (64, 128, 256, 512 channels,
// strides 1, 2, 2, 2; `blocks` basic blocks each) -> pool -> fc.
#pragma once

#include <dynconv/blocks/basic_block.hpp>
#include <dynconv/models/model.hpp>

namespace dynconv {
namespace models {

/// The paper-closest policy for ResNets: the two 3x3 convolutions of every basic block are
/// dynamic; the stem and the 1x1 downsample shortcuts stay static.
inline bool resnet_default_policy(const ConvSite& s) { return s.role == ConvRole::BlockConv; }

/// 3x3 max pooling with stride 2 and padding 1 (ResNet's stem). [N, H, W, C] -> [N, H/2, W/2, C]
template <typename T>
class MaxPool3x3s2 final : public Module<T> {
 public:
  std::array<Index, 4> output_shape(const std::array<Index, 4>& in) const override {
    return detail::max_pool_shape("maxpool", in, 3, 2, 1);
  }
  void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, detail::Exec<T>& ex,
           const T* residual) const override {
    const Index parts = ex.sample_parts(x.n, y.size() / y.n * 9);
    ex.pool.parallel_for(x.n * parts, [&](std::int64_t task, int) {
      const std::array<Index, 2> r = detail::split_range(y.h, parts, task % parts);
      detail::max_pool_nhwc(x, y, 3, 2, 1, task / parts, r[0], r[1]);
    });
    add_residual(y.data, residual, y.size());
  }
  void load(WeightLoader&) override {}
  void save(SafeTensorsWriter&) const override {}
  std::array<Index, 2> cost(Index h, Index w, std::vector<NamedCost>&) const override {
    return {pool_out_size(h, 3, 2, 1), pool_out_size(w, 3, 2, 1)};
  }
};

template <typename T>
Model<T> resnet(const std::string& name, Index blocks_per_stage, const DynamicPolicy& policy,
                const ModelOptions& options) {
  const DynamicSettings& dyn = options.dynamic_settings();
  Sequential<T> f;
  f.template add<ConvUnit<T>>(
      ConvUnitSpec{"conv1", "bn1", ConvRole::Stem, 3, 64, 7, 2, 1, Activation::ReLU}, policy, dyn);
  f.template add<MaxPool3x3s2<T>>();
  Index in = 64;
  const Index widths[] = {64, 128, 256, 512};
  for (int stage = 0; stage < 4; ++stage)
    for (Index b = 0; b < blocks_per_stage; ++b) {
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(b);
      const Index stride = (stage > 0 && b == 0) ? 2 : 1;
      f.template add<BasicBlock<T>>(p, in, widths[stage], stride, policy, dyn);
      in = widths[stage];
    }
  std::vector<DenseLayer<T>> head;
  head.push_back({"fc", Linear<T>(LinearOptions(512, options.num_classes()).name("fc")),
                  Activation::Identity});
  return Model<T>(name, std::move(f), std::move(head));
}

}  // namespace models
}  // namespace dynconv
