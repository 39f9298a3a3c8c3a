// dynconv: a Graph from a graph file, a safetensors file whose metadata holds the network
// (docs/graph_format.md; tools/export_safetensors.py writes it from any PyTorch module).
//
//   const SafeTensors file = SafeTensors::load("net.safetensors");
//   GraphFile<float> g = load_graph<float>(file);      // built, weights loaded, BatchNorms folded
//   Session<float> s(g.graph, 2);
//   s.run(x);                                           // x [N, C, H, W]
//   const Tensor4<float>& y = s.output(g.outputs[0].name);
//
// The file is untrusted: the JSON is parsed with bounded nesting, every key is known, every
// count bounded, every name resolved, the graph acyclic, and every parameter tensor of a node
// whose size the attributes multiply together is checked against them before the module is
// built (so a file cannot ask for more memory than it holds); then dynconv's shape inference
// runs on the exporter's example input and must give every node the shape PyTorch recorded
// (no value may have a dimension over 2^31). Each failure is a FormatError naming the file,
// the node and the rule, on one line. Loading costs time linear in the nodes (up to the
// format's 100,000). tests/fuzz/fuzz_graph_load.cpp fuzzes all of it.
#pragma once

#include <dynconv/batchnorm.hpp>
#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/elementwise.hpp>
#include <dynconv/graph.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/pooling.hpp>
#include <dynconv/routing.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/upsample.hpp>
#include <dynconv/weights.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace dynconv {

/// The metadata key of the graph (docs/graph_format.md).
inline constexpr const char* kGraphMetadataKey = "dynconv.graph";
/// The one version this reader knows.
inline constexpr int kGraphFormatVersion = 1;

/// Whether `file` holds a graph.
inline bool has_graph(const SafeTensors& file) { return file.metadata().count(kGraphMetadataKey) > 0; }

/// A named value of a graph file with the shape PyTorch recorded for the example input
/// ([N, C, H, W], or [N, C] for a flat value).
struct GraphFileValue {
  std::string name;
  std::vector<Index> shape;
};

/// A graph file, read: the graph (weights loaded, BatchNorms folded), its inputs and outputs
/// with their recorded shapes, and the test vectors' tensor names (empty without them).
template <typename T>
struct GraphFile {
  Graph<T> graph;
  std::vector<GraphFileValue> inputs;
  std::vector<GraphFileValue> outputs;
  std::vector<std::pair<std::string, std::string>> test_inputs;   // graph input -> tensor
  std::vector<std::pair<std::string, std::string>> test_outputs;  // graph output -> tensor
  bool has_test() const { return !test_inputs.empty(); }
};

namespace detail {

inline constexpr std::size_t kGraphMaxNodes = 100000;
inline constexpr std::size_t kGraphMaxInputs = 64;
inline constexpr std::size_t kGraphMaxOutputs = 64;
inline constexpr std::size_t kGraphMaxNodeInputs = 1024;
inline constexpr std::size_t kGraphMaxName = 256;
inline constexpr int kGraphMaxDepth = 16;

/// Reads the graph JSON of one file; every error names the file (and the node).
template <typename T>
class GraphFileReader {
 public:
  explicit GraphFileReader(const SafeTensors& file) : file_(file), src_(file.source()) {}

