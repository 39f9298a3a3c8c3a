#!/usr/bin/env python3
"""Exports a PyTorch model to dynconv's safetensors interchange format (the deployment path:
train in PyTorch -> export -> dynconv-run or the C++ API).

The model is a torchvision static network or a model with tools/dynconv_torch.py's
DynamicConv2d, CondConv2d or ODConv2d modules (dynconv_torch.build_model, build_od_model). Its
state_dict is written under its exact names, which are the names the C++ loader takes
(include/dynconv/models/model.hpp); for DY-Conv:

    P.weight                  [Cout, Cin/g, kh, kw] static, [K, Cout, Cin/g, kh, kw] dynamic
    P.bias                    where the conv has one ([K, Cout] dynamic)
    P.attention.fc1.weight    [hidden, Cin], .fc1.bias, .fc2.weight [K, hidden], .fc2.bias
    P.attention.temperature   one element (tau)
    B.weight, B.bias, B.running_mean, B.running_var   BatchNorm (folded at load in C++)
    B.num_batches_tracked     I64, ignored by the C++ loader
    classifier.N.weight / .bias (fc.weight / .bias for ResNets)

(CondConv2d's and ODConv2d's names are in their docstrings: timm's and OSVAI's.)

Floating tensors are stored as F16 (default: half the size of F32; the C++ loader converts
exactly) or F32; integer tensors as I64. Metadata (safetensors "__metadata__", str -> str):

    model             zoo name, e.g. "dy_mobilenet_v3_small" (model.zoo_name by default)
    num_classes       from the last Linear
    attention         the dynamic layers' kind: "dy", "condconv" or "odconv" (dynconv_torch's
                      ATTENTION_KINDS; absent for a static model)
    kernels           K ("1" for a static model)
    temperature       tau of the dynamic layers (all equal; else a JSON array in layer order)
    dtype             "F16" or "F32"
    + whatever the caller passes (lists and dicts as JSON, numbers as str): class_names,
      input_size, normalize_mean, normalize_std, grayscale_to_rgb, dataset, test_accuracy...

With F16 storage the exported weights are the rounded ones: evaluate the model after
load_into(model, path) to measure what the C++ side computes.

Use it from Python:

    from export_safetensors import export, load_into, read_safetensors
    export(model, "x.safetensors", {"class_names": [...], "input_size": 32}, dtype="f16")

or from the command line, for a checkpoint saved with torch.save (a state_dict, or a dict with
one under "model"):

    /usr/bin/python3 tools/export_safetensors.py --model dy_mobilenet_v3_small \\
        --num-classes 10 --checkpoint ckpt.pt --out x.safetensors [--dtype f16|f32] \\
        [--meta KEY=VALUE ...]

A graph file (docs/graph_format.md: any nn.Module that tools/export_graph.py can convert):
export(model, path, example_input=x) writes the graph JSON under the metadata key
"dynconv.graph" and, instead of the whole state_dict, the tensors the graph reads (named
`<node>.<parameter>`, which for the built-in modules are the state_dict names; BatchNorm's
num_batches_tracked as I64, ignored by the reader; the dynamic nodes' temperature as F64,
never rounded), plus (test_vectors=True) the test vectors
`dynconv.test.<input>` (x as F32) and `dynconv.test.<output>` (F64): the model's output on x
computed in float64 (a deep copy of the model with its floating state rounded to the file's
dtype, so that the reference is the function of the stored weights, then .double(); its
temperature buffers are not rounded, as the file stores tau unrounded). The
metadata model / num_classes are written as for a zoo file; attention, kernels and temperature
only where the graph makes them true (one attention kind, one K over the dynamic nodes, one
temperature over all temperature tensors as stored; kernels "1" for a graph without dynamic
nodes). From the command line, for a module built by a Python factory:

    /usr/bin/python3 tools/export_safetensors.py --module net.py:factory \\
        [--checkpoint ckpt.pt] --input-shape 1,3,224,224 --out net.safetensors [--dtype f32]

(factory() returns the nn.Module; the example input is torch.randn of that shape, seed 0.)
--input-shape with --model writes a graph file of the zoo model too.
"""

import argparse
import copy
import importlib.util
import json
import math
import os
import struct
import sys

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import dynconv_torch as dt  # noqa: E402

