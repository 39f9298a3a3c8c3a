#!/usr/bin/env python3
"""Writes PyTorch reference data for the parity tests of tests/test_modules.cpp.

    /usr/bin/python3 tools/make_module_parity_data.py --out DIR

For every case below (a pooling, upsampling, softmax or activation module on a random float64
NCHW input) it writes DIR/<case>.safetensors holding
    input            the input, F64 [N, C, H, W]
    output           PyTorch's output computed in float64, F64
    output_float32   PyTorch's output computed in float32 from the same input rounded to
                     float32, stored as F64 (float32 rounds a few nearest-upsampling source
                     indices differently; the C++ float test compares with this one)
and metadata describing the module ("kind" and its options, all strings); DIR/manifest.txt lists
the case names, one per line, and is written last (see parity_guard.py).

Exit status: 0 on success; 77 (ctest's "skipped") if PyTorch cannot be imported, unless the
environment variable DYNCONV_REQUIRE_TORCH=1, then 1.
"""

import argparse
import math
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_guard import start, write_manifest  # noqa: E402

start(os.path.basename(__file__), ["torch"])
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dynconv_torch import save_safetensors  # noqa: E402


def pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def pool(name, kind, kernel, stride=None, padding=0, dilation=1, ceil_mode=False,
         count_include_pad=True, n=2, c=3, h=7, w=9):
    return dict(name=name, kind=kind, kernel=pair(kernel),
                stride=pair(kernel if stride is None else stride), padding=pair(padding),
                dilation=pair(dilation), ceil_mode=ceil_mode,
                count_include_pad=count_include_pad, shape=(n, c, h, w))


def maxpool(name, kernel, **kw):
    return pool(name, "max_pool", kernel, **kw)


def avgpool(name, kernel, **kw):
    return pool(name, "avg_pool", kernel, **kw)


def adaptive(name, out, n=2, c=3, h=7, w=9):
    return dict(name=name, kind="adaptive_avg_pool", out=pair(out), shape=(n, c, h, w))


def upsample(name, mode, size=None, scale=None, align_corners=False, n=2, c=3, h=7, w=9):
    return dict(name=name, kind="upsample", mode=mode, size=None if size is None else pair(size),
                scale=None if scale is None else tuple(float(s) for s in pair(scale)),
                align_corners=align_corners, shape=(n, c, h, w))


def softmax(name, log=False, spread=3.0, n=2, c=6, h=5, w=7):
    return dict(name=name, kind="log_softmax" if log else "softmax", spread=spread,
                shape=(n, c, h, w))


def activation(act, n=2, c=4, h=5, w=7):
    return dict(name="act_" + act, kind="activation", activation=act, shape=(n, c, h, w))


