// model_metadata: what a weight file's metadata says about the model it holds, shared by
// dynconv-run and the MobileNetV3-Small example.
//
//   model        zoo name, e.g. "dy_mobilenet_v3_small"
//   num_classes  "10"; kernels, reduction, min_hidden: positive integers; policy: a name for
//                models::policy_by_name
//   attention    the dynamic convolutions' kind: "dy" (DY-Conv, the default), "condconv" or
//                "odconv" (tools/export_safetensors.py writes it); an od_ model is "odconv"
//   class_names  a JSON array of strings
// A value that does not parse is a dynconv::FormatError naming the file and the key.
#pragma once

#include <dynconv/models/zoo.hpp>
#include <dynconv/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace examples {

/// Metadata `key` of the weights as an integer >= 1.
inline dynconv::Index metadata_int(const dynconv::SafeTensors& w, const std::string& key) {
  const std::string& v = w.metadata().at(key);
  std::size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size() || n < 1)
    throw dynconv::FormatError(w.source() + ": metadata " + key + "='" + v +
                               "' is not a positive integer");
  return static_cast<dynconv::Index>(n);
}

/// The metadata "attention" as a kind (DY-Conv without it).
inline dynconv::AttentionKind attention_kind_from_metadata(const dynconv::SafeTensors& w) {
  const auto& m = w.metadata();
  const auto it = m.find("attention");
  if (it == m.end()) return dynconv::AttentionKind::DyConv;
  dynconv::AttentionKind kind;
  if (it->second == "dy")
    kind = dynconv::AttentionKind::DyConv;
  else if (it->second == "condconv")
    kind = dynconv::AttentionKind::CondConv;
  else if (it->second == "odconv")
    kind = dynconv::AttentionKind::ODConv;
  else
    throw dynconv::FormatError(w.source() + ": metadata attention='" + it->second +
                               "' is not one of dy, condconv, odconv");
  const auto model = m.find("model");
  const std::vector<std::string> od = dynconv::models::odconv_zoo_names();
  if (model != m.end() && kind != dynconv::AttentionKind::ODConv &&
      std::find(od.begin(), od.end(), model->second) != od.end())
    throw dynconv::FormatError(w.source() + ": metadata attention='" + it->second +
                               "' contradicts model '" + model->second +
                               "': the od_ models' attention is odconv");
  return kind;
}

/// Model options from the metadata: num_classes (default `default_classes`), kernels,
/// reduction, min_hidden, attention, policy.
inline dynconv::models::ModelOptions model_options_from_metadata(const dynconv::SafeTensors& w,
                                                                 dynconv::Index default_classes) {
  dynconv::models::ModelOptions o;
  const auto& m = w.metadata();
  o.num_classes(m.count("num_classes") ? metadata_int(w, "num_classes") : default_classes);
  if (m.count("kernels")) o.kernels(metadata_int(w, "kernels"));
  if (m.count("reduction")) o.reduction(metadata_int(w, "reduction"));
  if (m.count("min_hidden")) o.min_hidden(metadata_int(w, "min_hidden"));
  o.attention_kind(attention_kind_from_metadata(w));
  if (m.count("policy")) o.policy(dynconv::models::policy_by_name(m.at("policy")));
  return o;
}

/// The metadata "class_names" (empty without it).
inline std::vector<std::string> class_names_from_metadata(const dynconv::SafeTensors& w) {
  std::vector<std::string> names;
  if (!w.metadata().count("class_names")) return names;
  const nlohmann::json j = nlohmann::json::parse(w.metadata().at("class_names"), nullptr, false);
  bool ok = j.is_array();
  for (std::size_t i = 0; ok && i < j.size(); ++i) {
    ok = j[i].is_string();
    if (ok) names.push_back(j[i].get<std::string>());
  }
  if (!ok)
    throw dynconv::FormatError(w.source() +
                               " (metadata class_names) is not a JSON array of strings");
  return names;
}

}  // namespace examples
