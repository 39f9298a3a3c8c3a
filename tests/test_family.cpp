// The dynamic-convolution family (family.md) against PyTorch in float64: DY-Conv, CondConv (own
// and shared routing) and ODConv layers built from tools/make_family_parity_data.py's cases
// (look-alike modules of this project's DynamicConv2d, timm's CondConv2d and OSVAI's ODConv2d in
// tools/dynconv_torch.py), loaded by their PyTorch state_dict names, in float and double:
//   - the output, the kernel weights / routing and every ODConv head;
//   - the network path: a Graph run by a 2-thread Session (a shared routing as a CondConvRouting
//     node feeding the layer's second input);
//   - a BatchNorm after the layer: unfolded (layer, then BatchNorm), folded into the layer
//     (fold_batchnorm: the shift a separate bias for CondConv and ODConv) and folded by the graph,
//     all against PyTorch's conv + BatchNorm; and save + load of the folded pair;
// plus the kind rules as clean errors. Data from DYNCONV_FAMILY_PARITY_DIR (ctest's fixture).
#include <dynconv/batchnorm.hpp>
#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/graph.hpp>
#include <dynconv/session.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "parity_data.hpp"

namespace {

using dynconv::AttentionKind;
using dynconv::BatchNorm2d;
using dynconv::BatchNorm2dOptions;
using dynconv::CondConvRouting;
using dynconv::CondConvRoutingOptions;
using dynconv::DynamicConv2d;
using dynconv::DynamicConv2dOptions;
using dynconv::Index;
using dynconv::Pair;
using dynconv::Tensor2;
using dynconv::Tensor4;

constexpr std::size_t kMinCases = 30;

const parity::Data& data() {
  static const parity::Data d = parity::load("DYNCONV_FAMILY_PARITY_DIR");
  return d;
}

#define DYNCONV_SKIP_WITHOUT_FAMILY_DATA()                                                          \
  do {                                                                                              \
    if (!data().problem.empty())                                                                    \
      GTEST_SKIP() << "PyTorch family parity data was not generated (" << data().problem             \
                   << "). Install PyTorch (Debian: apt install python3-torch) and run /usr/bin/python3 " \
                      "tools/make_family_parity_data.py --out DIR with DYNCONV_FAMILY_PARITY_DIR=DIR";   \
  } while (0)

/// The layer's options from the case's metadata, through the kind's own constructor.
DynamicConv2dOptions options_of(const parity::Case& c) {
  const parity::Meta m{c};
  const std::string kind = m.str("kind");
  const Index cin = m.integer("in_channels"), cout = m.integer("out_channels"), k = m.integer("kernels");
  const Pair ks{m.integer("kernel_h"), m.integer("kernel_w")};
  DynamicConv2dOptions o = kind == "dy"         ? DynamicConv2dOptions(cin, cout, ks).kernels(k).hidden_channels(m.integer("hidden"))
                           : kind == "condconv" ? DynamicConv2dOptions::condconv(cin, cout, ks, k).shared_routing(m.flag("shared_routing"))
                                                : DynamicConv2dOptions::odconv(cin, cout, ks, k);
  o.stride(m.integer("stride_h"), m.integer("stride_w"))
      .padding(m.integer("pad_h"), m.integer("pad_w"))
      .dilation(m.integer("dilation_h"), m.integer("dilation_w"))
      .groups(m.integer("groups"))
      .bias(m.flag("bias"))
      .name(c.name);
  if (!(kind == "condconv" && m.flag("shared_routing"))) o.temperature(m.real("temperature"));
  return o;
}

AttentionKind kind_of(const parity::Case& c) {
  return c.kind() == "dy" ? AttentionKind::DyConv : c.kind() == "condconv" ? AttentionKind::CondConv : AttentionKind::ODConv;
}

template <typename A, typename B, int Rank>
double rel_error(const dynconv::Tensor<A, Rank>& ours, const dynconv::Tensor<B, Rank>& torch) {
  if (ours.dimensions() != torch.dimensions()) return INFINITY;
  double worst = 0, scale = 0;
  for (Index i = 0; i < torch.size(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(torch.data()[i])));
    const double e = std::abs(static_cast<double>(ours.data()[i]) - static_cast<double>(torch.data()[i]));
    if (!(e <= worst)) worst = e;
  }
  return scale > 0 ? worst / scale : worst;
}

/// The worst relative error of the outputs (forward, session, folded) over the cases of a run.
double& worst() {
  static double w = 0;
  return w;
}
template <typename A, typename B, int Rank>
double output_error(const dynconv::Tensor<A, Rank>& ours, const dynconv::Tensor<B, Rank>& torch) {
  const double e = rel_error(ours, torch);
  worst() = std::max(worst(), e);
  return e;
}