  GraphFile<T> read() {
    const auto it = file_.metadata().find(kGraphMetadataKey);
    if (it == file_.metadata().end())
      fail<FormatError>(src_, ": has no graph (metadata key '", kGraphMetadataKey,
                        "'); export one with tools/export_safetensors.py export(model, path, example_input=x), "
                        "or pass --model for a zoo model");
    const nlohmann::json j = parse(it->second);
    const std::string top = "graph";
    check_keys(j, top, {"format", "version", "inputs", "nodes", "outputs"}, {"test"});
    const std::string format = get_string(j, "format", top);
    if (format != "dynconv.graph")
      bad(top, ": format='", format, "', expected 'dynconv.graph'");
    const nlohmann::json& version = j.at("version");
    if (!version.is_number_integer() || version.get<std::int64_t>() != kGraphFormatVersion)
      bad(top, ": version ", json_brief(version), " is not ", kGraphFormatVersion,
          ", the one this reader knows (a newer exporter wrote it: update dynconv)");

    GraphFile<T> out{Graph<T>(src_), {}, {}, {}, {}};
    // Inputs.
    const nlohmann::json& inputs = get_array(j, "inputs", top, 1, kGraphMaxInputs);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const std::string ctx = concat("inputs[", i, ']');
      check_keys(inputs[i], ctx, {"name", "shape"}, {});
      GraphFileValue v{get_name(inputs[i], ctx), get_shape(inputs[i], ctx)};
      if (v.shape.size() != 4) bad("input '", v.name, "': shape ", shape_str(v.shape), " must be [N, C, H, W]");
      declare(v.name, "input");
      out.graph.input(v.name, v.shape[1]);
      out.inputs.push_back(std::move(v));
    }
    // Nodes.
    const nlohmann::json& nodes = get_array(j, "nodes", top, 1, kGraphMaxNodes);
    std::vector<std::vector<Index>> recorded;
    std::vector<std::string> ops;
    std::map<std::string, std::size_t> node_index;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      const nlohmann::json& n = nodes[i];
      const std::string ctx = concat("nodes[", i, ']');
      check_keys(n, ctx, {"name", "op", "inputs", "shape", "attrs"}, {});
      const std::string name = get_name(n, ctx);
      const std::string node = "node '" + name + "'";
      declare(name, "node");
      const std::string op = get_string(n, "op", node);
      const nlohmann::json& in = get_array(n, "inputs", node, 1, kGraphMaxNodeInputs);
      std::vector<Value> values;
      for (const nlohmann::json& v : in) {
        if (!v.is_string()) bad(node, " (", op, "): inputs holds ", json_brief(v), ", not a value name");
        values.emplace_back(v.get<std::string>());
      }
      std::vector<Index> shape = get_shape(n, node);
      if (shape.size() != 2 && shape.size() != 4)
        bad(node, " (", op, "): shape ", shape_str(shape), " must be [N, C] or [N, C, H, W]");
      const nlohmann::json& attrs = n.at("attrs");
      if (!attrs.is_object()) bad(node, " (", op, "): attrs must be an object, got ", json_brief(attrs));
      std::unique_ptr<Module<T>> m = build(op, name, attrs, values.size(), node + " (" + op + ")");
      try {
        out.graph.add(name, std::move(m), std::move(values));
      } catch (const Error& e) {
        bad(node, " (", op, "): ", e.what());
      }
      node_index[name] = recorded.size();
      recorded.push_back(std::move(shape));
      ops.push_back(op);
    }
    // Outputs.
    const nlohmann::json& outputs = get_array(j, "outputs", top, 1, kGraphMaxOutputs);
    std::set<std::string> output_names;
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      const std::string ctx = concat("outputs[", i, ']');
      check_keys(outputs[i], ctx, {"name", "value"}, {});
      const std::string name = get_name(outputs[i], ctx);
      const std::string value = get_string(outputs[i], "value", "output '" + name + "'");
      if (!output_names.insert(name).second) bad("output '", name, "' is declared twice");
      std::vector<Index> shape;
      for (const GraphFileValue& v : out.inputs)
        if (v.name == value) shape = v.shape;
      const auto node = node_index.find(value);
      if (node != node_index.end()) shape = recorded[node->second];
      if (shape.empty()) bad("output '", name, "' is '", value, "', which is neither an input nor a node");
      out.graph.output(name, Value(value));
      out.outputs.push_back({name, shape});
    }
    // Structure (names resolved, no cycle, every node needed), then shapes on the example.
    try {
      out.graph.validate();
    } catch (const Error& e) {
      bad(without_source(e.what()));
    }
    check_shapes(out, recorded);
    if (j.contains("test")) read_test(j.at("test"), out);
    load_weights(out, ops);
    return out;
  }

 private:
  template <typename... A>
  [[noreturn]] void bad(A&&... a) const {
    fail<FormatError>(src_, ": ", std::forward<A>(a)...);
  }

  nlohmann::json parse(const std::string& text) const {
    // The nesting is bounded by a scan before the parse: nlohmann's parser with a callback
    // (the other way to bound it) searches its parent array after every object, which makes
    // a list of n nodes cost n^2.
    int depth = 0;
    bool in_string = false, escaped = false;
    for (const char c : text) {
      if (in_string) {
        if (escaped) escaped = false;
        else if (c == '\\') escaped = true;
        else if (c == '"') in_string = false;
      } else if (c == '"') {
        in_string = true;
      } else if (c == '{' || c == '[') {
        if (++depth > kGraphMaxDepth) bad("graph: JSON nested deeper than ", kGraphMaxDepth, " levels");
      } else if (c == '}' || c == ']') {
        --depth;  // unbalanced brackets: the parser below says so
      }
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      bad("graph (metadata '", kGraphMetadataKey, "') is not valid JSON: ", e.what());
    }
    if (!j.is_object()) bad("graph must be a JSON object, got ", json_brief(j));
    return j;
  }

  void check_keys(const nlohmann::json& j, const std::string& ctx, std::initializer_list<const char*> required,
                  std::initializer_list<const char*> optional) const {
    if (!j.is_object()) bad(ctx, " must be an object, got ", json_brief(j));
    for (const char* k : required)
      if (!j.contains(k)) bad(ctx, ": missing key '", k, "'");
    for (auto it = j.begin(); it != j.end(); ++it) {
      bool known = false;
      for (const char* k : required) known = known || it.key() == k;
      for (const char* k : optional) known = known || it.key() == k;
      if (!known) {
        std::string all;
        for (const char* k : required) all += (all.empty() ? "" : ", ") + std::string(k);
        for (const char* k : optional) all += (all.empty() ? "" : ", ") + std::string(k);
        bad(ctx, ": unknown key '", it.key(), "' (version 1 knows: ", all, ")");
      }
    }
  }
  std::string get_string(const nlohmann::json& j, const char* key, const std::string& ctx) const {
    const nlohmann::json& v = j.at(key);
    if (!v.is_string()) bad(ctx, ": ", key, " must be a string, got ", json_brief(v));
    return v.get<std::string>();
  }
  std::string get_name(const nlohmann::json& j, const std::string& ctx) const {
    const std::string n = get_string(j, "name", ctx);
    if (n.empty()) bad(ctx, ": empty name");
    if (n.size() > kGraphMaxName) bad(ctx, ": name of ", n.size(), " bytes (at most ", kGraphMaxName, ")");
    if (n.rfind("dynconv.", 0) == 0) bad(ctx, ": name '", n, "' starts with 'dynconv.', which is reserved");
    return n;
  }
  const nlohmann::json& get_array(const nlohmann::json& j, const char* key, const std::string& ctx, std::size_t lo,
                                  std::size_t hi) const {
    const nlohmann::json& v = j.at(key);
    if (!v.is_array()) bad(ctx, ": ", key, " must be an array, got ", json_brief(v));
    if (v.size() < lo || v.size() > hi) bad(ctx, ": ", key, " has ", v.size(), " entries (", lo, " to ", hi, " allowed)");
    return v;
  }
  std::vector<Index> get_shape(const nlohmann::json& j, const std::string& ctx) const {
    const nlohmann::json& v = get_array(j, "shape", ctx, 1, 8);
    std::vector<Index> s;
    for (const nlohmann::json& d : v) {
      if (!d.is_number_unsigned() || d.get<std::uint64_t>() < 1 || d.get<std::uint64_t>() > std::uint64_t(kMaxDimension))
        bad(ctx, ": shape ", json_brief(v), " must hold integers from 1 to ", kMaxDimension);
      s.push_back(static_cast<Index>(d.get<std::uint64_t>()));
    }
    return s;
  }
  void declare(const std::string& name, const char* what) {
    if (!names_.insert(name).second) bad(what, " '", name, "': the name is taken");
  }

  // ---- attributes -----------------------------------------------------------------------
  struct Attrs {
    const GraphFileReader& r;
    const nlohmann::json& j;
    const std::string& ctx;
    std::set<std::string> used;

    const nlohmann::json& at(const char* key) {
      if (!j.contains(key)) r.bad(ctx, ": attrs lacks '", key, "'");
      used.insert(key);
      return j.at(key);
    }
    bool has(const char* key) const { return j.contains(key); }
    Index integer(const char* key, Index lo) {
      const nlohmann::json& v = at(key);
      if (!v.is_number_integer() || v.get<std::int64_t>() < lo || v.get<std::int64_t>() > kMaxDimension)
        r.bad(ctx, ": attrs.", key, '=', json_brief(v), " must be an integer from ", lo, " to ", kMaxDimension);
      return static_cast<Index>(v.get<std::int64_t>());
    }
    bool boolean(const char* key) {
      const nlohmann::json& v = at(key);
      if (!v.is_boolean()) r.bad(ctx, ": attrs.", key, '=', json_brief(v), " must be true or false");
      return v.get<bool>();
    }
    double number(const char* key) {
      const nlohmann::json& v = at(key);
      if (!v.is_number() || !std::isfinite(v.get<double>()))
        r.bad(ctx, ": attrs.", key, '=', json_brief(v), " must be a finite number");
      return v.get<double>();
    }
    std::string string(const char* key) {
      const nlohmann::json& v = at(key);
      if (!v.is_string()) r.bad(ctx, ": attrs.", key, '=', json_brief(v), " must be a string");
      return v.get<std::string>();
    }
    std::vector<Index> list(const char* key, std::size_t size, Index lo) {
      const nlohmann::json& v = at(key);
      bool ok = v.is_array() && v.size() == size;
      std::vector<Index> out;
      if (ok)
        for (const nlohmann::json& e : v) {
          ok = ok && e.is_number_integer() && e.get<std::int64_t>() >= lo && e.get<std::int64_t>() <= kMaxDimension;
          if (ok) out.push_back(static_cast<Index>(e.get<std::int64_t>()));
        }
      if (!ok) r.bad(ctx, ": attrs.", key, '=', json_brief(v), " must be ", size, " integers from ", lo, " to ", kMaxDimension);
      return out;
    }
    Pair pair(const char* key, Index lo) {
      const std::vector<Index> v = list(key, 2, lo);
      return {v[0], v[1]};
    }
    /// Every attribute read (an unknown one is an error: a newer writer may rely on it).
    void finish() const {
      for (auto it = j.begin(); it != j.end(); ++it)
        if (!used.count(it.key()) && it.key() != "source")
          r.bad(ctx, ": unknown attribute '", it.key(), "'");
    }
  };

  /// The tensor `name` must exist with `shape` before a module of that size is built.
  void expect_tensor(const std::string& ctx, const std::string& name, const std::vector<Index>& shape) const {
    if (!file_.contains(name)) bad(ctx, ": the file has no tensor '", name, "' ", shape_str(shape));
    if (file_.entry(name).shape != shape)
      bad(ctx, ": tensor '", name, "' has shape ", shape_str(file_.entry(name).shape), ", the attributes give ",
          shape_str(shape));
  }

  template <typename Options>
  void conv_geometry(Attrs& a, Options& o) {
    const Pair s = a.pair("stride", 1), d = a.pair("dilation", 1);
    const std::vector<Index> p = a.list("padding", 4, 0);
    o.stride(s[0], s[1]).dilation(d[0], d[1]).padding(p[0], p[1], p[2], p[3]).groups(a.integer("groups", 1)).bias(a.boolean("bias"));
  }

  void arity(const std::string& ctx, std::size_t got, std::size_t lo, std::size_t hi) const {
    if (got < lo || got > hi)
      bad(ctx, ": takes ", lo == hi ? concat(lo) : concat(lo, " to ", hi), lo == 1 && hi == 1 ? " input" : " inputs", ", got ", got);
  }

  std::unique_ptr<Module<T>> build(const std::string& op, const std::string& name, const nlohmann::json& json,
                                   std::size_t inputs, const std::string& ctx) {
    Attrs a{*this, json, ctx, {}};
    std::unique_ptr<Module<T>> m;
    try {
      m = build_module(op, name, a, inputs, ctx);
    } catch (const FormatError&) {
      throw;
    } catch (const Error& e) {
      bad(ctx, ": ", e.what());
    }
    a.finish();
    return m;
  }

  std::unique_ptr<Module<T>> build_module(const std::string& op, const std::string& name, Attrs& a, std::size_t inputs,
                                          const std::string& ctx) {
    static const std::map<std::string, Activation> activations = {
        {"relu", Activation::ReLU},       {"relu6", Activation::ReLU6}, {"hardswish", Activation::HardSwish},
        {"hardsigmoid", Activation::HardSigmoid}, {"sigmoid", Activation::Sigmoid}, {"silu", Activation::SiLU},
        {"tanh", Activation::Tanh},       {"gelu", Activation::GELU}};
    const auto act = activations.find(op);
    if (act != activations.end()) {
      arity(ctx, inputs, 1, 1);
      return std::make_unique<ActivationLayer<T>>(act->second, name);
    }
    if (op == "conv2d") {
      arity(ctx, inputs, 1, 1);
      const Index cin = a.integer("in_channels", 1), cout = a.integer("out_channels", 1);
      const Pair k = a.pair("kernel_size", 1);
      Conv2dOptions o(cin, cout, k);
      conv_geometry(a, o);
      o.name(name);
      if (cin % o.groups() || cout % o.groups())
        bad(ctx, ": groups=", o.groups(), " must divide in_channels=", cin, " and out_channels=", cout);
      expect_tensor(ctx, name + ".weight", {cout, cin / o.groups(), k[0], k[1]});
      return std::make_unique<Conv2d<T>>(o);
    }
    if (op == "dynamic_conv2d") {
      const Index cin = a.integer("in_channels", 1), cout = a.integer("out_channels", 1);
      const Pair k = a.pair("kernel_size", 1);
      const std::string kind = a.string("attention");
      const Index kernels = a.integer("kernels", 1);
      DynamicConv2dOptions o(cin, cout, k);
      if (kind == "dy") {
        o.kernels(kernels).hidden_channels(a.integer("hidden", 1));
      } else if (kind == "condconv") {
        o = DynamicConv2dOptions::condconv(cin, cout, k, kernels);
        if (a.has("shared_routing")) o.shared_routing(a.boolean("shared_routing"));
      } else if (kind == "odconv") {
        o = DynamicConv2dOptions::odconv(cin, cout, k, kernels);
        o.hidden_channels(a.integer("hidden", 1));
      } else {
        bad(ctx, ": attrs.attention='", kind, "' is not one of dy, condconv, odconv");
      }
      conv_geometry(a, o);
      o.name(name);
      arity(ctx, inputs, o.shared_routing() ? 2 : 1, o.shared_routing() ? 2 : 1);
      if (cin % o.groups() || cout % o.groups())
        bad(ctx, ": groups=", o.groups(), " must divide in_channels=", cin, " and out_channels=", cout);
      const Index per = cout * (cin / o.groups()) * k[0] * k[1];
      // Every tensor whose size is a product of attributes, so that the module built below is
      // no larger than the tensors the file holds; and the temperature, which the format
      // always stores (the module would take 1 for a missing one).
      if (kind == "condconv") {
        expect_tensor(ctx, name + ".weight", {kernels, per});
        if (!o.shared_routing()) {
          expect_tensor(ctx, name + ".routing_fn.weight", {kernels, cin});
          expect_tensor(ctx, name + ".routing_fn.temperature", {});
        }
      } else {
        expect_tensor(ctx, name + ".weight", {kernels, cout, cin / o.groups(), k[0], k[1]});
        const Index hidden = o.hidden_channels();
        if (kind == "dy") {
          expect_tensor(ctx, name + ".attention.fc1.weight", {hidden, cin});
          expect_tensor(ctx, name + ".attention.fc2.weight", {kernels, hidden});
        } else {
          const OmniAttentionOptions heads = o.omni_attention_options();
          expect_tensor(ctx, name + ".attention.fc.weight", {hidden, cin, 1, 1});
          expect_tensor(ctx, name + ".attention.channel_fc.weight", {cin, hidden, 1, 1});
          if (heads.has_filter()) expect_tensor(ctx, name + ".attention.filter_fc.weight", {cout, hidden, 1, 1});
          if (heads.has_spatial()) expect_tensor(ctx, name + ".attention.spatial_fc.weight", {k[0] * k[1], hidden, 1, 1});
          if (heads.has_kernel()) expect_tensor(ctx, name + ".attention.kernel_fc.weight", {kernels, hidden, 1, 1});
        }
        expect_tensor(ctx, name + ".attention.temperature", {});
      }
      return std::make_unique<DynamicConv2d<T>>(o);
    }
    if (op == "condconv_routing") {
      arity(ctx, inputs, 1, 1);
      const Index cin = a.integer("in_channels", 1), e = a.integer("experts", 1);
      expect_tensor(ctx, name + ".weight", {e, cin});
      expect_tensor(ctx, name + ".temperature", {});
      return std::make_unique<CondConvRouting<T>>(CondConvRoutingOptions(cin, e).name(name));
    }
    if (op == "batch_norm") {
      arity(ctx, inputs, 1, 1);
      const Index c = a.integer("num_features", 1);
      const double eps = a.number("eps");
      expect_tensor(ctx, name + ".weight", {c});
      return std::make_unique<BatchNorm2d<T>>(BatchNorm2dOptions(c).eps(eps).name(name));
    }
    if (op == "linear") {
      arity(ctx, inputs, 1, 1);
      const Index in = a.integer("in_features", 1), out = a.integer("out_features", 1);
      const bool bias = a.boolean("bias");
      expect_tensor(ctx, name + ".weight", {out, in});
      return std::make_unique<Linear<T>>(LinearOptions(in, out).bias(bias).name(name));
    }
    if (op == "add" || op == "sub" || op == "mul") {
      arity(ctx, inputs, 2, 2);
      if (op == "add") return std::make_unique<Add<T>>(name);
      if (op == "sub") return std::make_unique<Sub<T>>(name);
      return std::make_unique<Mul<T>>(name);
    }
    if (op == "cat") return std::make_unique<Concat<T>>(name);
    if (op == "flatten" || op == "identity" || op == "softmax" || op == "log_softmax") {
      arity(ctx, inputs, 1, 1);
      if (op == "flatten") return std::make_unique<Flatten<T>>(name);
      if (op == "identity") return std::make_unique<Identity<T>>(name);
      if (op == "softmax") return std::make_unique<Softmax<T>>(name);
      return std::make_unique<LogSoftmax<T>>(name);
    }
    if (op == "max_pool2d" || op == "avg_pool2d") {
      arity(ctx, inputs, 1, 1);
      const Pair k = a.pair("kernel_size", 1), s = a.pair("stride", 1), p = a.pair("padding", 0);
      Pool2dOptions o(k);
      o.stride(s[0], s[1]).padding(p[0], p[1]).ceil_mode(a.boolean("ceil_mode")).name(name);
      if (op == "max_pool2d") {
        const Pair d = a.pair("dilation", 1);
        o.dilation(d[0], d[1]);
        return std::make_unique<MaxPool2d<T>>(o);
      }
      o.count_include_pad(a.boolean("count_include_pad"));
      return std::make_unique<AvgPool2d<T>>(o);
    }
    if (op == "adaptive_avg_pool2d") {
      arity(ctx, inputs, 1, 1);
      const Pair s = a.pair("output_size", 1);
      return std::make_unique<AdaptiveAvgPool2d<T>>(s[0], s[1], name);
    }
    if (op == "upsample") {
      arity(ctx, inputs, 1, 1);
      UpsampleOptions o;
      const bool size = a.has("size"), scale = a.has("scale_factor");
      if (size == scale) bad(ctx, ": attrs must hold exactly one of size and scale_factor");
      if (size) {
        const Pair s = a.pair("size", 1);
        o.size(s[0], s[1]);
      } else {
        const nlohmann::json& f = a.at("scale_factor");
        if (!f.is_array() || f.size() != 2 || !f[0].is_number() || !f[1].is_number())
          bad(ctx, ": attrs.scale_factor=", json_brief(f), " must be two numbers");
        o.scale_factor(f[0].get<double>(), f[1].get<double>());
      }
      const std::string mode = a.string("mode");
      if (mode == "nearest") {
        o.mode(UpsampleMode::Nearest);
      } else if (mode == "bilinear") {
        o.mode(UpsampleMode::Bilinear);
      } else {
        bad(ctx, ": attrs.mode='", mode, "' is not one of nearest, bilinear");
      }
      if (a.has("align_corners")) o.align_corners(a.boolean("align_corners"));
      o.name(name);
      return std::make_unique<Upsample<T>>(o);
    }
    bad(ctx, ": unknown op '", op,
        "' (version 1 has: conv2d, dynamic_conv2d, condconv_routing, batch_norm, linear, relu, relu6, hardswish, "
        "hardsigmoid, sigmoid, silu, tanh, gelu, add, sub, mul, cat, flatten, identity, max_pool2d, avg_pool2d, "
        "adaptive_avg_pool2d, softmax, log_softmax, upsample)");
  }

  static NhwcShape nhwc(const std::vector<Index>& s) {
    return s.size() == 2 ? NhwcShape{s[0], 1, 1, s[1]} : NhwcShape{s[0], s[2], s[3], s[1]};
  }

  void check_shapes(const GraphFile<T>& out, const std::vector<std::vector<Index>>& recorded) const {
    std::vector<NhwcShape> in;
    for (const GraphFileValue& v : out.inputs) in.push_back(nhwc(v.shape));
    GraphPlan p;
    try {
      p = out.graph.plan(in);
    } catch (const Error& e) {
      bad("on the example input the graph does not fit together: ", without_source(e.what()));
    }
    const std::vector<std::string> names = out.graph.node_names();
    for (std::size_t i = 0; i < names.size(); ++i) {
      const NhwcShape& got = p.shapes[out.inputs.size() + i];
      if (got != nhwc(recorded[i]))
        bad("node '", names[i], "' (", out.graph.module(names[i]).description(), "): PyTorch recorded shape ",
            shape_str(recorded[i]), " on the example input, dynconv computes ", got.str());
    }
  }

  void read_test(const nlohmann::json& t, GraphFile<T>& out) const {
    check_keys(t, "test", {"inputs", "outputs"}, {});
    const auto read = [&](const char* key, const std::vector<GraphFileValue>& values,
                          std::vector<std::pair<std::string, std::string>>& dst) {
      const nlohmann::json& m = t.at(key);
      if (!m.is_object()) bad("test.", key, " must be an object, got ", json_brief(m));
      for (const GraphFileValue& v : values) {
        if (!m.contains(v.name)) bad("test.", key, " lacks '", v.name, "'");
        const nlohmann::json& name = m.at(v.name);
        if (!name.is_string()) bad("test.", key, ".", v.name, " must be a tensor name, got ", json_brief(name));
        const std::string tensor = name.get<std::string>();
        if (!file_.contains(tensor)) bad("test.", key, ".", v.name, ": the file has no tensor '", tensor, "'");
        const std::vector<Index>& shape = file_.entry(tensor).shape;
        if (shape.size() != v.shape.size() || std::vector<Index>(shape.begin() + 1, shape.end()) !=
                                                    std::vector<Index>(v.shape.begin() + 1, v.shape.end()))
          bad("test.", key, ".", v.name, ": tensor '", tensor, "' has shape ", shape_str(shape), ", which does not match ",
              shape_str(v.shape), " but in N");
        dst.push_back({v.name, tensor});
      }
      if (m.size() != values.size()) bad("test.", key, " names a value the graph does not have");
    };
    read("inputs", out.inputs, out.test_inputs);
    read("outputs", out.outputs, out.test_outputs);
    const Index n = file_.entry(out.test_inputs[0].second).shape[0];
    if (n < 1) bad("test: input '", out.test_inputs[0].first, "' has no samples (N=", n, ")");
    for (const auto& v : out.test_inputs)
      if (file_.entry(v.second).shape[0] != n) bad("test: the inputs differ in their batch size");
    for (const auto& v : out.test_outputs)
      if (file_.entry(v.second).shape[0] != n) bad("test: output '", v.first, "' has another batch size than the inputs");
  }

  /// Loads every node's parameters (strict), the test vectors (finite), then folds the
  /// BatchNorms. A missing, mis-shaped or non-finite tensor, a value the module refuses (a
  /// temperature <= 0, a negative running_var): a FormatError naming the node.
  void load_weights(GraphFile<T>& out, const std::vector<std::string>& ops) const {
    WeightLoader w(file_);
    const std::vector<std::string> names = out.graph.node_names();
    for (std::size_t i = 0; i < names.size(); ++i) {
      try {
        out.graph.module(names[i]).load(w, names[i]);
      } catch (const Error& e) {
        bad("node '", names[i], "' (", ops[i], "): ", without_source(e.what()));
      }
    }
    for (const auto* list : {&out.test_inputs, &out.test_outputs})
      for (const auto& v : *list) {
        try {
          (void)w.take_flat<T>(v.second, file_.entry(v.second).shape);
        } catch (const Error& e) {
          bad("test '", v.first, "': ", without_source(e.what()));
        }
      }
    w.finish();  // passes over the file's own "dynconv." tensors: the test vectors, or strays
    std::set<std::string> tests;
    for (const auto* list : {&out.test_inputs, &out.test_outputs})
      for (const auto& v : *list) tests.insert(v.second);
    for (const std::string& t : file_.names())
      if (t.rfind("dynconv.", 0) == 0 && !tests.count(t))
        bad("tensor '", t, "' is read by no node and is not a test vector of the graph's 'test'");
    out.graph.fold_batchnorms(src_);
  }

  /// A message of the WeightLoader or the Graph (named after the file) without its leading
  /// "<file>: " or "graph '<file>': ", which bad() puts first anyway.
  std::string without_source(const std::string& what) const {
    for (const std::string& prefix : {src_ + ": ", "graph '" + src_ + "': "})
      if (what.compare(0, prefix.size(), prefix) == 0) return what.substr(prefix.size());
    return what;
  }

  const SafeTensors& file_;
  std::string src_;
  std::set<std::string> names_;
};

}  // namespace detail