CASES = [
    # --- max pooling
    maxpool("max_k2", 2, h=8, w=8),
    maxpool("max_k3_s2_p1_7x9", 3, stride=2, padding=1),
    maxpool("max_k3_s2_p1_ceil_7x9", 3, stride=2, padding=1, ceil_mode=True),
    maxpool("max_k3_s2_ceil_8x8", 3, stride=2, ceil_mode=True, h=8, w=8),
    maxpool("max_k2_ceil_7x9", 2, ceil_mode=True),
    maxpool("max_k3_s3_p1_ceil_drop_5x5", 3, stride=3, padding=1, ceil_mode=True, h=5, w=5),
    maxpool("max_k2_s3_p1_ceil_drop_4x7", 2, stride=3, padding=1, ceil_mode=True, h=4, w=7),
    maxpool("max_k3_d2_p1_9x11", 3, stride=1, padding=1, dilation=2, h=9, w=11),
    maxpool("max_k3x2_s21_p10_d12", (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
    maxpool("max_k3_d2_s2_ceil", 3, stride=2, padding=1, dilation=2, ceil_mode=True, h=8, w=9),
    maxpool("max_k7x9_1x1_output", (7, 9)),
    maxpool("max_k2_s3", 2, stride=3, h=8, w=8),
    maxpool("max_k1", 1, h=3, w=4),
    maxpool("max_padding_only_window", 2, stride=1, padding=1, dilation=2, h=1, w=1),
    maxpool("max_c300", 3, stride=2, padding=1, n=1, c=300, h=5, w=5),
    # --- average pooling
    avgpool("avg_k2", 2, h=8, w=8),
    avgpool("avg_k3_s2_p1_7x9", 3, stride=2, padding=1),
    avgpool("avg_k3_s2_p1_nopad_7x9", 3, stride=2, padding=1, count_include_pad=False),
    avgpool("avg_k3_s2_p1_ceil_8x8", 3, stride=2, padding=1, ceil_mode=True, h=8, w=8),
    avgpool("avg_k3_s2_p1_ceil_nopad_8x8", 3, stride=2, padding=1, ceil_mode=True,
            count_include_pad=False, h=8, w=8),
    avgpool("avg_k2_ceil_7x9", 2, ceil_mode=True),
    avgpool("avg_k3_s3_p1_ceil_drop_5x5", 3, stride=3, padding=1, ceil_mode=True, h=5, w=5),
    avgpool("avg_k3x2_s12_p11_ceil", (3, 2), stride=(1, 2), padding=(1, 1), ceil_mode=True),
    avgpool("avg_k7x9_1x1_output", (7, 9)),
    avgpool("avg_k4_s3_p2_ceil_nopad", 4, stride=3, padding=2, ceil_mode=True,
            count_include_pad=False, h=9, w=10),
    avgpool("avg_c300", 2, n=1, c=300, h=5, w=4),
    # --- adaptive average pooling
    adaptive("adaptive_7_to_3", 3, h=7, w=7),
    adaptive("adaptive_5_to_4", 4, h=5, w=5),
    adaptive("adaptive_7x9_to_3x4", (3, 4)),
    adaptive("adaptive_to_1", 1),
    adaptive("adaptive_identity", (7, 9)),
    adaptive("adaptive_3x3_to_5x7_larger", (5, 7), h=3, w=3),
    adaptive("adaptive_c300", 2, n=1, c=300, h=5, w=5),
    # --- nearest upsampling
    upsample("nearest_scale2", "nearest", scale=2, h=5, w=7),
    upsample("nearest_scale0_5", "nearest", scale=0.5),
    upsample("nearest_scale1_7", "nearest", scale=1.7),
    upsample("nearest_scale2x1_7", "nearest", scale=(2.0, 1.7), h=13, w=13),
    upsample("nearest_scale1_05_same_size", "nearest", scale=1.05, h=7, w=7),
    upsample("nearest_size14x13", "nearest", size=(14, 13), h=5, w=7),
    upsample("nearest_size3x4_down", "nearest", size=(3, 4)),
    upsample("nearest_size1", "nearest", size=1),
    # float32 and float64 round these source indices differently (d * in / out lands near an
    # integer): the float64 output and the float32 one differ.
    upsample("nearest_size6x2_to_74x82", "nearest", size=(74, 82), n=1, c=2, h=6, w=2),
    # d * in / out just below an integer in float64 that rounds up to it in float32: PyTorch
    # floors the float32 value, also for float64 tensors.
    upsample("nearest_size18x26_to_66x46", "nearest", size=(66, 46), n=1, c=2, h=18, w=26),
    # --- bilinear upsampling
    upsample("bilinear_scale2", "bilinear", scale=2, h=5, w=7),
    upsample("bilinear_scale0_5", "bilinear", scale=0.5),
    upsample("bilinear_scale1_7", "bilinear", scale=1.7),
    upsample("bilinear_scale1_05_same_size", "bilinear", scale=1.05, h=7, w=7),
    upsample("bilinear_size14x13", "bilinear", size=(14, 13), h=5, w=7),
    upsample("bilinear_size3x4_down", "bilinear", size=(3, 4)),
    upsample("bilinear_ac_scale2", "bilinear", scale=2, align_corners=True, h=5, w=7),
    upsample("bilinear_ac_scale1_7", "bilinear", scale=1.7, align_corners=True),
    upsample("bilinear_ac_scale0_5", "bilinear", scale=0.5, align_corners=True),
    upsample("bilinear_ac_size14x13", "bilinear", size=(14, 13), align_corners=True, h=5, w=7),
    upsample("bilinear_ac_size1", "bilinear", size=1, align_corners=True),
    upsample("bilinear_size1", "bilinear", size=1),
    upsample("bilinear_from_1x2", "bilinear", size=(3, 5), h=1, w=2),
    # --- softmax over channels
    softmax("softmax"),
    softmax("softmax_large_logits", spread=300.0),
    softmax("softmax_one_channel", c=1),
    softmax("softmax_classifier_1000", c=1000, h=1, w=1),
    softmax("log_softmax", log=True),
    softmax("log_softmax_large_logits", log=True, spread=300.0),
    softmax("log_softmax_classifier_1000", log=True, c=1000, h=1, w=1),
] + [activation(a) for a in ("ReLU", "ReLU6", "HardSigmoid", "HardSwish", "Sigmoid", "SiLU",
                              "Tanh", "GELU")]

ACTIVATIONS = {
    "ReLU": F.relu, "ReLU6": F.relu6, "HardSigmoid": F.hardsigmoid, "HardSwish": F.hardswish,
    "Sigmoid": torch.sigmoid, "SiLU": F.silu, "Tanh": torch.tanh, "GELU": F.gelu,
}


def torch_forward(c, x):
    """PyTorch's output of case c on x (in x's dtype) and the case's metadata."""
    kind = c["kind"]
    meta = {"kind": kind}
    if kind in ("max_pool", "avg_pool"):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = c["kernel"], c["stride"], c["padding"], \
            c["dilation"]
        meta.update(kernel_h=str(kh), kernel_w=str(kw), stride_h=str(sh), stride_w=str(sw),
                    pad_h=str(ph), pad_w=str(pw), dilation_h=str(dh), dilation_w=str(dw),
                    ceil_mode="1" if c["ceil_mode"] else "0",
                    count_include_pad="1" if c["count_include_pad"] else "0")
        if kind == "max_pool":
            y = F.max_pool2d(x, c["kernel"], c["stride"], c["padding"], c["dilation"],
                             ceil_mode=c["ceil_mode"])
        else:
            assert c["dilation"] == (1, 1)
            y = F.avg_pool2d(x, c["kernel"], c["stride"], c["padding"], ceil_mode=c["ceil_mode"],
                             count_include_pad=c["count_include_pad"])
    elif kind == "adaptive_avg_pool":
        meta.update(out_h=str(c["out"][0]), out_w=str(c["out"][1]))
        y = F.adaptive_avg_pool2d(x, c["out"])
    elif kind == "upsample":
        meta.update(mode=c["mode"], align_corners="1" if c["align_corners"] else "0")
        # PyTorch runs a different kernel on channels-last tensors (which a one-channel NCHW
        # tensor also is): dynconv follows the NCHW one.
        assert not x.is_contiguous(memory_format=torch.channels_last), c["name"]
        ac = c["align_corners"] if c["mode"] == "bilinear" else None
        if c["size"] is not None:
            meta.update(size_h=str(c["size"][0]), size_w=str(c["size"][1]))
            y = F.interpolate(x, size=c["size"], mode=c["mode"], align_corners=ac)
        else:
            meta.update(scale_h=repr(c["scale"][0]), scale_w=repr(c["scale"][1]))
            y = F.interpolate(x, scale_factor=c["scale"], mode=c["mode"], align_corners=ac)
    elif kind == "softmax":
        y = torch.softmax(x, dim=1)
    elif kind == "log_softmax":
        y = torch.log_softmax(x, dim=1)
    elif kind == "activation":
        meta["activation"] = c["activation"]
        y = ACTIVATIONS[c["activation"]](x)
    else:
        raise ValueError(kind)
    return y, meta


def make_case(c):
    torch.manual_seed(zlib.crc32(c["name"].encode()))
    n, ch, h, w = c["shape"]
    # Spread 2.5: the activations see both sides of their kinks (HardSwish's at -3 and 3).
    x = torch.randn(n, ch, h, w, dtype=torch.float64) * c.get("spread", 2.5)
    with torch.no_grad():
        y, meta = torch_forward(c, x)
        y32, _ = torch_forward(c, x.float())
    meta["output_shape"] = "x".join(str(d) for d in y.shape)
    tensors = {"input": x, "output": y, "output_float32": y32.double()}
    for name, t in tensors.items():
        assert t.dtype == torch.float64, (c["name"], name, t.dtype)
    return tensors, meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names), "duplicate case names"
    for name in names:
        assert all(ch.isalnum() or ch == "_" for ch in name), f"{name}: a gtest name"
    total = 0
    for c in CASES:
        tensors, meta = make_case(c)
        path = os.path.join(args.out, c["name"] + ".safetensors")
        save_safetensors(path, tensors, meta)
        size = os.path.getsize(path)
        total += size
        if not args.quiet:
            y, y32 = tensors["output"], tensors["output_float32"]
            same = (y == y32) | (y.isnan() & y32.isnan())  # also -inf (a padding-only window)
            differ = torch.where(same, torch.zeros_like(y), (y - y32).abs()).max().item()
            finite = y[y.isfinite()].abs()
            scale = max(finite.max().item() if finite.numel() else 1.0, 1e-300)
            print(f"{c['name']:36s} {c['kind']:18s} in {'x'.join(map(str, c['shape'])):12s} "
                  f"out {meta['output_shape']:12s} float32 vs float64 {differ / scale:.1e}")
    write_manifest(args.out, names)  # last
    print(f"make_module_parity_data.py: {len(CASES)} cases, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
