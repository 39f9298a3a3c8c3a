#!/usr/bin/env python3
"""Writes PyTorch reference data for tests/test_parity.cpp.

    /usr/bin/python3 tools/make_parity_data.py --out DIR

For every configuration below it writes DIR/<case>.safetensors holding the input, PyTorch's
output (computed in float64), the attention (dynamic cases) and every parameter, all as F64,
plus metadata describing the layer; DIR/manifest.txt lists the case names, one per line.

DIR/manifest.txt exists only after a run that completed: it is deleted first thing (before
PyTorch is imported) and written last, so that a run that skips or fails never leaves an old
manifest behind for tests/test_parity.cpp to run on stale data (it skips without a manifest).

Exit status: 0 on success; 77 (ctest's "skipped") if PyTorch cannot be imported, unless the
environment variable DYNCONV_REQUIRE_TORCH=1, then 1.
"""

import argparse
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_guard import start, write_manifest  # noqa: E402

start(os.path.basename(__file__), ["torch"])
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dynconv_torch import (DynamicConv2d, layer_case_input, layer_case_metadata,  # noqa: E402
                           save_safetensors)


def case(name, kind="dynamic", cin=4, cout=6, k=3, stride=1, padding=0, dilation=1, groups=1,
         bias=True, K=4, tau=1.0, hidden=None, reduction=4, min_hidden=1, n=2, h=8, w=8,
         bn_eps=1e-5):
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return dict(name=name, kind=kind, cin=cin, cout=cout, k=pair(k), stride=pair(stride),
                padding=pair(padding), dilation=pair(dilation), groups=groups, bias=bias, K=K,
                tau=float(tau), hidden=hidden, reduction=reduction, min_hidden=min_hidden, n=n,
                h=h, w=w, bn_eps=bn_eps)


