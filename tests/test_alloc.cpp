// No allocation inside a steady-state forward pass: every call to the C allocator (malloc,
// calloc, realloc, the aligned variants, and so operator new and Eigen's own buffers) is
// counted while a Session runs a graph it has run before: zoo models, and a custom graph that
// uses every kind of node a network is built from (convolutions static and dynamic, BatchNorm
// folded and not, activations, a residual Add, a squeeze-excite gate, Concat, pooling,
// Flatten, Linear, two outputs), and graph files exported from PyTorch (the fixture
// graph_file_parity: DYNCONV_GRAPH_FILE_DIR). glibc lets a program replace these functions and reach the
// originals as __libc_*; under a sanitizer (which replaces them itself) or another C library
// the test skips. A module that allocates in run() is seen (the counter is checked to work).
#include <dynconv/graph.hpp>
#include <dynconv/graph_file.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/models/zoo.hpp>
#include <dynconv/pooling.hpp>
#include <dynconv/session.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define DYNCONV_TEST_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DYNCONV_TEST_SANITIZED 1
#endif

#if defined(__GLIBC__) && !defined(DYNCONV_TEST_SANITIZED)
#define DYNCONV_COUNT_MALLOC 1
namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_calls{0};
void count() {
  if (g_counting.load(std::memory_order_relaxed)) g_calls.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void* malloc(std::size_t n) {
  count();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t s) {
  count();
  return __libc_calloc(n, s);
}
void* realloc(void* p, std::size_t n) {
  count();
  return __libc_realloc(p, n);
}
void* memalign(std::size_t a, std::size_t n) {
  count();
  return __libc_memalign(a, n);
}
void* aligned_alloc(std::size_t a, std::size_t n) {
  count();
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, std::size_t a, std::size_t n) {
  count();
  *out = __libc_memalign(a, n);
  return *out ? 0 : 12;  // ENOMEM
}
}
#endif

