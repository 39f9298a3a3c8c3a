// flops_table: the paper's results table (Chen et al. 2020, ImageNet, 224x224, K = 4) next to
// dynconv's own counts of the same networks, static and dynamic.
//
//   flops_table          a table: ours (paper, relative difference), and dynamic/static ratios
//   flops_table --json   a JSON array, one object per zoo model (the 14 at K = 4, the ODConv
//                        models at K = 1 and K = 4), per sample: {"model", "kernels", "params",
//                        "madds", "conv_madds", "attention_madds", "aggregation_madds",
//                        "scaling_madds"}
// After the paper's table, the ODConv models next to the official ones (OSVAI/ODConv).
// Multiply-adds count convolutions, attention (its pooling included), kernel aggregation and
// fully connected layers, per image; parameters are counted as PyTorch counts them.
#include <dynconv/models/zoo.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

using dynconv::LayerCost;

namespace {

struct PaperRow {
  const char* model;  // zoo name of the static model
  const char* label;
  double params, madds, dy_params, dy_madds;  // millions
};

// paper.md's copy of the paper's table (params in M, MAdds in M).
const PaperRow kPaper[] = {
    {"mobilenet_v2_x1_0", "MobileNetV2 x1.0", 3.5, 300.0, 11.1, 312.9},
    {"mobilenet_v2_x0_75", "MobileNetV2 x0.75", 2.6, 209.0, 7.0, 217.5},
    {"mobilenet_v2_x0_5", "MobileNetV2 x0.5", 2.0, 97.0, 4.0, 101.4},
    {"mobilenet_v2_x0_35", "MobileNetV2 x0.35", 1.7, 59.2, 2.8, 62.0},
    {"mobilenet_v3_small", "MobileNetV3-Small", 2.9, 66.0, 4.8, 68.5},
    {"resnet10", "ResNet-10", 5.2, 890.0, 18.6, 910.0},
    {"resnet18", "ResNet-18", 11.1, 1810.0, 42.7, 1850.0},
};

struct OdRow {
  const char* model;
  long long params_k1, params_k4;
  double madds_k1, madds_k4;  // millions, as published
};

// The official ODConv models (family.md: exact parameters, MAdds as published).
const OdRow kOfficialOd[] = {
    {"od_resnet18", 11943944, 44901640, 1838.0, 1916.0},
    {"od_resnet50", 28635112, 90670888, 3916.0, 4080.0},
    {"od_mobilenet_v2_x1_0", 4940185, 11512149, 311.8, 327.1},
    {"od_mobilenet_v2_x0_75", 3507113, 7496013, 217.1, 226.3},
    {"od_mobilenet_v2_x0_5", 2425537, 4435501, 101.8, 106.4},
};

LayerCost cost_of(const std::string& name, dynconv::Index kernels = 4) {
  return dynconv::models::create<float>(name, dynconv::models::ModelOptions().kernels(kernels))->cost(224, 224).total;
}

std::string cell(double ours, double paper) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2fM (%.1fM, %+.1f%%)", ours / 1e6, paper,
                100.0 * (ours / 1e6 / paper - 1.0));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  const bool json = argc == 2 && std::strcmp(argv[1], "--json") == 0;
  if (argc > 2 || (argc == 2 && !json)) {
    std::fprintf(stderr, "usage: %s [--json]\n", argv[0]);
    return 2;
  }
  if (json) {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    auto row = [&](const std::string& name, dynconv::Index kernels) {
      const LayerCost c = cost_of(name, kernels);
      out.push_back({{"model", name},
                     {"kernels", kernels},
                     {"params", c.params},
                     {"madds", c.madds()},
                     {"conv_madds", c.conv_madds},
                     {"attention_madds", c.attention_madds},
                     {"aggregation_madds", c.aggregation_madds},
                     {"scaling_madds", c.scaling_madds}});
    };
    for (const std::string& name : dynconv::models::zoo_names()) row(name, 4);
    for (const std::string& name : dynconv::models::resnet50_zoo_names()) row(name, 4);
    for (const std::string& name : dynconv::models::odconv_zoo_names())
      for (dynconv::Index k : {1, 4}) row(name, k);
    std::cout << out.dump(2) << '\n';
    return 0;
  }
  std::printf("Per image, 224x224, 1000 classes, K = 4. Each cell: ours (paper, difference).\n\n");
  std::printf("| model | static params | static MAdds | dynamic params | dynamic MAdds | dyn/static params | dyn/static MAdds |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const PaperRow& r : kPaper) {
    const LayerCost s = cost_of(r.model), d = cost_of(std::string("dy_") + r.model);
    std::printf("| %s | %s | %s | %s | %s | x%.2f (paper x%.2f) | x%.3f (paper x%.3f) |\n", r.label,
                cell(s.params, r.params).c_str(), cell(s.madds(), r.madds).c_str(),
                cell(d.params, r.dy_params).c_str(), cell(d.madds(), r.dy_madds).c_str(),
                double(d.params) / s.params, r.dy_params / r.params,
                double(d.madds()) / s.madds(), r.dy_madds / r.madds);
  }
  std::printf("\nResNet parameters in units of 2^20 (the paper's static counts match torchvision's\n"
              "in these units):\n");
  for (const char* name : {"resnet10", "resnet18"}) {
    const LayerCost s = cost_of(name), d = cost_of(std::string("dy_") + name);
    std::printf("  %-9s static %.2f, dynamic %.2f\n", name, s.params / 1048576.0, d.params / 1048576.0);
  }
  std::printf("\nDynamic MAdds split (conv + attention + aggregation), millions:\n");
  for (const PaperRow& r : kPaper) {
    const LayerCost d = cost_of(std::string("dy_") + r.model);
    std::printf("  %-18s %9.2f + %6.2f + %6.2f\n", r.label, d.conv_madds / 1e6,
                d.attention_madds / 1e6, d.aggregation_madds / 1e6);
  }
  std::printf("\nODConv models vs the official ones (OSVAI/ODConv). Each cell: ours (official, difference).\n\n");
  std::printf("| model | K | params | MAdds | conv + attention + synthesis + scaling MAdds |\n|---|---|---|---|---|\n");
  for (const OdRow& r : kOfficialOd)
    for (dynconv::Index k : {1, 4}) {
      const LayerCost c = cost_of(r.model, k);
      const long long official = k == 1 ? r.params_k1 : r.params_k4;
      std::printf("| %s | %lld | %lld (%lld, %+lld) | %s | %.1f + %.1f + %.1f + %.1f |\n", r.model, static_cast<long long>(k),
                  static_cast<long long>(c.params), official, static_cast<long long>(c.params) - official,
                  cell(c.madds(), k == 1 ? r.madds_k1 : r.madds_k4).c_str(), c.conv_madds / 1e6, c.attention_madds / 1e6,
                  c.aggregation_madds / 1e6, c.scaling_madds / 1e6);
    }
  return 0;
}
