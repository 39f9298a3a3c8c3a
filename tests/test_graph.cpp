// Graphs: a network that is not in the zoo (examples/custom_network.hpp) against its PyTorch
// twin in float64 (tools/make_custom_net_data.py), the fused plan against a node-by-node
// evaluation, named and intermediate outputs, several inputs, save/load, and every composition
// mistake as a clean error that names both nodes, both modules and both shapes.
#include "custom_network.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace {

using namespace dynconv;
using testing::AllOf;
using testing::HasSubstr;
using testing::ThrowsMessage;

template <typename T, int R>
double rel_error(const Tensor<T, R>& a, const Tensor<double, R>& b) {
  for (int d = 0; d < R; ++d)
    if (a.dimension(d) != b.dimension(d)) return 1e300;
  double diff = 0, scale = 0;
  for (Index i = 0; i < b.size(); ++i) {
    const double e = std::abs(static_cast<double>(a.data()[i]) - b.data()[i]);
    if (!(e <= diff)) diff = e;
    scale = std::max(scale, std::abs(b.data()[i]));
  }
  return diff / std::max(scale, 1e-300);
}

template <typename T>
Tensor4<double> to_double(const Tensor4<T>& t) {
  return t.template cast<double>();
}

template <typename T>
void randomise(Graph<T>& g, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> d(-0.5, 0.5);
  for (const std::string& name : g.node_names()) {
    Module<T>& m = g.module(name);
    for (const ParameterInfo& p : m.parameters()) {
      if (p.name == "attention.temperature") continue;
      std::vector<T> v(static_cast<std::size_t>(element_count(p.shape)));
      for (T& x : v) x = static_cast<T>(p.name == "running_var" ? 0.75 + d(gen) : d(gen));
      m.set_parameter(p.name, v);
    }
  }
}

/// The graph evaluated node by node, in the order added, each module's own run() on one thread
/// with no fusion and fresh buffers: what the fused plan must reproduce.
template <typename T>
std::map<std::string, NhwcTensor<T>> evaluate_unfused(const Graph<T>& g, const NhwcTensor<T>& x) {
  std::map<std::string, NhwcTensor<T>> values;
  values.emplace(g.inputs()[0].first, x);
  Context<T> ctx(1);
  for (const std::string& name : g.node_names()) {
    const std::vector<std::string>& in = g.node_inputs(name);
    std::vector<NhwcShape> shapes;
    std::vector<NhwcView<const T>> views;
    for (const std::string& v : in) {
      shapes.push_back(values.at(v).shape());
      views.push_back(values.at(v).view());
    }
    const Module<T>& m = g.module(name);
    NhwcTensor<T> y(m.output_shape(shapes));
    m.run(Inputs<T>(views.data(), static_cast<int>(views.size())), y.view(), ctx, PostOps<T>{});
    values.emplace(name, std::move(y));
  }
  return values;
}

// ---- The custom network against PyTorch ----------------------------------------------------------

const char* parity_dir() { return std::getenv("DYNCONV_GRAPH_PARITY_DIR"); }

template <typename T>
void check_parity() {
  if (!parity_dir()) GTEST_SKIP() << "DYNCONV_GRAPH_PARITY_DIR not set (ctest's graph_parity fixture sets it)";
  const std::string dir = parity_dir();
  Graph<T> net = custom_network<T>();
  net.load(SafeTensors::load(dir + "/weights.safetensors"));
  const SafeTensors io = SafeTensors::load(dir + "/io.safetensors");
  const Tensor4<T> x = io.get<T, 4>("input");
  const Tensor2<double> logits = io.get<double, 2>("logits");
  const Tensor4<double> features = io.get<double, 4>("features");
  const double tol = sizeof(T) == 4 ? 1e-4 : 1e-10;
  for (int threads : {1, 2}) {
    SCOPED_TRACE(testing::Message() << threads << " threads");
    Session<T> s(net, threads);
    s.context().min_parallel_madds(0);  // split every layer
    s.run(x);
    const Tensor4<T>& l = s.output("logits");
    ASSERT_EQ(l.dimension(0), 2);
    ASSERT_EQ(l.dimension(1), 10);
    Tensor2<T> flat(2, 10);
    std::copy(l.data(), l.data() + flat.size(), flat.data());
    EXPECT_LE(rel_error(flat, logits), tol);
    EXPECT_LE(rel_error(s.output("features"), features), tol);
    // Batch 1: each sample alone gives its row.
    for (Index n = 0; n < 2; ++n) {
      const Tensor4<T> one = x.slice(std::array<Index, 4>{n, 0, 0, 0}, std::array<Index, 4>{1, 1, 28, 28});
      const Tensor2<T>& row = s.forward(one);
      const Tensor2<double> expected = logits.slice(std::array<Index, 2>{n, 0}, std::array<Index, 2>{1, 10});
      EXPECT_LE(rel_error(row, expected), tol) << "sample " << n;
    }
  }
}