namespace {

using dynconv::Index;
using dynconv::Tensor4;
using dynconv::Value;

/// Whether the allocator is counted here; GTEST_SKIP otherwise. Also checks that the counter
/// sees an allocation at all, or the tests would prove nothing.
#ifdef DYNCONV_COUNT_MALLOC
void check_counter() {
  g_counting = true;
  void* volatile probe = std::malloc(64);
  g_counting = false;
  std::free(probe);
  ASSERT_EQ(g_calls.exchange(0), 1) << "malloc is not being counted";
}

/// Allocator calls during `passes` more passes of `pass` (which has run before).
template <typename F>
long allocations_during(F pass, int passes = 3) {
  g_calls = 0;
  g_counting = true;
  for (int i = 0; i < passes; ++i) pass();
  g_counting = false;
  return g_calls.exchange(0);
}
#endif

TEST(SteadyState, ForwardAllocatesNothing) {
#ifndef DYNCONV_COUNT_MALLOC
  GTEST_SKIP() << "needs glibc and no sanitizer (they replace malloc themselves)";
#else
  check_counter();
  for (const char* name : {"dy_mobilenet_v3_small", "dy_mobilenet_v2_x0_5", "dy_resnet10", "resnet10", "od_mobilenet_v2_x0_5"}) {
    const auto model = dynconv::models::create<float>(name, dynconv::models::ModelOptions().num_classes(10));
    for (Index batch : {1, 8})
      for (int threads : {1, 2}) {
        dynconv::Session<float> session(*model, threads);
        Tensor4<float> x(batch, 3, 64, 64);
        x.setRandom();
        session.forward(x);  // sizes every buffer
        const Index buffers = session.allocations();
        EXPECT_EQ(allocations_during([&] { session.forward(x); }), 0)
            << name << " batch " << batch << ", " << threads << " threads: allocations in steady-state forward passes";
        EXPECT_EQ(session.allocations(), buffers) << name;
      }
  }
#endif
}

// ---- A custom graph -----------------------------------------------------------------------------

#ifdef DYNCONV_COUNT_MALLOC  // (only the counting tests build it)

/// [N, 1, 28, 28] ->
///   stem: Conv2d 1 -> 16 3x3 -> BatchNorm2d -> ReLU                     (r1)
///   body: DynamicConv2d 16 -> 16 3x3 -> BatchNorm2d -> ReLU, + r1       (residual Add)
///   se:   AdaptiveAvgPool2d(1) -> 1x1 Conv2d 16 -> 4 -> ReLU -> 1x1 Conv2d 4 -> 16 -> Sigmoid,
///         times the body's output                                        (Mul, broadcast)
///   cat:  Concat(se gate, r1)                                            (32 channels)
///   pool: MaxPool2d 2x2                                                  ([N, 32, 14, 14]: output "features")
///   head: AdaptiveAvgPool2d(1) -> Flatten -> Linear 32 -> 10             (output "logits", first)
/// Built in an order other than the one it runs in (the head before the body) to exercise
/// the graph's ordering too.
std::unique_ptr<dynconv::Graph<float>> custom_graph() {
  using namespace dynconv;
  auto g = std::make_unique<Graph<float>>("custom");
  Graph<float>& m = *g;
  const Value x = m.input("x", 1);
  m.add("gap", AdaptiveAvgPool2d<float>(1), {"pool"});
  m.add("flatten", Flatten<float>(), {"gap"});
  m.add("fc", Linear<float>(LinearOptions(32, 10).name("fc")), {"flatten"});
  m.add("stem.conv", Conv2d<float>(Conv2dOptions(1, 16, 3).padding(1).bias(false).name("stem.conv")), {x});
  m.add("stem.bn", BatchNorm2d<float>(BatchNorm2dOptions(16).name("stem.bn")), {"stem.conv"});
  m.add("stem.relu", ReLU<float>(), {"stem.bn"});
  m.add("body.conv",
        DynamicConv2d<float>(DynamicConv2dOptions(16, 16, 3).padding(1).bias(false).kernels(4).name("body.conv")),
        {"stem.relu"});
  m.add("body.bn", BatchNorm2d<float>(BatchNorm2dOptions(16).name("body.bn")), {"body.conv"});
  m.add("body.relu", ReLU<float>(), {"body.bn"});
  m.add("body.add", Add<float>(), {"body.relu", "stem.relu"});
  m.add("se.pool", AdaptiveAvgPool2d<float>(1), {"body.add"});
  m.add("se.fc1", Conv2d<float>(Conv2dOptions(16, 4, 1).name("se.fc1")), {"se.pool"});
  m.add("se.relu", ReLU<float>(), {"se.fc1"});
  m.add("se.fc2", Conv2d<float>(Conv2dOptions(4, 16, 1).name("se.fc2")), {"se.relu"});
  m.add("se.sigmoid", Sigmoid<float>(), {"se.fc2"});
  m.add("se", Mul<float>(), {"body.add", "se.sigmoid"});
  m.add("cat", Concat<float>(), {"se", "stem.relu"});
  m.add("pool", MaxPool2d<float>(Pool2dOptions(2).name("pool")), {"cat"});
  m.output("logits", Value("fc"));
  m.output("features", Value("pool"));
  return g;
}

/// Random values for every parameter of g (BatchNorm variances positive, tau 1), by full name.
std::map<std::string, std::vector<float>> random_parameters(const dynconv::Graph<float>& g, unsigned seed) {
  std::mt19937 gen(seed);
  std::map<std::string, std::vector<float>> out;
  for (const dynconv::NamedParameter& p : g.parameters()) {
    const bool var = p.name.size() > 12 && p.name.compare(p.name.size() - 12, 12, ".running_var") == 0;
    const bool tau = p.name.find("temperature") != std::string::npos;
    std::uniform_real_distribution<float> dist(var ? 0.5f : -0.8f, var ? 2.f : 0.8f);
    std::vector<float> v(static_cast<std::size_t>(dynconv::element_count(p.shape)));
    for (float& e : v) e = tau ? 1.f : dist(gen);
    out[p.name] = std::move(v);
  }
  return out;
}

/// `g` with these parameters: loaded from a file (BatchNorms folded) or set node by node
/// (BatchNorms left to run as their own nodes).
void set_parameters(dynconv::Graph<float>& g, const std::map<std::string, std::vector<float>>& values, bool fold) {
  if (fold) {
    dynconv::SafeTensorsWriter w;
    for (const dynconv::NamedParameter& p : g.parameters()) w.add(p.name, p.shape, values.at(p.name).data());
    g.load(dynconv::SafeTensors::parse(w.to_bytes(), "custom.safetensors"));
    return;
  }
  for (const std::string& node : g.node_names())
    for (const dynconv::ParameterInfo& p : g.module(node).parameters())
      g.module(node).set_parameter(p.name, values.at(node + "." + p.name));
}
#endif

TEST(SteadyState, CustomGraphAllocatesNothing) {
#ifndef DYNCONV_COUNT_MALLOC
  GTEST_SKIP() << "needs glibc and no sanitizer (they replace malloc themselves)";
#else
  check_counter();
  auto folded = custom_graph(), unfolded = custom_graph();
  const auto values = random_parameters(*folded, 5);
  set_parameters(*folded, values, true);
  set_parameters(*unfolded, values, false);
  ASSERT_TRUE(folded->module<dynconv::BatchNorm2d<float>>("body.bn").folded());
  ASSERT_TRUE(folded->module<dynconv::BatchNorm2d<float>>("stem.bn").folded());
  ASSERT_FALSE(unfolded->module<dynconv::BatchNorm2d<float>>("body.bn").folded());
  for (const auto* g : {folded.get(), unfolded.get()}) {
    const std::string kind = g == folded.get() ? "folded" : "unfolded";
    for (Index batch : {1, 8})
      for (int threads : {1, 2}) {
        SCOPED_TRACE(kind + " batch " + std::to_string(batch) + ", " + std::to_string(threads) + " threads");
        dynconv::Session<float> session(*g, threads);
        session.context().min_parallel_madds(0);  // split even these small layers over the pool
        Tensor4<float> x(batch, 1, 28, 28);
        x.setRandom();
        // Warm-up: the workspace's buffers grow until they fit every pass at this shape.
        // Session promises one pass; this graph takes two (the best-fit pool settles only on
        // the second pass: reported), so passes run until allocations() stops moving, and
        // more than two is a failure.
        int growing = 0;  // warm-up passes that allocated
        for (;;) {
          const Index before = session.allocations();
          session.run(x);
          if (session.allocations() == before || ++growing > 4) break;
        }
        EXPECT_LE(growing, 2) << "warm-up passes that allocated at one input shape";
        session.forward(x);  // forward's flat [N, F] logits are allocated on its first call
        const Tensor4<float>& logits = session.output("logits");
        const Tensor4<float>& features = session.output("features");
        ASSERT_EQ(logits.dimensions(), (std::array<Index, 4>{batch, 10, 1, 1}));
        ASSERT_EQ(features.dimensions(), (std::array<Index, 4>{batch, 32, 14, 14}));
        const Tensor4<float> first_logits = logits, first_features = features;
        const Index buffers = session.allocations();
        EXPECT_EQ(allocations_during([&] { session.run(x); }), 0) << "allocations in steady-state passes (run)";
        EXPECT_EQ(allocations_during([&] { session.forward(x); }), 0) << "allocations in steady-state passes (forward)";
        EXPECT_EQ(session.allocations(), buffers);
        // The passes computed something, the same each time.
        session.run(x);
        bool same = true, finite = true;
        double scale = 0;
        for (Index i = 0; i < logits.size(); ++i) {
          same = same && logits.data()[i] == first_logits.data()[i];
          finite = finite && std::isfinite(logits.data()[i]);
          scale = std::max(scale, double(std::abs(logits.data()[i])));
        }
        for (Index i = 0; i < features.size(); ++i) same = same && features.data()[i] == first_features.data()[i];
        EXPECT_TRUE(same);
        EXPECT_TRUE(finite);
        EXPECT_GT(scale, 1e-3);
      }
  }
  // Folded and unfolded are the same function.
  Tensor4<float> x(2, 1, 28, 28);
  x.setRandom();
  dynconv::Session<float> a(*folded, 1), b(*unfolded, 1);
  const Tensor4<float> ya = (a.run(x), a.output("features"));
  const Tensor4<float> yb = (b.run(x), b.output("features"));
  double diff = 0, scale = 0;
  for (Index i = 0; i < ya.size(); ++i) {
    diff = std::max(diff, double(std::abs(ya.data()[i] - yb.data()[i])));
    scale = std::max(scale, double(std::abs(yb.data()[i])));
  }
  EXPECT_GT(scale, 0.0);
  EXPECT_LE(diff, 1e-5 * scale);
#endif
}

/// A module that allocates in run(): the identity through a std::vector.
class AllocatingIdentity final : public dynconv::Module<float> {
 public:
  std::string description() const override { return "AllocatingIdentity"; }
  dynconv::NhwcShape output_shape(const std::vector<dynconv::NhwcShape>& in) const override { return in.at(0); }
  void run(const dynconv::Inputs<float>& in, const dynconv::NhwcView<float>& y, dynconv::Context<float>&,
           const dynconv::PostOps<float>&) const override {
    const std::vector<float> copy(in[0].data, in[0].data + in[0].size());
    std::copy(copy.begin(), copy.end(), y.data);
  }
};

// ---- Graph files exported from PyTorch (tools/make_graph_parity_data.py) ------------------------

TEST(SteadyState, GraphFilesAllocateNothing) {
#ifndef DYNCONV_COUNT_MALLOC
  GTEST_SKIP() << "needs glibc and no sanitizer (they replace malloc themselves)";
#else
  const char* dir = std::getenv("DYNCONV_GRAPH_FILE_DIR");
  if (!dir) GTEST_SKIP() << "DYNCONV_GRAPH_FILE_DIR not set (no PyTorch data)";
  check_counter();
  // A squeeze-excite network, shared CondConv routing, ODConv, a peer's module, two outputs.
  for (const char* name : {"custom", "condconv_net", "odconv_net", "kaijieshi7_net", "efficientnet_b0"}) {
    const dynconv::SafeTensors file = dynconv::SafeTensors::load(std::string(dir) + "/" + name + ".safetensors");
    const dynconv::GraphFile<float> g = dynconv::load_graph<float>(file);
    ASSERT_EQ(g.inputs.size(), 1u) << name;
    const std::vector<Index>& in = g.inputs[0].shape;
    for (Index batch : {1, 8})
      for (int threads : {1, 2}) {
        SCOPED_TRACE(std::string(name) + " batch " + std::to_string(batch) + ", " + std::to_string(threads) + " threads");
        dynconv::Session<float> session(g.graph, threads);
        Tensor4<float> x(batch, in[1], in[2], in[3]);
        x.setRandom();
        int growing = 0;  // warm-up passes that allocated (see CustomGraphAllocatesNothing)
        for (;;) {
          const Index before = session.allocations();
          session.run(x);
          if (session.allocations() == before || ++growing > 4) break;
        }
        EXPECT_LE(growing, 2) << "warm-up passes that allocated at one input shape";
        EXPECT_EQ(allocations_during([&] { session.run(x); }), 0) << "allocations in steady-state passes";
      }
  }
#endif
}

TEST(SteadyState, AModuleThatAllocatesInRunIsSeen) {
#ifndef DYNCONV_COUNT_MALLOC
  GTEST_SKIP() << "needs glibc and no sanitizer (they replace malloc themselves)";
#else
  check_counter();
  // conv -> AllocatingIdentity -> pool: one allocation per pass, seen by the counter (the
  // custom graph's zero above is not a counter that sees nothing).
  dynconv::Graph<float> h("allocating");
  const Value x = h.input("x", 1);
  h.add("conv", dynconv::Conv2d<float>(dynconv::Conv2dOptions(1, 4, 3).padding(1)), {x});
  h.add("alloc", AllocatingIdentity(), {"conv"});
  h.add("gap", dynconv::AdaptiveAvgPool2d<float>(1), {"alloc"});
  h.output("pooled", Value("gap"));
  for (int threads : {1, 2}) {
    dynconv::Session<float> session(h, threads);
    Tensor4<float> x1(1, 1, 28, 28);
    x1.setRandom();
    session.run(x1);
    EXPECT_EQ(allocations_during([&] { session.run(x1); }), 3) << threads << " threads";
  }
#endif
}

}  // namespace
