// libFuzzer target: arbitrary bytes as a graph file (docs/graph_format.md): SafeTensors::parse,
// has_graph, load_graph<float>, then one Session pass when the graph is small.
//
// A rejected file must fail with a dynconv::FormatError whose message starts with the file's
// name ("fuzz.safetensors: "): the format makes every failure a FormatError naming the file (and
// the node and the rule, which cannot be checked here in general). Anything else is a finding:
// another exception (another dynconv::Error too), a crash, a sanitizer report, a timeout, an
// allocation over libFuzzer's -malloc_limit_mb / -rss_limit_mb (the reader must check the
// weights against the attributes before it builds a module of that size). Besides:
//   - a file without the metadata key: has_graph() is false and load_graph() refuses it;
//   - a graph that loaded: its inputs are [N, C, H, W], its outputs of rank 2 or 4, and it
//     plans at batch 1 with the recorded input sizes. When that plan is small (at most
//     kMaxValues activation values and kMaxMadds multiply-adds), one Session pass (1 thread)
//     on an input of values in [-1, 1] runs without an exception, every output has its
//     recorded shape at batch 1, and every output is finite whenever magnitude_bound() below
//     (an a-priori bound on every value the pass computes, from the file's values) stays
//     under 1e30: a NaN or infinity there would be the library's bug, not the weights'.
// A broken promise prints what broke and aborts (a crash for libFuzzer and for replay_main).
//
// With libFuzzer (DYNCONV_LIBFUZZER, set by CMakeLists.txt for the -DDYNCONV_FUZZ=ON build)
// the target also defines LLVMFuzzerCustomMutator: byte mutations of a whole file almost always
// break the safetensors header's length or the JSON string's escaping, so most mutations edit
// the parts of a parsed file instead (the graph's JSON as text or as a tree: nodes, inputs,
// attributes; a tensor's name, shape or values) and write the file back with
// SafeTensorsWriter; the rest mutate the raw bytes. replay_main.cpp needs none of it.
#include <dynconv/graph_file.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/session.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <vector>

