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
"""

import argparse
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

__all__ = ["export", "export_tensors", "load_into", "read_safetensors", "model_metadata"]

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


def export(model, path, metadata=None, dtype="f16"):
    """Writes model.state_dict() to `path` as safetensors (floating tensors in `dtype`) with
    model_metadata(model), then `metadata` (overriding), then "dtype". Returns the metadata
    written (str -> str)."""
    meta = model_metadata(model)
    for key, value in (metadata or {}).items():
        meta[str(key)] = _metadata_value(value)
    meta["dtype"] = dtype.upper()
    tensors = export_tensors(model, dtype)
    tmp = f"{path}.tmp{os.getpid()}"
    dt.save_safetensors(tmp, tensors, meta)
    os.replace(tmp, path)
    return meta


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=dt.ALL_MODELS)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--checkpoint", required=True,
                    help="torch.save'd state_dict (or a dict with it under 'model')")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(_DTYPES), default="f16")
    ap.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="extra metadata (repeatable)")
    args = ap.parse_args(argv)
    model = dt.build_model(args.model, num_classes=args.num_classes)
    ckpt = torch.load(args.checkpoint, map_location="cpu")
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    model.load_state_dict(state)
    extra = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--meta expects KEY=VALUE, got {item!r}")
        extra[key] = value
    meta = export(model, args.out, extra, args.dtype)
    print(f"{args.out}: {os.path.getsize(args.out)} bytes, metadata {json.dumps(meta)}")


if __name__ == "__main__":
    main()
