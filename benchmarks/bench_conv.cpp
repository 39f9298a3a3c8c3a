// Static vs dynamic convolution on real layer shapes of MobileNetV2, MobileNetV3-Small and
// ResNet-18 (224x224 input), batch 1 and 8, float, one thread.
//
// Names: Conv/<layer>/<static|dynamic>/batch:<B>, with the algorithm Auto picks as the label;
// a layer that Auto runs by Winograd (at batch 1 or only at 8) also runs as Conv/<layer>:im2col/... with Im2colGemm
// forced, to compare the two in one run. Counters:
//   GFLOPS      2 x all multiply-adds of the batch (conv + attention + aggregation) per second
//   peak_frac   GFLOPS / the single-core FP32 FMA peak measured at start-up (fma_peak.hpp;
//               printed in the context as fma_peak_gflops)
//   conv_madds, attention_madds, aggregation_madds   per sample, as paper.md counts them
// Compare static and dynamic of the same layer and batch: they run in the same process.
#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>

#include <benchmark/benchmark.h>

#include "fma_peak.hpp"

#include <string>
#include <type_traits>

namespace {

using dynconv::Index;

struct Layer {
  const char* name;
  Index cin, cout, size, kernel, stride, groups;
};

// clang-format off
const Layer kLayers[] = {
  // name                      cin  cout size k  s  groups
  {"mbv2_expand_24x144_56",     24,  144, 56, 1, 1, 1},
  {"mbv2_dw3x3_144_s2_56",     144,  144, 56, 3, 2, 144},
  {"mbv2_project_144x32_28",   144,   32, 28, 1, 1, 1},
  {"mbv2_dw3x3_576_14",        576,  576, 14, 3, 1, 576},
  {"mbv2_1x1_320x1280_7",      320, 1280,  7, 1, 1, 1},
  {"mbv3s_expand_16x72_56",     16,   72, 56, 1, 1, 1},
  {"mbv3s_dw5x5_240_14",       240,  240, 14, 5, 1, 240},
  {"mbv3s_1x1_96x576_7",        96,  576,  7, 1, 1, 1},
  {"r18_3x3_64_56",             64,   64, 56, 3, 1, 1},
  {"r18_3x3_64x128_s2_56",      64,  128, 56, 3, 2, 1},
  {"r18_3x3_128_28",           128,  128, 28, 3, 1, 1},
  {"r18_3x3_256_14",           256,  256, 14, 3, 1, 1},
  {"r18_3x3_512_7",            512,  512,  7, 3, 1, 1},
};
// clang-format on

double g_peak_gflops = 0;  // measured in main()

template <typename Options>
Options shape_options(const Layer& l, dynconv::ConvAlgorithm algo) {
  return Options(l.cin, l.cout, l.kernel)
      .stride(l.stride)
      .padding(l.kernel / 2)
      .groups(l.groups)
      .bias(false)
      .algorithm(algo);
}

void set_counters(benchmark::State& state, const dynconv::LayerCost& cost, Index batch) {
  const double flops = 2.0 * static_cast<double>(cost.madds()) * static_cast<double>(batch);
  state.counters["GFLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["conv_madds"] = static_cast<double>(cost.conv_madds);
  state.counters["attention_madds"] = static_cast<double>(cost.attention_madds);
  state.counters["aggregation_madds"] = static_cast<double>(cost.aggregation_madds);
}


template <typename Layer_t, typename Options>
void run(benchmark::State& state, const Layer& l, Index batch, dynconv::ConvAlgorithm algo) {
  Layer_t layer(shape_options<Options>(l, algo));
  dynconv::NhwcTensor<float> x(batch, l.size, l.size, l.cin);
  x.tensor().setRandom();
  for (auto _ : state) {
    dynconv::NhwcTensor<float> y = layer.forward(x);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const dynconv::LayerCost cost = layer.cost(l.size, l.size);
  set_counters(state, cost, batch);
  // A rate too, so Google Benchmark divides by the time: prints as "<fraction>/s".
  state.counters["peak_frac"] = benchmark::Counter(
      2.0 * static_cast<double>(cost.madds()) * static_cast<double>(batch) / (g_peak_gflops * 1e9),
      benchmark::Counter::kIsIterationInvariantRate);
  // A static layer's batch shares its kernel (Winograd over the batch's tiles); a dynamic
  // layer's samples do not.
  const Index samples = std::is_same<Layer_t, dynconv::Conv2d<float>>::value ? batch : 1;
  state.SetLabel(dynconv::algorithm_name(dynconv::detail::run_algorithm(
      layer.algorithm(), layer.geometry().out_h(l.size), layer.geometry().out_w(l.size), samples)));
}

}  // namespace

int main(int argc, char** argv) {
  g_peak_gflops = bench::measure_fma_peak_gflops();
  benchmark::AddCustomContext("fma_peak_gflops", std::to_string(g_peak_gflops));
  using dynconv::ConvAlgorithm;
  for (const Layer& l : kLayers) {
    const dynconv::ConvGeometry g = shape_options<dynconv::Conv2dOptions>(l, ConvAlgorithm::Auto).geometry();
    // Winograd for some batch (a static batch of 8 small images runs it over the batch's tiles).
    const bool winograd = dynconv::detail::run_algorithm(dynconv::select_conv_algorithm(g), g.out_h(l.size),
                                                         g.out_w(l.size), 8) == ConvAlgorithm::Winograd;
    for (ConvAlgorithm algo : {ConvAlgorithm::Auto, ConvAlgorithm::Im2colGemm}) {
      if (algo == ConvAlgorithm::Im2colGemm && !winograd) continue;
      const std::string name = std::string("Conv/") + l.name + (algo == ConvAlgorithm::Auto ? "" : ":im2col");
      for (Index batch : {1, 8}) {
        const std::string suffix = "/batch:" + std::to_string(batch);
        benchmark::RegisterBenchmark((name + "/static" + suffix).c_str(),
                                     [l, batch, algo](benchmark::State& s) {
                                       run<dynconv::Conv2d<float>, dynconv::Conv2dOptions>(s, l, batch, algo);
                                     })
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
        benchmark::RegisterBenchmark((name + "/dynamic" + suffix).c_str(),
                                     [l, batch, algo](benchmark::State& s) {
                                       run<dynconv::DynamicConv2d<float>, dynconv::DynamicConv2dOptions>(s, l, batch,
                                                                                                         algo);
                                     })
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
