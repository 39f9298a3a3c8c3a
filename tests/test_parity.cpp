// Parity with PyTorch: DynamicConv2d, Conv2d and DynamicConv2d + folded BatchNorm2d against
// reference outputs computed by PyTorch in float64 (tools/make_parity_data.py, which uses the
// reference module tools/dynconv_torch.py).
//
// The data directory comes from the environment variable DYNCONV_PARITY_DIR; it holds
// manifest.txt (one case name per line) and <case>.safetensors per case: the input, PyTorch's
// output, the attention (dynamic cases), every parameter (all F64) and metadata describing the
// layer. Without the data (PyTorch not installed) every test is skipped.
//
// Each case is run in float and in double, with the algorithm the layer picks and with every
// other algorithm that supports the geometry forced, through forward() on an NCHW Tensor4, through
// forward() on an NHWC NhwcTensor, and through the network path (Module::run on a Context of 2
// threads with every sample split); and once more with the layer (and BatchNorm) built by
// Module::load from the case file (the tensors are named as the parameters). Error measure:
// max|ours - torch| / max|torch| over the whole tensor; tolerances 1e-5 (float) and 1e-10
// (double). The worst errors are printed and recorded as test properties.
#include <dynconv/batchnorm.hpp>
#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/module.hpp>
#include <dynconv/runtime.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/weights.hpp>

#include "parity_data.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using dynconv::BatchNorm2d;
using dynconv::BatchNorm2dOptions;
using dynconv::Conv2d;
using dynconv::Conv2dOptions;
using dynconv::ConvAlgorithm;
using dynconv::DynamicConv2d;
using dynconv::DynamicConv2dOptions;
using dynconv::Index;
using dynconv::NhwcTensor;
using dynconv::Pair;
using dynconv::SafeTensors;
using dynconv::Tensor;
using dynconv::Tensor1;
using dynconv::Tensor2;
using dynconv::Tensor4;

constexpr double kFloatTolerance = 1e-5;
constexpr double kDoubleTolerance = 1e-10;
constexpr std::size_t kMinCases = 20;

// ---------------------------------------------------------------------------------------------
// The data set

using ParityCase = parity::Case;
using ParityData = parity::Data;
using parity::Meta;

const ParityData& parity_data() {
  static const ParityData data = parity::load("DYNCONV_PARITY_DIR");
  return data;
}

#define DYNCONV_SKIP_WITHOUT_PARITY_DATA()                                                      \
  do {                                                                                          \
    if (!parity_data().problem.empty())                                                         \
      GTEST_SKIP() << "PyTorch parity data was not generated (" << parity_data().problem        \
                   << "). Install PyTorch (Debian: apt install python3-torch) and run "         \
                      "/usr/bin/python3 tools/make_parity_data.py --out DIR with "              \
                      "DYNCONV_PARITY_DIR=DIR";                                                 \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Error bookkeeping

struct Worst {
  double error = -1;
  std::string where;
  void update(double e, const std::string& w) {
    if (e > error || std::isnan(e)) {
      error = e;
      where = w;
    }
  }
};

struct Worsts {
  Worst float_, double_;
  Worst& of(bool is_float) { return is_float ? float_ : double_; }
  void merge(const Worsts& o) {
    if (o.float_.error >= 0) float_.update(o.float_.error, o.float_.where);
    if (o.double_.error >= 0) double_.update(o.double_.error, o.double_.where);
  }
};

Worsts& overall() {
  static Worsts w;
  return w;
}

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", v);
  return buf;
}

