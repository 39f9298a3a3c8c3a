// Parity with PyTorch for the 14 zoo models (7 static, 7 dy_): logits of dynconv::models against
// PyTorch's, computed in float64 by tools/make_model_parity_data.py (which builds the models
// with torchvision and tools/dynconv_torch.py, randomises every weight, BatchNorm statistic and
// attention FC, and stores them exactly as F16).
//
// The data directory comes from the environment variable DYNCONV_MODEL_PARITY_DIR; it holds
// manifest.txt (the models generated, one per line) and <model>.safetensors per model: the
// model's state_dict under its PyTorch names, plus "input" [3, 3, H, W] and "logits"
// [3, num_classes] (F64), and metadata (model, num_classes, kernels, reduction, min_hidden,
// policy, ...). The generator deletes manifest.txt first and writes it last, so it exists only
// after a run that completed. Without the directory or its manifest every test is skipped (the
// per-model files may be a stale cache from an earlier run); a model the manifest does not list
// is skipped (generated with --models without it); a model it lists whose file is missing fails.
//
// Per model, through a dynconv::Session with 1 and with 2 threads: the float forward of the
// batch of 3 and of each sample alone (batch 1), and the double forward of the batch; error =
// max|ours - torch| / max|torch| over the logits compared; tolerances 1e-4 (float) and 1e-9
// (double); the argmax class of each sample must agree. The errors are printed (the key ends
// in _t1 / _t2, the session's threads) and recorded as test properties. Model::forward is the
// one-thread session, bit for bit. A strict load of the whole file must reject the two extra
// tensors "input" and "logits".
#include <dynconv/models/zoo.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/session.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace {

using dynconv::Index;
using dynconv::SafeTensors;
using dynconv::SafeTensorsWriter;
using dynconv::Tensor2;
using dynconv::Tensor4;
namespace models = dynconv::models;

constexpr double kFloatTolerance = 1e-4;
constexpr double kDoubleTolerance = 1e-9;

// The thread counts every comparison runs with (the second splits layers over the pool).
constexpr int kThreadCounts[] = {1, 2};

std::string threads_key(int threads) { return "_t" + std::to_string(threads); }

// The zoo, listed statically so that the test names exist without the data.
const char* const kModels[] = {"mobilenet_v2_x1_0",
                               "mobilenet_v2_x0_75",
                               "mobilenet_v2_x0_5",
                               "mobilenet_v2_x0_35",
                               "mobilenet_v3_small",
                               "resnet10",
                               "resnet18",
                               "dy_mobilenet_v2_x1_0",
                               "dy_mobilenet_v2_x0_75",
                               "dy_mobilenet_v2_x0_5",
                               "dy_mobilenet_v2_x0_35",
                               "dy_mobilenet_v3_small",
                               "dy_resnet10",
                               "dy_resnet18"};

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", v);
  return buf;
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec);
}