CASES = [
    # --- kernel sizes and the pointwise path
    case("pw1x1", cin=8, cout=12, k=1, n=2, h=6, w=6),
    case("pw1x1_stride2_nobias", cin=8, cout=8, k=1, stride=2, bias=False, K=2, n=3, h=9, w=13),
    case("pw1x1_pad1", cin=6, cout=4, k=1, padding=1, K=4, n=1, h=5, w=7),
    case("k3x3_pad1", cin=6, cout=8, k=3, padding=1, n=2, h=8, w=8),
    case("k3x3_stride2_pad1_odd", cin=5, cout=7, k=3, stride=2, padding=1, n=4, h=9, w=13),
    case("k3x3_stride21_pad10_K8", cin=6, cout=6, k=3, stride=(2, 1), padding=(1, 0), K=8,
         n=2, h=10, w=9),
    case("k5x5_pad2_nobias", cin=4, cout=6, k=5, padding=2, bias=False, n=2, h=10, w=11),
    case("k5x5_dil2_pad3_K2", cin=4, cout=5, k=5, padding=3, dilation=2, K=2, n=2, h=12, w=12),
    case("k7x7_stride2_pad3_stem", cin=3, cout=8, k=7, stride=2, padding=3, n=2, h=15, w=17),
    case("k3x5_pad12", cin=4, cout=6, k=(3, 5), padding=(1, 2), n=2, h=9, w=13),
    case("k1x7_pad03", cin=6, cout=6, k=(1, 7), padding=(0, 3), n=2, h=7, w=12),
    case("k7x1_pad30_stride12", cin=6, cout=4, k=(7, 1), padding=(3, 0), stride=(1, 2), n=2,
         h=11, w=8),
    case("k3x3_dil2_pad2", cin=4, cout=6, k=3, padding=2, dilation=2, n=2, h=9, w=10),
    case("k3x3_dil12_pad12", cin=4, cout=6, k=3, padding=(1, 2), dilation=(1, 2), n=2, h=9,
         w=13),
    case("k3x3_pad3_wider_than_kernel", cin=4, cout=4, k=3, padding=3, n=1, h=5, w=6),
    case("k3x3_nopad_1x1_output", cin=5, cout=3, k=3, padding=0, n=1, h=3, w=3),
    # --- groups and depthwise
    case("groups2_k3x3", cin=8, cout=12, k=3, padding=1, groups=2, n=2, h=8, w=9),
    case("groups4_k3x3_stride2", cin=8, cout=8, k=3, padding=1, stride=2, groups=4, n=3, h=9,
         w=9),
    case("groups2_k3x5_dil21_stride12_pad20", cin=6, cout=4, k=(3, 5), padding=(2, 0),
         dilation=(2, 1), stride=(1, 2), groups=2, n=2, h=9, w=13),
    case("depthwise_k3x3", cin=16, cout=16, k=3, padding=1, groups=16, n=2, h=8, w=8),
    case("depthwise_k5x5_stride2_nobias", cin=12, cout=12, k=5, padding=2, stride=2, groups=12,
         bias=False, n=3, h=9, w=13),
    # --- K, temperature, hidden size
    case("K1_plain_conv", cin=4, cout=6, k=3, padding=1, K=1, n=2, h=7, w=7),
    case("K8_tau0.5", cin=8, cout=6, k=3, padding=1, K=8, tau=0.5, n=4, h=6, w=7),
    case("K4_tau30", cin=8, cout=6, k=3, padding=1, K=4, tau=30.0, n=3, h=6, w=6),
    case("hidden_explicit5", cin=16, cout=8, k=3, padding=1, hidden=5, n=2, h=6, w=6),
    case("hidden_reduction8_min3", cin=16, cout=8, k=1, reduction=8, min_hidden=3, n=2, h=5,
         w=5),
    case("hidden_min_hidden_cin3", cin=3, cout=4, k=3, padding=1, reduction=4, min_hidden=1,
         n=2, h=6, w=6),
    case("batch4_nonsquare_9x13", cin=4, cout=6, k=3, padding=1, K=2, n=4, h=9, w=13),
    # --- real layer shapes (small spatial size)
    case("mbv2_expand_1x1_24to144", cin=24, cout=144, k=1, bias=False, n=2, h=7, w=7),
    case("mbv2_depthwise_3x3_144_stride2", cin=144, cout=144, k=3, stride=2, padding=1,
         groups=144, bias=False, n=2, h=8, w=8),
    # --- static Conv2d
    case("static_resnet18_stem_7x7_stride2", kind="static", cin=3, cout=64, k=7, stride=2,
         padding=3, bias=False, n=2, h=16, w=16),
    case("static_mbv2_depthwise_3x3_32_stride2", kind="static", cin=32, cout=32, k=3, stride=2,
         padding=1, groups=32, bias=True, n=2, h=9, w=9),
    case("static_resnet18_downsample_1x1_64to128_stride2", kind="static", cin=64, cout=128, k=1,
         stride=2, bias=False, n=2, h=8, w=8),
    # --- dynamic conv followed by an inference BatchNorm2d
    case("bn_mbv2_project_1x1_144to24", kind="dynamic_bn", cin=144, cout=24, k=1, bias=False,
         n=2, h=7, w=7),
    case("bn_resnet18_layer1_3x3_64_K2", kind="dynamic_bn", cin=64, cout=64, k=3, padding=1,
         bias=False, K=2, n=2, h=6, w=6),
    case("bn_groups2_bias_eps1e-3", kind="dynamic_bn", cin=8, cout=6, k=3, padding=1, groups=2,
         bias=True, K=4, tau=0.5, n=3, h=6, w=5, bn_eps=1e-3),
]

# How far apart the attention logits z / tau are spread (standard deviation, roughly): large
# enough that pi is far from uniform, small enough that float32 still resolves it.
LOGIT_SPREAD = 2.5


