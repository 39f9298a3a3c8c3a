// The model zoo (issue 3) without PyTorch: counts against torchvision's published parameter
// counts, the paper's table and hand sums from the architectures; the dynamic-conv policies
// seen through the saved tensor names; loading, saving, upcycling and BatchNorm folding with
// random checkpoints; input checks. PyTorch logit parity lives in test_model_parity.cpp.
// A zoo model is a Graph whose node names are torchvision's module paths: its structure is
// checked through the graph (node types, geometries, BatchNorm nodes) and cross-checked with
// the saved tensor names.
//
// Every expected number comes from outside the code under test: torchvision's documented
// counts, paper.md's table and formulas, or the hand sums below written from the torchvision
// architectures.
#include <dynconv/models/zoo.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "parity_data.hpp"

namespace {

using dynconv::BatchNorm2d;
using dynconv::Conv2d;
using dynconv::ConvRole;
using dynconv::ConvSite;
using dynconv::DType;
using dynconv::DynamicConv2d;
using dynconv::FormatError;
using dynconv::Index;
using dynconv::LayerCost;
using dynconv::LoadMode;
using dynconv::NhwcTensor;
using dynconv::OptionsError;
using dynconv::SafeTensors;
using dynconv::SafeTensorsWriter;
using dynconv::ShapeError;
using dynconv::Tensor1;
using dynconv::Tensor2;
using dynconv::Tensor4;
using dynconv::models::Model;
using dynconv::models::ModelCost;
using dynconv::models::ModelOptions;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

using ModelPtr = std::unique_ptr<Model<float>>;

ModelPtr make(const std::string& name, const ModelOptions& options = {}) {
  return dynconv::models::create<float>(name, options);
}

/// A zoo model with default options and its initial weights, built once per test binary
/// (building dy_resnet18 takes a while); never loaded into.
const Model<float>& zoo(const std::string& name) {
  static std::map<std::string, ModelPtr> cache;
  ModelPtr& m = cache[name];
  if (!m) m = make(name);
  return *m;
}

/// splitmix64: a fast, seedable source of uniform doubles for random checkpoints and images.
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  double uniform(double lo, double hi) {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return lo + (hi - lo) * static_cast<double>(z >> 11) * 0x1.0p-53;
  }

 private:
  std::uint64_t state_;
};

// ---- checkpoints as plain maps -------------------------------------------------------------

struct Entry {
  std::vector<Index> shape;
  std::vector<float> values;
  DType dtype = DType::F32;  // F32 or I64 (values then hold small integers)
};
using Checkpoint = std::map<std::string, Entry>;

Index numel(const std::vector<Index>& shape) {
  Index n = 1;
  for (Index d : shape) n *= d;
  return n;
}

Checkpoint read(const SafeTensors& file) {
  Checkpoint c;
  for (const std::string& name : file.names()) {
    const dynconv::TensorEntry& e = file.entry(name);
    c[name] = Entry{e.shape, file.get_flat<float>(name), e.dtype == DType::I64 ? DType::I64 : DType::F32};
  }
  return c;
}

SafeTensors write(const Checkpoint& c, const std::string& source = "ckpt.safetensors") {
  SafeTensorsWriter w;
  for (const auto& [name, e] : c) {
    if (e.dtype == DType::I64) {
      std::vector<std::int64_t> v(e.values.begin(), e.values.end());
      w.add_raw(name, DType::I64, e.shape, v.data(), v.size() * sizeof(std::int64_t));
    } else {
      w.add_raw(name, DType::F32, e.shape, e.values.data(), e.values.size() * sizeof(float));
    }
  }
  return SafeTensors::parse(w.to_bytes(), source);
}

SafeTensors saved_file(const Model<float>& m) {
  SafeTensorsWriter w;
  m.save(w);
  return SafeTensors::parse(w.to_bytes(), "saved.safetensors");
}

Checkpoint saved(const Model<float>& m) { return read(saved_file(m)); }

/// What zoo(name) saves, computed once.
const Checkpoint& saved(const std::string& name) {
  static std::map<std::string, Checkpoint> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, saved(zoo(name))).first;
  return it->second;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// A random checkpoint with the names and shapes of `like`: convolution and linear weights in
/// He-like ranges (each of the K kernels drawn separately), BatchNorm statistics non-trivial
/// (running_var > 0), attention FCs wide so that the attention is far from uniform, tau = 1.
Checkpoint random_checkpoint(const Checkpoint& like, unsigned seed) {
  Checkpoint c = like;
  Random gen(seed);
  auto uniform = [&](Entry& e, double lo, double hi) {
    for (float& v : e.values) v = static_cast<float>(gen.uniform(lo, hi));
  };
  for (auto& [name, e] : c) {
    const std::size_t rank = e.shape.size();
    if (ends_with(name, ".attention.temperature")) {
      for (float& v : e.values) v = 1.f;
    } else if (ends_with(name, ".attention.fc1.weight")) {
      const double a = 4.0 / std::sqrt(static_cast<double>(e.shape[1]));
      uniform(e, -a, a);
    } else if (ends_with(name, ".attention.fc2.weight")) {
      const double a = 8.0 / std::sqrt(static_cast<double>(e.shape[1]));
      uniform(e, -a, a);
    } else if (ends_with(name, ".attention.fc1.bias") || ends_with(name, ".attention.fc2.bias")) {
      uniform(e, -1.0, 1.0);
    } else if (ends_with(name, ".running_var")) {
      uniform(e, 0.5, 2.0);
    } else if (ends_with(name, ".running_mean")) {
      uniform(e, -0.3, 0.3);
    } else if (rank == 1 && ends_with(name, ".weight")) {  // BatchNorm gamma
      uniform(e, 0.5, 1.5);
    } else if (rank == 1) {  // BatchNorm beta, linear and SE biases
      uniform(e, -0.2, 0.2);
    } else {
      // Linear [out, in], conv [out, in/g, kh, kw], dynamic conv [K, out, in/g, kh, kw].
      Index fan_in = 1;
      for (std::size_t i = rank == 5 ? 2 : 1; i < rank; ++i) fan_in *= e.shape[i];
      const double a = std::sqrt(6.0 / static_cast<double>(fan_in));
      uniform(e, -a, a);
    }
  }
  return c;
}

/// random_checkpoint for the zoo model `name` with default options.
Checkpoint random_checkpoint(const std::string& name, unsigned seed) {
  return random_checkpoint(saved(name), seed);
}
SafeTensors random_file(const std::string& name, unsigned seed) {
  return write(random_checkpoint(name, seed));
}

/// Noise images, each sample with its own brightness and contrast (so that samples differ in
/// more than their noise).
Tensor4<float> random_images(Index n, Index h, Index w, unsigned seed, Index c = 3) {
  Tensor4<float> x(n, c, h, w);
  Random gen(seed);
  const Index per = c * h * w;
  for (Index b = 0; b < n; ++b) {
    const double offset = gen.uniform(-1, 1), contrast = gen.uniform(0.2, 1.5);
    for (Index i = 0; i < per; ++i)
      x.data()[b * per + i] = static_cast<float>(offset + contrast * gen.uniform(-1, 1));
  }
  return x;
}

/// max |a - b| / max |b|
double rel_error(const Tensor2<float>& a, const Tensor2<float>& b) {
  EXPECT_EQ(a.dimension(0), b.dimension(0));
  EXPECT_EQ(a.dimension(1), b.dimension(1));
  double diff = 0, scale = 0;
  for (Index i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a.data()[i]) - b.data()[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b.data()[i])));
  }
  EXPECT_GT(scale, 0.0);
  return diff / scale;
}

bool logits_ok(const Tensor2<float>& y) {
  double scale = 0;
  for (Index i = 0; i < y.size(); ++i) {
    if (!std::isfinite(y.data()[i])) return false;
    scale = std::max(scale, std::abs(static_cast<double>(y.data()[i])));
  }
  return scale > 1e-3 && scale < 1e6;
}

std::size_t rank_of(const Checkpoint& c, const std::string& name) {
  const auto it = c.find(name);
  if (it == c.end()) {
    ADD_FAILURE() << "no tensor '" << name << "' in the saved file";
    return 0;
  }
  return it->second.shape.size();
}

std::vector<Index> shape_of(const Checkpoint& c, const std::string& name) {
  const auto it = c.find(name);
  if (it == c.end()) {
    ADD_FAILURE() << "no tensor '" << name << "' in the saved file";
    return {};
  }
  return it->second.shape;
}

/// Names of convolution weights saved as [K, Cout, Cin/g, kh, kw] (dynamic) / 4-D (static).
std::set<std::string> conv_weights(const Checkpoint& c, std::size_t rank) {
  std::set<std::string> out;
  for (const auto& [name, e] : c)
    if (e.shape.size() == rank && ends_with(name, ".weight") && name.find(".fc") == std::string::npos)
      out.insert(name.substr(0, name.size() - 7));
  return out;
}

// ---- the graph ------------------------------------------------------------------------------

bool is_dynamic_conv(const Model<float>& m, const std::string& node) {
  return dynamic_cast<const DynamicConv2d<float>*>(&m.module(node)) != nullptr;
}

bool is_static_conv(const Model<float>& m, const std::string& node) {
  return dynamic_cast<const Conv2d<float>*>(&m.module(node)) != nullptr;
}

/// The geometry of convolution node `node`, static or dynamic (a failure if it is neither).
dynconv::ConvGeometry geometry_of(const Model<float>& m, const std::string& node) {
  if (const auto* d = dynamic_cast<const DynamicConv2d<float>*>(&m.module(node))) return d->geometry();
  if (const auto* c = dynamic_cast<const Conv2d<float>*>(&m.module(node))) return c->geometry();
  ADD_FAILURE() << "node '" << node << "' is " << m.module(node).description() << ", not a convolution";
  return {};
}

/// Names of the convolution nodes of `m` that are dynamic (or static), squeeze-excite FCs
/// (".fc1", ".fc2") left out as conv_weights() does: the graph's view of the policy.
std::set<std::string> conv_nodes(const Model<float>& m, bool dynamic) {
  std::set<std::string> out;
  for (const std::string& n : m.node_names()) {
    if (n.find(".fc") != std::string::npos) continue;
    if (dynamic ? is_dynamic_conv(m, n) : is_static_conv(m, n)) out.insert(n);
  }
  return out;
}

/// The distinct "features.<i>" of the node names: torchvision's nn.Sequential `features`.
std::set<std::string> feature_blocks(const Model<float>& m) {
  std::set<std::string> out;
  for (const std::string& n : m.node_names())
    if (n.rfind("features.", 0) == 0) out.insert(n.substr(0, n.find('.', 9)));
  return out;
}

/// A policy that records every site it is asked about (by name) and decides as `decide`.
dynconv::DynamicPolicy recording(std::map<std::string, ConvSite>& sites, bool (*decide)(const ConvSite&)) {
  return [&sites, decide](const ConvSite& s) {
    EXPECT_TRUE(sites.emplace(s.name, s).second) << "site '" << s.name << "' asked twice";
    return decide(s);
  };
}

// ---- hand sums from the torchvision architectures --------------------------------------------

struct HandCost {
  std::int64_t params = 0, madds = 0, attention = 0, aggregation = 0;
};

/// One torchvision conv (no bias) + BatchNorm at input h x w with "same" padding k/2; adds its
/// cost per paper.md (dynamic: K kernels, attention hidden = max(1, in/4) with biased FCs, GAP at
/// the input resolution, aggregation K * weight) and updates h, w to the output size.
void hand_conv(HandCost& c, Index& h, Index& w, Index in, Index out, Index k, Index stride,
               Index groups, bool dynamic, Index kernels = 4) {
  const Index oh = (h + 2 * (k / 2) - k) / stride + 1, ow = (w + 2 * (k / 2) - k) / stride + 1;
  const std::int64_t weight = out * (in / groups) * k * k;
  c.params += (dynamic ? kernels : 1) * weight + 2 * out;
  c.madds += oh * ow * weight;
  if (dynamic) {
    const Index hidden = std::max<Index>(1, in / 4);
    c.params += in * hidden + hidden + hidden * kernels + kernels;
    const std::int64_t att = h * w * in + in * hidden + hidden * kernels;
    c.attention += att;
    c.aggregation += kernels * weight;
    c.madds += att + kernels * weight;
  }
  h = oh;
  w = ow;
}

/// torchvision ResNet(BasicBlock, [b, b, b, b]); dynamic: the 3x3 convs of the blocks.
HandCost hand_resnet(Index blocks, bool dynamic, Index h, Index w, Index classes = 1000) {
  HandCost c;
  hand_conv(c, h, w, 3, 64, 7, 2, 1, false);  // conv1 + bn1
  h = (h + 2 - 3) / 2 + 1;                     // maxpool 3x3/2 pad 1
  w = (w + 2 - 3) / 2 + 1;
  Index in = 64;
  const Index widths[] = {64, 128, 256, 512};
  for (int s = 0; s < 4; ++s)
    for (Index b = 0; b < blocks; ++b) {
      const Index out = widths[s], stride = (s > 0 && b == 0) ? 2 : 1;
      if (stride != 1 || in != out) {
        Index dh = h, dw = w;
        hand_conv(c, dh, dw, in, out, 1, stride, 1, false);  // downsample.0 + .1
      }
      hand_conv(c, h, w, in, out, 3, stride, 1, dynamic);   // conv1 + bn1
      hand_conv(c, h, w, out, out, 3, 1, 1, dynamic);       // conv2 + bn2
      in = out;
    }
  c.params += 512 * classes + classes;  // fc
  c.madds += 512 * classes;
  return c;
}

