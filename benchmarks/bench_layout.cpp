// Why dynconv keeps activations in NHWC between layers: the same depthwise and 1x1
// convolutions on real MobileNet shapes, run on NCHW and on NHWC data (float, batch 1).
// NHWC runs the library's kernels; NCHW runs fair NCHW counterparts written here (depthwise
// vectorised along the output row, 1x1 as the GEMM W[Cout, Cin] x X[Cin, H*W]).
// The ratio NCHW/NHWC of these timings is quoted in conv2d.hpp's layout note.
#include <dynconv/conv2d.hpp>

#include <benchmark/benchmark.h>

#include <vector>

namespace {

using dynconv::Index;
using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Shape {
  Index c, h, stride;
};

// MobileNetV2 / V3-Small depthwise 3x3 layers (channels, input size, stride).
const Shape kDepthwise[] = {{144, 56, 1}, {192, 28, 1}, {384, 14, 1}, {576, 14, 2}, {960, 7, 1}};
// MobileNetV2 1x1 layers (Cin, size) -> Cout = 6 * Cin or Cin / 6.
const Shape kPointwise[] = {{24, 56, 1}, {64, 14, 1}, {160, 7, 1}};

// NCHW depthwise: for each channel and tap, a row-wise multiply-add over the valid columns.
void depthwise_nchw(const float* x, const float* w, float* y, Index c, Index h, Index s) {
  const Index oh = (h + 2 - 3) / s + 1, ow = oh;
  std::fill(y, y + c * oh * ow, 0.f);
  for (Index ch = 0; ch < c; ++ch) {
    const float* xc = x + ch * h * h;
    float* yc = y + ch * oh * ow;
    for (Index i = 0; i < 3; ++i)
      for (Index j = 0; j < 3; ++j) {
        const float wv = w[ch * 9 + i * 3 + j];
        for (Index r = 0; r < oh; ++r) {
          const Index ih = r * s - 1 + i;
          if (ih < 0 || ih >= h) continue;
          const Index c0 = (j == 0) ? 1 : 0;  // first column whose input is inside
          Index c1 = ow;
          while (c1 > 0 && (c1 - 1) * s - 1 + j >= h) --c1;
          const float* xr = xc + ih * h;
          float* yr = yc + r * ow;
          for (Index col = c0; col < c1; ++col) yr[col] += wv * xr[col * s - 1 + j];
        }
      }
  }
}

void BM_Depthwise(benchmark::State& state) {
  const Shape sh = kDepthwise[state.range(0)];
  const bool nhwc = state.range(1) == 1;
  dynconv::Conv2d<float> conv(
      dynconv::Conv2dOptions(sh.c, sh.c, 3).stride(sh.stride).padding(1).groups(sh.c).bias(false));
  dynconv::NhwcTensor<float> x(1, sh.h, sh.h, sh.c);
  x.tensor().setRandom();
  const Index oh = (sh.h - 1) / sh.stride + 1;
  std::vector<float> w(sh.c * 9), y(sh.c * oh * oh);
  for (auto& v : w) v = 0.5f;
  for (auto _ : state) {
    if (nhwc) {
      auto out = conv.forward(x);
      benchmark::DoNotOptimize(out.data());
    } else {
      depthwise_nchw(x.data(), w.data(), y.data(), sh.c, sh.h, sh.stride);
      benchmark::DoNotOptimize(y.data());
    }
  }
  state.SetLabel(std::string(nhwc ? "NHWC" : "NCHW") + " dw3x3 C=" + std::to_string(sh.c) +
                 " " + std::to_string(sh.h) + "x" + std::to_string(sh.h) + " s" +
                 std::to_string(sh.stride));
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * sh.c * oh * oh * 9,
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

void BM_Pointwise(benchmark::State& state) {
  const Shape sh = kPointwise[state.range(0)];
  const Index cin = sh.c, cout = sh.c * 6, hw = sh.h * sh.h;
  const bool nhwc = state.range(1) == 1;
  dynconv::Conv2d<float> conv(dynconv::Conv2dOptions(cin, cout, 1).bias(false));
  dynconv::NhwcTensor<float> x(1, sh.h, sh.h, cin);
  x.tensor().setRandom();
  Mat w = Mat::Random(cout, cin), xm = Mat::Random(cin, hw), ym(cout, hw);
  for (auto _ : state) {
    if (nhwc) {
      auto out = conv.forward(x);
      benchmark::DoNotOptimize(out.data());
    } else {
      ym.noalias() = w * xm;
      benchmark::DoNotOptimize(ym.data());
    }
  }
  state.SetLabel(std::string(nhwc ? "NHWC" : "NCHW") + " 1x1 " + std::to_string(cin) + "->" +
                 std::to_string(cout) + " " + std::to_string(sh.h) + "x" + std::to_string(sh.h));
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * cin * cout * hw,
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

BENCHMARK(BM_Depthwise)->ArgsProduct({{0, 1, 2, 3, 4}, {0, 1}})->ArgNames({"shape", "nhwc"});
BENCHMARK(BM_Pointwise)->ArgsProduct({{0, 1, 2}, {0, 1}})->ArgNames({"shape", "nhwc"});

}  // namespace

BENCHMARK_MAIN();