def make_case(c):
    kh, kw = c["k"]
    n, cin = c["n"], c["cin"]
    x = layer_case_input(c)
    meta = layer_case_metadata(c)
    tensors = {"input": x}
    summary = ""
    with torch.no_grad():
        if c["kind"] == "static":
            conv = torch.nn.Conv2d(cin, c["cout"], (kh, kw), c["stride"], c["padding"],
                                   c["dilation"], c["groups"], bias=c["bias"]).double()
            if conv.bias is not None:
                conv.bias.uniform_(-1.0, 1.0)
            y = F.conv2d(x, conv.weight, conv.bias, c["stride"], c["padding"], c["dilation"],
                         c["groups"])
            tensors["output"] = y
            tensors["weight"] = conv.weight.detach().clone()
            if conv.bias is not None:
                tensors["bias"] = conv.bias.detach().clone()
        else:
            m = DynamicConv2d(cin, c["cout"], (kh, kw), c["stride"], c["padding"], c["dilation"],
                              c["groups"], c["bias"], c["K"], c["tau"], c["reduction"],
                              c["min_hidden"], c["hidden"]).double()
            # Attention far from uniform: fc1 keeps the pooled features' scale, fc2 spreads
            # the logits z by about LOGIT_SPREAD * max(1, tau), so that z / tau is spread by
            # several units even at tau = 30.
            hid = m.hidden
            m.attention.fc1.weight.copy_(torch.randn(hid, cin, dtype=torch.float64) / cin ** 0.5)
            m.attention.fc1.bias.copy_(0.5 * torch.randn(hid, dtype=torch.float64))
            zscale = LOGIT_SPREAD * max(1.0, c["tau"])
            m.attention.fc2.weight.copy_(
                zscale * torch.randn(c["K"], hid, dtype=torch.float64) / hid ** 0.5)
            m.attention.fc2.bias.copy_(0.5 * zscale * torch.randn(c["K"], dtype=torch.float64))
            if m.bias is not None:
                m.bias.uniform_(-1.0, 1.0)
            y, pi = m.forward_with_attention(x)
            # Self-checks of the oracle: rows sum to 1; convolve-then-mix agrees (paper.md).
            assert torch.allclose(pi.sum(dim=1), torch.ones(n, dtype=torch.float64),
                                  rtol=0, atol=1e-14), c["name"]
            y2 = m.convolve_then_mix(x, pi)
            assert (y - y2).abs().max() <= 1e-12 * y.abs().max(), c["name"]
            if c["K"] > 1:
                assert pi.max() > 1.0 / c["K"] + 0.1, f"{c['name']}: attention nearly uniform"
            summary = f"max attention {pi.max().item():.3f} (uniform {1.0 / c['K']:.3f})"
            for name, t in m.state_dict().items():
                tensors[name] = t.detach().clone()
            meta.update({
                "kernels": str(c["K"]), "temperature": repr(c["tau"]), "hidden": str(hid),
                "hidden_explicit": "1" if c["hidden"] else "0",
                "reduction": str(c["reduction"]), "min_hidden": str(c["min_hidden"]),
            })
            tensors["attention"] = pi
            if c["kind"] == "dynamic_bn":
                bn = torch.nn.BatchNorm2d(c["cout"], eps=c["bn_eps"]).double().eval()
                cout = c["cout"]
                bn.weight.copy_(1.0 + 0.5 * torch.randn(cout, dtype=torch.float64))
                bn.bias.copy_(0.5 * torch.randn(cout, dtype=torch.float64))
                bn.running_mean.copy_(0.5 * torch.randn(cout, dtype=torch.float64))
                bn.running_var.copy_(0.25 + 1.75 * torch.rand(cout, dtype=torch.float64))
                y = bn(y)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    tensors["bn." + name] = getattr(bn, name).detach().clone()
                meta["bn_eps"] = repr(c["bn_eps"])
            tensors["output"] = y
    for name, t in tensors.items():
        assert t.dtype == torch.float64, (c["name"], name, t.dtype)
    meta["output_shape"] = "x".join(str(d) for d in tensors["output"].shape)
    return tensors, meta, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # deterministic float64 reductions, and fast enough
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names), "duplicate case names"
    total = 0
    for c in CASES:
        tensors, meta, summary = make_case(c)
        path = os.path.join(args.out, c["name"] + ".safetensors")
        save_safetensors(path, tensors, meta)
        size = os.path.getsize(path)
        total += size
        if not args.quiet:
            shape = "x".join(str(d) for d in tensors["output"].shape)
            print(f"{c['name']:48s} {c['kind']:10s} out {shape:14s} {size / 1024:7.1f} KiB  "
                  f"{summary}")
    write_manifest(args.out, names)  # last
    print(f"make_parity_data.py: {len(CASES)} cases, {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