/// torchvision's _make_divisible(v, 8).
Index divisible8(double v) {
  Index r = std::max<Index>(8, static_cast<Index>(v + 4) / 8 * 8);
  if (r < 0.9 * v) r += 8;
  return r;
}

/// torchvision mobilenet_v2(width_mult); dynamic: every conv inside the inverted residuals.
HandCost hand_mobilenet_v2(double width, bool dynamic, Index h, Index w, Index classes = 1000) {
  HandCost c;
  Index in = divisible8(32 * width);
  const Index last = divisible8(1280 * std::max(1.0, width));
  hand_conv(c, h, w, 3, in, 3, 2, 1, false);
  const Index table[7][4] = {{1, 16, 1, 1}, {6, 24, 2, 2}, {6, 32, 3, 2}, {6, 64, 4, 2},
                             {6, 96, 3, 1}, {6, 160, 3, 2}, {6, 320, 1, 1}};
  for (const auto& row : table) {
    const Index t = row[0], out = divisible8(row[1] * width), n = row[2], s = row[3];
    for (Index i = 0; i < n; ++i) {
      const Index hidden = in * t;
      if (t != 1) hand_conv(c, h, w, in, hidden, 1, 1, 1, dynamic);
      hand_conv(c, h, w, hidden, hidden, 3, i == 0 ? s : 1, hidden, dynamic);
      hand_conv(c, h, w, hidden, out, 1, 1, 1, dynamic);
      in = out;
    }
  }
  hand_conv(c, h, w, in, last, 1, 1, 1, false);
  c.params += last * classes + classes;  // classifier.1
  c.madds += last * classes;
  return c;
}

const LayerCost* find_layer(const ModelCost& c, const std::string& name) {
  for (const dynconv::NamedCost& l : c.layers)
    if (l.name == name) return &l.cost;
  return nullptr;
}

double rel(double measured, double expected) { return (measured - expected) / expected; }

// =============================================================================================
// Zoo
// =============================================================================================

TEST(Zoo, NamesInDocumentedOrder) {
  EXPECT_THAT(dynconv::models::zoo_names(),
              ElementsAre("mobilenet_v2_x1_0", "mobilenet_v2_x0_75", "mobilenet_v2_x0_5",
                          "mobilenet_v2_x0_35", "mobilenet_v3_small", "resnet10", "resnet18",
                          "dy_mobilenet_v2_x1_0", "dy_mobilenet_v2_x0_75", "dy_mobilenet_v2_x0_5",
                          "dy_mobilenet_v2_x0_35", "dy_mobilenet_v3_small", "dy_resnet10",
                          "dy_resnet18"));
}

// OSVAI/ODConv's official models (family.md's table): parameters exactly, MAdds within 4% of the
// published figures (paper.md's counting: conv, attention with GAP, kernel synthesis, and the
// kernel's scaling by ODConv's channel, filter and spatial attentions).
TEST(OdconvZoo, ParametersEqualTheOfficialModelsAndMAddsTheTableWithin4Percent) {
  struct Row {
    const char* name;
    std::int64_t params_k1, params_k4;
    double madds_k1, madds_k4;
  };
  const Row rows[] = {{"od_resnet18", 11943944, 44901640, 1.838e9, 1.916e9},
                      {"od_resnet50", 28635112, 90670888, 3.916e9, 4.080e9},
                      {"od_mobilenet_v2_x1_0", 4940185, 11512149, 311.8e6, 327.1e6},
                      {"od_mobilenet_v2_x0_75", 3507113, 7496013, 217.1e6, 226.3e6},
                      {"od_mobilenet_v2_x0_5", 2425537, 4435501, 101.8e6, 106.4e6}};
  EXPECT_EQ(dynconv::models::odconv_zoo_names().size(), std::size(rows));
  for (const Row& r : rows)
    for (const Index k : {1, 4}) {
      SCOPED_TRACE(::testing::Message() << r.name << " K=" << k);
      const ModelPtr m = make(r.name, ModelOptions().kernels(k));
      const LayerCost c = m->cost(224, 224).total;
      EXPECT_EQ(c.params, k == 1 ? r.params_k1 : r.params_k4);
      const double official = k == 1 ? r.madds_k1 : r.madds_k4;
      // The official ResNet-50 figures count the stride on the bottleneck's first 1x1 (ResNet
      // v1, 3,857,973,248 MAdds static), its code (and so this model) puts it on the 3x3 (v1.5,
      // torchvision's: 4,089,184,256); compared on the official layout.
      const double layout = std::string(r.name) == "od_resnet50" ? 4089184256.0 - 3857973248.0 : 0.0;
      EXPECT_NEAR((static_cast<double>(c.madds()) - layout) / official, 1.0, 0.04) << c.madds();
      EXPECT_GT(c.scaling_madds, 0);
    }
}

// ResNet-50 (the Bottleneck block): parameters equal torchvision's resnet50 and the dy_ twin of
// tools/dynconv_torch.py (build_model("dy_resnet50"): all three convolutions of every bottleneck
// dynamic, K = 4); MAdds equal the sum over torchvision's resnet50 convolutions and fc at
// 224x224 (PyTorch forward hooks, Hout Wout Cout Cin/g k^2 + fc: 4,089,184,256); the
// bottleneck's structure and names.
TEST(Zoo, ResNet50ParametersEqualTorchvisionsAndItsDynamicTwin) {
  EXPECT_THAT(dynconv::models::resnet50_zoo_names(), ElementsAre("resnet50", "dy_resnet50"));
  const LayerCost s = make("resnet50")->cost(224, 224).total;
  EXPECT_EQ(s.params, 25557032);
  EXPECT_EQ(s.madds(), 4089184256);
  const ModelPtr d = make("dy_resnet50");
  EXPECT_EQ(d->cost(224, 224).total.params, 92223960);
  for (const char* n : {"layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer4.2.conv3"})
    EXPECT_EQ(d->module<DynamicConv2d<float>>(n).kind(), dynconv::AttentionKind::DyConv) << n;
  EXPECT_NO_THROW(d->module<Conv2d<float>>("conv1"));
  EXPECT_NO_THROW(d->module<Conv2d<float>>("layer1.0.downsample.0"));  // 64 -> 256 at stride 1
  EXPECT_THROW(d->module<Conv2d<float>>("layer1.1.downsample.0"), dynconv::OptionsError);
  EXPECT_EQ(d->forward(random_images(1, 32, 32, 3)).dimension(1), 1000);
}

TEST(Zoo, AttentionKindCondConvGivesCondConvLayersWithTheirOwnRouting) {
  const ModelPtr m = make("dy_resnet10", ModelOptions().attention_kind(dynconv::AttentionKind::CondConv).num_classes(10));
  const DynamicConv2d<float>& l = m->module<DynamicConv2d<float>>("layer1.0.conv1");
  EXPECT_EQ(l.kind(), dynconv::AttentionKind::CondConv);
  EXPECT_EQ(l.routing().experts(), 4);
  EXPECT_EQ(m->forward(random_images(2, 32, 32, 3)).dimension(1), 10);
}

TEST(OdconvZoo, WhichConvolutionsAreOdconv) {
  const ModelPtr r = make("od_resnet18", ModelOptions().kernels(4));
  EXPECT_EQ(r->module<DynamicConv2d<float>>("layer1.0.conv1").kind(), dynconv::AttentionKind::ODConv);
  EXPECT_NO_THROW(r->module<Conv2d<float>>("conv1"));
  EXPECT_NO_THROW(r->module<Conv2d<float>>("layer2.0.downsample.0"));
  const ModelPtr m = make("od_mobilenet_v2_x0_5", ModelOptions().kernels(1));
  EXPECT_NO_THROW(m->module<Conv2d<float>>("features.0.0"));
  for (const char* n : {"features.1.conv.0.0", "features.1.conv.1", "features.2.conv.0.0", "features.18.0"})
    EXPECT_EQ(m->module<DynamicConv2d<float>>(n).kind(), dynconv::AttentionKind::ODConv) << n;
  // A depthwise ODConv has no filter attention (OSVAI's rule).
  EXPECT_EQ(m->module<DynamicConv2d<float>>("features.1.conv.0.0").attention_heads(random_images(1, 8, 8, 1, 16)).filter.size(), 0);
}

// The ODConv models against their PyTorch look-alikes (tools/make_od_model_data.py: OSVAI's
// structure and state_dict names, every BatchNorm and attention randomised, tau = 1.7 stored in
// the file): the state_dict loads strictly by zoo name with no renaming, and the logits match
// PyTorch's float64 ones through a Session on 1 and 2 threads (float) and in double.
template <typename T>
double od_model_error(const std::string& model, Index kernels, Index classes, const SafeTensors& state,
                      const Tensor4<double>& x, const Tensor2<double>& logits, int threads) {
  auto m = dynconv::models::create<T>(model, ModelOptions().kernels(kernels).num_classes(classes));
  m->load(state);
  EXPECT_NEAR(static_cast<double>(m->template module<DynamicConv2d<T>>(model.rfind("od_resnet", 0) == 0 ? "layer1.0.conv1" : "features.1.conv.0.0")
                                      .temperature()),
              1.7, 1e-6)
      << "the temperature comes from the file";
  dynconv::Session<T> s(*m, threads);
  const Tensor4<T> xt = x.cast<T>();
  const Tensor2<T>& y = s.forward(xt);
  double worst = 0, scale = 0;
  for (Index i = 0; i < logits.size(); ++i) {
    scale = std::max(scale, std::abs(logits.data()[i]));
    worst = std::max(worst, std::abs(static_cast<double>(y.data()[i]) - logits.data()[i]));
  }
  for (Index n = 0; n < logits.dimension(0); ++n) {
    Index a = 0, b = 0;
    for (Index k = 1; k < logits.dimension(1); ++k) {
      if (y(n, k) > y(n, a)) a = k;
      if (logits(n, k) > logits(n, b)) b = k;
    }
    EXPECT_EQ(a, b) << "argmax of sample " << n;
  }
  return worst / scale;
}

TEST(OdconvZoo, OfficialStateDictsLoadByNameAndMatchPyTorch) {
  static const parity::Data d = parity::load("DYNCONV_OD_MODEL_PARITY_DIR");
  if (!d.problem.empty())
    GTEST_SKIP() << "ODConv model data was not generated (" << d.problem
                 << "): run /usr/bin/python3 tools/make_od_model_data.py --out DIR with DYNCONV_OD_MODEL_PARITY_DIR=DIR";
  ASSERT_GE(d.cases.size(), 2u);
  for (const parity::Case& c : d.cases) {
    SCOPED_TRACE(c.name);
    ASSERT_TRUE(c.load_error.empty()) << c.load_error;
    const parity::Meta m{c};
    const SafeTensors io = SafeTensors::load(d.dir + "/" + c.name + "_io.safetensors");
    const Tensor4<double> x = io.get<double, 4>("input");
    const Tensor2<double> logits = io.get<double, 2>("logits");
    const std::string model = m.str("model");
    const Index k = m.integer("kernels"), classes = m.integer("num_classes");
    for (int threads : {1, 2}) {
      const double e = od_model_error<float>(model, k, classes, c.st(), x, logits, threads);
      EXPECT_LE(e, 1e-4) << threads << " threads";
      std::printf("%s float, %d thread(s): %.2e\n", c.name.c_str(), threads, e);
    }
    const double e = od_model_error<double>(model, k, classes, c.st(), x, logits, 1);
    EXPECT_LE(e, 1e-9);
    std::printf("%s double: %.2e\n", c.name.c_str(), e);
  }
}

TEST(Zoo, EveryNameBuildsAModelOfThatName) {
  for (const std::string& name : dynconv::models::zoo_names()) {
    EXPECT_EQ(zoo(name).name(), name);
    EXPECT_EQ(zoo(name).num_classes(), 1000);
  }
}

TEST(Zoo, UnknownNameIsOptionsErrorListingTheZoo) {
  for (const std::string bad : {"resnet34", "dy_resnet101", "mobilenet_v3_large", "", "dy_"}) {
    std::vector<::testing::Matcher<std::string>> all = {HasSubstr("'" + bad + "'")};
    for (const std::string& n : dynconv::models::all_zoo_names()) all.push_back(HasSubstr(n));
    EXPECT_THAT([&] { make(bad); }, ThrowsMessage<OptionsError>(::testing::AllOfArray(all)))
        << bad;
  }
}

TEST(Zoo, NumClassesMustBePositive) {
  EXPECT_THAT([] { make("resnet10", ModelOptions().num_classes(0)); },
              ThrowsMessage<OptionsError>(AllOf(HasSubstr("num_classes"), HasSubstr("0"))));
  EXPECT_THAT([] { make("dy_mobilenet_v2_x0_35", ModelOptions().num_classes(-3)); },
              ThrowsMessage<OptionsError>(HasSubstr("num_classes")));
}

TEST(Zoo, NumClassesTenGivesTenLogits) {
  for (const std::string name : {"mobilenet_v2_x0_35", "dy_mobilenet_v3_small", "dy_resnet10"}) {
    const ModelPtr m = make(name, ModelOptions().num_classes(10));
    EXPECT_EQ(m->num_classes(), 10);
    const Tensor2<float> y = m->forward(random_images(2, 32, 32, 1));
    EXPECT_EQ(y.dimension(0), 2);
    EXPECT_EQ(y.dimension(1), 10);
    EXPECT_TRUE(logits_ok(y)) << name;
  }
  // The head shrinks accordingly: resnet10 with 10 classes = 5,418,792 - 512*990 - 990.
  EXPECT_EQ(make("resnet10", ModelOptions().num_classes(10))->cost(224, 224).total.params,
            5418792 - 512 * 990 - 990);
}

