// dynconv: a network as a directed acyclic graph of named modules over named values.
//
//   Graph<float> g("tiny");
//   Value x = g.input("x", 1);                                    // [N, 1, H, W]
//   Value c = g.add("conv", Conv2d<float>(Conv2dOptions(1, 8, 3).padding(1).bias(false)), {x});
//   Value b = g.add("bn", BatchNorm2d<float>(BatchNorm2dOptions(8)), {c});
//   Value r = g.add("relu", ReLU<float>(), {b});
//   g.output("features", r);
//   g.load(SafeTensors::load("tiny.safetensors"));   // "conv.weight", "bn.weight", ...
//   Session<float> s(g, 2);
//
// A value is named by the graph input or the node that produces it; a node's parameters are
// saved and loaded under its name ("conv.weight"). Nodes may name their inputs before they are
// added; the graph is checked as a whole (validate(): every name resolved, no cycle, every node
// leading to an output) when a Session is made, and every shape when the graph first sees an
// input shape: a mismatch is a ShapeError naming both nodes, both modules and both shapes.
//
// Execution (plan()): nodes run in a topological order; a BatchNorm folded into the
// convolution before it and an Identity cost nothing; an activation, a residual Add and a
// second activation that follow a convolution or Linear (each the only consumer of the one
// before) run fused in its epilogue (conv + BatchNorm + ReLU + add + ReLU is one pass). A value
// that an attention or a global pool reads gets its channel means from the convolution that
// writes it (GraphPlan::has_means). Each value's buffer returns to the workspace as soon as its
// last reader has run.
//
// Thread safety: the const members may run concurrently (any number of Sessions may run one
// graph); add(), load(), fold_batchnorms() and module() (non-const) may not.
#pragma once

#include <dynconv/batchnorm.hpp>
#include <dynconv/conv2d.hpp>
#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/elementwise.hpp>
#include <dynconv/module.hpp>
#include <dynconv/runtime.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/weights.hpp>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dynconv {

/// A value of a graph: the name of a graph input or of the node that produces it.
struct Value {
  std::string name;
  Value() = default;
  Value(std::string n) : name(std::move(n)) {}  // NOLINT: a name is a value
  Value(const char* n) : name(n) {}              // NOLINT
};

/// The cost of one named node of a network.
struct NamedCost {
  std::string name;
  LayerCost cost;
};

/// A parameter of a graph under its full name ("layer1.0.conv1.weight") and its shape.
struct NamedParameter {
  std::string name;
  std::vector<Index> shape;
};

/// How a graph runs for given input shapes: the steps in order, the shape of every value and
/// when its buffer is released (Graph::plan). Sessions keep one per input shape.
struct GraphPlan {
  struct Step {
    int node = -1;                 // the module that runs
    std::vector<int> inputs;       // value ids it reads
    int output = -1;               // value id it writes
    Activation act = Activation::Identity, after = Activation::Identity;  // fused PostOps
    int residual = -1;             // value id added in the epilogue, or -1
    std::vector<int> fused;        // nodes whose work this step does (BatchNorm, act, Add)
    std::vector<int> release;      // values whose buffers are free after this step
  };
  std::vector<NhwcShape> shapes;   // per value id
  std::vector<int> alias;          // per value id: the value whose buffer holds it
  std::vector<Step> steps;
  std::vector<int> outputs;        // value ids of the graph outputs (after aliasing)
  /// Per value id: 1 when its step also writes its channel means [n, c] (PostOps::means) for a
  /// module that pools it (Module::pools_input), in its buffer right after its values.
  std::vector<char> has_means;
};

template <typename T>
class Graph {
 public:
  explicit Graph(std::string name = "graph") : name_(std::move(name)) {}
  Graph(Graph&&) noexcept = default;
  Graph& operator=(Graph&&) noexcept = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  virtual ~Graph() = default;

  const std::string& name() const { return name_; }

  /// Declares an input value [N, channels, H, W]; channels 0 accepts any count.
  Value input(const std::string& name, Index channels = 0) {
    check_new_name(name, "input");
    if (channels < 0) fail<OptionsError>(where(), ": input '", name, "': channels=", channels, " must be >= 0");
    inputs_.push_back({name, channels});
    return Value(name);
  }

