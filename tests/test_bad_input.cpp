// The whole bad-input surface in one table: every way a caller or a file can be wrong, one row
// each, with what it gives through the library's public API and through the dynconv-run binary.
//
//   BadInput.Api/<row>   the API part of a row: the exact exception type (OptionsError,
//                        ShapeError, FormatError, IoError) and a substring of its message that
//                        names the layer or file, the offending value and the rule; or, for the
//                        inputs the library accepts on purpose, the documented result (NaN/Inf
//                        inputs propagate into non-finite logits of that sample only; an input
//                        smaller than 32x32 runs as long as every layer fits it)
//   BadInput.Cli/<row>   the dynconv-run part: non-zero exit status, never a signal, exactly one
//                        line on stderr, "dynconv-run: " and the expected substring
//
// test_safetensors, test_layers, test_models and test_cli test many of these one by one, next
// to the code they exercise; this table is the one place that lists them all. Files are written
// lazily into a scratch directory, only those a row names ({key} in its command line or
// files().path(key) in its API call), because ctest runs every row in its own process.
//
// DYNCONV_RUN_PATH (the dynconv-run binary) is a compile definition when the examples are
// built; without it the Cli rows are not instantiated.
#include <dynconv/dynconv.hpp>
#include <dynconv/graph_file.hpp>
#include <dynconv/models/zoo.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <typeinfo>
#include <vector>

#include "subprocess.hpp"


namespace {

namespace fs = std::filesystem;
using dynconv::Index;
using dynconv::Pair;
using dynconv::SafeTensors;
using dynconv::SafeTensorsWriter;
using dynconv::Tensor1;
using dynconv::Tensor2;
using dynconv::Tensor4;
using dynconv::models::Model;
using dynconv::models::ModelOptions;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr Index kBig = Index(1) << 31;  // detail::kMaxDimension, the largest accepted size
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- Scratch files, written on first use ----------------------------------------------------

using testproc::read_text;

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

/// A safetensors file by hand: the 8-byte length `declared` (default: the header's own), the
/// header text, then `data` bytes.
std::string safetensors_bytes(const std::string& header, std::size_t data,
                              std::uint64_t declared = UINT64_MAX) {
  const std::uint64_t n = declared == UINT64_MAX ? header.size() : declared;
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data, '\x01');
}

/// One tensor per entry as the writer stores it (F32 unless edit says otherwise); edit may
/// change a tensor's shape, values and dtype (F32 or I64).
using Edit = std::function<void(const std::string& name, std::vector<Index>& shape,
                                std::vector<float>& values, dynconv::DType& dtype)>;

/// The tensors `saved` holds, each passed through edit first (an edit that sets the shape to
/// {-1} leaves the tensor out), as F32 (or I64: the value x 10, rounded), with `metadata`.
void write_edited(const std::string& path, const SafeTensorsWriter& saved, const Edit& edit,
                  const std::vector<std::pair<std::string, std::string>>& metadata) {
  const SafeTensors file = SafeTensors::parse(saved.to_bytes());
  SafeTensorsWriter out;
  for (const std::string& name : file.names()) {
    std::vector<Index> shape = file.entry(name).shape;
    std::vector<float> v = file.get_flat<float>(name);
    dynconv::DType dtype = dynconv::DType::F32;
    if (edit) edit(name, shape, v, dtype);
    if (shape == std::vector<Index>{-1}) continue;
    if (dtype == dynconv::DType::I64) {
      std::vector<std::int64_t> l(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) l[i] = std::llround(v[i] * 10.f);
      out.add_raw(name, dtype, shape, l.data(), l.size() * sizeof(std::int64_t));
    } else {
      out.add_raw(name, dtype, shape, v.data(), v.size() * sizeof(float));
    }
  }
  for (const auto& [key, value] : metadata) out.set_metadata(key, value);
  out.save(path);
}

/// The fresh weights of a zoo model with 10 classes, as F32, with metadata model, num_classes
/// and input_size (32, so that images run at 32x32), each tensor passed through edit first (an
/// edit that sets the shape to {-1} leaves the tensor out).
void write_weights(const std::string& path, const std::string& model, const Edit& edit = {}) {
  SafeTensorsWriter saved;
  dynconv::models::create<float>(model, ModelOptions().num_classes(10))->save(saved);
  write_edited(path, saved, edit, {{"model", model}, {"num_classes", "10"}, {"input_size", "32"}});
}

// A graph file (docs/graph_format.md) of a small network, in the JSON of kGraph (text the rows
// edit) with the tensors a dynconv Graph of the same network saves:
//   x [1, 4, 6, 6] -> conv (4 -> 4, 3x3) -> act (relu) -> dy (DY-Conv 4 -> 4, 3x3, K = 2,
//   hidden 2) -> route (condconv_routing, 2 experts) and cc (CondConv 4 -> 4, 1x1, K = 2, the
//   shared routing route) -> y
const char* const kGraph = R"({"format": "dynconv.graph", "version": 1,
  "inputs": [{"name": "x", "shape": [1, 4, 6, 6]}],
  "nodes": [
    {"name": "conv", "op": "conv2d", "inputs": ["x"], "shape": [1, 4, 6, 6],
     "attrs": {"in_channels": 4, "out_channels": 4, "kernel_size": [3, 3], "stride": [1, 1],
               "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "bias": false}},
    {"name": "act", "op": "relu", "inputs": ["conv"], "shape": [1, 4, 6, 6], "attrs": {}},
    {"name": "dy", "op": "dynamic_conv2d", "inputs": ["act"], "shape": [1, 4, 6, 6],
     "attrs": {"in_channels": 4, "out_channels": 4, "kernel_size": [3, 3], "stride": [1, 1],
               "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "bias": false,
               "attention": "dy", "kernels": 2, "hidden": 2}},
    {"name": "route", "op": "condconv_routing", "inputs": ["dy"], "shape": [1, 2],
     "attrs": {"in_channels": 4, "experts": 2}},
    {"name": "cc", "op": "dynamic_conv2d", "inputs": ["dy", "route"], "shape": [1, 4, 6, 6],
     "attrs": {"in_channels": 4, "out_channels": 4, "kernel_size": [1, 1], "stride": [1, 1],
               "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1, "bias": false,
               "attention": "condconv", "kernels": 2, "shared_routing": true}}
  ],
  "outputs": [{"name": "y", "value": "cc"}]})";

/// A graph whose flatten would make a value of 2^93 features.
const char* const kFlattenGraph = R"({"format": "dynconv.graph", "version": 1,
  "inputs": [{"name": "x", "shape": [1, 2147483648, 2147483648, 2147483648]}],
  "nodes": [{"name": "flat", "op": "flatten", "inputs": ["x"], "shape": [1, 8], "attrs": {}}],
  "outputs": [{"name": "y", "value": "flat"}]})";

/// `s` with its first `from` replaced by `to` (a row's defect).
std::string edited(std::string s, const std::string& from, const std::string& to) {
  const std::size_t at = s.find(from);
  if (at == std::string::npos) throw std::logic_error("test_bad_input: the graph has no '" + from + "'");
  return s.replace(at, from.size(), to);
}
std::string graph_with(const std::string& from, const std::string& to) { return edited(kGraph, from, to); }

/// The graph file of `graph` (kGraph or an edit of it) with kGraph's tensors through edit.
void write_graph(const std::string& path, const std::string& graph, const Edit& edit = {}) {
  using namespace dynconv;
  Graph<float> g;
  g.input("x", 4);
  g.add("conv", Conv2d<float>(Conv2dOptions(4, 4, 3).padding(1).bias(false).name("conv")), {"x"});
  g.add("act", ReLU<float>("act"), {"conv"});
  g.add("dy", DynamicConv2d<float>(DynamicConv2dOptions(4, 4, 3).padding(1).bias(false).kernels(2).hidden_channels(2).name("dy")),
        {"act"});
  g.add("route", CondConvRouting<float>(CondConvRoutingOptions(4, 2).name("route")), {"dy"});
  g.add("cc", DynamicConv2d<float>(DynamicConv2dOptions::condconv(4, 4, 1, 2).shared_routing(true).name("cc")), {"dy", "route"});
  g.output("y", Value("cc"));
  SafeTensorsWriter saved;
  g.save(saved);
  write_edited(path, saved, edit, {{kGraphMetadataKey, graph}});
}

/// A safetensors file with one F32 tensor `input` of `shape`: a smooth pattern, then value at
/// element `at` (if at >= 0).
void write_input(const std::string& path, const std::vector<Index>& shape, Index at = -1,
                 float value = 0.f) {
  std::size_t n = 1;
  for (Index d : shape) n *= std::size_t(d);
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = std::sin(0.37f * float(i));
  if (at >= 0) v[std::size_t(at)] = value;
  SafeTensorsWriter w;
  w.add_raw("input", dynconv::DType::F32, shape, v.data(), n * sizeof(float));
  w.save(path);
}

