// Your own network with dynconv: build a graph (examples/custom_network.hpp), load its weights
// by name (or keep the fresh initialisation), save them, and run it through a 2-thread Session.
//
//   custom_network [weights.safetensors]
//
// Without an argument the network keeps its fresh weights; tools/make_custom_net_data.py
// writes the weights of a PyTorch twin (same module names) that load here unchanged.
#include "custom_network.hpp"

#include <chrono>
#include <cstdio>
#include <exception>

int main(int argc, char** argv) try {
  using namespace dynconv;
  Graph<float> net = custom_network<float>();
  if (argc > 1) {
    net.load(SafeTensors::load(argv[1]));  // strict: every tensor by name, BatchNorms folded
    std::printf("loaded %s\n", argv[1]);
  } else {
    net.fold_batchnorms();  // what load() does after reading the file
  }
  std::printf("%s", net.summary({NhwcShape{1, 28, 28, 1}}).c_str());

  // Save every parameter under its name: the file loads back into the same function.
  SafeTensorsWriter out;
  net.save(out);
  const std::vector<std::uint8_t> bytes = out.to_bytes();
  Graph<float> again = custom_network<float>();
  again.load(SafeTensors::parse(bytes, "<saved>"));

  Tensor4<float> images(8, 1, 28, 28);  // NCHW, as PyTorch
  images.setRandom();
  Session<float> session(net, /*threads=*/2);
  Session<float> reloaded(again, 1);
  session.run(images);
  reloaded.run(images);
  const Tensor4<float>& logits = session.output("logits");      // [8, 10, 1, 1]
  const Tensor4<float>& features = session.output("features");  // [8, 32, 14, 14]
  double diff = 0;
  for (Index i = 0; i < logits.size(); ++i)
    diff = std::max(diff, double(std::abs(logits.data()[i] - reloaded.output("logits").data()[i])));

  const auto start = std::chrono::steady_clock::now();
  constexpr int kPasses = 20;
  for (int i = 0; i < kPasses; ++i) session.run(images);  // no allocation after the first pass
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  std::printf("logits %s, features %s (NCHW)\n", shape_str(logits.dimensions()).c_str(),
              shape_str(features.dimensions()).c_str());
  std::printf("sample 0 logits:");
  for (Index c = 0; c < logits.dimension(1); ++c) std::printf(" %.4f", logits(0, c, 0, 0));
  std::printf("\nsaved and reloaded: max logit difference %.3g (2 threads vs 1)\n", diff);
  std::printf("%.3f ms per batch of 8 on 2 threads\n", ms / kPasses);
  return diff < 1e-4 ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "custom_network: %s\n", e.what());
  return 1;
}
