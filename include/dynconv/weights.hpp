// dynconv: strict loading of named parameters from a safetensors file.
//
// WeightLoader hands out tensors by name with their expected shape and remembers what it
// handed out, so that a model load can insist that the file holds exactly the model's
// parameters:
//   - a missing tensor is a FormatError naming it and the shape the model expects;
//   - a tensor of another shape is a ShapeError printing both shapes;
//   - a NaN or infinite value is a FormatError naming the tensor and the element (a model
//     would otherwise turn it into confident-looking garbage);
//   - finish() reports every tensor of the file the model did not take (a FormatError listing
//     them), except BatchNorm's "*.num_batches_tracked" counters, which are accepted and ignored,
//     and, in a graph file (metadata "dynconv.graph"), its own "dynconv."-prefixed tensors (the
//     test vectors, docs/graph_format.md), so that a zoo model loads from its graph file too.
// Any stored dtype converts to the model's scalar type (F16/BF16 files load exactly).
//
// LoadMode::Upcycle reads a static checkpoint into a dynamic model: a dynamic convolution then
// takes the static kernel [Cout, Cin/groups, kh, kw] as all K of its kernels and keeps its
// attention parameters where the file has none; with sum(pi) = 1 it computes exactly the
// static convolution, whatever the attention (paper.md).
#pragma once

#include <dynconv/error.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/tensor.hpp>

#include <array>
#include <cmath>
#include <set>
#include <string>
#include <vector>

namespace dynconv {

/// How a model load reads a file: `Strict` (the file holds exactly the model's parameters) or
/// `Upcycle` (a static checkpoint into a dynamic model: each dynamic convolution takes the
/// static kernel as all K kernels; see weights.hpp).
enum class LoadMode { Strict, Upcycle };

/// Hands out the tensors of a file by name, each with the shape the model expects, and
/// remembers which it handed out, so that finish() can report the ones nobody took. Used by
/// models::Model::load and the blocks' load(). Every rule and its message: @ref errors_loading.
class WeightLoader {
 public:
  /// Reads from `file`, which must outlive the loader (it is kept by reference).
  explicit WeightLoader(const SafeTensors& file, LoadMode mode = LoadMode::Strict)
      : file_(file), mode_(mode) {}

  LoadMode mode() const { return mode_; }
  /// The file's name (or description), for error messages.
  const std::string& source() const { return file_.source(); }

  /// Whether the file holds `name` (does not take it).
  bool contains(const std::string& name) const { return file_.contains(name); }

  /// The tensor `name`, which must exist with exactly `shape`, converted to T.
  /// @throws FormatError if the file lacks it or a value is NaN or infinite;
  /// @throws ShapeError if its shape is not `shape`.
  template <typename T, int Rank>
  Tensor<T, Rank> take(const std::string& name, const std::array<Index, Rank>& shape) {
    if (!file_.contains(name))
      fail<FormatError>(file_.source(), ": missing tensor '", name, "' ", shape_str(shape));
    const TensorEntry& e = file_.entry(name);
    bool same = static_cast<int>(e.shape.size()) == Rank;
    for (int i = 0; same && i < Rank; ++i) same = e.shape[i] == shape[i];
    if (!same)
      fail<ShapeError>(file_.source(), ": tensor '", name, "' has shape ",
                               shape_str(e.shape), ", the model expects ", shape_str(shape));
    taken_.insert(name);
    Tensor<T, Rank> t = file_.get<T, Rank>(name);
    check_finite(name, t.data(), t.size());
    return t;
  }

  /// The tensor `name` flat (row-major), which must exist with exactly `shape`, converted to T.
  /// The same rules as take().
  template <typename T>
  std::vector<T> take_flat(const std::string& name, const std::vector<Index>& shape) {
    if (!file_.contains(name))
      fail<FormatError>(file_.source(), ": missing tensor '", name, "' ", shape_str(shape));
    const TensorEntry& e = file_.entry(name);
    if (e.shape != shape)
      fail<ShapeError>(file_.source(), ": tensor '", name, "' has shape ", shape_str(e.shape),
                       ", the model expects ", shape_str(shape));
    taken_.insert(name);
    std::vector<T> t = file_.get_flat<T>(name);
    check_finite(name, t.data(), static_cast<Index>(t.size()));
    return t;
  }

  /// A one-element tensor (any rank) as a double, or `fallback` when the file lacks it.
  /// @throws ShapeError if it has more or fewer than one element;
  /// @throws FormatError if it is NaN or infinite.
  double take_scalar_or(const std::string& name, double fallback) {
    if (!file_.contains(name)) return fallback;
    const std::vector<double> v = file_.get_flat<double>(name);
    if (v.size() != 1)
      fail<ShapeError>(file_.source(), ": tensor '", name, "' has shape ",
                               shape_str(file_.entry(name).shape), ", expected one element");
    taken_.insert(name);
    check_finite(name, v.data(), 1);
    return v[0];
  }

  /// Throws FormatError listing the tensors nobody took (num_batches_tracked and a graph
  /// file's own "dynconv." tensors excepted).
  void finish() const {
    const std::string ignored = ".num_batches_tracked";
    const bool graph_file = file_.metadata().count("dynconv.graph") > 0;
    std::string unexpected;
    std::size_t count = 0;
    for (const std::string& name : file_.names()) {
      if (taken_.count(name)) continue;
      if (graph_file && name.rfind("dynconv.", 0) == 0) continue;
      if (name.size() >= ignored.size() &&
          name.compare(name.size() - ignored.size(), ignored.size(), ignored) == 0)
        continue;
      if (++count <= 10) unexpected += (count > 1 ? ", '" : "'") + name + "'";
    }
    if (count > 10) unexpected += concat(" and ", count - 10, " more");
    if (count)
      fail<FormatError>(file_.source(), ": ", count, " unexpected tensor",
                                count > 1 ? "s" : "", " the model does not have: ", unexpected);
  }

 private:
  template <typename T>
  void check_finite(const std::string& name, const T* p, Index n) const {
    for (Index i = 0; i < n; ++i)
      if (!std::isfinite(p[i]))
        fail<FormatError>(file_.source(), ": tensor '", name, "' holds ", p[i],
                                  " at element ", i, "; weights must be finite");
  }

  const SafeTensors& file_;
  LoadMode mode_;
  std::set<std::string> taken_;
};

}  // namespace dynconv