bool is_file(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

/// The data directory and its manifest, read once.
struct Manifest {
  std::string dir;
  std::string why;  // why there is no data; empty if there is
  std::vector<std::string> names;

  bool lists(const std::string& name) const {
    return std::find(names.begin(), names.end(), name) != names.end();
  }
};

Manifest read_manifest() {
  Manifest m;
  const char* env = std::getenv("DYNCONV_MODEL_PARITY_DIR");
  if (env == nullptr || *env == '\0') {
    m.why = "DYNCONV_MODEL_PARITY_DIR is not set";
    return m;
  }
  if (!is_directory(env)) {
    m.why = std::string("DYNCONV_MODEL_PARITY_DIR=") + env + " is not a directory";
    return m;
  }
  m.dir = env;
  const std::string path = m.dir + "/manifest.txt";
  std::ifstream in(path);
  if (!in) {
    m.why = path + " does not exist (the generator did not complete; any model files there "
                   "may be stale)";
    return m;
  }
  for (std::string line; std::getline(in, line);) {
    line = trim(line);
    if (!line.empty() && line[0] != '#') m.names.push_back(line);
  }
  return m;
}

const Manifest& manifest() {
  static const Manifest m = read_manifest();
  return m;
}

const char* const kHowToGenerate =
    ". Generate the data with PyTorch and torchvision (Debian: apt install python3-torch "
    "python3-torchvision): /usr/bin/python3 tools/make_model_parity_data.py --out DIR, then run "
    "with DYNCONV_MODEL_PARITY_DIR=DIR";

/// One model's file, split into the parameters (a safetensors image of their own, so that a
/// strict load sees exactly the state_dict) and the test tensors.
struct ModelData {
  std::string name;
  std::string path;
  std::optional<SafeTensors> file;     // everything, as written by the generator
  std::optional<SafeTensors> weights;  // the state_dict only
  std::map<std::string, std::string> meta;

  const std::string& str(const std::string& key) const {
    const auto it = meta.find(key);
    if (it == meta.end())
      dynconv::fail<dynconv::FormatError>(path, ": metadata has no '", key, "'");
    return it->second;
  }
  Index integer(const std::string& key) const { return static_cast<Index>(std::stoll(str(key))); }
};

const std::vector<std::string> kTestTensors = {"input", "logits", "input_odd", "logits_odd"};

std::shared_ptr<const ModelData> load_model_data(const std::string& path, const std::string& name) {
  auto d = std::make_shared<ModelData>();
  d->name = name;
  d->path = path;
  d->file.emplace(SafeTensors::load(path));
  d->meta = d->file->metadata();
  SafeTensorsWriter w;
  for (const std::string& t : d->file->names()) {
    if (std::find(kTestTensors.begin(), kTestTensors.end(), t) != kTestTensors.end()) continue;
    const dynconv::TensorEntry& e = d->file->entry(t);
    w.add_raw(t, e.dtype, e.shape, d->file->raw_data(t), e.end - e.begin);
  }
  d->weights.emplace(SafeTensors::parse(w.to_bytes(), path + " (state_dict only)"));
  return d;
}

/// The data of one model, loaded once for all the tests of that model (the last one is kept).
std::shared_ptr<const ModelData> model_data(const std::string& path, const std::string& name) {
  static std::shared_ptr<const ModelData> last;
  if (!last || last->path != path) {
    last.reset();
    last = load_model_data(path, name);
  }
  return last;
}

models::ModelOptions options_for(const ModelData& d) {
  models::ModelOptions o;
  o.num_classes(d.integer("num_classes"));
  if (d.name.rfind("dy_", 0) == 0) {
    o.kernels(d.integer("kernels")).reduction(d.integer("reduction"));
    o.min_hidden(d.integer("min_hidden"));
    const std::string& policy = d.str("policy");
    if (policy != "default") o.policy(models::policy_by_name(policy));
  }
  return o;
}

template <typename T>
std::unique_ptr<models::Model<T>> make_loaded_model(const ModelData& d) {
  std::unique_ptr<models::Model<T>> m = models::create<T>(d.name, options_for(d));
  m->load(*d.weights);
  return m;
}

/// Sample n of x as a batch of one.
template <typename T>
Tensor4<T> sample(const Tensor4<T>& x, Index n) {
  Tensor4<T> s(1, x.dimension(1), x.dimension(2), x.dimension(3));
  const Index size = s.size();
  std::copy(x.data() + n * size, x.data() + (n + 1) * size, s.data());
  return s;
}

/// Row n of y as a [1, C] tensor.
Tensor2<double> row(const Tensor2<double>& y, Index n) {
  Tensor2<double> r(1, y.dimension(1));
  std::copy(y.data() + n * y.dimension(1), y.data() + (n + 1) * y.dimension(1), r.data());
  return r;
}

/// max|ours - ref| / max|ref|; infinity if the shapes differ, NaN if ours has a NaN.
template <typename T>
double relative_error(const Tensor2<T>& ours, const Tensor2<double>& ref) {
  if (ours.dimension(0) != ref.dimension(0) || ours.dimension(1) != ref.dimension(1))
    return INFINITY;
  double diff = 0, scale = 0;
  for (Index i = 0; i < ref.size(); ++i) {
    const double d = std::abs(static_cast<double>(ours.data()[i]) - ref.data()[i]);
    diff = std::isnan(d) || std::isnan(diff) ? NAN : std::max(diff, d);
    scale = std::max(scale, std::abs(ref.data()[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

template <typename T>
Index argmax_row(const Tensor2<T>& y, Index n) {
  const T* p = y.data() + n * y.dimension(1);
  return static_cast<Index>(std::max_element(p, p + y.dimension(1)) - p);
}

/// Expects the argmax of ours to be PyTorch's for each sample; a class whose logit is within
/// `slack` of PyTorch's top logit is accepted too (a near tie that rounding may flip).
template <typename T>
void expect_same_argmax(const std::string& what, const Tensor2<T>& ours, const Tensor2<double>& ref,
                        double slack) {
  ASSERT_EQ(ours.dimension(0), ref.dimension(0));
  for (Index n = 0; n < ref.dimension(0); ++n) {
    const Index mine = argmax_row(ours, n), theirs = argmax_row(ref, n);
    if (mine == theirs) continue;
    const double top = ref(n, theirs), alt = ref(n, mine);
    EXPECT_LE(top - alt, slack) << what << ": sample " << n << ": argmax " << mine
                                << " but PyTorch's is " << theirs << " (PyTorch logits " << top
                                << " vs " << alt << ")";
  }
}

void report(const std::string& model, const std::string& key, double err, double tolerance) {
  std::cout << "[ model    ] " << model << " " << key << " relative error " << sci(err)
            << " (tolerance " << sci(tolerance) << ")" << std::endl;
  ::testing::Test::RecordProperty(key, sci(err));
}

class ModelParity : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    name_ = GetParam();
    const Manifest& m = manifest();
    if (!m.why.empty()) GTEST_SKIP() << "PyTorch model parity data: " << m.why << kHowToGenerate;
    if (!m.lists(name_))
      GTEST_SKIP() << m.dir << "/manifest.txt does not list " << name_
                   << " (generated with --models without it?)" << kHowToGenerate;
    path_ = m.dir + "/" + name_ + ".safetensors";
    ASSERT_TRUE(is_file(path_)) << m.dir << "/manifest.txt lists " << name_ << " but " << path_
                                << " does not exist";
    data_ = model_data(path_, name_);
    ASSERT_EQ(data_->str("model"), name_) << path_ << ": metadata names another model";
  }

  std::string name_, path_;
  std::shared_ptr<const ModelData> data_;
};

TEST_P(ModelParity, FloatBatchAndSingleSamples) {
  const ModelData& d = *data_;
  const Tensor4<float> x = d.file->get<float, 4>("input");
  const Tensor2<double> ref = d.file->get<double, 2>("logits");
  ASSERT_EQ(x.dimension(0), ref.dimension(0));
  ASSERT_EQ(ref.dimension(1), d.integer("num_classes"));
  const auto model = make_loaded_model<float>(d);
  ASSERT_EQ(model->num_classes(), ref.dimension(1));
  double scale = 0;
  for (Index i = 0; i < ref.size(); ++i) scale = std::max(scale, std::abs(ref.data()[i]));

  for (const int threads : kThreadCounts) {
    const std::string t = threads_key(threads);
    dynconv::Session<float> session(*model, threads);
    const Tensor2<float> y = session.forward(x);
    const double err = relative_error(y, ref);
    report(name_, "float_batch" + std::to_string(x.dimension(0)) + t, err, kFloatTolerance);
    EXPECT_LE(err, kFloatTolerance) << name_ << ": float, batch of " << x.dimension(0) << ", " << threads
                                    << " threads";
    expect_same_argmax(name_ + " float batch" + t, y, ref, 2 * kFloatTolerance * scale);
    if (threads == 1) {
      // Model::forward is the one-thread session.
      const Tensor2<float> plain = model->forward(x);
      ASSERT_EQ(plain.size(), y.size());
      EXPECT_TRUE(std::equal(plain.data(), plain.data() + plain.size(), y.data()))
          << name_ << ": Model::forward differs from a one-thread Session";
    }

    double worst = 0;
    for (Index n = 0; n < x.dimension(0); ++n) {
      const Tensor2<float> yn = session.forward(sample(x, n));
      const Tensor2<double> rn = row(ref, n);
      const double e = relative_error(yn, rn);
      worst = std::isnan(e) ? e : std::max(worst, e);
      EXPECT_LE(e, kFloatTolerance) << name_ << ": float, sample " << n << " alone, " << threads << " threads";
      expect_same_argmax(name_ + " float sample " + std::to_string(n) + t, yn, rn, 2 * kFloatTolerance * scale);
    }
    report(name_, "float_batch1_worst" + t, worst, kFloatTolerance);
  }
}

TEST_P(ModelParity, DoubleBatch) {
  const ModelData& d = *data_;
  const Tensor4<double> x = d.file->get<double, 4>("input");
  const Tensor2<double> ref = d.file->get<double, 2>("logits");
  const auto model = make_loaded_model<double>(d);
  for (const int threads : kThreadCounts) {
    dynconv::Session<double> session(*model, threads);
    const Tensor2<double> y = session.forward(x);
    const double err = relative_error(y, ref);
    report(name_, "double_batch" + std::to_string(x.dimension(0)) + threads_key(threads), err, kDoubleTolerance);
    EXPECT_LE(err, kDoubleTolerance) << name_ << ": double, batch of " << x.dimension(0) << ", " << threads
                                     << " threads";
    expect_same_argmax(name_ + " double batch" + threads_key(threads), y, ref, 0.0);
  }
}

// An odd, non-square image (33x47: odd feature maps after every stride) against PyTorch, in
// float and double, on 1 and 2 threads.
TEST_P(ModelParity, OddNonSquareInput) {
  const ModelData& d = *data_;
  const Tensor2<double> ref = d.file->get<double, 2>("logits_odd");
  const auto model_f = make_loaded_model<float>(d);
  const auto model_d = make_loaded_model<double>(d);
  const Tensor4<float> x_f = d.file->get<float, 4>("input_odd");
  const Tensor4<double> x_d = d.file->get<double, 4>("input_odd");
  for (const int threads : kThreadCounts) {
    const std::string t = threads_key(threads);
    dynconv::Session<float> session_f(*model_f, threads);
    const double err_f = relative_error(session_f.forward(x_f), ref);
    report(name_, "float_33x47" + t, err_f, kFloatTolerance);
    EXPECT_LE(err_f, kFloatTolerance) << name_ << ": float, 33x47, " << threads << " threads";
    dynconv::Session<double> session_d(*model_d, threads);
    const double err_d = relative_error(session_d.forward(x_d), ref);
    report(name_, "double_33x47" + t, err_d, kDoubleTolerance);
    EXPECT_LE(err_d, kDoubleTolerance) << name_ << ": double, 33x47, " << threads << " threads";
  }
}

// The file holds the state_dict plus "input" and "logits": a strict load of all of it must
// name those two as unexpected; the state_dict alone loads (the tests above).
TEST_P(ModelParity, StrictLoadRejectsExtraTensors) {
  const ModelData& d = *data_;
  const auto model = models::create<float>(d.name, options_for(d));
  try {
    model->load(*d.file);
    ADD_FAILURE() << name_ << ": a strict load accepted the extra tensors 'input' and 'logits'";
  } catch (const dynconv::FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'input'"), std::string::npos) << what;
    EXPECT_NE(what.find("'logits'"), std::string::npos) << what;
  }
}

// PyTorch's parameter count (recorded by the generator: sum(p.numel()), BatchNorm's weight and
// bias included) equals the cost model's.
TEST_P(ModelParity, ParameterCount) {
  const ModelData& d = *data_;
  const std::int64_t torch_params = d.integer("params");
  const auto model = models::create<float>(d.name, options_for(d));
  const Index h = d.integer("input_height"), w = d.integer("input_width");
  const std::int64_t ours = model->cost(h, w).total.params;
  std::cout << "[ model    ] " << name_ << " params: ours " << ours << ", PyTorch " << torch_params
            << std::endl;
  RecordProperty("params_ours", std::to_string(ours));
  RecordProperty("params_torch", std::to_string(torch_params));
  EXPECT_EQ(ours, torch_params) << name_;
}

// The static list above is the zoo.
TEST(ModelParityList, MatchesZooNames) {
  const std::vector<std::string> listed(std::begin(kModels), std::end(kModels));
  EXPECT_EQ(listed, models::zoo_names());
}

// Every model the manifest lists is one of the zoo's (so has a test above).
TEST(ModelParityList, ManifestListsZooModels) {
  const Manifest& m = manifest();
  if (!m.why.empty()) GTEST_SKIP() << "PyTorch model parity data: " << m.why << kHowToGenerate;
  EXPECT_FALSE(m.names.empty()) << m.dir << "/manifest.txt lists no models";
  const std::vector<std::string> zoo = models::zoo_names();
  std::set<std::string> seen;
  for (const std::string& entry : m.names) {
    const std::string name = entry.substr(0, entry.find('@'));  // "<model>@<policy>" too
    EXPECT_NE(std::find(zoo.begin(), zoo.end(), name), zoo.end())
        << m.dir << "/manifest.txt lists '" << entry << "', which is not a zoo model";
    EXPECT_TRUE(seen.insert(entry).second) << m.dir << "/manifest.txt lists '" << entry << "' twice";
  }
}

// Non-default policies ("<model>@<policy>" in the manifest): the C++ policy of that name
// (models::policy_by_name, by convolution role) makes the same convolutions dynamic as the
// Python one (by parameter name), and the logits match PyTorch's.
TEST(ModelParityPolicies, NamedPoliciesMatchPyTorch) {
  const Manifest& m = manifest();
  if (!m.why.empty()) GTEST_SKIP() << "PyTorch model parity data: " << m.why << kHowToGenerate;
  int cases = 0;
  for (const std::string& entry : m.names) {
    const auto at = entry.find('@');
    if (at == std::string::npos) continue;
    SCOPED_TRACE(entry);
    ++cases;
    const auto d = load_model_data(m.dir + "/" + entry + ".safetensors", entry.substr(0, at));
    EXPECT_EQ(d->str("policy"), entry.substr(at + 1));
    const auto model = make_loaded_model<float>(*d);  // strict: names and shapes must agree
    const Tensor4<float> x = d->file->get<float, 4>("input");
    const Tensor2<double> ref = d->file->get<double, 2>("logits");
    for (const int threads : kThreadCounts) {
      dynconv::Session<float> session(*model, threads);
      const double err = relative_error(session.forward(x), ref);
      report(entry, "float_batch3" + threads_key(threads), err, kFloatTolerance);
      EXPECT_LE(err, kFloatTolerance) << threads << " threads";
    }
  }
  EXPECT_GE(cases, 3) << "the generator writes 3 named-policy cases";
}

INSTANTIATE_TEST_SUITE_P(Zoo, ModelParity, ::testing::ValuesIn(kModels),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
