// image_input: image files -> model input tensors, preprocessed as torchvision does.
//
//   Image img = load_image("shirt.png");                     // PNG, JPEG, PPM/PGM, BMP, ...
//   Preprocessing p = preprocessing_from_metadata(weights.metadata());
//   Tensor4<float> x = images_to_tensor({img}, p);           // [1, 3, p.crop, p.crop]
//
// The default, Preprocessing::imagenet(), is torchvision's ImageNet classification preset:
//   1. resize (bilinear, antialiased) so that the shorter side is 256;
//   2. centre-crop 224 x 224;
//   3. scale to [0, 1] and normalise with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
// The resize is torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
// antialias=True) on the float image, i.e. PIL's bilinear filter computed in float: when
// enlarging it is plain bilinear interpolation with half-pixel centres, when shrinking a
// triangle filter stretched by the scale factor. (torchvision's PIL path rounds to 8 bits
// between the horizontal and the vertical pass, so it can differ from this by about 1/255.)
// Output sizes and the crop offset follow torchvision: the longer side becomes
// floor(256 * long / short), the crop starts at round((size - crop) / 2), ties to even.
//
// Decoding is Debian's libstb (stb_image, linked as libstb: no STB_IMAGE_IMPLEMENTATION here).
// Errors are dynconv::IoError (the file cannot be read) and dynconv::FormatError (not an image,
// a corrupt image, bad preprocessing metadata), each with a one-line message naming the file.
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/tensor.hpp>

#include <stb_image.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace examples {

using dynconv::Index;

/// An 8-bit image, rows top to bottom, pixels interleaved (HWC); channels is 1 (grey) or 3 (RGB).
struct Image {
  Index height = 0, width = 0, channels = 0;
  std::vector<std::uint8_t> pixels;  // height * width * channels

  std::uint8_t at(Index y, Index x, Index c) const {
    return pixels[static_cast<std::size_t>((y * width + x) * channels + c)];
  }
};

/// How images become model inputs (see the top of this file).
struct Preprocessing {
  Index resize = 256;  // the shorter side after resizing
  Index crop = 224;    // the side of the centred square crop; resize >= crop
  bool normalize = true;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> stddev{0.229f, 0.224f, 0.225f};
  /// Colour images become grey (ITU-R 601-2 luma, as PIL's convert("L")) before the
  /// replication to 3 channels that every grey image gets.
  bool grayscale = false;

  /// torchvision's ImageNet preset for a crop of `crop` (resize round(crop * 256 / 224)).
  static Preprocessing imagenet(Index crop = 224) {
    Preprocessing p;
    p.with_crop(crop);
    return p;
  }

  /// Changes the crop to `crop` and scales the resize in proportion (ties to even).
  Preprocessing& with_crop(Index new_crop) {
    resize = static_cast<Index>(std::nearbyint(double(new_crop) * double(resize) / double(crop)));
    crop = new_crop;
    return *this;
  }

  /// e.g. "resize shorter side to 256 (bilinear), centre crop 224x224, mean [...], std [...]"
  std::string describe() const {
    std::string s;
    if (grayscale) s += "greyscale, ";
    s += dynconv::concat("resize shorter side to ", resize, " (bilinear), centre crop ", crop, 'x',
                         crop);
    if (normalize)
      s += dynconv::concat(", mean [", mean[0], ", ", mean[1], ", ", mean[2], "], std [", stddev[0],
                           ", ", stddev[1], ", ", stddev[2], ']');
    else
      s += ", no normalisation";
    return s;
  }
};

/// The whole file, or IoError (missing, a directory, unreadable).
inline std::vector<std::uint8_t> read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) dynconv::fail<dynconv::IoError>(path, ": cannot open: ", std::strerror(errno));
  std::vector<std::uint8_t> bytes;
  std::uint8_t buf[1 << 16];
  std::size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + got);
  const int err = errno;
  const bool failed = std::ferror(f);
  std::fclose(f);
  if (failed) dynconv::fail<dynconv::IoError>(path, ": cannot read: ", std::strerror(err));
  return bytes;
}

