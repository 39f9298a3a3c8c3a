// Whole zoo models, static and dynamic (K = 4, each model's default policy), float, 224x224,
// through dynconv::Session: every model of models::all_zoo_names() (the 14, resnet50 and
// dy_resnet50, the od_ ones at K = 4), batch 1 and 8, 1 and 2 threads.
//
// Names: Model/<zoo name>/batch:<B>/threads:<T>, to which Google Benchmark appends
// "/real_time" in its output (UseRealTime) and which --benchmark_filter also sees, so select
// with a trailing "/", e.g. --benchmark_filter='Model/dy_resnet18/batch:1/threads:1/'.
// Real (wall-clock) time, in milliseconds: the threads are the Session's own, so the CPU
// time of the calling thread would undercount.
// Counters:
//   GFLOPS      2 x the model's multiply-adds per sample (conv + attention + aggregation +
//               the dense head, Model::cost(224, 224).total.madds()) x batch, per second; as
//               in bench_conv the value is in FLOP/s (the console prints e.g. "150G/s")
//   peak_frac   GFLOPS / (T x the single-core FP32 FMA peak measured at start-up with
//               fma_peak.hpp's measure_fma_peak_gflops(), printed in the context as
//               fma_peak_gflops): with T threads the peak is taken as T times one core's
//   MAdds       the model's multiply-adds per sample
//   params      the model's parameters (BatchNorm folded)
//
// Every model with dynamic convolutions also runs with its experts stored as BF16 and F16
// (DynamicConv2d::set_expert_precision, the opt-in of issue 13) as Model/<zoo
// name>:bfloat16/... and Model/<zoo name>:float16/...
//
// Each model is built once (on first use, cached by name; weights as freshly initialised,
// which does not change the time), each (model, threads) gets one Session, reused by both
// batch sizes; every case runs one untimed forward pass first (warm-up: workspaces, pages,
// caches). The input is random with a fixed seed, the same for every model of a batch size.
// tools: benchmarks/compare_pytorch.py runs these cases alternately with the PyTorch peers.
//
// With the environment variable DYNCONV_BENCH_GRAPH_DIR set to a directory of graph files
// (docs/graph_format.md; e.g. the output of tools/make_graph_parity_data.py, or files written by
// tools/export_safetensors.py --model NAME --input-shape ...), every file there named
// <zoo name>.safetensors also runs as GraphFile/<zoo name>/batch:<B>/threads:<T>: the same
// network loaded by load_graph instead of built by the zoo, for the "a graph file runs as fast
// as the zoo model" comparison (same run, same input, same counters).
#include <dynconv/graph_file.hpp>
#include <dynconv/models/zoo.hpp>

#include <benchmark/benchmark.h>

#include "fma_peak.hpp"

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

using dynconv::Index;
using dynconv::Session;
using dynconv::Tensor4;
using dynconv::models::Model;

constexpr Index kSize = 224;
double g_peak_gflops = 0;  // one core, measured in main()

/// The zoo model of `name`, or for "<zoo name>:bfloat16" / ":float16" that model with its
/// experts stored so.
const Model<float>& model(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Model<float>>> cache;
  auto& slot = cache[name];
  if (!slot) {
    const std::size_t colon = name.find(':');
    slot = dynconv::models::create<float>(name.substr(0, colon));
    if (colon != std::string::npos)
      slot->set_expert_precision(name.substr(colon + 1) == "bfloat16" ? dynconv::ExpertPrecision::BFloat16
                                                                      : dynconv::ExpertPrecision::Float16);
  }
  return *slot;
}

Session<float>& session(const std::string& name, int threads) {
  static std::map<std::pair<std::string, int>, std::unique_ptr<Session<float>>> cache;
  auto& slot = cache[{name, threads}];
  if (!slot) slot = std::make_unique<Session<float>>(model(name), threads);
  return *slot;
}

