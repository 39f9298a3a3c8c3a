// The small model the fuzz_model_load target loads files into, shared with make_corpus.cpp
// (which saves it as the target's valid seed files).
//
//   features.0  static   3 -> 4, 3x3 stride 2, BatchNorm "features.0.1", HardSwish (the stem)
//   features.1  dynamic  4 -> 8, 1x1,          BatchNorm "features.1.1", ReLU
//   features.2  dynamic  8 -> 8, 3x3 depthwise, conv bias, no BatchNorm,  HardSwish
//   pool -> classifier  Linear(8 -> 3)
// K = 2 kernels, attention hidden = max(1, Cin / 4), BatchNorm eps 1e-3. About 460 parameters
// in 24 tensors, so a saved file is ~4 KB: small enough for libFuzzer to mutate it usefully.
// `dynamic` false gives the static twin (every convolution static), whose checkpoint a
// dynamic model loads with LoadMode::Upcycle.
#pragma once

#include <dynconv/models/model.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dynconv_fuzz {

inline constexpr double kTinyBnEps = 1e-3;

template <typename T>
dynconv::models::Model<T> tiny_model(bool dynamic = true) {
  using dynconv::Activation;
  using dynconv::ConvRole;
  using dynconv::ConvUnit;
  using dynconv::ConvUnitSpec;
  dynconv::DynamicSettings dyn;
  dyn.kernels = 2;
  dyn.reduction = 4;
  dyn.min_hidden = 1;
  dynconv::DynamicPolicy policy;  // empty: every convolution static
  if (dynamic) policy = [](const dynconv::ConvSite& s) { return s.role != ConvRole::Stem; };

  dynconv::Sequential<T> f;
  f.template add<ConvUnit<T>>(ConvUnitSpec{"features.0.0", "features.0.1", ConvRole::Stem, 3, 4, 3,
                                           2, 1, Activation::HardSwish, kTinyBnEps},
                              policy, dyn);
  f.template add<ConvUnit<T>>(ConvUnitSpec{"features.1.0", "features.1.1", ConvRole::Expand, 4, 8,
                                           1, 1, 1, Activation::ReLU, kTinyBnEps},
                              policy, dyn);
  f.template add<ConvUnit<T>>(ConvUnitSpec{"features.2.0", "", ConvRole::Depthwise, 8, 8, 3, 1, 8,
                                           Activation::HardSwish, kTinyBnEps, /*conv_bias=*/true},
                              policy, dyn);
  std::vector<dynconv::models::DenseLayer<T>> head;
  head.push_back({"classifier", dynconv::Linear<T>(dynconv::LinearOptions(8, 3).name("classifier")),
                  Activation::Identity});
  return dynconv::models::Model<T>(dynamic ? "tiny_dynamic" : "tiny_static", std::move(f),
                                   std::move(head));
}

/// The fixed input of every forward: 1 x 3 x 32 x 32, values in [-1, 1].
template <typename T>
dynconv::Tensor4<T> tiny_input() {
  dynconv::Tensor4<T> x(1, 3, 32, 32);
  for (dynconv::Index i = 0; i < x.size(); ++i)
    x.data()[i] = static_cast<T>(static_cast<int>((i * 37) % 41) - 20) / T(20);
  return x;
}

/// The model's file as Model::save writes it.
template <typename T>
std::vector<std::uint8_t> saved_bytes(const dynconv::models::Model<T>& m) {
  dynconv::SafeTensorsWriter w;
  m.save(w);
  return w.to_bytes();
}

}  // namespace dynconv_fuzz