/// Decodes an image held in memory; `source` names it in errors. Grey(+alpha) images stay
/// grey, colour(+alpha) images become RGB (alpha is dropped).
inline Image decode_image(const std::vector<std::uint8_t>& bytes, const std::string& source) {
  if (bytes.empty() || bytes.size() > 0x7fffffffu)
    dynconv::fail<dynconv::FormatError>(source, ": not an image (",
                                        bytes.empty() ? "empty file" : "too large", ')');
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int size = static_cast<int>(bytes.size());
  int w = 0, h = 0, n = 0;
  if (!stbi_info_from_memory(data, size, &w, &h, &n))
    dynconv::fail<dynconv::FormatError>(
        source, ": not an image in a format stb_image reads (PNG, JPEG, PPM/PGM, BMP, GIF, TGA): ",
        stbi_failure_reason());
  const int channels = n <= 2 ? 1 : 3;
  stbi_uc* pixels = stbi_load_from_memory(data, size, &w, &h, &n, channels);
  if (!pixels)
    dynconv::fail<dynconv::FormatError>(source, ": corrupt image: ", stbi_failure_reason());
  Image img;
  img.height = h;
  img.width = w;
  img.channels = channels;
  img.pixels.assign(pixels, pixels + std::size_t(w) * std::size_t(h) * std::size_t(channels));
  stbi_image_free(pixels);
  return img;
}

/// Reads and decodes an image file (IoError / FormatError).
inline Image load_image(const std::string& path) { return decode_image(read_file(path), path); }

namespace detail {

/// Resampling weights along one axis: output i is sum_j weights[i * taps + j] * in[first[i] + j].
struct AxisWeights {
  std::vector<Index> first;
  std::vector<float> weights;
  Index taps = 0;
};

/// The weights of PyTorch's antialiased bilinear interpolation (aten's
/// _compute_indices_weights_aa, itself PIL's): for outputs [begin, end) of an axis resized
/// from `in` to `out` samples.
inline AxisWeights bilinear_weights(Index in, Index out, Index begin, Index end) {
  const double scale = double(in) / double(out);
  const double support = scale >= 1.0 ? scale : 1.0;  // triangle of half-width 1, stretched
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  AxisWeights a;
  a.taps = static_cast<Index>(std::ceil(support)) * 2 + 1;
  a.first.resize(static_cast<std::size_t>(end - begin));
  a.weights.assign(static_cast<std::size_t>((end - begin) * a.taps), 0.0f);
  for (Index i = begin; i < end; ++i) {
    const double center = scale * (double(i) + 0.5);
    // static_cast truncates toward zero, as aten's does.
    const Index lo = std::max<Index>(static_cast<Index>(center - support + 0.5), 0);
    const Index hi = std::min<Index>(static_cast<Index>(center + support + 0.5), in);
    const Index n = std::min<Index>(hi - lo, a.taps);
    float* w = &a.weights[static_cast<std::size_t>((i - begin) * a.taps)];
    double total = 0.0;
    for (Index j = 0; j < n; ++j) {
      const double x = std::abs((double(j + lo) - center + 0.5) * invscale);
      total += x < 1.0 ? 1.0 - x : 0.0;
    }
    for (Index j = 0; j < n; ++j) {
      const double x = std::abs((double(j + lo) - center + 0.5) * invscale);
      w[j] = static_cast<float>(x < 1.0 && total > 0.0 ? (1.0 - x) / total : 0.0);
    }
    a.first[static_cast<std::size_t>(i - begin)] = lo;
  }
  return a;
}

}  // namespace detail

