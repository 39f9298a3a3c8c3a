// dynconv and LibTorch (PyTorch's C++ runtime) in one process: the same whole models, batch 1
// and 8, 1 and 2 threads, float, 224x224, run alternately case by case.
//
// Build (off by default; needs Debian's libtorch-dev):
//   cmake -S . -B build -DDYNCONV_BUILD_LIBTORCH_BENCH=ON
//   (add -DTorch_DIR=/usr/lib/x86_64-linux-gnu/cmake/Torch if CMake does not find it)
//   cmake --build build --target bench_libtorch
// Run, after exporting the TorchScript models with the Python side:
//   /usr/bin/python3 benchmarks/compare_pytorch.py --export-torchscript /tmp/ts
//   ./build/benchmarks/bench_libtorch --torchscript_dir=/tmp/ts [--benchmark_filter=...]
//
// Names: LibTorch/<model>/batch:<B>/threads:<T>/<variant> (+ "/real_time" appended by Google
// Benchmark), <model> a static zoo name (mobilenet_v3_small, ...), <variant>:
//   torch_frozen_static   <model>.script.pt (torch.jit.script of the eval() model) after
//                         torch::jit::freeze and torch::jit::optimize_for_inference, the C++
//                         equivalents of compare_pytorch.py's frozen_static
//   torch_traced_dynamic  dy_<model>.b<B>.traced.pt: torch.jit.trace of compare_pytorch.py's
//                         eager_dynamic model (every dynamic conv as ONE conv2d with the batch
//                         folded into the groups), traced at batch B
//   dynconv_static        dynconv::Session on create<float>("<model>")
//   dynconv_dynamic       dynconv::Session on create<float>("dy_<model>")
// The four variants of one (model, batch, threads) are registered next to each other, so they
// run one after the other; --benchmark_repetitions=N --benchmark_enable_random_interleaving=true
// interleaves them further. LibTorch: at::set_num_threads(T), c10::InferenceMode. Weights are
// fresh (the TorchScript files hold PyTorch's initialisation, dynconv its own: timing does not
// depend on them); the input is the same random tensor for all four. Counters: MAdds of the
// dynconv model of the variant's kind (static or dynamic), GFLOPS = 2 x MAdds x batch / s.
#include <dynconv/models/zoo.hpp>

#include <benchmark/benchmark.h>
#include <nlohmann/json.hpp>
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/version.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using dynconv::Index;
using dynconv::Session;
using dynconv::models::Model;

constexpr Index kSize = 224;
std::string g_dir;  // --torchscript_dir

struct Entry {
  std::string name;
  std::string static_script;
  std::map<Index, std::string> dynamic_traced;  // batch -> file
};

