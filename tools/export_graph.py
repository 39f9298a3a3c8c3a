"""Converts a PyTorch nn.Module (eval mode) into a dynconv graph (docs/graph_format.md).

    from export_graph import graph_of, ExportError, register_adapter
    graph, tensors = graph_of(model, example_input)   # JSON-ready dict, name -> torch.Tensor

`graph` is the `dynconv.graph` object of the file without its `test` key; `tensors` are the
parameter tensors the graph reads (`<node name>.<parameter>`), in the model's dtype.
tools/export_safetensors.py (export(model, path, example_input=x)) writes both, plus the test
vectors, to one safetensors file.

Why torch.fx and not TorchScript: torch.fx records the Python-level calls of forward() as a
graph whose call_module nodes keep the module's path (`layer1.0.conv1`) as their target, so a
node is named by that path and its tensors are the module's state_dict() entries under
exactly the names PyTorch gives them (a checkpoint's names are the file's names). A module
the tracer treats as a leaf stays one node, however complex its forward: a DynamicConv2d,
CondConv2d or ODConv2d (attention, aggregation and per-sample convolution) becomes one
`dynamic_conv2d` op instead of dozens of primitive ops that dynconv would have to recognise
again. TorchScript (trace or script) inlines every submodule into aten ops, keeps parameters as
graph constants or prim::GetAttr chains, and would lose both properties. torch.fx's
ShapeProp then runs the traced module on the example input and gives every node its shape.

The conversion (one dynconv node per fx node, except where said):
- call_module of a leaf module: the adapter registered for its class (register_adapter; the
  built-in ones below use the same mechanism) gives (op, attrs, tensors), or a chain of them
  applied in sequence (timm's BatchNormAct2d: batch_norm then its activation). A module with
  tensors is named by its path and may be called once; one without by its fx node name; the
  later nodes of a chain by `<first node's name>.<suffix>` (`layer.bn1.act`).
  Leaf modules: the registered classes, the peers' classes recognised by name (below), and
  any other torch.nn module (which then fails with an error naming its class: torch.fx would
  otherwise trace into it).
- The dynamic convolutions people train with, recognised by class name and structure because
  the user imports the peer's own class (tools/peer_modules.py has look-alikes for the tests):
  kaijieshi7's Dynamic_conv2d, TArdelean's DynamicConvolution, OSVAI's ODConv2d, timm's
  CondConv2d, converted to dynamic_conv2d, and the timm layers around CondConv2d in timm's
  networks (BatchNormAct2d, SelectAdaptivePool2d: chains) (see "The peers' modules" below and
  docs/graph_format.md): tau read from wherever the class keeps it and stored, hidden read
  from the weights; a module named like one but built otherwise is an ExportError. A
  forward() argument an adapter takes as a constant (TArdelean's temperature: register_adapter
  constant_args) must be one; FixedArguments(model, temperature=tau) fixes it for a network
  whose forward takes it.
- call_function / call_method: the functional and method forms of SUPPORTED below.
- F.pad(x, p) with value 0 feeding only static convolutions: folded into their padding.
- x.contiguous(), `size()` / `.shape` nodes feeding only view / reshape, a reshape that does
  not change the shape: dropped. x.mean((2, 3)) without keepdim: adaptive_avg_pool2d then
  flatten (two nodes).
- In-place forms (x.add_(y), x.relu_(), F.relu(x, inplace=True), nn.ReLU(inplace=True) ...)
  are exported as their out-of-place op; later uses of x see the new value, as in eager mode.
Anything else raises ExportError (a ValueError) naming the fx node, its target, the source
line and the supported ops.
"""

import inspect
import math
import operator
import os
import re

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

import dynconv_torch as dt

__all__ = ["graph_of", "ExportError", "register_adapter", "adapter_for", "FixedArguments",
           "KNOWN_OPS", "supported_ops", "conv2d_attrs", "ACTIVATION_OPS"]

FORMAT = "dynconv.graph"
VERSION = 1

ACTIVATION_OPS = ("relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "tanh",
                  "gelu")
# op -> (min inputs, max inputs)
_ARITY = {"conv2d": (1, 1), "dynamic_conv2d": (1, 2), "condconv_routing": (1, 1),
          "batch_norm": (1, 1), "linear": (1, 1), "add": (2, 2), "sub": (2, 2),
          "mul": (2, 2), "cat": (1, 1024), "flatten": (1, 1), "identity": (1, 1),
          "max_pool2d": (1, 1), "avg_pool2d": (1, 1), "adaptive_avg_pool2d": (1, 1),
          "softmax": (1, 1), "log_softmax": (1, 1), "upsample": (1, 1)}
_ARITY.update({op: (1, 1) for op in ACTIVATION_OPS})
KNOWN_OPS = tuple(_ARITY)

MAX_NODES, MAX_INPUTS, MAX_OUTPUTS, MAX_NODE_INPUTS, MAX_NAME = 100000, 64, 64, 1024, 256
_INT_MAX = 2 ** 31 - 1


class ExportError(ValueError):
    """The model (or a part of it) cannot be expressed as a dynconv graph."""


# ---------------------------------------------------------------------------------------------
# Adapters: module class -> fn(module, path) -> (op, attrs, tensors)

_ADAPTERS = {}
_CONSTANT_ARGS = {}   # class -> names of forward() arguments its adapter takes as constants
_PEERS = {}           # class __name__ -> (adapter, constant args): the peers' classes


def register_adapter(module_class, fn, constant_args=()):
    """Makes every module of `module_class` a leaf of the trace: fn(module, path) returns
    (op, attrs, tensors), op one of KNOWN_OPS, attrs a JSON-ready dict, tensors a dict
    {parameter name: tensor} stored as `<path>.<parameter name>` (the node is then named by its
    path; a node without tensors is named by its torch.fx node). fn raises ValueError (or
    ExportError) for a configuration it cannot express. A subclass uses its base's adapter only
    if it does not override forward(). Returns fn.

    A module that computes several ops (timm's BatchNormAct2d: batch_norm, then an
    activation) returns a chain instead: a list of (op, attrs, tensors) or (op, attrs, tensors,
    suffix), applied in sequence. The first node takes the call's tensor arguments and is named
    as a single node would be; each later node takes the one before it as its only input (so
    its op must take one input), has no tensors, and is named `<first node's name>.<suffix>`
    (suffix defaults to the op; give the submodule's attribute, e.g. "act", so that the name
    is the activation's path in the model; `_1`, `_2` ... are appended if the name is taken).
    The module's value is the last node's. The exporter infers the shapes between the nodes
    and checks that the last one is the shape the module computed. [("identity", {}, {})]
    expresses a module that is the identity.

    constant_args names forward() parameters that are not tensors of the graph but settings
    the caller fixes (TArdelean's `temperature`): fn is then called as fn(module, path,
    {name: value}) with the value the call passes (forward()'s default if it passes none): a
    Python number, or a tensor attribute of the model. A value computed at run time (e.g. an
    input of the network) is an ExportError: the file stores one value; export
    FixedArguments(model, name=value) to fix it.

    A class registered here takes precedence over the built-in recognition of the peers'
    classes by name (kaijieshi7's Dynamic_conv2d, TArdelean's DynamicConvolution, OSVAI's
    ODConv2d, timm's CondConv2d): register a variant of one of them under its own class."""
    if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
        raise TypeError(f"register_adapter: {module_class!r} is not an nn.Module class")
    if not callable(fn):
        raise TypeError(f"register_adapter: {fn!r} is not callable")
    names = (constant_args,) if isinstance(constant_args, str) else tuple(constant_args)
    if not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"register_adapter: constant_args must be parameter names, got "
                        f"{constant_args!r}")
    _ADAPTERS[module_class] = fn
    _CONSTANT_ARGS[module_class] = names
    return fn


def _adapter_entry(module):
    """(adapter, constant argument names) of the module, or (None, ()): its class's adapter,
    or a base class's whose forward() it keeps; else a peer's class recognised by name (the
    class or a base whose forward() it keeps, outside torch)."""
    cls = type(module)
    if cls in _ADAPTERS:
        return _ADAPTERS[cls], _CONSTANT_ARGS.get(cls, ())
    forward = getattr(cls, "forward", None)
    for base in cls.__mro__[1:]:
        if base in _ADAPTERS and forward is getattr(base, "forward", None):
            return _ADAPTERS[base], _CONSTANT_ARGS.get(base, ())
    for base in cls.__mro__:
        if base.__name__ in _PEERS and not base.__module__.startswith("torch.") and \
                (base is cls or forward is getattr(base, "forward", None)):
            return _PEERS[base.__name__]
    return None, ()


def adapter_for(module):
    """The adapter of the module's class, or of a base class whose forward() it keeps, or the
    built-in one of a peer's class recognised by name, or None."""
    return _adapter_entry(module)[0]


class FixedArguments(nn.Module):
    """`model` with some forward() arguments fixed: FixedArguments(net, temperature=30.0)(x)
    is net(x, temperature=30.0). A network whose forward takes a setting next to its input
    (TArdelean's forward(x, temperature)) is exported through it: the setting reaches the
    modules as a constant, which the file stores (the dynamic convolutions' tau). The exported
    node names are the model's own paths (without this wrapper's `model.`), so the file's
    tensor names stay the model's state_dict names. One tensor input (torch.fx cannot trace a
    root forward(*inputs)); for more, write a wrapper whose forward names them."""

    def __init__(self, model, **arguments):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"FixedArguments: {type(model).__name__} is not an nn.Module")
        self.model = model
        self.arguments = dict(arguments)

    def forward(self, x):
        return self.model(x, **self.arguments)


def _pair(v, what):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ExportError(f"{what} must be an int or a pair, got {v!r}")
        a, b = v
    else:
        a = b = v
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in (a, b)):
        raise ExportError(f"{what} must be integers, got {v!r}")
    return [int(a), int(b)]