/// Reads the graph of `file` (docs/graph_format.md): builds it, loads its weights (strict) and
/// folds its BatchNorms. FormatError naming the file, the node and the rule for anything the
/// format does not allow or that does not fit.
template <typename T>
GraphFile<T> load_graph(const SafeTensors& file) {
  return detail::GraphFileReader<T>(file).read();
}

/// A test vector of a graph file as an NCHW tensor ([N, C] is [N, C, 1, 1]).
template <typename T>
Tensor4<T> graph_file_tensor(const SafeTensors& file, const std::string& name) {
  const std::vector<Index>& s = file.entry(name).shape;
  if (s.size() != 2 && s.size() != 4) fail<FormatError>(file.source(), ": tensor '", name, "' ", shape_str(s), " is not [N, C] or [N, C, H, W]");
  const std::vector<T> v = file.get_flat<T>(name);
  Tensor4<T> t(s[0], s[1], s.size() == 4 ? s[2] : 1, s.size() == 4 ? s[3] : 1);
  std::copy(v.begin(), v.end(), t.data());
  return t;
}

/// The format's test-vector error: max |y - ref| / max(1, max |ref|) (docs/graph_format.md;
/// --verify passes at <= 1e-4); infinity when the sizes differ.
template <typename T>
double graph_test_error(const Tensor4<T>& y, const Tensor4<double>& ref) {
  if (y.size() != ref.size()) return std::numeric_limits<double>::infinity();
  double diff = 0, scale = 1;
  for (Index i = 0; i < ref.size(); ++i) {
    const double e = std::abs(static_cast<double>(y.data()[i]) - ref.data()[i]);
    if (!(e <= diff)) diff = e;
    scale = std::max(scale, std::abs(ref.data()[i]));
  }
  return diff / scale;
}

}  // namespace dynconv