__all__ = ["export", "export_tensors", "load_into", "read_safetensors", "model_metadata",
           "graph_metadata", "GRAPH_KEY", "TEST_PREFIX"]

GRAPH_KEY = "dynconv.graph"
TEST_PREFIX = "dynconv.test."

_DTYPES = {"f16": torch.float16, "f32": torch.float32}


def _metadata_value(value):
    """A metadata value as the string stored: str as is, bool as "true"/"false", numbers with
    repr (round-trips), lists/tuples/dicts as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metadata value {value!r} is not finite")
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    raise TypeError(f"metadata value {value!r} ({type(value).__name__}) cannot be stored")


def model_metadata(model):
    """What the model itself says: model, num_classes, attention, kernels, temperature."""
    meta = {}
    name = getattr(model, "zoo_name", None)
    if name:
        meta["model"] = name
    prefix = dt._last_linear(model)
    last = dict(model.named_modules())[prefix] if prefix is not None else None
    if last is not None:
        meta["num_classes"] = str(last.out_features)
    layers = dt.family_layers(model)
    if layers:
        kinds = sorted({dt.layer_kind(m) for _, m in layers})
        if len(kinds) > 1:
            raise ValueError(f"the model mixes attention kinds ({', '.join(kinds)}); the "
                             f"metadata names one")
        meta["attention"] = kinds[0]
        kernels = sorted({dt.layer_kernels(m) for _, m in layers})
        meta["kernels"] = str(kernels[0]) if len(kernels) == 1 else json.dumps(kernels)
        taus = [float(t) for t in (dt.temperature_of(m) for _, m in layers) if t is not None]
        if taus:
            meta["temperature"] = repr(taus[0]) if len(set(taus)) == 1 else json.dumps(taus)
    else:
        meta["kernels"] = "1"
    return meta


def export_tensors(model, dtype="f16"):
    """model.state_dict() as the tensors stored: floating ones in `dtype` ("f16" or "f32"),
    integer ones as int64. Raises if a value does not fit F16 (overflow to inf)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if t.is_floating_point():
            stored = t.to(_DTYPES[dtype])
            if not bool(torch.isfinite(stored).all()):
                raise ValueError(f"{name}: a value is out of the {dtype} range")
        elif t.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            stored = t.to(torch.int64)
        else:
            raise TypeError(f"{name}: dtype {t.dtype} cannot be exported")
        out[name] = stored.contiguous()
    return out


def _stored(name, t, dtype):
    """A tensor as the file stores it: floating in `dtype`, integer as int64."""
    t = t.detach().cpu()
    if t.is_floating_point():
        stored = t.to(_DTYPES[dtype])
        if not bool(torch.isfinite(stored).all()):
            raise ValueError(f"{name}: a value is not finite in {dtype}")
        return stored.contiguous()
    if t.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        return t.to(torch.int64).contiguous()
    raise TypeError(f"{name}: dtype {t.dtype} cannot be exported")


def graph_metadata(graph, tensors):
    """attention, kernels and temperature as far as the graph makes them true: attention if
    every dynamic node has one kind, kernels if they all have one K ("1" without dynamic
    nodes), temperature if every temperature tensor holds one value (as stored)."""
    meta = {}
    dynamic = [n for n in graph["nodes"] if n["op"] == "dynamic_conv2d"]
    kinds = {n["attrs"]["attention"] for n in dynamic}
    if len(kinds) == 1:
        meta["attention"] = kinds.pop()
    ks = {int(n["attrs"]["kernels"]) for n in dynamic}
    if not dynamic:
        meta["kernels"] = "1"
    elif len(ks) == 1:
        meta["kernels"] = str(ks.pop())
    owners = {n["name"] for n in graph["nodes"] if n["op"] in ("dynamic_conv2d",
                                                                "condconv_routing")}
    taus = set()
    for name, t in tensors.items():
        if name.endswith("temperature") and t.dim() == 0 and any(
                name.startswith(o + ".") for o in owners):
            taus.add(float(t))
    if len(taus) == 1:
        meta["temperature"] = repr(taus.pop())
    return meta


def _as_inputs(example_input):
    return tuple(example_input) if isinstance(example_input, (tuple, list)) \
        else (example_input,)