/// A w x h binary PPM (stb_image reads it; no image library needed to write it).
void write_ppm(const std::string& path, int w, int h) {
  std::string px(std::size_t(w) * h * 3, '\0');
  for (std::size_t i = 0; i < px.size(); ++i) px[i] = static_cast<char>((i * 7 + i / 97) & 0xff);
  write_file(path, "P6\n" + std::to_string(w) + " " + std::to_string(h) + "\n255\n" + px);
}

/// Sets element `at` of tensor `target` to `value`.
Edit set_element(std::string target, std::size_t at, float value) {
  return [=](const std::string& name, std::vector<Index>&, std::vector<float>& v, dynconv::DType&) {
    if (name == target) v.at(at) = value;
  };
}

/// Leaves tensor `target` out.
Edit drop(std::string target) {
  return [=](const std::string& name, std::vector<Index>& shape, std::vector<float>&, dynconv::DType&) {
    if (name == target) shape = {-1};
  };
}

/// Every file a row can name, by key; each is written the first time it is asked for.
class Files {
 public:
  Files() {
    std::string pattern = ::testing::TempDir() + "dynconv_bad_input_XXXXXX";
    if (!mkdtemp(pattern.data())) std::abort();
    dir_ = pattern;
    // Container-level defects of a safetensors file (API: SafeTensors::load; dynconv-run:
    // --weights). A valid one-tensor header, for reference: {"w":{"dtype":"F32","shape":[2],
    // "data_offsets":[0,8]}} followed by 8 bytes.
    const auto f32 = [](const std::string& name, const std::string& shape, int begin, int end) {
      return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[" +
             std::to_string(begin) + "," + std::to_string(end) + "]}";
    };
    raw("truncated_header", std::string("\x10\0\0", 3));
    raw("header_past_end", safetensors_bytes("{" + f32("w", "[2]", 0, 8) + "}", 0, 4096));
    raw("header_over_100mb", safetensors_bytes("{}", 0, 200'000'000));
    raw("offsets_past_end", safetensors_bytes("{" + f32("w", "[4]", 0, 16) + "}", 8));
    raw("offsets_overlap",
        safetensors_bytes("{" + f32("a", "[2]", 0, 8) + "," + f32("b", "[2]", 4, 12) + "}", 12));
    raw("offsets_gap",
        safetensors_bytes("{" + f32("a", "[2]", 0, 8) + "," + f32("b", "[2]", 12, 20) + "}", 20));
    raw("offsets_not_from_zero", safetensors_bytes("{" + f32("a", "[2]", 4, 12) + "}", 12));
    raw("offsets_reversed", safetensors_bytes("{" + f32("a", "[2]", 8, 0) + "}", 8));
    raw("offsets_unsorted",  // header order b, a; data order a, b: valid (the format allows it)
        safetensors_bytes("{" + f32("b", "[2]", 8, 16) + "," + f32("a", "[2]", 0, 8) + "}", 16));
    raw("byte_size_mismatch", safetensors_bytes("{" + f32("w", "[4]", 0, 8) + "}", 8));
    raw("shape_times_dtype_overflows",
        safetensors_bytes("{" + f32("w", "[4294967296,4294967296,16]", 0, 8) + "}", 8));
    raw("negative_dimension", safetensors_bytes("{" + f32("w", "[-2]", 0, 8) + "}", 8));
    raw("dtype_u8",
        safetensors_bytes("{\"w\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8));
    raw("input_dtype_bool",
        safetensors_bytes("{\"input\":{\"dtype\":\"BOOL\",\"shape\":[1,3,32,32],"
                          "\"data_offsets\":[0,3072]}}",
                          3072));
    raw("not_json", safetensors_bytes("{\"w\": [1, 2,", 0));
    raw("empty", "");
    raw("text", "these are not the bytes you are looking for\n");
    raw("text_png", "these are not the pixels you are looking for\n", "notes.png");
    raw("empty_png", "", "empty.png");
    raw("truncated_png", std::string("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16), "truncated.png");

    // Weights of mobilenet_v3_small / dy_mobilenet_v3_small (10 classes).
    weights("good", "mobilenet_v3_small");
    weights("nan_weight", "mobilenet_v3_small", set_element("features.0.0.weight", 5, kNaN));
    weights("inf_weight", "mobilenet_v3_small", set_element("classifier.0.bias", 3, kInf));
    weights("minus_inf_weight", "mobilenet_v3_small",
            set_element("features.0.1.running_var", 2, -kInf));
    weights("negative_running_var", "mobilenet_v3_small",
            set_element("features.0.1.running_var", 2, -1.f));
    weights("zero_dim_weight", "mobilenet_v3_small",
            [](const std::string& name, std::vector<Index>& shape, std::vector<float>& v,
               dynconv::DType&) {
              if (name != "features.0.0.weight") return;
              shape[0] = 0;
              v.clear();
            });
    weights("wrong_shape_weight", "mobilenet_v3_small",
            [](const std::string& name, std::vector<Index>& shape, std::vector<float>& v,
               dynconv::DType&) {
              if (name != "classifier.3.bias") return;
              shape = {5};
              v.resize(5);
            });
    weights("integer_weight", "mobilenet_v3_small",
            [](const std::string& name, std::vector<Index>&, std::vector<float>&,
               dynconv::DType& dtype) {
              if (name == "features.0.0.weight") dtype = dynconv::DType::I64;
            });
    weights("dy_good", "dy_mobilenet_v3_small");
    const std::string tau = "features.1.block.0.0.attention.temperature";
    weights("tau_zero", "dy_mobilenet_v3_small", set_element(tau, 0, 0.f));
    weights("tau_negative", "dy_mobilenet_v3_small", set_element(tau, 0, -1.f));
    weights("tau_nan", "dy_mobilenet_v3_small", set_element(tau, 0, kNaN));
    // ODConv (od_mobilenet_v2_x0_5, K = 4): features.1.conv.0.0 is a depthwise ODConv
    const std::string od = "features.1.conv.0.0.attention.";
    weights("od_no_attention_bn", "od_mobilenet_v2_x0_5", drop(od + "bn.running_var"));
    weights("od_tau_zero", "od_mobilenet_v2_x0_5", set_element(od + "temperature", 0, 0.f));
    weights("od_kernel_head_of_3", "od_mobilenet_v2_x0_5",
            [od](const std::string& name, std::vector<Index>& shape, std::vector<float>& v, dynconv::DType&) {
              if (name != od + "kernel_fc.weight" && name != od + "kernel_fc.bias") return;
              v.resize(v.size() / static_cast<std::size_t>(shape[0]) * 3);
              shape[0] = 3;
            });

    // Graph files: kGraph with one defect each (API: load_graph; dynconv-run: --weights
    // without --model).
    graph("graph_good", kGraph);
    graph("graph_version_2", graph_with("\"version\": 1", "\"version\": 2"));
    graph("graph_truncated_json", std::string(kGraph).substr(0, 300));
    graph("graph_unknown_op", graph_with("\"op\": \"relu\"", "\"op\": \"mish\""));
    graph("graph_unresolved_input", graph_with("\"inputs\": [\"conv\"]", "\"inputs\": [\"conf\"]"));
    graph("graph_cycle", graph_with("\"inputs\": [\"x\"]", "\"inputs\": [\"act\"]"));
    graph("graph_weight_shape_vs_attrs", graph_with("\"kernel_size\": [3, 3]", "\"kernel_size\": [5, 5]"));
    graph("graph_huge_channels", graph_with("\"out_channels\": 4", "\"out_channels\": 2000000000"));
    graph("graph_attention_tensor_missing", kGraph, drop("dy.attention.fc2.bias"));
    graph("graph_temperature_missing", kGraph, drop("dy.attention.temperature"));
    graph("graph_temperature_zero", kGraph, set_element("dy.attention.temperature", 0, 0.f));
    graph("graph_routing_temperature_negative", kGraph, set_element("route.temperature", 0, -1.f));
    graph("graph_shared_routing_of_the_wrong_width",  // route gives 3 experts, cc mixes 2
          edited(graph_with("\"experts\": 2", "\"experts\": 3"), "\"shape\": [1, 2]", "\"shape\": [1, 3]"),
          [](const std::string& name, std::vector<Index>& shape, std::vector<float>& v, dynconv::DType&) {
            if (name != "route.weight" && name != "route.bias") return;
            shape[0] = 3;
            v.resize(v.size() / 2 * 3, 0.5f);
          });
    graph("graph_flattened_size_overflows", kFlattenGraph,
          [](const std::string&, std::vector<Index>& shape, std::vector<float>&, dynconv::DType&) { shape = {-1}; });
    graph("graph_node_name_with_a_newline",
          graph_with("\"name\": \"act\", \"op\": \"relu\"", "\"name\": \"act\\nx\", \"op\": \"mish\""));

    // Input tensors for dynconv-run (tensor `input`, F32).
    input("input_nan", {2, 3, 32, 32}, 7, kNaN);
    input("input_inf", {1, 3, 32, 32}, 100, kInf);
    input("input_huge", {1, 3, 32, 32}, -1, 0.f, 1e38f);
    input("input_n0", {0, 3, 32, 32});
    input("input_h0", {1, 3, 0, 32});
    input("input_2ch", {1, 2, 32, 32});
    input("input_rank5", {1, 1, 3, 32, 32});

    makers_["image"] = [](const std::string& p) { write_ppm(p, 40, 36); };
    names_["image"] = "image.ppm";
    makers_["dir"] = [](const std::string& p) { fs::create_directory(p); };
    makers_["missing"] = [](const std::string&) {};
  }
  ~Files() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  /// The path of file `key`, written first if need be.
  const std::string& path(const std::string& key) {
    auto it = paths_.find(key);
    if (it != paths_.end()) return it->second;
    const auto maker = makers_.find(key);
    if (maker == makers_.end()) throw std::logic_error("test_bad_input: no file '" + key + "'");
    const std::string p = dir_ + "/" + (names_.count(key) ? names_[key] : key + ".safetensors");
    maker->second(p);
    return paths_[key] = p;
  }

 private:
  void raw(const std::string& key, std::string bytes, const std::string& name = "") {
    if (!name.empty()) names_[key] = name;
    makers_[key] = [bytes](const std::string& p) { write_file(p, bytes); };
  }
  void weights(const std::string& key, const std::string& model, Edit edit = {}) {
    makers_[key] = [model, edit](const std::string& p) { write_weights(p, model, edit); };
  }
  void graph(const std::string& key, const std::string& text, Edit edit = {}) {
    makers_[key] = [text, edit](const std::string& p) { write_graph(p, text, edit); };
  }
  void input(const std::string& key, std::vector<Index> shape, Index at = -1, float value = 0.f,
             float scale = 1.f) {
    makers_[key] = [=](const std::string& p) {
      if (scale == 1.f) return write_input(p, shape, at, value);
      // Every element scaled: finite values so large that the network overflows.
      std::size_t n = 1;
      for (Index d : shape) n *= std::size_t(d);
      std::vector<float> v(n);
      for (std::size_t i = 0; i < n; ++i) v[i] = scale * (1.f + std::sin(0.37f * float(i)));
      SafeTensorsWriter w;
      w.add_raw("input", dynconv::DType::F32, shape, v.data(), n * sizeof(float));
      w.save(p);
    };
  }

  std::string dir_;
  std::map<std::string, std::function<void(const std::string&)>> makers_;
  std::map<std::string, std::string> names_;  // file names other than "<key>.safetensors"
  std::map<std::string, std::string> paths_;
};

Files& files() {
  static Files f;
  return f;
}
const std::string& file(const std::string& key) { return files().path(key); }

// ---- Models and tensors the API rows use ----------------------------------------------------

/// A zoo model with 10 classes and its fresh weights, built once per process; never modified.
const Model<float>& zoo(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Model<float>>> cache;
  auto& m = cache[name];
  if (!m) m = dynconv::models::create<float>(name, ModelOptions().num_classes(10));
  return *m;
}

/// A small network built by hand (not a zoo model): a 5x5 convolution without padding, the
/// global average and a 10-class Linear, as a Model (input 'x' of 3 channels, output
/// 'logits'). Built once per process; never modified.
const Model<float>& tiny_graph() {
  static const std::unique_ptr<Model<float>> m = [] {
    auto g = std::make_unique<Model<float>>("tiny", 10);
    const dynconv::Value x = g->input("x", 3);
    const dynconv::Value c = g->add("conv", dynconv::Conv2d<float>(dynconv::Conv2dOptions(3, 8, 5).name("conv")), {x});
    const dynconv::Value p = g->add("pool", dynconv::AdaptiveAvgPool2d<float>(1), {c});
    const dynconv::Value f = g->add("flatten", dynconv::Flatten<float>(), {p});
    g->output("logits", g->add("fc", dynconv::Linear<float>(dynconv::LinearOptions(8, 10).name("fc")), {f}));
    return g;
  }();
  return *m;
}

/// A fresh model loaded from file `key`.
void load(const std::string& model, const std::string& key) {
  dynconv::models::create<float>(model, ModelOptions().num_classes(10))
      ->load(SafeTensors::load(file(key)));
}

/// load_graph of file `key`.
void load_graph(const std::string& key) { (void)dynconv::load_graph<float>(SafeTensors::load(file(key))); }

/// An NCHW tensor of the given dims filled with a smooth pattern; value at flat index `at`.
Tensor4<float> tensor(Index n, Index c, Index h, Index w, Index at = -1, float value = 0.f) {
  Tensor4<float> x(n, c, h, w);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.37f * float(i));
  if (at >= 0) x.data()[at] = value;
  return x;
}

// ---- The table ---------------------------------------------------------------------------------

/// What a row's API call gives.
enum class Outcome {
  OptionsError,
  ShapeError,
  FormatError,
  IoError,
  NonFiniteFirstSample,  // returns logits; sample 0's are not all finite, the others' are
  Accepted,              // no error (a valid input that looks odd; documented)
};

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::OptionsError: return "dynconv::OptionsError";
    case Outcome::ShapeError: return "dynconv::ShapeError";
    case Outcome::FormatError: return "dynconv::FormatError";
    case Outcome::IoError: return "dynconv::IoError";
    case Outcome::NonFiniteFirstSample: return "non-finite logits for sample 0";
    case Outcome::Accepted: return "no error";
  }
  return "?";
}

struct Row {
  const char* name;  // the gtest case name
  // Through the library: a call, the outcome and (for an error) a substring of the message.
  std::function<Tensor2<float>()> api;  // empty: no API part
  Outcome outcome;
  const char* message;
  // Through dynconv-run: the arguments ({key} words become file paths), the exit status and a
  // substring of the one stderr line. cli == nullptr: no dynconv-run part.
  const char* cli = nullptr;
  int code = 1;
  const char* cli_message = "";
};

void PrintTo(const Row& r, std::ostream* os) { *os << r.name; }

/// Runs f for its exception only; returns no logits.
template <typename F>
std::function<Tensor2<float>()> call(F f) {
  return [f]() -> Tensor2<float> {
    f();
    return Tensor2<float>();
  };
}

// Arguments that get past dynconv-run's command line and model load, for the input rows.
#define RUN "--model mobilenet_v3_small --weights {good} "
#define WEIGHTS(key) "--model mobilenet_v3_small --weights {" key "} --input {image}"
// A graph file runs without --model; --verify needs no input (the load fails first).
#define GRAPH(key) "--weights {" key "} --verify"

using dynconv::Conv2d;
using dynconv::Conv2dOptions;
using dynconv::DynamicConv2d;
using dynconv::DynamicConv2dOptions;
using Big = Index;

const std::vector<Row>& table() {
  static const std::vector<Row> rows = {
      // ---- A safetensors file that breaks a rule of the format -------------------------------
      {"file_shorter_than_the_length_field", call([] { SafeTensors::load(file("truncated_header")); }),
       Outcome::FormatError, "truncated_header.safetensors: file has 3 bytes, fewer than the 8-byte header length",
       WEIGHTS("truncated_header"), 1, "truncated_header.safetensors: file has 3 bytes, fewer than the 8-byte header length"},
      {"header_length_past_the_end_of_the_file", call([] { SafeTensors::load(file("header_past_end")); }),
       Outcome::FormatError, "header_past_end.safetensors: header length 4096 needs 4104 bytes but the file has 62",
       WEIGHTS("header_past_end"), 1, "header_past_end.safetensors: header length 4096 needs 4104 bytes but the file has 62"},
      {"header_length_over_100_MB", call([] { SafeTensors::load(file("header_over_100mb")); }),
       Outcome::FormatError, "header_over_100mb.safetensors: header length 200000000 exceeds the limit of 100000000 bytes",
       WEIGHTS("header_over_100mb"), 1, "header length 200000000 exceeds the limit of 100000000 bytes"},
      {"header_not_json", call([] { SafeTensors::load(file("not_json")); }),
       Outcome::FormatError, "not_json.safetensors: header is not valid JSON: ",
       WEIGHTS("not_json"), 1, "not_json.safetensors: header is not valid JSON: "},
      {"offsets_past_the_end", call([] { SafeTensors::load(file("offsets_past_end")); }),
       Outcome::FormatError, "offsets_past_end.safetensors: the last tensor 'w' ends at offset 16 but the data section has 8 bytes",
       WEIGHTS("offsets_past_end"), 1, "the last tensor 'w' ends at offset 16 but the data section has 8 bytes"},
      {"offsets_overlap", call([] { SafeTensors::load(file("offsets_overlap")); }),
       Outcome::FormatError, "offsets_overlap.safetensors: tensor 'b' begins at offset 4 but the previous tensor 'a' ends at 8 (an overlap)",
       WEIGHTS("offsets_overlap"), 1, "tensor 'b' begins at offset 4 but the previous tensor 'a' ends at 8 (an overlap)"},
      {"offsets_with_a_gap", call([] { SafeTensors::load(file("offsets_gap")); }),
       Outcome::FormatError, "offsets_gap.safetensors: tensor 'b' begins at offset 12 but the previous tensor 'a' ends at 8 (a gap)"},
      {"offsets_not_from_zero", call([] { SafeTensors::load(file("offsets_not_from_zero")); }),
       Outcome::FormatError, "tensor 'a' begins at offset 4 but the first tensor must begin at 0 (a gap)"},
      {"offsets_reversed", call([] { SafeTensors::load(file("offsets_reversed")); }),
       Outcome::FormatError, "tensor 'a' has data_offsets [8,0], not two non-negative integers [begin, end] with begin <= end"},
      {"offsets_in_another_order_than_the_header_is_valid",
       call([] {
         const SafeTensors f = SafeTensors::load(file("offsets_unsorted"));
         if (f.entry("a").begin != 0 || f.entry("b").begin != 8) throw std::logic_error("offsets");
       }),
       Outcome::Accepted, ""},
      {"byte_size_differs_from_offsets", call([] { SafeTensors::load(file("byte_size_mismatch")); }),
       Outcome::FormatError, "tensor 'w' has shape [4] x F32 = 16 bytes but data_offsets [0, 8] span 8 bytes"},
      {"shape_times_dtype_overflows", call([] { SafeTensors::load(file("shape_times_dtype_overflows")); }),
       Outcome::FormatError, "tensor 'w' has shape [4294967296, 4294967296, 16] x F32 whose byte size overflows 64 bits",
       WEIGHTS("shape_times_dtype_overflows"), 1, "whose byte size overflows 64 bits"},
      {"negative_dimension", call([] { SafeTensors::load(file("negative_dimension")); }),
       Outcome::FormatError, "tensor 'w' has shape [-2], not an array of non-negative integers"},
      {"unsupported_dtype", call([] { SafeTensors::load(file("dtype_u8")); }),
       Outcome::FormatError, "dtype_u8.safetensors: tensor 'w' has unsupported dtype \"U8\" (supported: F16, BF16, F32, F64, I64)",
       WEIGHTS("dtype_u8"), 1, "tensor 'w' has unsupported dtype \"U8\" (supported: F16, BF16, F32, F64, I64)"},
      {"input_of_unsupported_dtype", call([] { SafeTensors::load(file("input_dtype_bool")); }),
       Outcome::FormatError, "tensor 'input' has unsupported dtype \"BOOL\"",
       RUN "--input {input_dtype_bool}", 1, "input_dtype_bool.safetensors: tensor 'input' has unsupported dtype \"BOOL\""},
      // ---- Files that are no safetensors at all, or no file -----------------------------------
      {"zero_byte_file", call([] { SafeTensors::load(file("empty")); }),
       Outcome::FormatError, "empty.safetensors: file has 0 bytes, fewer than the 8-byte header length",
       WEIGHTS("empty"), 1, "empty.safetensors: file has 0 bytes, fewer than the 8-byte header length"},
      {"text_file_as_weights", call([] { SafeTensors::load(file("text")); }),
       Outcome::FormatError, "text.safetensors: header length 8241904413164529780 exceeds the limit of 100000000 bytes",
       WEIGHTS("text"), 1, "text.safetensors: header length 8241904413164529780 exceeds the limit"},
      {"directory_as_weights", call([] { SafeTensors::load(file("dir")); }),
       Outcome::IoError, "dir.safetensors: cannot read: Is a directory",
       WEIGHTS("dir"), 2, "--weights: File is actually a directory: "},
      {"missing_weights", call([] { SafeTensors::load(file("missing")); }),
       Outcome::IoError, "missing.safetensors: cannot open for reading: No such file or directory",
       WEIGHTS("missing"), 2, "--weights: File does not exist: "},
      {"writing_into_a_directory",
       call([] {
         SafeTensorsWriter w;
         w.save(file("dir"));
       }),
       Outcome::IoError, "dir.safetensors: cannot open for writing: Is a directory",
       RUN "--input {image} --output {dir}", 1, "dir.safetensors: cannot open for writing: Is a directory"},
      // ---- Images -------------------------------------------------------------------------------
      {"text_file_as_an_image", {}, Outcome::Accepted, "",
       RUN "--input {text_png}", 1, "notes.png: not an image in a format stb_image reads (PNG, JPEG, PPM/PGM, BMP, GIF, TGA): "},
      {"zero_byte_image", {}, Outcome::Accepted, "",
       RUN "--input {empty_png}", 1, "empty.png: not an image (empty file)"},
      {"truncated_png", {}, Outcome::Accepted, "",
       // stb_image cannot tell 16 bytes of a PNG from no image: the message says "not an image".
       RUN "--input {truncated_png}", 1, "truncated.png: not an image in a format stb_image reads"},
      {"directory_as_an_image", {}, Outcome::Accepted, "",
       RUN "--input {dir}", 2, "--input: File is actually a directory: "},
      {"missing_image", {}, Outcome::Accepted, "",
       RUN "--input {missing}", 2, "--input: File does not exist: "},
      // ---- Weight values and shapes -------------------------------------------------------------
      {"nan_weight", call([] { load("mobilenet_v3_small", "nan_weight"); }),
       Outcome::FormatError, "nan_weight.safetensors: tensor 'features.0.0.weight' holds nan at element 5; weights must be finite",
       WEIGHTS("nan_weight"), 1, "nan_weight.safetensors: tensor 'features.0.0.weight' holds nan at element 5; weights must be finite"},
      {"inf_weight", call([] { load("mobilenet_v3_small", "inf_weight"); }),
       Outcome::FormatError, "inf_weight.safetensors: tensor 'classifier.0.bias' holds inf at element 3; weights must be finite",
       WEIGHTS("inf_weight"), 1, "tensor 'classifier.0.bias' holds inf at element 3; weights must be finite"},
      {"minus_inf_running_var", call([] { load("mobilenet_v3_small", "minus_inf_weight"); }),
       Outcome::FormatError, "tensor 'features.0.1.running_var' holds -inf at element 2; weights must be finite"},
      {"negative_running_var", call([] { load("mobilenet_v3_small", "negative_running_var"); }),
       Outcome::OptionsError, "features.0.1: BatchNorm2d(16): running_var[2]=-1 must be >= 0",
       WEIGHTS("negative_running_var"), 1, "features.0.1: BatchNorm2d(16): running_var[2]=-1 must be >= 0"},
      {"weight_with_a_zero_dimension", call([] { load("mobilenet_v3_small", "zero_dim_weight"); }),
       Outcome::ShapeError, "zero_dim_weight.safetensors: tensor 'features.0.0.weight' has shape [0, 3, 3, 3], the model expects [16, 3, 3, 3]",
       WEIGHTS("zero_dim_weight"), 1, "tensor 'features.0.0.weight' has shape [0, 3, 3, 3], the model expects [16, 3, 3, 3]"},
      {"weight_of_the_wrong_shape", call([] { load("mobilenet_v3_small", "wrong_shape_weight"); }),
       Outcome::ShapeError, "wrong_shape_weight.safetensors: tensor 'classifier.3.bias' has shape [5], the model expects [10]",
       WEIGHTS("wrong_shape_weight"), 1, "tensor 'classifier.3.bias' has shape [5], the model expects [10]"},
      // Integers where the model has floats convert, as PyTorch's load_state_dict copies them.
      {"weight_stored_as_integers", call([] { load("mobilenet_v3_small", "integer_weight"); }),
       Outcome::Accepted, ""},
      {"weights_of_another_model", call([] { load("mobilenet_v3_small", "dy_good"); }),
       Outcome::ShapeError, "dy_good.safetensors: tensor 'features.1.block.0.0.weight' has shape [4, 16, 1, 3, 3], the model expects [16, 1, 3, 3]",
       WEIGHTS("dy_good"), 1, "(the file's metadata says model 'dy_mobilenet_v3_small', not 'mobilenet_v3_small')"},
      {"weight_file_with_an_unsupported_dtype_tensor", call([] { load("mobilenet_v3_small", "dtype_u8"); }),
       Outcome::FormatError, "dtype_u8.safetensors: tensor 'w' has unsupported dtype \"U8\""},
      // A temperature is a value of the file, so its errors should name the file (FormatError);
      // today they are the layer's OptionsError without the file name: see the report of issue 6.
      {"temperature_zero_in_the_file", call([] { load("dy_mobilenet_v3_small", "tau_zero"); }),
       Outcome::OptionsError, "features.1.block.0.0.attention: KernelAttention(16 -> 4 -> 4): temperature=0 must be finite and > 0",
       "--model dy_mobilenet_v3_small --weights {tau_zero} --input {image}", 1, "temperature=0 must be finite and > 0"},
      {"temperature_negative_in_the_file", call([] { load("dy_mobilenet_v3_small", "tau_negative"); }),
       Outcome::OptionsError, "temperature=-1 must be finite and > 0"},
      {"temperature_nan_in_the_file", call([] { load("dy_mobilenet_v3_small", "tau_nan"); }),
       Outcome::FormatError, "tau_nan.safetensors: tensor 'features.1.block.0.0.attention.temperature' holds nan at element 0; weights must be finite",
       "--model dy_mobilenet_v3_small --weights {tau_nan} --input {image}", 1, "tensor 'features.1.block.0.0.attention.temperature' holds nan"},
      // ---- The family's attentions (ODConv, CondConv) ------------------------------------------
      {"odconv_attention_batchnorm_missing", call([] { load("od_mobilenet_v2_x0_5", "od_no_attention_bn"); }),
       Outcome::FormatError, "od_no_attention_bn.safetensors: missing tensor 'features.1.conv.0.0.attention.bn.running_var' [16]",
       "--model od_mobilenet_v2_x0_5 --weights {od_no_attention_bn} --input {image}", 1,
       "missing tensor 'features.1.conv.0.0.attention.bn.running_var' [16]"},
      {"odconv_temperature_zero_in_the_file", call([] { load("od_mobilenet_v2_x0_5", "od_tau_zero"); }),
       Outcome::OptionsError, "temperature=0 must be finite and > 0",
       "--model od_mobilenet_v2_x0_5 --weights {od_tau_zero} --input {image}", 1, "temperature=0 must be finite and > 0"},
      {"odconv_kernel_head_of_the_wrong_size", call([] { load("od_mobilenet_v2_x0_5", "od_kernel_head_of_3"); }),
       Outcome::ShapeError, "tensor 'features.1.conv.0.0.attention.kernel_fc.weight' has shape [3, 16, 1, 1], the model expects [4, 16, 1, 1]"},
      {"odconv_zero_kernels",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions::odconv(8, 8, 3, 0).name("od")); }),
       Outcome::OptionsError, "od: ODConv2d(8 -> 8, 3x3): kernels=0 must be >= 1"},
      {"condconv_zero_experts",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions::condconv(8, 8, 3, 0).name("cc")); }),
       Outcome::OptionsError, "cc: CondConv2d(8 -> 8, 3x3): kernels=0 must be >= 1"},
      {"odconv_temperature_zero",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions::odconv(8, 8, 3, 4).temperature(0).name("od")); }),
       Outcome::OptionsError, "od: ODConv2d(8 -> 8, 3x3): temperature=0 must be finite and > 0"},
      {"condconv_temperature_negative",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions::condconv(8, 8, 3, 4).temperature(-1).name("cc")); }),
       Outcome::OptionsError, "temperature=-1 must be finite and > 0"},
      {"condconv_shared_routing_of_the_wrong_width",
       call([] {
         DynamicConv2d<float> cc(DynamicConv2dOptions::condconv(8, 8, 3, 4).padding(1).shared_routing(true).name("cc"));
         cc.forward(tensor(2, 8, 6, 6), Tensor2<float>(2, 3).setConstant(0.5f));
       }),
       Outcome::ShapeError, "cc: CondConv2d(8 -> 8, 3x3): routing has shape [2, 3], expected [2, 4]"},
      // ---- Graph files (docs/graph_format.md) ---------------------------------------------------
      // load_graph refuses each with a FormatError naming the file, the node and the rule;
      // dynconv-run runs a graph file given as --weights without --model.
      {"graph_file_without_defects_loads", call([] { load_graph("graph_good"); }), Outcome::Accepted, ""},
      {"graph_of_a_newer_version", call([] { load_graph("graph_version_2"); }),
       Outcome::FormatError, "graph_version_2.safetensors: graph: version 2 is not 1, the one this reader knows (a newer exporter wrote it: update dynconv)",
       GRAPH("graph_version_2"), 1, "graph_version_2.safetensors: graph: version 2 is not 1"},
      {"graph_json_cut_short", call([] { load_graph("graph_truncated_json"); }),
       Outcome::FormatError, "graph_truncated_json.safetensors: graph (metadata 'dynconv.graph') is not valid JSON: ",
       GRAPH("graph_truncated_json"), 1, "graph_truncated_json.safetensors: graph (metadata 'dynconv.graph') is not valid JSON: "},
      {"graph_unknown_op", call([] { load_graph("graph_unknown_op"); }),
       Outcome::FormatError, "graph_unknown_op.safetensors: node 'act' (mish): unknown op 'mish' (version 1 has: conv2d, ",
       GRAPH("graph_unknown_op"), 1, "graph_unknown_op.safetensors: node 'act' (mish): unknown op 'mish'"},
      {"graph_input_name_unresolved", call([] { load_graph("graph_unresolved_input"); }),
       Outcome::FormatError, "graph_unresolved_input.safetensors: node 'act' (act: ReLU) reads 'conf', which is neither an input nor a node of the graph",
       GRAPH("graph_unresolved_input"), 1, "graph_unresolved_input.safetensors: node 'act' (act: ReLU) reads 'conf', which is neither"},
      {"graph_with_a_cycle", call([] { load_graph("graph_cycle"); }),
       Outcome::FormatError, "graph_cycle.safetensors: has a cycle: conv -> act -> conv",
       GRAPH("graph_cycle"), 1, "graph_cycle.safetensors: has a cycle: conv -> act -> conv"},
      {"graph_weight_contradicting_the_attributes", call([] { load_graph("graph_weight_shape_vs_attrs"); }),
       Outcome::FormatError, "graph_weight_shape_vs_attrs.safetensors: node 'conv' (conv2d): tensor 'conv.weight' has shape [4, 4, 3, 3], the attributes give [4, 4, 5, 5]",
       GRAPH("graph_weight_shape_vs_attrs"), 1, "node 'conv' (conv2d): tensor 'conv.weight' has shape [4, 4, 3, 3], the attributes give [4, 4, 5, 5]"},
      // Refused by the weight's shape before the module (8e9 weights) is built.
      {"graph_huge_channel_count", call([] { load_graph("graph_huge_channels"); }),
       Outcome::FormatError, "graph_huge_channels.safetensors: node 'conv' (conv2d): tensor 'conv.weight' has shape [4, 4, 3, 3], the attributes give [2000000000, 4, 3, 3]",
       GRAPH("graph_huge_channels"), 1, "node 'conv' (conv2d): tensor 'conv.weight' has shape [4, 4, 3, 3], the attributes give [2000000000, 4, 3, 3]"},
      {"graph_attention_tensor_missing", call([] { load_graph("graph_attention_tensor_missing"); }),
       Outcome::FormatError, "graph_attention_tensor_missing.safetensors: node 'dy' (dynamic_conv2d): missing tensor 'dy.attention.fc2.bias' [2]",
       GRAPH("graph_attention_tensor_missing"), 1, "node 'dy' (dynamic_conv2d): missing tensor 'dy.attention.fc2.bias' [2]"},
      // The format always stores the temperature (a zoo model's file may leave it out: tau = 1).
      {"graph_temperature_missing", call([] { load_graph("graph_temperature_missing"); }),
       Outcome::FormatError, "graph_temperature_missing.safetensors: node 'dy' (dynamic_conv2d): the file has no tensor 'dy.attention.temperature' []",
       GRAPH("graph_temperature_missing"), 1, "node 'dy' (dynamic_conv2d): the file has no tensor 'dy.attention.temperature' []"},
      {"graph_temperature_zero", call([] { load_graph("graph_temperature_zero"); }),
       Outcome::FormatError, "graph_temperature_zero.safetensors: node 'dy' (dynamic_conv2d): dy.attention: KernelAttention(4 -> 2 -> 2): temperature=0 must be finite and > 0",
       GRAPH("graph_temperature_zero"), 1, "node 'dy' (dynamic_conv2d): dy.attention: KernelAttention(4 -> 2 -> 2): temperature=0 must be finite and > 0"},
      {"graph_routing_temperature_negative", call([] { load_graph("graph_routing_temperature_negative"); }),
       Outcome::FormatError, "graph_routing_temperature_negative.safetensors: node 'route' (condconv_routing): route: CondConvRouting(4 -> 2 experts): temperature=-1 must be finite and > 0"},
      {"graph_shared_routing_of_the_wrong_width", call([] { load_graph("graph_shared_routing_of_the_wrong_width"); }),
       Outcome::FormatError, "graph_shared_routing_of_the_wrong_width.safetensors: on the example input the graph does not fit together: node 'cc' reading 'dy' (dy: DynamicConv2d(4 -> 4, 3x3)) [1, 4, 6, 6] (NCHW), 'route' (route: CondConvRouting(4 -> 3 experts)) [1, 3, 1, 1] (NCHW): cc: CondConv2d(4 -> 4, 1x1): routing input [1, 3, 1, 1] (NCHW) must be [1, 2, 1, 1] (NCHW)",
       GRAPH("graph_shared_routing_of_the_wrong_width"), 1, "node 'cc' reading 'dy' (dy: DynamicConv2d(4 -> 4, 3x3)) [1, 4, 6, 6] (NCHW), 'route' (route: CondConvRouting(4 -> 3 experts)) [1, 3, 1, 1] (NCHW): cc: CondConv2d(4 -> 4, 1x1): routing input [1, 3, 1, 1] (NCHW) must be [1, 2, 1, 1] (NCHW)"},
      {"graph_flattened_size_overflows", call([] { load_graph("graph_flattened_size_overflows"); }),
       Outcome::FormatError, "graph_flattened_size_overflows.safetensors: on the example input the graph does not fit together: node 'flat' reading input 'x' [1, 2147483648, 2147483648, 2147483648] (NCHW): flat: Flatten: the flattened size overflows (4611686018427387904 x 2147483648)",
       GRAPH("graph_flattened_size_overflows"), 1, "flat: Flatten: the flattened size overflows (4611686018427387904 x 2147483648)"},
      // A name from the file quoted in a message keeps it one line.
      {"graph_node_name_with_a_newline", call([] { load_graph("graph_node_name_with_a_newline"); }),
       Outcome::FormatError, "graph_node_name_with_a_newline.safetensors: node 'act\\nx' (mish): unknown op 'mish'",
       GRAPH("graph_node_name_with_a_newline"), 1, "node 'act\\nx' (mish): unknown op 'mish'"},
      // ---- Non-finite or extreme input values ---------------------------------------------------
      // The library does not scan inputs: NaN and Inf propagate into the logits of their own
      // sample and no other. dynconv-run refuses them before the forward pass, naming the file
      // and the element, and refuses non-finite logits of finite inputs (overflow).
      {"nan_input", [] { return zoo("mobilenet_v3_small").forward(tensor(2, 3, 32, 32, 7, kNaN)); },
       Outcome::NonFiniteFirstSample, "",
       RUN "--input {input_nan}", 1, "input_nan.safetensors: tensor 'input' holds nan at element 7 (input[0, 0, 0, 7]); inputs must be finite"},
      {"inf_input", [] { return zoo("mobilenet_v3_small").forward(tensor(2, 3, 32, 32, 100, kInf)); },
       Outcome::NonFiniteFirstSample, "",
       RUN "--input {input_inf}", 1, "input_inf.safetensors: tensor 'input' holds inf at element 100 (input[0, 0, 3, 4]); inputs must be finite"},
      {"nan_input_dynamic", [] { return zoo("dy_mobilenet_v3_small").forward(tensor(2, 3, 32, 32, 7, kNaN)); },
       Outcome::NonFiniteFirstSample, ""},
      {"inf_input_through_a_session",
       [] {
         dynconv::Session<float> s(zoo("dy_mobilenet_v3_small"), 2);
         return s.forward(tensor(2, 3, 32, 32, 100, -kInf));
       },
       Outcome::NonFiniteFirstSample, ""},
      {"finite_input_so_large_that_the_logits_overflow", {}, Outcome::Accepted, "",
       RUN "--input {input_huge}", 1, "input_huge.safetensors input[0]) gives a non-finite logit ("},
      // ---- Zero-size dimensions ------------------------------------------------------------------
      // A graph refuses an input without samples or pixels before any layer runs.
      {"empty_batch", call([] { zoo("mobilenet_v3_small").forward(tensor(0, 3, 32, 32)); }),
       Outcome::ShapeError, "graph 'mobilenet_v3_small': input 'x' [0, 3, 32, 32] (NCHW) has no samples (N=0)",
       RUN "--input {input_n0}", 1, "input_n0.safetensors: tensor 'input' has shape [0, 3, 32, 32], expected [N, 3, H, W] with N >= 1 and H, W >= 32"},
      {"empty_batch_of_huge_images",
       call([] { zoo("dy_mobilenet_v3_small").forward(Tensor4<float>(0, 3, Index(1) << 20, Index(1) << 20)); }),
       Outcome::ShapeError, "graph 'dy_mobilenet_v3_small': input 'x' [0, 3, 1048576, 1048576] (NCHW) has no samples (N=0)"},
      {"empty_batch_of_huge_images_through_a_session",
       call([] {
         dynconv::Session<float> s(zoo("dy_mobilenet_v3_small"), 2);
         s.forward(Tensor4<float>(0, 3, Index(1) << 20, Index(1) << 20));
       }),
       Outcome::ShapeError, "graph 'dy_mobilenet_v3_small': input 'x' [0, 3, 1048576, 1048576] (NCHW) has no samples (N=0)"},
      {"empty_batch_dynamic", call([] { zoo("dy_mobilenet_v3_small").forward(tensor(0, 3, 32, 32)); }),
       Outcome::ShapeError, "graph 'dy_mobilenet_v3_small': input 'x' [0, 3, 32, 32] (NCHW) has no samples (N=0)"},
      {"empty_batch_through_a_session",
       call([] {
         dynconv::Session<float> s(zoo("dy_mobilenet_v3_small"), 2);
         s.forward(tensor(0, 3, 32, 32));
       }),
       Outcome::ShapeError, "graph 'dy_mobilenet_v3_small': input 'x' [0, 3, 32, 32] (NCHW) has no samples (N=0)"},
      {"image_of_height_zero", call([] { zoo("mobilenet_v3_small").forward(tensor(1, 3, 0, 32)); }),
       Outcome::ShapeError, "graph 'mobilenet_v3_small': input 'x' [1, 3, 0, 32] (NCHW) has no pixels (0x32)",
       RUN "--input {input_h0}", 1, "input_h0.safetensors: tensor 'input' has shape [1, 3, 0, 32], expected [N, 3, H, W] with N >= 1 and H, W >= 32"},
      {"conv_input_without_pixels", call([] { Conv2d<float>(Conv2dOptions(3, 8, 3)).forward(tensor(1, 3, 0, 8)); }),
       Outcome::ShapeError, "Conv2d(3 -> 8, 3x3): input [1, 3, 0, 8] (NCHW) has no pixels (0x8)"},
      {"dynamic_conv_input_without_pixels",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions(3, 8, 1).name("l")).forward(tensor(2, 3, 5, 0)); }),
       Outcome::ShapeError, "l: DynamicConv2d(3 -> 8, 1x1): input [2, 3, 5, 0] (NCHW) has no pixels (5x0)"},
      {"attention_input_without_pixels",
       call([] { dynconv::KernelAttention<float>(dynconv::KernelAttentionOptions(4, 2)).forward(tensor(1, 4, 0, 0)); }),
       Outcome::ShapeError, "KernelAttention(4 -> 1 -> 2): input [1, 4, 0, 0] (NCHW) must have 4 channels and at least one pixel"},
      {"pooling_input_without_pixels", call([] { dynconv::global_avg_pool(tensor(1, 4, 0, 3)); }),
       Outcome::ShapeError, "global_avg_pool: input [1, 4, 0, 3] (NCHW) has no pixels"},
      {"linear_input_without_features",
       call([] { dynconv::Linear<float>(dynconv::LinearOptions(3, 4)).forward(Tensor2<float>(2, 0)); }),
       Outcome::ShapeError, "Linear(3 -> 4): input [2, 0] has 0 features, expected in_features=3"},
      {"weight_tensor_with_a_zero_dimension",
       call([] { Conv2d<float>(Conv2dOptions(3, 8, 3)).set_weight(Tensor4<float>(0, 3, 3, 3)); }),
       Outcome::ShapeError, "Conv2d(3 -> 8, 3x3): weight has shape [0, 3, 3, 3], expected [8, 3, 3, 3]"},
      {"zero_channels", call([] { Conv2d<float>(Conv2dOptions(0, 8, 3)); }),
       Outcome::OptionsError, "Conv2d(0 -> 8, 3x3): in_channels=0 must be >= 1"},
      {"zero_classes", call([] { dynconv::models::create<float>("dy_resnet10", ModelOptions().num_classes(0)); }),
       Outcome::OptionsError, "dy_resnet10: num_classes=0 must be >= 1"},
      {"linear_without_inputs", call([] { dynconv::Linear<float>(dynconv::LinearOptions(0, 4)); }),
       Outcome::OptionsError, "Linear(0 -> 4): in_features=0 must be >= 1"},
      // ---- Huge sizes whose products overflow --------------------------------------------------
      {"conv_weight_size_overflows", call([] { Conv2d<float>(Conv2dOptions(kBig, kBig, Pair{kBig, kBig})); }),
       Outcome::OptionsError, "Conv2d(2147483648 -> 2147483648, 2147483648x2147483648): the weight size overflows (4611686018427387904 x 4611686018427387904)"},
      {"dynamic_conv_k_kernels_overflow",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions(1, kBig, Index(1) << 15).kernels(8)); }),
       Outcome::OptionsError, "DynamicConv2d(1 -> 2147483648, 32768x32768): the size of the K kernels overflows (8 x 2305843009213693952)"},
      {"channels_over_the_limit", call([] { Conv2d<float>(Conv2dOptions(Big(1) << 40, 8, 1)); }),
       Outcome::OptionsError, "in_channels=1099511627776 must be <= 2147483648"},
      {"stride_over_the_limit", call([] { Conv2d<float>(Conv2dOptions(3, 8, 3).stride(Big(1) << 40)); }),
       Outcome::OptionsError, "Conv2d(3 -> 8, 3x3): stride[0]=1099511627776 must be <= 2147483648"},
      {"kernels_over_the_limit", call([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).kernels(Big(1) << 40)); }),
       Outcome::OptionsError, "DynamicConv2d(8 -> 8, 3x3): kernels=1099511627776 must be <= 2147483648"},
      {"classes_over_the_limit", call([] { dynconv::models::create<float>("mobilenet_v3_small", ModelOptions().num_classes(Big(1) << 40)); }),
       Outcome::OptionsError, "classifier.3: Linear(1024 -> 1099511627776): out_features=1099511627776 must be <= 2147483648"},
      {"conv_output_size_overflows", call([] { Conv2d<float>(Conv2dOptions(3, 8, 1)).cost(kBig, kBig); }),
       Outcome::ShapeError, "Conv2d(3 -> 8, 1x1): the output size overflows (4611686018427387904 x 8)"},
      {"input_height_over_the_limit", call([] { Conv2d<float>(Conv2dOptions(3, 8, 3)).cost(Big(1) << 40, 8); }),
       Outcome::ShapeError, "Conv2d(3 -> 8, 3x3): input height=1099511627776 must be <= 2147483648"},
      {"model_cost_of_a_huge_image", call([] { zoo("mobilenet_v3_small").cost(kBig, kBig); }),
       Outcome::ShapeError, "graph 'mobilenet_v3_small': node 'features.0.0' reading input 'x' [1, 3, 2147483648, 2147483648] (NCHW): features.0.0: Conv2d(3 -> 16, 3x3): the output size overflows (1152921504606846976 x 16)"},
      {"model_cost_of_a_negative_image", call([] { zoo("mobilenet_v3_small").cost(-5, 64); }),
       Outcome::ShapeError, "graph 'mobilenet_v3_small': input 'x' [1, 3, -5, 64] (NCHW) has no pixels (-5x64)"},
      // ---- Wrong channel counts ------------------------------------------------------------------
      {"model_input_with_one_channel", call([] { zoo("mobilenet_v3_small").forward(tensor(1, 1, 32, 32)); }),
       Outcome::ShapeError, "graph 'mobilenet_v3_small': input 'x' [1, 1, 32, 32] (NCHW) has 1 channel, expected 3",
       RUN "--input {input_2ch}", 1, "input_2ch.safetensors: tensor 'input' has shape [1, 2, 32, 32], expected [N, 3, H, W]"},
      {"model_input_nhwc_passed_as_nchw", call([] { zoo("mobilenet_v3_small").forward(tensor(1, 32, 32, 3)); }),
       Outcome::ShapeError, "graph 'mobilenet_v3_small': input 'x' [1, 32, 32, 3] (NCHW) has 32 channels, expected 3"},
      {"input_tensor_of_rank_5", call([] { SafeTensors::load(file("input_rank5")).get<float, 4>("input"); }),
       Outcome::ShapeError, "input_rank5.safetensors: tensor 'input' has shape [1, 1, 3, 32, 32] (rank 5) but rank 4 was requested",
       RUN "--input {input_rank5}", 1, "input_rank5.safetensors: tensor 'input' has shape [1, 1, 3, 32, 32], expected [N, 3, H, W]"},
      {"conv_input_with_wrong_channels", call([] { Conv2d<float>(Conv2dOptions(3, 8, 3).name("stem")).forward(tensor(1, 4, 8, 8)); }),
       Outcome::ShapeError, "stem: Conv2d(3 -> 8, 3x3): input [1, 4, 8, 8] (NCHW) has 4 channels, expected in_channels=3"},
      {"dynamic_conv_input_with_wrong_channels",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions(32, 64, 3)).forward(dynconv::NhwcTensor<float>(tensor(1, 8, 8, 16))); }),
       // An NHWC tensor [1, 8, 8, 16] is printed in PyTorch's order, as every activation shape.
       Outcome::ShapeError, "DynamicConv2d(32 -> 64, 3x3): input [1, 16, 8, 8] (NCHW) has 16 channels, expected in_channels=32"},
      {"attention_rows_of_the_wrong_size",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions(3, 8, 3)).convolve(tensor(2, 3, 8, 8), Tensor2<float>(2, 3)); }),
       Outcome::ShapeError, "DynamicConv2d(3 -> 8, 3x3): attention has shape [2, 3], expected [2, 4]"},
      {"batchnorm_input_with_wrong_channels",
       call([] { dynconv::BatchNorm2d<float>(dynconv::BatchNorm2dOptions(8)).forward(tensor(1, 4, 2, 2)); }),
       Outcome::ShapeError, "BatchNorm2d(8): input [1, 4, 2, 2] (NCHW) has 4 channels, expected 8"},
      {"input_smaller_than_the_kernel", call([] { Conv2d<float>(Conv2dOptions(3, 8, 5)).forward(tensor(1, 3, 3, 3)); }),
       Outcome::ShapeError, "Conv2d(3 -> 8, 5x5): input [1, 3, 3, 3] (NCHW) is 3x3, smaller than the dilated kernel 5x5 after padding (0, 0)"},
      // There is no minimum input size: an input runs when every layer fits it (the zoo's padded
      // convolutions and pools fit any size); the first layer that does not fit is the error.
      {"model_input_smaller_than_32_runs", [] { return zoo("dy_resnet10").forward(tensor(1, 3, 31, 64)); },
       Outcome::Accepted, ""},
      {"graph_input_smaller_than_a_layer", call([] { tiny_graph().forward(tensor(1, 3, 4, 9)); }),
       Outcome::ShapeError, "graph 'tiny': node 'conv' reading input 'x' [1, 3, 4, 9] (NCHW): conv: Conv2d(3 -> 8, 5x5): input [1, 3, 4, 9] (NCHW) is 4x9, smaller than the dilated kernel 5x5 after padding (0, 0)"},
      {"session_input_with_wrong_channels",
       call([] {
         dynconv::Session<float> s(zoo("dy_mobilenet_v3_small"), 2);
         s.forward(tensor(2, 4, 32, 32));
       }),
       Outcome::ShapeError, "graph 'dy_mobilenet_v3_small': input 'x' [2, 4, 32, 32] (NCHW) has 4 channels, expected 3"},
      // ---- Temperature, K, groups, padding, stride ---------------------------------------------
      {"temperature_zero", call([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).temperature(0)); }),
       Outcome::OptionsError, "DynamicConv2d(8 -> 8, 3x3): temperature=0 must be finite and > 0"},
      {"temperature_negative", call([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).temperature(-0.5)); }),
       Outcome::OptionsError, "DynamicConv2d(8 -> 8, 3x3): temperature=-0.5 must be finite and > 0"},
      {"temperature_nan", call([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).temperature(std::nan(""))); }),
       Outcome::OptionsError, "DynamicConv2d(8 -> 8, 3x3): temperature=nan must be finite and > 0"},
      {"temperature_infinite", call([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).temperature(HUGE_VAL)); }),
       Outcome::OptionsError, "temperature=inf must be finite and > 0"},
      {"temperature_zero_in_float", call([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).temperature(1e-50)); }),
       Outcome::OptionsError, "temperature=1e-50 must be finite and > 0 in float (it is 0 there)"},
      {"set_temperature_zero",
       call([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).name("c")).attention().set_temperature(0); }),
       Outcome::OptionsError, "c.attention: KernelAttention(8 -> 2 -> 4): temperature=0 must be finite and > 0"},
      {"model_temperature_zero", call([] { dynconv::models::create<float>("dy_resnet10", ModelOptions().temperature(0)); }),
       Outcome::OptionsError, "layer1.0.conv1: DynamicConv2d(64 -> 64, 3x3): temperature=0 must be finite and > 0"},
      {"kernels_zero", call([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).kernels(0)); }),
       Outcome::OptionsError, "DynamicConv2d(8 -> 8, 3x3): kernels=0 must be >= 1"},
      {"attention_kernels_zero", call([] { dynconv::KernelAttention<float>(dynconv::KernelAttentionOptions(8, 0)); }),
       Outcome::OptionsError, "KernelAttention(8 -> 2 -> 0): kernels=0 must be >= 1"},
      {"model_kernels_zero", call([] { dynconv::models::create<float>("dy_mobilenet_v3_small", ModelOptions().kernels(0)); }),
       Outcome::OptionsError, "features.1.block.0.0: DynamicConv2d(16 -> 16, 3x3): kernels=0 must be >= 1"},
      {"groups_do_not_divide_in_channels", call([] { DynamicConv2d<float>(DynamicConv2dOptions(32, 64, 3).groups(3)); }),
       Outcome::OptionsError, "DynamicConv2d(32 -> 64, 3x3): groups=3 must divide in_channels=32"},
      {"groups_do_not_divide_out_channels", call([] { Conv2d<float>(Conv2dOptions(32, 50, 3).groups(4)); }),
       Outcome::OptionsError, "Conv2d(32 -> 50, 3x3): groups=4 must divide out_channels=50"},
      {"groups_zero", call([] { Conv2d<float>(Conv2dOptions(32, 64, 3).groups(0)); }),
       Outcome::OptionsError, "Conv2d(32 -> 64, 3x3): groups=0 must be >= 1"},
      {"padding_negative", call([] { Conv2d<float>(Conv2dOptions(3, 8, 3).padding(-1)); }),
       Outcome::OptionsError, "Conv2d(3 -> 8, 3x3): padding=(-1, -1) must be >= 0"},
      {"padding_negative_on_one_axis", call([] { DynamicConv2d<float>(DynamicConv2dOptions(3, 8, 3).padding(1, -2)); }),
       Outcome::OptionsError, "DynamicConv2d(3 -> 8, 3x3): padding=(1, -2) must be >= 0"},
      {"stride_zero", call([] { Conv2d<float>(Conv2dOptions(3, 8, 3).stride(0)); }),
       Outcome::OptionsError, "Conv2d(3 -> 8, 3x3): stride[0]=0 must be >= 1"},
      {"stride_zero_on_one_axis", call([] { DynamicConv2d<float>(DynamicConv2dOptions(3, 8, 3).stride(2, 0)); }),
       Outcome::OptionsError, "DynamicConv2d(3 -> 8, 3x3): stride[1]=0 must be >= 1"},
      {"dilation_zero", call([] { Conv2d<float>(Conv2dOptions(3, 8, 3).dilation(0)); }),
       Outcome::OptionsError, "Conv2d(3 -> 8, 3x3): dilation[0]=0 must be >= 1"},
      {"kernel_size_zero", call([] { Conv2d<float>(Conv2dOptions(3, 8, 0)); }),
       Outcome::OptionsError, "Conv2d(3 -> 8, 0x0): kernel_size[0]=0 must be >= 1"},
      {"max_pool_stride_zero", call([] { dynconv::MaxPool2d<float>(dynconv::Pool2dOptions(3).stride(0).padding(1)); }),
       Outcome::OptionsError, "MaxPool2d(3x3, stride 0, padding 1): stride[0]=0 must be >= 1"},
      {"batchnorm_eps_zero", call([] { dynconv::BatchNorm2d<float>(dynconv::BatchNorm2dOptions(8).eps(0)); }),
       Outcome::OptionsError, "BatchNorm2d(8): eps=0 must be finite and > 0"},
      {"forced_algorithm_that_does_not_fit",
       call([] { Conv2d<float>(Conv2dOptions(3, 8, 3).algorithm(dynconv::ConvAlgorithm::Pointwise)); }),
       Outcome::OptionsError, "Conv2d(3 -> 8, 3x3): algorithm=Pointwise needs a 1x1 kernel with padding 0, got kernel 3x3, padding (0, 0), groups=1, in_channels=3, out_channels=8"},
      {"unknown_model", call([] { dynconv::models::create<float>("resnet99"); }),
       Outcome::OptionsError, "unknown model 'resnet99'; the zoo has: mobilenet_v2_x1_0, ",
       "--model resnet99 --weights {good} --input {image}", 2, "unknown model 'resnet99'; the zoo has: "},
      {"unknown_policy", call([] { dynconv::models::policy_by_name("all"); }),
       Outcome::OptionsError, "policy 'all' is unknown; use default, all_but_stem, pointwise_only or none"},
      {"session_with_zero_threads",
       call([] { dynconv::Session<float> s(zoo("mobilenet_v3_small"), 0); }),
       Outcome::OptionsError, "threads=0 must be in [1, 1024]"},
  };
  return rows;
}

