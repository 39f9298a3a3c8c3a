// dynconv-run: runs a zoo model on images or on a tensor, or evaluates it on Fashion-MNIST.
//
//   dynconv-run --model NAME --weights W.safetensors --input IN... [--output OUT.safetensors]
//               [--threads T] [--top K] [--classes N] [--labels FILE] [--size S] [--no-normalize]
//   dynconv-run --model NAME --weights W.safetensors --eval-fashion-mnist [DIR] [--limit N]
//               [--predictions FILE] [--output OUT.safetensors] [--threads T] [--labels FILE]
//
// IN is a safetensors file holding a tensor `input` [N, 3, H, W] (any float dtype, used as it
// is), or image files, preprocessed by examples/image_input.hpp: torchvision's ImageNet preset
// unless the weights' metadata says otherwise (input_size, normalize_mean, normalize_std,
// grayscale_to_rgb), with --size and --no-normalize on top. For each input it prints the top-K
// classes (softmax), then the latency of the forward pass and the model's cost next to its
// static (or dynamic) twin. Any bad argument or file ends with one line on stderr,
// "dynconv-run: <what went wrong>", and exit status 1 (2 for a bad command line).
#include "attention_report.hpp"
#include "fashion_mnist.hpp"
#include "image_input.hpp"
#include "model_metadata.hpp"

#include <dynconv/graph_file.hpp>
#include <dynconv/models/zoo.hpp>
#include <dynconv/safetensors.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>
#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using dynconv::DynamicConv2d;
using dynconv::Index;
using dynconv::SafeTensors;
using dynconv::Tensor2;
using dynconv::Tensor4;
using dynconv::models::Model;
using dynconv::models::ModelOptions;
using examples::Preprocessing;

constexpr const char* kProgram = "dynconv-run";

/// A bad command line (exit status 2); every other error is a std::exception (exit status 1).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string model;  // zoo name; empty: the weights' metadata "model"
  std::string weights;
  std::vector<std::string> inputs;
  std::string output;
  std::string labels;
  int threads = 1;
  int top = 5;
  Index classes = 0;  // 0: the weights' metadata "num_classes", else 1000
  Index size = 0;     // 0: the weights' metadata "input_size", else 224
  bool no_normalize = false;
  bool eval = false;
  std::string eval_dir;
  Index limit = 0;  // 0: the whole test set
  std::string predictions;
  double temperature = 0;  // 0: each dynamic layer's from the file (1 where it has none)
  bool attention = false;  // --attention: the attention report
  std::string attention_svg;
  bool verify = false;  // --verify: a graph file's test vectors
  std::string experts = "float32";  // --experts: how the dynamic layers store their kernels
};

const char* const kFooter = R"(Preprocessing of images (not of a safetensors input, used as it is):
  default   torchvision's ImageNet preset: resize the shorter side to 256 (bilinear,
            antialiased), centre crop 224, scale to [0, 1], normalise with ImageNet's
            mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
  metadata  the weights' metadata overrides that: input_size (crop S, resize the shorter
            side to S too), resize_size, normalize_mean and normalize_std (JSON arrays),
            grayscale_to_rgb ("true": colour images become grey; grey images always
            become 3 equal channels).
  --size S  crop S, resize the shorter side in the same ratio (ImageNet: round(S*256/224)).
A graph file (docs/graph_format.md, written by tools/export_safetensors.py from any PyTorch
module) runs without --model: --input is one safetensors file with a tensor per graph input
(named as the input, or 'input' for a graph of one input; NCHW or [N, C]) or, for a graph of
one 3-channel input, images; --output writes every graph output under its name ('output' for
a single one); --verify checks the file's own test vectors.
Also from the metadata: num_classes, class_names (JSON array), kernels, reduction,
min_hidden, attention (dy, condconv or odconv), policy, and model (the default of --model).

Examples:
  dynconv-run --model dy_mobilenet_v3_small \
      --weights examples/fashion_mnist_weights/dy_mobilenet_v3_small.safetensors --input shirt.png
  dynconv-run --model resnet18 --weights resnet18.safetensors --input cat.jpg --top 3
  dynconv-run --model dy_mobilenet_v3_small \
      --weights examples/fashion_mnist_weights/dy_mobilenet_v3_small.safetensors --eval-fashion-mnist

Exit status: 0 on success, 1 for a bad file or bad data, 2 for a bad command line; every
error is one line on stderr, "dynconv-run: <what went wrong>".
)";

// ---- Command line ---------------------------------------------------------------------------

const char* const kSynopsis = R"(Usage:
  dynconv-run --weights GRAPH.safetensors --input X.safetensors [--output Y.safetensors]
              [--threads T] [--verify] [--experts P]
  dynconv-run --weights GRAPH.safetensors --verify [--threads T] [--experts P]
  dynconv-run --model NAME --weights W.safetensors --input IN... [--output OUT.safetensors]
              [--threads T] [--top K] [--classes N] [--labels FILE] [--size S] [--no-normalize]
              [--temperature TAU] [--attention] [--attention-svg MAP.svg] [--experts P]
  dynconv-run --model NAME --weights W.safetensors --eval-fashion-mnist [DIR] [--limit N]
              [--predictions FILE] [--output OUT.safetensors] [--threads T] [--labels FILE]
              [--temperature TAU] [--attention] [--attention-svg MAP.svg] [--experts P]
)";

