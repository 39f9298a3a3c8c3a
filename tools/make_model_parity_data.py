#!/usr/bin/env python3
"""Writes PyTorch reference data for tests/test_model_parity.cpp: the 14 zoo models.

    /usr/bin/python3 tools/make_model_parity_data.py --out DIR [--models a,b,...] [--policy P]

For each model (the 7 static ones of the paper's table and their 7 dy_ variants, built by
tools/dynconv_torch.py: torchvision structure, dynamic convs by the default policy or --policy) it
randomises every weight, BatchNorm statistic and attention FC (randomize_: every value exactly
representable in float16), and writes DIR/<model>.safetensors with

    every tensor of model.state_dict() under its exact name: floating tensors as F16 (lossless),
        num_batches_tracked as I64, attention.temperature as F32 (scalar)
    input   [3, 3, H, W]  F32   dynconv_torch.random_input: N(0, 1) plus a per-sample,
                                 per-channel offset N(0, 0.5^2) (so that the samples differ),
                                 every value a float16 value
    logits  [3, 1000]     F64   PyTorch's eval-mode forward in float64 (model.double())
    input_odd   [1, 3, 33, 47]  F32   an odd, non-square input (odd feature maps at every stride)
    logits_odd  [1, 1000]       F64   PyTorch's float64 logits for it

and metadata: model, num_classes, batch, input_height, input_width, policy, kernels,
reduction, min_hidden, bn_eps (the distinct BatchNorm eps values, comma-separated), seed,
params, dynamic_layers, attention_max_mean, torch_float32_error, script_hash.

DIR/manifest.txt lists the models written, one per line; DIR/counts.json maps each of the 14
model names to PyTorch's parameter count sum(p.numel() for p in model.parameters()) (BN weight
and bias included, buffers excluded). A model whose file exists with the same script_hash (a
hash of this script and dynconv_torch.py) is not regenerated.

DIR/manifest.txt exists only after a run that completed: it is deleted first thing (before
PyTorch is imported) and written last. The per-model files stay as a cache, but without a
manifest tests/test_model_parity.cpp skips every model, so a run that skips or fails never
leaves stale data to be tested.

Exit status: 0 on success; 77 (ctest's "skipped") if PyTorch or torchvision cannot be imported,
unless the environment variable DYNCONV_REQUIRE_TORCH=1, then 1.
"""

import argparse
import hashlib
import json
import os
import struct
import sys
import time
import zlib


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_guard import start, write_manifest  # noqa: E402

start(os.path.basename(__file__), ["torch", "torchvision"])
import torch  # noqa: E402
import torchvision  # noqa: E402,F401  (the zoo's static structures)

HERE = os.path.dirname(os.path.abspath(__file__))
import dynconv_torch as dt  # noqa: E402

NUM_CLASSES = 1000
BATCH = 3
# Input size per model (H, W). 224x224 everywhere: the float64 reference of dy_resnet18 takes
# a few seconds on one core.
INPUT_SIZE = {name: (224, 224) for name in dt.ALL_MODELS}
KERNELS = 4
REDUCTION = 4
MIN_HIDDEN = 1
POLICY = "default"


def script_hash():
    h = hashlib.sha256()
    for name in ("make_model_parity_data.py", "dynconv_torch.py"):
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(f.read())
    h.update(f"torch {torch.__version__} torchvision {torchvision.__version__}".encode())
    return h.hexdigest()[:16]


def read_metadata(path):
    """The __metadata__ of a safetensors file, or None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n).decode("utf-8"))
        return header.get("__metadata__", {})
    except (OSError, ValueError, struct.error):
        return None


def seed_of(text):
    return zlib.crc32(text.encode("utf-8"))


def model_kwargs(name, policy):
    kwargs = dict(num_classes=NUM_CLASSES)
    if name.startswith("dy_"):
        kwargs.update(policy=policy, kernels=KERNELS, reduction=REDUCTION, min_hidden=MIN_HIDDEN)
    return kwargs


def build(name, policy=POLICY):
    """The randomised model in eval mode (float32), and randomize_'s summary."""
    kwargs = model_kwargs(name, policy)
    model = dt.build_model(name, **kwargs)
    info = dt.randomize_(model, seed_of(name), input_size=INPUT_SIZE[name])
    model.eval()
    return model, info