/// The graph of DIR/<name>.safetensors (a graph file), loaded once.
const dynconv::Graph<float>& graph_file(const std::string& dir, const std::string& name) {
  static std::map<std::string, std::unique_ptr<dynconv::GraphFile<float>>> cache;
  auto& slot = cache[name];
  if (!slot) {
    const dynconv::SafeTensors file = dynconv::SafeTensors::load(dir + "/" + name + ".safetensors");
    slot = std::make_unique<dynconv::GraphFile<float>>(dynconv::load_graph<float>(file));
  }
  return slot->graph;
}

/// [batch, 3, 224, 224], N(0, 1) from a fixed seed.
const Tensor4<float>& input(Index batch) {
  static std::map<Index, Tensor4<float>> cache;
  auto it = cache.find(batch);
  if (it == cache.end()) {
    Tensor4<float> x(batch, 3, kSize, kSize);
    std::mt19937 gen(20261125u);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = normal(gen);
    it = cache.emplace(batch, std::move(x)).first;
  }
  return it->second;
}

/// Times `s` on [batch, 3, 224, 224]; the counters come from the zoo model `name`.
void run_session(benchmark::State& state, Session<float>& s, const std::string& name, Index batch,
                 int threads) {
  const Model<float>& m = model(name);
  const Tensor4<float>& x = input(batch);
  benchmark::DoNotOptimize(s.forward(x).data());  // warm-up
  for (auto _ : state) {
    const dynconv::Tensor2<float>& logits = s.forward(x);
    benchmark::DoNotOptimize(logits.data());
    benchmark::ClobberMemory();
  }
  const dynconv::LayerCost cost = m.cost(kSize, kSize).total;
  const double flops = 2.0 * static_cast<double>(cost.madds()) * static_cast<double>(batch);
  state.counters["GFLOPS"] =
      benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  // A rate too, so Google Benchmark divides by the time: prints as "<fraction>/s".
  state.counters["peak_frac"] =
      benchmark::Counter(flops / (g_peak_gflops * 1e9 * threads),
                         benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MAdds"] = static_cast<double>(cost.madds());
  state.counters["params"] = static_cast<double>(cost.params);
}

void run(benchmark::State& state, const std::string& name, Index batch, int threads) {
  run_session(state, session(name, threads), name, batch, threads);
}

void run_graph_file(benchmark::State& state, const std::string& dir, const std::string& name,
                    Index batch, int threads) {
  static std::map<std::pair<std::string, int>, std::unique_ptr<Session<float>>> cache;
  auto& slot = cache[{name, threads}];
  if (!slot) slot = std::make_unique<Session<float>>(graph_file(dir, name), threads);
  run_session(state, *slot, name, batch, threads);
}

}  // namespace

int main(int argc, char** argv) {
  g_peak_gflops = bench::measure_fma_peak_gflops();
  benchmark::AddCustomContext("fma_peak_gflops", std::to_string(g_peak_gflops));
  benchmark::AddCustomContext("input", "random N(0,1), fixed seed, [B, 3, 224, 224] NCHW float");
  const char* graph_dir = std::getenv("DYNCONV_BENCH_GRAPH_DIR");
  std::vector<std::string> names;
  for (const std::string& name : dynconv::models::all_zoo_names()) {
    names.push_back(name);
    if (name.rfind("dy_", 0) == 0 || name.rfind("od_", 0) == 0)  // the models with dynamic layers
      for (const char* p : {":bfloat16", ":float16"}) names.push_back(name + p);
  }
  for (const std::string& name : names) {
    const bool has_file =
        graph_dir && std::ifstream(std::string(graph_dir) + "/" + name + ".safetensors").good();
    for (Index batch : {1, 8})
      for (int threads : {1, 2}) {
        const std::string suffix = "/" + name + "/batch:" + std::to_string(batch) +
                                   "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(("Model" + suffix).c_str(),
                                     [name, batch, threads](benchmark::State& s) {
                                       run(s, name, batch, threads);
                                     })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
        if (!has_file) continue;
        const std::string dir = graph_dir;
        benchmark::RegisterBenchmark(("GraphFile" + suffix).c_str(),
                                     [dir, name, batch, threads](benchmark::State& s) {
                                       run_graph_file(s, dir, name, batch, threads);
                                     })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