// =============================================================================================
// Counts
// =============================================================================================

TEST(Counts, StaticParamsEqualTorchvision) {
  // torchvision's documented num_params; resnet10 = ResNet(BasicBlock, [1, 1, 1, 1]).
  EXPECT_EQ(zoo("mobilenet_v2_x1_0").cost(224, 224).total.params, 3504872);
  EXPECT_EQ(zoo("mobilenet_v3_small").cost(224, 224).total.params, 2542856);
  EXPECT_EQ(zoo("resnet18").cost(224, 224).total.params, 11689512);
  EXPECT_EQ(zoo("resnet10").cost(224, 224).total.params, 5418792);
}

TEST(Counts, HandSumsReproduceTorchvisionCounts) {
  // The hand sums are checked against the published counts first ...
  EXPECT_EQ(hand_resnet(1, false, 224, 224).params, 5418792);
  EXPECT_EQ(hand_resnet(2, false, 224, 224).params, 11689512);
  EXPECT_EQ(hand_mobilenet_v2(1.0, false, 224, 224).params, 3504872);
  // ... and resnet10 spelled out layer by layer (conv weights + 2 * BN channels, fc).
  const std::int64_t stem = 3 * 64 * 49 + 2 * 64;
  const std::int64_t layer1 = 2 * (64 * 64 * 9 + 2 * 64);
  const std::int64_t layer2 = 64 * 128 * 9 + 128 * 128 * 9 + 64 * 128 + 3 * 2 * 128;
  const std::int64_t layer3 = 128 * 256 * 9 + 256 * 256 * 9 + 128 * 256 + 3 * 2 * 256;
  const std::int64_t layer4 = 256 * 512 * 9 + 512 * 512 * 9 + 256 * 512 + 3 * 2 * 512;
  const std::int64_t fc = 512 * 1000 + 1000;
  EXPECT_EQ(stem + layer1 + layer2 + layer3 + layer4 + fc, 5418792);
}

TEST(Counts, ResNetsEqualHandSumsExactly) {
  const std::pair<Index, Index> sizes[] = {{224, 224}, {96, 160}, {33, 47}};
  for (const Index blocks : {1, 2}) {
    const std::string base = blocks == 1 ? "resnet10" : "resnet18";
    const Model<float>& st = zoo(base);
    const Model<float>& dy = zoo("dy_" + base);
    for (const auto& [h, w] : sizes) {
      SCOPED_TRACE(base + " at " + std::to_string(h) + "x" + std::to_string(w));
      const HandCost hs = hand_resnet(blocks, false, h, w), hd = hand_resnet(blocks, true, h, w);
      const LayerCost cs = st.cost(h, w).total, cd = dy.cost(h, w).total;
      EXPECT_EQ(cs.params, hs.params);
      EXPECT_EQ(cs.madds(), hs.madds);
      EXPECT_EQ(cd.params, hd.params);
      EXPECT_EQ(cd.madds(), hd.madds);
      EXPECT_EQ(cd.attention_madds, hd.attention);
      EXPECT_EQ(cd.aggregation_madds, hd.aggregation);
    }
  }
}

TEST(Counts, MobileNetV2EqualsHandSumsExactly) {
  const std::pair<const char*, double> widths[] = {
      {"x1_0", 1.0}, {"x0_75", 0.75}, {"x0_5", 0.5}, {"x0_35", 0.35}};
  for (const auto& [suffix, width] : widths) {
    const std::string base = std::string("mobilenet_v2_") + suffix;
    const Model<float>& st = zoo(base);
    const Model<float>& dy = zoo("dy_" + base);
    for (const auto& [h, w] : {std::pair<Index, Index>{224, 224}, {64, 96}}) {
      SCOPED_TRACE(base + " at " + std::to_string(h) + "x" + std::to_string(w));
      const HandCost hs = hand_mobilenet_v2(width, false, h, w);
      const HandCost hd = hand_mobilenet_v2(width, true, h, w);
      const LayerCost cs = st.cost(h, w).total, cd = dy.cost(h, w).total;
      EXPECT_EQ(cs.params, hs.params);
      EXPECT_EQ(cs.madds(), hs.madds);
      EXPECT_EQ(cd.params, hd.params);
      EXPECT_EQ(cd.madds(), hd.madds);
      EXPECT_EQ(cd.attention_madds, hd.attention);
      EXPECT_EQ(cd.aggregation_madds, hd.aggregation);
    }
  }
}

struct PaperRow {
  const char* model;
  double static_madds, dynamic_params, dynamic_madds;
};
// paper.md's results table (CVPR version), 224 x 224, K = 4, 1000 classes.
const PaperRow kPaper[] = {
    {"mobilenet_v2_x1_0", 300.0e6, 11.1e6, 312.9e6}, {"mobilenet_v2_x0_75", 209.0e6, 7.0e6, 217.5e6},
    {"mobilenet_v2_x0_5", 97.0e6, 4.0e6, 101.4e6},   {"mobilenet_v2_x0_35", 59.2e6, 2.8e6, 62.0e6},
    {"resnet10", 0.89e9, 18.6e6, 0.91e9},            {"resnet18", 1.81e9, 42.7e6, 1.85e9}};

TEST(Counts, StaticMAddsWithinOnePercentOfPaper) {
  for (const PaperRow& row : kPaper) {
    const double madds = static_cast<double>(zoo(row.model).cost(224, 224).total.madds());
    EXPECT_LT(std::abs(rel(madds, row.static_madds)), 0.01)
        << row.model << ": " << madds << " vs " << row.static_madds;
  }
  // torchvision's MobileNetV3-Small (paper.md: 2.54M / 56.5M; the paper's own 66.0M baseline is
  // an older revision).
  const double v3 = static_cast<double>(zoo("mobilenet_v3_small").cost(224, 224).total.madds());
  EXPECT_LT(std::abs(rel(v3, 56.5e6)), 0.01) << v3;
}

TEST(Counts, DynamicRowsWithinPaperTolerances) {
  std::printf("  %-22s %12s %8s %7s   %12s %8s %7s\n", "model", "params", "paper", "diff",
              "MAdds", "paper", "diff");
  for (const PaperRow& row : kPaper) {
    const std::string name = std::string("dy_") + row.model;
    const LayerCost c = zoo(name).cost(224, 224).total;
    const double p = static_cast<double>(c.params), m = static_cast<double>(c.madds());
    std::printf("  %-22s %12lld %7.1fM %+6.2f%%   %12lld %7.1fM %+6.2f%%\n", name.c_str(),
                static_cast<long long>(c.params), row.dynamic_params / 1e6,
                100 * rel(p, row.dynamic_params), static_cast<long long>(c.madds()),
                row.dynamic_madds / 1e6, 100 * rel(m, row.dynamic_madds));
    EXPECT_LT(std::abs(rel(p, row.dynamic_params)), 0.06) << name << " params " << p;
    EXPECT_LT(std::abs(rel(m, row.dynamic_madds)), 0.03) << name << " MAdds " << m;
  }
}

TEST(Counts, MobileNetV3SmallDynamicIncrement) {
  // The baselines differ (torchvision 2.54M / 56.5M vs the paper's 2.9M / 66.0M), so compare
  // what dynamic convolution adds: the paper's +1.9M params (4.8M - 2.9M) and +2.5M MAdds
  // (68.5M - 66.0M); paper.md's configurations give +2.3M .. +3.7M MAdds.
  const LayerCost st = zoo("mobilenet_v3_small").cost(224, 224).total;
  const LayerCost dy = zoo("dy_mobilenet_v3_small").cost(224, 224).total;
  const double dp = static_cast<double>(dy.params - st.params);
  const double dm = static_cast<double>(dy.madds() - st.madds());
  std::printf("  dy_mobilenet_v3_small: params %lld (+%.3fM, paper +1.9M), MAdds %lld (+%.3fM, "
              "paper +2.5M)\n",
              static_cast<long long>(dy.params), dp / 1e6, static_cast<long long>(dy.madds()),
              dm / 1e6);
  EXPECT_LT(std::abs(rel(dp, 1.9e6)), 0.06) << dp;
  EXPECT_GE(dm, 2.3e6);
  EXPECT_LE(dm, 3.7e6);
}

TEST(Counts, PerLayerCostsAddUpAndSplitAsDocumented) {
  const std::vector<std::string> names = dynconv::models::zoo_names();
  for (std::size_t i = 0; i < 7; ++i) {
    SCOPED_TRACE(names[i]);
    const ModelCost cs = zoo(names[i]).cost(224, 224), cd = zoo(names[i + 7]).cost(224, 224);
    for (const Model<float>* m : {&zoo(names[i]), &zoo(names[i + 7])}) {
      const ModelCost c = m->cost(224, 224);
      LayerCost sum;
      std::set<std::string> unique;
      std::size_t batchnorms = 0;
      for (const dynconv::NamedCost& l : c.layers) {
        sum += l.cost;
        unique.insert(l.name);
        ASSERT_TRUE(m->has_node(l.name)) << l.name;
        // One entry per node with parameters: a BatchNorm node has its weight and bias (2 x C)
        // and no multiply-adds (it folds into the convolution before it); every other entry
        // (convolutions, squeeze-excite FCs, Linear) has both.
        if (const auto* bn = dynamic_cast<const BatchNorm2d<float>*>(&m->module(l.name))) {
          ++batchnorms;
          EXPECT_EQ(l.cost.params, 2 * bn->num_features()) << l.name;
          EXPECT_EQ(l.cost.madds(), 0) << l.name;
        } else {
          EXPECT_GT(l.cost.params, 0) << l.name;
          EXPECT_GT(l.cost.conv_madds, 0) << l.name;
        }
      }
      EXPECT_EQ(unique.size(), c.layers.size());
      // Every node with parameters has its entry; every convolution but the SE FCs its BatchNorm.
      std::set<std::string> with_params;
      for (const std::string& n : m->node_names())
        if (!m->module(n).parameters().empty()) with_params.insert(n);
      EXPECT_EQ(unique, with_params);
      EXPECT_EQ(batchnorms, conv_nodes(*m, true).size() + conv_nodes(*m, false).size());
      EXPECT_EQ(sum.params, c.total.params);
      EXPECT_EQ(sum.conv_madds, c.total.conv_madds);
      EXPECT_EQ(sum.attention_madds, c.total.attention_madds);
      EXPECT_EQ(sum.aggregation_madds, c.total.aggregation_madds);
    }
    // Static: conv and FC only.
    for (const dynconv::NamedCost& l : cs.layers) {
      EXPECT_EQ(l.cost.attention_madds, 0) << l.name;
      EXPECT_EQ(l.cost.aggregation_madds, 0) << l.name;
    }
    // Same layers, same convolutions; the difference is attention + aggregation.
    ASSERT_EQ(cs.layers.size(), cd.layers.size());
    for (std::size_t j = 0; j < cs.layers.size(); ++j) {
      EXPECT_EQ(cs.layers[j].name, cd.layers[j].name);
      EXPECT_EQ(cs.layers[j].cost.conv_madds, cd.layers[j].cost.conv_madds) << cs.layers[j].name;
    }
    EXPECT_EQ(cd.total.madds() - cs.total.madds(),
              cd.total.attention_madds + cd.total.aggregation_madds);
    EXPECT_GT(cd.total.attention_madds, 0);
    EXPECT_GT(cd.total.aggregation_madds, 0);
    // The layers that pay attention are exactly the ones saved as dynamic.
    const std::set<std::string> dynamic = conv_weights(saved(names[i + 7]), 5);
    for (const dynconv::NamedCost& l : cd.layers) {
      const bool is_dyn = dynamic.count(l.name) != 0;
      EXPECT_EQ(l.cost.attention_madds > 0, is_dyn) << l.name;
      EXPECT_EQ(l.cost.aggregation_madds > 0, is_dyn) << l.name;
    }
  }
}