def _conv_padding(padding, kernel_size, dilation, stride, what="padding"):
    """[top, bottom, left, right] of a conv's padding (numbers, 'valid' or 'same')."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding == "same":
            if list(stride) != [1, 1]:
                raise ExportError(f"padding='same' needs stride 1, got {list(stride)}")
            out = []
            for k, d in zip(kernel_size, dilation):  # as PyTorch: the extra row at the end
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return out
        raise ExportError(f"{what}={padding!r} is not supported")
    ph, pw = _pair(padding, what)
    return [ph, ph, pw, pw]


def conv2d_attrs(m):
    """The conv2d attrs of anything with Conv2d's geometry attributes (nn.Conv2d and the
    family layers of dynconv_torch)."""
    kernel = _pair(m.kernel_size, "kernel_size")
    stride = _pair(m.stride, "stride")
    dilation = _pair(m.dilation, "dilation")
    return {"in_channels": int(m.in_channels), "out_channels": int(m.out_channels),
            "kernel_size": kernel, "stride": stride,
            "padding": _conv_padding(m.padding, kernel, dilation, stride),
            "dilation": dilation, "groups": int(m.groups),
            "bias": getattr(m, "bias", None) is not None}


def _state(module):
    return dict(module.state_dict(keep_vars=False))


def _adapt_conv2d(m, path):
    if m.padding_mode != "zeros":
        raise ExportError(f"padding_mode={m.padding_mode!r}: only 'zeros' is supported")
    return "conv2d", conv2d_attrs(m), _state(m)


def _adapt_batch_norm(m, path):
    if not m.track_running_stats or m.running_mean is None or m.running_var is None:
        raise ExportError("a BatchNorm2d without running statistics uses the batch's "
                          "statistics even in eval mode")
    tensors = {"running_mean": m.running_mean, "running_var": m.running_var}
    if m.affine:
        tensors.update(weight=m.weight, bias=m.bias)
    else:  # the identity affine transform, written out (the op's parameters are required)
        tensors.update(weight=torch.ones_like(m.running_mean),
                       bias=torch.zeros_like(m.running_mean))
    if getattr(m, "num_batches_tracked", None) is not None:  # absent from some checkpoints
        tensors["num_batches_tracked"] = m.num_batches_tracked
    order = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return "batch_norm", {"num_features": int(m.num_features), "eps": float(m.eps)}, \
        {k: tensors[k].detach() for k in order if k in tensors}


def _adapt_linear(m, path):
    return "linear", {"in_features": int(m.in_features), "out_features": int(m.out_features),
                      "bias": m.bias is not None}, _state(m)


def _activation(op):
    def adapt(m, path):
        return op, {}, {}
    return adapt


# torch's activation modules (exact classes) -> op; nn.GELU separately (approximate='none')
_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish",
                       nn.Hardsigmoid: "hardsigmoid", nn.Sigmoid: "sigmoid", nn.SiLU: "silu",
                       nn.Tanh: "tanh"}
# torch's modules that are the identity in eval mode
_EVAL_IDENTITY_MODULES = tuple(getattr(nn, n) for n in (
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    "Identity") if hasattr(nn, n))


def _adapt_gelu(m, path):
    if m.approximate != "none":
        raise ExportError(f"GELU(approximate={m.approximate!r}): only the erf form "
                          f"(approximate='none') is supported")
    return "gelu", {}, {}


def _adapt_identity(m, path):
    return "identity", {}, {}


def _max_pool_attrs(kernel_size, stride, padding, dilation, ceil_mode, return_indices=False):
    if return_indices:
        raise ExportError("max pooling with return_indices=True is not supported")
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and
                                          len(stride) == 0) else _pair(stride, "stride")
    return {"kernel_size": kernel, "stride": stride, "padding": _pair(padding, "padding"),
            "dilation": _pair(dilation, "dilation"), "ceil_mode": bool(ceil_mode)}


def _avg_pool_attrs(kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override=None):
    if divisor_override is not None:
        raise ExportError(f"average pooling with divisor_override={divisor_override!r} is "
                          f"not supported")
    kernel = _pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and
                                          len(stride) == 0) else _pair(stride, "stride")
    return {"kernel_size": kernel, "stride": stride, "padding": _pair(padding, "padding"),
            "ceil_mode": bool(ceil_mode), "count_include_pad": bool(count_include_pad)}


def _adaptive_attrs(output_size):
    if isinstance(output_size, (tuple, list)) and any(v is None for v in output_size):
        raise ExportError(f"adaptive_avg_pool2d output_size={output_size!r}: None (keep the "
                          f"input's size) is not supported")
    return {"output_size": _pair(output_size, "output_size")}


def _adapt_max_pool(m, path):
    return "max_pool2d", _max_pool_attrs(m.kernel_size, m.stride, m.padding, m.dilation,
                                         m.ceil_mode, m.return_indices), {}


def _adapt_avg_pool(m, path):
    return "avg_pool2d", _avg_pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                         m.count_include_pad, m.divisor_override), {}


def _adapt_adaptive_avg_pool(m, path):
    return "adaptive_avg_pool2d", _adaptive_attrs(m.output_size), {}


def _adapt_flatten(m, path):
    if m.start_dim != 1 or m.end_dim != -1:
        raise ExportError(f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}): only "
                          f"start_dim=1, end_dim=-1 is supported")
    return "flatten", {}, {}


def _softmax_dim(dim):
    if dim not in (1, -1, None):
        raise ExportError(f"softmax over dim={dim!r}: only dim 1 of a 2-d value [N, C] is "
                          f"supported")


def _adapt_softmax(op):
    def adapt(m, path):
        _softmax_dim(m.dim)
        return op, {}, {}
    return adapt


def _upsample_attrs(size, scale_factor, mode, align_corners, recompute_scale_factor=None,
                    antialias=False):
    if antialias:
        raise ExportError("interpolation with antialias=True is not supported")
    if mode not in ("nearest", "bilinear"):
        raise ExportError(f"interpolation mode={mode!r}: only 'nearest' and 'bilinear' are "
                          f"supported")
    if (size is None) == (scale_factor is None):
        raise ExportError("interpolation needs exactly one of size and scale_factor")
    attrs = {}
    if size is not None:
        attrs["size"] = _pair(size, "size")
    else:
        sf = list(scale_factor) if isinstance(scale_factor, (tuple, list)) else \
            [scale_factor, scale_factor]
        if len(sf) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                   and math.isfinite(v) and v > 0 for v in sf):
            raise ExportError(f"scale_factor={scale_factor!r} must be one or two positive "
                              f"numbers")
        if recompute_scale_factor and any(float(v) != int(v) for v in sf):
            # the coordinates then follow in/out sizes, not the factor: not expressible
            raise ExportError(f"recompute_scale_factor=True with the non-integer "
                              f"scale_factor={scale_factor!r} is not supported")
        attrs["scale_factor"] = [float(v) for v in sf]
    attrs["mode"] = mode
    if mode == "bilinear":
        attrs["align_corners"] = bool(align_corners)
    elif align_corners:
        raise ExportError("align_corners is only for bilinear interpolation")
    return attrs


def _adapt_upsample(m, path):
    return "upsample", _upsample_attrs(m.size, m.scale_factor, m.mode, m.align_corners,
                                       getattr(m, "recompute_scale_factor", None)), {}


def _adapt_dynamic_conv(m, path):
    attrs = conv2d_attrs(m)
    attrs.update(attention="dy", kernels=int(m.kernels), hidden=int(m.hidden))
    return "dynamic_conv2d", attrs, _state(m)


def _adapt_condconv(m, path):
    attrs = conv2d_attrs(m)
    attrs.update(attention="condconv", kernels=int(m.experts),
                 shared_routing=bool(m.shared_routing))
    return "dynamic_conv2d", attrs, _state(m)


def _adapt_odconv(m, path):
    attrs = conv2d_attrs(m)
    attrs.update(attention="odconv", kernels=int(m.kernels), hidden=int(m.hidden))
    attrs["bias"] = False
    return "dynamic_conv2d", attrs, _state(m)


def _adapt_condconv_routing(m, path):
    return "condconv_routing", {"in_channels": int(m.in_channels),
                                "experts": int(m.experts)}, _state(m)


# ---------------------------------------------------------------------------------------------
# The peers' modules, recognised by class name (the user imports the peer's own class) and
# converted to dynamic_conv2d; every one checks the structure it converts and refuses anything
# else, so that a file never computes other numbers than the module did.
#
#   kaijieshi7's Dynamic_conv2d         dy      attention2d's 1x1-conv fc1 / fc2 as matrices, a
#                                               missing fc1 / fc2 bias as zeros; tau from
#                                               attention.temperature (a plain attribute)
#   TArdelean's DynamicConvolution      dy      kernels_weights / kernels_bias as weight / bias,
#                                               to_scores.0 / .2 as fc1 / fc2; tau the constant
#                                               the call passes as `temperature` (forward()'s
#                                               default 1 if none; FixedArguments fixes it)
#   OSVAI's ODConv2d                    odconv  the state as it is; tau from
#                                               attention.temperature (a plain attribute)
#   timm's CondConv2d                   condconv shared_routing: forward(x, routing_weights)
#                                               takes the routing the block computes with
#                                               ordinary ops (linear, sigmoid ...)
# hidden is always read from the weights' shapes, never from a constructor setting.

_PEER_SOURCES = {"Dynamic_conv2d": "kaijieshi7/Dynamic-convolution-Pytorch",
                 "DynamicConvolution": "TArdelean/DynamicConvolution",
                 "ODConv2d": "OSVAI/ODConv", "CondConv2d": "huggingface/pytorch-image-models",
                 "BatchNormAct2d": "huggingface/pytorch-image-models",
                 "SelectAdaptivePool2d": "huggingface/pytorch-image-models"}


def _class_name(m):
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _peer_source(m, peer):
    return f"{_class_name(m)} ({_PEER_SOURCES[peer]})"


class _Peer:
    """Structure checks of one peer module; every failure an ExportError saying which peer's
    class the module was taken for and what differs."""

    def __init__(self, m, peer):
        self.m, self.peer = m, peer

    def fail(self, why):
        raise ExportError(
            f"{_class_name(self.m)} is named like {_PEER_SOURCES[self.peer]}'s {self.peer}, "
            f"which the exporter converts, but {why}; so it is not converted (a file must "
            f"compute what the module computes). For a variant of that class, "
            f"register_adapter({type(self.m).__qualname__}, fn) with a conversion of your own")

    def attr(self, obj, name, where=""):
        if not hasattr(obj, name):
            self.fail(f"it has no attribute '{where}{name}'")
        return getattr(obj, name)

    def integer(self, obj, name, where=""):
        v = self.attr(obj, name, where)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            self.fail(f"'{where}{name}' is {v!r}, not a positive int")
        return v

    def tensor(self, obj, name, shape, where="", optional=False):
        """The parameter `name` of `obj` with shape `shape` (None: absent, if optional)."""
        v = self.attr(obj, name, where) if not optional else getattr(obj, name, None)
        if v is None or v is False:
            if optional:
                return None
            self.fail(f"'{where}{name}' is missing")
        if not isinstance(v, torch.Tensor):
            self.fail(f"'{where}{name}' is a {type(v).__name__}, not a tensor")
        if list(v.shape) != list(shape):
            self.fail(f"'{where}{name}' has shape {list(v.shape)}, expected {list(shape)}")
        return v

    def children(self, obj, names, where):
        have = sorted(n for n, _ in obj.named_children())
        if have != sorted(names):
            self.fail(f"'{where}' has the modules {have}, expected exactly {sorted(names)}")

    def pool(self, p, where):
        if type(p) is not nn.AdaptiveAvgPool2d or p.output_size not in (1, (1, 1), [1, 1]):
            self.fail(f"'{where}' is {p!r}, not AdaptiveAvgPool2d(1)")

    def pointwise(self, c, cin, cout, where, bias=None):
        """A 1x1 nn.Conv2d cin -> cout applied to a pooled [N, C, 1, 1] value (a dense layer);
        bias True / False required, None either."""
        if type(c) is not nn.Conv2d:
            self.fail(f"'{where}' is a {type(c).__name__}, not an nn.Conv2d")
        if tuple(c.kernel_size) != (1, 1) or tuple(c.stride) != (1, 1) or \
                c.padding not in ((0, 0), "valid") or tuple(c.dilation) != (1, 1) or \
                c.groups != 1 or c.padding_mode != "zeros":
            self.fail(f"'{where}' is {c!r}, not a plain 1x1 convolution")
        if (c.in_channels, c.out_channels) != (cin, cout):
            self.fail(f"'{where}' maps {c.in_channels} -> {c.out_channels} channels, expected "
                      f"{cin} -> {cout}")
        if bias is not None and (c.bias is not None) != bias:
            self.fail(f"'{where}' {'has no' if bias else 'has a'} bias")

    def linear(self, f, cin, cout, where):
        if type(f) is not nn.Linear:
            self.fail(f"'{where}' is a {type(f).__name__}, not an nn.Linear")
        if (f.in_features, f.out_features) != (cin, cout):
            self.fail(f"'{where}' maps {f.in_features} -> {f.out_features} features, expected "
                      f"{cin} -> {cout}")

    def pair(self, obj, name, where=""):
        try:
            return _pair(self.attr(obj, name, where), name)
        except ExportError as e:
            self.fail(f"'{where}{name}': {e}")

    def temperature(self, v, where):
        """tau as a float: a number or a one-element tensor, finite and > 0."""
        if isinstance(v, torch.Tensor):
            if v.numel() != 1 or not v.is_floating_point() and v.dtype not in (
                    torch.int64, torch.int32):
                self.fail(f"{where} is a tensor of shape {list(v.shape)}, not one number")
            v = float(v.detach().reshape(()))
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(f"{where} is {v!r}, not a number")
        v = float(v)
        if not (math.isfinite(v) and v > 0):
            self.fail(f"{where} is {v}; tau must be finite and > 0")
        return v

    def geometry(self, cin, cout, kernel, stride, padding, dilation, groups, bias):
        try:
            kernel = _pair(kernel, "kernel_size")
            stride = _pair(stride, "stride")
            dilation = _pair(dilation, "dilation")
            pads = _conv_padding(padding, kernel, dilation, stride)
        except ExportError as e:
            self.fail(str(e))
        if cin % groups or cout % groups:
            self.fail(f"groups={groups} does not divide {cin} -> {cout} channels")
        return {"in_channels": cin, "out_channels": cout, "kernel_size": kernel,
                "stride": stride, "padding": pads, "dilation": dilation, "groups": groups,
                "bias": bias}


def _dy_tensors(weight, bias, fc1_w, fc1_b, fc2_w, fc2_b, tau):
    """The dy kind's tensors (docs/graph_format.md) in the weight's dtype, tau (a Python
    number) as float64; an absent attention bias as zeros (the same function)."""
    like = weight.detach()
    hidden, k = fc1_w.shape[0], fc2_w.shape[0]
    out = {"weight": like}
    if bias is not None:
        out["bias"] = bias.detach()
    out["attention.fc1.weight"] = fc1_w.detach().reshape(hidden, -1).to(like.dtype)
    out["attention.fc1.bias"] = fc1_b.detach().to(like.dtype) if fc1_b is not None else \
        torch.zeros(hidden, dtype=like.dtype)
    out["attention.fc2.weight"] = fc2_w.detach().reshape(k, hidden).to(like.dtype)
    out["attention.fc2.bias"] = fc2_b.detach().to(like.dtype) if fc2_b is not None else \
        torch.zeros(k, dtype=like.dtype)
    out["attention.temperature"] = torch.tensor(tau, dtype=torch.float64)  # exact
    return out


def _adapt_kaijieshi7(m, path):
    """kaijieshi7's Dynamic_conv2d: softmax(fc2(relu(fc1(GAP x))) / attention.temperature)
    mixes weight [K, Cout, Cin/g, k, k] (and bias [K, Cout]); fc1 / fc2 1x1 convs (fc1
    without bias; fc2 with one in the current version, without in the first)."""
    p = _Peer(m, "Dynamic_conv2d")
    cin, cout = p.integer(m, "in_planes"), p.integer(m, "out_planes")
    groups, k = p.integer(m, "groups"), p.integer(m, "K")
    weight = p.attr(m, "weight")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 5:
        p.fail("'weight' is not a [K, Cout, Cin/groups, k, k] tensor")
    kernel = p.pair(m, "kernel_size")
    p.tensor(m, "weight", [k, cout, cin // groups] + kernel)
    bias = p.tensor(m, "bias", [k, cout], optional=True)
    att = p.attr(m, "attention")
    p.children(att, ["avgpool", "fc1", "fc2"], "attention")
    p.pool(att.avgpool, "attention.avgpool")
    hidden = att.fc1.out_channels if isinstance(att.fc1, nn.Conv2d) else 0
    p.pointwise(att.fc1, cin, hidden, "attention.fc1")
    p.pointwise(att.fc2, hidden, k, "attention.fc2")
    tau = p.temperature(p.attr(att, "temperature", "attention."), "attention.temperature")
    attrs = p.geometry(cin, cout, kernel, p.attr(m, "stride"), p.attr(m, "padding"),
                       p.attr(m, "dilation"), groups, bias is not None)
    attrs.update(attention="dy", kernels=k, hidden=hidden,
                 source=_peer_source(m, "Dynamic_conv2d"))
    return "dynamic_conv2d", attrs, _dy_tensors(weight, bias, att.fc1.weight, att.fc1.bias,
                                                att.fc2.weight, att.fc2.bias, tau)


def _adapt_ardelean(m, path, constants):
    """TArdelean's DynamicConvolution: softmax(to_scores(GAP x) / temperature) mixes
    kernels_weights [K, Cout, Cin/g, kh, kw] (and kernels_bias [K, Cout]); temperature is the
    argument the call passes (a constant)."""
    p = _Peer(m, "DynamicConvolution")
    cin, cout = p.integer(m, "in_channels"), p.integer(m, "out_channels")
    groups, k = p.integer(m, "groups"), p.integer(m, "nof_kernels")
    kernel = p.pair(m, "kernel_size")
    weight = p.tensor(m, "kernels_weights", [k, cout, cin // groups] + kernel)
    bias = p.tensor(m, "kernels_bias", [k, cout], optional=True)
    conv_args = p.attr(m, "conv_args")
    if not isinstance(conv_args, dict) or not set(conv_args) <= {"stride", "padding",
                                                                  "dilation"}:
        p.fail(f"'conv_args' is {conv_args!r}, not a dict of stride, padding, dilation")
    att = p.attr(m, "attention")
    p.children(att, ["global_pooling", "to_scores"], "attention")
    gp, ts = att.global_pooling, att.to_scores
    if type(gp) is not nn.Sequential or len(gp) != 2 or type(gp[1]) is not nn.Flatten or \
            (gp[1].start_dim, gp[1].end_dim) != (1, -1):
        p.fail(f"'attention.global_pooling' is {gp!r}, not (AdaptiveAvgPool2d(1), Flatten())")
    p.pool(gp[0], "attention.global_pooling.0")
    if type(ts) is not nn.Sequential or len(ts) != 3 or type(ts[1]) is not nn.ReLU:
        p.fail(f"'attention.to_scores' is {ts!r}, not (Linear, ReLU, Linear)")
    hidden = ts[0].out_features if isinstance(ts[0], nn.Linear) else 0
    p.linear(ts[0], cin, hidden, "attention.to_scores.0")
    p.linear(ts[2], hidden, k, "attention.to_scores.2")
    tau = p.temperature(constants["temperature"], "the call's temperature argument")
    attrs = p.geometry(cin, cout, kernel, conv_args.get("stride", 1),
                       conv_args.get("padding", 0), conv_args.get("dilation", 1), groups,
                       bias is not None)
    attrs.update(attention="dy", kernels=k, hidden=hidden,
                 source=_peer_source(m, "DynamicConvolution"))
    return "dynamic_conv2d", attrs, _dy_tensors(weight, bias, ts[0].weight, ts[0].bias,
                                                ts[2].weight, ts[2].bias, tau)


def _adapt_osvai_odconv(m, path):
    """OSVAI's ODConv2d: weight [K, Cout, Cin/g, k, k], no bias; attention.{fc, bn, relu,
    channel_fc, filter_fc, spatial_fc, kernel_fc} (the last three where OSVAI has them) and
    attention.temperature, a plain attribute."""
    p = _Peer(m, "ODConv2d")
    cin, cout = p.integer(m, "in_planes"), p.integer(m, "out_planes")
    groups, k = p.integer(m, "groups"), p.integer(m, "kernel_num")
    ks = p.integer(m, "kernel_size")
    weight = p.tensor(m, "weight", [k, cout, cin // groups, ks, ks])
    if getattr(m, "bias", None) is not None:
        p.fail("it has a bias (OSVAI's ODConv2d has none)")
    att = p.attr(m, "attention")
    heads = ["channel_fc"]
    depthwise = cin == groups and cin == cout
    if not depthwise:
        heads.append("filter_fc")
    if ks != 1:
        heads.append("spatial_fc")
    if k != 1:
        heads.append("kernel_fc")
    p.children(att, ["avgpool", "fc", "bn", "relu"] + heads, "attention")
    p.pool(att.avgpool, "attention.avgpool")
    hidden = att.fc.out_channels if isinstance(att.fc, nn.Conv2d) else 0
    p.pointwise(att.fc, cin, hidden, "attention.fc", bias=False)
    bn = att.bn
    if type(bn) is not nn.BatchNorm2d or bn.num_features != hidden:
        p.fail(f"'attention.bn' is {bn!r}, not BatchNorm2d({hidden})")
    if not bn.track_running_stats or bn.running_mean is None:
        p.fail("'attention.bn' has no running statistics (it would use the batch's)")
    if bn.eps != 1e-5:
        p.fail(f"'attention.bn' has eps={bn.eps}; dynconv's ODConv attention uses PyTorch's "
               f"default 1e-5")
    if type(att.relu) is not nn.ReLU:
        p.fail(f"'attention.relu' is {att.relu!r}, not a ReLU")
    outs = {"channel_fc": cin, "filter_fc": cout, "spatial_fc": ks * ks, "kernel_fc": k}
    for h in heads:
        p.pointwise(getattr(att, h), hidden, outs[h], "attention." + h, bias=True)
    if p.attr(att, "kernel_size", "attention.") != ks or \
            p.attr(att, "kernel_num", "attention.") != k:
        p.fail("'attention.kernel_size' / 'attention.kernel_num' differ from the layer's")
    tau = p.temperature(p.attr(att, "temperature", "attention."), "attention.temperature")
    attrs = p.geometry(cin, cout, ks, p.attr(m, "stride"), p.attr(m, "padding"),
                       p.attr(m, "dilation"), groups, False)
    attrs.update(attention="odconv", kernels=k, hidden=hidden,
                 source=_peer_source(m, "ODConv2d"))
    tensors = {"weight": weight.detach()}
    state = _state(att)
    if not bn.affine:  # the identity affine transform, written out
        state["bn.weight"] = torch.ones_like(bn.running_var)
        state["bn.bias"] = torch.zeros_like(bn.running_var)
    for key in ["fc.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                "bn.num_batches_tracked"] + [f"{h}.{t}" for h in heads
                                             for t in ("weight", "bias")]:
        if key in state:
            tensors["attention." + key] = state[key].detach()
    tensors["attention.temperature"] = torch.tensor(tau, dtype=torch.float64)  # exact
    return "dynamic_conv2d", attrs, tensors


def _adapt_timm_condconv(m, path):
    """timm's CondConv2d: weight [E, Cout*Cin/g*kh*kw], bias [E, Cout]; forward(x,
    routing_weights) mixes the experts by the routing its caller computed (timm's
    CondConvResidual: sigmoid(routing_fn(flatten(adaptive_avg_pool2d(x, 1))))), so the node
    takes it as its second input (shared_routing)."""
    p = _Peer(m, "CondConv2d")
    cin, cout = p.integer(m, "in_channels"), p.integer(m, "out_channels")
    groups, e = p.integer(m, "groups"), p.integer(m, "num_experts")
    kernel = p.pair(m, "kernel_size")
    if p.attr(m, "dynamic_padding"):
        p.fail("its padding is timm's dynamic 'same' (TensorFlow 'SAME' computed from the "
               "input size at run time: stride > 1 or an even dilated kernel); a graph file "
               "has one static padding. Build it with a numeric padding or padding='' "
               "(timm's symmetric default)")
    shape = [cout, cin // groups] + kernel
    if list(p.attr(m, "weight_shape")) != shape:
        p.fail(f"'weight_shape' is {m.weight_shape}, expected {tuple(shape)}")
    weight = p.tensor(m, "weight", [e, math.prod(shape)])
    bias = p.tensor(m, "bias", [e, cout], optional=True)
    padding = p.attr(m, "padding")
    if isinstance(padding, str):
        p.fail(f"'padding' is {padding!r}; timm resolves it to numbers in the constructor")
    attrs = p.geometry(cin, cout, kernel, p.attr(m, "stride"), padding, p.attr(m, "dilation"),
                       groups, bias is not None)
    attrs.update(attention="condconv", kernels=e, shared_routing=True,
                 source=_peer_source(m, "CondConv2d"))
    tensors = {"weight": weight.detach()}
    if bias is not None:
        tensors["bias"] = bias.detach()
    return "dynamic_conv2d", attrs, tensors


# timm's layers around its CondConv2d in a real network (efficientnet_cc_b0_4e ...): their
# forward() computes several ops, so they convert to chains (see register_adapter).
#
#   timm's BatchNormAct2d       an nn.BatchNorm2d subclass: batch norm, then `drop` (identity in
#                               eval), then `act` -> batch_norm [+ the activation, named
#                               `<path>.act`]; act nn.Identity (apply_act=False) -> batch_norm
#   timm's SelectAdaptivePool2d `pool` then `flatten`: average pooling only ('avg': an
#                               nn.AdaptiveAvgPool2d; 'fast': mean over the pixels; '': none)
#                               -> adaptive_avg_pool2d [+ flatten, named `<name>.flatten`]

# timm's own activation modules (timm/layers/activations*.py; torch's are used where torch has
# one), by class name -> op; GELUTanh, QuickGELU, Mish, HardMish, PReLU ... are not ops
_TIMM_ACTIVATIONS = {"Swish": "silu", "SwishMe": "silu", "SwishJit": "silu",
                     "Sigmoid": "sigmoid", "Tanh": "tanh", "GELU": "gelu",
                     "HardSwish": "hardswish", "HardSwishMe": "hardswish",
                     "HardSwishJit": "hardswish", "HardSigmoid": "hardsigmoid",
                     "HardSigmoidMe": "hardsigmoid", "HardSigmoidJit": "hardsigmoid"}


def _act_module_op(act):
    """The op of an activation module: an ACTIVATION_OPS name, None for nn.Identity, or a
    str explaining why it does not convert (as ("", reason))."""
    cls = type(act)
    if cls is nn.Identity:
        return None
    if cls in _ACTIVATION_MODULES:
        return _ACTIVATION_MODULES[cls]
    if cls is nn.GELU or (cls.__name__ == "GELU" and not cls.__module__.startswith("torch.")):
        approximate = getattr(act, "approximate", "none")
        if approximate != "none":
            return ("", f"GELU(approximate={approximate!r}): only the erf form converts")
        return "gelu"
    if not cls.__module__.startswith("torch.") and cls.__name__ in _TIMM_ACTIVATIONS:
        return _TIMM_ACTIVATIONS[cls.__name__]
    return ("", f"{_class_name(act)} is not one of the activations the format has (nn.ReLU, "
                f"ReLU6, Hardswish, Hardsigmoid, Sigmoid, SiLU, Tanh, GELU (erf), timm's "
                f"Swish, Sigmoid, Tanh, HardSwish, HardSigmoid, GELU) nor nn.Identity")


def _adapt_timm_batch_norm_act(m, path):
    """timm's BatchNormAct2d: an nn.BatchNorm2d whose forward() applies the batch norm (the
    running statistics in eval mode), then `drop`, then `act` (nn.Identity when built with
    apply_act=False). -> batch_norm, followed by the activation `<path>.act` unless it is the
    identity; `drop` must be the identity in eval mode (nn.Identity or nn.Dropout*)."""
    p = _Peer(m, "BatchNormAct2d")
    if not isinstance(m, nn.BatchNorm2d):
        p.fail("it is not an nn.BatchNorm2d (timm's BatchNormAct2d subclasses it)")
    children = sorted(n for n, _ in m.named_children())
    if children not in (["act"], ["act", "drop"]):
        p.fail(f"it has the modules {children}, expected exactly ['act', 'drop'] (or ['act'], "
               f"timm before 0.6)")
    drop = getattr(m, "drop", None)
    if drop is not None and type(drop) not in _EVAL_IDENTITY_MODULES:
        p.fail(f"'drop' is {drop!r}; only nn.Identity and nn.Dropout* (the identity in eval "
               f"mode) convert")
    try:
        op, attrs, tensors = _adapt_batch_norm(m, path)
    except ExportError as e:
        p.fail(str(e))
    act = _act_module_op(m.act)
    if isinstance(act, tuple):
        p.fail(f"its 'act' is {m.act!r}: {act[1]}")
    attrs["source"] = _peer_source(m, "BatchNormAct2d")
    chain = [(op, attrs, tensors)]
    if act is not None:
        chain.append((act, {}, {}, "act"))
    return chain


def _adapt_timm_select_pool(m, path):
    """timm's SelectAdaptivePool2d: `pool` then `flatten` (nn.Flatten(1) or nn.Identity).
    Average pooling converts: an nn.AdaptiveAvgPool2d (pool_type 'avg'), timm's fast mean over
    the pixels (pool_type 'fast', its own `flatten` flag), or nn.Identity (pool_type '');
    'max', 'avgmax', 'catavgmax' (adaptive max pooling) are refused."""
    p = _Peer(m, "SelectAdaptivePool2d")
    pool_type = p.attr(m, "pool_type")
    children = sorted(n for n, _ in m.named_children())
    if children != ["flatten", "pool"]:
        p.fail(f"it has the modules {children}, expected exactly ['flatten', 'pool']")
    pool, flat = m.pool, m.flatten
    chain = []
    fast = type(pool).__name__ in ("FastAdaptiveAvgPool", "FastAdaptiveAvgPool2d") and \
        not type(pool).__module__.startswith("torch.")
    if type(pool) is nn.AdaptiveAvgPool2d:
        try:
            chain.append(("adaptive_avg_pool2d", _adaptive_attrs(pool.output_size), {}))
        except ExportError as e:
            p.fail(f"'pool': {e}")
    elif fast:
        dim = getattr(pool, "dim", (2, 3))
        if list(dim) not in ([2, 3], [-2, -1]):
            p.fail(f"'pool' averages over dim={dim!r}; only the pixels of an NCHW value (2, 3) "
                   f"convert (input_fmt 'NCHW')")
        chain.append(("adaptive_avg_pool2d", {"output_size": [1, 1]}, {}))
        if bool(p.attr(pool, "flatten", "pool.")):
            chain.append(("flatten", {}, {}, "flatten"))
    elif type(pool) is not nn.Identity:
        p.fail(f"its pool_type is {pool_type!r} ('pool' is {type(pool).__name__}): only "
               f"average pooling converts (pool_type 'avg', 'fast' or ''); the adaptive max "
               f"pooling of 'max', 'avgmax' and 'catavgmax' is not an op of the graph format")
    if type(flat) is nn.Flatten:
        if (flat.start_dim, flat.end_dim) != (1, -1):
            p.fail(f"'flatten' is {flat!r}, not Flatten(1)")
        chain.append(("flatten", {}, {}, "flatten"))
    elif type(flat) is not nn.Identity:
        p.fail(f"'flatten' is {flat!r}, not nn.Flatten(1) or nn.Identity")
    if not chain:
        return "identity", {}, {}
    chain[0][1]["source"] = _peer_source(m, "SelectAdaptivePool2d")
    return chain


_DYNAMIC_ADAPTERS = (_adapt_dynamic_conv, _adapt_condconv, _adapt_odconv, _adapt_kaijieshi7,
                     _adapt_ardelean, _adapt_osvai_odconv, _adapt_timm_condconv)


def _register_builtins():
    register_adapter(nn.Conv2d, _adapt_conv2d)
    register_adapter(nn.BatchNorm2d, _adapt_batch_norm)
    register_adapter(nn.Linear, _adapt_linear)
    for cls, op in _ACTIVATION_MODULES.items():
        register_adapter(cls, _activation(op))
    register_adapter(nn.GELU, _adapt_gelu)
    register_adapter(nn.MaxPool2d, _adapt_max_pool)
    register_adapter(nn.AvgPool2d, _adapt_avg_pool)
    register_adapter(nn.AdaptiveAvgPool2d, _adapt_adaptive_avg_pool)
    register_adapter(nn.Flatten, _adapt_flatten)
    for cls in _EVAL_IDENTITY_MODULES:
        register_adapter(cls, _adapt_identity)
    register_adapter(nn.Softmax, _adapt_softmax("softmax"))
    register_adapter(nn.LogSoftmax, _adapt_softmax("log_softmax"))
    register_adapter(nn.Upsample, _adapt_upsample)
    register_adapter(dt.DynamicConv2d, _adapt_dynamic_conv)
    register_adapter(dt.CondConv2d, _adapt_condconv)
    register_adapter(dt.ODConv2d, _adapt_odconv)
    register_adapter(dt.CondConvRouting, _adapt_condconv_routing)
    _PEERS.update({"Dynamic_conv2d": (_adapt_kaijieshi7, ()),
                   "DynamicConvolution": (_adapt_ardelean, ("temperature",)),
                   "ODConv2d": (_adapt_osvai_odconv, ()),
                   "CondConv2d": (_adapt_timm_condconv, ()),
                   "BatchNormAct2d": (_adapt_timm_batch_norm_act, ()),
                   "SelectAdaptivePool2d": (_adapt_timm_select_pool, ())})
    try:  # torchvision is optional
        from torchvision.ops import StochasticDepth
    except ImportError:
        pass
    else:
        register_adapter(StochasticDepth, _adapt_identity)


_register_builtins()


# ---------------------------------------------------------------------------------------------
# Functional and method forms

_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu",
                  F.relu6: "relu6", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
                  F.silu: "silu", F.gelu: "gelu", F.sigmoid: "sigmoid",
                  torch.sigmoid: "sigmoid", torch.sigmoid_: "sigmoid", F.tanh: "tanh",
                  torch.tanh: "tanh", torch.tanh_: "tanh"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
                "tanh": "tanh", "tanh_": "tanh"}
_BINARY_FUNCTIONS = {operator.add: "add", operator.sub: "sub", operator.mul: "mul",
                     operator.iadd: "add", operator.isub: "sub", operator.imul: "mul",
                     torch.add: "add", torch.sub: "sub", torch.mul: "mul",
                     torch.subtract: "sub", torch.multiply: "mul"}
_INPLACE_BINARY = {operator.iadd, operator.isub, operator.imul}
_BINARY_METHODS = {"add": "add", "sub": "sub", "mul": "mul", "add_": "add", "sub_": "sub",
                   "mul_": "mul", "subtract": "sub", "multiply": "mul"}
_DROPOUT_FUNCTIONS = tuple(getattr(F, n) for n in ("dropout", "dropout1d", "dropout2d",
                                                   "dropout3d", "alpha_dropout",
                                                   "feature_alpha_dropout") if hasattr(F, n))
_CAT_FUNCTIONS = tuple(f for f in (torch.cat, getattr(torch, "concat", None)) if f is not None)
_SOFTMAX_FUNCTIONS = {F.softmax: "softmax", F.log_softmax: "log_softmax",
                      torch.softmax: "softmax", torch.log_softmax: "log_softmax"}

SUPPORTED = """\
modules: nn.Conv2d (padding_mode 'zeros'), nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.ReLU6,
  nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.Tanh, nn.GELU (approximate='none'),
  nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten (start_dim 1),
  nn.Dropout*, nn.Identity, torchvision.ops.StochasticDepth, nn.Softmax / nn.LogSoftmax
  (dim 1 of [N, C]), nn.Upsample (nearest, bilinear), dynconv_torch's DynamicConv2d,
  CondConv2d, ODConv2d, CondConvRouting; the peers' classes, recognised by name and
  structure: kaijieshi7's Dynamic_conv2d, TArdelean's DynamicConvolution (temperature a
  constant: FixedArguments), OSVAI's ODConv2d, timm's CondConv2d (forward(x,
  routing_weights)), timm's BatchNormAct2d (act an activation above, timm's Swish / Sigmoid /
  Tanh / HardSwish / HardSigmoid / GELU, or nn.Identity; drop nn.Identity / nn.Dropout) and
  SelectAdaptivePool2d (pool_type 'avg', 'fast' or ''); and classes given to
  register_adapter() (one node or a chain);