  /// Adds node `name` computing `module` of `inputs` (values by name, possibly of nodes added
  /// later); returns its output value. OptionsError for an empty or taken name or a wrong
  /// number of inputs.
  template <typename M, typename = std::enable_if_t<std::is_base_of<Module<T>, std::decay_t<M>>::value>>
  Value add(const std::string& name, M&& module, std::vector<Value> inputs) {
    return add(name, std::unique_ptr<Module<T>>(new std::decay_t<M>(std::forward<M>(module))), std::move(inputs));
  }
  Value add(const std::string& name, std::unique_ptr<Module<T>> module, std::vector<Value> inputs) {
    check_new_name(name, "node");
    if (!module) fail<OptionsError>(where(), ": node '", name, "' has no module");
    const int arity = module->arity();
    const bool ok = arity == Module<T>::kVariadic ? !inputs.empty() : static_cast<int>(inputs.size()) == arity;
    if (!ok)
      fail<OptionsError>(where(), ": node '", name, "' (", module->description(), ") takes ",
                         arity == Module<T>::kVariadic ? std::string("one or more inputs") : concat(arity, " input", arity == 1 ? "" : "s"),
                         ", got ", inputs.size());
    Node n;
    n.name = name;
    n.module = std::move(module);
    for (Value& v : inputs) {
      if (v.name.empty()) fail<OptionsError>(where(), ": node '", name, "' takes a value with an empty name");
      n.inputs.push_back(std::move(v.name));
    }
    index_[n.name] = static_cast<int>(nodes_.size());
    nodes_.push_back(std::move(n));
    return Value(name);
  }

  /// Makes `value` a graph output named `name` (a node's output or an input; an intermediate
  /// value may be an output too).
  void output(const std::string& name, const Value& value) {
    if (name.empty()) fail<OptionsError>(where(), ": an output needs a name");
    for (const auto& o : outputs_)
      if (o.first == name) fail<OptionsError>(where(), ": output '", name, "' is declared twice");
    outputs_.push_back({name, value.name});
  }
  /// output(value.name, value).
  void output(const Value& value) { output(value.name, value); }

  /// The module of node `name`, as M (OptionsError if there is no such node or it is not an M).
  template <typename M = Module<T>>
  M& module(const std::string& name) {
    return const_cast<M&>(static_cast<const Graph&>(*this).template module<M>(name));
  }
  template <typename M = Module<T>>
  const M& module(const std::string& name) const {
    const int i = node_index(name);
    if (i < 0) fail<OptionsError>(where(), ": no node '", name, "'");
    const Module<T>& base = *nodes_[static_cast<std::size_t>(i)].module;  // add() stores no null
    // Any module is a Module<T>: no cast, and no error path (through which GCC warned,
    // -Wnonnull, at -O2: an identity cast is null exactly when its argument is).
    if constexpr (std::is_same<M, Module<T>>::value) {
      return base;
    } else {
      const M* m = dynamic_cast<const M*>(&base);
      if (!m) fail<OptionsError>(where(), ": node '", name, "' is ", base.description(), ", not the type asked for");
      return *m;
    }
  }
  bool has_node(const std::string& name) const { return node_index(name) >= 0; }
  std::size_t size() const { return nodes_.size(); }
  /// Node names in the order they were added.
  std::vector<std::string> node_names() const {
    std::vector<std::string> v;
    for (const Node& n : nodes_) v.push_back(n.name);
    return v;
  }
  /// The inputs a node reads, by value name.
  const std::vector<std::string>& node_inputs(const std::string& name) const {
    const int i = node_index(name);
    if (i < 0) fail<OptionsError>(where(), ": no node '", name, "'");
    return nodes_[static_cast<std::size_t>(i)].inputs;
  }
  /// Input names with their channel count (0: any).
  std::vector<std::pair<std::string, Index>> inputs() const {
    std::vector<std::pair<std::string, Index>> v;
    for (const InputDecl& d : inputs_) v.push_back({d.name, d.channels});
    return v;
  }
  /// Output names with the value each one is.
  const std::vector<std::pair<std::string, std::string>>& outputs() const { return outputs_; }

  /// The checks that need no shapes: at least one input and one output, every value name
  /// resolved, no cycle, every node and input leading to an output. OptionsError naming the
  /// graph, the node and the rule.
  void validate() const { (void)topology(); }

  /// Every parameter under its full name, in node order.
  std::vector<NamedParameter> parameters() const {
    std::vector<NamedParameter> v;
    for (const Node& n : nodes_)
      for (const ParameterInfo& p : n.module->parameters()) v.push_back({Module<T>::join(n.name, p.name), p.shape});
    return v;
  }