template <typename T>
constexpr double tolerance() {
  return sizeof(T) == sizeof(float) ? 2e-5 : 1e-12;
}

template <typename T>
void check_case(const parity::Case& c) {
  SCOPED_TRACE(c.name);
  ASSERT_TRUE(c.load_error.empty()) << c.load_error;
  const dynconv::SafeTensors& f = c.st();
  const parity::Meta m{c};
  const bool shared = c.kind() == "condconv" && m.flag("shared_routing");
  const double tol = tolerance<T>();

  dynconv::WeightLoader w(f);
  DynamicConv2d<T> layer(options_of(c));
  EXPECT_EQ(layer.kind(), kind_of(c));
  layer.load(w, "layer");
  if (c.kind() == "odconv") {
    // ODConv's hidden size is derived, never set: max(Cin / 16, 16) as OSVAI's.
    EXPECT_EQ(layer.omni_attention().hidden(), m.integer("hidden"));
  }
  const Tensor4<T> x = f.get<T, 4>("input");
  const Tensor4<double> expected = f.get<double, 4>("output");

  // The one-off forward, and the heads.
  Tensor4<T> y;
  if (shared) {
    CondConvRouting<T> routing(CondConvRoutingOptions(m.integer("in_channels"), layer.kernels()));
    routing.load(w, "routing_fn");
    const Tensor4<T> r4 = routing.forward(x);  // [N, E, 1, 1]
    Tensor2<T> r(r4.dimension(0), r4.dimension(1));
    std::copy(r4.data(), r4.data() + r4.size(), r.data());
    EXPECT_LE(rel_error(r, f.get<double, 2>("routing")), tol) << "routing";
    y = layer.forward(x, r);
  } else {
    Tensor2<T> pi;
    y = layer.forward(x, &pi);
    const typename DynamicConv2d<T>::HeadValues h = layer.attention_heads(x);
    EXPECT_LE(rel_error(pi, h.kernel), 0.0) << "forward's attention is the kernel head";
    const std::string kernel_name = c.kind() == "condconv" ? "routing" : "attention.kernel";
    if (f.contains(kernel_name)) {
      EXPECT_LE(rel_error(h.kernel, f.get<double, 2>(kernel_name)), tol) << kernel_name;
    }
    const std::pair<const char*, const Tensor2<T>*> heads[] = {
        {"attention.channel", &h.channel}, {"attention.filter", &h.filter}, {"attention.spatial", &h.spatial}};
    for (const auto& head : heads) {
      if (f.contains(head.first))
        EXPECT_LE(rel_error(*head.second, f.get<double, 2>(head.first)), tol) << head.first;
      else
        EXPECT_EQ(head.second->size(), 0) << head.first << " is not a head of this layer";
    }
  }
  EXPECT_LE(output_error(y, expected), tol) << "forward";

  // The network path: a graph of fresh modules named as the PyTorch modules ("routing_fn",
  // "layer", "bn") loads the state_dict strictly (every tensor taken, num_batches_tracked
  // ignored), folds the BatchNorm and runs on a 2-thread session (every sample split).
  const bool bn_case = m.flag("bn");
  dynconv::SafeTensorsWriter state;
  for (const std::string& name : f.names())
    for (const char* prefix : {"layer.", "routing_fn.", "bn."})
      if (name.rfind(prefix, 0) == 0) {
        const dynconv::TensorEntry& e = f.entry(name);
        state.add_raw(name, e.dtype, e.shape, f.raw_data(name), e.end - e.begin);
      }
  const dynconv::SafeTensors state_dict = dynconv::SafeTensors::parse(state.to_bytes(), c.name + " state_dict");
  const Index cout = m.integer("out_channels");
  auto build = [&]() {
    dynconv::Graph<T> g(c.name);
    const auto in = g.input("x");
    std::vector<dynconv::Value> args{in};
    if (shared) args.push_back(g.add("routing_fn", CondConvRouting<T>(CondConvRoutingOptions(m.integer("in_channels"), layer.kernels())), {in}));
    auto out = g.add("layer", DynamicConv2d<T>(options_of(c)), args);
    if (bn_case) out = g.add("bn", BatchNorm2d<T>(BatchNorm2dOptions(cout).eps(m.real("bn_eps"))), {out});
    g.output("y", out);
    return g;
  };
  dynconv::Graph<T> g = build();
  g.load(state_dict);
  const Tensor4<double> expected_out = bn_case ? f.get<double, 4>("output_bn") : expected;
  {
    dynconv::Session<T> s(g, 2);
    s.context().min_parallel_madds(0);
    s.run(x);
    EXPECT_LE(output_error(s.output("y"), expected_out), tol) << "session";
  }
  if (!bn_case) return;

  // BatchNorm after the layer: unfolded (layer, then BatchNorm), folded by hand, and the
  // graph's folded pair saved and loaded again.
  BatchNorm2d<T> bn(BatchNorm2dOptions(cout).eps(m.real("bn_eps")));
  bn.load(w, "bn");
  EXPECT_LE(output_error(bn.forward(y), expected_out), tol) << "unfolded";
  DynamicConv2d<T> folded = layer;
  folded.fold_batchnorm(bn);
  if (!shared) {
    EXPECT_LE(output_error(folded.forward(x), expected_out), tol) << "folded";
  }
  if (layer.kind() != AttentionKind::DyConv) {
    // The shift stays a separate per-channel bias: the experts' biases only take the scale.
    const dynconv::Tensor1<T> rest = folded.folded_bias();
    double largest = 0;
    for (Index i = 0; i < rest.size(); ++i) largest = std::max(largest, std::abs(static_cast<double>(rest(i))));
    EXPECT_GT(largest, 0.0);
    EXPECT_EQ(folded.has_bias(), layer.has_bias());
  }
  dynconv::SafeTensorsWriter out;
  g.save(out);
  const dynconv::SafeTensors saved = dynconv::SafeTensors::parse(out.to_bytes(), "saved");
  dynconv::Graph<T> again = build();
  again.load(saved);
  dynconv::Session<T> s(again, 1);
  s.run(x);
  EXPECT_LE(output_error(s.output("y"), expected_out), tol) << "folded, saved and loaded again";
}