/// --help as the synopsis, then "--option ARG  description" per option: CLI11's default
/// formatter also prints each validator and option relation, which buries the descriptions.
class Help : public CLI::Formatter {
 public:
  std::string make_usage(const CLI::App*, std::string) const override { return kSynopsis; }
  std::string make_option_opts(const CLI::Option* o) const override {
    return o->get_type_name().empty() ? "" : " " + o->get_type_name();
  }
};

/// `v` without a description (which CLI11 would append to the option's ARG in --help).
CLI::Validator quiet(CLI::Validator v) {
  v.description("");
  return v;
}

/// Fills `opt` from the command line. Returns an exit status when the program should stop
/// at once (--help); throws UsageError for a bad command line.
std::optional<int> parse_command_line(int argc, char** argv, Options& opt) {
  CLI::App app(
      "Runs a dynconv zoo model on images or a tensor, or evaluates it on the "
      "Fashion-MNIST test set.",
      kProgram);
  app.formatter(std::make_shared<Help>());
  app.get_formatter()->column_width(30);
  app.footer(kFooter);
  const CLI::Validator file = quiet(CLI::ExistingFile);
  app.add_option("--model", opt.model,
                 "zoo model, e.g. dy_mobilenet_v3_small (default: the weights' metadata "
                 "\"model\")")
      ->type_name("NAME");
  app.add_option("--weights", opt.weights, "the model's weights, safetensors (required)")
      ->required()
      ->type_name("FILE")
      ->check(file);
  auto* input = app.add_option("--input", opt.inputs,
                               "image files (PNG, JPEG, PPM, ...), or one safetensors file with "
                               "a tensor 'input' [N, 3, H, W]")
                    ->expected(1, -1)
                    ->type_name("IN...")
                    ->check(file);
  app.add_option("--output", opt.output,
                 "write the logits [N, classes] (F32) as tensor 'logits' to this safetensors")
      ->type_name("FILE");
  app.add_option("--threads", opt.threads,
                 "threads splitting every layer: samples of the batch, or parts of one sample "
                 "(default 1)")
      ->type_name("T")
      ->check(quiet(CLI::Range(1, 1024)));
  app.add_option("--temperature", opt.temperature,
                 "the attention temperature of every dynamic layer, instead of the file's (where "
                 "a file has none, a layer runs at the default 1)")
      ->type_name("TAU")
      ->check(quiet(CLI::PositiveNumber));
  app.add_option("--top", opt.top, "classes printed per input (default 5)")
      ->type_name("K")
      ->check(quiet(CLI::Range(1, 1 << 20)));
  app.add_option("--classes", opt.classes,
                 "number of classes (default: the weights' metadata \"num_classes\", else "
                 "1000)")
      ->type_name("N")
      ->check(quiet(CLI::Range(Index(1), Index(1) << 24)));
  app.add_option("--labels", opt.labels, "class names, one per line")
      ->type_name("FILE")
      ->check(file);
  auto* size = app.add_option("--size", opt.size,
                              "crop images to SxS, 32 <= S <= 4096 (default: the weights' "
                              "metadata \"input_size\", else 224)")
                   ->type_name("S")
                   ->check(quiet(CLI::Range(32, 4096)));
  auto* no_norm =
      app.add_flag("--no-normalize", opt.no_normalize, "only scale images to [0, 1], no mean/std");
  auto* eval = app.add_option("--eval-fashion-mnist", opt.eval_dir,
                              "evaluate on the Fashion-MNIST test set in DIR (default " +
                                  std::string(fashion_mnist::kDefaultDir) + ")")
                   ->expected(0, 1)
                   ->type_name("[DIR]");
  auto* limit = app.add_option("--limit", opt.limit, "evaluate the first N test images only")
                    ->type_name("N")
                    ->check(quiet(CLI::Range(Index(1), Index(1) << 40)));
  auto* predictions = app.add_option("--predictions", opt.predictions,
                                     "write each test image's predicted class, one per line")
                          ->type_name("FILE");
  app.add_flag("--attention", opt.attention,
               "print each dynamic layer's attention over the inputs: mean top weight, entropy, "
               "each expert's share");
  app.add_option("--attention-svg", opt.attention_svg,
                 "also write the expert shares as an SVG heat map (layer x expert); implies --attention")
      ->type_name("MAP.svg");
  app.add_option("--experts", opt.experts,
                 "how the dynamic layers store their K kernels: float32 (default, exact), bfloat16 or "
                 "float16 (opt-in: rounded once, widened as they are mixed; half the bytes to read)")
      ->type_name("P")
      ->check(quiet(CLI::IsMember({"float32", "bfloat16", "float16"})));
  app.add_flag("--verify", opt.verify,
               "a graph file: run its test vectors and fail unless every output is within 1e-4 "
               "(relative to max(1, max |PyTorch's output|))");
  eval->excludes(input)->excludes(size)->excludes(no_norm);
  limit->needs(eval);
  predictions->needs(eval);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    throw UsageError(std::string(e.what()) + " (see --help)");
  }
  opt.eval = eval->count() > 0;
  if (opt.eval && opt.eval_dir.empty()) opt.eval_dir = fashion_mnist::kDefaultDir;
  if (!opt.eval && opt.inputs.empty() && !opt.verify)
    throw UsageError("give --input FILE... or --eval-fashion-mnist [DIR] (see --help)");
  if (!opt.attention_svg.empty()) opt.attention = true;
  return std::nullopt;
}

