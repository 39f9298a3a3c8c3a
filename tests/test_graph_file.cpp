// Graph files (docs/graph_format.md): networks exported from PyTorch by
// tools/export_safetensors.py (tools/make_graph_parity_data.py: a custom net, each attention
// kind, torchvision models, zoo models) run through load_graph + Session and match PyTorch's
// float64 outputs stored in the file, at batch 2 with 1 and 2 threads; a small graph written
// here checks the reader's rules, each a FormatError naming the file, the node and the rule.
#include <dynconv/graph_file.hpp>
#include <dynconv/models/zoo.hpp>
#include <dynconv/session.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace {

using namespace dynconv;
using testing::HasSubstr;

std::string data_dir() {
  const char* d = std::getenv("DYNCONV_GRAPH_FILE_DIR");
  return d ? d : "";
}

// The networks of tools/make_graph_parity_data.py (its NETWORKS, in order): a fixed list, since
// gtest instantiates the cases before ctest's fixture has written the data. The last test below
// checks it against the data's manifest.txt, so a network added on one side only fails.
const std::vector<std::string>& exported_networks() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v = {"custom", "dy_net", "condconv_net", "odconv_net",
                                  "kaijieshi7_net", "ardelean_net", "osvai_odconv_net",
                                  "timm_condconv_net", "timm_efficientnet_condconv",
                                  "mobilenet_v3_large", "efficientnet_b0", "resnet50"};
    for (const std::string& z : models::zoo_names()) v.push_back(z);
    return v;
  }();
  return names;
}

std::vector<std::string> indexed_networks() {
  std::vector<std::string> names;
  std::ifstream in(data_dir() + "/manifest.txt");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) names.push_back(line);
  return names;
}

class ExportedNetwork : public testing::TestWithParam<std::string> {};