namespace {

using dynconv::Index;
using dynconv::NhwcShape;
using dynconv::SafeTensors;

/// Work limits of the pass at batch 1 (a few milliseconds under AddressSanitizer).
constexpr double kMaxValues = 2e5;
constexpr double kMaxMadds = 2e6;
/// Outputs must be finite when every value of the pass is bounded by 10^kFiniteLog10.
constexpr double kFiniteLog10 = 30;

const char* const kSource = "fuzz.safetensors";

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_graph_load: FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

/// A FormatError of load_graph or parse is expected; it must name the file.
void check_rejection(const dynconv::FormatError& e) {
  const std::string what = e.what();
  const std::string prefix = std::string(kSource) + ": ";
  if (what.compare(0, prefix.size(), prefix) != 0) finding("a FormatError that does not start with the file name: " + what);
  if (what.find('\n') != std::string::npos) finding("a FormatError of more than one line: " + what);
}

// ---- magnitude_bound: log10 of a bound on every value a pass computes ----------------------
// Inputs are in [-1, 1]. With S = 1 + sum of |v| over every value of the file (so every
// parameter tensor's L1 norm is <= S), tau the smallest temperature and eps a BatchNorm's:
//   conv2d, linear                   |y| <= S |x| + S
//   dynamic_conv2d                   the mixed kernel's L1 norm <= S times the routing's (<= 1
//                                    for its own attention, the routing input's for a shared
//                                    one); inside the attention the logits are below
//                                    S^3 (1 + |x|) 10^3 / tau (10^3 covers ODConv's BatchNorm)
//   condconv_routing                 sigmoid: <= 1; logits <= S (|x| + 1) / tau
//   batch_norm                       |y| <= S / sqrt(eps) (|x| + S) + S, and folding it into a
//                                    convolution multiplies weights by S / sqrt(eps)
//   add, sub / mul                   |a| + |b| / |a| |b|
//   softmax / log_softmax            1 / 2 |x| + ln(C), ln(C) <= 22
//   activations                      max(|x|, 6)
//   cat, flatten, identity, pools, upsample: max |x|
// Every bound is taken >= 1 (log >= 0). Returns +inf when the file has no usable bound.
double magnitude_bound(const SafeTensors& file, const nlohmann::json& graph) {
  double s = 1, tau = 1;
  for (const std::string& name : file.names()) {
    const std::vector<double> v = file.get_flat<double>(name);
    const bool temperature = name.size() >= 11 && name.compare(name.size() - 11, 11, "temperature") == 0;
    for (double x : v) {
      s += std::fabs(x);
      if (temperature) tau = std::min(tau, std::fabs(x));
    }
  }
  if (!std::isfinite(s) || !(tau > 0)) return HUGE_VAL;
  const double p = std::log10(s), t = -std::log10(tau);
  std::map<std::string, double> bound;  // log10 of each value's bound
  for (const nlohmann::json& in : graph.at("inputs")) bound[in.at("name").get<std::string>()] = 0;
  const nlohmann::json& nodes = graph.at("nodes");
  double worst = 0;
  std::vector<char> done(nodes.size(), 0);
  for (std::size_t left = nodes.size(), pass = 0; left > 0 && pass <= nodes.size(); ++pass) {
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      if (done[i]) continue;
      const nlohmann::json& n = nodes[i];
      double max_in = 0, sum_in = 0;
      bool ready = true;
      for (const nlohmann::json& v : n.at("inputs")) {
        const auto it = bound.find(v.get<std::string>());
        if (it == bound.end()) {
          ready = false;
          break;
        }
        max_in = std::max(max_in, it->second);
        sum_in += it->second;
      }
      if (!ready) continue;
      const std::string op = n.at("op").get<std::string>();
      double b = max_in, inner = 0;
      if (op == "conv2d" || op == "linear") {
        b = p + max_in + 0.31;
      } else if (op == "dynamic_conv2d") {
        b = p + sum_in + 0.31;
        inner = 3 * p + max_in + t + 3.31;
      } else if (op == "condconv_routing") {
        b = 0;
        inner = p + max_in + t + 0.31;
      } else if (op == "batch_norm") {
        const double eps = n.at("attrs").at("eps").get<double>();
        if (!(eps > 0)) return HUGE_VAL;
        const double e = std::max(0.0, -0.5 * std::log10(eps));
        b = p + e + std::max(max_in, p) + 0.61;
        inner = 2 * p + e + 0.31;
      } else if (op == "add" || op == "sub") {
        b = max_in + 0.31;
      } else if (op == "mul") {
        b = sum_in;
      } else if (op == "softmax") {
        b = 0;
      } else if (op == "log_softmax") {
        b = max_in + 1.7;
      } else if (op == "relu" || op == "relu6" || op == "hardswish" || op == "hardsigmoid" || op == "sigmoid" ||
                 op == "silu" || op == "tanh" || op == "gelu") {
        b = std::max(max_in, 0.78);
      }
      bound[n.at("name").get<std::string>()] = b;
      worst = std::max({worst, b, inner});
      done[i] = 1;
      --left;
    }
  }
  for (char d : done)
    if (!d) finding("a graph that loaded has a node whose inputs never resolve");
  return worst;
}

// ---- one pass --------------------------------------------------------------------------------

NhwcShape batch1(const std::vector<Index>& s) { return NhwcShape{1, s[2], s[3], s[1]}; }

dynconv::Tensor4<float> input_for(const std::vector<Index>& s, float phase) {
  dynconv::Tensor4<float> x(1, s[1], s[2], s[3]);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.37f * static_cast<float>(i) + phase);
  return x;
}