// ---- Model --------------------------------------------------------------------------------

/// Every zoo model: the 14, ResNet-50 and its dy_ twin, the ODConv ones.
std::vector<std::string> zoo() { return dynconv::models::all_zoo_names(); }

std::string zoo_list() {
  std::string s;
  for (const std::string& n : zoo()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

bool in_zoo(const std::string& name) {
  const std::vector<std::string> all = zoo();
  return std::find(all.begin(), all.end(), name) != all.end();
}

/// The model options from the weights' metadata and --classes.
ModelOptions model_options(const Options& opt, const SafeTensors& w) {
  ModelOptions o = examples::model_options_from_metadata(w, opt.classes ? opt.classes : 1000);
  if (opt.classes && w.metadata().count("num_classes") && o.num_classes() != opt.classes)
    throw UsageError(dynconv::concat("--classes ", opt.classes, " contradicts ", w.source(),
                                     ", whose metadata says num_classes=", o.num_classes()));
  return o;
}

/// The zoo name to build: --model, else the weights' metadata "model".
std::string model_name(const Options& opt, const SafeTensors& w) {
  const auto it = w.metadata().find("model");
  if (opt.model.empty() && it == w.metadata().end())
    throw UsageError("--model is required: " + w.source() + " has no metadata \"model\"");
  const std::string name = opt.model.empty() ? it->second : opt.model;
  if (!in_zoo(name)) throw UsageError("unknown model '" + name + "'; the zoo has: " + zoo_list());
  return name;
}

/// Builds the model and loads the weights; a weight file of another model is an error that
/// keeps the library's message and adds what the file's metadata says.
std::unique_ptr<Model<float>> load_model(const std::string& name, const ModelOptions& o,
                                         const SafeTensors& w) {
  std::unique_ptr<Model<float>> model = dynconv::models::create<float>(name, o);
  try {
    model->load(w);
  } catch (const dynconv::Error& e) {
    const auto it = w.metadata().find("model");
    if (it == w.metadata().end() || it->second == name) throw;
    throw dynconv::FormatError(std::string(e.what()) + " (the file's metadata says model '" +
                               it->second + "', not '" + name + "')");
  }
  return model;
}

/// Class names from --labels or the metadata "class_names"; empty when neither gives them.
std::vector<std::string> class_names(const Options& opt, const SafeTensors& w, Index classes) {
  std::vector<std::string> names;
  std::string source;
  if (!opt.labels.empty()) {
    source = opt.labels;
    std::ifstream in(opt.labels);
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      names.push_back(line);
    }
    if (in.bad()) throw dynconv::IoError(opt.labels + ": cannot read");
    while (!names.empty() && names.back().empty()) names.pop_back();
  } else if (w.metadata().count("class_names")) {
    source = w.source() + " (metadata class_names)";
    names = examples::class_names_from_metadata(w);
  }
  if (!names.empty() && static_cast<Index>(names.size()) != classes)
    throw dynconv::FormatError(dynconv::concat(
        source, " has ", names.size(), " class names, the model has ", classes, " classes"));
  return names;
}

std::string class_label(const std::vector<std::string>& names, Index c) {
  if (names.empty()) return dynconv::concat("class ", c);
  return dynconv::concat(names[static_cast<std::size_t>(c)], " (class ", c, ')');
}

/// The model's parameters and multiply-adds per image next to its static twin (for a dy_
/// model) or its dynamic twin with the zoo's defaults (K = 4, for a static model).
void print_cost(const Model<float>& model, Index h, Index w) {
  const bool dynamic = model.name().rfind("dy_", 0) == 0 || model.name().rfind("od_", 0) == 0;
  const std::string twin_name = dynamic ? model.name().substr(3) : "dy_" + model.name();
  const dynconv::LayerCost own = model.cost(h, w).total;
  const dynconv::LayerCost twin =
      dynconv::models::create<float>(twin_name, ModelOptions().num_classes(model.num_classes()))
          ->cost(h, w)
          .total;
  const dynconv::LayerCost& stat = dynamic ? twin : own;
  const dynconv::LayerCost& dyn = dynamic ? own : twin;
  std::printf(
      "%s: %.2fM params, %.2fM MAdds/image at %lldx%lld (%s twin %s: %.2fM params, "
      "%.2fM MAdds; dynamic vs static: %+.1f%% params, %+.1f%% MAdds)\n",
      model.name().c_str(), own.params / 1e6, own.madds() / 1e6, (long long)h, (long long)w,
      dynamic ? "static" : "dynamic", twin_name.c_str(), twin.params / 1e6, twin.madds() / 1e6,
      100.0 * (double(dyn.params) / double(stat.params) - 1.0),
      100.0 * (double(dyn.madds()) / double(stat.madds()) - 1.0));
}

/// Sets --temperature on every attention (a dynamic layer's own, or a CondConv routing shared by
/// a block's layers), and says which temperature they run at and where it came from, and the
/// layers' attention kind ("temperature: 1.7 in all 16 dynamic layers (from the file);
/// attention: DY-Conv"): a file without one runs at the default 1, which a user must be able to
/// see.
/// --experts: every dynamic layer's kernels stored as bfloat16 or float16 (after the load,
/// which folded the BatchNorms).
void apply_experts(dynconv::Graph<float>& model, const Options& opt) {
  if (opt.experts == "float32") return;
  const dynconv::ExpertPrecision p =
      opt.experts == "bfloat16" ? dynconv::ExpertPrecision::BFloat16 : dynconv::ExpertPrecision::Float16;
  const int layers = model.set_expert_precision(p);
  if (layers == 0) throw UsageError("--experts " + opt.experts + ": the model has no dynamic convolution");
  std::printf("experts: %s in %d dynamic layer%s\n", opt.experts.c_str(), layers, layers == 1 ? "" : "s");
}

void apply_temperature(dynconv::Graph<float>& model, const Options& opt, const SafeTensors& w) {
  std::vector<DynamicConv2d<float>*> layers;  // every dynamic layer, for the kind
  std::vector<std::function<double()>> get;   // every attention's temperature
  std::vector<std::function<void(double)>> set;
  std::size_t routings = 0;
  for (const std::string& name : model.node_names()) {
    if (auto* d = dynamic_cast<DynamicConv2d<float>*>(&model.module(name))) {
      layers.push_back(d);
      if (d->shared_routing()) continue;  // its routing node holds the temperature
      get.push_back([d] { return static_cast<double>(d->temperature()); });
      set.push_back([d](double t) { d->set_temperature(t); });
    } else if (auto* r = dynamic_cast<dynconv::CondConvRouting<float>*>(&model.module(name))) {
      ++routings;
      get.push_back([r] { return static_cast<double>(r->temperature()); });
      set.push_back([r](double t) { r->set_temperature(t); });
    }
  }
  bool one_kind = true;
  for (const DynamicConv2d<float>* d : layers) one_kind = one_kind && d->kind() == layers.front()->kind();
  const char* kind = layers.empty() ? "" : one_kind ? dynconv::attention_kind_name(layers.front()->kind()) : "mixed";
  if (get.empty()) {  // none, or only layers whose routing the graph computes with plain ops (timm's blocks)
    if (!layers.empty()) std::printf("temperature: none (the routing of all %zu dynamic layers is computed by the graph); attention: %s\n", layers.size(), kind);
    if (opt.temperature > 0) throw UsageError("--temperature: the model has no attention temperature to set");
    return;
  }
  if (opt.temperature > 0)
    for (const auto& f : set) f(opt.temperature);
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& f : get) {
    lo = std::min(lo, f());
    hi = std::max(hi, f());
  }
  std::size_t stored = 0;
  for (const std::string& name : w.names()) {
    const std::string suffix = ".temperature";
    stored += name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  }
  const std::string source = opt.temperature > 0     ? "--temperature"
                             : stored == 0            ? "the file has none: the default"
                             : stored < get.size()    ? dynconv::concat("from the file for ", stored, " of them, the default 1 for the rest")
                                                      : "from the file";
  const std::string what = routings ? dynconv::concat(get.size(), " attentions (", routings, " shared routings)")
                                    : dynconv::concat(get.size(), " dynamic layers");
  if (lo == hi)
    std::printf("temperature: %g in all %s (%s); attention: %s\n", lo, what.c_str(), source.c_str(), kind);
  else
    std::printf("temperature: %g to %g over %s (%s); attention: %s\n", lo, hi, what.c_str(), source.c_str(), kind);
}