TEST(CustomNetwork, MatchesPyTorchFloat) { check_parity<float>(); }
TEST(CustomNetwork, MatchesPyTorchDouble) { check_parity<double>(); }

// ---- Plan: fusion, aliases, buffers --------------------------------------------------------------

TEST(GraphPlan, FusesBatchNormActivationAndResidualIntoTheConvolution) {
  Graph<float> net = custom_network<float>();
  net.fold_batchnorms();
  const GraphPlan p = net.plan({NhwcShape{2, 28, 28, 1}});
  std::map<std::string, std::vector<std::string>> fused;
  const std::vector<std::string> names = net.node_names();
  for (const GraphPlan::Step& s : p.steps)
    for (int f : s.fused) fused[names[static_cast<std::size_t>(s.node)]].push_back(names[static_cast<std::size_t>(f)]);
  EXPECT_THAT(fused["stem.0"], testing::ElementsAre("stem.1", "stem.2"));
  EXPECT_THAT(fused["block_conv1"], testing::ElementsAre("block_bn1", "block_relu1"));
  EXPECT_THAT(fused["block_conv2"], testing::ElementsAre("block_bn2", "block_add", "block_relu2"));
  EXPECT_THAT(fused["se_fc2"], testing::ElementsAre("se_gate"));
  EXPECT_THAT(fused["branch_conv"], testing::ElementsAre("branch_bn", "branch_act"));
  EXPECT_THAT(fused["head"], testing::ElementsAre("head_act"));
  // 26 nodes run as 14 steps (stem, 2 block convs, 5 SE nodes as 4, pool, branch, cat, head,
  // pool, flatten, fc).
  EXPECT_EQ(p.steps.size(), 14u);
}

TEST(GraphPlan, APooledValueGetsItsChannelMeansFromTheConvolutionThatWritesIt) {
  Graph<float> net = custom_network<float>();
  net.fold_batchnorms();
  const GraphPlan p = net.plan({NhwcShape{2, 28, 28, 1}});
  const std::vector<std::string> names = net.node_names();
  std::vector<std::string> with_means;
  for (std::size_t v = 0; v < p.has_means.size(); ++v)
    if (p.has_means[v]) with_means.push_back(v == 0 ? "input" : names[v - 1]);
  // Read by a dynamic convolution's attention (stem, block_relu1) or a global pool
  // (block_relu2: the squeeze-excite; head_act: the classifier's), each written by a
  // convolution's step. Not "down" (a max pool writes it) nor the input.
  EXPECT_THAT(with_means, testing::ElementsAre("stem.2", "block_relu1", "block_relu2", "head_act"));
}

template <typename T>
void check_against_unfused(Graph<T>& net, const std::vector<std::string>& extra_outputs) {
  for (const std::string& o : extra_outputs) net.output(o, Value(o));
  NhwcTensor<T> x(3, 28, 28, 1);
  x.tensor().setRandom();
  const std::map<std::string, NhwcTensor<T>> ref = evaluate_unfused(net, x);
  for (int threads : {1, 2, 3}) {
    Session<T> s(net, threads);
    s.context().min_parallel_madds(0);
    s.run(x);
    for (const auto& o : net.outputs()) {
      SCOPED_TRACE(testing::Message() << "output " << o.first << ", " << threads << " threads");
      EXPECT_LE(rel_error(s.output(o.first), to_double(nhwc_to_nchw(ref.at(o.second)))), sizeof(T) == 4 ? 2e-5 : 1e-12);
    }
  }
}

TEST(GraphPlan, FusedRunEqualsNodeByNodeEvaluation) {
  Graph<double> net = custom_network<double>();
  randomise(net, 5);
  net.fold_batchnorms();
  check_against_unfused(net, {});
}

TEST(GraphPlan, AOnePixelConvolutionGivesAGlobalPoolItsOwnValues) {
  // A 1x1 convolution of one pixel per sample (a squeeze-excite's FC) runs as one GEMM over the
  // batch; the global pool that reads it takes the means the convolution wrote.
  Graph<double> g("one_pixel");
  const Value x = g.input("x", 1);
  Value v = g.add("squeeze", AdaptiveAvgPool2d<double>(1), {x});
  v = g.add("fc", Conv2d<double>(Conv2dOptions(1, 6, 1).name("fc")), {v});
  g.output("y", g.add("pool", AdaptiveAvgPool2d<double>(1), {v}));
  randomise(g, 8);
  const GraphPlan p = g.plan({NhwcShape{3, 28, 28, 1}});
  EXPECT_EQ(p.has_means[2], 1);  // the value of "fc" (the input is value 0, "squeeze" value 1)
  check_against_unfused(g, {});
}