void run_once(const dynconv::GraphFile<float>& g, const SafeTensors& file) {
  for (const dynconv::GraphFileValue& v : g.inputs)
    if (v.shape.size() != 4) finding("input '" + v.name + "' of shape " + dynconv::shape_str(v.shape) + " accepted");
  if (g.outputs.empty()) finding("a graph without outputs accepted");
  for (const dynconv::GraphFileValue& v : g.outputs)
    if (v.shape.size() != 2 && v.shape.size() != 4)
      finding("output '" + v.name + "' of shape " + dynconv::shape_str(v.shape) + " accepted");
  if (g.inputs.size() > 3) return;  // Session::run takes the inputs as an initializer list

  std::vector<NhwcShape> in;
  for (const dynconv::GraphFileValue& v : g.inputs) in.push_back(batch1(v.shape));
  double values = 0, madds = 0;
  try {
    const dynconv::GraphPlan plan = g.graph.plan(in);
    for (const NhwcShape& s : plan.shapes)
      values += static_cast<double>(s.n) * static_cast<double>(s.h) * static_cast<double>(s.w) * static_cast<double>(s.c);
    for (const dynconv::NamedCost& c : g.graph.cost(in)) madds += static_cast<double>(c.cost.madds());
  } catch (const dynconv::Error& e) {
    finding(std::string("a graph that loaded does not plan at batch 1: ") + e.what());
  }
  if (values > kMaxValues || madds > kMaxMadds) return;

  std::vector<dynconv::Tensor4<float>> xs;
  for (std::size_t i = 0; i < g.inputs.size(); ++i) xs.push_back(input_for(g.inputs[i].shape, static_cast<float>(i)));
  dynconv::Session<float> s(g.graph, 1);
  try {
    const auto name = [&](std::size_t i) { return g.inputs[i].name.c_str(); };
    if (xs.size() == 1) s.run(xs[0]);
    if (xs.size() == 2) s.run({{name(0), &xs[0]}, {name(1), &xs[1]}});
    if (xs.size() == 3) s.run({{name(0), &xs[0]}, {name(1), &xs[1]}, {name(2), &xs[2]}});
  } catch (const dynconv::Error& e) {
    finding(std::string("a graph that loaded fails its pass at batch 1: ") + e.what());
  }
  const double bound = magnitude_bound(file, nlohmann::json::parse(file.metadata().at(dynconv::kGraphMetadataKey)));
  for (const dynconv::GraphFileValue& v : g.outputs) {
    const dynconv::Tensor4<float>& y = s.output(v.name);
    const bool flat = v.shape.size() == 2;
    if (y.dimension(0) != 1 || y.dimension(1) != v.shape[1] || y.dimension(2) != (flat ? 1 : v.shape[2]) ||
        y.dimension(3) != (flat ? 1 : v.shape[3]))
      finding("output '" + v.name + "' recorded as " + dynconv::shape_str(v.shape) + " is " +
              dynconv::shape_str(std::vector<Index>(y.dimensions().begin(), y.dimensions().end())) + " at batch 1");
    if (bound >= kFiniteLog10) continue;
    for (Index i = 0; i < y.size(); ++i)
      if (!std::isfinite(y.data()[i]))
        finding(dynconv::concat("output '", v.name, "' holds ", y.data()[i], " at element ", i,
                                " although every value is bounded by 1e", bound));
  }
}

void check(const std::uint8_t* data, std::size_t size) {
  const SafeTensors file = SafeTensors::parse(std::vector<std::uint8_t>(data, data + size), kSource);
  if (!dynconv::has_graph(file)) {
    try {
      (void)dynconv::load_graph<float>(file);
    } catch (const dynconv::FormatError& e) {
      check_rejection(e);
      return;
    }
    finding("load_graph accepted a file without the metadata key");
  }
  dynconv::GraphFile<float> g;
  try {
    g = dynconv::load_graph<float>(file);
  } catch (const dynconv::FormatError& e) {
    check_rejection(e);
    return;
  }
  run_once(g, file);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    check(data, size);
  } catch (const dynconv::FormatError& e) {
    check_rejection(e);  // SafeTensors::parse, or a tensor the bound reads
  } catch (const dynconv::Error& e) {
    finding(std::string("a dynconv::Error that is not a FormatError: ") + e.what());
  } catch (const std::exception& e) {
    finding(std::string("exception not derived from dynconv::Error: ") + e.what());
  } catch (...) {
    finding("exception not derived from std::exception");
  }
  return 0;
}