// ---- Forward ------------------------------------------------------------------------------

/// logits [N, classes] of x [N, 3, H, W] through the session, whose threads split each layer
/// (samples of the batch, or rows, channel tiles or depth parts of one sample).
Tensor2<float> forward(dynconv::Session<float>& session, const Tensor4<float>& x) {
  return session.forward(x);
}

/// Throws FormatError if any logit is NaN or infinite: printing a "prediction" from it would be
/// garbage. Inputs and weights are checked finite before (read_tensor_input, the model's load;
/// images are finite by construction), so what remains is an overflow: finite values too large
/// for float somewhere in the network. names[i] is what input first_input + i is.
void check_finite(const Tensor2<float>& logits, const std::vector<std::string>& names,
                  Index first_input = 0) {
  for (Index i = 0; i < logits.dimension(0); ++i)
    for (Index c = 0; c < logits.dimension(1); ++c)
      if (!std::isfinite(logits(i, c)))
        throw dynconv::FormatError(dynconv::concat(
            "input ", first_input + i, " (", names[static_cast<std::size_t>(i)],
            ") gives a non-finite logit (", logits(i, c), " for class ", c,
            "): the network overflows float on it (input or weight values too large)"));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- Inference on files -------------------------------------------------------------------

struct Batch {
  Tensor4<float> x;                // [N, 3, H, W]
  std::vector<std::string> names;  // what each sample is, for the printout
  bool from_tensor = false;        // a safetensors input (not preprocessed here)
};

bool is_safetensors(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  const std::string ext = ".safetensors";
  if (path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
    return true;
  // An 8-byte little-endian header length, then the JSON header's '{'.
  if (bytes.size() < 9 || bytes[8] != '{') return false;
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | bytes[static_cast<std::size_t>(i)];
  return n <= bytes.size() - 8;
}

/// The tensor `input` [N, 3, H, W] (N >= 1, H, W >= 32, a float dtype) of a safetensors file.
Batch read_tensor_input(const std::string& path, std::vector<std::uint8_t> bytes) {
  const SafeTensors f = SafeTensors::parse(std::move(bytes), path);
  const dynconv::TensorEntry& e = f.entry("input");
  const std::string shape = dynconv::shape_str(e.shape);
  if (e.dtype == dynconv::DType::I64)
    throw dynconv::FormatError(path + ": tensor 'input' has dtype I64, expected a float dtype");
  if (e.shape.size() != 4 || e.shape[0] < 1 || e.shape[1] != 3 || e.shape[2] < 32 ||
      e.shape[3] < 32)
    throw dynconv::ShapeError(path + ": tensor 'input' has shape " + shape +
                              ", expected [N, 3, H, W] with N >= 1 and H, W >= 32");
  // Read as double (exact for every stored dtype): a NaN, an infinity or a value beyond float's
  // range would only turn into garbage logits, so it is refused here, by its place.
  const dynconv::Tensor<double, 4> values = f.get<double, 4>("input");
  for (Index i = 0; i < values.size(); ++i) {
    const double v = values.data()[i];
    if (std::isfinite(v) && std::abs(v) <= std::numeric_limits<float>::max()) continue;
    const Index w = values.dimension(3), hw = values.dimension(2) * w, chw = values.dimension(1) * hw;
    throw dynconv::FormatError(dynconv::concat(path, ": tensor 'input' holds ", v, " at element ",
                                               i, " (input[", i / chw, ", ", i % chw / hw, ", ",
                                               i % hw / w, ", ", i % w, "]); inputs must be finite",
                                               std::isfinite(v) ? " floats" : ""));
  }
  Batch b;
  b.x = values.cast<float>();
  b.from_tensor = true;
  for (Index i = 0; i < b.x.dimension(0); ++i)
    b.names.push_back(dynconv::concat(path, " input[", i, ']'));
  return b;
}

/// One safetensors file, or image files preprocessed by `prep` into one batch.
Batch read_inputs(const Options& opt, const Preprocessing& prep) {
  std::vector<std::vector<std::uint8_t>> files;
  for (const std::string& path : opt.inputs) files.push_back(examples::read_file(path));
  for (std::size_t i = 0; i < files.size(); ++i) {
    if (!is_safetensors(opt.inputs[i], files[i])) continue;
    if (files.size() > 1)
      throw UsageError(opt.inputs[i] + ": a safetensors input must be the only --input");
    if (opt.size || opt.no_normalize)
      throw UsageError("--size and --no-normalize apply to images, not to a safetensors input");
    return read_tensor_input(opt.inputs[i], std::move(files[i]));
  }
  Batch b;
  b.x.resize(static_cast<Index>(files.size()), 3, prep.crop, prep.crop);
  for (std::size_t i = 0; i < files.size(); ++i) {
    const examples::Image img = examples::decode_image(files[i], opt.inputs[i]);
    examples::preprocess_into(img, prep, b.x.data() + Index(i) * 3 * prep.crop * prep.crop,
                              opt.inputs[i]);
    b.names.push_back(opt.inputs[i]);
  }
  return b;
}

/// Image preprocessing: the weights' metadata, else the ImageNet preset; then --size and
/// --no-normalize.
Preprocessing preprocessing(const Options& opt, const SafeTensors& w) {
  Preprocessing p =
      examples::preprocessing_from_metadata(w.metadata(), Preprocessing::imagenet(), w.source());
  if (opt.size) p.with_crop(opt.size);
  if (opt.no_normalize) p.normalize = false;
  return p;
}

/// Prints the top-k classes of each row of logits, with softmax probabilities.
void print_predictions(const Tensor2<float>& logits, const std::vector<std::string>& inputs,
                       const std::vector<std::string>& names, int top) {
  const Index classes = logits.dimension(1);
  const Index k = std::min<Index>(top, classes);
  for (Index n = 0; n < logits.dimension(0); ++n) {
    double max = logits(n, 0), sum = 0.0;
    for (Index c = 1; c < classes; ++c) max = std::max<double>(max, logits(n, c));
    std::vector<double> p(static_cast<std::size_t>(classes));
    for (Index c = 0; c < classes; ++c) sum += p[std::size_t(c)] = std::exp(logits(n, c) - max);
    std::vector<Index> order(static_cast<std::size_t>(classes));
    for (Index c = 0; c < classes; ++c) order[std::size_t(c)] = c;
    std::stable_sort(order.begin(), order.end(),
                     [&](Index a, Index b) { return p[std::size_t(a)] > p[std::size_t(b)]; });
    std::printf("[%lld] %s\n", (long long)n, inputs[std::size_t(n)].c_str());
    for (Index r = 0; r < k; ++r) {
      const Index c = order[std::size_t(r)];
      std::printf("  %2lld. %7.3f%%  %s\n", (long long)(r + 1), 100.0 * p[std::size_t(c)] / sum,
                  class_label(names, c).c_str());
    }
  }
}

/// --output: the logits as tensor "logits" [N, classes] (F32).
void write_logits(const std::string& path, const Tensor2<float>& logits, const std::string& model) {
  dynconv::SafeTensorsWriter out;
  out.add("logits", logits);
  out.set_metadata("model", model);
  out.save(path);
  std::printf("logits [%lld, %lld] written to %s\n", (long long)logits.dimension(0),
              (long long)logits.dimension(1), path.c_str());
}

/// The attention report (--attention) after the passes: printed, and written as SVG if asked.
void finish_attention(const Options& opt, const examples::AttentionReport* report) {
  if (!report) return;
  report->print();
  if (!opt.attention_svg.empty()) {
    report->write_svg(opt.attention_svg);
    std::printf("attention heat map written to %s\n", opt.attention_svg.c_str());
  }
}

int run_inference(const Options& opt, const Model<float>& model, const SafeTensors& w,
                  const std::vector<std::string>& names, examples::AttentionReport* report) {
  const Preprocessing prep = preprocessing(opt, w);
  const Batch batch = read_inputs(opt, prep);
  if (!batch.from_tensor) std::printf("preprocessing: %s\n", prep.describe().c_str());
  dynconv::Session<float> session(model, opt.threads);
  const auto t0 = std::chrono::steady_clock::now();
  const Tensor2<float> logits = forward(session, batch.x);
  const double ms = 1e3 * seconds_since(t0);
  check_finite(logits, batch.names);
  if (report) report->add(session);
  print_predictions(logits, batch.names, names, opt.top);
  const Index n = batch.x.dimension(0);
  std::printf("latency: %.2f ms per batch of %lld, %.2f ms per image (%d thread%s)\n", ms,
              (long long)n, ms / double(n), opt.threads, opt.threads == 1 ? "" : "s");
  print_cost(model, batch.x.dimension(2), batch.x.dimension(3));
  finish_attention(opt, report);
  if (!opt.output.empty()) write_logits(opt.output, logits, model.name());
  return 0;
}

// ---- Evaluation on Fashion-MNIST ------------------------------------------------------------

/// A progress bar on stderr, drawn only when stderr is a terminal.
class Progress {
 public:
  explicit Progress(Index total) : total_(total), on_(isatty(fileno(stderr)) == 1) {}
  void update(Index done, Index correct) const {
    if (!on_) return;
    const int width = 30, filled = static_cast<int>(width * done / total_);
    std::fprintf(stderr, "\r[%s%s] %lld/%lld images, %.1f%% correct",
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 (long long)done, (long long)total_,
                 100.0 * double(correct) / double(std::max<Index>(done, 1)));
    std::fflush(stderr);
  }
  void finish() const {
    if (on_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  Index total_;
  bool on_;
};

void print_confusion(const std::vector<std::vector<Index>>& m,
                     const std::vector<std::string>& names) {
  std::size_t wide = 0;
  for (const std::string& s : names) wide = std::max(wide, s.size());
  std::printf("confusion matrix (rows: true class, columns: predicted class):\n");
  std::printf("%*s", int(wide) + 4, "");
  for (std::size_t c = 0; c < m.size(); ++c) std::printf(" %5zu", c);
  std::printf("\n");
  for (std::size_t t = 0; t < m.size(); ++t) {
    std::printf("%2zu  %-*s", t, int(wide), names[t].c_str());
    for (Index v : m[t]) std::printf(" %5lld", (long long)v);
    std::printf("\n");
  }
}

int run_evaluation(const Options& opt, const Model<float>& model, const SafeTensors& w,
                   std::vector<std::string> names, examples::AttentionReport* report) {
  constexpr Index kBatch = 100;
  const Index classes = fashion_mnist::kNumClasses;
  if (model.num_classes() != classes)
    throw UsageError(dynconv::concat("--eval-fashion-mnist needs a model with ", classes,
                                     " classes, ", model.name(), " has ", model.num_classes()));
  if (names.empty())
    names.assign(fashion_mnist::class_names().begin(), fashion_mnist::class_names().end());
  const Preprocessing prep = preprocessing(opt, w);
  const fashion_mnist::Dataset data = fashion_mnist::load_test(opt.eval_dir);
  const Index total = opt.limit ? std::min(opt.limit, data.count) : data.count;
  if (total == 0) throw dynconv::FormatError(opt.eval_dir + ": the test set holds no images");
  // Predicted classes, one per line (the format of tools/train_fashion_mnist.py --predictions);
  // opened first so that a bad path fails before the evaluation.
  std::ofstream predictions;
  if (!opt.predictions.empty()) {
    predictions.open(opt.predictions);
    if (!predictions)
      throw dynconv::IoError(opt.predictions +
                             ": cannot open for writing: " + std::strerror(errno));
  }

  Tensor2<float> all_logits(opt.output.empty() ? 0 : total, classes);  // for --output
  std::vector<std::vector<Index>> confusion(classes, std::vector<Index>(classes, 0));
  Index correct = 0;
  double forward_s = 0.0;
  const Progress progress(total);
  dynconv::Session<float> session(model, opt.threads);
  const auto t_all = std::chrono::steady_clock::now();
  for (Index begin = 0; begin < total; begin += kBatch) {
    const Index n = std::min(kBatch, total - begin);
    Tensor4<float> x(n, 3, prep.crop, prep.crop);
    for (Index i = 0; i < n; ++i)
      examples::preprocess_into(data.image(begin + i), prep,
                                x.data() + i * 3 * prep.crop * prep.crop,
                                dynconv::concat("test image ", begin + i));
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor2<float> logits = forward(session, x);
    forward_s += seconds_since(t0);
    std::vector<std::string> names;
    for (Index i = 0; i < n; ++i) names.push_back(dynconv::concat("test image ", begin + i));
    check_finite(logits, names, begin);
    if (report) report->add(session);
    if (all_logits.size())
      all_logits.slice(std::array<Index, 2>{begin, 0}, std::array<Index, 2>{n, classes}) = logits;
    for (Index i = 0; i < n; ++i) {
      Index best = 0;
      for (Index c = 1; c < classes; ++c)
        if (logits(i, c) > logits(i, best)) best = c;
      const Index truth = data.labels[std::size_t(begin + i)];
      ++confusion[std::size_t(truth)][std::size_t(best)];
      if (predictions.is_open()) predictions << best << '\n';
      correct += best == truth;
    }
    progress.update(begin + n, correct);
  }
  const double all_s = seconds_since(t_all);
  progress.finish();

  std::printf("%s on the Fashion-MNIST test set (%s): %lld images at %lldx%lld\n",
              model.name().c_str(), opt.eval_dir.c_str(), (long long)total, (long long)prep.crop,
              (long long)prep.crop);
  std::printf("preprocessing: %s\n", prep.describe().c_str());
  std::printf("accuracy: %.2f%% (%lld of %lld)\n", 100.0 * double(correct) / double(total),
              (long long)correct, (long long)total);
  print_confusion(confusion, names);
  std::printf(
      "speed: %.1f images/s in forward (batch %lld, %d thread%s), %.1f images/s with "
      "preprocessing\n",
      double(total) / forward_s, (long long)kBatch, opt.threads,
      opt.threads == 1 ? "" : "s", double(total) / all_s);
  finish_attention(opt, report);
  if (!opt.output.empty()) write_logits(opt.output, all_logits, model.name());
  if (predictions.is_open()) {
    predictions.close();
    if (!predictions) throw dynconv::IoError(opt.predictions + ": cannot write");
    std::printf("predicted classes written to %s\n", opt.predictions.c_str());
  }
  return 0;
}

/// The message on one line: newlines (from nested library messages) become "; ".
std::string one_line(std::string s) {
  for (std::size_t i; (i = s.find('\n')) != std::string::npos;) s.replace(i, 1, "; ");
  return s;
}

// ---- Graph files ----------------------------------------------------------------------------

/// The graph inputs from one safetensors --input: a tensor per input by its name ('input' too
/// for a graph of one input), NCHW or [N, C], finite, the channels the graph expects.
std::vector<Tensor4<float>> read_graph_inputs(const std::string& path, std::vector<std::uint8_t> bytes,
                                             const dynconv::GraphFile<float>& g) {
  const SafeTensors f = SafeTensors::parse(std::move(bytes), path);
  std::vector<Tensor4<float>> xs;
  for (const dynconv::GraphFileValue& v : g.inputs) {
    std::string name = v.name;
    if (!f.contains(name) && g.inputs.size() == 1 && f.contains("input")) name = "input";
    if (!f.contains(name))
      throw dynconv::FormatError(path + ": has no tensor '" + v.name + "' for the graph input of that name" +
                                 (g.inputs.size() == 1 ? " (nor 'input')" : ""));
    const dynconv::TensorEntry& e = f.entry(name);
    if (e.dtype == dynconv::DType::I64)
      throw dynconv::FormatError(path + ": tensor '" + name + "' has dtype I64, expected a float dtype");
    if (e.shape.size() != v.shape.size() || e.shape[1] != v.shape[1])
      throw dynconv::ShapeError(path + ": tensor '" + name + "' has shape " + dynconv::shape_str(e.shape) +
                                ", the graph input '" + v.name + "' takes " + dynconv::shape_str(v.shape) +
                                " (any N, H and W)");
    Tensor4<float> x = dynconv::graph_file_tensor<float>(f, name);
    for (Index i = 0; i < x.size(); ++i)
      if (!std::isfinite(x.data()[i]))
        throw dynconv::FormatError(dynconv::concat(path, ": tensor '", name, "' holds ", x.data()[i], " at element ", i,
                                                   "; inputs must be finite"));
    xs.push_back(std::move(x));
  }
  return xs;
}

void run_graph_session(dynconv::Session<float>& s, const dynconv::GraphFile<float>& g,
                       const std::vector<Tensor4<float>>& xs) {
  std::vector<std::pair<std::string, const Tensor4<float>*>> named;
  for (std::size_t i = 0; i < xs.size(); ++i) named.push_back({g.inputs[i].name, &xs[i]});
  s.run(named);
}

/// --verify: the file's test vectors, each output within the format's tolerance.
int verify_graph(const Options& opt, const dynconv::GraphFile<float>& g, const SafeTensors& w) {
  if (!g.has_test()) throw dynconv::FormatError(w.source() + ": has no test vectors (the graph's 'test' key)");
  std::vector<Tensor4<float>> xs;
  for (const auto& t : g.test_inputs) xs.push_back(dynconv::graph_file_tensor<float>(w, t.second));
  dynconv::Session<float> s(g.graph, opt.threads);
  run_graph_session(s, g, xs);
  bool ok = true;
  for (const auto& t : g.test_outputs) {
    const Tensor4<double> ref = dynconv::graph_file_tensor<double>(w, t.second);
    const Tensor4<float>& y = s.output(t.first);
    const double err = dynconv::graph_test_error(y, ref);
    const bool pass = err <= 1e-4;
    ok = ok && pass;
    std::printf("verify: output '%s' error %.3g (max |y - y_ref| / max(1, max |y_ref|)): %s\n", t.first.c_str(), err,
                pass ? "PASS" : "FAIL");
  }
  if (!ok) throw dynconv::FormatError(w.source() + ": the graph does not reproduce its test vectors (see above)");
  return 0;
}

/// A graph file: --verify, or --input X.safetensors (or images) -> the outputs, printed and
/// written with --output.
int run_graph(const Options& opt, const SafeTensors& w) {
  if (opt.eval || opt.attention || opt.classes || !opt.predictions.empty())
    throw UsageError(w.source() + " is a graph file: --eval-fashion-mnist, --attention, --classes "
                     "and --predictions apply to zoo models (give --model)");
  dynconv::GraphFile<float> g = dynconv::load_graph<float>(w);
  std::printf("graph %s: %zu nodes, input%s", w.source().c_str(), g.graph.size(), g.inputs.size() == 1 ? "" : "s");
  for (const auto& v : g.inputs) std::printf(" %s %s", v.name.c_str(), dynconv::shape_str(v.shape).c_str());
  std::printf("\n");
  apply_temperature(g.graph, opt, w);
  apply_experts(g.graph, opt);
  if (opt.verify) verify_graph(opt, g, w);
  if (opt.inputs.empty()) return 0;
  std::vector<Tensor4<float>> xs;
  std::vector<std::string> names;
  std::vector<std::uint8_t> first = examples::read_file(opt.inputs[0]);
  if (opt.inputs.size() == 1 && is_safetensors(opt.inputs[0], first)) {
    xs = read_graph_inputs(opt.inputs[0], std::move(first), g);
  } else {
    if (g.inputs.size() != 1 || g.inputs[0].shape[1] != 3)
      throw UsageError("images need a graph of one 3-channel input; give a safetensors --input");
    const Preprocessing prep = preprocessing(opt, w);
    Batch b = read_inputs(opt, prep);
    std::printf("preprocessing: %s\n", prep.describe().c_str());
    xs.push_back(std::move(b.x));
    names = b.names;
  }
  dynconv::Session<float> s(g.graph, opt.threads);
  const auto t0 = std::chrono::steady_clock::now();
  run_graph_session(s, g, xs);
  const double ms = 1e3 * seconds_since(t0);
  dynconv::SafeTensorsWriter out;
  for (const dynconv::GraphFileValue& o : g.outputs) {
    const Tensor4<float>& y = s.output(o.name);
    for (Index i = 0; i < y.size(); ++i)
      if (!std::isfinite(y.data()[i]))
        throw dynconv::FormatError(dynconv::concat("output '", o.name, "' holds ", y.data()[i], " at element ", i));
    std::vector<Index> shape = {y.dimension(0), y.dimension(1)};
    if (o.shape.size() == 4) shape = {y.dimension(0), y.dimension(1), y.dimension(2), y.dimension(3)};
    std::printf("output %s %s\n", o.name.c_str(), dynconv::shape_str(shape).c_str());
    out.add(g.outputs.size() == 1 ? std::string("output") : o.name, shape, y.data());
  }
  if (g.outputs.size() == 1 && g.outputs[0].shape.size() == 2 && !names.empty()) {
    const Tensor4<float>& y = s.output(g.outputs[0].name);
    Tensor2<float> logits(y.dimension(0), y.dimension(1));
    std::copy(y.data(), y.data() + y.size(), logits.data());
    print_predictions(logits, names, class_names(opt, w, logits.dimension(1)), opt.top);
  }
  std::printf("latency: %.2f ms per batch of %lld (%d thread%s)\n", ms, (long long)xs[0].dimension(0), opt.threads,
              opt.threads == 1 ? "" : "s");
  if (!opt.output.empty()) {
    out.save(opt.output);
    std::printf("outputs written to %s\n", opt.output.c_str());
  }
  return 0;
}

int run(int argc, char** argv) {
  Options opt;
  if (const std::optional<int> status = parse_command_line(argc, argv, opt)) return *status;
  if (!opt.model.empty() && !in_zoo(opt.model))
    throw UsageError("unknown model '" + opt.model + "'; the zoo has: " + zoo_list());
  const SafeTensors weights = SafeTensors::load(opt.weights);
  if (opt.model.empty() && dynconv::has_graph(weights)) return run_graph(opt, weights);
  if (opt.verify)
    throw UsageError("--verify checks a graph file's test vectors; " + weights.source() +
                     (dynconv::has_graph(weights) ? " runs as zoo model '" + opt.model + "' with --model" : " has no graph"));
  const std::unique_ptr<Model<float>> model =
      load_model(model_name(opt, weights), model_options(opt, weights), weights);
  apply_temperature(*model, opt, weights);
  apply_experts(*model, opt);
  const std::vector<std::string> names = class_names(opt, weights, model->num_classes());
  std::optional<examples::AttentionReport> report;
  if (opt.attention) report.emplace(*model);  // before any Session: it adds graph outputs
  examples::AttentionReport* r = report ? &*report : nullptr;
  return opt.eval ? run_evaluation(opt, *model, weights, names, r)
                  : run_inference(opt, *model, weights, names, r);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s\n", kProgram, one_line(e.what()).c_str());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "%s: out of memory\n", kProgram);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", kProgram, one_line(e.what()).c_str());
  } catch (...) {
    std::fprintf(stderr, "%s: unknown error\n", kProgram);
  }
  return 1;
}