functions and methods: F.relu / relu6 / hardswish / hardsigmoid / silu / gelu / sigmoid / tanh,
  torch.relu / sigmoid / tanh, x.relu() / sigmoid() / tanh(); a + b, a - b, a * b (+=, -=, *=),
  torch.add / sub / mul, x.add / sub / mul (and the _ forms) between two tensors of one shape
  or [N, C, 1, 1] against [N, C, H, W]; torch.cat(dim=1); torch.flatten(x, 1), x.flatten(1),
  x.view / x.reshape to [N, C*H*W]; x.mean((2, 3)) / torch.mean, F.adaptive_avg_pool2d;
  F.max_pool2d, F.avg_pool2d; F.pad (constant 0, feeding only nn.Conv2d); F.interpolate
  (nearest, bilinear); F.softmax / log_softmax (dim 1 of [N, C]); F.dropout (eval);
  x.contiguous(); x.size() / x.shape feeding view / reshape"""


def supported_ops():
    """The text listing what the exporter converts (also in every ExportError)."""
    extra = sorted(f"{c.__module__}.{c.__qualname__}" for c in _ADAPTERS
                   if not (c.__module__.startswith("torch.") or c.__module__ == dt.__name__
                           or c.__module__.startswith("torchvision.")))
    text = SUPPORTED
    if extra:
        text += "\nregistered adapters: " + ", ".join(extra)
    return text


# ---------------------------------------------------------------------------------------------
# Adapter results: one node or a chain

def _chain_of(result):
    """[(op, attrs, tensors, suffix)] of an adapter's result: (op, attrs, tensors), or a
    list of (op, attrs, tensors[, suffix]) (register_adapter). Raises ExportError."""
    single = isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], str)
    items = [result] if single else result
    if not isinstance(items, (list, tuple)) or not items:
        raise ExportError(f"the adapter returned {result!r}; expected (op, attrs, tensors) or a "
                          f"non-empty list of them (a chain)")
    chain = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise ExportError(f"element {i} of the adapter's chain is {item!r}; expected (op, "
                              f"attrs, tensors) or (op, attrs, tensors, suffix)")
        op, attrs, tensors = item[:3]
        if op not in _ARITY:
            raise ExportError(f"the adapter returned the unknown op {op!r}; known: "
                              f"{', '.join(KNOWN_OPS)}")
        if attrs is not None and not isinstance(attrs, dict) or \
                tensors is not None and not isinstance(tensors, dict):
            raise ExportError(f"element {i} ('{op}') of the adapter's result: attrs and "
                              f"tensors must be dicts")
        attrs, tensors = dict(attrs or {}), dict(tensors or {})
        suffix = item[3] if len(item) == 4 else op
        if i > 0:
            if tensors:
                raise ExportError(f"node {i} ('{op}') of the adapter's chain has tensors "
                                  f"{sorted(tensors)}; only the first node of a chain (named "
                                  f"by the module's path) may have tensors")
            lo, hi = _ARITY[op]
            if not lo <= 1 <= hi:
                raise ExportError(f"node {i} ('{op}') of the adapter's chain takes {lo}..{hi} "
                                  f"inputs; a later node of a chain takes the one before it")
            if not isinstance(suffix, str) or not suffix or suffix.startswith(".") or \
                    suffix.endswith("."):
                raise ExportError(f"node {i} ('{op}') of the adapter's chain: the name suffix "
                                  f"{suffix!r} is not a non-empty string (without a leading or "
                                  f"trailing '.')")
        chain.append((op, attrs, tensors, suffix))
    return chain


def _conv_out(size, kernel, stride, pad_total, dilation):
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def _pool_out(size, kernel, stride, pad, dilation, ceil_mode):
    """PyTorch's pooling output size (a window may not start in the right padding)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _infer_shape(op, attrs, shapes):
    """The shape of `op` with `attrs` on inputs of `shapes` (PyTorch's rules); used between
    the nodes of an adapter's chain."""
    x = list(shapes[0])
    if op in ACTIVATION_OPS or op in ("batch_norm", "identity", "softmax", "log_softmax"):
        return x
    if op in ("add", "sub", "mul"):
        return [max(a, b) for a, b in zip(*shapes)]
    if op == "cat":
        return [x[0], sum(s[1] for s in shapes)] + x[2:]
    if op == "flatten":
        return [x[0], math.prod(x[1:])]
    if op == "linear":
        return [x[0], int(attrs["out_features"])]
    if op == "condconv_routing":
        return [x[0], int(attrs["experts"])]
    if len(x) != 4:
        raise ExportError(f"op '{op}' takes an NCHW value, got shape {x}")
    n, _, h, w = x
    if op in ("conv2d", "dynamic_conv2d"):
        (kh, kw), (sh, sw), (dh, dw) = attrs["kernel_size"], attrs["stride"], attrs["dilation"]
        t, b, le, r = attrs["padding"]
        return [n, int(attrs["out_channels"]), _conv_out(h, kh, sh, t + b, dh),
                _conv_out(w, kw, sw, le + r, dw)]
    if op in ("max_pool2d", "avg_pool2d"):
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel_size"], attrs["stride"], attrs["padding"]
        dh, dw = attrs.get("dilation", [1, 1])
        return [n, x[1], _pool_out(h, kh, sh, ph, dh, attrs["ceil_mode"]),
                _pool_out(w, kw, sw, pw, dw, attrs["ceil_mode"])]
    if op == "adaptive_avg_pool2d":
        return [n, x[1]] + list(attrs["output_size"])
    if op == "upsample":
        if "size" in attrs:
            return [n, x[1]] + list(attrs["size"])
        fh, fw = attrs["scale_factor"]
        return [n, x[1], int(math.floor(h * fh)), int(math.floor(w * fw))]
    raise ExportError(f"no shape rule for op '{op}'")