TEST(Counts, HandComputedResNetLayer) {
  // dy_resnet18 layer1.0.conv1 at 224: input 56x56 (stem /2, max pool /2), 64 -> 64, 3x3,
  // stride 1, K = 4, hidden = 64 / 4 = 16. PyTorch counts: conv weight 4*64*64*9, attention
  // fc1 (16x64 + 16) and fc2 (4x16 + 4), bn1 weight and bias (2 x 64), 148,692 in all; the
  // conv node has all but the BatchNorm's, the BatchNorm node bn1 those.
  const ModelCost c = zoo("dy_resnet18").cost(224, 224);
  const LayerCost* l = find_layer(c, "layer1.0.conv1");
  const LayerCost* bn = find_layer(c, "layer1.0.bn1");
  ASSERT_NE(l, nullptr);
  ASSERT_NE(bn, nullptr);
  EXPECT_EQ(l->params, 4 * 64 * 64 * 9 + (16 * 64 + 16) + (4 * 16 + 4));
  EXPECT_EQ(bn->params, 2 * 64);
  EXPECT_EQ(bn->madds(), 0);
  EXPECT_EQ(l->params + bn->params, 148692);
  EXPECT_EQ(l->conv_madds, 56 * 56 * 64 * 64 * 9);                              // 115,605,504
  EXPECT_EQ(l->attention_madds, 56 * 56 * 64 + 64 * 16 + 16 * 4);                // 201,792
  EXPECT_EQ(l->aggregation_madds, 4 * 64 * 64 * 9);                              // 147,456
  // layer2.0.conv1: 56x56 in, stride 2 -> 28x28, 64 -> 128; GAP at the input resolution.
  const LayerCost* l2 = find_layer(c, "layer2.0.conv1");
  const LayerCost* bn2 = find_layer(c, "layer2.0.bn1");
  ASSERT_NE(l2, nullptr);
  ASSERT_NE(bn2, nullptr);
  EXPECT_EQ(l2->params + bn2->params, 4 * 128 * 64 * 9 + (16 * 64 + 16) + (4 * 16 + 4) + 2 * 128);
  EXPECT_EQ(bn2->params, 2 * 128);
  EXPECT_EQ(l2->conv_madds, 28 * 28 * 128 * 64 * 9);
  EXPECT_EQ(l2->attention_madds, 56 * 56 * 64 + 64 * 16 + 16 * 4);
  EXPECT_EQ(l2->aggregation_madds, 4 * 128 * 64 * 9);
  // The static downsample next to it: 1x1 stride 2, 64 -> 128, + BN.
  const LayerCost* ds = find_layer(c, "layer2.0.downsample.0");
  const LayerCost* ds_bn = find_layer(c, "layer2.0.downsample.1");
  ASSERT_NE(ds, nullptr);
  ASSERT_NE(ds_bn, nullptr);
  EXPECT_EQ(ds->params, 128 * 64);
  EXPECT_EQ(ds_bn->params, 2 * 128);
  EXPECT_EQ(ds_bn->madds(), 0);
  EXPECT_EQ(ds->conv_madds, 28 * 28 * 128 * 64);
  EXPECT_EQ(ds->attention_madds + ds->aggregation_madds, 0);
  // fc: 512 x 1000 + 1000.
  const LayerCost* fc = find_layer(c, "fc");
  ASSERT_NE(fc, nullptr);
  EXPECT_EQ(fc->params, 513000);
  EXPECT_EQ(fc->conv_madds, 512000);
}

TEST(Counts, HandComputedMobileNetV2DepthwiseLayer) {
  // dy_mobilenet_v2_x1_0 features.2.conv.1.0: the depthwise 3x3 of the first 24-channel block,
  // 96 channels (16 x 6), groups 96, stride 2, input 112x112 -> 56x56; hidden = 96 / 4 = 24.
  const ModelCost c = zoo("dy_mobilenet_v2_x1_0").cost(224, 224);
  const LayerCost* l = find_layer(c, "features.2.conv.1.0");
  const LayerCost* bn = find_layer(c, "features.2.conv.1.1");
  ASSERT_NE(l, nullptr);
  ASSERT_NE(bn, nullptr);
  EXPECT_EQ(l->params, 4 * 96 * 9 + (24 * 96 + 24) + (4 * 24 + 4));
  EXPECT_EQ(bn->params, 2 * 96);
  EXPECT_EQ(l->params + bn->params, 6076);
  EXPECT_EQ(l->conv_madds, 56 * 56 * 96 * 9);
  EXPECT_EQ(l->attention_madds, 112 * 112 * 96 + 96 * 24 + 24 * 4);
  EXPECT_EQ(l->aggregation_madds, 4 * 96 * 9);
  // Its static twin, and the static stem (3 -> 32, 3x3/2, 224 -> 112) and last conv (320 -> 1280
  // at 7x7), which stay static under the default policy.
  const ModelCost s = zoo("mobilenet_v2_x1_0").cost(224, 224);
  const LayerCost* ls = find_layer(s, "features.2.conv.1.0");
  ASSERT_NE(ls, nullptr);
  EXPECT_EQ(ls->params, 96 * 9);
  EXPECT_EQ(ls->madds(), 56 * 56 * 96 * 9);
  ASSERT_NE(find_layer(s, "features.2.conv.1.1"), nullptr);
  EXPECT_EQ(find_layer(s, "features.2.conv.1.1")->params, 2 * 96);
  const LayerCost* stem = find_layer(c, "features.0.0");
  ASSERT_NE(stem, nullptr);
  EXPECT_EQ(stem->params, 32 * 3 * 9);
  EXPECT_EQ(stem->madds(), 112 * 112 * 32 * 3 * 9);
  ASSERT_NE(find_layer(c, "features.0.1"), nullptr);
  EXPECT_EQ(find_layer(c, "features.0.1")->params, 2 * 32);
  const LayerCost* last = find_layer(c, "features.18.0");
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(last->params, 1280 * 320);
  EXPECT_EQ(last->madds(), 7 * 7 * 1280 * 320);
  ASSERT_NE(find_layer(c, "features.18.1"), nullptr);
  EXPECT_EQ(find_layer(c, "features.18.1")->params, 2 * 1280);
  // classifier.1: Linear(1280 -> 1000).
  const LayerCost* fc = find_layer(c, "classifier.1");
  ASSERT_NE(fc, nullptr);
  EXPECT_EQ(fc->params, 1280 * 1000 + 1000);
  EXPECT_EQ(fc->conv_madds, 1280 * 1000);
}

TEST(Counts, HandComputedMobileNetV3SqueezeExcite) {
  // dy_mobilenet_v3_small features.1: depthwise 3x3/2 on 16 channels (224 -> 112 -> 56), then
  // squeeze-excite 16 -> 8 -> 16 (1x1 convs with bias) at 1x1 after the pooling: separate
  // entries features.1.block.1.fc1 / fc2, static (no attention) in the dynamic model.
  const ModelCost c = zoo("dy_mobilenet_v3_small").cost(224, 224);
  const LayerCost* fc1 = find_layer(c, "features.1.block.1.fc1");
  const LayerCost* fc2 = find_layer(c, "features.1.block.1.fc2");
  ASSERT_NE(fc1, nullptr);
  ASSERT_NE(fc2, nullptr);
  EXPECT_EQ(fc1->params, 8 * 16 + 8);
  EXPECT_EQ(fc1->conv_madds, 8 * 16);
  EXPECT_EQ(fc2->params, 16 * 8 + 16);
  EXPECT_EQ(fc2->conv_madds, 16 * 8);
  EXPECT_EQ(fc1->attention_madds + fc1->aggregation_madds + fc2->attention_madds + fc2->aggregation_madds, 0);
  const LayerCost* dw = find_layer(c, "features.1.block.0.0");
  ASSERT_NE(dw, nullptr);
  EXPECT_EQ(dw->params, 4 * 16 * 9 + (4 * 16 + 4) + (4 * 4 + 4));  // hidden = 16 / 4
  EXPECT_EQ(dw->conv_madds, 56 * 56 * 16 * 9);
  EXPECT_EQ(dw->attention_madds, 112 * 112 * 16 + 16 * 4 + 4 * 4);
}

// =============================================================================================
// Policies (seen through the saved tensor names: dynamic weights are 5-D)
// =============================================================================================

/// Every site the policy was asked about is a convolution node of `m` with the site's
/// channels, kernel, stride and groups ("same" padding k / 2), dynamic exactly when `decide`
/// says so; and every convolution node but the squeeze-excite FCs was asked about.
void expect_sites_are_the_graphs_convs(const Model<float>& m, const std::map<std::string, ConvSite>& sites,
                                       bool (*decide)(const ConvSite&)) {
  for (const auto& [name, site] : sites) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(m.has_node(name));
    const dynconv::ConvGeometry g = geometry_of(m, name);
    EXPECT_EQ(g.in_channels, site.in_channels);
    EXPECT_EQ(g.out_channels, site.out_channels);
    EXPECT_EQ(g.kernel_h, site.kernel);
    EXPECT_EQ(g.kernel_w, site.kernel);
    EXPECT_EQ(g.stride_h, site.stride);
    EXPECT_EQ(g.stride_w, site.stride);
    EXPECT_EQ(g.groups, site.groups);
    EXPECT_EQ(g.pad_h, site.kernel / 2);
    EXPECT_EQ(g.pad_w_end, site.kernel / 2);
    EXPECT_EQ(is_dynamic_conv(m, name), decide(site));
    // Its BatchNorm node is its only reader, and folded into it.
    std::vector<std::string> readers;
    for (const std::string& n : m.node_names())
      for (const std::string& v : m.node_inputs(n))
        if (v == name) readers.push_back(n);
    ASSERT_EQ(readers.size(), 1u);
    const auto* bn = dynamic_cast<const BatchNorm2d<float>*>(&m.module(readers[0]));
    ASSERT_NE(bn, nullptr) << readers[0];
    EXPECT_EQ(bn->num_features(), site.out_channels);
    EXPECT_TRUE(bn->folded()) << readers[0];
  }
  std::set<std::string> asked, convs = conv_nodes(m, true);
  for (const std::string& n : conv_nodes(m, false)) convs.insert(n);
  for (const auto& kv : sites) asked.insert(kv.first);
  EXPECT_EQ(asked, convs);
}

TEST(Policy, DefaultMobileNetV2) {
  for (const std::string name : {"dy_mobilenet_v2_x1_0", "dy_mobilenet_v2_x0_35"}) {
    SCOPED_TRACE(name);
    const Model<float>& m = zoo(name);
    const Checkpoint& c = saved(name);
    EXPECT_EQ(rank_of(c, "features.0.0.weight"), 4u);       // stem
    EXPECT_EQ(rank_of(c, "features.1.conv.0.0.weight"), 5u);  // depthwise (t = 1)
    EXPECT_EQ(rank_of(c, "features.1.conv.1.weight"), 5u);    // project (t = 1)
    EXPECT_EQ(rank_of(c, "features.2.conv.0.0.weight"), 5u);  // expand
    EXPECT_EQ(rank_of(c, "features.2.conv.1.0.weight"), 5u);  // depthwise
    EXPECT_EQ(rank_of(c, "features.2.conv.2.weight"), 5u);    // project
    EXPECT_EQ(rank_of(c, "features.17.conv.2.weight"), 5u);
    EXPECT_EQ(rank_of(c, "features.18.0.weight"), 4u);  // last 1x1
    EXPECT_EQ(rank_of(c, "classifier.1.weight"), 2u);
    // 1 block x 2 convs + 16 blocks x 3 convs dynamic; stem and last static.
    EXPECT_EQ(conv_weights(c, 5).size(), 50u);
    EXPECT_THAT(conv_weights(c, 4), ElementsAre("features.0.0", "features.18.0"));
    // The graph: torchvision's 19 blocks features.0 .. features.18; its DynamicConv2d nodes are
    // the convolutions saved as dynamic; the stem and the last 1x1 are Conv2d nodes.
    EXPECT_EQ(feature_blocks(m).size(), 19u);
    EXPECT_EQ(conv_nodes(m, true), conv_weights(c, 5));
    EXPECT_EQ(conv_nodes(m, false), conv_weights(c, 4));
    EXPECT_TRUE(is_static_conv(m, "features.0.0"));
    EXPECT_TRUE(is_static_conv(m, "features.18.0"));
    EXPECT_TRUE(is_dynamic_conv(m, "features.2.conv.1.0"));
    // Roles, through the policy's callback: 52 convolutions (stem, 1 + 16 x 3 + 2, last).
    std::map<std::string, ConvSite> sites;
    const ModelPtr r =
        make(name, ModelOptions().policy(recording(sites, dynconv::models::mobilenet_v2_default_policy)));
    EXPECT_EQ(sites.size(), 52u);
    EXPECT_EQ(sites.at("features.0.0").role, ConvRole::Stem);
    EXPECT_EQ(sites.at("features.18.0").role, ConvRole::Last);
    EXPECT_EQ(sites.at("features.1.conv.0.0").role, ConvRole::Depthwise);
    EXPECT_EQ(sites.at("features.1.conv.1").role, ConvRole::Project);
    EXPECT_EQ(sites.at("features.2.conv.0.0").role, ConvRole::Expand);
    expect_sites_are_the_graphs_convs(*r, sites, dynconv::models::mobilenet_v2_default_policy);
    expect_sites_are_the_graphs_convs(m, sites, dynconv::models::mobilenet_v2_default_policy);
    // Channels: the stem has make_divisible(32 x width) outputs, the last conv 1280.
    const double width = name == "dy_mobilenet_v2_x1_0" ? 1.0 : 0.35;
    EXPECT_EQ(geometry_of(m, "features.0.0").out_channels, divisible8(32 * width));
    EXPECT_EQ(geometry_of(m, "features.18.0").out_channels, 1280);
    EXPECT_EQ(m.module<dynconv::Linear<float>>("classifier.1").options().in_features(), 1280);
  }
  // x1.0's first 24-channel block: expand 16 -> 96, depthwise 96 (groups 96) stride 2, project
  // 96 -> 24, each followed by its BatchNorm node.
  const Model<float>& x1 = zoo("dy_mobilenet_v2_x1_0");
  const dynconv::ConvGeometry dw = x1.module<DynamicConv2d<float>>("features.2.conv.1.0").geometry();
  EXPECT_EQ(dw.in_channels, 96);
  EXPECT_EQ(dw.out_channels, 96);
  EXPECT_EQ(dw.groups, 96);
  EXPECT_EQ(dw.stride_h, 2);
  EXPECT_EQ(dw.kernel_h, 3);
  EXPECT_EQ(x1.module<DynamicConv2d<float>>("features.2.conv.0.0").geometry().in_channels, 16);
  EXPECT_EQ(x1.module<DynamicConv2d<float>>("features.2.conv.2").geometry().out_channels, 24);
  EXPECT_EQ(x1.module<BatchNorm2d<float>>("features.2.conv.1.1").num_features(), 96);
  EXPECT_EQ(x1.module<BatchNorm2d<float>>("features.2.conv.3").num_features(), 24);
  EXPECT_THAT(x1.node_inputs("features.2.conv.1.1"), ElementsAre("features.2.conv.1.0"));
  // Interchange format of one dynamic conv (x1.0 features.2.conv.0.0: 1x1 16 -> 96, hidden 4).
  const Checkpoint& c = saved("dy_mobilenet_v2_x1_0");
  const std::string p = "features.2.conv.0.0";
  EXPECT_THAT(shape_of(c, p + ".weight"), ElementsAre(4, 96, 16, 1, 1));
  EXPECT_THAT(shape_of(c, p + ".attention.fc1.weight"), ElementsAre(4, 16));
  EXPECT_THAT(shape_of(c, p + ".attention.fc1.bias"), ElementsAre(4));
  EXPECT_THAT(shape_of(c, p + ".attention.fc2.weight"), ElementsAre(4, 4));
  EXPECT_THAT(shape_of(c, p + ".attention.fc2.bias"), ElementsAre(4));
  EXPECT_EQ(numel(shape_of(c, p + ".attention.temperature")), 1);
  EXPECT_EQ(c.count(p + ".bias"), 0u);  // torchvision's conv before a BN has no bias
  EXPECT_THAT(shape_of(c, "features.2.conv.1.0.weight"), ElementsAre(4, 96, 1, 3, 3));
  EXPECT_THAT(shape_of(c, "features.2.conv.3.running_var"), ElementsAre(24));
}