TEST(GraphPlan, AnIntermediateOutputStopsFusionThereAndIsCorrect) {
  Graph<float> net = custom_network<float>();
  randomise(net, 6);
  net.fold_batchnorms();
  check_against_unfused(net, {"block_bn2", "block_add", "se_gate", "down"});
  const GraphPlan p = net.plan({NhwcShape{1, 28, 28, 1}});
  for (const GraphPlan::Step& s : p.steps) {
    if (net.node_names()[static_cast<std::size_t>(s.node)] == "block_conv2") {
      EXPECT_TRUE(s.fused.size() <= 1u);
    }
  }
}

TEST(GraphPlan, UnfoldedBatchNormsRunAsTheirOwnStepsWithTheSameNumbers) {
  Graph<double> net = custom_network<double>();
  randomise(net, 7);  // not folded: every BatchNorm runs as a module
  Tensor4<double> x(2, 1, 28, 28);
  x.setRandom();
  Session<double> unfolded(net, 1);
  unfolded.run(x);
  const Tensor4<double> before = unfolded.output("features");
  net.fold_batchnorms();
  Session<double> folded(net, 2);
  folded.run(x);
  EXPECT_LE(rel_error(folded.output("features"), before), 1e-12);
}

TEST(Graph, RunsAnyInputSizeAndChannelCountItsLayersAccept) {
  Graph<float> net = custom_network<float>();
  net.fold_batchnorms();
  Session<float> s(net, 2);
  for (const auto& hw : {std::array<Index, 2>{28, 28}, {20, 24}, {9, 7}, {28, 28}}) {
    Tensor4<float> x(3, 1, hw[0], hw[1]);
    x.setRandom();
    s.run(x);
    EXPECT_EQ(s.output("features").dimension(2), hw[0] / 2);
    EXPECT_EQ(s.output("features").dimension(3), hw[1] / 2);
  }
}

TEST(Graph, SaveThenLoadGivesTheSameFunction) {
  Graph<float> net = custom_network<float>();
  randomise(net, 8);
  net.fold_batchnorms();
  SafeTensorsWriter w;
  net.save(w);
  Graph<float> again = custom_network<float>();
  again.load(SafeTensors::parse(w.to_bytes(), "<saved>"));
  Tensor4<float> x(2, 1, 28, 28);
  x.setRandom();
  Session<float> a(net, 1), b(again, 1);
  a.run(x);
  b.run(x);
  for (const char* o : {"logits", "features"}) {
    const Tensor4<float>& ya = a.output(o);
    const Tensor4<float>& yb = b.output(o);
    for (Index i = 0; i < ya.size(); ++i) ASSERT_EQ(ya.data()[i], yb.data()[i]) << o << " element " << i;
  }
  // Every parameter has its full name.
  const std::vector<NamedParameter> params = net.parameters();
  EXPECT_EQ(params.front().name, "stem.0.weight");
  EXPECT_EQ(params.back().name, "fc.bias");
}

TEST(Graph, SeveralNamedInputs) {
  Graph<double> g("two_inputs");
  const Value a = g.input("a", 3), b = g.input("b", 8);
  const Value c = g.add("conv", Conv2d<double>(Conv2dOptions(3, 8, 3).padding(1)), {a});
  g.output("sum", g.add("add", Add<double>(), {c, b}));
  Tensor4<double> xa(2, 3, 5, 6), xb(2, 8, 5, 6);
  xa.setRandom();
  xb.setRandom();
  Session<double> s(g, 2);
  s.run({{"b", &xb}, {"a", &xa}});
  const Tensor4<double> expected = g.module<Conv2d<double>>("conv").forward(xa) + xb;
  EXPECT_LE(rel_error(s.output("sum"), expected), 1e-14);
  EXPECT_THAT([&] { s.run(xa); }, ThrowsMessage<ShapeError>(HasSubstr("has 2 inputs (a, b)")));
  EXPECT_THAT([&] { s.run({{"a", &xa}}); }, ThrowsMessage<ShapeError>(HasSubstr("input 'b' not given")));
  EXPECT_THAT([&] { s.run({{"a", &xa}, {"c", &xb}}); }, ThrowsMessage<ShapeError>(HasSubstr("has no input 'c'")));
  // The same from a vector (names known at run time), with its errors.
  using Named = std::vector<std::pair<std::string, const Tensor4<double>*>>;
  s.run(Named{{"a", &xa}, {"b", &xb}});
  EXPECT_LE(rel_error(s.output("sum"), expected), 1e-14);
  EXPECT_THAT([&] { s.run(Named{{"b", &xb}, {"b", &xb}}); }, ThrowsMessage<ShapeError>(HasSubstr("input 'b' given twice")));
  EXPECT_THAT([&] { s.run(Named{{"b", &xb}}); }, ThrowsMessage<ShapeError>(HasSubstr("input 'a' not given")));
}

