// dynconv: the model zoo, by name.
//
//   zoo name                                   structure
//   mobilenet_v2_x1_0 / _x0_75 / _x0_5 / _x0_35  torchvision mobilenet_v2(width_mult=...)
//   mobilenet_v3_small                         torchvision mobilenet_v3_small
//   resnet10                                   torchvision ResNet(BasicBlock, [1, 1, 1, 1])
//   resnet18                                   torchvision resnet18
//   resnet50                                   torchvision resnet50 (resnet50_zoo_names())
// The dynamic model of each is the same name prefixed with "dy_" (e.g. "dy_resnet18"); which of
// its convolutions are dynamic is ModelOptions::policy, by default the paper-closest one of
// its family (mobilenet_v2_default_policy, mobilenet_v3_default_policy, resnet_default_policy).
// Other policies: policy_by_name("all_but_stem" | "pointwise_only" | "none" | "default").
//
// The ODConv models (odconv_zoo_names(), OSVAI/ODConv's od_resnet18, od_resnet50 and
// od_mobilenetv2_100 / _075 / _050): "od_" + the static name, every convolution inside the blocks ODConv (and the
// MobileNetV2's last 1x1), stem, shortcuts and classifier static, K = ModelOptions::kernels
// (the official models are trained at K = 1 and K = 4), hidden max(Cin / 16, 16).
#pragma once

#include <dynconv/models/mobilenet_v2.hpp>
#include <dynconv/models/mobilenet_v3.hpp>
#include <dynconv/models/resnet.hpp>
#include <dynconv/session.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