/// The preprocessed image [3, crop, crop] written to `out` (planar, row-major), see the top.
inline void preprocess_into(const Image& img, const Preprocessing& p, float* out,
                            const std::string& source = "image") {
  if (img.height < 1 || img.width < 1 || (img.channels != 1 && img.channels != 3))
    dynconv::fail<dynconv::FormatError>(source, ": image of ", img.height, 'x', img.width, 'x',
                                        img.channels, " cannot be preprocessed");
  if (p.crop < 1 || p.resize < p.crop)
    dynconv::fail<dynconv::FormatError>(source, ": resize ", p.resize, " must be >= crop ", p.crop,
                                        " >= 1");
  // Resized size: the shorter side becomes p.resize (torchvision's Resize(int)).
  const Index h = img.height, w = img.width;
  const Index rh = h <= w ? p.resize : p.resize * h / w;
  const Index rw = h <= w ? p.resize * w / h : p.resize;
  const Index top = static_cast<Index>(std::nearbyint(double(rh - p.crop) / 2.0));
  const Index left = static_cast<Index>(std::nearbyint(double(rw - p.crop) / 2.0));
  const Index c = p.crop;
  const detail::AxisWeights wy = detail::bilinear_weights(h, rh, top, top + c);
  const detail::AxisWeights wx = detail::bilinear_weights(w, rw, left, left + c);

  // Horizontal pass, row by row: the source row as 1 (grey) or 3 (RGB) planes in [0, 1],
  // then [planes, w] -> rows [planes, h, c].
  const bool grey = img.channels == 1 || p.grayscale;
  const Index planes = grey ? 1 : 3;
  std::vector<float> src(static_cast<std::size_t>(planes * w));
  std::vector<float> rows(static_cast<std::size_t>(planes * h * c));
  for (Index y = 0; y < h; ++y) {
    for (Index x = 0; x < w; ++x) {
      if (img.channels == 1) {
        src[static_cast<std::size_t>(x)] = img.at(y, x, 0) / 255.0f;
      } else if (grey) {  // PIL's convert("L"): L = (19595 R + 38470 G + 7471 B + 2^15) >> 16
        const std::uint32_t r = img.at(y, x, 0), g = img.at(y, x, 1), b = img.at(y, x, 2);
        const std::uint32_t l = (19595u * r + 38470u * g + 7471u * b + 0x8000u) >> 16;
        src[static_cast<std::size_t>(x)] = static_cast<float>(l) / 255.0f;
      } else {
        for (Index k = 0; k < 3; ++k)
          src[static_cast<std::size_t>(k * w + x)] = img.at(y, x, k) / 255.0f;
      }
    }
    for (Index k = 0; k < planes; ++k)
      for (Index x = 0; x < c; ++x) {
        const float* in = &src[static_cast<std::size_t>(k * w + wx.first[x])];
        const float* wt = &wx.weights[static_cast<std::size_t>(x * wx.taps)];
        float s = 0.0f;
        for (Index j = 0; j < wx.taps && wx.first[x] + j < w; ++j) s += wt[j] * in[j];
        rows[static_cast<std::size_t>((k * h + y) * c + x)] = s;
      }
  }
  // Vertical pass: rows [planes, h, c] -> out [3, c, c] (grey replicated), then normalised.
  for (Index k = 0; k < 3; ++k) {
    const Index plane = planes == 1 ? 0 : k;
    const float mean = p.normalize ? p.mean[k] : 0.0f;
    const float inv_std = p.normalize ? 1.0f / p.stddev[k] : 1.0f;
    for (Index y = 0; y < c; ++y)
      for (Index x = 0; x < c; ++x) {
        const float* wt = &wy.weights[static_cast<std::size_t>(y * wy.taps)];
        float s = 0.0f;
        for (Index j = 0; j < wy.taps && wy.first[y] + j < h; ++j)
          s += wt[j] * rows[static_cast<std::size_t>((plane * h + wy.first[y] + j) * c + x)];
        out[(k * c + y) * c + x] = (s - mean) * inv_std;
      }
  }
}