// ---- Composition mistakes: clean errors, never undefined behaviour ----------------------------

TEST(GraphErrors, HeadWiderThanTheFeatures) {
  Graph<float> g("head");
  Value x = g.input("x", 3);
  x = g.add("conv", Conv2d<float>(Conv2dOptions(3, 96, 3)), {x});
  x = g.add("pool", AdaptiveAvgPool2d<float>(1), {x});
  x = g.add("flatten", Flatten<float>(), {x});
  g.output("logits", g.add("fc", Linear<float>(LinearOptions(100, 10).name("fc")), {x}));
  Session<float> s(g, 2);
  Tensor4<float> img(2, 3, 8, 8);
  img.setRandom();
  EXPECT_THAT([&] { s.run(img); },
              ThrowsMessage<ShapeError>(AllOf(HasSubstr("graph 'head': node 'fc' reading 'flatten' (Flatten) [2, 96, 1, 1] (NCHW): fc: Linear(100 -> 10)"),
                                              HasSubstr("must be [N, 100]"))));
}

TEST(GraphErrors, ResidualAroundABodyThatChangesTheShape) {
  Graph<float> g("residual");
  const Value x = g.input("x", 16);
  const Value body = g.add("body", Conv2d<float>(Conv2dOptions(16, 32, 3).padding(1).stride(2)), {x});
  g.output("y", g.add("add", Add<float>(), {body, x}));
  Session<float> s(g);
  Tensor4<float> img(1, 16, 8, 8);
  img.setRandom();
  EXPECT_THAT([&] { s.run(img); },
              ThrowsMessage<ShapeError>(AllOf(HasSubstr("node 'add' reading 'body' (Conv2d(16 -> 32, 3x3)) [1, 32, 4, 4]"),
                                              HasSubstr("input 'x' [1, 16, 8, 8]"))));
}

TEST(GraphErrors, EmptyGraphs) {
  Graph<float> empty("empty");
  EXPECT_THAT([&] { Session<float> s(empty); }, ThrowsMessage<OptionsError>(HasSubstr("graph 'empty': has no input")));
  Graph<float> no_output("no_output");
  const Value x = no_output.input("x");
  no_output.add("relu", ReLU<float>(), {x});
  EXPECT_THAT([&] { Session<float> s(no_output); }, ThrowsMessage<OptionsError>(HasSubstr("has no output")));
}

TEST(GraphErrors, UnknownValuesCyclesAndUnconnectedNodes) {
  {
    Graph<float> g("unknown");
    const Value x = g.input("x");
    g.output("y", g.add("relu", ReLU<float>(), {Value("nope")}));
    (void)x;
    EXPECT_THAT([&] { g.validate(); },
                ThrowsMessage<OptionsError>(HasSubstr("node 'relu' (ReLU) reads 'nope', which is neither an input nor a node")));
  }
  {
    Graph<float> g("cycle");
    const Value x = g.input("x");
    g.add("a", Add<float>(), {x, Value("b")});
    g.add("b", ReLU<float>(), {Value("a")});
    g.output("y", Value("b"));
    EXPECT_THAT([&] { g.validate(); }, ThrowsMessage<OptionsError>(HasSubstr("has a cycle: a -> b -> a")));
  }
  {
    Graph<float> g("dead");
    const Value x = g.input("x");
    g.add("unused", Sigmoid<float>(), {x});
    g.output("y", g.add("relu", ReLU<float>(), {x}));
    EXPECT_THAT([&] { g.validate(); },
                ThrowsMessage<OptionsError>(HasSubstr("node 'unused' (Sigmoid) is not connected to any output")));
  }
  {
    Graph<float> g("unused_input");
    const Value x = g.input("x");
    g.input("mask");
    g.output("y", g.add("relu", ReLU<float>(), {x}));
    EXPECT_THAT([&] { g.validate(); }, ThrowsMessage<OptionsError>(HasSubstr("input 'mask' is not connected to any output")));
  }
  {
    Graph<float> g("output");
    g.output("y", g.input("x"));
    EXPECT_THAT([&] { g.output("y", Value("x")); }, ThrowsMessage<OptionsError>(HasSubstr("output 'y' is declared twice")));
  }
}

