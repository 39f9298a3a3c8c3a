// dynconv: Module<T>, the one interface of every layer.
//
// A module maps one or more NHWC activations to one: Conv2d, DynamicConv2d (every attention
// kind; CondConv with a shared routing takes it as a second input), CondConvRouting, BatchNorm2d, the
// activations, pooling, Linear, Flatten, Add/Sub/Mul (with channel broadcast), Concat,
// Upsample, Identity, Softmax and LogSoftmax are modules, and a Graph (graph.hpp) is a network
// of named modules. Every module has
//   - one run signature:   run(inputs, y, ctx, post)  (runtime.hpp: NHWC views, a Context with
//                          the thread pool and workspace, and PostOps it applies to y);
//   - its output shape:    output_shape(input shapes), ShapeError when the inputs do not fit;
//   - named parameters:    parameters() (name -> shape), parameter(name) (the tensor, flat in
//                          PyTorch's order), set_parameter(name, values);
//   - load and save by prefix: a parameter `weight` of a module saved under prefix
//                          "layer1.0.conv1" is the file's tensor "layer1.0.conv1.weight";
//   - its cost:            cost(input shapes), parameters and multiply-adds of one sample;
//   - a one-off forward:   forward(x) on NCHW Tensor4 or NHWC NhwcTensor, on one thread.
#pragma once

#include <dynconv/conv_options.hpp>
#include <dynconv/error.hpp>
#include <dynconv/runtime.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/weights.hpp>

#include <string>
#include <vector>

namespace dynconv {

/// A named parameter of a module: its name (relative to the module) and PyTorch shape.
struct ParameterInfo {
  std::string name;
  std::vector<Index> shape;
};

/// Product of the dimensions of `shape` (1 for a scalar []).
inline Index element_count(const std::vector<Index>& shape) {
  Index n = 1;
  for (Index d : shape) n *= d;
  return n;
}

template <typename T>
class Module {
 public:
  /// arity() of a module that takes any number (>= 1) of inputs (Concat).
  static constexpr int kVariadic = -1;

  virtual ~Module() = default;

  /// What the module is, e.g. "Conv2d(3 -> 16, 3x3)"; errors name modules by it.
  virtual std::string description() const = 0;
  /// How many inputs run() takes; kVariadic for one or more.
  virtual int arity() const { return 1; }
  /// The output shape for these input shapes (as many as arity()); ShapeError naming the module
  /// and the shapes when they do not fit. Allocates nothing but the message when it throws.
  virtual NhwcShape output_shape(const std::vector<NhwcShape>& in) const = 0;
  /// y = post(module(x)) into caller memory; the shapes are those output_shape() accepted (not
  /// checked again), the work is split over ctx's threads, every buffer comes from ctx's
  /// workspace. x and y never overlap; post.residual may be one of the inputs.
  virtual void run(const Inputs<T>& x, const NhwcView<T>& y, Context<T>& ctx, const PostOps<T>& post) const = 0;
  /// Whether run() applies PostOps inside its own epilogue (convolutions, Linear), so that a
  /// graph gains by fusing a following activation and residual add into it.
  virtual bool fuses_post_ops() const { return false; }
  /// Whether run() honours PostOps::means (writes the channel means of y when asked), so that a
  /// graph asks it to where a module that pools_input() reads y.
  virtual bool writes_means() const { return false; }
  /// Whether run() pools input 0 over its pixels (an attention, a routing, a global average
  /// pool) and so reads Inputs::means when they are given instead.
  virtual bool pools_input() const { return false; }