#ifdef DYNCONV_LIBFUZZER
// ---- the structure-aware mutator (libFuzzer only) --------------------------------------------

extern "C" std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size, std::size_t max_size);

namespace {

struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  std::size_t below(std::size_t n) { return n ? static_cast<std::size_t>(next() % n) : 0; }
  bool one_in(std::size_t n) { return below(n) == 0; }
};

/// libFuzzer's byte mutations of a string (with the dictionary), growing it by up to 64 bytes.
std::string mutate_text(const std::string& s) {
  std::vector<std::uint8_t> buf(s.begin(), s.end());
  buf.resize(s.size() + 64);
  const std::size_t n = LLVMFuzzerMutate(buf.data(), s.size(), buf.size());
  return std::string(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
}

const char* const kOps[] = {"conv2d", "dynamic_conv2d", "condconv_routing", "batch_norm", "linear", "relu",
                            "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "tanh", "gelu", "add", "sub",
                            "mul", "cat", "flatten", "identity", "max_pool2d", "avg_pool2d",
                            "adaptive_avg_pool2d", "softmax", "log_softmax", "upsample", "mish"};

nlohmann::json special_number(Rng& r) {
  switch (r.below(12)) {
    case 0: return 0;
    case 1: return -1;
    case 2: return 2147483647;
    case 3: return 2147483648LL;
    case 4: return 4294967296LL;
    case 5: return 1e-300;
    case 6: return -0.0;
    case 7: return 1e300;
    case 8: return 0.5;
    case 9: return std::uint64_t(18446744073709551615ULL);
    case 10: return 1 + static_cast<int>(r.below(64));
    default: return 1 + static_cast<int>(r.below(4));
  }
}

/// Every JSON number, string or container below j (for picking one).
void collect(nlohmann::json& j, std::vector<nlohmann::json*>& out) {
  out.push_back(&j);
  if (j.is_structured())
    for (nlohmann::json& c : j) collect(c, out);
}

/// One edit of the graph as a tree; false if it does not apply.
bool mutate_tree(nlohmann::json& g, Rng& r) {
  if (!g.is_object() || !g.contains("nodes") || !g["nodes"].is_array() || g["nodes"].empty()) return false;
  nlohmann::json& nodes = g["nodes"];
  nlohmann::json& n = nodes[r.below(nodes.size())];
  if (!n.is_object()) return false;
  switch (r.below(9)) {
    case 0: {  // another op
      n["op"] = kOps[r.below(sizeof(kOps) / sizeof(kOps[0]))];
      return true;
    }
    case 1: {  // an input read from another value (a node or a graph input), or one more input
      std::vector<std::string> names;
      for (const nlohmann::json& m : nodes)
        if (m.is_object() && m.contains("name") && m["name"].is_string()) names.push_back(m["name"]);
      if (g.contains("inputs") && g["inputs"].is_array())
        for (const nlohmann::json& m : g["inputs"])
          if (m.is_object() && m.contains("name") && m["name"].is_string()) names.push_back(m["name"]);
      if (names.empty() || !n.contains("inputs") || !n["inputs"].is_array()) return false;
      nlohmann::json& in = n["inputs"];
      const std::string pick = names[r.below(names.size())];
      if (in.empty() || r.one_in(3))
        in.push_back(pick);
      else
        in[r.below(in.size())] = pick;
      return true;
    }
    case 2: {  // a number anywhere in the node (attrs, shape) set to an edge value
      std::vector<nlohmann::json*> all;
      collect(n, all);
      std::vector<nlohmann::json*> numbers;
      for (nlohmann::json* j : all)
        if (j->is_number() || j->is_boolean()) numbers.push_back(j);
      if (numbers.empty()) return false;
      nlohmann::json& v = *numbers[r.below(numbers.size())];
      if (v.is_boolean())
        v = !v.get<bool>();
      else
        v = special_number(r);
      return true;
    }
    case 3: {  // a node removed
      nodes.erase(nodes.begin() + static_cast<std::ptrdiff_t>(r.below(nodes.size())));
      return true;
    }
    case 4: {  // a node duplicated (same name, or renamed), anywhere
      nlohmann::json copy = n;
      if (r.one_in(2) && copy.contains("name") && copy["name"].is_string()) copy["name"] = copy["name"].get<std::string>() + "_";
      nodes.insert(nodes.begin() + static_cast<std::ptrdiff_t>(r.below(nodes.size() + 1)), copy);
      return true;
    }
    case 5: {  // an attribute removed or one copied from another node
      if (!n.contains("attrs") || !n["attrs"].is_object()) return false;
      nlohmann::json& a = n["attrs"];
      const nlohmann::json& other = nodes[r.below(nodes.size())];
      if (r.one_in(2) && !a.empty()) {
        auto it = a.begin();
        std::advance(it, static_cast<std::ptrdiff_t>(r.below(a.size())));
        a.erase(it);
      } else if (other.is_object() && other.contains("attrs") && other["attrs"].is_object() && !other["attrs"].empty()) {
        auto it = other["attrs"].begin();
        std::advance(it, static_cast<std::ptrdiff_t>(r.below(other["attrs"].size())));
        a[it.key()] = it.value();
      } else {
        return false;
      }
      return true;
    }
    case 6: {  // a graph output on another node
      if (!g.contains("outputs") || !g["outputs"].is_array() || !n.contains("name")) return false;
      nlohmann::json o = {{"name", "out" + std::to_string(r.below(4))}, {"value", n["name"]}};
      if (r.one_in(2) && !g["outputs"].empty())
        g["outputs"][r.below(g["outputs"].size())] = o;
      else
        g["outputs"].push_back(o);
      return true;
    }
    case 7: {  // two nodes swapped (order is free)
      std::swap(n, nodes[r.below(nodes.size())]);
      return true;
    }
    default: {  // the recorded shape of a node changed in one place
      if (!n.contains("shape") || !n["shape"].is_array() || n["shape"].empty()) return false;
      nlohmann::json& s = n["shape"];
      if (r.one_in(4))
        s.erase(s.begin() + static_cast<std::ptrdiff_t>(r.below(s.size())));
      else
        s[r.below(s.size())] = 1 + static_cast<int>(r.below(9));
      return true;
    }
  }
}

struct Stored {
  dynconv::DType dtype;
  std::vector<Index> shape;
  std::vector<std::uint8_t> bytes;
};

std::size_t elements(const std::vector<Index>& shape) {
  std::size_t n = 1;
  for (Index d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

/// `n` F32 values: a smooth pattern, or all `fill`.
std::vector<std::uint8_t> f32_bytes(std::size_t n, float fill, bool pattern) {
  std::vector<float> v(n, fill);
  if (pattern)
    for (std::size_t i = 0; i < n; ++i) v[i] = 0.5f * std::sin(1.7f * static_cast<float>(i) + 0.3f);
  std::vector<std::uint8_t> out(n * 4);
  if (n) std::memcpy(out.data(), v.data(), n * 4);
  return out;
}

/// One edit of the tensors; false if it does not apply.
bool mutate_tensors(std::map<std::string, Stored>& t, Rng& r, const std::vector<std::string>& node_names) {
  if (t.empty()) return false;
  auto it = t.begin();
  std::advance(it, static_cast<std::ptrdiff_t>(r.below(t.size())));
  Stored& s = it->second;
  switch (r.below(6)) {
    case 0: {  // removed
      t.erase(it);
      return true;
    }
    case 1: {  // renamed (bytes mutated, or moved under another node's name)
      Stored moved = s;
      std::string name = it->first;
      const std::size_t dot = name.find('.');
      if (!node_names.empty() && dot != std::string::npos && r.one_in(2))
        name = node_names[r.below(node_names.size())] + name.substr(dot);
      else
        name = mutate_text(name);
      t.erase(it);
      t[name] = std::move(moved);
      return true;
    }
    case 2: {  // another shape (F32 values)
      if (s.shape.empty() || r.one_in(4)) {
        s.shape.push_back(1 + static_cast<Index>(r.below(3)));
      } else if (r.one_in(3)) {
        s.shape.erase(s.shape.begin() + static_cast<std::ptrdiff_t>(r.below(s.shape.size())));
      } else {
        Index& d = s.shape[r.below(s.shape.size())];
        d = r.one_in(2) ? d + (r.one_in(2) ? 1 : -1) : static_cast<Index>(r.below(9));
        if (d < 0) d = 0;
      }
      if (elements(s.shape) > 4096) return false;
      s.dtype = dynconv::DType::F32;
      s.bytes = f32_bytes(elements(s.shape), 0, true);
      return true;
    }
    case 3: {  // every value set to one edge value (a temperature 0, a running_var -1, ...)
      static const float kValues[] = {0.f, -1.f, 1e-30f, 1e30f, 3e38f, -0.f, NAN, INFINITY, 1e-8f, 65504.f};
      s.dtype = dynconv::DType::F32;
      s.bytes = f32_bytes(elements(s.shape), kValues[r.below(sizeof(kValues) / sizeof(kValues[0]))], false);
      return true;
    }
    case 4: {  // the raw bytes mutated in place
      if (s.bytes.empty()) return false;
      const std::size_t n = LLVMFuzzerMutate(s.bytes.data(), s.bytes.size(), s.bytes.size());
      s.bytes.resize(n);
      return n == s.bytes.size();
    }
    default: {  // a copy under another name (an extra tensor)
      Stored copy = s;
      t[it->first + (r.one_in(2) ? ".weight" : "x")] = std::move(copy);
      return true;
    }
  }
}

std::size_t raw_mutation(std::uint8_t* data, std::size_t size, std::size_t max_size) {
  return LLVMFuzzerMutate(data, size, max_size);
}

}  // namespace

extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size, std::size_t max_size,
                                               unsigned int seed) {
  Rng r{0x9E3779B97F4A7C15ULL ^ seed};
  r.next();
  if (r.one_in(5)) return raw_mutation(data, size, max_size);
  try {
    const SafeTensors file = SafeTensors::parse(std::vector<std::uint8_t>(data, data + size), kSource);
    std::map<std::string, Stored> tensors;
    for (const std::string& name : file.names()) {
      const dynconv::TensorEntry& e = file.entry(name);
      tensors[name] = Stored{e.dtype, e.shape, std::vector<std::uint8_t>(file.raw_data(name), file.raw_data(name) + (e.end - e.begin))};
    }
    std::map<std::string, std::string> metadata = file.metadata();
    std::string& text = metadata[dynconv::kGraphMetadataKey];
    std::vector<std::string> node_names;
    const std::size_t what = r.below(10);
    bool changed = false;
    if (what < 4) {  // the JSON as text
      text = mutate_text(text);
      changed = true;
    } else if (what < 8) {  // the JSON as a tree
      nlohmann::json g = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (!g.is_discarded()) {
        for (int edits = 1 + static_cast<int>(r.below(2)); edits > 0; --edits) changed = mutate_tree(g, r) || changed;
        if (changed) text = g.dump();
      }
    } else {  // the tensors
      nlohmann::json g = nlohmann::json::parse(text, nullptr, false);
      if (g.is_object() && g.contains("nodes") && g["nodes"].is_array())
        for (const nlohmann::json& n : g["nodes"])
          if (n.is_object() && n.contains("name") && n["name"].is_string()) node_names.push_back(n["name"]);
      changed = mutate_tensors(tensors, r, node_names);
    }
    if (!changed) return raw_mutation(data, size, max_size);
    dynconv::SafeTensorsWriter w;
    for (const auto& [name, s] : tensors) w.add_raw(name, s.dtype, s.shape, s.bytes.data(), s.bytes.size());
    for (const auto& [key, value] : metadata) w.set_metadata(key, value);
    const std::vector<std::uint8_t> out = w.to_bytes();
    if (out.size() > max_size) return raw_mutation(data, size, max_size);
    std::memcpy(data, out.data(), out.size());
    return out.size();
  } catch (const std::exception&) {
    return raw_mutation(data, size, max_size);
  }
}
#endif  // DYNCONV_LIBFUZZER