TEST(Policy, DefaultMobileNetV3Small) {
  const Model<float>& m = zoo("dy_mobilenet_v3_small");
  const Checkpoint& c = saved("dy_mobilenet_v3_small");
  EXPECT_EQ(rank_of(c, "features.0.0.weight"), 4u);         // stem
  EXPECT_EQ(rank_of(c, "features.1.block.0.0.weight"), 5u);  // depthwise
  EXPECT_EQ(rank_of(c, "features.1.block.1.fc1.weight"), 4u);  // SE, static 1x1 conv
  EXPECT_EQ(rank_of(c, "features.1.block.1.fc2.weight"), 4u);
  EXPECT_EQ(rank_of(c, "features.1.block.2.0.weight"), 5u);  // project
  EXPECT_EQ(rank_of(c, "features.2.block.0.0.weight"), 5u);  // expand
  EXPECT_EQ(rank_of(c, "features.12.0.weight"), 5u);         // 96 -> 576
  EXPECT_EQ(rank_of(c, "classifier.0.weight"), 2u);
  EXPECT_EQ(rank_of(c, "classifier.3.weight"), 2u);
  // torchvision shapes: SE of block 1 squeezes 16 -> 8 channels; features.12 is 96 -> 576.
  EXPECT_THAT(shape_of(c, "features.1.block.1.fc1.weight"), ElementsAre(8, 16, 1, 1));
  EXPECT_THAT(shape_of(c, "features.12.0.weight"), ElementsAre(4, 576, 96, 1, 1));
  EXPECT_THAT(shape_of(c, "features.12.0.attention.fc1.weight"), ElementsAre(24, 96));
  EXPECT_THAT(shape_of(c, "features.4.block.1.0.weight"), ElementsAre(4, 96, 1, 5, 5));
  // Block 1 (no expansion): 2 convs; blocks 2..11: 3 each; + features.12 = 33 dynamic.
  EXPECT_EQ(conv_weights(c, 5).size(), 33u);
  EXPECT_THAT(conv_weights(c, 4), ElementsAre("features.0.0"));
  std::size_t se = 0;
  for (const auto& [name, e] : c)
    if (ends_with(name, ".fc1.weight") && name.find("attention") == std::string::npos) {
      ++se;
      EXPECT_EQ(e.shape.size(), 4u) << name;
    }
  EXPECT_EQ(se, 9u);  // blocks 1, 4..11 have squeeze-excite
  // The graph: 13 blocks features.0 .. features.12; the stem static, features.12 dynamic with
  // its BatchNorm at torchvision's MobileNetV3 eps 0.001.
  EXPECT_EQ(feature_blocks(m).size(), 13u);
  EXPECT_EQ(conv_nodes(m, true), conv_weights(c, 5));
  EXPECT_EQ(conv_nodes(m, false), conv_weights(c, 4));
  EXPECT_TRUE(is_static_conv(m, "features.0.0"));
  EXPECT_TRUE(is_dynamic_conv(m, "features.12.0"));
  EXPECT_DOUBLE_EQ(m.module<BatchNorm2d<float>>("features.12.1").options().eps(), 0.001);
  EXPECT_DOUBLE_EQ(m.module<BatchNorm2d<float>>("features.0.1").options().eps(), 0.001);
  const dynconv::ConvGeometry last = geometry_of(m, "features.12.0");
  EXPECT_EQ(last.in_channels, 96);
  EXPECT_EQ(last.out_channels, 576);
  // The squeeze-excite FCs are static 1x1 Conv2d nodes with a bias, not policy sites.
  std::size_t se_nodes = 0;
  for (const std::string& n : m.node_names())
    if (n.size() > 4 && (n.compare(n.size() - 4, 4, ".fc1") == 0 || n.compare(n.size() - 4, 4, ".fc2") == 0)) {
      ++se_nodes;
      const auto& fc = m.module<Conv2d<float>>(n);
      EXPECT_TRUE(fc.bias_is_parameter()) << n;
      EXPECT_EQ(fc.geometry().kernel_h, 1) << n;
    }
  EXPECT_EQ(se_nodes, 18u);
  EXPECT_EQ(m.module<Conv2d<float>>("features.1.block.1.fc1").geometry().out_channels, 8);
  // Roles, through the policy's callback: the stem, 33 dynamic convolutions.
  std::map<std::string, ConvSite> sites;
  const ModelPtr r = make("dy_mobilenet_v3_small",
                          ModelOptions().policy(recording(sites, dynconv::models::mobilenet_v3_default_policy)));
  EXPECT_EQ(sites.size(), 34u);
  EXPECT_EQ(sites.at("features.0.0").role, ConvRole::Stem);
  EXPECT_EQ(sites.at("features.12.0").role, ConvRole::Last);
  EXPECT_EQ(sites.at("features.1.block.0.0").role, ConvRole::Depthwise);
  EXPECT_EQ(sites.at("features.1.block.2.0").role, ConvRole::Project);
  EXPECT_EQ(sites.at("features.2.block.0.0").role, ConvRole::Expand);
  EXPECT_EQ(sites.at("features.4.block.1.0").kernel, 5);
  EXPECT_EQ(sites.at("features.4.block.1.0").stride, 2);
  expect_sites_are_the_graphs_convs(*r, sites, dynconv::models::mobilenet_v3_default_policy);
  expect_sites_are_the_graphs_convs(m, sites, dynconv::models::mobilenet_v3_default_policy);
}

TEST(Policy, DefaultResNet) {
  for (const Index blocks : {1, 2}) {
    const std::string name = blocks == 1 ? "dy_resnet10" : "dy_resnet18";
    SCOPED_TRACE(name);
    const Model<float>& m = zoo(name);
    const Checkpoint& c = saved(name);
    EXPECT_EQ(rank_of(c, "conv1.weight"), 4u);
    EXPECT_EQ(rank_of(c, "layer1.0.conv1.weight"), 5u);
    EXPECT_EQ(rank_of(c, "layer1.0.conv2.weight"), 5u);
    EXPECT_EQ(rank_of(c, "layer2.0.downsample.0.weight"), 4u);
    EXPECT_EQ(rank_of(c, "layer4.0.downsample.0.weight"), 4u);
    EXPECT_EQ(rank_of(c, "layer4.0.conv2.weight"), 5u);
    EXPECT_EQ(rank_of(c, "fc.weight"), 2u);
    EXPECT_EQ(conv_weights(c, 5).size(), static_cast<std::size_t>(8 * blocks));
    EXPECT_THAT(conv_weights(c, 4),
                ElementsAre("conv1", "layer2.0.downsample.0", "layer3.0.downsample.0",
                            "layer4.0.downsample.0"));
    EXPECT_THAT(shape_of(c, "layer3.0.conv1.weight"), ElementsAre(4, 256, 128, 3, 3));
    EXPECT_THAT(shape_of(c, "layer3.0.conv1.attention.fc1.weight"), ElementsAre(32, 128));
    EXPECT_THAT(shape_of(c, "layer3.0.conv1.attention.fc2.weight"), ElementsAre(4, 32));
    // The graph: the stem conv1 -> bn1 -> relu -> maxpool, then 4 x blocks basic blocks (each
    // block's output is the ReLU node named by the block, "layer2.0"), avgpool, fc.
    EXPECT_TRUE(is_static_conv(m, "conv1"));
    EXPECT_EQ(m.module<BatchNorm2d<float>>("bn1").num_features(), 64);
    EXPECT_NO_THROW(m.module<dynconv::MaxPool2d<float>>("maxpool"));
    std::size_t block_outputs = 0;
    for (int stage = 1; stage <= 4; ++stage)
      for (Index b = 0; b < blocks; ++b) {
        const std::string p = "layer" + std::to_string(stage) + "." + std::to_string(b);
        EXPECT_NO_THROW(m.module<dynconv::ReLU<float>>(p)) << p;
        block_outputs += m.has_node(p);
      }
    EXPECT_EQ(block_outputs, static_cast<std::size_t>(4 * blocks));
    EXPECT_FALSE(m.has_node("layer1." + std::to_string(blocks)));
    EXPECT_EQ(conv_nodes(m, true), conv_weights(c, 5));
    EXPECT_EQ(conv_nodes(m, false), conv_weights(c, 4));
    EXPECT_EQ(geometry_of(m, "conv1").kernel_h, 7);
    EXPECT_EQ(geometry_of(m, "conv1").stride_h, 2);
    EXPECT_EQ(geometry_of(m, "layer2.0.conv1").stride_h, 2);
    EXPECT_EQ(geometry_of(m, "layer2.0.conv2").stride_h, 1);
    EXPECT_EQ(geometry_of(m, "layer2.0.downsample.0").stride_h, 2);
    EXPECT_EQ(geometry_of(m, "layer4.0.conv1").out_channels, 512);
    // Roles, through the policy's callback: 1 stem + 4 x blocks x 2 + 3 downsamples.
    std::map<std::string, ConvSite> sites;
    const ModelPtr r = make(name, ModelOptions().policy(recording(sites, dynconv::models::resnet_default_policy)));
    EXPECT_EQ(sites.size(), static_cast<std::size_t>(1 + 8 * blocks + 3));
    EXPECT_EQ(sites.at("conv1").role, ConvRole::Stem);
    EXPECT_EQ(sites.at("layer1.0.conv1").role, ConvRole::BlockConv);
    EXPECT_EQ(sites.at("layer3.0.downsample.0").role, ConvRole::Downsample);
    expect_sites_are_the_graphs_convs(*r, sites, dynconv::models::resnet_default_policy);
    expect_sites_are_the_graphs_convs(m, sites, dynconv::models::resnet_default_policy);
  }
}

TEST(Policy, StaticModelsHaveTorchvisionNamesOnly) {
  // The static model saves torchvision's state_dict names: the dynamic twin's names minus the
  // attention tensors, with 4-D conv weights.
  for (const std::string base : {"mobilenet_v2_x0_35", "mobilenet_v3_small", "resnet10"}) {
    SCOPED_TRACE(base);
    const Checkpoint &st = saved(base), &dy = saved("dy_" + base);
    std::set<std::string> dy_names;
    for (const auto& [name, e] : dy)
      if (name.find(".attention.") == std::string::npos) dy_names.insert(name);
    std::set<std::string> st_names;
    for (const auto& [name, e] : st) {
      st_names.insert(name);
      EXPECT_NE(e.shape.size(), 5u) << name;
      EXPECT_EQ(name.find("attention"), std::string::npos) << name;
    }
    EXPECT_EQ(st_names, dy_names);
  }
}