namespace dynconv {
namespace models {

/// The 14 zoo names: 7 static models, then their dy_ twins.
inline std::vector<std::string> zoo_names() {
  const std::vector<std::string> base = {"mobilenet_v2_x1_0", "mobilenet_v2_x0_75",
                                         "mobilenet_v2_x0_5", "mobilenet_v2_x0_35",
                                         "mobilenet_v3_small", "resnet10", "resnet18"};
  std::vector<std::string> all = base;
  for (const std::string& b : base) all.push_back("dy_" + b);
  return all;
}

/// ResNet-50 and its dy_ twin (the Bottleneck block), beside the 14 of zoo_names(): not in the
/// paper's table, and checked against PyTorch at a smaller input than the 14.
inline std::vector<std::string> resnet50_zoo_names() { return {"resnet50", "dy_resnet50"}; }

/// The ODConv models, beside the 14 of zoo_names().
inline std::vector<std::string> odconv_zoo_names() {
  return {"od_mobilenet_v2_x1_0", "od_mobilenet_v2_x0_75", "od_mobilenet_v2_x0_5", "od_resnet18",
          "od_resnet50"};
}

/// Every name create() knows: zoo_names(), resnet50_zoo_names(), odconv_zoo_names().
inline std::vector<std::string> all_zoo_names() {
  std::vector<std::string> all = zoo_names();
  for (const std::string& n : resnet50_zoo_names()) all.push_back(n);
  for (const std::string& n : odconv_zoo_names()) all.push_back(n);
  return all;
}

/// OSVAI's ODConv MobileNetV2: every convolution but the stem is ODConv.
inline bool od_mobilenet_v2_policy(const ConvSite& s) { return s.role != ConvRole::Stem; }

/// Named policies. "default" returns an empty policy: the model's own default.
inline DynamicPolicy policy_by_name(const std::string& name) {
  if (name == "default") return {};
  if (name == "all_but_stem") return [](const ConvSite& s) { return s.role != ConvRole::Stem; };
  if (name == "pointwise_only")
    return [](const ConvSite& s) { return s.role != ConvRole::Stem && s.kernel == 1 && s.groups == 1; };
  if (name == "none") return [](const ConvSite&) { return false; };
  fail<OptionsError>("policy '", name,
                             "' is unknown; use default, all_but_stem, pointwise_only or none");
}

/// The zoo model `name`, BatchNorms not folded yet (create() folds them).
template <typename T>
std::unique_ptr<Model<T>> build_zoo_model(const std::string& name, const ModelOptions& options) {
  if (options.num_classes() < 1)
    fail<OptionsError>(name, ": num_classes=", options.num_classes(), " must be >= 1");
  const std::vector<std::string> od_names = odconv_zoo_names();
  const bool odconv = std::find(od_names.begin(), od_names.end(), name) != od_names.end();
  const bool dynamic = name.rfind("dy_", 0) == 0 || odconv;
  const std::string base = dynamic ? name.substr(3) : name;
  auto pick = [&](DynamicPolicy family_default) -> DynamicPolicy {
    if (!dynamic) return {};
    return options.policy() ? options.policy() : family_default;
  };
  if (odconv) {
    ModelOptions od = options;
    od.attention_kind(AttentionKind::ODConv);
    if (base == "resnet18")
      return std::make_unique<Model<T>>(
          resnet<T>(name, {2, 2, 2, 2}, ResNetBlock::Basic, pick(resnet_default_policy), od));
    if (base == "resnet50")
      return std::make_unique<Model<T>>(
          resnet<T>(name, {3, 4, 6, 3}, ResNetBlock::Bottleneck, pick(resnet_default_policy), od));
    const double width = base == "mobilenet_v2_x1_0" ? 1.0 : base == "mobilenet_v2_x0_75" ? 0.75 : 0.5;
    return std::make_unique<Model<T>>(mobilenet_v2<T>(name, width, pick(od_mobilenet_v2_policy), od));
  }
  const struct { const char* suffix; double width; } widths[] = {
      {"x1_0", 1.0}, {"x0_75", 0.75}, {"x0_5", 0.5}, {"x0_35", 0.35}};
  for (const auto& w : widths)
    if (base == std::string("mobilenet_v2_") + w.suffix)
      return std::make_unique<Model<T>>(
          mobilenet_v2<T>(name, w.width, pick(mobilenet_v2_default_policy), options));
  if (base == "mobilenet_v3_small")
    return std::make_unique<Model<T>>(
        mobilenet_v3_small<T>(name, pick(mobilenet_v3_default_policy), options));
  const struct { const char* name; std::array<Index, 4> blocks; ResNetBlock block; } resnets[] = {
      {"resnet10", {1, 1, 1, 1}, ResNetBlock::Basic},
      {"resnet18", {2, 2, 2, 2}, ResNetBlock::Basic},
      {"resnet50", {3, 4, 6, 3}, ResNetBlock::Bottleneck}};
  for (const auto& r : resnets)
    if (base == r.name)
      return std::make_unique<Model<T>>(resnet<T>(name, r.blocks, r.block, pick(resnet_default_policy), options));
  std::string known;
  for (const std::string& n : all_zoo_names()) known += (known.empty() ? "" : ", ") + n;
  fail<OptionsError>("unknown model '", name, "'; the zoo has: ", known);
}

/// Builds a zoo model (weights initialised as a fresh PyTorch model, BatchNorms folded; load
/// real ones with Graph::load). OptionsError for an unknown name or invalid options.
template <typename T>
std::unique_ptr<Model<T>> create(const std::string& name, const ModelOptions& options = {}) {
  std::unique_ptr<Model<T>> m = build_zoo_model<T>(name, options);
  m->fold_batchnorms();
  return m;
}

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template std::unique_ptr<Model<float>> build_zoo_model<float>(const std::string&, const ModelOptions&);
extern template std::unique_ptr<Model<double>> build_zoo_model<double>(const std::string&, const ModelOptions&);
extern template std::unique_ptr<Model<float>> create<float>(const std::string&, const ModelOptions&);
extern template std::unique_ptr<Model<double>> create<double>(const std::string&, const ModelOptions&);
#endif

}  // namespace models
}  // namespace dynconv
