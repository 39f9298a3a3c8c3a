// dynconv-run --attention: how each dynamic layer's kernel attention spreads over its experts,
// over the inputs given (or the Fashion-MNIST evaluation). Collapsed attention (one expert
// always wins) and uniform attention (every expert 1/K: the layer is a static convolution with
// K times the parameters) are the most common ways dynamic-convolution training goes wrong.
//
// Per dynamic layer with K >= 2 experts, over the inputs seen:
//   top      the mean, over the inputs, of the largest attention weight (1/K .. 1 for DY-Conv and
//            ODConv, whose weights sum to 1; CondConv's sigmoid routing weights need not)
//   entropy  the mean entropy of the input's expert shares (weights / their sum), in units of
//            log K: 1 is uniform, 0 one-hot
//   shares   each expert's mean share
// and an SVG heat map of the shares, one row per layer, one column per expert.
//
// How: every dynamic layer's input becomes an extra output of the graph (before the Session is
// made), and after each pass the layer's attention is computed from it (DynamicConv2d::
// attention_heads: the same attention the pass used).
#pragma once

#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/error.hpp>
#include <dynconv/models/model.hpp>
#include <dynconv/session.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace examples {

class AttentionReport {
  using Index = dynconv::Index;

 public:
  /// Declares the input of every dynamic layer of `model` (K >= 2, its own attention) an output
  /// of the graph; make the Session afterwards.
  explicit AttentionReport(dynconv::models::Model<float>& model) {
    for (const std::string& name : model.node_names()) {
      const auto* d = dynamic_cast<const dynconv::DynamicConv2d<float>*>(&model.module(name));
      if (!d) continue;
      if (d->kernels() < 2) {
        ++single_kernel_;
        continue;
      }
      if (d->shared_routing()) {
        ++shared_;
        continue;
      }
      Layer l;
      l.name = name;
      l.output = "attention input: " + name;
      l.conv = d;
      l.share.assign(static_cast<std::size_t>(d->kernels()), 0.0);
      model.output(l.output, dynconv::Value(model.node_inputs(name).at(0)));
      layers_.push_back(std::move(l));
    }
  }

  /// Adds the attention of the inputs of the session's last pass.
  void add(const dynconv::Session<float>& session) {
    for (Layer& l : layers_) {
      const auto heads = l.conv->attention_heads(session.output(l.output));
      const dynconv::Tensor2<float>& a = heads.kernel;
      const Index k = a.dimension(1);
      for (Index n = 0; n < a.dimension(0); ++n) {
        double sum = 0, top = 0;
        for (Index e = 0; e < k; ++e) {
          sum += a(n, e);
          top = std::max(top, static_cast<double>(a(n, e)));
        }
        double entropy = 0;
        for (Index e = 0; e < k; ++e) {
          const double p = sum > 0 ? a(n, e) / sum : 1.0 / static_cast<double>(k);
          l.share[static_cast<std::size_t>(e)] += p;
          if (p > 0) entropy -= p * std::log(p);
        }
        l.top += top;
        l.entropy += entropy / std::log(static_cast<double>(k));
      }
      l.inputs += a.dimension(0);
    }
  }

  /// The table, on stdout.
  void print() const {
    if (layers_.empty()) {
      std::printf("attention: no dynamic layer with K >= 2 experts and its own attention%s\n",
                  note().c_str());
      return;
    }
    std::printf("attention over %lld input%s (top: mean largest weight; entropy: of the expert "
                "shares, 1 = uniform, 0 = one-hot)%s:\n",
                static_cast<long long>(inputs()), inputs() == 1 ? "" : "s", note().c_str());
    std::size_t wide = 5;
    for (const Layer& l : layers_) wide = std::max(wide, l.name.size());
    std::printf("  %-*s  %-8s  %5s  %7s  %s\n", static_cast<int>(wide), "layer", "kind", "top", "entropy",
                "expert shares");
    for (const Layer& l : layers_) {
      const double n = static_cast<double>(std::max<Index>(l.inputs, 1));
      std::string shares;
      for (double s : l.share) {
        char buf[16];
        std::snprintf(buf, sizeof buf, "%s%.3f", shares.empty() ? "" : " ", s / n);
        shares += buf;
      }
      std::printf("  %-*s  %-8s  %5.3f  %7.3f  %s\n", static_cast<int>(wide), l.name.c_str(),
                  dynconv::attention_kind_name(l.conv->kind()), l.top / n, l.entropy / n, shares.c_str());
    }
  }