TEST(Policy, NamedPolicies) {
  auto with = [](const std::string& model, const std::string& policy) {
    return saved(*make(model, ModelOptions().policy(dynconv::models::policy_by_name(policy))));
  };
  {  // pointwise_only: 1x1 (groups 1) convs but the stem; depthwise static, features.18 dynamic.
    const Checkpoint c = with("dy_mobilenet_v2_x0_35", "pointwise_only");
    EXPECT_EQ(rank_of(c, "features.0.0.weight"), 4u);
    EXPECT_EQ(rank_of(c, "features.1.conv.0.0.weight"), 4u);
    EXPECT_EQ(rank_of(c, "features.1.conv.1.weight"), 5u);
    EXPECT_EQ(rank_of(c, "features.2.conv.0.0.weight"), 5u);
    EXPECT_EQ(rank_of(c, "features.2.conv.1.0.weight"), 4u);
    EXPECT_EQ(rank_of(c, "features.2.conv.2.weight"), 5u);
    EXPECT_EQ(rank_of(c, "features.18.0.weight"), 5u);
    EXPECT_EQ(conv_weights(c, 5).size(), 34u);  // 17 projects + 16 expands + last
    const Checkpoint r = with("dy_resnet10", "pointwise_only");
    EXPECT_EQ(rank_of(r, "conv1.weight"), 4u);
    EXPECT_EQ(rank_of(r, "layer1.0.conv1.weight"), 4u);
    EXPECT_EQ(rank_of(r, "layer2.0.downsample.0.weight"), 5u);
    EXPECT_EQ(conv_weights(r, 5).size(), 3u);
    const Checkpoint v3 = with("dy_mobilenet_v3_small", "pointwise_only");
    EXPECT_EQ(rank_of(v3, "features.1.block.0.0.weight"), 4u);
    EXPECT_EQ(rank_of(v3, "features.12.0.weight"), 5u);
    EXPECT_EQ(rank_of(v3, "features.1.block.1.fc1.weight"), 4u);
  }
  {  // all_but_stem
    const Checkpoint c = with("dy_mobilenet_v2_x0_35", "all_but_stem");
    EXPECT_EQ(rank_of(c, "features.0.0.weight"), 4u);
    EXPECT_EQ(rank_of(c, "features.18.0.weight"), 5u);
    EXPECT_EQ(conv_weights(c, 5).size(), 51u);
    const Checkpoint r = with("dy_resnet10", "all_but_stem");
    EXPECT_THAT(conv_weights(r, 4), ElementsAre("conv1"));
    EXPECT_EQ(conv_weights(r, 5).size(), 11u);
  }
  {  // none: the static network, cost included.
    for (const std::string base : {"mobilenet_v2_x0_35", "resnet10"}) {
      const ModelPtr m =
          make("dy_" + base, ModelOptions().policy(dynconv::models::policy_by_name("none")));
      EXPECT_TRUE(conv_weights(saved(*m), 5).empty());
      const LayerCost c = m->cost(224, 224).total, s = zoo(base).cost(224, 224).total;
      EXPECT_EQ(c.params, s.params);
      EXPECT_EQ(c.madds(), s.madds());
      EXPECT_EQ(c.attention_madds + c.aggregation_madds, 0);
    }
  }
  {  // default: the family's own.
    const Checkpoint d = with("dy_resnet10", "default");
    EXPECT_EQ(conv_weights(d, 5), conv_weights(saved("dy_resnet10"), 5));
  }
}

TEST(Policy, UnknownPolicyNameListsValidOnes) {
  EXPECT_THAT([] { dynconv::models::policy_by_name("bogus"); },
              ThrowsMessage<OptionsError>(AllOf(HasSubstr("bogus"), HasSubstr("default"),
                                                HasSubstr("all_but_stem"),
                                                HasSubstr("pointwise_only"), HasSubstr("none"))));
}

TEST(Policy, CustomLambdaSeesEverySiteAndDecides) {
  std::vector<ConvSite> sites;
  const dynconv::DynamicPolicy layer4_only = [&sites](const ConvSite& s) {
    sites.push_back(s);
    return s.name.rfind("layer4.", 0) == 0 && s.role == ConvRole::BlockConv;
  };
  const ModelPtr m = make("dy_resnet10", ModelOptions().policy(layer4_only));
  const Checkpoint c = saved(*m);
  EXPECT_THAT(conv_weights(c, 5), ElementsAre("layer4.0.conv1", "layer4.0.conv2"));
  // 1 stem + 4 blocks x 2 + 3 downsamples = 12 sites, with torchvision's names and shapes.
  ASSERT_EQ(sites.size(), 12u);
  std::map<std::string, ConvSite> by_name;
  for (const ConvSite& s : sites) by_name.emplace(s.name, s);
  ASSERT_EQ(by_name.size(), 12u);
  const ConvSite& stem = by_name.at("conv1");
  EXPECT_EQ(stem.role, ConvRole::Stem);
  EXPECT_EQ(stem.in_channels, 3);
  EXPECT_EQ(stem.out_channels, 64);
  EXPECT_EQ(stem.kernel, 7);
  EXPECT_EQ(stem.stride, 2);
  const ConvSite& ds = by_name.at("layer2.0.downsample.0");
  EXPECT_EQ(ds.role, ConvRole::Downsample);
  EXPECT_EQ(ds.in_channels, 64);
  EXPECT_EQ(ds.out_channels, 128);
  EXPECT_EQ(ds.kernel, 1);
  EXPECT_EQ(ds.stride, 2);
  const ConvSite& b = by_name.at("layer3.0.conv1");
  EXPECT_EQ(b.role, ConvRole::BlockConv);
  EXPECT_EQ(b.in_channels, 128);
  EXPECT_EQ(b.out_channels, 256);
  EXPECT_EQ(b.kernel, 3);
  EXPECT_EQ(b.stride, 2);
  EXPECT_EQ(b.groups, 1);

  // MobileNetV2 sites carry depthwise groups and roles.
  sites.clear();
  make("dy_mobilenet_v2_x1_0", ModelOptions().policy(layer4_only));
  by_name.clear();
  for (const ConvSite& s : sites) by_name.emplace(s.name, s);
  EXPECT_EQ(sites.size(), 52u);
  const ConvSite& dw = by_name.at("features.2.conv.1.0");
  EXPECT_EQ(dw.role, ConvRole::Depthwise);
  EXPECT_EQ(dw.groups, 96);
  EXPECT_EQ(dw.stride, 2);
  EXPECT_EQ(by_name.at("features.2.conv.0.0").role, ConvRole::Expand);
  EXPECT_EQ(by_name.at("features.2.conv.2").role, ConvRole::Project);
  EXPECT_EQ(by_name.at("features.18.0").role, ConvRole::Last);
  EXPECT_EQ(by_name.at("features.0.0").role, ConvRole::Stem);

  // A custom policy works in the forward too.
  const Tensor2<float> y = m->forward(random_images(1, 32, 32, 3));
  EXPECT_TRUE(logits_ok(y));

  // A static model never asks the policy.
  sites.clear();
  const ModelPtr st = make("resnet10", ModelOptions().policy(layer4_only));
  EXPECT_TRUE(sites.empty());
  EXPECT_TRUE(conv_weights(saved(*st), 5).empty());
}

TEST(Policy, KernelsReductionAndTemperatureOptions) {
  const ModelPtr m =
      make("dy_resnet10", ModelOptions().kernels(2).reduction(8).temperature(0.5));
  const Checkpoint c = saved(*m);
  EXPECT_THAT(shape_of(c, "layer1.0.conv1.weight"), ElementsAre(2, 64, 64, 3, 3));
  EXPECT_THAT(shape_of(c, "layer1.0.conv1.attention.fc1.weight"), ElementsAre(8, 64));
  EXPECT_THAT(shape_of(c, "layer1.0.conv1.attention.fc2.weight"), ElementsAre(2, 8));
  EXPECT_DOUBLE_EQ(c.at("layer1.0.conv1.attention.temperature").values.at(0), 0.5);
  const Checkpoint h = saved(*make("dy_resnet10", ModelOptions().min_hidden(32)));
  EXPECT_THAT(shape_of(h, "layer1.0.conv1.attention.fc1.weight"), ElementsAre(32, 64));
  EXPECT_THAT(shape_of(h, "layer4.0.conv2.attention.fc1.weight"), ElementsAre(128, 512));
}

// =============================================================================================
// Loading and saving
// =============================================================================================

TEST(Load, SaveThenLoadGivesIdenticalLogits) {
  for (const std::string name : {"resnet10", "mobilenet_v3_small", "dy_mobilenet_v3_small",
                                 "dy_mobilenet_v2_x0_35"}) {
    SCOPED_TRACE(name);
    const Tensor4<float> x = random_images(2, 48, 40, 7);
    const ModelPtr a = make(name);
    const Tensor2<float> fresh = a->forward(x);
    a->load(random_file(name, 11));
    const Tensor2<float> ya = a->forward(x);
    EXPECT_TRUE(logits_ok(ya));
    EXPECT_GT(rel_error(ya, fresh), 1e-2);  // the load changed the function

    const SafeTensors f = saved_file(*a);
    const ModelPtr b = make(name);
    b->load(f);
    EXPECT_EQ(rel_error(b->forward(x), ya), 0.0);
    EXPECT_EQ(f.metadata().at("model"), name);
    EXPECT_EQ(f.metadata().at("num_classes"), "1000");
  }
}

TEST(Load, MissingTensorIsFormatErrorWithNameAndShape) {
  const ModelPtr m = make("dy_resnet10");
  const std::pair<const char*, const char*> cases[] = {
      {"layer1.0.conv1.weight", "[4, 64, 64, 3, 3]"},
      {"layer3.0.bn2.running_var", "[256]"},
      {"layer2.0.conv2.attention.fc2.bias", "[4]"},
      {"layer4.0.downsample.0.weight", "[512, 256, 1, 1]"}};
  for (const auto& [name, shape] : cases) {
    Checkpoint c = saved("dy_resnet10");
    ASSERT_EQ(c.erase(name), 1u) << name;
    EXPECT_THAT([&] { m->load(write(c)); },
                ThrowsMessage<FormatError>(AllOf(HasSubstr("ckpt.safetensors"),
                                                 HasSubstr(std::string("'") + name + "'"),
                                                 HasSubstr(shape))));
  }
  // The SE FCs of MobileNetV3 are 1x1 convs in the file.
  const ModelPtr v3 = make("mobilenet_v3_small");
  Checkpoint f = saved("mobilenet_v3_small");
  f.erase("features.1.block.1.fc1.weight");
  EXPECT_THAT([&] { v3->load(write(f)); },
              ThrowsMessage<FormatError>(AllOf(HasSubstr("'features.1.block.1.fc1.weight'"),
                                               HasSubstr("[8, 16, 1, 1]"))));
}

TEST(Load, UnexpectedTensorsAreListed) {
  const ModelPtr m = make("resnet10");
  Checkpoint c = saved("resnet10");
  c["layer5.0.conv1.weight"] = Entry{{2, 2}, {1, 2, 3, 4}};
  c["fc2.bias"] = Entry{{3}, {1, 2, 3}};
  EXPECT_THAT([&] { m->load(write(c)); },
              ThrowsMessage<FormatError>(AllOf(HasSubstr("ckpt.safetensors"),
                                               HasSubstr("2 unexpected tensors"),
                                               HasSubstr("'layer5.0.conv1.weight'"),
                                               HasSubstr("'fc2.bias'"))));
  // Attention tensors are unexpected where the policy made the conv static.
  const ModelPtr none = make("dy_mobilenet_v2_x0_35",
                             ModelOptions().policy(dynconv::models::policy_by_name("none")));
  Checkpoint s = saved(*none);
  s["features.2.conv.0.0.attention.fc1.weight"] = Entry{{4, 16}, std::vector<float>(64, 0.1f)};
  EXPECT_THAT([&] { none->load(write(s)); },
              ThrowsMessage<FormatError>(
                  AllOf(HasSubstr("1 unexpected tensor"),
                        HasSubstr("'features.2.conv.0.0.attention.fc1.weight'"))));
}

TEST(Load, WrongShapeIsShapeErrorWithBothShapes) {
  const ModelPtr m = make("dy_resnet10");
  Checkpoint c = saved("dy_resnet10");
  c["fc.weight"] = Entry{{1000, 256}, std::vector<float>(256000, 0.01f)};
  EXPECT_THAT([&] { m->load(write(c)); },
              ThrowsMessage<ShapeError>(AllOf(HasSubstr("'fc.weight'"), HasSubstr("[1000, 256]"),
                                              HasSubstr("[1000, 512]"))));
  Checkpoint d = saved("dy_resnet10");
  d["layer1.0.conv2.attention.fc1.weight"] = Entry{{64, 16}, std::vector<float>(1024, 0.01f)};
  EXPECT_THAT([&] { m->load(write(d)); },
              ThrowsMessage<ShapeError>(AllOf(HasSubstr("'layer1.0.conv2.attention.fc1.weight'"),
                                              HasSubstr("[64, 16]"), HasSubstr("[16, 64]"))));
}

TEST(Load, NonFiniteWeightIsFormatErrorNamingTheTensor) {
  const ModelPtr m = make("dy_resnet10");
  Checkpoint c = saved("dy_resnet10");
  std::vector<float> w(1000 * 512, 0.01f);
  w[7] = std::numeric_limits<float>::quiet_NaN();
  c["fc.weight"] = Entry{{1000, 512}, w};
  EXPECT_THAT([&] { m->load(write(c)); },
              ThrowsMessage<FormatError>(AllOf(HasSubstr("'fc.weight'"), HasSubstr("nan"),
                                               HasSubstr("element 7"))));
  Checkpoint d = saved("dy_resnet10");
  d["layer1.0.conv1.attention.temperature"] =
      Entry{{}, {std::numeric_limits<float>::infinity()}};
  EXPECT_THAT([&] { m->load(write(d)); },
              ThrowsMessage<FormatError>(HasSubstr("'layer1.0.conv1.attention.temperature'")));
}

// Finite tensors whose BatchNorm folds to infinity (3e38 / sqrt(0 + eps)) must not load into
// a model that computes NaN: found by fuzzing (tests/fuzz/corpus/model_load/edge_huge_bn_weight).
TEST(Load, BatchNormThatFoldsToInfinityIsFormatError) {
  for (const std::string name : {"resnet10", "dy_resnet10"}) {
    const ModelPtr m = make(name);
    Checkpoint c = saved(name);
    c["layer1.0.bn1.weight"].values[3] = 3e38f;
    c["layer1.0.bn1.running_var"].values[3] = 0.0f;
    EXPECT_THAT([&] { m->load(write(c)); },
                ThrowsMessage<FormatError>(AllOf(HasSubstr("ckpt.safetensors"), HasSubstr("'layer1.0.bn1'"),
                                                 HasSubstr("'layer1.0.conv1'"), HasSubstr("overflows float"))))
        << name;
  }
}