  /// The parameters, in a fixed order, with their PyTorch shapes.
  virtual std::vector<ParameterInfo> parameters() const { return {}; }
  /// The values of parameter `name`, flat in PyTorch's order; OptionsError for an unknown name.
  virtual std::vector<T> parameter(const std::string& name) const { unknown_parameter(name); }
  /// Sets parameter `name` from values flat in PyTorch's order (as many as its shape holds).
  /// OptionsError for an unknown name, ShapeError for a wrong count; other checks as the
  /// module's setters (a negative variance, a non-positive temperature).
  virtual void set_parameter(const std::string& name, const std::vector<T>& values) {
    (void)values;
    unknown_parameter(name);
  }
  /// Takes every parameter from `w` under `prefix` + "." + name (strict: see WeightLoader).
  virtual void load(WeightLoader& w, const std::string& prefix) {
    for (const ParameterInfo& p : parameters()) set_parameter(p.name, w.take_flat<T>(join(prefix, p.name), p.shape));
  }
  /// Writes every parameter under the names load() takes.
  virtual void save(SafeTensorsWriter& out, const std::string& prefix) const {
    for (const ParameterInfo& p : parameters()) {
      const std::vector<T> v = parameter(p.name);
      out.add(join(prefix, p.name), p.shape, v.data());
    }
  }
  /// Parameters and multiply-adds of one sample for these input shapes (paper.md's counting).
  virtual LayerCost cost(const std::vector<NhwcShape>& in) const {
    (void)in;
    LayerCost c;
    for (const ParameterInfo& p : parameters()) c.params += element_count(p.shape);
    return c;
  }

  /// The one-off call on NHWC activations: one thread, fresh buffers (a Session or a Context
  /// reuses them). For single-input modules.
  NhwcTensor<T> forward(const NhwcTensor<T>& x) const {
    NhwcTensor<T> y(output_shape({x.shape()}));
    Context<T> ctx(1);
    const NhwcView<const T> in = x.view();
    run(Inputs<T>(in), y.view(), ctx, PostOps<T>{});
    return y;
  }
  /// The same on an NCHW tensor [N, C, H, W] (converted at the door and back).
  Tensor4<T> forward(const Tensor4<T>& x) const { return nhwc_to_nchw(forward(nchw_to_nhwc(x))); }

  /// "prefix.name", or "name" for an empty prefix.
  static std::string join(const std::string& prefix, const std::string& name) {
    return prefix.empty() ? name : prefix + "." + name;
  }

 protected:
  [[noreturn]] void unknown_parameter(const std::string& name) const {
    std::string known;
    for (const ParameterInfo& p : parameters()) known += (known.empty() ? "" : ", ") + p.name;
    fail<OptionsError>(description(), ": no parameter '", name, "' (it has: ", known.empty() ? "none" : known, ')');
  }
  /// ShapeError unless `values` holds as many values as `shape`.
  void check_count(const std::string& name, const std::vector<T>& values, const std::vector<Index>& shape) const {
    if (static_cast<Index>(values.size()) != element_count(shape))
      fail<ShapeError>(description(), ": parameter '", name, "' ", shape_str(shape), " takes ", element_count(shape),
                       element_count(shape) == 1 ? " value" : " values", ", got ", values.size());
  }
  /// OptionsError unless there are `expected` inputs.
  void check_arity(const std::vector<NhwcShape>& in, std::size_t expected) const {
    if (in.size() != expected)
      fail<OptionsError>(description(), ": takes ", expected, " input", expected == 1 ? "" : "s", ", got ", in.size());
  }
};

namespace detail {
/// y = after(act(y) + residual) over samples and pixels, split over the pool: the PostOps of
/// a module that does not fuse them into its own loop.
template <typename T>
void apply_post_ops(const PostOps<T>& post, const NhwcView<T>& y, Context<T>& ctx) {
  if (post.empty()) return;
  const Index total = y.size();
  constexpr Index kChunk = Index(1) << 14;
  const Index parts = total >= 4 * kChunk ? ctx.threads() : 1;
  ctx.pool().parallel_for(parts, [&](std::int64_t part, int) {
    const std::array<Index, 2> r = split_range(total, parts, part);
    T* p = y.data + r[0];
    const Index n = r[1] - r[0];
    activate_inplace(post.act, p, n);
    if (post.residual) {
      const T* q = post.residual + r[0];
      for (Index i = 0; i < n; ++i) p[i] += q[i];
    }
    activate_inplace(post.after, p, n);
  });
}
}  // namespace detail

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class Module<float>;
extern template class Module<double>;
#endif

}  // namespace dynconv
