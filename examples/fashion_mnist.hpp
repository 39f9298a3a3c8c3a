// fashion_mnist: the Fashion-MNIST dataset (Xiao et al. 2017) from its IDX files.
//
//   fashion_mnist::Dataset test = fashion_mnist::load_test("/usr/share/datasets/fashion-mnist");
//   examples::Image img = test.image(0);           // 28x28 grey, white garment on black
//   int label = test.labels[0];                   // 0..9, see fashion_mnist::kClassNames
//
// The files are Debian's dataset-fashion-mnist (t10k-images-idx3-ubyte.gz,
// t10k-labels-idx1-ubyte.gz, and train-*), gzip-compressed IDX; uncompressed files with the
// same names minus ".gz" are read too. IDX: a big-endian magic (0x00000803 for images
// [count, rows, cols] of uint8, 0x00000801 for labels [count] of uint8), the dimensions as
// big-endian uint32, then the data. Errors are dynconv::IoError (missing or unreadable file)
// and dynconv::FormatError (not IDX, truncated, trailing data, inconsistent counts, a label
// outside 0..9), with a one-line message naming the file.
#pragma once

#include "image_input.hpp"

#include <dynconv/error.hpp>

#include <zlib.h>

#include <sys/stat.h>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace fashion_mnist {

using dynconv::Index;

constexpr const char* kDefaultDir = "/usr/share/datasets/fashion-mnist";
constexpr int kNumClasses = 10;

/// The dataset's class names, by label.
inline const std::array<std::string, kNumClasses>& class_names() {
  static const std::array<std::string, kNumClasses> names = {
      "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

/// Images [count, rows, cols] of uint8 and their labels.
struct Dataset {
  Index count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;  // count * rows * cols, row-major
  std::vector<std::uint8_t> labels;  // count, each in 0..9

  /// Image i as a one-channel examples::Image.
  examples::Image image(Index i) const {
    examples::Image img;
    img.height = rows;
    img.width = cols;
    img.channels = 1;
    const auto begin = pixels.begin() + static_cast<std::ptrdiff_t>(i * rows * cols);
    img.pixels.assign(begin, begin + static_cast<std::ptrdiff_t>(rows * cols));
    return img;
  }
};

/// The whole content of a gzip file (or of a plain file: zlib reads those as they are).
inline std::vector<std::uint8_t> read_gzip(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    dynconv::fail<dynconv::IoError>(path, ": cannot open: ", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) dynconv::fail<dynconv::IoError>(path, ": is a directory");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) dynconv::fail<dynconv::IoError>(path, ": cannot open: ", std::strerror(errno));
  std::vector<std::uint8_t> out;
  std::vector<std::uint8_t> buf(1 << 16);
  int got;
  while ((got = gzread(f, buf.data(), static_cast<unsigned>(buf.size()))) > 0)
    out.insert(out.end(), buf.begin(), buf.begin() + got);
  int zerr = Z_OK;
  const std::string reason = got < 0 ? gzerror(f, &zerr) : "";
  gzclose(f);
  if (got < 0) dynconv::fail<dynconv::FormatError>(path, ": cannot decompress: ", reason);
  return out;
}

namespace detail {

inline std::uint32_t big_endian_u32(const std::vector<std::uint8_t>& b, std::size_t at) {
  return std::uint32_t(b[at]) << 24 | std::uint32_t(b[at + 1]) << 16 |
         std::uint32_t(b[at + 2]) << 8 | std::uint32_t(b[at + 3]);
}

/// The dimensions of an IDX file of uint8 with `rank` dimensions, checking the magic and that
/// the data fills the rest of the file exactly; the data starts at 4 + 4 * rank.
inline std::vector<Index> idx_dims(const std::vector<std::uint8_t>& b, int rank,
                                   const std::string& path) {
  const std::size_t header = 4 + 4 * std::size_t(rank);
  const std::uint32_t magic = b.size() >= 4 ? big_endian_u32(b, 0) : 0;
  if (b.size() < header || magic != 0x800u + std::uint32_t(rank))
    dynconv::fail<dynconv::FormatError>(
        path, ": not an IDX file of ", rank == 1 ? "labels" : "images", " (expected magic 0x",
        rank == 1 ? "00000801" : "00000803", ", uint8 with ", rank, " dimensions)");
  std::vector<Index> dims;
  std::uint64_t total = 1;  // saturates at 2^64 - 1 (which no file matches)
  for (int i = 0; i < rank; ++i) {
    dims.push_back(big_endian_u32(b, 4 + 4 * std::size_t(i)));
    const std::uint64_t d = std::uint64_t(dims.back());
    total = d && total > UINT64_MAX / d ? UINT64_MAX : total * d;
  }
  if (b.size() - header != total)
    dynconv::fail<dynconv::FormatError>(path, ": IDX dimensions ", dynconv::shape_str(dims),
                                        " promise ", total, " bytes of data, the file has ",
                                        b.size() - header);
  return dims;
}

}  // namespace detail

/// Reads an images file and its labels file (gzip or plain IDX).
inline Dataset load(const std::string& images_path, const std::string& labels_path) {
  const std::vector<std::uint8_t> images = read_gzip(images_path);
  const std::vector<std::uint8_t> labels = read_gzip(labels_path);
  const std::vector<Index> d = detail::idx_dims(images, 3, images_path);
  const std::vector<Index> l = detail::idx_dims(labels, 1, labels_path);
  if (d[0] != l[0])
    dynconv::fail<dynconv::FormatError>(images_path, " holds ", d[0], " images but ", labels_path,
                                        " holds ", l[0], " labels");
  Dataset ds;
  ds.count = d[0];
  ds.rows = d[1];
  ds.cols = d[2];
  ds.pixels.assign(images.begin() + 16, images.end());
  ds.labels.assign(labels.begin() + 8, labels.end());
  for (std::size_t i = 0; i < ds.labels.size(); ++i)
    if (ds.labels[i] >= kNumClasses)
      dynconv::fail<dynconv::FormatError>(labels_path, ": label ", int(ds.labels[i]), " of image ",
                                          i, " is not in 0..9");
  return ds;
}

/// `dir`/`name`.gz, or `dir`/`name` when only the uncompressed file exists.
inline std::string find_file(const std::string& dir, const std::string& name) {
  struct stat st {};
  const std::string gz = dir + "/" + name + ".gz", plain = dir + "/" + name;
  if (::stat(gz.c_str(), &st) != 0 && ::stat(plain.c_str(), &st) == 0) return plain;
  return gz;
}

/// The 10,000 test images of `dir`; IoError if `dir` is not a readable directory.
inline Dataset load_test(const std::string& dir = kDefaultDir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0)
    dynconv::fail<dynconv::IoError>(
        dir, ": cannot open the Fashion-MNIST directory: ", std::strerror(errno));
  if (!S_ISDIR(st.st_mode))
    dynconv::fail<dynconv::IoError>(dir,
                                    ": is not a directory (expected the one holding "
                                    "t10k-images-idx3-ubyte.gz)");
  return load(find_file(dir, "t10k-images-idx3-ubyte"), find_file(dir, "t10k-labels-idx1-ubyte"));
}

}  // namespace fashion_mnist