std::vector<Entry> read_manifest(const std::string& dir) {
  std::ifstream in(dir + "/manifest.json");
  if (!in) throw std::runtime_error("bench_libtorch: cannot read " + dir + "/manifest.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  std::vector<Entry> entries;
  for (const auto& m : j.at("models")) {
    Entry e{m.at("name").get<std::string>(), m.at("static_script").get<std::string>(), {}};
    for (const auto& [batch, file] : m.at("dynamic_traced").items())
      e.dynamic_traced[std::stoll(batch)] = file.get<std::string>();
    entries.push_back(std::move(e));
  }
  return entries;
}

torch::jit::Module& torch_module(const std::string& file, bool freeze) {
  static std::map<std::string, std::unique_ptr<torch::jit::Module>> cache;
  auto& slot = cache[file];
  if (!slot) {
    torch::jit::Module m = torch::jit::load(g_dir + "/" + file);
    m.eval();
    if (freeze) {
      torch::jit::Module frozen = torch::jit::freeze(m);
      m = torch::jit::optimize_for_inference(frozen);
    }
    slot = std::make_unique<torch::jit::Module>(std::move(m));
  }
  return *slot;
}

const Model<float>& dynconv_model(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Model<float>>> cache;
  auto& slot = cache[name];
  if (!slot) slot = dynconv::models::create<float>(name);
  return *slot;
}

Session<float>& dynconv_session(const std::string& name, int threads) {
  static std::map<std::pair<std::string, int>, std::unique_ptr<Session<float>>> cache;
  auto& slot = cache[{name, threads}];
  if (!slot) slot = std::make_unique<Session<float>>(dynconv_model(name), threads);
  return *slot;
}

/// The same random NCHW input for both libraries.
struct Input {
  torch::Tensor torch_x;
  dynconv::Tensor4<float> dynconv_x;
};

const Input& input(Index batch) {
  static std::map<Index, Input> cache;
  auto it = cache.find(batch);
  if (it == cache.end()) {
    torch::manual_seed(20261125);
    Input in{torch::randn({batch, 3, kSize, kSize}).contiguous(),
             dynconv::Tensor4<float>(batch, 3, kSize, kSize)};
    std::memcpy(in.dynconv_x.data(), in.torch_x.data_ptr<float>(),
                sizeof(float) * static_cast<std::size_t>(in.dynconv_x.size()));
    it = cache.emplace(batch, std::move(in)).first;
  }
  return it->second;
}

void set_counters(benchmark::State& state, const std::string& dynconv_name, Index batch) {
  const double madds = static_cast<double>(dynconv_model(dynconv_name).cost(kSize, kSize).total.madds());
  state.counters["MAdds"] = madds;
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * madds * static_cast<double>(batch),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void run_torch(benchmark::State& state, const std::string& file, bool freeze,
               const std::string& dynconv_name, Index batch, int threads) {
  at::set_num_threads(threads);
  torch::jit::Module& m = torch_module(file, freeze);  // loads (and freezes) outside the guard
  c10::InferenceMode guard;
  const std::vector<torch::jit::IValue> args{input(batch).torch_x};
  for (int i = 0; i < 3; ++i) m.forward(args);  // warm-up: the profiling executor optimises
  for (auto _ : state) {
    torch::Tensor y = m.forward(args).toTensor();
    benchmark::DoNotOptimize(y.data_ptr());
  }
  set_counters(state, dynconv_name, batch);
}

void run_dynconv(benchmark::State& state, const std::string& name, Index batch, int threads) {
  Session<float>& s = dynconv_session(name, threads);
  const dynconv::Tensor4<float>& x = input(batch).dynconv_x;
  benchmark::DoNotOptimize(s.forward(x).data());  // warm-up
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.forward(x).data());
    benchmark::ClobberMemory();
  }
  set_counters(state, name, batch);
}

}  // namespace

int main(int argc, char** argv) {
  // --torchscript_dir=DIR (ours) out of argv before Google Benchmark sees it.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--torchscript_dir=", 0) == 0)
      g_dir = a.substr(std::strlen("--torchscript_dir="));
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  if (g_dir.empty()) {
    std::fprintf(stderr,
                 "usage: bench_libtorch --torchscript_dir=DIR [benchmark flags]\n"
                 "  DIR from: /usr/bin/python3 benchmarks/compare_pytorch.py "
                 "--export-torchscript DIR\n");
    return 2;
  }
  std::vector<Entry> entries;
  try {
    entries = read_manifest(g_dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_libtorch: %s\n", e.what());
    return 1;
  }
  benchmark::AddCustomContext("torchscript_dir", g_dir);
  benchmark::AddCustomContext("libtorch", TORCH_VERSION);
  for (const Entry& e : entries)
    for (Index batch : {1, 8})
      for (int threads : {1, 2}) {
        const std::string prefix = "LibTorch/" + e.name + "/batch:" + std::to_string(batch) +
                                   "/threads:" + std::to_string(threads) + "/";
        auto reg = [&](const std::string& variant, auto fn) {
          benchmark::RegisterBenchmark((prefix + variant).c_str(), fn)
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        };
        const std::string name = e.name, dy = "dy_" + e.name, script = e.static_script;
        reg("torch_frozen_static", [=](benchmark::State& s) {
          run_torch(s, script, true, name, batch, threads);
        });
        auto traced = e.dynamic_traced.find(batch);
        if (traced != e.dynamic_traced.end()) {
          const std::string file = traced->second;
          reg("torch_traced_dynamic", [=](benchmark::State& s) {
            run_torch(s, file, false, dy, batch, threads);
          });
        }
        reg("dynconv_static", [=](benchmark::State& s) { run_dynconv(s, name, batch, threads); });
        reg("dynconv_dynamic", [=](benchmark::State& s) { run_dynconv(s, dy, batch, threads); });
      }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