/// max|ours - ref| / max|ref| (ref all zero: max|ours - ref|); infinity if the shapes differ.
template <typename T, int Rank>
double relative_error(const Tensor<T, Rank>& ours, const Tensor<double, Rank>& ref) {
  for (int i = 0; i < Rank; ++i)
    if (ours.dimension(i) != ref.dimension(i)) return INFINITY;
  double diff = 0, scale = 0;
  for (Index i = 0; i < ref.size(); ++i) {
    const double d = std::abs(static_cast<double>(ours.data()[i]) - ref.data()[i]);
    diff = std::isnan(d) ? d : std::max(diff, d);
    scale = std::max(scale, std::abs(ref.data()[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

template <typename T>
constexpr const char* type_name() {
  return std::is_same<T, float>::value ? "float" : "double";
}

template <typename T>
constexpr double tolerance() {
  return std::is_same<T, float>::value ? kFloatTolerance : kDoubleTolerance;
}

/// Compares one tensor with PyTorch's, records the error and expects it within tolerance.
template <typename T, int Rank>
void compare(const ParityCase& c, const std::string& what, const Tensor<T, Rank>& ours,
             const Tensor<double, Rank>& ref, Worsts& worsts) {
  EXPECT_EQ(dynconv::shape_str(ours.dimensions()), dynconv::shape_str(ref.dimensions()))
      << c.name << ": " << what << " shape";
  const double err = relative_error(ours, ref);
  const std::string where = c.name + " [" + what + "]";
  worsts.of(std::is_same<T, float>::value).update(err, where);
  EXPECT_LE(err, tolerance<T>()) << where << ": relative error " << sci(err) << " ("
                                 << type_name<T>() << ")";
}

// ---------------------------------------------------------------------------------------------
// Building layers from a case

/// The algorithm the layer picks by itself (Auto) first, then every other one that supports
/// the geometry, forced.
std::vector<ConvAlgorithm> algorithms_for(const dynconv::ConvGeometry& g, ConvAlgorithm picked) {
  std::vector<ConvAlgorithm> out{ConvAlgorithm::Auto};
  for (ConvAlgorithm a :
       {ConvAlgorithm::Pointwise, ConvAlgorithm::Depthwise, ConvAlgorithm::Im2colGemm})
    if (a != picked && dynconv::algorithm_supports(a, g)) out.push_back(a);
  return out;
}

template <typename Options>
Options& set_geometry(Options& o, const Meta& m) {
  return o.stride(m.integer("stride_h"), m.integer("stride_w"))
      .padding(m.integer("pad_h"), m.integer("pad_w"))
      .dilation(m.integer("dilation_h"), m.integer("dilation_w"))
      .groups(m.integer("groups"))
      .bias(m.flag("bias"));
}

DynamicConv2dOptions dynamic_options(const Meta& m) {
  DynamicConv2dOptions o(m.integer("in_channels"), m.integer("out_channels"),
                         Pair{m.integer("kernel_h"), m.integer("kernel_w")});
  set_geometry(o, m)
      .kernels(m.integer("kernels"))
      .temperature(m.real("temperature"))
      .name(m.c.name);
  // The generator records whether hidden was given explicitly or derived from reduction and
  // min_hidden; build it the same way (the test checks the resulting size below).
  if (m.has("hidden_explicit") && !m.flag("hidden_explicit"))
    o.reduction(m.integer("reduction")).min_hidden(m.integer("min_hidden"));
  else
    o.hidden_channels(m.integer("hidden"));
  return o;
}

template <typename T>
DynamicConv2d<T> make_dynamic(const ParityCase& c, ConvAlgorithm algorithm) {
  const Meta m{c};
  const SafeTensors& st = c.st();
  DynamicConv2d<T> layer(dynamic_options(m).algorithm(algorithm));
  EXPECT_EQ(layer.attention().hidden(), m.integer("hidden")) << c.name << ": attention hidden size";
  EXPECT_EQ(st.contains("bias"), m.flag("bias")) << c.name << ": bias tensor vs metadata";
  const std::vector<double> tau = st.get_flat<double>("attention.temperature");
  EXPECT_EQ(tau.size(), 1u) << c.name << ": attention.temperature must be a scalar";
  if (!tau.empty()) {
    EXPECT_EQ(tau[0], m.real("temperature")) << c.name << ": temperature tensor vs metadata";
  }
  layer.set_weight(st.get<T, 5>("weight"));
  if (st.contains("bias")) layer.set_bias(st.get<T, 2>("bias"));
  layer.attention().fc1().set_weight(st.get<T, 2>("attention.fc1.weight"));
  layer.attention().fc1().set_bias(st.get<T, 1>("attention.fc1.bias"));
  layer.attention().fc2().set_weight(st.get<T, 2>("attention.fc2.weight"));
  layer.attention().fc2().set_bias(st.get<T, 1>("attention.fc2.bias"));
  return layer;
}

template <typename T>
Conv2d<T> make_static(const ParityCase& c, ConvAlgorithm algorithm) {
  const Meta m{c};
  const SafeTensors& st = c.st();
  Conv2dOptions o(m.integer("in_channels"), m.integer("out_channels"),
                  Pair{m.integer("kernel_h"), m.integer("kernel_w")});
  set_geometry(o, m).algorithm(algorithm).name(c.name);
  EXPECT_EQ(st.contains("bias"), m.flag("bias")) << c.name << ": bias tensor vs metadata";
  Conv2d<T> layer(o);
  layer.set_weight(st.get<T, 4>("weight"));
  if (st.contains("bias")) layer.set_bias(st.get<T, 1>("bias"));
  return layer;
}

template <typename T>
BatchNorm2d<T> make_batchnorm(const ParityCase& c) {
  const Meta m{c};
  const SafeTensors& st = c.st();
  BatchNorm2d<T> bn(BatchNorm2dOptions(m.integer("out_channels")).eps(m.real("bn_eps")));
  bn.set_weight(st.get<T, 1>("bn.weight"));
  bn.set_bias(st.get<T, 1>("bn.bias"));
  bn.set_running_mean(st.get<T, 1>("bn.running_mean"));
  bn.set_running_var(st.get<T, 1>("bn.running_var"));
  return bn;
}

/// The network path: y = m.run(x) on a Context of `threads` threads, every sample split over
/// them (min_parallel_madds 0), no PostOps.
template <typename T>
NhwcTensor<T> run_on_context(const dynconv::Module<T>& m, const NhwcTensor<T>& x, int threads) {
  dynconv::Context<T> ctx(threads);
  ctx.min_parallel_madds(0);
  NhwcTensor<T> y(m.output_shape({x.shape()}));
  y.set_constant(T(12345));  // every element must be written
  const dynconv::NhwcView<const T> in = x.view();
  m.run(dynconv::Inputs<T>(in), y.view(), ctx, dynconv::PostOps<T>{});
  return y;
}

std::string label(const char* type, ConvAlgorithm requested, ConvAlgorithm used,
                  const char* layout, const char* what) {
  std::string s = std::string(type) + " ";
  s += requested == ConvAlgorithm::Auto ? std::string("auto=") + dynconv::algorithm_name(used)
                                        : std::string(dynconv::algorithm_name(used));
  return s + " " + layout + " " + what;
}

// ---------------------------------------------------------------------------------------------
// Running a case

/// DynamicConv2d (kind "dynamic") or DynamicConv2d with a folded BatchNorm2d ("dynamic_bn").
template <typename T>
void run_dynamic_case(const ParityCase& c, bool with_bn, Worsts& worsts) {
  const char* type = type_name<T>();
  const SafeTensors& st = c.st();
  const Tensor4<T> x = st.get<T, 4>("input");
  const Tensor4<double> y_ref = st.get<double, 4>("output");
  const Tensor2<double> pi_ref = st.get<double, 2>("attention");
  const DynamicConv2d<T> probe = make_dynamic<T>(c, ConvAlgorithm::Auto);
  for (ConvAlgorithm requested : algorithms_for(probe.geometry(), probe.algorithm())) {
    DynamicConv2d<T> layer = make_dynamic<T>(c, requested);
    const ConvAlgorithm used = layer.algorithm();
    if (with_bn) {
      const BatchNorm2d<T> bn = make_batchnorm<T>(c);
      if (requested == ConvAlgorithm::Auto)  // BN applied after the layer, before folding
        compare(c, label(type, requested, used, "NCHW", "output, BN unfolded"),
                bn.forward(layer.forward(x)), y_ref, worsts);
      layer.fold_batchnorm(bn);
    }
    Tensor2<T> pi;
    const Tensor4<T> y = layer.forward(x, &pi);
    compare(c, label(type, requested, used, "NCHW", "output"), y, y_ref, worsts);
    compare(c, label(type, requested, used, "NCHW", "attention"), pi, pi_ref, worsts);

    Tensor2<T> pi_nhwc;
    const NhwcTensor<T> x_nhwc = dynconv::nchw_to_nhwc(x);
    const Tensor4<T> y_nhwc = dynconv::nhwc_to_nchw(layer.forward(x_nhwc, &pi_nhwc));
    compare(c, label(type, requested, used, "NHWC", "output"), y_nhwc, y_ref, worsts);
    compare(c, label(type, requested, used, "NHWC", "attention"), pi_nhwc, pi_ref, worsts);
    compare(c, label(type, requested, used, "run", "output"), dynconv::nhwc_to_nchw(run_on_context(layer, x_nhwc, 2)),
            y_ref, worsts);
  }

  // Built by Module::load from the case file (parameters under no prefix, the BatchNorm's
  // under "bn"), from the default initialisation.
  const Meta m{c};
  DynamicConv2d<T> loaded(dynamic_options(m));
  dynconv::WeightLoader loader(st);
  loaded.load(loader, "");
  EXPECT_EQ(static_cast<double>(loaded.attention().temperature()), static_cast<double>(static_cast<T>(m.real("temperature"))))
      << c.name << ": loaded temperature";
  Tensor2<T> pi;
  Tensor4<T> y = loaded.forward(x, &pi);
  if (with_bn) {
    BatchNorm2d<T> bn(BatchNorm2dOptions(m.integer("out_channels")).eps(m.real("bn_eps")));
    bn.load(loader, "bn");
    y = bn.forward(y);
  }
  compare(c, label(type, ConvAlgorithm::Auto, loaded.algorithm(), "NCHW", "output, loaded"), y, y_ref, worsts);
  compare(c, label(type, ConvAlgorithm::Auto, loaded.algorithm(), "NCHW", "attention, loaded"), pi, pi_ref, worsts);
}

/// Conv2d (kind "static").
template <typename T>
void run_static_case(const ParityCase& c, Worsts& worsts) {
  const char* type = type_name<T>();
  const SafeTensors& st = c.st();
  const Tensor4<T> x = st.get<T, 4>("input");
  const Tensor4<double> y_ref = st.get<double, 4>("output");
  const Conv2d<T> probe = make_static<T>(c, ConvAlgorithm::Auto);
  for (ConvAlgorithm requested : algorithms_for(probe.geometry(), probe.algorithm())) {
    const Conv2d<T> layer = make_static<T>(c, requested);
    const ConvAlgorithm used = layer.algorithm();
    compare(c, label(type, requested, used, "NCHW", "output"), layer.forward(x), y_ref, worsts);
    const NhwcTensor<T> x_nhwc = dynconv::nchw_to_nhwc(x);
    compare(c, label(type, requested, used, "NHWC", "output"), dynconv::nhwc_to_nchw(layer.forward(x_nhwc)), y_ref,
            worsts);
    compare(c, label(type, requested, used, "run", "output"), dynconv::nhwc_to_nchw(run_on_context(layer, x_nhwc, 2)),
            y_ref, worsts);
  }

  // Built by Module::load from the case file, from the default initialisation.
  const Meta m{c};
  Conv2dOptions o(m.integer("in_channels"), m.integer("out_channels"),
                  Pair{m.integer("kernel_h"), m.integer("kernel_w")});
  Conv2d<T> loaded(set_geometry(o, m).name(c.name));
  dynconv::WeightLoader loader(st);
  loaded.load(loader, "");
  compare(c, label(type, ConvAlgorithm::Auto, loaded.algorithm(), "NCHW", "output, loaded"), loaded.forward(x), y_ref,
          worsts);
}

/// Runs every case of one kind in float and double; returns how many ran.
int run_kind(const std::string& kind) {
  Worsts worsts;
  int ran = 0;
  for (const ParityCase& c : parity_data().cases) {
    if (!c.load_error.empty() || c.kind() != kind) continue;
    SCOPED_TRACE("case " + c.name);
    Worsts mine;
    try {
      if (kind == "static") {
        run_static_case<float>(c, mine);
        run_static_case<double>(c, mine);
      } else {
        run_dynamic_case<float>(c, kind == "dynamic_bn", mine);
        run_dynamic_case<double>(c, kind == "dynamic_bn", mine);
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.name << ": " << e.what();
    }
    ++ran;
    std::cout << "[ parity   ] " << c.name << ": float " << sci(mine.float_.error) << ", double "
              << sci(mine.double_.error) << "\n";
    worsts.merge(mine);
  }
  overall().merge(worsts);
  if (ran > 0) {
    std::cout << "[ parity   ] worst " << kind << " float  " << sci(worsts.float_.error) << "  "
              << worsts.float_.where << "\n"
              << "[ parity   ] worst " << kind << " double " << sci(worsts.double_.error) << "  "
              << worsts.double_.where << std::endl;
    testing::Test::RecordProperty("worst_float_rel_error", sci(worsts.float_.error));
    testing::Test::RecordProperty("worst_float_case", worsts.float_.where);
    testing::Test::RecordProperty("worst_double_rel_error", sci(worsts.double_.error));
    testing::Test::RecordProperty("worst_double_case", worsts.double_.where);
  }
  return ran;
}

/// Prints the worst errors over all the cases that ran, at the end of the test program.
class OverallReport : public testing::Environment {
 public:
  void TearDown() override {
    const Worsts& w = overall();
    if (w.float_.error < 0 && w.double_.error < 0) return;
    std::cout << "[ parity   ] WORST OVERALL float  " << sci(w.float_.error) << " (tolerance "
              << sci(kFloatTolerance) << ")  " << w.float_.where << "\n"
              << "[ parity   ] WORST OVERALL double " << sci(w.double_.error) << " (tolerance "
              << sci(kDoubleTolerance) << ")  " << w.double_.where << std::endl;
  }
};

[[maybe_unused]] testing::Environment* const kOverallReport =
    testing::AddGlobalTestEnvironment(new OverallReport);

// ---------------------------------------------------------------------------------------------

TEST(Parity, ManifestCoversTheConfigurations) {
  DYNCONV_SKIP_WITHOUT_PARITY_DATA();
  const ParityData& d = parity_data();
  std::cout << "[ parity   ] " << d.cases.size() << " cases in " << d.dir << std::endl;
  EXPECT_GE(d.cases.size(), kMinCases);
  std::map<std::string, int> kinds;
  for (const ParityCase& c : d.cases) {
    EXPECT_EQ(c.load_error, "") << c.name << " could not be loaded";
    if (c.load_error.empty()) {
      ++kinds[c.kind()];
      EXPECT_TRUE(c.kind() == "dynamic" || c.kind() == "static" || c.kind() == "dynamic_bn")
          << c.name << ": unknown kind '" << c.kind() << "'";
    }
  }
  EXPECT_GE(kinds["dynamic"], 15);
  EXPECT_GE(kinds["static"], 3);
  EXPECT_GE(kinds["dynamic_bn"], 2);
}

TEST(Parity, DynamicConv2dMatchesPyTorch) {
  DYNCONV_SKIP_WITHOUT_PARITY_DATA();
  EXPECT_GT(run_kind("dynamic"), 0);
}

TEST(Parity, Conv2dMatchesPyTorch) {
  DYNCONV_SKIP_WITHOUT_PARITY_DATA();
  EXPECT_GT(run_kind("static"), 0);
}

TEST(Parity, DynamicConv2dWithFoldedBatchNormMatchesPyTorch) {
  DYNCONV_SKIP_WITHOUT_PARITY_DATA();
  EXPECT_GT(run_kind("dynamic_bn"), 0);
}

}  // namespace