TEST(Load, NumBatchesTrackedIsAcceptedAndIgnored) {
  for (const std::string name : {"dy_mobilenet_v3_small", "resnet10"}) {
    SCOPED_TRACE(name);
    const ModelPtr a = make(name), b = make(name);
    const Checkpoint c = random_checkpoint(name, 5);
    Checkpoint with = c;
    std::size_t bns = 0;
    for (const auto& [n, e] : c)
      if (ends_with(n, ".running_mean")) {
        with[n.substr(0, n.size() - 13) + ".num_batches_tracked"] = Entry{{}, {12345}, DType::I64};
        ++bns;
      }
    EXPECT_GT(bns, 10u);
    a->load(write(c));
    b->load(write(with));
    const Tensor4<float> x = random_images(1, 32, 32, 8);
    EXPECT_EQ(rel_error(b->forward(x), a->forward(x)), 0.0);
  }
}

TEST(Load, StaticAndDynamicCheckpointsDoNotMixInStrictMode) {
  for (const std::string base : {"resnet10", "mobilenet_v2_x0_35"}) {
    SCOPED_TRACE(base);
    const ModelPtr st = make(base), dy = make("dy_" + base);
    const SafeTensors static_file = write(saved(base)), dynamic_file = write(saved("dy_" + base));
    const bool r = base == "resnet10";
    const std::string first = r ? "'layer1.0.conv1.weight'" : "'features.1.conv.0.0.weight'";
    const std::string st_shape = r ? "[64, 64, 3, 3]" : "[16, 1, 3, 3]";
    const std::string dy_shape = r ? "[4, 64, 64, 3, 3]" : "[4, 16, 1, 3, 3]";
    EXPECT_THAT([&] { dy->load(static_file); },
                ThrowsMessage<ShapeError>(
                    AllOf(HasSubstr(first), HasSubstr(st_shape), HasSubstr(dy_shape))));
    EXPECT_THAT([&] { dy->load(static_file, LoadMode::Strict); },
                ThrowsMessage<ShapeError>(HasSubstr(first)));
    EXPECT_THAT([&] { st->load(dynamic_file); },
                ThrowsMessage<ShapeError>(
                    AllOf(HasSubstr(first), HasSubstr(st_shape), HasSubstr(dy_shape))));
  }
}

TEST(Load, WrongNumClassesIsShapeError) {
  const ModelPtr ten = make("dy_mobilenet_v2_x0_35", ModelOptions().num_classes(10));
  const SafeTensors ten_file = write(saved(*ten));
  const ModelPtr full = make("dy_mobilenet_v2_x0_35");
  EXPECT_THAT([&] { full->load(ten_file); },
              ThrowsMessage<ShapeError>(AllOf(HasSubstr("'classifier.1.weight'"),
                                              HasSubstr("[10, 1280]"), HasSubstr("[1000, 1280]"))));
  const ModelPtr r = make("resnet10", ModelOptions().num_classes(10));
  EXPECT_THAT([&] { r->load(write(saved("resnet10"))); },
              ThrowsMessage<ShapeError>(
                  AllOf(HasSubstr("'fc.weight'"), HasSubstr("[1000, 512]"), HasSubstr("[10, 512]"))));
  // And the 10-class file loads into a 10-class model.
  const ModelPtr ten2 = make("dy_mobilenet_v2_x0_35", ModelOptions().num_classes(10));
  EXPECT_NO_THROW(ten2->load(ten_file));
}

TEST(Load, TemperatureIsOptionalAndDefaultsToOne) {
  const std::string name = "dy_mobilenet_v3_small";
  const ModelPtr a = make(name), b = make(name), c = make(name);
  const Checkpoint with = random_checkpoint(name, 10);  // tau = 1 everywhere
  Checkpoint without = with, hot = with;
  std::size_t taus = 0;
  for (const auto& [n, e] : with)
    if (ends_with(n, ".attention.temperature")) {
      without.erase(n);
      hot[n].values = {0.2f};
      ++taus;
    }
  EXPECT_EQ(taus, 33u);
  a->load(write(with));
  b->load(write(without));
  c->load(write(hot));
  const Tensor4<float> x = random_images(2, 32, 32, 12);
  const Tensor2<float> ya = a->forward(x);
  EXPECT_EQ(rel_error(b->forward(x), ya), 0.0);
  EXPECT_GT(rel_error(c->forward(x), ya), 1e-3);  // tau is read
  // And saved back: c's file holds tau = 0.2.
  EXPECT_FLOAT_EQ(saved(*c).at("features.12.0.attention.temperature").values.at(0), 0.2f);
}

/// Folds every BatchNorm of the checkpoint into its convolution by hand (in double), leaving a
/// BatchNorm that is the identity but for its bias: gamma 1, mean 0, var 1 - eps. `eps` is
/// torchvision's: 1e-5, MobileNetV3 1e-3. BN prefixes are found from the conv naming scheme.
Checkpoint fold_by_hand(const Checkpoint& in, double eps) {
  Checkpoint c = in;
  for (const auto& [name, e] : in) {
    if (!ends_with(name, ".running_var")) continue;
    const std::string bn = name.substr(0, name.size() - 12);
    // The conv of a BN, torchvision's naming: "bnX" -> "convX", "<p>.<i+1>" -> "<p>.<i>"
    // ("features.0.1" -> "features.0.0", "downsample.1" -> "downsample.0", MobileNetV2's
    // projection BN "conv.3" -> "conv.2").
    const std::size_t dot = bn.rfind('.');  // npos for the stem's "bn1": head = ""
    const std::string head = bn.substr(0, dot + 1), tail = bn.substr(dot + 1);
    const std::string conv = tail.rfind("bn", 0) == 0
                                 ? head + "conv" + tail.substr(2)
                                 : head + std::to_string(std::stoi(tail) - 1);
    if (!in.count(conv + ".weight")) {
      ADD_FAILURE() << "no conv found for " << bn << " (tried " << conv << ")";
      continue;
    }
    const std::vector<float>& g = in.at(bn + ".weight").values;
    const std::vector<float>& beta = in.at(bn + ".bias").values;
    const std::vector<float>& mean = in.at(bn + ".running_mean").values;
    const std::vector<float>& var = e.values;
    const std::size_t cout = var.size();
    std::vector<double> s(cout);
    for (std::size_t k = 0; k < cout; ++k) s[k] = g[k] / std::sqrt(var[k] + eps);
    Entry& w = c.at(conv + ".weight");
    const std::size_t per_out = w.values.size() / cout / (w.shape.size() == 5 ? w.shape[0] : 1);
    for (std::size_t i = 0; i < w.values.size(); ++i)
      w.values[i] = static_cast<float>(w.values[i] * s[(i / per_out) % cout]);
    for (std::size_t k = 0; k < cout; ++k) {
      c.at(bn + ".weight").values[k] = 1.f;
      c.at(bn + ".bias").values[k] = static_cast<float>(beta[k] - s[k] * mean[k]);
      c.at(bn + ".running_mean").values[k] = 0.f;
      c.at(bn + ".running_var").values[k] = static_cast<float>(1.0 - eps);
    }
  }
  return c;
}

TEST(Load, BatchNormFoldsWithTorchvisionEps) {
  // Small running variances make eps matter (torchvision: 1e-5, MobileNetV3 1e-3); gamma
  // scales with sqrt(var) so the activations stay in range.
  const std::pair<const char*, double> cases[] = {
      {"resnet10", 1e-5}, {"mobilenet_v2_x0_35", 1e-5}, {"dy_mobilenet_v2_x0_35", 1e-5},
      {"dy_mobilenet_v3_small", 1e-3}, {"mobilenet_v3_small", 1e-3}};
  for (const auto& [name, eps] : cases) {
    SCOPED_TRACE(name);
    const ModelPtr a = make(name), b = make(name);
    // Mild (freshly initialised) attention: sharp attention amplifies float rounding, and
    // this test is about the BatchNorms.
    Checkpoint c = random_checkpoint(name, 13);
    for (const auto& [n, e] : saved(name))
      if (n.find(".attention.") != std::string::npos) c[n] = e;
    Random gen(14);
    for (auto& [n, e] : c)
      if (ends_with(n, ".running_var")) {
        std::vector<float>& gamma = c.at(n.substr(0, n.size() - 12) + ".weight").values;
        for (std::size_t k = 0; k < e.values.size(); ++k) {
          e.values[k] = static_cast<float>(gen.uniform(1e-3, 1e-2));
          gamma[k] = static_cast<float>(gen.uniform(0.5, 1.5) * std::sqrt(e.values[k]));
        }
      }
    a->load(write(c));
    b->load(write(fold_by_hand(c, eps)));
    const Tensor4<float> x = random_images(2, 40, 40, 15);
    const Tensor2<float> ya = a->forward(x), yb = b->forward(x);
    EXPECT_TRUE(logits_ok(ya));
    EXPECT_LT(rel_error(ya, yb), 1e-4);
  }
}

// =============================================================================================
// Upcycling
// =============================================================================================

/// pi [N, K] of the dynamic convolution node `node` of zoo model `name` (built with `options`,
/// loaded from `file`) for images x (NCHW): a second such model, with the node's input value
/// as an extra graph output, runs up to it; its logits must be `logits` (the same function).
Tensor2<float> attention_at(const std::string& name, const ModelOptions& options, const SafeTensors& file,
                            const std::string& node, const Tensor4<float>& x, const Tensor2<float>& logits) {
  const ModelPtr probe = make(name, options);
  EXPECT_TRUE(is_dynamic_conv(*probe, node)) << node;
  if (!is_dynamic_conv(*probe, node)) return Tensor2<float>();
  probe->output("probe", probe->node_inputs(node).at(0));
  probe->load(file);
  dynconv::Session<float> session(*probe, 1);
  EXPECT_EQ(rel_error(session.forward(x), logits), 0.0) << "the probe model computes another function";
  Tensor2<float> pi;
  probe->module<DynamicConv2d<float>>(node).forward(session.output("probe"), &pi);
  return pi;
}

/// The largest attention weight of every sample (uniform: 1/K).
std::vector<float> top_attention(const Tensor2<float>& pi) {
  std::vector<float> top(static_cast<std::size_t>(pi.dimension(0)), 0.f);
  for (Index n = 0; n < pi.dimension(0); ++n)
    for (Index k = 0; k < pi.dimension(1); ++k)
      top[static_cast<std::size_t>(n)] = std::max(top[static_cast<std::size_t>(n)], pi(n, k));
  return top;
}

TEST(Upcycle, StaticCheckpointInDynamicModelGivesStaticLogits) {
  // base model, dynamic policy, a dynamic convolution node whose attention is checked to be
  // far from uniform. MobileNetV2 with all_but_stem makes features.18 dynamic.
  const struct { const char* base; const char* policy; const char* node; } cases[] = {
      {"mobilenet_v2_x0_35", "default", "features.2.conv.1.0"},
      {"mobilenet_v2_x0_35", "all_but_stem", "features.18.0"},
      {"mobilenet_v3_small", "default", "features.12.0"},
      {"resnet10", "default", "layer1.0.conv1"}};
  for (const auto& cs : cases) {
    const std::string base = cs.base;
    SCOPED_TRACE(base + " " + cs.policy);
    const ModelOptions options = ModelOptions().policy(dynconv::models::policy_by_name(cs.policy));
    const Tensor4<float> x = random_images(2, 64, 64, 21);
    const ModelPtr st = make(base);
    const SafeTensors static_file = random_file(base, 22);
    st->load(static_file);
    const Tensor2<float> ys = st->forward(x);
    ASSERT_TRUE(logits_ok(ys));

    // Strongly non-uniform attention first (a random dynamic checkpoint), then the upcycle.
    const ModelPtr dy = make("dy_" + base, options);
    const SafeTensors dynamic_file = write(random_checkpoint(saved(*dy), 23));
    dy->load(dynamic_file);
    const Tensor2<float> y_random = dy->forward(x);
    {
      const Tensor2<float> pi = attention_at("dy_" + base, options, dynamic_file, cs.node, x, y_random);
      ASSERT_EQ(pi.dimension(0), 2);
      EXPECT_THAT(top_attention(pi), ::testing::Each(::testing::Gt(0.45f)))
          << cs.node << ": attention close to uniform";
    }
    dy->load(static_file, LoadMode::Upcycle);
    const Tensor2<float> yd = dy->forward(x);
    EXPECT_LT(rel_error(yd, ys), 1e-5);
    EXPECT_GT(rel_error(y_random, ys), 1e-2);

    // The attention parameters survived the upcycle; the K kernels are all equal.
    const Checkpoint before = read(dynamic_file), after = saved(*dy);
    std::size_t kept = 0;
    for (const auto& [n, e] : after)
      if (n.find(".attention.fc") != std::string::npos) {
        ++kept;
        const std::vector<float>& v = before.at(n).values;
        for (std::size_t i = 0; i < v.size(); ++i)
          ASSERT_EQ(v[i], e.values[i]) << n;
      }
    EXPECT_GT(kept, 0u);
    for (const auto& [n, e] : after) {
      if (e.shape.size() != 5) continue;
      const std::size_t per = e.values.size() / e.shape[0];
      for (std::size_t i = per; i < e.values.size(); ++i)
        ASSERT_EQ(e.values[i], e.values[i % per]) << n;
    }

    // Into a fresh dynamic model (its initial attention) as well.
    const ModelPtr fresh = make("dy_" + base, options);
    fresh->load(static_file, LoadMode::Upcycle);
    EXPECT_LT(rel_error(fresh->forward(x), ys), 1e-5);

    // Upcycle mode with a dynamic file is a plain load.
    const ModelPtr again = make("dy_" + base, options);
    again->load(dynamic_file, LoadMode::Upcycle);
    EXPECT_EQ(rel_error(again->forward(x), y_random), 0.0);
  }
}