#undef RUN
#undef WEIGHTS
#undef GRAPH

std::vector<Row> rows_with(bool cli) {
  std::vector<Row> out;
  for (const Row& r : table())
    if (cli ? r.cli != nullptr : static_cast<bool>(r.api)) out.push_back(r);
  return out;
}

std::string row_name(const ::testing::TestParamInfo<Row>& i) { return i.param.name; }

// ---- Through the library ---------------------------------------------------------------------

/// The type of e as a row names it.
const char* error_name(const dynconv::Error& e) {
  if (typeid(e) == typeid(dynconv::OptionsError)) return "dynconv::OptionsError";
  if (typeid(e) == typeid(dynconv::ShapeError)) return "dynconv::ShapeError";
  if (typeid(e) == typeid(dynconv::FormatError)) return "dynconv::FormatError";
  if (typeid(e) == typeid(dynconv::IoError)) return "dynconv::IoError";
  return "another dynconv::Error";
}

class Api : public ::testing::TestWithParam<Row> {};

TEST_P(Api, ThrowsTheRightErrorOrGivesTheDocumentedResult) {
  const Row& r = GetParam();
  const bool error = r.outcome == Outcome::OptionsError || r.outcome == Outcome::ShapeError ||
                     r.outcome == Outcome::FormatError || r.outcome == Outcome::IoError;
  Tensor2<float> y;
  try {
    y = r.api();
  } catch (const dynconv::Error& e) {
    ASSERT_TRUE(error) << "expected " << outcome_name(r.outcome) << ", got " << error_name(e)
                       << ": " << e.what();
    EXPECT_STREQ(error_name(e), outcome_name(r.outcome)) << e.what();
    EXPECT_THAT(e.what(), HasSubstr(r.message));
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
    return;
  } catch (const std::exception& e) {
    FAIL() << "expected " << outcome_name(r.outcome) << ", got a " << typeid(e).name()
           << " that is no dynconv::Error: " << e.what();
  }
  ASSERT_FALSE(error) << "expected " << outcome_name(r.outcome) << " (" << r.message
                      << "), nothing was thrown";
  if (r.outcome == Outcome::NonFiniteFirstSample) {
    ASSERT_EQ(y.dimension(0), 2);
    ASSERT_EQ(y.dimension(1), 10);
    bool first_finite = true;
    for (Index c = 0; c < 10; ++c) first_finite = first_finite && std::isfinite(y(0, c));
    EXPECT_FALSE(first_finite) << "a NaN or Inf input value gave finite logits";
    for (Index c = 0; c < 10; ++c)
      EXPECT_TRUE(std::isfinite(y(1, c))) << "sample 1 (finite) got logit " << y(1, c)
                                          << " for class " << c << ": samples must not mix";
  }
}

