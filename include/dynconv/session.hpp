// dynconv: a Session runs one graph (any network: a zoo model or your own) with a reusable
// workspace and a pool of threads.
//
//   dynconv::Session<float> session(graph, /*threads=*/2);
//   session.run(images);                                        // [N, C, H, W] (NCHW)
//   const dynconv::Tensor4<float>& y = session.output("logits"); // NCHW; [N, F, 1, 1] when flat
//   const dynconv::Tensor2<float>& logits = session.forward(images);  // a classifier: [N, F]
//
// The session plans the graph for each new input shape (Graph::plan: shapes checked, fused
// steps, buffer lifetimes) and owns every buffer a pass needs (activations, im2col columns,
// mixed kernels, GEMM packing, the outputs): after the first pass at an input shape a pass
// allocates nothing (allocations() stops counting). Each layer splits its work over the
// session's threads. A session reproduces its results bit for bit; sessions with different
// thread counts agree up to float rounding (the split changes the GEMM's edge handling).
//
// Thread safety: a Session is used by one thread at a time; any number of sessions (in any
// threads) may share one graph. Changing the graph (load, add) while a session runs it is a
// data race. A Session keeps a reference to its graph, so it cannot be made from a temporary.
#pragma once

#include <dynconv/graph.hpp>
#include <dynconv/runtime.hpp>

#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dynconv {

template <typename T>
class Session {
 public:
  /// threads >= 1 (OptionsError otherwise); the calling thread is one of them. Validates the
  /// graph (Graph::validate).
  explicit Session(const Graph<T>& graph, int threads = 1) : graph_(graph), ctx_(threads) {
    graph_.validate();
    const auto in = graph_.inputs();
    for (const auto& i : in) input_names_.push_back(i.first);
    for (const auto& o : graph_.outputs()) output_names_.push_back(o.first);
    outputs_.resize(output_names_.size());
    shapes_.resize(input_names_.size());
    given_.resize(input_names_.size());
  }
  /// A session must not outlive its graph: binding a temporary does not compile.
  Session(const Graph<T>&&, int = 1) = delete;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Graph<T>& graph() const { return graph_; }
  int threads() const { return ctx_.threads(); }
  /// The context the passes run with (e.g. to set min_parallel_madds).
  Context<T>& context() { return ctx_; }

  /// Runs a graph with one input on x [N, C, H, W] (NCHW). ShapeError (naming the node, the
  /// modules and the shapes) when the input does not fit.
  void run(const Tensor4<T>& x) {
    check_single_input();
    given_[0] = Given{&x, nullptr};
    pass();
  }
  /// The same for NHWC activations (read in place, not copied).
  void run(const NhwcTensor<T>& x) {
    check_single_input();
    given_[0] = Given{nullptr, &x};
    pass();
  }
  /// Runs a graph on named NCHW inputs, e.g. run({{"image", &x}, {"mask", &m}}): every input
  /// of the graph exactly once (ShapeError otherwise).
  void run(std::initializer_list<std::pair<const char*, const Tensor4<T>*>> inputs) { run_named(inputs); }
  /// The same with the inputs in a vector, for graphs whose inputs are known only at run time
  /// (a graph file's).
  void run(const std::vector<std::pair<std::string, const Tensor4<T>*>>& inputs) { run_named(inputs); }

  /// Output `name` of the last run, NCHW ([N, F, 1, 1] for flat values such as logits); valid
  /// until the next run. ShapeError for an unknown name.
  const Tensor4<T>& output(std::string_view name) const {
    for (std::size_t i = 0; i < output_names_.size(); ++i)
      if (output_names_[i] == name) return outputs_[i];
    fail<ShapeError>(graph_.where(), ": has no output '", std::string(name), "' (its outputs: ", joined(output_names_), ')');
  }
  /// Output i, in the order the graph declares them.
  const Tensor4<T>& output(std::size_t i) const { return outputs_.at(i); }
  const std::vector<std::string>& output_names() const { return output_names_; }

  /// A classifier's pass: run(x), then the first output as [N, F]. ShapeError unless that
  /// output is flat (H = W = 1).
  const Tensor2<T>& forward(const Tensor4<T>& x) {
    run(x);
    return flat_first();
  }
  /// The same on NHWC input.
  const Tensor2<T>& forward(const NhwcTensor<T>& x) {
    run(x);
    return flat_first();
  }

  /// Buffers allocated by this session so far; constant once every input shape has been seen.
  Index allocations() const { return ctx_.workspace().allocations() + output_allocations_; }

 private:
  struct Given {
    const Tensor4<T>* nchw = nullptr;
    const NhwcTensor<T>* nhwc = nullptr;
  };