TEST(Upcycle, StillStrictAboutNames) {
  const ModelPtr dy = make("dy_resnet10");
  Checkpoint c = saved("resnet10");
  c.erase("layer1.0.conv1.weight");
  EXPECT_THAT([&] { dy->load(write(c), LoadMode::Upcycle); },
              ThrowsMessage<FormatError>(
                  AllOf(HasSubstr("'layer1.0.conv1.weight'"), HasSubstr("[64, 64, 3, 3]"))));
  Checkpoint d = saved("resnet10");
  d["extra"] = Entry{{1}, {0}};
  EXPECT_THAT([&] { dy->load(write(d), LoadMode::Upcycle); },
              ThrowsMessage<FormatError>(HasSubstr("'extra'")));
}

// =============================================================================================
// Inputs
// =============================================================================================

TEST(Input, WrongChannelCountIsShapeErrorFromTheGraphInput) {
  for (const std::string name : {"dy_resnet10", "mobilenet_v2_x0_35", "dy_mobilenet_v3_small"}) {
    SCOPED_TRACE(name);
    const ModelPtr m = make(name);
    for (const Index c : {1, 4}) {
      const Tensor4<float> x = random_images(2, 32, 40, 1, c);
      const std::string expected = "graph '" + name + "': input 'x' [2, " + std::to_string(c) +
                                   ", 32, 40] (NCHW) has " + std::to_string(c) +
                                   (c == 1 ? " channel" : " channels") + ", expected 3";
      EXPECT_THAT([&] { m->forward(x); }, ThrowsMessage<ShapeError>(HasSubstr(expected)));
      EXPECT_THAT([&] { m->forward(dynconv::nchw_to_nhwc(x)); }, ThrowsMessage<ShapeError>(HasSubstr(expected)));
    }
    // An NCHW tensor passed as NHWC: [1, 3, 64, 64] read as [N, H, W, C] has 64 channels.
    EXPECT_THAT([&] { m->forward(NhwcTensor<float>(random_images(1, 64, 64, 1))); },
                ThrowsMessage<ShapeError>(HasSubstr("graph '" + name +
                                                    "': input 'x' [1, 64, 3, 64] (NCHW) has 64 channels, expected 3")));
    // No pixels at all.
    EXPECT_THAT([&] { m->forward(Tensor4<float>(1, 3, 0, 32)); },
                ThrowsMessage<ShapeError>(HasSubstr("graph '" + name + "': input 'x' [1, 3, 0, 32] (NCHW) has no pixels (0x32)")));
  }
}

TEST(Input, TooSmallAnImageIsShapeErrorFromTheFirstNodeThatDoesNotFit) {
  // The zoo's convolutions all pad to "same" (as torchvision's), so every zoo model runs down
  // to 1x1 (as in PyTorch; see AnySizeWorks): the rule is each layer's own. A model with an
  // unpadded convolution after a strided stem shows it: at 4x4 the stem gives 2x2, which
  // the 3x3 conv2 does not fit; the error names the graph, the node, its module and its
  // input with the shape.
  Model<float> m("tiny", 10);
  dynconv::Value v = m.input("x", 3);
  v = m.add("stem", Conv2d<float>(dynconv::Conv2dOptions(3, 8, 3).stride(2).padding(1).name("stem")), {v});
  v = m.add("conv2", Conv2d<float>(dynconv::Conv2dOptions(8, 8, 3).name("conv2")), {v});
  v = m.add("pool", dynconv::AdaptiveAvgPool2d<float>(1), {v});
  v = m.add("flatten", dynconv::Flatten<float>(), {v});
  v = m.add("fc", dynconv::Linear<float>(dynconv::LinearOptions(8, 10).name("fc")), {v});
  m.output("logits", v);
  EXPECT_THAT([&] { m.forward(random_images(2, 4, 4, 1)); },
              ThrowsMessage<ShapeError>(AllOf(
                  HasSubstr("graph 'tiny': node 'conv2' reading 'stem' (stem: Conv2d(3 -> 8, 3x3"),
                  HasSubstr("[2, 8, 2, 2] (NCHW): conv2: Conv2d(8 -> 8, 3x3)"),
                  HasSubstr("smaller than the dilated kernel 3x3"))));
  // At 1x1 the padded stem still fits (1 + 2 >= 3) and conv2 fails again; at 5x5 all fit.
  EXPECT_THAT([&] { m.forward(random_images(1, 1, 1, 1)); },
              ThrowsMessage<ShapeError>(HasSubstr("node 'conv2'")));
  const Tensor2<float> y = m.forward(random_images(2, 5, 5, 1));
  EXPECT_EQ(y.dimension(0), 2);
  EXPECT_EQ(y.dimension(1), 10);
  EXPECT_TRUE(logits_ok(y));
  // An input node that does not fit: the first node is named, reading the graph input.
  Model<float> k("unpadded", 10);
  dynconv::Value u = k.input("x", 3);
  u = k.add("conv1", Conv2d<float>(dynconv::Conv2dOptions(3, 4, 7).name("conv1")), {u});
  u = k.add("pool", dynconv::AdaptiveAvgPool2d<float>(1), {u});
  u = k.add("flatten", dynconv::Flatten<float>(), {u});
  u = k.add("fc", dynconv::Linear<float>(dynconv::LinearOptions(4, 10).name("fc")), {u});
  k.output("logits", u);
  EXPECT_THAT([&] { k.forward(random_images(1, 6, 9, 1)); },
              ThrowsMessage<ShapeError>(AllOf(HasSubstr("graph 'unpadded': node 'conv1' reading input 'x' [1, 3, 6, 9] "
                                                        "(NCHW): conv1: Conv2d(3 -> 4, 7x7)"),
                                              HasSubstr("smaller than the dilated kernel 7x7"))));
}

TEST(Input, AnySizeWorks) {
  // No minimum size any more (the old rule was 32x32): 16x16 and smaller run, odd and
  // non-square sizes too.
  const ModelPtr m = make("dy_mobilenet_v3_small", ModelOptions().num_classes(7));
  for (const auto& [h, w] : {std::pair<Index, Index>{32, 32}, {33, 47}, {64, 36}, {16, 16}, {9, 20}, {1, 1}}) {
    const Tensor2<float> y = m->forward(random_images(2, h, w, 2));
    EXPECT_EQ(y.dimension(0), 2);
    EXPECT_EQ(y.dimension(1), 7);
    EXPECT_TRUE(logits_ok(y)) << h << "x" << w;
  }
  // ResNet-18 at 16x16 (layer4 runs at 1x1) and every zoo model at 16x16, with a random
  // checkpoint so that the logits depend on the input.
  for (const std::string& name : dynconv::models::zoo_names()) {
    SCOPED_TRACE(name);
    const ModelPtr z = make(name, ModelOptions().num_classes(10));
    z->load(write(random_checkpoint(saved(*z), 61)));
    const Tensor2<float> y = z->forward(random_images(2, 16, 16, 62));
    EXPECT_EQ(y.dimension(0), 2);
    EXPECT_EQ(y.dimension(1), 10);
    EXPECT_TRUE(logits_ok(y));
  }
}

TEST(Input, BatchOfThreeEqualsThreeSingles) {
  // dy_resnet10 with sharp random attention: its samples end up with clearly different logits
  // (each sample its own kernels), yet float rounding is not amplified much. (A random
  // MobileNet either forgets its input by the deep layers or, with attention this sharp,
  // amplifies rounding to ~1e-4; in double both agree to 1e-12.)
  const ModelPtr m = make("dy_resnet10");
  m->load(random_file("dy_resnet10", 40));
  const Tensor4<float> x = random_images(3, 48, 48, 41);
  const Tensor2<float> y = m->forward(x);
  ASSERT_TRUE(logits_ok(y));
  const Index classes = m->num_classes();
  std::vector<Tensor2<float>> rows;
  for (Index n = 0; n < 3; ++n) {
    Tensor4<float> one(1, 3, 48, 48);
    std::copy(x.data() + n * one.size(), x.data() + (n + 1) * one.size(), one.data());
    const Tensor2<float> yn = m->forward(one);
    Tensor2<float> row(1, classes);
    for (Index k = 0; k < classes; ++k) row(0, k) = y(n, k);
    EXPECT_LT(rel_error(row, yn), 1e-5) << "sample " << n;
    rows.push_back(row);
  }
  EXPECT_GT(rel_error(rows[1], rows[0]), 0.1);
  EXPECT_GT(rel_error(rows[2], rows[0]), 0.1);
}

TEST(Input, ForwardAndForwardNhwcAgree) {
  const ModelPtr m = make("dy_mobilenet_v2_x0_35");
  m->load(random_file("dy_mobilenet_v2_x0_35", 50));
  const Tensor4<float> x = random_images(2, 40, 36, 51);
  Tensor4<float> nhwc(2, 40, 36, 3);
  for (Index n = 0; n < 2; ++n)
    for (Index c = 0; c < 3; ++c)
      for (Index i = 0; i < 40; ++i)
        for (Index j = 0; j < 36; ++j) nhwc(n, i, j, c) = x(n, c, i, j);
  EXPECT_EQ(rel_error(m->forward(NhwcTensor<float>(nhwc)), m->forward(x)), 0.0);
}

}  // namespace

// ---- Session: threads, reused workspaces ----------------------------------------------------

// Every zoo model at a small odd size, batch 1 and 3: a Session gives Model::forward's bits with
// one thread, the same numbers up to rounding with 2 and 3 threads, the same bits when run
// again, and allocates nothing once it has seen the input shape.
TEST(Session, MatchesForwardForEveryThreadCountWithoutAllocating) {
  for (const std::string& name : dynconv::models::zoo_names()) {
    const ModelPtr model = dynconv::models::create<float>(name, ModelOptions().num_classes(10));
    for (Index batch : {1, 3}) {
      Tensor4<float> x(batch, 3, 41, 37);
      x.setRandom();
      const Tensor2<float> expected = model->forward(x);
      for (int threads : {1, 2, 3}) {
        dynconv::Session<float> session(*model, threads);
        const Tensor2<float> first = session.forward(x);
        const Index allocations = session.allocations();
        const Tensor2<float>& again = session.forward(x);
        EXPECT_EQ(session.allocations(), allocations) << name << " batch " << batch << ", " << threads
                                                      << " threads: the second pass allocated";
        double worst = 0, scale = 0;
        bool same_bits = true;
        for (Index i = 0; i < expected.size(); ++i) {
          worst = std::max(worst, std::abs(double(first.data()[i]) - double(expected.data()[i])));
          scale = std::max(scale, std::abs(double(expected.data()[i])));
          same_bits = same_bits && first.data()[i] == again.data()[i];
          if (threads == 1) {
            EXPECT_EQ(first.data()[i], expected.data()[i]) << name << ": one-thread session != forward";
          }
        }
        EXPECT_LE(worst, 1e-5 * std::max(scale, 1.0)) << name << " batch " << batch << ", " << threads << " threads";
        EXPECT_TRUE(same_bits) << name << ", " << threads << " threads: a second pass gave other bits";
      }
    }
  }
}

TEST(Session, NchwAndNhwcAgreeAndBadInputsAreShapeErrors) {
  const ModelPtr model = dynconv::models::create<float>("dy_mobilenet_v3_small", ModelOptions().num_classes(5));
  dynconv::Session<float> session(*model, 2);
  Tensor4<float> x(2, 3, 40, 48);
  x.setRandom();
  const Tensor2<float> nchw = session.forward(x);
  const Tensor2<float> nhwc = session.forward(dynconv::nchw_to_nhwc(x));
  for (Index i = 0; i < nchw.size(); ++i) EXPECT_EQ(nchw.data()[i], nhwc.data()[i]);
  EXPECT_THAT([&] { session.forward(Tensor4<float>(1, 4, 40, 40)); },
              ThrowsMessage<ShapeError>(HasSubstr(
                  "graph 'dy_mobilenet_v3_small': input 'x' [1, 4, 40, 40] (NCHW) has 4 channels, expected 3")));
  EXPECT_THAT([&] { session.forward(Tensor4<float>(0, 3, 40, 40)); },
              ThrowsMessage<ShapeError>(HasSubstr("input 'x' [0, 3, 40, 40] (NCHW) has no samples (N=0)")));
  // After the errors the session still runs (and a 31x40 image, below the old 32x32 rule, too).
  EXPECT_EQ(session.forward(Tensor4<float>(x)).dimension(1), 5);
  Tensor4<float> small(1, 3, 31, 40);
  small.setRandom();
  EXPECT_EQ(session.forward(small).dimension(0), 1);
  EXPECT_EQ(rel_error(session.forward(x), nchw), 0.0);
  EXPECT_THAT([] { dynconv::Session<float> s(*dynconv::models::create<float>("resnet10"), 0); },
              ThrowsMessage<OptionsError>(HasSubstr("threads=0 must be in [1, 1024]")));
}