def make_input(name):
    h, w = INPUT_SIZE[name]
    gen = torch.Generator().manual_seed(seed_of(name + "/input"))
    return dt.random_input(BATCH, h, w, gen)  # float64, every value a float16 value


def make_model(name, out_dir, digest, policy=POLICY, filename=None):
    t0 = time.time()
    model, info = build(name, policy)
    x = make_input(name)
    state = model.state_dict()
    params = sum(p.numel() for p in model.parameters())

    # Attention of each dynamic layer, recorded during the float64 forward.
    attention = []
    hooks = [m.attention.register_forward_hook(lambda mod, inp, out: attention.append(out))
             for _, m in dt.dynamic_layers(model)]
    with torch.no_grad():
        logits32 = model(x.float()).double()
        attention.clear()
        model.double()
        logits = model(x)
    for hook in hooks:
        hook.remove()
    # An odd, non-square input: every strided layer then sees odd sizes (padding, floor modes).
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/odd".encode()))
    x_odd = dt.random_input(1, 33, 47, gen)
    with torch.no_grad():
        logits_odd = model(x_odd)
    scale = float(logits.abs().max())
    err32 = float((logits32 - logits).abs().max()) / scale

    tensors = {}
    for key, t in state.items():
        t = t.detach()
        if key.endswith("attention.temperature"):
            tensors[key] = t.float()
        elif t.is_floating_point():
            assert dt.is_half_exact(t), f"{name}: {key} is not exactly float16"
            tensors[key] = t.half()
        elif t.dtype == torch.int64:
            tensors[key] = t
        else:
            raise TypeError(f"{name}: {key} has dtype {t.dtype}")
    if {"input", "logits", "input_odd", "logits_odd"} & set(tensors):
        raise ValueError(f"{name}: a state_dict entry is named like a test tensor")
    tensors["input"] = x.float()
    tensors["logits"] = logits
    tensors["input_odd"] = x_odd.float()
    tensors["logits_odd"] = logits_odd

    eps = sorted({m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)})
    # mean over the layers of (mean over the samples of max_k pi)
    att_max = [float(p.max(dim=1).values.mean()) for p in attention]
    att_mean = sum(att_max) / len(att_max) if att_max else 0.0
    # how much the samples' attention differ: mean over layers of max_k (max_n - min_n) pi
    att_spread = [float((p.max(dim=0).values - p.min(dim=0).values).max()) for p in attention]
    top2 = logits.topk(2, dim=1).values
    margin = float((top2[:, 0] - top2[:, 1]).min()) / scale
    h, w = INPUT_SIZE[name]
    meta = {
        "model": name, "num_classes": str(NUM_CLASSES), "batch": str(BATCH),
        "input_height": str(h), "input_width": str(w),
        "policy": model.policy_name, "kernels": str(model.kernels),
        "reduction": str(REDUCTION), "min_hidden": str(MIN_HIDDEN),
        "bn_eps": ",".join(repr(e) for e in eps), "seed": str(info["seed"]),
        "params": str(params), "dynamic_layers": str(info["dynamic_layers"]),
        "temperatures": ",".join(repr(t) for t in info["temperatures"]),
        "attention_max_mean": f"{att_mean:.4f}", "torch_float32_error": f"{err32:.3e}",
        "min_top1_margin": f"{margin:.4e}",
        "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
        "script_hash": digest,
    }
    path = os.path.join(out_dir, filename or name + ".safetensors")
    tmp = path + ".tmp"
    dt.save_safetensors(tmp, tensors, meta)
    os.replace(tmp, path)
    summary = {
        "model": name, "params": params, "seconds": time.time() - t0,
        "bytes": os.path.getsize(path), "err32": err32, "att_mean": att_mean,
        "att_min": min(att_max) if att_max else 0.0,
        "att_spread": sum(att_spread) / len(att_spread) if att_spread else 0.0,
        "dynamic_layers": info["dynamic_layers"], "margin": margin,
        "argmax": logits.argmax(dim=1).tolist(),
    }
    return summary