# ---------------------------------------------------------------------------------------------
# Tracing

class _Tracer(torch.fx.Tracer):
    """Leaves: every module with an adapter, and (as torch.fx does) every other torch.nn
    module, so that an unsupported one is reported by its class instead of traced into."""

    def __init__(self):
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m, module_qualified_name):
        if adapter_for(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep  # torch's own frames


def _source_line(node):
    """'file.py:12 (in forward): code' of the innermost user frame that made the node."""
    trace = getattr(node, "stack_trace", None) or node.meta.get("stack_trace")
    if not trace:
        return None
    lines = trace.splitlines()
    for i, line in enumerate(lines):
        m = _FRAME.search(line)
        if m and not os.path.abspath(m.group(1)).startswith(_TORCH_DIR):
            code = lines[i + 1].strip() if i + 1 < len(lines) and \
                not _FRAME.search(lines[i + 1]) else ""
            where = f"{m.group(1)}:{m.group(2)} (in {m.group(3)})"
            return f"{where}: {code}" if code else where
    return None


def _function_name(t):
    name = getattr(t, "__name__", None) or repr(t)
    for prefix, space in (("torch.nn.functional.", F), ("torch.", torch),
                          ("operator.", operator)):
        if getattr(space, name, None) is t:
            return prefix + name
    mod = getattr(t, "__module__", None)
    return f"{mod}.{name}" if mod else name


def _target_text(node, root):
    if node.op == "call_module":
        try:
            module = root.get_submodule(node.target)
            return f"module {type(module).__module__}.{type(module).__qualname__} at " \
                   f"'{node.target}'"
        except AttributeError:
            return f"module '{node.target}'"
    if node.op == "call_function":
        return f"function {_function_name(node.target)}"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    if node.op == "get_attr":
        return f"attribute '{node.target}'"
    return f"{node.op} '{node.target}'"


# ---------------------------------------------------------------------------------------------
# The conversion

class _Alias:
    """An fx node that computes nothing: its value is another value."""

    def __init__(self, value):
        self.value = value


class _Pad:
    """A zero F.pad to fold into its consumer convs: (value of the unpadded input, [top,
    bottom, left, right])."""

    def __init__(self, value, pads):
        self.value = value
        self.pads = pads


class _SizeLike:
    """A size() / .shape / shape[i] node: only view / reshape may use it."""


class _Constant:
    """A get_attr node used only as a constant argument of adapters (constant_args)."""


class _Exporter:
    def __init__(self, model, example_inputs):
        self.model = model
        self.example_inputs = example_inputs
        self.nodes = []          # emitted dynconv nodes (dicts)
        self.tensors = {}        # file tensor name -> tensor
        self.tensor_owner = {}   # file tensor name -> the node reading it
        self.values = {}         # fx node -> value name (str) / _Alias / _Pad / _SizeLike
        self.shapes = {}         # value name -> shape list
        self.names = set()       # names of inputs and emitted nodes
        self.reserved = set()    # fx node names and module paths, for fresh names
        self.module_calls = {}   # path of a module with tensors -> fx node name
        self.inputs = []

    # --- errors
    def fail(self, node, message, cause=None):
        text = f"cannot export fx node '{node.name}' ({_target_text(node, self.gm)})"
        line = _source_line(node)
        if line:
            text += f" at {line}"
        elif node.op == "call_module":
            text += " (no source line recorded)"
        text += f": {message}\nSupported:\n{supported_ops()}"
        raise ExportError(text) from cause

    # --- helpers
    def shape_of(self, node):
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            self.fail(node, "it does not compute one tensor")
        if not meta.dtype.is_floating_point:
            self.fail(node, f"it computes a {meta.dtype} tensor; only floating-point values "
                            f"are supported")
        return [int(d) for d in meta.shape]

    def value(self, node, user):
        """The value name of `node` used as an input of `user`."""
        if not isinstance(node, torch.fx.Node):
            self.fail(user, f"an input is the constant {node!r}; only tensors computed by the "
                            f"network can be inputs")
        v = self.values.get(node)
        while isinstance(v, _Alias):
            v = v.value
        if isinstance(v, str):
            return v
        if isinstance(v, _Pad):
            self.fail(user, f"it uses the F.pad node '{node.name}', which can only be folded "
                            f"into nn.Conv2d layers")
        if isinstance(v, _SizeLike):
            self.fail(user, f"it uses the size node '{node.name}'; sizes may only feed "
                            f"view / reshape")
        self.fail(user, f"its input '{node.name}' has no value")

    def fresh(self, base):
        name, i = base, 1
        while name in self.reserved or name in self.names:
            name = f"{base}_{i}"
            i += 1
        self.reserved.add(name)
        return name

    def check_name(self, node, name):
        if not name or len(name.encode("utf-8")) > MAX_NAME or name.startswith("dynconv."):
            self.fail(node, f"the name {name!r} is not valid in a dynconv graph (non-empty, at "
                            f"most {MAX_NAME} bytes, not starting with 'dynconv.')")
        if name in self.names:
            self.fail(node, f"the name {name!r} is already used by another input or node")

    def emit(self, fx_node, name, op, inputs, shape, attrs, tensors=None):
        self.check_name(fx_node, name)
        lo, hi = _ARITY[op]
        if not lo <= len(inputs) <= hi:
            self.fail(fx_node, f"op '{op}' takes {lo}..{hi} inputs, got {len(inputs)}")
        if len(inputs) > MAX_NODE_INPUTS:
            self.fail(fx_node, f"more than {MAX_NODE_INPUTS} inputs")
        self.check_op(fx_node, op, inputs, shape, attrs)
        self.names.add(name)
        self.nodes.append({"name": name, "op": op, "inputs": list(inputs), "shape": list(shape),
                           "attrs": attrs})
        self.shapes[name] = list(shape)
        for key, t in (tensors or {}).items():
            full = f"{name}.{key}"
            if full in self.tensors:
                self.fail(fx_node, f"the tensor name '{full}' is used twice")
            if not isinstance(t, torch.Tensor):
                self.fail(fx_node, f"the tensor '{full}' is a {type(t).__name__}")
            self.tensors[full] = t.detach()
            self.tensor_owner[full] = name
        return name

    def check_op(self, fx_node, op, inputs, shape, attrs):
        """What the exporter can tell from the shapes: the ranks the ops take."""
        shapes = [self.shapes[v] for v in inputs]
        rank = [len(s) for s in shapes]
        if op in ("conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
                  "upsample", "condconv_routing") and rank[0] != 4:
            self.fail(fx_node, f"op '{op}' takes an NCHW value, got shape {shapes[0]}")
        if op == "dynamic_conv2d":
            if rank[0] != 4:
                self.fail(fx_node, f"op '{op}' takes an NCHW value, got shape {shapes[0]}")
            want = 2 if attrs.get("shared_routing") else 1
            if len(inputs) != want:
                self.fail(fx_node, f"a dynamic_conv2d with shared_routing="
                                   f"{bool(attrs.get('shared_routing'))} takes {want} "
                                   f"input(s), got {len(inputs)}")
            if want == 2 and (rank[1] != 2 or shapes[1][0] != shapes[0][0]):
                self.fail(fx_node, f"the routing must be [N, E], got {shapes[1]}")
        if op in ("linear", "softmax", "log_softmax") and rank[0] != 2:
            self.fail(fx_node, f"op '{op}' takes a 2-d value [N, C], got shape {shapes[0]}")
        if op in ("add", "sub", "mul"):
            a, b = shapes
            ok = a == b or (len(a) == 4 and len(b) == 4 and a[:2] == b[:2] and
                            (a[2:] == [1, 1] or b[2:] == [1, 1]))
            if not ok:
                self.fail(fx_node, f"'{op}' of shapes {a} and {b}: only equal shapes, or "
                                   f"[N, C, 1, 1] against [N, C, H, W], are supported")
        if op == "cat":
            if len(set(rank)) != 1 or rank[0] not in (2, 4) or \
                    any(s[0] != shapes[0][0] or s[2:] != shapes[0][2:] for s in shapes):
                self.fail(fx_node, f"cat along the channels needs values of one rank (2 or 4) "
                                   f"with the same N, H, W, got {shapes}")
        if op == "flatten" and rank[0] not in (2, 4):
            self.fail(fx_node, f"flatten takes [N, C, H, W], got {shapes[0]}")
        for key, v in attrs.items():
            for item in (v if isinstance(v, list) else [v]):
                if isinstance(item, int) and not isinstance(item, bool) and \
                        abs(item) > _INT_MAX:
                    self.fail(fx_node, f"attribute {key}={v!r} is out of range")

    # --- the pass
    def run(self):
        model = self.model
        tracer = _Tracer()
        try:
            graph = tracer.trace(model)
        except ExportError:
            raise
        except Exception as e:  # a TraceError, or whatever forward() raised on proxies
            raise ExportError(f"torch.fx could not trace {type(model).__name__}.forward: "
                              f"{type(e).__name__}: {e}\nSupported:\n{supported_ops()}") from e
        self.gm = torch.fx.GraphModule(tracer.root, graph)
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.example_inputs):
            raise ExportError(f"forward() takes {len(placeholders)} inputs "
                              f"({', '.join(p.name for p in placeholders)}), "
                              f"{len(self.example_inputs)} example inputs given")
        if len(placeholders) > MAX_INPUTS:
            raise ExportError(f"more than {MAX_INPUTS} inputs")
        with torch.no_grad():
            try:
                ShapeProp(self.gm).propagate(*self.example_inputs)
            except Exception as e:
                raise ExportError(f"the traced network does not run on the example input: "
                                  f"{type(e).__name__}: {e}") from e
        # the exported root's FixedArguments wrapper is not part of the node names
        self.path_prefix = "model." if isinstance(model, FixedArguments) else ""
        for n in graph.nodes:
            self.reserved.add(n.name)
            if n.op == "call_module":
                self.reserved.update((n.target, self.node_path(n.target)))
        for n in graph.nodes:  # constant arguments first: a run-time one is the real error
            if n.op == "call_module":
                names = _adapter_entry(self.gm.get_submodule(n.target))[1]
                if names:
                    self.constant_args(n, self.gm.get_submodule(n.target), names)
        for n in graph.nodes:
            handler = getattr(self, "do_" + n.op)
            try:
                handler(n)
            except ExportError:
                raise
            except Exception as e:  # arguments of an unexpected form
                self.fail(n, f"it could not be converted ({type(e).__name__}: {e})", e)
        return self.finish()

    def do_placeholder(self, node):
        shape = self.shape_of(node)
        if len(shape) not in (2, 4):
            self.fail(node, f"a graph input must be NCHW or [N, C], got shape {shape}")
        self.check_name(node, node.name)
        self.names.add(node.name)
        self.shapes[node.name] = shape
        self.values[node] = node.name
        self.inputs.append({"name": node.name, "shape": shape})

    def node_path(self, target):
        """The node name of a module path (without a FixedArguments root's `model.`)."""
        p = self.path_prefix
        return target[len(p):] if p and target.startswith(p) else target

    def bind_call(self, node, module):
        """(forward()'s signature, the call_module node's arguments bound to it)."""
        sig = inspect.signature(module.forward)
        try:
            return sig, sig.bind(*node.args, **node.kwargs)
        except TypeError as e:
            self.fail(node, f"the call does not match forward(): {e}", e)

    def constant_args(self, node, module, names):
        """{name: value} of the adapter's constant arguments (constant_args) of a call: the
        value passed (a get_attr node's tensor fetched), or forward()'s default."""
        sig, bound = self.bind_call(node, module)
        out = {}
        for name in names:
            if name not in sig.parameters:
                self.fail(node, f"its adapter takes the constant argument '{name}', which "
                                f"forward() does not have")
            v = bound.arguments.get(name, sig.parameters[name].default)
            if v is inspect.Parameter.empty:
                self.fail(node, f"the argument '{name}' is not given")
            if isinstance(v, torch.fx.Node):
                if v.op != "get_attr":
                    self.fail(node, f"its argument '{name}' is computed at run time (fx node "
                                    f"'{v.name}', {_target_text(v, self.gm)}), but the file "
                                    f"stores one value of it (the node's constant). Call the "
                                    f"module with a fixed value; a network whose forward() "
                                    f"takes '{name}' next to its input is exported as "
                                    f"export_graph.FixedArguments(model, {name}=value)")
                obj = self.gm
                for part in v.target.split("."):
                    obj = getattr(obj, part)
                v = obj
            out[name] = v
        return out

    def constant_use(self, user, node):
        """Whether `user` takes the get_attr `node` only as constant arguments."""
        if user.op != "call_module":
            return False
        module = self.gm.get_submodule(user.target)
        names = _adapter_entry(module)[1]
        if not names:
            return False
        try:
            sig = inspect.signature(module.forward)
            bound = sig.bind(*user.args, **user.kwargs)
        except TypeError:
            return False
        for name, v in bound.arguments.items():
            items = v if isinstance(v, (tuple, list)) else [v]
            if name not in names and any(item is node for item in items):
                return False
        return True

    def do_get_attr(self, node):
        if node.users and all(self.constant_use(u, node) for u in node.users):
            self.values[node] = _Constant()
            return None
        self.fail(node, "a parameter or buffer is used outside a supported module (only "
                        "leaf modules may own tensors; register an adapter for the module "
                        "that uses it)")

    def do_call_module(self, node):
        module = self.gm.get_submodule(node.target)
        fn, constant_names = _adapter_entry(module)
        if fn is None:
            self.fail(node, f"no adapter for {type(module).__qualname__}")
        path = self.node_path(node.target)
        try:
            if constant_names:
                constants = self.constant_args(node, module, constant_names)
                result = fn(module, path, constants)
            else:
                result = fn(module, path)
            chain = _chain_of(result)
        except ExportError as e:
            self.fail(node, str(e), e)
        except (ValueError, TypeError, AttributeError) as e:
            self.fail(node, f"{type(e).__name__}: {e}", e)
        op, attrs, tensors, _ = chain[0]
        # the tensor arguments, in forward()'s order
        sig, bound = self.bind_call(node, module)
        args = []
        for name, v in bound.arguments.items():
            if name in constant_names:
                continue
            items = v if sig.parameters[name].kind == inspect.Parameter.VAR_POSITIONAL else [v]
            for item in items:
                if isinstance(item, torch.fx.Node):
                    args.append(item)
                elif item is not None:
                    self.fail(node, f"argument {name}={item!r} is a constant; only tensor "
                                    f"arguments are supported")
        if not args:
            self.fail(node, "the module is called without a tensor input")
        shape = self.shape_of(node)
        inputs = []
        if op == "conv2d" and isinstance(self.values.get(args[0]), _Pad):
            pad = self.values[args[0]]
            attrs["padding"] = [p + q for p, q in zip(attrs["padding"], pad.pads)]
            inputs.append(pad.value)
            args = args[1:]
        inputs += [self.value(a, node) for a in args]
        if tensors:
            if node.target in self.module_calls:
                self.fail(node, f"the module '{node.target}' has parameters and is called "
                                f"twice (also by fx node '{self.module_calls[node.target]}'); "
                                f"a node with parameters is named by its module's path, so "
                                f"it can be called only once")
            self.module_calls[node.target] = node.name
            name = path
        else:
            name = node.name
        if len(chain) == 1:
            name = self.emit(node, name, op, inputs, shape, attrs, tensors)
        else:
            name = self.emit_chain(node, name, chain, inputs, shape)
        self.values[node] = name
        if getattr(module, "inplace", False) is True and op != "identity":
            self.rebind(args[0], name)

    def emit_chain(self, node, first, chain, inputs, shape):
        """Emits an adapter's chain (see register_adapter); returns the last node's name."""
        shapes = []
        prev = [self.shapes[v] for v in inputs]
        for i, (op, attrs, _, _) in enumerate(chain):
            try:
                prev = [_infer_shape(op, attrs, prev)]
            except (ExportError, KeyError, TypeError, ValueError, IndexError) as e:
                what = f"{type(e).__name__}: {e}" if not isinstance(e, ExportError) else str(e)
                self.fail(node, f"node {i} ('{op}') of the adapter's chain: its shape cannot be "
                                f"inferred from its input's ({what})")
            shapes.append(prev[0])
        if shapes[-1] != shape:
            self.fail(node, f"the adapter's chain ({', '.join(c[0] for c in chain)}) computes "
                            f"the shape {shapes[-1]}, but the module computed {shape}")
        tensor_keys = list(chain[0][2])
        name = None
        for i, (op, attrs, tensors, suffix) in enumerate(chain):
            if i == 0:
                name = self.emit(node, first, op, inputs, shapes[0], attrs, tensors)
                continue
            if any(k == suffix or k.startswith(suffix + ".") for k in tensor_keys):
                self.fail(node, f"the chain's node suffix {suffix!r} is also the start of the "
                                f"tensor names {tensor_keys} of its first node (a tensor's "
                                f"node would be ambiguous)")
            derived = self.fresh(f"{first}.{suffix}")
            name = self.emit(node, derived, op, [name], shapes[i], attrs)
        return name

    def rebind(self, target, name):
        """An in-place op on `target`: its later uses see the op's result."""
        if isinstance(target, torch.fx.Node):
            self.values[target] = _Alias(name)

    def simple(self, node, op, inputs, attrs=None, inplace_of=None):
        name = self.emit(node, node.name, op, [self.value(a, node) for a in inputs],
                         self.shape_of(node), attrs or {})
        self.values[node] = name
        if inplace_of is not None:
            self.rebind(inplace_of, name)
        return name

    def bind(self, node, names, defaults=None, skip=0):
        """node.args / node.kwargs as {parameter: value} for the parameter names given."""
        args = list(node.args)[skip:]
        if len(args) > len(names):
            self.fail(node, f"too many arguments ({len(args)}) for ({', '.join(names)})")
        out = dict(defaults or {})
        out.update(zip(names, args))
        for k, v in node.kwargs.items():
            if k not in names:
                self.fail(node, f"the argument {k}= is not supported")
            out[k] = v
        missing = [n for n in names if n not in out]
        if missing:
            self.fail(node, f"missing argument(s) {', '.join(missing)}")
        return out

    def tensor_arg(self, node, v, what="input"):
        if not isinstance(v, torch.fx.Node):
            self.fail(node, f"{what} {v!r} is a constant; only operations between tensors "
                            f"computed by the network are supported")
        return v

    def const(self, node, v, what):
        if isinstance(v, torch.fx.Node):
            self.fail(node, f"{what} is computed at run time; only constants are supported")
        return v

    def do_call_function(self, node):
        t = node.target
        try:
            if t in _ACT_FUNCTIONS:
                return self.activation(node, _ACT_FUNCTIONS[t], skip_self=False)
            if t in _BINARY_FUNCTIONS:
                return self.binary(node, _BINARY_FUNCTIONS[t], t in _INPLACE_BINARY)
        except TypeError:  # an unhashable target
            pass
        if t in _CAT_FUNCTIONS:
            a = self.bind(node, ["tensors", "dim"], {"dim": 0})
            return self.cat(node, a["tensors"], a["dim"])
        if t is torch.flatten:
            a = self.bind(node, ["input", "start_dim", "end_dim"], {"start_dim": 0,
                                                                    "end_dim": -1})
            return self.flatten(node, a["input"], a["start_dim"], a["end_dim"])
        if t is torch.reshape:
            a = self.bind(node, ["input", "shape"])
            return self.reshape(node, a["input"], a["shape"])
        if t is torch.mean:
            a = self.bind(node, ["input", "dim", "keepdim", "dtype"],
                          {"keepdim": False, "dtype": None})
            return self.mean(node, a["input"], a["dim"], a["keepdim"], a["dtype"])
        if t is F.adaptive_avg_pool2d:
            a = self.bind(node, ["input", "output_size"])
            return self.simple(node, "adaptive_avg_pool2d", [self.tensor_arg(node, a["input"])],
                               self.attrs_of(node, _adaptive_attrs,
                                             self.const(node, a["output_size"], "output_size")))
        if t is F.max_pool2d:
            a = self.bind(node, ["input", "kernel_size", "stride", "padding", "dilation",
                                 "ceil_mode", "return_indices"],
                          {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                           "return_indices": False})
            attrs = self.attrs_of(node, _max_pool_attrs, *[
                self.const(node, a[k], k) for k in ("kernel_size", "stride", "padding",
                                                    "dilation", "ceil_mode", "return_indices")])
            return self.simple(node, "max_pool2d", [self.tensor_arg(node, a["input"])], attrs)
        if t is F.avg_pool2d:
            a = self.bind(node, ["input", "kernel_size", "stride", "padding", "ceil_mode",
                                 "count_include_pad", "divisor_override"],
                          {"stride": None, "padding": 0, "ceil_mode": False,
                           "count_include_pad": True, "divisor_override": None})
            attrs = self.attrs_of(node, _avg_pool_attrs, *[
                self.const(node, a[k], k) for k in ("kernel_size", "stride", "padding",
                                                    "ceil_mode", "count_include_pad",
                                                    "divisor_override")])
            return self.simple(node, "avg_pool2d", [self.tensor_arg(node, a["input"])], attrs)
        if t is F.pad:
            return self.pad(node)
        if t is F.interpolate or t is getattr(F, "upsample", None):
            a = self.bind(node, ["input", "size", "scale_factor", "mode", "align_corners",
                                 "recompute_scale_factor", "antialias"],
                          {"size": None, "scale_factor": None, "mode": "nearest",
                           "align_corners": None, "recompute_scale_factor": None,
                           "antialias": False})
            attrs = self.attrs_of(node, _upsample_attrs, *[
                self.const(node, a[k], k) for k in ("size", "scale_factor", "mode",
                                                    "align_corners", "recompute_scale_factor",
                                                    "antialias")])
            return self.simple(node, "upsample", [self.tensor_arg(node, a["input"])], attrs)
        if t in _SOFTMAX_FUNCTIONS:
            a = self.bind(node, ["input", "dim", "_stacklevel", "dtype"],
                          {"dim": None, "_stacklevel": 3, "dtype": None})
            return self.softmax(node, _SOFTMAX_FUNCTIONS[t], a["input"], a["dim"], a["dtype"])
        if t in _DROPOUT_FUNCTIONS:
            a = self.bind(node, ["input", "p", "training", "inplace"],
                          {"p": 0.5, "training": True, "inplace": False})
            if self.const(node, a["training"], "training") and \
                    self.const(node, a["p"], "p") != 0:
                self.fail(node, "dropout with training=True is random even in eval mode "
                                "(pass training=self.training)")
            return self.simple(node, "identity", [self.tensor_arg(node, a["input"])])
        if t is getattr and len(node.args) == 2 and node.args[1] == "shape":
            return self.size_like(node)
        if t is operator.getitem and isinstance(node.args[0], torch.fx.Node) and \
                isinstance(self.values.get(node.args[0]), _SizeLike):
            return self.size_like(node)
        self.fail(node, "this function is not supported")

    def do_call_method(self, node):
        m = node.target
        if m in _ACT_METHODS:
            return self.activation(node, _ACT_METHODS[m], skip_self=True,
                                   inplace=m.endswith("_"))
        if m in _BINARY_METHODS:
            return self.binary(node, _BINARY_METHODS[m], m.endswith("_"))
        if m == "flatten":
            a = self.bind(node, ["start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1},
                          skip=1)
            return self.flatten(node, node.args[0], a["start_dim"], a["end_dim"])
        if m in ("view", "reshape"):
            shape = list(node.args[1:])
            if "shape" in node.kwargs or "size" in node.kwargs:
                shape = [node.kwargs.get("shape", node.kwargs.get("size"))]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = list(shape[0])
            return self.reshape(node, node.args[0], shape)
        if m == "mean":
            a = self.bind(node, ["dim", "keepdim", "dtype"], {"dim": None, "keepdim": False,
                                                              "dtype": None}, skip=1)
            return self.mean(node, node.args[0], a["dim"], a["keepdim"], a["dtype"])
        if m in ("softmax", "log_softmax"):
            a = self.bind(node, ["dim", "dtype"], {"dim": None, "dtype": None}, skip=1)
            return self.softmax(node, m, node.args[0], a["dim"], a["dtype"])
        if m == "contiguous":
            a = self.bind(node, ["memory_format"], {"memory_format": None}, skip=1)
            if a["memory_format"] not in (None, torch.contiguous_format):
                self.fail(node, f"memory_format={a['memory_format']} is not supported")
            self.values[node] = _Alias(self.value(self.tensor_arg(node, node.args[0]), node))
            return None
        if m == "size":
            return self.size_like(node)
        self.fail(node, "this method is not supported")

    def do_output(self, node):
        out = node.args[0]
        if isinstance(out, torch.fx.Node):
            pairs = [("output", out)]
        elif isinstance(out, (tuple, list)):
            pairs = [(f"output{i}", v) for i, v in enumerate(out)]
        elif isinstance(out, dict):
            pairs = list(out.items())
        else:
            self.fail(node, f"the network returns {type(out).__name__}; a tensor, a tuple / "
                            f"list or a dict of tensors is supported")
        if not pairs:
            self.fail(node, "the network returns no tensor")
        if len(pairs) > MAX_OUTPUTS:
            self.fail(node, f"more than {MAX_OUTPUTS} outputs")
        self.outputs = []
        for key, v in pairs:
            if not isinstance(key, str) or not key or len(key.encode()) > MAX_NAME or \
                    key.startswith("dynconv."):
                self.fail(node, f"the output name {key!r} is not valid (a non-empty string of "
                                f"at most {MAX_NAME} bytes, not starting with 'dynconv.')")
            if not isinstance(v, torch.fx.Node):
                self.fail(node, f"output {key!r} is {type(v).__name__}, not a tensor (nested "
                                f"tuples / dicts are not supported)")
            self.outputs.append({"name": key, "value": self.value(v, node)})
        input_names = {i["name"] for i in self.inputs}
        clash = sorted(input_names & {o["name"] for o in self.outputs})
        if clash:
            self.fail(node, f"the output name(s) {clash} are also input names (their test "
                            f"vectors dynconv.test.<name> would collide)")

    # --- op helpers
    def attrs_of(self, node, fn, *args):
        try:
            return fn(*args)
        except ExportError as e:
            self.fail(node, str(e), e)

    def activation(self, node, op, skip_self, inplace=False):
        if skip_self:
            x = node.args[0]
            a = self.bind(node, ["approximate"] if op == "gelu" else [],
                          {"approximate": "none"}, skip=1)
        else:
            names = ["input", "approximate"] if op == "gelu" else ["input", "inplace"]
            a = self.bind(node, names, {"approximate": "none", "inplace": False})
            x = a["input"]
            t = node.target
            inplace = bool(a.get("inplace")) or t in (F.relu_, torch.relu_, torch.sigmoid_,
                                                      torch.tanh_)
        if op == "gelu" and a.get("approximate", "none") != "none":
            self.fail(node, f"gelu(approximate={a['approximate']!r}): only the erf form is "
                            f"supported")
        x = self.tensor_arg(node, x)
        return self.simple(node, op, [x], inplace_of=x if inplace else None)

    def binary(self, node, op, inplace):
        args = list(node.args)
        if len(args) != 2:
            self.fail(node, f"'{op}' takes two tensors, got {len(args)} arguments")
        for k, v in node.kwargs.items():
            if k != "alpha" or v != 1:
                self.fail(node, f"the argument {k}={v!r} is not supported")
        a, b = (self.tensor_arg(node, v, "operand") for v in args)
        return self.simple(node, op, [a, b], inplace_of=a if inplace else None)

    def cat(self, node, tensors, dim):
        if not isinstance(tensors, (list, tuple)) or not tensors:
            self.fail(node, "cat needs a list of tensors")
        tensors = [self.tensor_arg(node, v) for v in tensors]
        rank = len(self.shape_of(node))
        if self.const(node, dim, "dim") not in (1, 1 - rank):
            self.fail(node, f"cat along dim={dim}: only the channels (dim 1) are supported")
        return self.simple(node, "cat", tensors)

    def flatten(self, node, x, start, end):
        x = self.tensor_arg(node, x)
        rank = len(self.shape_of(x))
        start, end = self.const(node, start, "start_dim"), self.const(node, end, "end_dim")
        if start not in (1, 1 - rank) or end not in (-1, rank - 1):
            self.fail(node, f"flatten(start_dim={start}, end_dim={end}): only start_dim=1, "
                            f"end_dim=-1 is supported")
        return self.simple(node, "flatten", [x])

    def reshape(self, node, x, shape):
        x = self.tensor_arg(node, x)
        for v in shape:
            if isinstance(v, torch.fx.Node):
                if not isinstance(self.values.get(v), _SizeLike):
                    self.fail(node, f"the shape argument '{v.name}' is not a size")
            elif not (isinstance(v, int) and not isinstance(v, bool)):
                self.fail(node, f"the shape argument {v!r} is not an int")
        src, dst = self.shape_of(x), self.shape_of(node)
        if src == dst:  # a reshape that changes nothing
            self.values[node] = _Alias(self.value(x, node))
            return None
        if len(src) != 4 or dst != [src[0], src[1] * src[2] * src[3]]:
            self.fail(node, f"a reshape of {src} to {dst}: only the flatten [N, C, H, W] -> "
                            f"[N, C*H*W] is supported")
        return self.simple(node, "flatten", [x])

    def mean(self, node, x, dim, keepdim, dtype):
        x = self.tensor_arg(node, x)
        src = self.shape_of(x)
        dim = self.const(node, dim, "dim")
        dims = [dim] if isinstance(dim, int) else list(dim) if dim is not None else None
        if len(src) != 4 or dims is None or \
                sorted(d % 4 for d in dims if isinstance(d, int)) != [2, 3] or len(dims) != 2:
            self.fail(node, f"mean over dim={dim!r} of shape {src}: only the mean over the "
                            f"pixels (dim (2, 3) of an NCHW value) is supported")
        if self.const(node, dtype, "dtype") is not None:
            self.fail(node, f"mean with dtype={dtype} is not supported")
        x_value = self.value(x, node)
        pooled = [src[0], src[1], 1, 1]
        if keepdim:
            name = self.emit(node, node.name, "adaptive_avg_pool2d", [x_value], pooled,
                             {"output_size": [1, 1]})
        else:
            pool = self.emit(node, self.fresh(node.name + "_pool"), "adaptive_avg_pool2d",
                             [x_value], pooled, {"output_size": [1, 1]})
            name = self.emit(node, node.name, "flatten", [pool], self.shape_of(node), {})
        self.values[node] = name
        return name

    def softmax(self, node, op, x, dim, dtype):
        x = self.tensor_arg(node, x)
        if self.const(node, dtype, "dtype") is not None:
            self.fail(node, f"{op} with dtype={dtype} is not supported")
        if len(self.shape_of(x)) != 2:
            self.fail(node, f"{op} of shape {self.shape_of(x)}: only [N, C] (over C) is "
                            f"supported")
        try:
            _softmax_dim(self.const(node, dim, "dim"))
        except ExportError as e:
            self.fail(node, str(e), e)
        return self.simple(node, op, [x])

    def pad(self, node):
        a = self.bind(node, ["input", "pad", "mode", "value"], {"mode": "constant",
                                                                "value": None})
        x = self.tensor_arg(node, a["input"])
        pads, mode, value = (self.const(node, a[k], k) for k in ("pad", "mode", "value"))
        if mode != "constant" or (value is not None and value != 0):
            self.fail(node, f"F.pad(mode={mode!r}, value={value!r}): only constant zero "
                            f"padding (folded into the next convolution) is supported")
        pads = list(pads)
        if len(pads) not in (2, 4) or not all(isinstance(p, int) and p >= 0 for p in pads):
            self.fail(node, f"F.pad({pads}): only 2 or 4 non-negative amounts (left, right[, "
                            f"top, bottom]) are supported")
        if len(self.shape_of(x)) != 4:
            self.fail(node, "F.pad of a value that is not NCHW")
        left, right = pads[0], pads[1]
        top, bottom = (pads[2], pads[3]) if len(pads) == 4 else (0, 0)
        users = list(node.users)
        for u in users:
            module = self.gm.get_submodule(u.target) if u.op == "call_module" else None
            ok = module is not None and adapter_for(module) is _adapt_conv2d and \
                module.padding_mode == "zeros" and len(u.args) >= 1 and u.args[0] is node \
                and node not in list(u.args[1:]) + list(u.kwargs.values())
            if not ok:
                why = ("a dynamic convolution's attention would see the padded input"
                       if module is not None and adapter_for(module) in
                       _DYNAMIC_ADAPTERS else
                       "only an nn.Conv2d can take the padding")
                self.fail(node, f"this F.pad feeds '{u.name}' ({_target_text(u, self.gm)}); "
                                f"a zero F.pad is folded into the convolutions it feeds, and "
                                f"{why}")
        if not users:
            self.fail(node, "the F.pad result is not used")
        self.values[node] = _Pad(self.value(x, node), [top, bottom, left, right])

    def size_like(self, node):
        """size() / .shape / shape[i]: allowed if every use is a view / reshape (directly or
        through further size nodes)."""
        def ok(n, seen):
            for u in n.users:
                if u in seen:
                    continue
                seen.add(u)
                if u.op == "call_method" and u.target in ("view", "reshape"):
                    if u.args and u.args[0] is n:
                        return False
                    continue
                if u.op == "call_function" and u.target is torch.reshape:
                    if u.args and u.args[0] is n:
                        return False
                    continue
                if u.op == "call_function" and u.target is operator.getitem and \
                        u.args[0] is n:
                    if not ok(u, seen):
                        return False
                    continue
                return False
            return True
        if not ok(node, set()):
            self.fail(node, "a size / shape is used by something other than view / reshape")
        self.values[node] = _SizeLike()

    # --- the result
    def finish(self):
        if not hasattr(self, "outputs"):
            raise ExportError("the traced graph has no output")
        # drop what no output needs (the reader refuses such nodes)
        needed = {o["value"] for o in self.outputs}
        for n in reversed(self.nodes):
            if n["name"] in needed:
                needed.update(n["inputs"])
        nodes = [n for n in self.nodes if n["name"] in needed]
        if len(nodes) > MAX_NODES:
            raise ExportError(f"the graph has {len(nodes)} nodes, more than {MAX_NODES}")
        kept = {n["name"] for n in nodes}
        tensors = {k: v for k, v in self.tensors.items() if self.tensor_owner[k] in kept}
        graph = {"format": FORMAT, "version": VERSION, "inputs": self.inputs, "nodes": nodes,
                 "outputs": self.outputs}
        return graph, tensors


def graph_of(model, example_input):
    """(graph dict, tensors dict) of `model` traced with torch.fx and its shapes propagated on
    `example_input` (a tensor, or a tuple / list of tensors, one per forward() argument).

    The model is put in eval mode for the trace (its mode is restored afterwards). The graph
    is docs/graph_format.md's object without "test"; the tensors are {"<node>.<parameter>":
    tensor} in the model's dtype (a peer's tau, a Python number, as float64), exactly those
    the graph's nodes read. Raises ExportError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"graph_of: {type(model).__name__} is not an nn.Module")
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) \
        else (example_input,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("graph_of: example_input must be a tensor or a tuple of tensors")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                 torch.float32)
    inputs = tuple(t.detach().to(dtype) for t in inputs)
    was_training = model.training
    model.eval()
    try:
        return _Exporter(model, inputs).run()
    finally:
        model.train(was_training)