  /// The heat map of the expert shares (rows: layers in network order; columns: experts) as SVG.
  /// IoError if the file cannot be written.
  void write_svg(const std::string& path) const {
    std::size_t experts = 1, wide = 5;
    for (const Layer& l : layers_) {
      experts = std::max(experts, l.share.size());
      wide = std::max(wide, l.name.size());
    }
    const int cell = 18, label = static_cast<int>(wide) * 7 + 10, top = 40;
    const int width = label + static_cast<int>(experts) * cell + 120;
    const int height = top + static_cast<int>(layers_.size()) * cell + 20;
    std::ofstream f(path);
    if (!f) throw dynconv::IoError(path + ": cannot open for writing: " + std::strerror(errno));
    f << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"monospace\" font-size=\"11\">\n"
      << "<title>expert shares per dynamic layer over " << inputs() << " inputs</title>\n"
      << "<text x=\"4\" y=\"14\">expert share per layer over " << inputs()
      << " inputs (white 0, dark 1; uniform = 1/K)</text>\n";
    for (std::size_t e = 0; e < experts; ++e)
      f << "<text x=\"" << label + static_cast<int>(e) * cell + 5 << "\" y=\"" << top - 6 << "\">" << e
        << "</text>\n";
    for (std::size_t r = 0; r < layers_.size(); ++r) {
      const Layer& l = layers_[r];
      const double n = static_cast<double>(std::max<Index>(l.inputs, 1));
      const int y = top + static_cast<int>(r) * cell;
      f << "<text x=\"4\" y=\"" << y + 13 << "\">" << l.name << "</text>\n";
      for (std::size_t e = 0; e < l.share.size(); ++e) {
        const double s = std::clamp(l.share[e] / n, 0.0, 1.0);
        const int shade = static_cast<int>(std::lround(255.0 * (1.0 - s)));
        f << "<rect x=\"" << label + static_cast<int>(e) * cell << "\" y=\"" << y << "\" width=\"" << cell
          << "\" height=\"" << cell << "\" fill=\"rgb(" << shade << "," << shade << ",255)\" stroke=\"#888\">"
          << "<title>" << l.name << " expert " << e << ": " << s << "</title></rect>\n";
      }
      char buf[64];
      std::snprintf(buf, sizeof buf, "top %.2f H %.2f", l.top / n, l.entropy / n);
      f << "<text x=\"" << label + static_cast<int>(experts) * cell + 6 << "\" y=\"" << y + 13 << "\">" << buf
        << "</text>\n";
    }
    f << "</svg>\n";
    f.close();
    if (!f) throw dynconv::IoError(path + ": cannot write");
  }

  Index inputs() const { return layers_.empty() ? 0 : layers_.front().inputs; }

 private:
  struct Layer {
    std::string name, output;
    const dynconv::DynamicConv2d<float>* conv = nullptr;
    std::vector<double> share;  // sums over the inputs
    double top = 0, entropy = 0;
    Index inputs = 0;
  };
  std::string note() const {
    std::string s;
    if (single_kernel_) s += dynconv::concat("; ", single_kernel_, " layer(s) with K = 1 have none");
    if (shared_) s += dynconv::concat("; ", shared_, " layer(s) share a routing computed elsewhere");
    return s;
  }
  std::vector<Layer> layers_;
  Index single_kernel_ = 0, shared_ = 0;
};

}  // namespace examples