def _outputs_of(result, names):
    """{output name: tensor} of the model's forward result, as export_graph names them."""
    if isinstance(result, torch.Tensor):
        values = {"output": result}
    elif isinstance(result, (tuple, list)):
        values = {f"output{i}": v for i, v in enumerate(result)}
    elif isinstance(result, dict):
        values = dict(result)
    else:
        raise TypeError(f"the model returns {type(result).__name__}")
    return {k: values[k] for k in names}


def _is_temperature(name, t):
    """A 0-d floating state tensor named `temperature` (tau), never rounded."""
    return name.rsplit(".", 1)[-1] == "temperature" and t.dim() == 0 and t.is_floating_point()


def _temperature_tensors(graph, tensors):
    """The graph's tau tensors: the 0-d `temperature` of its dynamic_conv2d and
    condconv_routing nodes."""
    owners = {n["name"] for n in graph["nodes"]
              if n["op"] in ("dynamic_conv2d", "condconv_routing")}
    prefixes = owners | {o + ".attention" for o in owners} | {o + ".routing_fn" for o in owners}
    return {name for name, t in tensors.items() if _is_temperature(name, t) and
            name.rsplit(".", 1)[0] in prefixes}


def _reference_model(model, dtype):
    """A float64 deep copy of the model whose floating state is first rounded to the file's
    dtype (the function of the weights as stored), except the temperature buffers (a graph
    file stores tau as F64)."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, t in list(ref.named_parameters()) + list(ref.named_buffers()):
            if t.is_floating_point() and not _is_temperature(name, t):
                t.copy_(t.to(_DTYPES[dtype]).to(t.dtype))
    return ref.double()


def export(model, path, metadata=None, dtype="f16", example_input=None, test_vectors=True):
    """Writes `model` to `path` as safetensors (floating tensors in `dtype`). Without
    example_input: model.state_dict() with model_metadata(model), then `metadata`
    (overriding), then "dtype". With example_input (a tensor, or a tuple of tensors, one per
    forward() argument): a graph file (docs/graph_format.md; see the module docstring), with
    test vectors unless test_vectors=False. Returns the metadata written (str -> str)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if example_input is None:
        meta = model_metadata(model)
        for key, value in (metadata or {}).items():
            meta[str(key)] = _metadata_value(value)
        meta["dtype"] = dtype.upper()
        tensors = export_tensors(model, dtype)
    else:
        meta, tensors = _graph_file(model, metadata, dtype, example_input, test_vectors)
    tmp = f"{path}.tmp{os.getpid()}"
    dt.save_safetensors(tmp, tensors, meta)
    os.replace(tmp, path)
    return meta


def _graph_file(model, metadata, dtype, example_input, test_vectors):
    from export_graph import graph_of  # noqa: E402  (torch.fx only for graph files)
    graph, state = graph_of(model, example_input)
    # tau as F64 whatever the dtype: the peers keep it as a Python float, which the reference
    # (and the user's PyTorch) uses unrounded; a rounded tau would move every attention
    taus = _temperature_tensors(graph, state)
    tensors = {name: t.detach().cpu().double().contiguous() if name in taus
               else _stored(name, t, dtype) for name, t in state.items()}
    if test_vectors:
        inputs = [t.detach().float() for t in _as_inputs(example_input)]
        in_names = [i["name"] for i in graph["inputs"]]
        out_names = [o["name"] for o in graph["outputs"]]
        ref = _reference_model(model, dtype)
        with torch.no_grad():
            outputs = _outputs_of(ref(*[t.double() for t in inputs]), out_names)
        test = {"inputs": {}, "outputs": {}}
        for name, t in zip(in_names, inputs):
            key = TEST_PREFIX + name
            test["inputs"][name] = key
            tensors[key] = t.contiguous()
        for name in out_names:
            key = TEST_PREFIX + name
            if key in tensors:
                raise ValueError(f"the test vector name '{key}' is used twice")
            test["outputs"][name] = key
            tensors[key] = outputs[name].detach().double().contiguous()
        graph["test"] = test
    meta = {}
    if getattr(model, "zoo_name", None):
        meta["model"] = model.zoo_name
    prefix = dt._last_linear(model)
    if prefix is not None:
        meta["num_classes"] = str(model.get_submodule(prefix).out_features)
    meta.update(graph_metadata(graph, tensors))
    for key, value in (metadata or {}).items():
        if str(key) == GRAPH_KEY:
            raise ValueError(f"metadata key '{GRAPH_KEY}' is the exporter's")
        meta[str(key)] = _metadata_value(value)
    meta["dtype"] = dtype.upper()
    meta[GRAPH_KEY] = json.dumps(graph, separators=(",", ":"))
    return meta, tensors