  /// Loads every node's parameters from `file` under the node's name. Strict: a missing,
  /// mis-shaped or non-finite tensor is an error naming it, and tensors no node takes are
  /// listed in a FormatError (BatchNorm's num_batches_tracked is ignored). Then every
  /// BatchNorm that directly follows a convolution is folded into it (fold_batchnorms).
  /// After a failed load the parameters are partly replaced: load again or discard the graph.
  /// LoadMode::Upcycle reads a static checkpoint into dynamic convolutions (weights.hpp).
  void load(const SafeTensors& file, LoadMode mode = LoadMode::Strict) {
    WeightLoader w(file, mode);
    for (Node& n : nodes_) n.module->load(w, n.name);
    w.finish();
    fold_batchnorms(file.source());
  }
  /// Writes every node's parameters under the names load() takes (folded BatchNorms as
  /// identities with the remaining bias, so the file loads back into the same function).
  void save(SafeTensorsWriter& out) const {
    for (const Node& n : nodes_) n.module->save(out, n.name);
  }

  /// Folds every BatchNorm2d that is the only reader of a Conv2d's or DynamicConv2d's output
  /// (and that output no graph output) into the convolution: the kernels take its scale and
  /// the bias its shift, exactly (paper.md; CondConv and ODConv keep the shift as a separate
  /// bias, DynamicConv2d::fold_batchnorm), and the BatchNorm becomes the identity. Called by
  /// load(); call it after setting parameters by hand. FormatError naming `source` and both
  /// nodes if finite parameters fold into non-finite kernels.
  void fold_batchnorms(const std::string& source = "") {
    const Topology t = topology();
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      auto* bn = dynamic_cast<BatchNorm2d<T>*>(nodes_[i].module.get());
      if (!bn || bn->folded()) continue;
      const int v = t.node_inputs[i][0];
      const int producer = v - static_cast<int>(inputs_.size());
      if (producer < 0 || t.readers[static_cast<std::size_t>(v)] != 1 || t.is_output[static_cast<std::size_t>(v)]) continue;
      Module<T>* m = nodes_[static_cast<std::size_t>(producer)].module.get();
      bool finite = true;
      if (auto* c = dynamic_cast<Conv2d<T>*>(m)) {
        c->fold_batchnorm(*bn);
        finite = all_finite(c->weight()) && all_finite(c->bias());
        Tensor1<T> rest = c->bias();
        if (c->bias_is_parameter()) rest.setZero();
        bn->fold_into_identity(rest);
      } else if (auto* d = dynamic_cast<DynamicConv2d<T>*>(m)) {
        d->fold_batchnorm(*bn);
        const Tensor1<T> rest = d->folded_bias();
        finite = all_finite(d->weight()) && all_finite(d->bias()) && all_finite(rest);
        bn->fold_into_identity(rest);
      } else {
        continue;
      }
      if (!finite)
        fail<FormatError>(source.empty() ? where() : source, ": folding BatchNorm '", nodes_[i].name, "' into '",
                          nodes_[static_cast<std::size_t>(producer)].name, "' overflows ",
                          sizeof(T) == sizeof(float) ? "float" : "the scalar type",
                          ": the weight, running_var and bias values give non-finite kernels");
    }
  }

  /// Stores the experts of every DynamicConv2d node as `p` (DynamicConv2d::set_expert_precision:
  /// BFloat16/Float16 opt-in, Float32 the default); returns how many layers that covers. Call it
  /// after load() (the BatchNorms folded first). OptionsError naming the layer for a Float16
  /// value beyond its range; layers before it keep the new precision then.
  int set_expert_precision(ExpertPrecision p) {
    int layers = 0;
    for (Node& n : nodes_)
      if (auto* d = dynamic_cast<DynamicConv2d<T>*>(n.module.get())) {
        d->set_expert_precision(p);
        ++layers;
      }
    return layers;
  }

  /// The shapes of every value for these input shapes (NHWC, one per graph input in the order
  /// declared), and how the graph runs them. ShapeError or OptionsError naming the nodes, the
  /// modules and the shapes when something does not fit.
  GraphPlan plan(const std::vector<NhwcShape>& in) const {
    const Topology t = topology();
    const int ni = static_cast<int>(inputs_.size());
    if (in.size() != inputs_.size())
      fail<ShapeError>(where(), ": takes ", inputs_.size(), " input", inputs_.size() == 1 ? "" : "s", ", got ", in.size());
    GraphPlan p;
    const std::size_t values = inputs_.size() + nodes_.size();
    p.shapes.resize(values);
    p.alias.resize(values);
    for (std::size_t v = 0; v < values; ++v) p.alias[v] = static_cast<int>(v);
    for (int i = 0; i < ni; ++i) {
      const NhwcShape& s = in[static_cast<std::size_t>(i)];
      const InputDecl& d = inputs_[static_cast<std::size_t>(i)];
      if (s.n < 1) fail<ShapeError>(where(), ": input '", d.name, "' ", s.str(), " has no samples (N=", s.n, ')');
      if (s.h < 1 || s.w < 1)
        fail<ShapeError>(where(), ": input '", d.name, "' ", s.str(), " has no pixels (", s.h, 'x', s.w, ')');
      if (s.c < 1) fail<ShapeError>(where(), ": input '", d.name, "' ", s.str(), " has no channels");
      if (d.channels && s.c != d.channels)
        fail<ShapeError>(where(), ": input '", d.name, "' ", s.str(), " has ", s.c, s.c == 1 ? " channel" : " channels",
                         ", expected ", d.channels);
      p.shapes[static_cast<std::size_t>(i)] = s;
    }
    // Shapes, in topological order.
    for (int node : t.order) {
      const Node& n = nodes_[static_cast<std::size_t>(node)];
      std::vector<NhwcShape> shapes;
      for (int v : t.node_inputs[static_cast<std::size_t>(node)]) shapes.push_back(p.shapes[static_cast<std::size_t>(v)]);
      try {
        const NhwcShape out = n.module->output_shape(shapes);
        // Every value's dimensions stay in the range of a layer's, so that the next module's
        // arithmetic on them cannot overflow (padding can grow a convolution's output).
        for (const Index d : {out.n, out.h, out.w, out.c})
          if (d > detail::kMaxDimension)
            fail<ShapeError>(n.module->description(), ": output ", out.str(), " has a dimension over ",
                             detail::kMaxDimension);
        p.shapes[static_cast<std::size_t>(ni + node)] = out;
      } catch (const ShapeError& e) {
        throw ShapeError(input_context(t, p, node) + e.what());
      } catch (const OptionsError& e) {
        throw OptionsError(input_context(t, p, node) + e.what());
      }
    }
    // Which nodes fuse into the step of a convolution (or Linear) before them.
    std::vector<int> fused_into(nodes_.size(), -1);  // node -> the node whose step does its work
    std::vector<GraphPlan::Step> group(nodes_.size());
    auto value_of = [&](int node) { return ni + node; };
    auto only_reader = [&](int v) -> int {  // the node that alone reads v (not fused yet), or -1
      if (t.readers[static_cast<std::size_t>(v)] != 1 || t.is_output[static_cast<std::size_t>(v)]) return -1;
      const int r = t.first_reader[static_cast<std::size_t>(v)];
      return fused_into[static_cast<std::size_t>(r)] >= 0 ? -1 : r;
    };
    for (int node : t.order) {
      const Node& n = nodes_[static_cast<std::size_t>(node)];
      if (is_alias(n) || fused_into[static_cast<std::size_t>(node)] >= 0) continue;
      GraphPlan::Step s;
      s.node = node;
      s.inputs = t.node_inputs[static_cast<std::size_t>(node)];
      int cur = value_of(node);
      if (n.module->fuses_post_ops()) {
        auto take = [&](int reader) {
          fused_into[static_cast<std::size_t>(reader)] = node;
          s.fused.push_back(reader);
          cur = value_of(reader);
        };
        int r = only_reader(cur);
        // A folded BatchNorm (or an Identity) right after costs nothing.
        while (r >= 0 && is_alias(nodes_[static_cast<std::size_t>(r)])) {
          take(r);
          r = only_reader(cur);
        }
        if (r >= 0 && activation_of(nodes_[static_cast<std::size_t>(r)], s.act)) {
          take(r);
          r = only_reader(cur);
        }
        if (r >= 0 && dynamic_cast<const Add<T>*>(nodes_[static_cast<std::size_t>(r)].module.get())) {
          const std::vector<int>& ab = t.node_inputs[static_cast<std::size_t>(r)];
          const int other = ab[0] == cur ? ab[1] : ab[0];
          if (other != cur && p.shapes[static_cast<std::size_t>(other)] == p.shapes[static_cast<std::size_t>(cur)]) {
            s.residual = other;
            take(r);
            r = only_reader(cur);
            if (r >= 0 && activation_of(nodes_[static_cast<std::size_t>(r)], s.after)) take(r);
          }
        }
      }
      s.output = cur;
      group[static_cast<std::size_t>(node)] = std::move(s);
    }
    // Alias nodes (folded BatchNorm, Identity) and fused nodes: their value is another's.
    for (int node : t.order) {
      const int v = value_of(node);
      const int f = fused_into[static_cast<std::size_t>(node)];
      if (f >= 0) continue;  // set below from the group's output
      if (is_alias(nodes_[static_cast<std::size_t>(node)])) p.alias[static_cast<std::size_t>(v)] = t.node_inputs[static_cast<std::size_t>(node)][0];
    }
    for (int node : t.order) {
      const GraphPlan::Step& s = group[static_cast<std::size_t>(node)];
      if (s.node < 0) continue;
      // Intermediate values of a fused chain are never materialised; the chain's last value
      // is written by the step.
      p.alias[static_cast<std::size_t>(value_of(node))] = s.output;
      for (int f : s.fused) p.alias[static_cast<std::size_t>(value_of(f))] = s.output;
    }
    auto canon = [&](int v) {  // the chain's end; the chain then points at it (a long chain of
      int root = v;            // Identity nodes costs linear time, not quadratic)
      while (p.alias[static_cast<std::size_t>(root)] != root) root = p.alias[static_cast<std::size_t>(root)];
      while (v != root) {
        const int next = p.alias[static_cast<std::size_t>(v)];
        p.alias[static_cast<std::size_t>(v)] = root;
        v = next;
      }
      return root;
    };
    // Steps in topological order of the chain's last node (so a residual is ready), inputs
    // resolved through aliases.
    std::vector<std::pair<int, int>> at;  // (position of the last fused node, node)
    std::vector<int> position(nodes_.size());
    for (std::size_t i = 0; i < t.order.size(); ++i) position[static_cast<std::size_t>(t.order[i])] = static_cast<int>(i);
    for (int node : t.order) {
      const GraphPlan::Step& s = group[static_cast<std::size_t>(node)];
      if (s.node < 0) continue;
      int last = position[static_cast<std::size_t>(node)];
      for (int f : s.fused) last = std::max(last, position[static_cast<std::size_t>(f)]);
      at.push_back({last, node});
    }
    std::sort(at.begin(), at.end());
    for (const auto& pr : at) {
      GraphPlan::Step s = std::move(group[static_cast<std::size_t>(pr.second)]);
      for (int& v : s.inputs) v = canon(v);
      if (s.residual >= 0) s.residual = canon(s.residual);
      s.output = canon(s.output);
      p.steps.push_back(std::move(s));
    }
    for (const auto& o : outputs_) p.outputs.push_back(canon(t.value_id.at(o.second)));
    // A value pooled by a reader (an attention, a global pool) gets its channel means from the
    // step that writes it, each sample summed as it is written, where that module can.
    p.has_means.assign(values, 0);
    std::vector<const Module<T>*> writer(values, nullptr);
    for (const GraphPlan::Step& s : p.steps) writer[static_cast<std::size_t>(s.output)] = nodes_[static_cast<std::size_t>(s.node)].module.get();
    for (const GraphPlan::Step& s : p.steps) {
      const int v = s.inputs.empty() ? -1 : s.inputs[0];
      const Module<T>* w = v >= 0 ? writer[static_cast<std::size_t>(v)] : nullptr;
      if (w && w->writes_means() && nodes_[static_cast<std::size_t>(s.node)].module->pools_input()) p.has_means[static_cast<std::size_t>(v)] = 1;
    }
    // Buffers: released after their last reader, graph outputs and inputs never.
    std::vector<int> last_use(values, -1);
    for (std::size_t i = 0; i < p.steps.size(); ++i) {
      for (int v : p.steps[i].inputs) last_use[static_cast<std::size_t>(v)] = static_cast<int>(i);
      if (p.steps[i].residual >= 0) last_use[static_cast<std::size_t>(p.steps[i].residual)] = static_cast<int>(i);
    }
    for (std::size_t v = static_cast<std::size_t>(ni); v < values; ++v) {
      if (canon(static_cast<int>(v)) != static_cast<int>(v) || last_use[v] < 0) continue;
      if (std::find(p.outputs.begin(), p.outputs.end(), static_cast<int>(v)) != p.outputs.end()) continue;
      p.steps[static_cast<std::size_t>(last_use[v])].release.push_back(static_cast<int>(v));
    }
    return p;
  }

  /// Parameters and multiply-adds of one sample per node (nodes with neither are left out),
  /// for these input shapes.
  std::vector<NamedCost> cost(const std::vector<NhwcShape>& in) const {
    const GraphPlan p = plan(in);
    const Topology t = topology();
    std::vector<NamedCost> out;
    for (int node : t.order) {
      std::vector<NhwcShape> shapes;
      for (int v : t.node_inputs[static_cast<std::size_t>(node)]) shapes.push_back(p.shapes[static_cast<std::size_t>(v)]);
      const LayerCost c = nodes_[static_cast<std::size_t>(node)].module->cost(shapes);
      if (c.params || c.madds()) out.push_back({nodes_[static_cast<std::size_t>(node)].name, c});
    }
    return out;
  }

  /// A table of the nodes in execution order for these input shapes: name, module, output
  /// shape (NCHW), parameters and multiply-adds per sample, and which nodes run fused.
  std::string summary(const std::vector<NhwcShape>& in) const {
    const GraphPlan p = plan(in);
    const Topology t = topology();
    std::ostringstream os;
    os << "graph '" << name_ << "'\n";
    os << std::left << std::setw(32) << "node" << std::setw(44) << "module" << std::setw(22) << "output (NCHW)"
       << std::right << std::setw(12) << "params" << std::setw(14) << "MAdds" << "\n";
    LayerCost total;
    std::vector<int> fused_with(nodes_.size(), -1);
    for (const GraphPlan::Step& s : p.steps)
      for (int f : s.fused) fused_with[static_cast<std::size_t>(f)] = s.node;
    for (int node : t.order) {
      const Node& n = nodes_[static_cast<std::size_t>(node)];
      std::vector<NhwcShape> shapes;
      for (int v : t.node_inputs[static_cast<std::size_t>(node)]) shapes.push_back(p.shapes[static_cast<std::size_t>(v)]);
      const LayerCost c = n.module->cost(shapes);
      total += c;
      std::string what = n.module->description();
      if (fused_with[static_cast<std::size_t>(node)] >= 0)
        what += " [fused into " + nodes_[static_cast<std::size_t>(fused_with[static_cast<std::size_t>(node)])].name + "]";
      os << std::left << std::setw(32) << n.name << std::setw(44) << what << std::setw(22)
         << shape_str(p.shapes[inputs_.size() + static_cast<std::size_t>(node)].nchw()) << std::right << std::setw(12)
         << c.params << std::setw(14) << c.madds() << "\n";
    }
    os << "total: " << total.params << " parameters, " << total.madds() << " multiply-adds per sample\n";
    return os.str();
  }

  /// What validate() checks, resolved: value ids (inputs first, then one per node in the
  /// order added), the readers of every value and a topological order. Sessions keep a copy.
  struct Topology {
    std::map<std::string, int> value_id;
    std::vector<std::vector<int>> node_inputs;  // per node: value ids
    std::vector<int> order;                     // node indices, topological
    std::vector<int> readers;                   // per value: how many (node, input) pairs read it
    std::vector<int> first_reader;              // per value: a node reading it, or -1
    std::vector<char> is_output;                // per value
  };
  Topology topology() const {
    Topology t;
    const int ni = static_cast<int>(inputs_.size());
    if (inputs_.empty()) fail<OptionsError>(where(), ": has no input (declare one with input())");
    if (outputs_.empty()) fail<OptionsError>(where(), ": has no output (declare one with output())");
    if (nodes_.empty() && outputs_.empty()) fail<OptionsError>(where(), ": is empty");
    for (int i = 0; i < ni; ++i) t.value_id[inputs_[static_cast<std::size_t>(i)].name] = i;
    for (std::size_t i = 0; i < nodes_.size(); ++i) t.value_id[nodes_[i].name] = ni + static_cast<int>(i);
    const std::size_t values = inputs_.size() + nodes_.size();
    t.readers.assign(values, 0);
    t.first_reader.assign(values, -1);
    t.is_output.assign(values, 0);
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      std::vector<int> ids;
      for (const std::string& v : nodes_[i].inputs) {
        const auto it = t.value_id.find(v);
        if (it == t.value_id.end())
          fail<OptionsError>(where(), ": node '", nodes_[i].name, "' (", nodes_[i].module->description(), ") reads '", v,
                             "', which is neither an input nor a node of the graph");
        ids.push_back(it->second);
        ++t.readers[static_cast<std::size_t>(it->second)];
        if (t.first_reader[static_cast<std::size_t>(it->second)] < 0) t.first_reader[static_cast<std::size_t>(it->second)] = static_cast<int>(i);
      }
      t.node_inputs.push_back(std::move(ids));
    }
    for (const auto& o : outputs_) {
      const auto it = t.value_id.find(o.second);
      if (it == t.value_id.end())
        fail<OptionsError>(where(), ": output '", o.first, "' is '", o.second, "', which is neither an input nor a node of the graph");
      t.is_output[static_cast<std::size_t>(it->second)] = 1;
    }
    // Topological order (Kahn): among the nodes ready, always the one added first, so that a
    // graph built in order runs in that order.
    std::vector<int> pending(nodes_.size());
    std::vector<std::vector<int>> users(values);
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      for (int v : t.node_inputs[i]) {
        if (v >= ni) ++pending[i];
        users[static_cast<std::size_t>(v)].push_back(static_cast<int>(i));
      }
    std::vector<char> done(nodes_.size(), 0);
    std::set<int> ready;
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      if (!pending[i]) ready.insert(static_cast<int>(i));
    while (!ready.empty()) {
      const int i = *ready.begin();
      ready.erase(ready.begin());
      done[static_cast<std::size_t>(i)] = 1;
      t.order.push_back(i);
      for (int u : users[static_cast<std::size_t>(ni + i)])
        if (--pending[static_cast<std::size_t>(u)] == 0) ready.insert(u);
    }
    if (t.order.size() != nodes_.size()) {
      // Walk back from an unfinished node along unfinished producers until a node repeats.
      std::size_t start = 0;
      while (done[start]) ++start;
      std::vector<int> path{static_cast<int>(start)};
      for (;;) {
        const int cur = path.back();
        int next = -1;
        for (int v : t.node_inputs[static_cast<std::size_t>(cur)])
          if (v >= ni && !done[static_cast<std::size_t>(v - ni)]) {
            next = v - ni;
            break;
          }
        const auto seen = std::find(path.begin(), path.end(), next);
        if (seen != path.end()) {
          // path[i] reads path[i + 1], the last reads `next`: data flows backwards along it.
          std::string cycle = nodes_[static_cast<std::size_t>(next)].name;
          for (auto it = path.rbegin(); it != path.rend(); ++it) {
            cycle += " -> " + nodes_[static_cast<std::size_t>(*it)].name;
            if (it.base() - 1 == seen) break;
          }
          fail<OptionsError>(where(), ": has a cycle: ", cycle);
        }
        path.push_back(next);
      }
    }
    // Every node and input must lead to an output.
    std::vector<char> live(values, 0);
    for (std::size_t v = 0; v < values; ++v) live[v] = t.is_output[v];
    for (auto it = t.order.rbegin(); it != t.order.rend(); ++it)
      if (live[static_cast<std::size_t>(ni + *it)])
        for (int v : t.node_inputs[static_cast<std::size_t>(*it)]) live[static_cast<std::size_t>(v)] = 1;
    for (std::size_t i = 0; i < nodes_.size(); ++i)
      if (!live[static_cast<std::size_t>(ni) + i])
        fail<OptionsError>(where(), ": node '", nodes_[i].name, "' (", nodes_[i].module->description(),
                           ") is not connected to any output");
    for (int i = 0; i < ni; ++i)
      if (!live[static_cast<std::size_t>(i)])
        fail<OptionsError>(where(), ": input '", inputs_[static_cast<std::size_t>(i)].name, "' is not connected to any output");
    return t;
  }

  /// Runs the step list of `p` (from plan()) with the inputs (NHWC, in declared order) in
  /// `buffers`: the pass Sessions make. `buffers` has one slot per value; the graph outputs'
  /// slots hold leases on return. Allocates nothing once the workspace has grown.
  void execute(const GraphPlan& p, std::vector<typename Workspace<T>::Lease>& buffers,
               std::vector<const T*>& data, std::vector<NhwcView<const T>>& views, Context<T>& ctx) const {
    for (const GraphPlan::Step& s : p.steps) {
      const NhwcShape& os = p.shapes[static_cast<std::size_t>(s.output)];
      const bool means = p.has_means[static_cast<std::size_t>(s.output)];
      buffers[static_cast<std::size_t>(s.output)] = ctx.workspace().acquire(os.size() + (means ? os.n * os.c : 0));
      T* out = buffers[static_cast<std::size_t>(s.output)].data();
      data[static_cast<std::size_t>(s.output)] = out;
      for (std::size_t i = 0; i < s.inputs.size(); ++i)
        views[i] = NhwcView<const T>(data[static_cast<std::size_t>(s.inputs[i])], p.shapes[static_cast<std::size_t>(s.inputs[i])]);
      PostOps<T> post;
      post.act = s.act;
      post.after = s.after;
      post.residual = s.residual >= 0 ? data[static_cast<std::size_t>(s.residual)] : nullptr;
      post.means = means ? out + os.size() : nullptr;
      Inputs<T> in(views.data(), static_cast<int>(s.inputs.size()));
      if (!s.inputs.empty() && p.has_means[static_cast<std::size_t>(s.inputs[0])]) in.means = views[0].data + views[0].size();
      nodes_[static_cast<std::size_t>(s.node)].module->run(in, NhwcView<T>(out, os), ctx, post);
      for (int v : s.release) buffers[static_cast<std::size_t>(v)].release();
    }
  }

  /// "graph 'name'": how errors name the graph.
  std::string where() const { return "graph '" + name_ + "'"; }

 private:
  struct Node {
    std::string name;
    std::unique_ptr<Module<T>> module;
    std::vector<std::string> inputs;
  };
  struct InputDecl {
    std::string name;
    Index channels;
  };

  void check_new_name(const std::string& name, const char* what) const {
    if (name.empty()) fail<OptionsError>(where(), ": a ", what, " needs a name");
    for (const InputDecl& d : inputs_)
      if (d.name == name) fail<OptionsError>(where(), ": ", what, " name '", name, "' is already an input");
    const int i = node_index(name);
    if (i >= 0)
      fail<OptionsError>(where(), ": ", what, " name '", name, "' is already the node ",
                         nodes_[static_cast<std::size_t>(i)].module->description());
  }
  int node_index(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? -1 : it->second;
  }
  /// Nodes whose value is their input's: a folded BatchNorm, an Identity.
  static bool is_alias(const Node& n) {
    if (const auto* bn = dynamic_cast<const BatchNorm2d<T>*>(n.module.get())) return bn->folded();
    return dynamic_cast<const Identity<T>*>(n.module.get()) != nullptr;
  }
  /// Whether node n is an activation layer; if so, its activation goes to `out`.
  static bool activation_of(const Node& n, Activation& out) {
    const auto* a = dynamic_cast<const ActivationLayer<T>*>(n.module.get());
    if (a) out = a->activation();
    return a != nullptr;
  }
  template <typename Tensor>
  static bool all_finite(const Tensor& t) {
    for (Index i = 0; i < t.size(); ++i)
      if (!std::isfinite(t.data()[i])) return false;
    return true;
  }
  /// "graph 'g': node 'fc' reading 'pool' (AdaptiveAvgPool2d(1x1)) [2, 96, 1, 1] (NCHW): " for
  /// a shape error of node `node` (the module's own message, which follows, describes it).
  std::string input_context(const Topology& t, const GraphPlan& p, int node) const {
    const Node& n = nodes_[static_cast<std::size_t>(node)];
    std::string s = where() + ": node '" + n.name + "' reading ";
    const std::vector<int>& ids = t.node_inputs[static_cast<std::size_t>(node)];
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const int v = ids[i];
      const int ni = static_cast<int>(inputs_.size());
      if (i) s += ", ";
      if (v < ni)
        s += "input '" + inputs_[static_cast<std::size_t>(v)].name + "'";
      else
        s += "'" + nodes_[static_cast<std::size_t>(v - ni)].name + "' (" + nodes_[static_cast<std::size_t>(v - ni)].module->description() + ")";
      s += " " + p.shapes[static_cast<std::size_t>(v)].str();
    }
    return s + ": ";
  }

  std::string name_;
  std::vector<InputDecl> inputs_;
  std::vector<Node> nodes_;
  std::map<std::string, int> index_;  // node name -> position in nodes_ (add() and lookups in log n)
  std::vector<std::pair<std::string, std::string>> outputs_;
};

#ifdef DYNCONV_EXTERN_TEMPLATES
// Compiled once, where <dynconv/instantiate.hpp> is used (see there).
extern template class Graph<float>;
extern template class Graph<double>;
#endif

}  // namespace dynconv