TEST_P(ExportedNetwork, MatchesPyTorchFloat64OneAndTwoThreads) {
  if (data_dir().empty()) GTEST_SKIP() << "DYNCONV_GRAPH_FILE_DIR not set (no PyTorch data)";
  const std::string path = data_dir() + "/" + GetParam() + ".safetensors";
  const SafeTensors file = SafeTensors::load(path);
  ASSERT_TRUE(has_graph(file));
  GraphFile<float> g = load_graph<float>(file);
  ASSERT_TRUE(g.has_test()) << path;
  for (int threads : {1, 2}) {
    Session<float> s(g.graph, threads);
    std::vector<Tensor4<float>> xs;
    for (const auto& t : g.test_inputs) xs.push_back(graph_file_tensor<float>(file, t.second));
    std::vector<std::pair<std::string, const Tensor4<float>*>> named;
    for (std::size_t i = 0; i < xs.size(); ++i) named.push_back({g.test_inputs[i].first, &xs[i]});
    s.run(named);
    for (const auto& o : g.test_outputs) {
      const Tensor4<double> ref = graph_file_tensor<double>(file, o.second);
      EXPECT_LE(graph_test_error(s.output(o.first), ref), 1e-4)
          << GetParam() << ": output '" << o.first << "', " << threads << " thread(s)";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(GraphFile, ExportedNetwork, testing::ValuesIn(exported_networks()),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ExportedNetwork);

// The zoo models exported from PyTorch run as graph files and as the zoo builds them in C++ (its
// own graph, the weights taken from the same file by their state_dict names): the same plan (so
// the same work and speed) and the same outputs.
class ZooGraphFile : public testing::TestWithParam<std::string> {};

TEST_P(ZooGraphFile, GivesTheZooModelsOutputs) {
  if (data_dir().empty()) GTEST_SKIP() << "DYNCONV_GRAPH_FILE_DIR not set (no PyTorch data)";
  const std::string& name = GetParam();
  const SafeTensors file = SafeTensors::load(data_dir() + "/" + name + ".safetensors");
  GraphFile<float> g = load_graph<float>(file);
  ASSERT_EQ(g.test_inputs.size(), 1u);
  ASSERT_EQ(g.test_outputs.size(), 1u);
  const Tensor4<float> x = graph_file_tensor<float>(file, g.test_inputs[0].second);

  models::ModelOptions options;
  options.kernels(std::stol(file.metadata().at("kernels")));
  std::unique_ptr<models::Model<float>> zoo = models::build_zoo_model<float>(name, options);
  zoo->load(file);  // strict: every tensor but the file's own test vectors, by state_dict name

  // The same work: step for step the same modules with the same fused epilogues at 224x224
  // (compared without the node names, which differ for unnamed ones, nor the count of fused
  // nodes: the zoo fuses an explicit identity activation that an export does not have).
  const auto steps = [](const Graph<float>& graph) {
    const GraphPlan plan = graph.plan({NhwcShape{1, 224, 224, 3}});
    const std::vector<std::string> names = graph.node_names();
    std::vector<std::string> out;
    for (const GraphPlan::Step& st : plan.steps) {
      const std::string& node = names[static_cast<std::size_t>(st.node)];
      std::string what = graph.module(node).description();
      if (what.rfind(node + ": ", 0) == 0) what.erase(0, node.size() + 2);
      out.push_back(what + " act " + std::to_string(static_cast<int>(st.act)) + "/" +
                    std::to_string(static_cast<int>(st.after)) + (st.residual >= 0 ? " +residual" : "") +
                    " -> " + plan.shapes[static_cast<std::size_t>(st.output)].str());
    }
    return out;
  };
  EXPECT_EQ(steps(g.graph), steps(*zoo)) << name << ": the graph file's plan is not the zoo model's";

  Session<float> from_file(g.graph, 1);
  Session<float> from_zoo(*zoo, 1);
  from_file.run(x);
  from_zoo.run(x);
  const Tensor4<float>& a = from_file.output(g.test_outputs[0].first);
  const Tensor4<float>& b = from_zoo.output("logits");
  ASSERT_EQ(a.size(), b.size());
  Tensor4<double> bd = b.cast<double>();
  EXPECT_LE(graph_test_error(a, bd), 1e-6) << name << ": graph file vs zoo";
  EXPECT_LE(graph_test_error(b, graph_file_tensor<double>(file, g.test_outputs[0].second)), 1e-4)
      << name << ": zoo vs PyTorch float64";
}

INSTANTIATE_TEST_SUITE_P(GraphFile, ZooGraphFile, testing::ValuesIn(models::zoo_names()),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

TEST(GraphFile, TheParityDataHasEveryNetwork) {
  if (data_dir().empty()) GTEST_SKIP() << "DYNCONV_GRAPH_FILE_DIR not set (no PyTorch data)";
  EXPECT_EQ(indexed_networks(), exported_networks()) << "manifest.txt in " << data_dir();
  EXPECT_GE(exported_networks().size(), 12u);
}

// ---- the reader's rules on a graph written here ----------------------------------------------
// x [2, 2, 5, 5] -> conv (2 -> 3, 3x3, pad 1, no bias) -> bn -> relu -> mean -> fc (3 -> 4).
const char* kGraph = R"({"format": "dynconv.graph", "version": 1,
  "inputs": [{"name": "x", "shape": [2, 2, 5, 5]}],
  "nodes": [
    {"name": "conv", "op": "conv2d", "inputs": ["x"], "shape": [2, 3, 5, 5],
     "attrs": {"in_channels": 2, "out_channels": 3, "kernel_size": [3, 3], "stride": [1, 1],
               "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "bias": false}},
    {"name": "bn", "op": "batch_norm", "inputs": ["conv"], "shape": [2, 3, 5, 5], "attrs": {"num_features": 3, "eps": 1e-5}},
    {"name": "relu", "op": "relu", "inputs": ["bn"], "shape": [2, 3, 5, 5], "attrs": {}},
    {"name": "pool", "op": "adaptive_avg_pool2d", "inputs": ["relu"], "shape": [2, 3], "attrs": {"output_size": [1, 1]}},
    {"name": "fc", "op": "linear", "inputs": ["pool"], "shape": [2, 4], "attrs": {"in_features": 3, "out_features": 4, "bias": true}}
  ],
  "outputs": [{"name": "logits", "value": "fc"}]})";

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const std::size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

SafeTensors small_file(const std::string& graph, bool extra_tensor = false, const std::string& extra_name = "stray.weight") {
  SafeTensorsWriter w;
  std::vector<float> conv(3 * 2 * 3 * 3);
  for (std::size_t i = 0; i < conv.size(); ++i) conv[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
  w.add("conv.weight", {3, 2, 3, 3}, conv.data());
  const std::vector<float> ones(3, 1.0f), zeros(3, 0.0f), half(3, 0.5f);
  w.add("bn.weight", {3}, ones.data());
  w.add("bn.bias", {3}, half.data());
  w.add("bn.running_mean", {3}, zeros.data());
  w.add("bn.running_var", {3}, ones.data());
  std::vector<float> fc(12);
  for (std::size_t i = 0; i < fc.size(); ++i) fc[i] = 0.25f * static_cast<float>(i) - 1.0f;
  w.add("fc.weight", {4, 3}, fc.data());
  const std::vector<float> b(4, 0.125f);
  w.add("fc.bias", {4}, b.data());
  if (extra_tensor) w.add(extra_name, {3}, ones.data());
  w.set_metadata(kGraphMetadataKey, graph);
  return SafeTensors::parse(w.to_bytes(), "small.safetensors");
}

TEST(GraphFile, TheSmallGraphRunsAsItsNaiveReference) {
  GraphFile<float> g = load_graph<float>(small_file(kGraph));
  ASSERT_EQ(g.outputs.size(), 1u);
  EXPECT_EQ(g.outputs[0].name, "logits");
  EXPECT_EQ(g.outputs[0].shape, (std::vector<Index>{2, 4}));
  Tensor4<float> x(2, 2, 5, 5);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = std::sin(0.37f * static_cast<float>(i));
  Session<float> s(g.graph, 1);
  s.run(x);
  const Tensor4<float>& y = s.output("logits");
  // Naive: the conv by its definition, bn = identity + 0.5, relu, mean, fc.
  for (Index n = 0; n < 2; ++n) {
    double pooled[3] = {0, 0, 0};
    for (Index o = 0; o < 3; ++o)
      for (Index h = 0; h < 5; ++h)
        for (Index w = 0; w < 5; ++w) {
          double acc = 0;
          for (Index c = 0; c < 2; ++c)
            for (Index i = 0; i < 3; ++i)
              for (Index j = 0; j < 3; ++j) {
                const Index hh = h + i - 1, ww = w + j - 1;
                if (hh < 0 || hh >= 5 || ww < 0 || ww >= 5) continue;
                const Index widx = ((o * 2 + c) * 3 + i) * 3 + j;
                acc += (0.1 * static_cast<double>(widx % 7) - 0.3) * x(n, c, hh, ww);
              }
          pooled[o] += std::max(0.0, acc / std::sqrt(1.0 + 1e-5) + 0.5) / 25.0;
        }
    for (Index f = 0; f < 4; ++f) {
      double ref = 0.125;
      for (Index c = 0; c < 3; ++c) ref += (0.25 * static_cast<double>(f * 3 + c) - 1.0) * pooled[c];
      EXPECT_NEAR(y(n, f, 0, 0), ref, 1e-5) << n << ", " << f;
    }
  }
}

struct BadGraph {
  const char* label;
  std::string from, to;
  std::vector<const char*> message;
};

void PrintTo(const BadGraph& b, std::ostream* os) { *os << b.label; }

class BadGraphFile : public testing::TestWithParam<BadGraph> {};

TEST_P(BadGraphFile, IsAFormatErrorNamingTheFileTheNodeAndTheRule) {
  const BadGraph& c = GetParam();
  const std::string graph = replaced(kGraph, c.from, c.to);
  try {
    (void)load_graph<float>(small_file(graph));
    FAIL() << "no error for " << c.label;
  } catch (const FormatError& e) {
    EXPECT_THAT(e.what(), HasSubstr("small.safetensors")) << c.label;
    for (const char* m : c.message) EXPECT_THAT(e.what(), HasSubstr(m)) << c.label;
  }
}

const BadGraph kBadGraphs[] = {
    {"newer_version", "\"version\": 1", "\"version\": 2", {"version 2 is not 1"}},
    {"other_format", "\"format\": \"dynconv.graph\"", "\"format\": \"onnx\"", {"format='onnx'"}},
    {"unknown_top_key", "\"version\": 1,", "\"version\": 1, \"extra\": 3,", {"unknown key 'extra'"}},
    {"unknown_attr", "\"groups\": 1,", "\"groups\": 1, \"padding_mode\": \"zeros\",", {"node 'conv'", "unknown attribute 'padding_mode'"}},
    {"missing_attr", "\"eps\": 1e-5", "\"epsilon\": 1e-5", {"node 'bn'", "lacks 'eps'"}},
    {"unknown_op", "\"op\": \"relu\"", "\"op\": \"mish\"", {"node 'relu'", "unknown op 'mish'"}},
    {"unresolved_input", "\"inputs\": [\"bn\"]", "\"inputs\": [\"bm\"]", {"'relu'", "reads 'bm'"}},
    {"cycle", "\"inputs\": [\"conv\"]", "\"inputs\": [\"relu\"]", {"cycle"}},
    {"duplicate_name", "\"name\": \"relu\"", "\"name\": \"bn\"", {"node 'bn'", "name is taken"}},
    {"reserved_name", "\"name\": \"relu\"", "\"name\": \"dynconv.relu\"", {"reserved"}},
    {"groups_not_dividing", "\"groups\": 1", "\"groups\": 2", {"node 'conv'", "groups=2 must divide"}},
    {"weight_shape_vs_attrs", "\"kernel_size\": [3, 3]", "\"kernel_size\": [5, 5]", {"node 'conv'", "tensor 'conv.weight' has shape [3, 2, 3, 3]", "[3, 2, 5, 5]"}},
    {"huge_channels_refused_before_allocating", "\"out_channels\": 3", "\"out_channels\": 2000000000", {"node 'conv'", "conv.weight"}},
    {"negative_padding", "\"padding\": [1, 1, 1, 1]", "\"padding\": [1, -1, 1, 1]", {"node 'conv'", "attrs.padding"}},
    {"recorded_shape_mismatch", "\"shape\": [2, 3, 5, 5], \"attrs\": {}", "\"shape\": [2, 3, 4, 4], \"attrs\": {}", {"node 'relu'", "[2, 3, 4, 4]", "[2, 3, 5, 5]"}},
    {"wrong_arity", "\"inputs\": [\"bn\"]", "\"inputs\": [\"bn\", \"conv\"]", {"node 'relu'", "takes 1 input"}},
    {"not_json", "\"version\": 1,", "\"version\": 1,,", {"not valid JSON"}},
    {"deep_nesting", "\"attrs\": {}", "\"attrs\": {\"a\": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}", {"nested deeper than 16"}},
    {"unknown_output", "\"value\": \"fc\"", "\"value\": \"fc2\"", {"output 'logits'", "'fc2'"}},
    {"dead_node", "\n  ],\n  \"outputs\"", ", {\"name\": \"dead\", \"op\": \"relu\", \"inputs\": [\"x\"], \"shape\": [2, 2, 5, 5], \"attrs\": {}}\n  ],\n  \"outputs\"", {"'dead'", "not connected to any output"}},
    {"bn_eps_not_a_number", "\"eps\": 1e-5", "\"eps\": \"small\"", {"node 'bn'", "attrs.eps"}},
};

INSTANTIATE_TEST_SUITE_P(Rules, BadGraphFile, testing::ValuesIn(kBadGraphs),
                         [](const testing::TestParamInfo<BadGraph>& i) { return std::string(i.param.label); });

TEST(GraphFile, ATensorNoNodeReadsIsRefused) {
  EXPECT_THAT([] { (void)load_graph<float>(small_file(kGraph, true)); },
              testing::ThrowsMessage<FormatError>(HasSubstr("stray.weight")));
}

TEST(GraphFile, AReservedTensorThatIsNoTestVectorIsRefused) {
  // Strict loading passes over a graph file's own "dynconv." tensors (so that a zoo model
  // loads from its graph file); the reader still refuses one the graph's 'test' does not name.
  EXPECT_THAT([] { (void)load_graph<float>(small_file(kGraph, true, "dynconv.test.y")); },
              testing::ThrowsMessage<FormatError>(HasSubstr(
                  "tensor 'dynconv.test.y' is read by no node and is not a test vector of the graph's 'test'")));
}

TEST(GraphFile, AFileWithoutAGraphSaysHowToMakeOne) {
  SafeTensorsWriter w;
  const std::vector<float> v(3, 1.0f);
  w.add("a", {3}, v.data());
  const SafeTensors f = SafeTensors::parse(w.to_bytes(), "plain.safetensors");
  EXPECT_FALSE(has_graph(f));
  EXPECT_THAT([&] { (void)load_graph<float>(f); },
              testing::ThrowsMessage<FormatError>(testing::AllOf(HasSubstr("plain.safetensors"), HasSubstr("example_input"))));
}

}  // namespace