_NP = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
       "I32": np.int32, "U8": np.uint8}


def read_safetensors(path):
    """(tensors: name -> torch.Tensor in the stored dtype, metadata: dict) of a safetensors
    file (F64, F32, F16, BF16, I64, I32, U8)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        shape = info["shape"]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            t = torch.from_numpy(bits.view(np.float32).reshape(shape).copy()).to(torch.bfloat16)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_NP[info["dtype"]]).newbyteorder("<"))
            t = torch.from_numpy(arr.astype(_NP[info["dtype"]]).reshape(shape).copy())
        tensors[name] = t
    return tensors, meta


def load_into(model, path):
    """Loads an exported file into `model` (strict: the same names and shapes), converting to
    the model's dtypes; returns the file's metadata. After an F16 export this puts the rounded
    weights, exactly what the C++ side loads, into the model."""
    tensors, meta = read_safetensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    state = {}
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise ValueError(f"{path}: {name} has shape {list(t.shape)}, the model "
                             f"{list(own[name].shape)}")
        state[name] = t.to(own[name].dtype)
    model.load_state_dict(state)
    return meta


def _load_factory(spec):
    """The nn.Module that `file.py:factory` builds (factory() called without arguments)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"--module expects FILE.py:FACTORY, got {spec!r}")
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    module_spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], path)
    if module_spec is None:
        raise ValueError(f"--module: cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--module: {path} has no callable '{name}'")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--module: {name}() returned {type(model).__name__}, not an "
                         f"nn.Module")
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=dt.ALL_MODELS, help="a zoo model")
    which.add_argument("--module", metavar="FILE.py:FACTORY",
                       help="any nn.Module: FACTORY() of FILE.py builds it (a graph file)")
    ap.add_argument("--num-classes", type=int, default=1000, help="--model only")
    ap.add_argument("--checkpoint",
                    help="torch.save'd state_dict (or a dict with it under 'model'); "
                         "required with --model")
    ap.add_argument("--input-shape", metavar="N,C,H,W",
                    help="the example input's shape: writes a graph file (required with "
                         "--module)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(_DTYPES), default="f16")
    ap.add_argument("--no-test-vectors", action="store_true",
                    help="graph files: leave out the test vectors")
    ap.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="extra metadata (repeatable)")
    args = ap.parse_args(argv)
    if args.model and not args.checkpoint:
        ap.error("--model needs --checkpoint")
    if args.module and not args.input_shape:
        ap.error("--module needs --input-shape")
    shape = None
    if args.input_shape:
        try:
            shape = [int(v) for v in args.input_shape.split(",")]
        except ValueError:
            shape = None
        if not shape or len(shape) not in (2, 4) or min(shape) < 1:
            ap.error(f"--input-shape expects N,C,H,W (or N,C) positive integers, got "
                     f"{args.input_shape!r}")
    if args.model:
        model = dt.build_model(args.model, num_classes=args.num_classes)
    else:
        try:
            model = _load_factory(args.module)
        except ValueError as e:
            ap.error(str(e))
    if args.checkpoint:
        ckpt = torch.load(args.checkpoint, map_location="cpu")
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
        model.load_state_dict(state)
    model.eval()
    extra = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--meta expects KEY=VALUE, got {item!r}")
        extra[key] = value
    example = None
    if shape:
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(*shape, generator=gen)
    try:
        meta = export(model, args.out, extra, args.dtype, example_input=example,
                      test_vectors=not args.no_test_vectors)
    except ValueError as e:  # ExportError included: the message says what and where
        print(f"export_safetensors.py: {e}", file=sys.stderr)
        return 1
    shown = {k: (v if k != GRAPH_KEY else f"<{len(v)} bytes of JSON>") for k, v in meta.items()}
    print(f"{args.out}: {os.path.getsize(args.out)} bytes, metadata {json.dumps(shown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
