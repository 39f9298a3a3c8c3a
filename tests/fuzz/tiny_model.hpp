// The small model the fuzz_model_load target loads files into, shared with make_corpus.cpp
// (which saves it as the target's valid seed files).
//
//   features.0  static   3 -> 4, 3x3 stride 2, BatchNorm "features.0.1", HardSwish (the stem)
//   features.1  dynamic  4 -> 8, 1x1,          BatchNorm "features.1.1", ReLU
//   features.2  dynamic  8 -> 8, 3x3 depthwise, conv bias, no BatchNorm,  HardSwish
//   avgpool -> flatten -> classifier  Linear(8 -> 3)
// K = 2 kernels, attention hidden = max(1, Cin / 4), BatchNorm eps 1e-3. About 460 parameters
// in 24 tensors, so a saved file is ~4 KB: small enough for libFuzzer to mutate it usefully.
// `dynamic` false gives the static twin (every convolution static), whose checkpoint a
// dynamic model loads with LoadMode::Upcycle.
//
// A graph (models::Model): input "x" (3 channels), output "logits"; the nodes are named by
// their parameter prefixes, so the tensor names are those of the zoo's convention
// ("features.1.0.attention.fc1.weight", "features.0.1.running_var", "classifier.bias").
#pragma once

#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/elementwise.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/models/model.hpp>
#include <dynconv/models/zoo_builder.hpp>
#include <dynconv/pooling.hpp>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dynconv_fuzz {

inline constexpr double kTinyBnEps = 1e-3;

/// The tiny model, its fresh BatchNorms folded (as models::create leaves a zoo model).
template <typename T>
dynconv::models::Model<T> tiny_model(bool dynamic = true) {
  using dynconv::Activation;
  using dynconv::ConvRole;
  dynconv::DynamicSettings dyn;
  dyn.kernels = 2;
  dyn.reduction = 4;
  dyn.min_hidden = 1;
  dynconv::DynamicPolicy policy;  // empty: every convolution static
  if (dynamic) policy = [](const dynconv::ConvSite& s) { return s.role != ConvRole::Stem; };

  dynconv::models::Model<T> m(dynamic ? "tiny_dynamic" : "tiny_static", 3);
  dynconv::models::ZooBuilder<T> b(m, policy, dyn, kTinyBnEps);
  dynconv::Value x = m.input("x", 3);
  x = b.unit("features.0.0", "features.0.1", "features.0.2", ConvRole::Stem, x, 3, 4, 3, 2, 1,
             Activation::HardSwish);
  x = b.unit("features.1.0", "features.1.1", "features.1.2", ConvRole::Expand, x, 4, 8, 1, 1, 1,
             Activation::ReLU);
  // features.2: a depthwise convolution with its own bias and no BatchNorm (ZooBuilder::unit
  // always adds one), so it is added here, static or dynamic as the policy decides.
  const std::string dw = "features.2.0";
  if (policy && policy(dynconv::ConvSite{dw, ConvRole::Depthwise, 8, 8, 3, 1, 8}))
    x = m.add(dw,
              dynconv::DynamicConv2d<T>(dynconv::DynamicConv2dOptions(8, 8, 3)
                                            .padding(1)
                                            .groups(8)
                                            .bias(true)
                                            .kernels(dyn.kernels)
                                            .reduction(dyn.reduction)
                                            .min_hidden(dyn.min_hidden)
                                            .temperature(dyn.temperature)
                                            .name(dw)),
              {x});
  else
    x = m.add(dw,
              dynconv::Conv2d<T>(
                  dynconv::Conv2dOptions(8, 8, 3).padding(1).groups(8).bias(true).name(dw)),
              {x});
  x = m.add("features.2.1", dynconv::ActivationLayer<T>(Activation::HardSwish), {x});
  x = m.add("avgpool", dynconv::AdaptiveAvgPool2d<T>(1), {x});
  x = m.add("flatten", dynconv::Flatten<T>(), {x});
  x = m.add("classifier", dynconv::Linear<T>(dynconv::LinearOptions(8, 3).name("classifier")), {x});
  m.output("logits", x);
  // A fresh model in eval mode: BatchNorm weight 1, bias 0, mean 0, var 1, folded.
  m.fold_batchnorms();
  return m;
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