INSTANTIATE_TEST_SUITE_P(BadInput, Api, ::testing::ValuesIn(rows_with(false)), row_name);

// ---- Through dynconv-run ----------------------------------------------------------------------

#ifdef DYNCONV_RUN_PATH

using testproc::Result;

/// Runs dynconv-run with `args` split on spaces, {key} words replaced by file paths.
Result run_cli(const std::string& args) {
  static int calls = 0;
  std::vector<std::string> argv_s = {DYNCONV_RUN_PATH};
  std::istringstream in(args);
  for (std::string w; in >> w;) {
    for (std::size_t open; (open = w.find('{')) != std::string::npos;) {
      const std::size_t close = w.find('}', open);
      w.replace(open, close - open + 1, file(w.substr(open + 1, close - open - 1)));
    }
    argv_s.push_back(w);
  }
  const std::string dir = fs::path(file("missing")).parent_path().string();
  return testproc::run(argv_s, dir + "/run." + std::to_string(calls++));
}

class Cli : public ::testing::TestWithParam<Row> {};

TEST_P(Cli, OneLineAndNonZeroExitNeverACrash) {
  const Row& r = GetParam();
  const Result res = run_cli(r.cli);
  const std::string all = "exit " + (res.exited ? std::to_string(res.code) : "by signal") +
                          "\n--- stdout ---\n" + res.out + "--- stderr ---\n" + res.err;
  ASSERT_TRUE(res.exited) << "killed by a signal\n" << all;
  EXPECT_EQ(res.code, r.code) << all;
  EXPECT_THAT(res.err, StartsWith("dynconv-run: ")) << all;
  EXPECT_THAT(res.err, HasSubstr(r.cli_message)) << all;
  EXPECT_EQ(std::count(res.err.begin(), res.err.end(), '\n'), 1) << "not one line:\n" << res.err;
  EXPECT_THAT(res.err, ::testing::Not(HasSubstr("terminate called")));
}

INSTANTIATE_TEST_SUITE_P(BadInput, Cli, ::testing::ValuesIn(rows_with(true)), row_name);

#endif  // DYNCONV_RUN_PATH

}  // namespace
