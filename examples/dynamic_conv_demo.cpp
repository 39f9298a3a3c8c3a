// dynconv demo: one dynamic convolution layer next to its static twin.
//
// Builds a 3x3 DynamicConv2d (K = 4 kernels, 32 -> 64 channels) and a static Conv2d of the
// same shape, feeds both three different 56x56 inputs, and shows what dynamic convolution is:
// every input gets its own mix of the K kernels (the attention), for a few percent more
// multiply-adds. Then it "upcycles" the static layer (all K kernels = the static kernel) and
// checks that the dynamic layer then computes exactly the static function.
//
// Run: bash tools/quickstart.sh demo   (or build target dynamic_conv_demo)
#include <dynconv/dynconv.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>

using namespace dynconv;

// Three inputs [3, 32, 56, 56] with different statistics: a ramp, stripes, and noise.
Tensor4<float> make_inputs() {
  Tensor4<float> x(3, 32, 56, 56);
  Tensor4<float> noise(1, 32, 56, 56);
  noise.setRandom();
  for (Index c = 0; c < 32; ++c)
    for (Index i = 0; i < 56; ++i)
      for (Index j = 0; j < 56; ++j) {
        x(0, c, i, j) = static_cast<float>(i + j) / 112.f * (c % 4);
        x(1, c, i, j) = std::sin(0.3f * static_cast<float>(j + c));
        x(2, c, i, j) = 2.f * noise(0, c, i, j) - 1.f;
      }
  return x;
}

template <typename F>
double milliseconds(F&& f, int repeats = 20) {
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r) f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / repeats;
}

int main() {
  DynamicConv2d<float> dynamic(DynamicConv2dOptions(32, 64, 3).padding(1).kernels(4));
  Conv2d<float> fixed(Conv2dOptions(32, 64, 3).padding(1));
  const Tensor4<float> x = make_inputs();

  Tensor2<float> attention;
  const Tensor4<float> y = dynamic.forward(x, &attention);
  std::printf("%s on input %s -> output %s\n", dynamic.description().c_str(),
              shape_str(x.dimensions()).c_str(), shape_str(y.dimensions()).c_str());
  const char* names[] = {"ramp", "stripes", "noise"};
  std::printf("attention over the K = 4 kernels (each row sums to 1; this layer is untrained,\n"
              "so its attention is mild: training makes it sharper):\n");
  for (Index n = 0; n < 3; ++n)
    std::printf("  %-8s %.3f %.3f %.3f %.3f\n", names[n], attention(n, 0), attention(n, 1),
                attention(n, 2), attention(n, 3));

  const LayerCost s = fixed.cost(56, 56), d = dynamic.cost(56, 56);
  std::printf("\ncost per sample       %12s %12s\n", "static", "dynamic");
  std::printf("  parameters          %12lld %12lld  (x%.2f)\n", (long long)s.params, (long long)d.params,
              double(d.params) / s.params);
  std::printf("  conv MAdds          %12lld %12lld\n", (long long)s.conv_madds, (long long)d.conv_madds);
  std::printf("  attention MAdds     %12lld %12lld\n", (long long)s.attention_madds, (long long)d.attention_madds);
  std::printf("  aggregation MAdds   %12lld %12lld\n", (long long)s.aggregation_madds, (long long)d.aggregation_madds);
  std::printf("  total MAdds         %12lld %12lld  (+%.2f%%)\n", (long long)s.madds(), (long long)d.madds(),
              100.0 * (double(d.madds()) / s.madds() - 1));
  const double ts = milliseconds([&] { fixed.forward(x); });
  const double td = milliseconds([&] { dynamic.forward(x); });
  std::printf("  time, batch of 3    %9.2f ms %9.2f ms  (x%.2f)\n", ts, td, td / ts);

  // Upcycling: all K kernels set to the static kernel; any attention then gives the static output.
  const Tensor4<float> w = fixed.weight();
  Tensor5<float> wk(4, 64, 32, 3, 3);
  Tensor2<float> bk(4, 64);
  for (Index k = 0; k < 4; ++k) {
    std::copy(w.data(), w.data() + w.size(), wk.data() + k * w.size());
    for (Index c = 0; c < 64; ++c) bk(k, c) = fixed.bias()(c);
  }
  dynamic.set_weight(wk);
  dynamic.set_bias(bk);
  const Tensor4<float> a = dynamic.forward(x), b = fixed.forward(x);
  float diff = 0, scale = 0;
  for (Index i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a.data()[i] - b.data()[i]));
    scale = std::max(scale, std::abs(b.data()[i]));
  }
  std::printf("\nupcycled static kernel: max |dynamic - static| = %.2g (relative %.2g)\n", diff, diff / scale);
  return diff / scale < 1e-5f ? 0 : 1;
}