# Non-default policies, cross-checked against the C++ policies of the same name: written as
# DIR/<model>@<policy>.safetensors and listed in the manifest as <model>@<policy>.
POLICY_CASES = [("dy_mobilenet_v2_x0_35", "all_but_stem"),
                ("dy_mobilenet_v3_small", "pointwise_only"),
                ("dy_resnet10", "pointwise_only")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--models", default=",".join(dt.ALL_MODELS),
                        help="comma-separated zoo names (default: all 14)")
    parser.add_argument("--policy", default=POLICY, choices=sorted(dt.POLICIES),
                        help="which convs of the dy_ models are dynamic (default: %(default)s); "
                             "recorded in the metadata, which the C++ test follows")
    parser.add_argument("--force", action="store_true", help="regenerate existing files")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    for n in names:
        if n not in dt.ALL_MODELS:
            parser.error(f"unknown model '{n}'; the zoo: {', '.join(dt.ALL_MODELS)}")
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reductions
    digest = script_hash()
    t_start = time.time()
    total = 0
    for name in names:
        path = os.path.join(args.out, name + ".safetensors")
        meta = read_metadata(path) if os.path.exists(path) else None
        if not args.force and meta is not None and meta.get("script_hash") == digest and \
                meta.get("policy") == (args.policy if name.startswith("dy_") else "none"):
            size = os.path.getsize(path)
            total += size
            print(f"{name:22s} up to date ({size / 1e6:.1f} MB)")
            continue
        s = make_model(name, args.out, digest, args.policy)
        total += s["bytes"]
        att = (f"  attention max mean {s['att_mean']:.3f} (min layer {s['att_min']:.3f}, "
               f"sample spread {s['att_spread']:.3f}, {s['dynamic_layers']} layers)"
               if s["dynamic_layers"] else "")
        print(f"{name:22s} {s['params']:>10,d} params  {s['bytes'] / 1e6:6.1f} MB  "
              f"{s['seconds']:5.1f} s  torch f32 err {s['err32']:.1e}  top1 margin "
              f"{s['margin']:.1e}  argmax {s['argmax']}{att}", flush=True)

    if args.policy == POLICY:
        for name, policy in POLICY_CASES:
            filename = f"{name}@{policy}.safetensors"
            path = os.path.join(args.out, filename)
            meta = read_metadata(path) if os.path.exists(path) else None
            if args.force or meta is None or meta.get("script_hash") != digest:
                s = make_model(name, args.out, digest, policy, filename)
                print(f"{name}@{policy}: {s['bytes'] / 1e6:.1f} MB, {s['seconds']:.1f} s, "
                      f"torch f32 err {s['err32']:.1e}", flush=True)

    # Parameter counts of all 14 models (cheap: built, not randomised).
    counts = {}
    for name in dt.ALL_MODELS:
        model = dt.build_model(name, **model_kwargs(name, args.policy))
        counts[name] = sum(p.numel() for p in model.parameters())
    with open(os.path.join(args.out, "counts.json"), "w") as f:
        json.dump(counts, f, indent=2)
        f.write("\n")
    # The manifest lists every model whose file is present (a --models run adds to it).
    present = [n for n in dt.ALL_MODELS + [f"{m}@{p}" for m, p in POLICY_CASES]
               if os.path.exists(os.path.join(args.out, n + ".safetensors"))]
    write_manifest(args.out, present)  # last
    print(f"make_model_parity_data.py: {len(names)} models, {total / 1e6:.1f} MB, "
          f"{time.time() - t_start:.1f} s, in {args.out}")


if __name__ == "__main__":
    main()
