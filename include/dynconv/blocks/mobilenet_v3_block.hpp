// dynconv: MobileNetV3's block (torchvision's mobilenetv3.InvertedResidual) and its
// squeeze-and-excitation.
//
//   [expand 1x1 -> BN -> act]            (when expanded != in)
//   depthwise kxk, stride -> BN -> act
//   [squeeze-excite]                     (when use_se)
//   project 1x1 -> BN
//   + input                              (when stride == 1 and in == out)
// act is ReLU or hard-swish. Parameter names under prefix P: P.block.<i>.0 / P.block.<i>.1 for
// each conv unit in order, P.block.<i>.fc1 / P.block.<i>.fc2 for the squeeze-excite.
// Input [N, H, W, in] -> output [N, H/stride, W/stride, out] (NHWC).
#pragma once

#include <dynconv/blocks/module.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/pooling.hpp>

namespace dynconv {

/// torchvision's _make_divisible: v rounded to a multiple of `divisor` (>= divisor), never
/// more than 10% below v.
inline Index make_divisible(double v, Index divisor = 8) {
  Index r = std::max(divisor, static_cast<Index>(v + divisor / 2.0) / divisor * divisor);
  if (static_cast<double>(r) < 0.9 * v) r += divisor;
  return r;
}

/// Squeeze-and-excitation: x * HardSigmoid(fc2(ReLU(fc1(GAP(x))))), fc1/fc2 as 1x1 convs with
/// bias in the file ([out, in, 1, 1]), always static. [N, H, W, C] -> [N, H, W, C].
template <typename T>
class SqueezeExcite final : public Module<T> {
 public:
  SqueezeExcite(const std::string& prefix, Index channels, Index squeeze)
      : prefix_(prefix),
        fc1_(LinearOptions(channels, squeeze).name(prefix + ".fc1")),
        fc2_(LinearOptions(squeeze, channels).name(prefix + ".fc2")) {}

  std::array<Index, 4> output_shape(const std::array<Index, 4>& in) const override {
    if (in[3] != fc1_.in_features())
      detail::fail<ShapeError>(prefix_, ": input ", shape_str(in), " (NHWC) has ", in[3],
                               " channels, expected ", fc1_.in_features());
    return in;
  }
  void run(const detail::Nhwc<const T>& x, const detail::Nhwc<T>& y, detail::Exec<T>& ex,
           const T* residual) const override {
    const Index n = x.n, pixels = x.pixels(), c = x.c;
    typename detail::Workspace<T>::Lease pooled = ex.ws.acquire(n * c), hidden = ex.ws.acquire(n * fc1_.out_features()),
                                         scale = ex.ws.acquire(n * c);
    ex.pool.parallel_for(n, [&](std::int64_t b, int) {
      detail::gap_nhwc(x.sample(b), 1, pixels, c, pooled.data() + b * c);
    });
    fc1_.forward_into(pooled.data(), n, hidden.data(), ex.ws, 0);
    detail::map_inplace(hidden.data(), n * fc1_.out_features(), detail::ReluOf<T>());
    fc2_.forward_into(hidden.data(), n, scale.data(), ex.ws, 0);
    detail::map_inplace(scale.data(), n * c, detail::HardSigmoidOf<T>());
    // y = x * scale (+ residual), split over samples and pixels.
    const Index parts = ex.sample_parts(n, pixels * c);
    ex.pool.parallel_for(n * parts, [&](std::int64_t task, int) {
      const Index b = task / parts;
      const std::array<Index, 2> range = detail::split_range(pixels, parts, task % parts);
      const T* __restrict sc = scale.data() + b * c;
      for (Index p = range[0]; p < range[1]; ++p) {
        const Index at = (b * pixels + p) * c;
        const T* __restrict in = x.data + at;
        T* __restrict out = y.data + at;
        for (Index k = 0; k < c; ++k) out[k] = in[k] * sc[k];
        if (residual) add_residual(out, residual + at, c);
      }
    });
  }
  void load(WeightLoader& w) override { load_fc(w, fc1_, ".fc1"); load_fc(w, fc2_, ".fc2"); }
  void save(SafeTensorsWriter& out) const override { save_fc(out, fc1_, ".fc1"); save_fc(out, fc2_, ".fc2"); }
  std::array<Index, 2> cost(Index h, Index w, std::vector<NamedCost>& out) const override {
    LayerCost c;
    c.params = fc1_.params() + fc2_.params();
    c.conv_madds = fc1_.madds() + fc2_.madds();
    out.push_back({prefix_, c});
    return {h, w};
  }

 private:
  void load_fc(WeightLoader& w, Linear<T>& fc, const char* name) {
    const std::string p = prefix_ + name;
    const Tensor4<T> k = w.take<T, 4>(p + ".weight", {fc.out_features(), fc.in_features(), 1, 1});
    // [out, in, 1, 1] -> [out, in]
    fc.set_weight(Eigen::TensorMap<const Tensor2<T>>(k.data(), fc.out_features(), fc.in_features()));
    fc.set_bias(w.take<T, 1>(p + ".bias", {fc.out_features()}));
  }
  void save_fc(SafeTensorsWriter& out, const Linear<T>& fc, const char* name) const {
    const std::string p = prefix_ + name;
    // [out, in] -> [out, in, 1, 1]
    out.add(p + ".weight", Tensor4<T>(Eigen::TensorMap<const Tensor4<T>>(
                               fc.weight().data(), fc.out_features(), fc.in_features(), 1, 1)));
    out.add(p + ".bias", fc.bias());
  }

  std::string prefix_;
  Linear<T> fc1_, fc2_;
};

struct MobileNetV3BlockConfig {
  Index in, kernel, expanded, out;
  bool use_se;
  Activation activation;
  Index stride;
};

template <typename T>
class MobileNetV3Block final : public ResidualBlock<T> {
 public:
  MobileNetV3Block(const std::string& prefix, const MobileNetV3BlockConfig& cfg,
                   const DynamicPolicy& policy, const DynamicSettings& dyn, double bn_eps)
      : ResidualBlock<T>(cfg.stride == 1 && cfg.in == cfg.out) {
    const std::string b = prefix + ".block.";
    int i = 0;
    auto unit = [&](ConvRole role, Index in, Index out, Index k, Index stride, Index groups,
                    Activation act) {
      const std::string u = b + std::to_string(i++);
      this->body_.template add<ConvUnit<T>>(
          ConvUnitSpec{u + ".0", u + ".1", role, in, out, k, stride, groups, act, bn_eps}, policy,
          dyn);
    };
    if (cfg.expanded != cfg.in)
      unit(ConvRole::Expand, cfg.in, cfg.expanded, 1, 1, 1, cfg.activation);
    unit(ConvRole::Depthwise, cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, cfg.expanded,
         cfg.activation);
    if (cfg.use_se)
      this->body_.template add<SqueezeExcite<T>>(b + std::to_string(i++), cfg.expanded,
                                           make_divisible(static_cast<double>(cfg.expanded / 4)));
    unit(ConvRole::Project, cfg.expanded, cfg.out, 1, 1, 1, Activation::Identity);
  }

};

}  // namespace dynconv
