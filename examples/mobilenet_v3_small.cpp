// dynconv's main demo: a dynamic MobileNetV3-Small, trained in PyTorch on Fashion-MNIST
// (tools/train_fashion_mnist.py) and exported to safetensors, classifying images in C++.
//
//   mobilenet_v3_small                          the shipped weights, the bundled test images
//   mobilenet_v3_small WEIGHTS [IMAGE...]       any zoo model's weights, any images
//
// For each image it prints the predicted class next to the true one (read from bundled file
// names such as 0013_3_dress.png), then the latency and what dynamic convolution costs over
// the static network: parameters and multiply-adds.
#include <dynconv/models/zoo.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "image_input.hpp"
#include "model_metadata.hpp"

using namespace dynconv;
namespace fs = std::filesystem;

// Where the shipped weights and images are (the source tree; set by CMake).
const std::string kData = DYNCONV_SOURCE_DIR;

// The true label of a bundled image, from its name "<index>_<label>_<class>.png"; -1 if none.
int true_label(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  const auto first = name.find('_');
  if (first == std::string::npos || first + 2 >= name.size() || name[first + 2] != '_') return -1;
  const char digit = name[first + 1];
  return digit >= '0' && digit <= '9' ? digit - '0' : -1;
}

int run(int argc, char** argv) {
  const std::string weights_path =
      argc > 1 ? argv[1]
               : kData + "/examples/fashion_mnist_weights/dy_mobilenet_v3_small.safetensors";
  std::vector<std::string> paths(argv + std::min(argc, 2), argv + argc);
  if (paths.empty()) {  // the bundled images, in name order
    for (const auto& entry : fs::directory_iterator(kData + "/examples/data"))
      paths.push_back(entry.path());
    std::sort(paths.begin(), paths.end());
  }

  // 1. The weights say which model they are for, its options, and how to preprocess.
  const SafeTensors weights = SafeTensors::load(weights_path);
  const auto& meta = weights.metadata();
  const std::string model_name = meta.count("model") ? meta.at("model") : "dy_mobilenet_v3_small";
  const models::ModelOptions options = examples::model_options_from_metadata(weights, 1000);
  const Index classes = options.num_classes();
  const std::vector<std::string> names = examples::class_names_from_metadata(weights);
  auto class_name = [&](Index c) { return c < Index(names.size()) ? names[c] : std::to_string(c); };

  // 2. Build the network and load the weights (BatchNorm folds into the convolutions here).
  auto model = models::create<float>(model_name, options);
  model->load(weights);

  // 3. Images -> one batch [N, 3, S, S], preprocessed as in training.
  const examples::Preprocessing prep = examples::preprocessing_from_metadata(
      meta, examples::Preprocessing::imagenet(), weights_path);
  std::vector<examples::Image> images;
  for (const std::string& p : paths) images.push_back(examples::load_image(p));
  const Tensor4<float> x = examples::images_to_tensor(images, prep);

  // 4. Classify through a Session (it owns the pass's buffers and threads), timing the pass.
  Session<float> session(*model);
  const auto start = std::chrono::steady_clock::now();
  const Tensor2<float>& logits = session.forward(x);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  std::printf("%s on %zu images (%s)\n\n", model_name.c_str(), paths.size(),
              prep.describe().c_str());
  int correct = 0, labelled = 0;
  for (Index i = 0; i < logits.dimension(0); ++i) {
    Index best = 0;
    for (Index c = 1; c < classes; ++c)
      if (logits(i, c) > logits(i, best)) best = c;
    const int truth = true_label(paths[i]);
    labelled += truth >= 0;
    correct += truth == best;
    std::printf("  %-28s predicted %-12s %s\n", fs::path(paths[i]).filename().c_str(),
                class_name(best).c_str(),
                truth < 0       ? ""
                : truth == best ? "(correct)"
                                : ("(true: " + class_name(truth) + ")").c_str());
  }
  if (labelled) std::printf("\n%d of %d correct\n", correct, labelled);
  std::printf("latency: %.2f ms for the batch, %.2f ms per image\n", ms, ms / logits.dimension(0));

  // 5. What dynamic convolution costs: the same network with static convolutions.
  const bool dynamic = model_name.rfind("dy_", 0) == 0;
  const std::string twin = dynamic ? model_name.substr(3) : "dy_" + model_name;
  const LayerCost mine = model->cost(prep.crop, prep.crop).total;
  // (A static file's metadata describes no dynamic layers: its twin gets the zoo defaults.)
  const auto twin_options = dynamic ? options : models::ModelOptions().num_classes(classes);
  const LayerCost other =
      models::create<float>(twin, twin_options)->cost(prep.crop, prep.crop).total;
  const LayerCost& s = dynamic ? other : mine;
  const LayerCost& d = dynamic ? mine : other;
  std::printf(
      "cost per %lldx%lld image: static %.2fM params, %.2fM MAdds; dynamic %.2fM params (x%.2f), "
      "%.2fM MAdds (%+.1f%%)\n",
      (long long)prep.crop, (long long)prep.crop, s.params / 1e6, s.madds() / 1e6, d.params / 1e6,
      double(d.params) / s.params, d.madds() / 1e6, 100.0 * (double(d.madds()) / s.madds() - 1));
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mobilenet_v3_small: %s\n", e.what());
    return 1;
  }
}
