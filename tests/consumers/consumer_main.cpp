// The consumer program that tests/consumers/{find_package,add_subdirectory} build: a user's
// first use of dynconv. Exits 0 only if the output has the expected shape and is finite.
#include <dynconv/dynconv.hpp>

#include <cmath>
#include <cstdio>

int main() {
  dynconv::DynamicConv2d<float> conv(dynconv::DynamicConv2dOptions(8, 16, 3).padding(1).kernels(4));
  dynconv::Tensor4<float> x(2, 8, 10, 10);  // [N, C, H, W]
  x.setRandom();
  auto y = conv.forward(x);  // [2, 8, 10, 10] -> [2, 16, 10, 10]

  const auto& d = y.dimensions();
  std::printf("dynconv consumer: output shape [%ld, %ld, %ld, %ld]\n", static_cast<long>(d[0]),
              static_cast<long>(d[1]), static_cast<long>(d[2]), static_cast<long>(d[3]));
  if (d[0] != 2 || d[1] != 16 || d[2] != 10 || d[3] != 10) {
    std::printf("dynconv consumer: expected shape [2, 16, 10, 10]\n");
    return 1;
  }
  for (long i = 0; i < static_cast<long>(y.size()); ++i) {
    if (!std::isfinite(y.data()[i])) {
      std::printf("dynconv consumer: output value %ld is not finite\n", i);
      return 1;
    }
  }
  return 0;
}