/// The images as one batch [N, 3, crop, crop].
inline dynconv::Tensor4<float> images_to_tensor(const std::vector<Image>& images,
                                                const Preprocessing& p) {
  dynconv::Tensor4<float> x(static_cast<Index>(images.size()), 3, p.crop, p.crop);
  for (std::size_t i = 0; i < images.size(); ++i)
    preprocess_into(images[i], p, x.data() + static_cast<Index>(i) * 3 * p.crop * p.crop,
                    "image " + std::to_string(i));
  return x;
}

/// The preprocessing a model's weight file asks for, starting from `base` (default: the
/// ImageNet preset). Metadata keys, all optional:
///   input_size        "32": crop 32; the resize becomes resize_size, or the same 32
///                     (a square image is then resized straight to 32x32)
///   resize_size       "36": the shorter side before the crop (>= input_size)
///   resize            how the training images were resized: it must start with "bilinear"
///                     (free text may follow, e.g. "bilinear, align_corners=False, from
///                     28x28"), and must not say align_corners=True. Enlarging, as from
///                     Fashion-MNIST's 28x28 to 32x32, this resize equals
///                     F.interpolate(mode="bilinear", align_corners=False) with or without
///                     antialias; shrinking, it antialiases
///   normalize_mean    JSON array of 3 (or 1) numbers, e.g. "[0.286, 0.286, 0.286]"
///   normalize_std     the same for the standard deviations (> 0)
///   grayscale_to_rgb  "true": colour images become grey, then 3 equal channels
/// FormatError naming the key for a value that does not parse.
inline Preprocessing preprocessing_from_metadata(const std::map<std::string, std::string>& meta,
                                                 Preprocessing base = Preprocessing::imagenet(),
                                                 const std::string& source = "weights") {
  auto bad = [&](const std::string& key, const std::string& rule) {
    dynconv::fail<dynconv::FormatError>(source, ": metadata ", key, "='", meta.at(key), "' ", rule);
  };
  auto get_size = [&](const std::string& key) -> Index {
    const std::string& v = meta.at(key);
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno || n < 1 || n > 8192)
      bad(key, "must be an integer in [1, 8192]");
    return static_cast<Index>(n);
  };
  auto get_triple = [&](const std::string& key, bool positive) {
    std::array<float, 3> out{};
    const nlohmann::json j = nlohmann::json::parse(meta.at(key), nullptr, false);
    const bool shape_ok = j.is_array() && (j.size() == 1 || j.size() == 3);
    for (std::size_t i = 0; shape_ok && i < 3; ++i) {
      const nlohmann::json& e = j[j.size() == 1 ? 0 : i];
      if (!e.is_number() || !std::isfinite(e.get<double>()) || (positive && !(e.get<double>() > 0)))
        bad(key, positive ? "must hold positive numbers" : "must hold finite numbers");
      out[i] = e.get<float>();
    }
    if (!shape_ok) bad(key, "must be a JSON array of 3 (or 1) numbers");
    return out;
  };

  Preprocessing p = base;
  if (meta.count("input_size")) {
    p.crop = get_size("input_size");
    p.resize = p.crop;
  }
  if (meta.count("resize_size")) p.resize = get_size("resize_size");
  if (p.resize < p.crop)
    dynconv::fail<dynconv::FormatError>(source, ": metadata resize_size=", p.resize,
                                        " is smaller than input_size=", p.crop);
  if (meta.count("resize")) {
    const std::string& v = meta.at("resize");
    if (v.rfind("bilinear", 0) != 0 || v.find("align_corners=True") != std::string::npos)
      bad("resize", "is not supported (only bilinear with align_corners=False)");
  }
  if (meta.count("normalize_mean")) p.mean = get_triple("normalize_mean", false);
  if (meta.count("normalize_std")) p.stddev = get_triple("normalize_std", true);
  if (meta.count("grayscale_to_rgb")) {
    const std::string& v = meta.at("grayscale_to_rgb");
    if (v != "true" && v != "false") bad("grayscale_to_rgb", "must be 'true' or 'false'");
    p.grayscale = v == "true";
  }
  return p;
}

}  // namespace examples