TEST(GraphErrors, NamesAndArity) {
  Graph<float> g("names");
  const Value x = g.input("x");
  g.add("relu", ReLU<float>(), {x});
  EXPECT_THAT([&] { g.add("relu", Sigmoid<float>(), {x}); },
              ThrowsMessage<OptionsError>(HasSubstr("node name 'relu' is already the node ReLU")));
  EXPECT_THAT([&] { g.add("x", ReLU<float>(), {x}); }, ThrowsMessage<OptionsError>(HasSubstr("is already an input")));
  EXPECT_THAT([&] { g.add("", ReLU<float>(), {x}); }, ThrowsMessage<OptionsError>(HasSubstr("a node needs a name")));
  EXPECT_THAT([&] { g.add("sum", Add<float>(), {x}); },
              ThrowsMessage<OptionsError>(HasSubstr("node 'sum' (Add) takes 2 inputs, got 1")));
  EXPECT_THAT([&] { g.add("cat", Concat<float>(), {}); },
              ThrowsMessage<OptionsError>(HasSubstr("takes one or more inputs, got 0")));
  EXPECT_THAT([&] { g.module<Conv2d<float>>("relu"); },
              ThrowsMessage<OptionsError>(HasSubstr("node 'relu' is ReLU, not the type asked for")));
  EXPECT_THAT([&] { g.module("nope"); }, ThrowsMessage<OptionsError>(HasSubstr("no node 'nope'")));
}

TEST(GraphErrors, InputChannelsBroadcastAndConcat) {
  Graph<float> net = custom_network<float>();
  Session<float> s(net);
  Tensor4<float> rgb(1, 3, 28, 28);
  rgb.setRandom();
  EXPECT_THAT([&] { s.run(rgb); },
              ThrowsMessage<ShapeError>(HasSubstr("graph 'custom_network': input 'x' [1, 3, 28, 28] (NCHW) has 3 channels, expected 1")));
  Tensor4<float> tiny(1, 1, 1, 1);
  tiny.setRandom();
  EXPECT_THAT([&] { s.run(tiny); }, ThrowsMessage<ShapeError>(HasSubstr("node 'down'")));
  EXPECT_THAT([&] { s.forward(rgb); }, ThrowsMessage<ShapeError>(HasSubstr("has 3 channels")));
  EXPECT_THAT([&] { (void)s.output("nope"); },
              ThrowsMessage<ShapeError>(HasSubstr("has no output 'nope' (its outputs: logits, features)")));

  Graph<float> g("gate");
  const Value x = g.input("x", 8);
  const Value gate = g.add("gate", AdaptiveAvgPool2d<float>(1), {g.add("narrow", Conv2d<float>(Conv2dOptions(8, 4, 1)), {x})});
  g.output("y", g.add("mul", Mul<float>(), {x, gate}));
  Session<float> gs(g);
  Tensor4<float> img(2, 8, 5, 5);
  img.setRandom();
  EXPECT_THAT([&] { gs.run(img); },
              ThrowsMessage<ShapeError>(AllOf(HasSubstr("node 'mul' reading"), HasSubstr("[2, 8, 5, 5]"), HasSubstr("[2, 4, 1, 1]"))));

  Graph<float> c("concat");
  const Value a = c.input("a", 2);
  const Value pooled = c.add("pool", MaxPool2d<float>(Pool2dOptions(2)), {a});
  c.output("y", c.add("cat", Concat<float>(), {a, pooled}));
  Session<float> cs(c);
  Tensor4<float> two(1, 2, 6, 6);
  two.setRandom();
  EXPECT_THAT([&] { cs.run(two); },
              ThrowsMessage<ShapeError>(AllOf(HasSubstr("node 'cat' reading"), HasSubstr("[1, 2, 6, 6]"), HasSubstr("[1, 2, 3, 3]"))));
}

TEST(GraphErrors, ForwardNeedsAFlatFirstOutput) {
  Graph<float> g("maps");
  const Value x = g.input("x", 1);
  g.output("map", g.add("relu", ReLU<float>(), {x}));
  Session<float> s(g);
  Tensor4<float> img(1, 1, 4, 4);
  img.setRandom();
  EXPECT_THAT([&] { s.forward(img); },
              ThrowsMessage<ShapeError>(HasSubstr("output 'map' is [1, 1, 4, 4] (NCHW): use run() and output()")));
}

}  // namespace