  template <typename Named>
  void run_named(const Named& inputs) {
    for (Given& g : given_) g = Given{};
    for (const auto& in : inputs) {
      std::size_t i = 0;
      while (i < input_names_.size() && input_names_[i] != in.first) ++i;
      if (i == input_names_.size())
        fail<ShapeError>(graph_.where(), ": has no input '", in.first, "' (its inputs: ", joined(input_names_), ')');
      if (given_[i].nchw) fail<ShapeError>(graph_.where(), ": input '", in.first, "' given twice");
      given_[i].nchw = in.second;
    }
    for (std::size_t i = 0; i < given_.size(); ++i)
      if (!given_[i].nchw) fail<ShapeError>(graph_.where(), ": input '", input_names_[i], "' not given");
    pass();
  }

  void check_single_input() const {
    if (input_names_.size() != 1)
      fail<ShapeError>(graph_.where(), ": has ", input_names_.size(), " inputs (", joined(input_names_),
                       "); give them by name: run({{\"name\", &x}, ...})");
  }

  void pass() {
    // The plan for these input shapes (kept while they stay the same).
    bool same = planned_;
    for (std::size_t i = 0; i < given_.size(); ++i) {
      const Given& g = given_[i];
      const NhwcShape s = g.nhwc ? g.nhwc->shape()
                                 : NhwcShape{g.nchw->dimension(0), g.nchw->dimension(2), g.nchw->dimension(3),
                                             g.nchw->dimension(1)};
      same = same && s == shapes_[i];
      shapes_[i] = s;
    }
    if (!same) {
      planned_ = false;
      plan_ = graph_.plan(shapes_);
      buffers_.clear();
      buffers_.resize(plan_.shapes.size());
      data_.assign(plan_.shapes.size(), nullptr);
      std::size_t widest = 1;
      for (const GraphPlan::Step& s : plan_.steps) widest = std::max(widest, s.inputs.size());
      views_.resize(widest);
      planned_ = true;
    }
    // Inputs: NCHW converted into leased NHWC buffers (split over samples); NHWC read in place.
    for (std::size_t i = 0; i < given_.size(); ++i) {
      const Given& g = given_[i];
      if (g.nhwc) {
        data_[i] = g.nhwc->data();
        continue;
      }
      const NhwcShape& s = shapes_[i];
      buffers_[i] = ctx_.workspace().acquire(s.size());
      T* dst = buffers_[i].data();
      const T* src = g.nchw->data();
      ctx_.pool().parallel_for(s.n, [&](std::int64_t b, int) {
        detail::nchw_to_nhwc(src + b * s.sample_size(), 1, s.c, s.h, s.w, dst + b * s.sample_size());
      });
      data_[i] = dst;
    }
    graph_.execute(plan_, buffers_, data_, views_, ctx_);
    // Outputs to NCHW.
    for (std::size_t o = 0; o < plan_.outputs.size(); ++o) {
      const int v = plan_.outputs[o];
      const NhwcShape& s = plan_.shapes[static_cast<std::size_t>(v)];
      Tensor4<T>& out = outputs_[o];
      if (out.dimension(0) != s.n || out.dimension(1) != s.c || out.dimension(2) != s.h || out.dimension(3) != s.w) {
        out.resize(s.n, s.c, s.h, s.w);
        ++output_allocations_;
      }
      const T* src = data_[static_cast<std::size_t>(v)];
      T* dst = out.data();
      ctx_.pool().parallel_for(s.n, [&](std::int64_t b, int) {
        detail::nhwc_to_nchw(src + b * s.sample_size(), 1, s.h, s.w, s.c, dst + b * s.sample_size());
      });
    }
    for (auto& b : buffers_) b.release();
    ctx_.workspace().equalize();
  }

  const Tensor2<T>& flat_first() {
    const Tensor4<T>& y = outputs_.at(0);
    if (y.dimension(2) != 1 || y.dimension(3) != 1)
      fail<ShapeError>(graph_.where(), ": forward() returns a flat first output [N, F], but output '", output_names_[0],
                       "' is ", shape_str(y.dimensions()), " (NCHW): use run() and output()");
    if (flat_.dimension(0) != y.dimension(0) || flat_.dimension(1) != y.dimension(1)) {
      flat_.resize(y.dimension(0), y.dimension(1));
      ++output_allocations_;
    }
    std::copy(y.data(), y.data() + y.size(), flat_.data());
    return flat_;
  }

  static std::string joined(const std::vector<std::string>& v) {
    std::string s;
    for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  }

  const Graph<T>& graph_;
  Context<T> ctx_;
  std::vector<std::string> input_names_, output_names_;
  std::vector<Given> given_;
  std::vector<NhwcShape> shapes_;
  bool planned_ = false;
  GraphPlan plan_;
  std::vector<typename Workspace<T>::Lease> buffers_;
  std::vector<const T*> data_;
  std::vector<NhwcView<const T>> views_;
  std::vector<Tensor4<T>> outputs_;
  Tensor2<T> flat_;
  Index output_allocations_ = 0;
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class Session<float>;
extern template class Session<double>;
#endif

}  // namespace dynconv