class FamilyParity : public testing::TestWithParam<std::string> {};

template <typename T>
void check_kind(const std::string& kind) {
  DYNCONV_SKIP_WITHOUT_FAMILY_DATA();
  worst() = 0;
  int seen = 0;
  for (const parity::Case& c : data().cases)
    if (c.kind() == kind) ++seen, check_case<T>(c);
  EXPECT_GE(seen, 10);
  std::printf("%s, %s: worst relative output error %.2e over %d cases\n", kind.c_str(),
              sizeof(T) == sizeof(float) ? "float" : "double", worst(), seen);
  testing::Test::RecordProperty("worst_rel_error", std::to_string(worst()));
}
TEST_P(FamilyParity, Float) { check_kind<float>(GetParam()); }
TEST_P(FamilyParity, Double) { check_kind<double>(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Kinds, FamilyParity, testing::Values("dy", "condconv", "odconv"));

TEST(FamilyParityData, CoversEveryKindWithABatchNormCase) {
  DYNCONV_SKIP_WITHOUT_FAMILY_DATA();
  EXPECT_GE(data().cases.size(), kMinCases);
  for (const char* kind : {"dy", "condconv", "odconv"}) {
    bool bn = false;
    for (const parity::Case& c : data().cases) bn = bn || (c.kind() == kind && parity::Meta{c}.flag("bn"));
    EXPECT_TRUE(bn) << kind;
  }
}

// ---- Kind rules ---------------------------------------------------------------------------------

using testing::AllOf;
using testing::HasSubstr;
using testing::ThrowsMessage;

TEST(FamilyRules, OdconvHasNoConvolutionBias) {
  EXPECT_THAT([] { DynamicConv2d<float>(DynamicConv2dOptions::odconv(8, 8, 3).bias(true).name("l")); },
              ThrowsMessage<dynconv::OptionsError>(AllOf(HasSubstr("l: ODConv2d(8 -> 8, 3x3)"), HasSubstr("bias(false)"))));
  DynamicConv2d<float> od(DynamicConv2dOptions::odconv(8, 8, 3).name("od"));
  EXPECT_THAT([&] { od.set_bias(Tensor2<float>(4, 8)); },
              ThrowsMessage<dynconv::OptionsError>(AllOf(HasSubstr("od: ODConv2d"), HasSubstr("no convolution bias"))));
}
TEST(FamilyRules, SharedRoutingIsCondconvOnly) {
  EXPECT_THAT([] { DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3).shared_routing(true)); },
              ThrowsMessage<dynconv::OptionsError>(AllOf(HasSubstr("shared_routing"), HasSubstr("DY-Conv"))));
}
TEST(FamilyRules, ForcedFusedPackingNeedsAGemmWithOneGroup) {
  // ODConv's scaled kernels fuse as the others do (StrategyTable checks their numbers); a
  // depthwise layer of any kind cannot.
  EXPECT_NO_THROW(DynamicConv2d<float>(DynamicConv2dOptions::odconv(8, 8, 3).mix_strategy(dynconv::MixStrategy::FusedPacking)));
  EXPECT_THAT([] { DynamicConv2d<float>(DynamicConv2dOptions(16, 16, 3).groups(16).mix_strategy(dynconv::MixStrategy::FusedPacking)); },
              ThrowsMessage<dynconv::OptionsError>(testing::StrEq(
                  "DynamicConv2d(16 -> 16, 3x3): mix_strategy=FusedPacking needs a GEMM algorithm (not Depthwise) and "
                  "groups == 1, got algorithm Depthwise, groups=16")));
}
TEST(FamilyRules, AccessorsOfAnotherKindAreCleanErrors) {
  DynamicConv2d<float> od(DynamicConv2dOptions::odconv(8, 8, 3).name("od"));
  EXPECT_THAT([&] { od.attention(); }, ThrowsMessage<dynconv::OptionsError>(AllOf(HasSubstr("od"), HasSubstr("attention()"), HasSubstr("ODConv"))));
  EXPECT_THAT([&] { od.routing(); }, ThrowsMessage<dynconv::OptionsError>(HasSubstr("routing()")));
  DynamicConv2d<float> cc(DynamicConv2dOptions::condconv(8, 8, 3).shared_routing(true).name("cc"));
  EXPECT_THAT([&] { cc.temperature(); }, ThrowsMessage<dynconv::OptionsError>(AllOf(HasSubstr("cc"), HasSubstr("routing shared"))));
  EXPECT_THAT([&] { cc.forward(Tensor4<float>(1, 8, 5, 5)); }, ThrowsMessage<dynconv::OptionsError>(HasSubstr("forward(x, routing)")));
}
TEST(FamilyRules, WeightsSumToOneByKind) {
  EXPECT_TRUE(DynamicConv2d<float>(DynamicConv2dOptions(8, 8, 3)).weights_sum_to_one());
  EXPECT_FALSE(DynamicConv2d<float>(DynamicConv2dOptions::condconv(8, 8, 3)).weights_sum_to_one());
  EXPECT_TRUE(DynamicConv2d<float>(DynamicConv2dOptions::odconv(8, 8, 3)).weights_sum_to_one());
}
TEST(FamilyRules, SharedRoutingInputMustHaveOneWeightPerExpertPerSample) {
  dynconv::Graph<float> g("g");
  const auto x = g.input("x");
  const auto r = g.add("routing_fn", CondConvRouting<float>(CondConvRoutingOptions(8, 3)), {x});
  const auto conv = g.add("conv", DynamicConv2d<float>(DynamicConv2dOptions::condconv(8, 8, 3, 4).padding(1).shared_routing(true)), {x, r});
  g.output("y", g.add("relu", dynconv::ReLU<float>(), {conv}));
  EXPECT_THAT([&] { g.plan({dynconv::NhwcShape{2, 6, 6, 8}}); },
              ThrowsMessage<dynconv::ShapeError>(AllOf(HasSubstr("'conv'"), HasSubstr("routing input [2, 3, 1, 1]"),
                                                       HasSubstr("must be [2, 4, 1, 1]"))));
}
TEST(FamilyRules, OdconvParametersAreOsvaiNames) {
  const DynamicConv2d<float> pw(DynamicConv2dOptions::odconv(32, 32, 1, 1));   // 1x1, K = 1
  const DynamicConv2d<float> dw(DynamicConv2dOptions::odconv(32, 32, 3).groups(32));  // depthwise
  auto names = [](const DynamicConv2d<float>& l) {
    std::vector<std::string> v;
    for (const dynconv::ParameterInfo& p : l.parameters()) v.push_back(p.name);
    return v;
  };
  EXPECT_THAT(names(pw), testing::ElementsAre("weight", "attention.fc.weight", "attention.bn.weight", "attention.bn.bias",
                                              "attention.bn.running_mean", "attention.bn.running_var",
                                              "attention.channel_fc.weight", "attention.channel_fc.bias",
                                              "attention.filter_fc.weight", "attention.filter_fc.bias",
                                              "attention.temperature"));
  EXPECT_THAT(names(dw), testing::Not(testing::Contains("attention.filter_fc.weight")));
  EXPECT_THAT(names(dw), testing::Contains("attention.spatial_fc.weight"));
  EXPECT_THAT(names(dw), testing::Contains("attention.kernel_fc.weight"));
  EXPECT_EQ(pw.omni_attention().hidden(), 16);
}

}  // namespace
