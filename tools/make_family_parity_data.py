#!/usr/bin/env python3
"""Writes PyTorch reference data for the dynamic-convolution family (DY-Conv, CondConv, ODConv).

    /usr/bin/python3 tools/make_family_parity_data.py --out DIR [--quiet]

For every configuration below it writes DIR/<case>.safetensors; DIR/manifest.txt lists the
case names, one per line. Each file holds, all F64 except the attention BatchNorm's
num_batches_tracked (I64, as in a real state_dict):

    input                  [N, Cin, H, W]  N(0, 1) plus a per-sample, per-channel offset
    output                 [N, Cout, Hout, Wout]  the layer's float64 forward
    layer.<name>           the layer's state_dict (tools/dynconv_torch.py: DynamicConv2d,
                           CondConv2d, ODConv2d), e.g. layer.weight, layer.routing_fn.weight,
                           layer.attention.kernel_fc.bias, layer.attention.temperature (0-d)
    kind "dy":        attention.kernel [N, K] (softmax, rows sum to 1)
    kind "condconv":  routing [N, E] (sigmoid, rows do not sum to 1); shared_routing cases
                      also routing_fn.weight [E, Cin], routing_fn.bias [E],
                      routing_fn.temperature (0-d): the block's routing module, routing =
                      routing_fn(input), passed to the layer (which then has no routing state)
    kind "odconv":    attention.channel [N, Cin] always, attention.filter [N, Cout],
                      attention.spatial [N, kh*kw], attention.kernel [N, K] where present
    bn cases:         output_bn = an eval BatchNorm2d(Cout) of output, its bn.weight, bn.bias,
                      bn.running_mean, bn.running_var [Cout]; metadata bn_eps

and string metadata: kind, in_channels, out_channels, kernel_h, kernel_w, stride_h, stride_w,
pad_h, pad_w, dilation_h, dilation_w, groups, bias, batch, height, width, kernels (K or E),
temperature, hidden (0 for CondConv: its routing has no hidden layer), reduction, min_hidden
(dy, odconv), heads (the attentions present, comma-separated in the order channel, filter,
spatial, kernel: "kernel" for dy, "routing" for condconv), shared_routing, bn, bn_eps (bn
cases), output_shape.

Every case checks the oracle first: a per-sample float64 loop (each sample one F.conv2d with
its own kernel, built here term by term from the formulas of /work/shared/docs/family.md)
equals the batched forward to 1e-12 relative; for ODConv also the conv of the unscaled input
with the fully synthesized kernel f[o] c[i] s[p] sum_k a_k W_k[o, i, p]; the attentions are
neither saturated nor uniform and differ between samples; the state_dict has exactly the
expected names and shapes.

DIR/manifest.txt exists only after a run that completed: it is deleted first thing (before
PyTorch is imported) and written last, so that a run that skips or fails never leaves an old
manifest behind.

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

from dynconv_torch import (CondConv2d, CondConvRouting, DynamicConv2d, ODConv2d,  # noqa: E402
                           layer_case_input, layer_case_metadata, save_safetensors)

KINDS = ("dy", "condconv", "odconv")
DEFAULT_BIAS = {"dy": True, "condconv": False, "odconv": False}
DEFAULT_REDUCTION = {"dy": 4, "condconv": None, "odconv": 0.0625}
DEFAULT_MIN_HIDDEN = {"dy": 1, "condconv": None, "odconv": 16}


def case(name, kind, cin=6, cout=8, k=3, stride=1, padding=0, dilation=1, groups=1, bias=None,
         K=4, tau=1.0, shared=False, bn=False, bn_eps=1e-5, reduction=None, min_hidden=None,
         n=2, h=8, w=8):
    assert kind in KINDS, kind
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return dict(name=name, kind=kind, cin=cin, cout=cout, k=pair(k), stride=pair(stride),
                padding=pair(padding), dilation=pair(dilation), groups=groups,
                bias=DEFAULT_BIAS[kind] if bias is None else bias, K=K, tau=float(tau),
                shared=shared, bn=bn, bn_eps=bn_eps,
                reduction=DEFAULT_REDUCTION[kind] if reduction is None else reduction,
                min_hidden=DEFAULT_MIN_HIDDEN[kind] if min_hidden is None else min_hidden,
                n=n, h=h, w=w)


CASES = [
    # --- DY-Conv (the existing DynamicConv2d), softmax attention over K kernels
    case("dy_1x1", "dy", cin=8, cout=12, k=1, n=2, h=6, w=6),
    case("dy_3x3_pad1", "dy", cin=6, cout=8, k=3, padding=1, n=2, h=8, w=8),
    case("dy_3x3_stride2_pad1_odd", "dy", cin=5, cout=7, k=3, stride=2, padding=1, n=4, h=9,
         w=13),
    case("dy_groups2_3x3", "dy", cin=8, cout=12, k=3, padding=1, groups=2, n=2, h=8, w=9),
    case("dy_depthwise_3x3_nobias", "dy", cin=16, cout=16, k=3, padding=1, groups=16,
         bias=False, n=2, h=8, w=8),
    case("dy_3x5_pad12", "dy", cin=4, cout=6, k=(3, 5), padding=(1, 2), n=2, h=9, w=13),
    case("dy_3x3_dil2_pad2_stride21", "dy", cin=4, cout=6, k=3, padding=2, dilation=2,
         stride=(2, 1), n=3, h=9, w=10),
    case("dy_K1", "dy", cin=4, cout=6, k=3, padding=1, K=1, n=2, h=7, w=7),
    case("dy_K8_tau0.5", "dy", cin=8, cout=6, k=3, padding=1, K=8, tau=0.5, n=4, h=6, w=7),
    case("dy_tau30", "dy", cin=8, cout=6, k=3, padding=1, tau=30.0, n=3, h=6, w=6),
    case("dy_bn_1x1_nobias", "dy", cin=16, cout=8, k=1, bias=False, bn=True, n=2, h=5, w=5),
    # --- CondConv (timm's CondConv2d), sigmoid routing over E experts
    case("cc_1x1_bias", "condconv", cin=8, cout=12, k=1, bias=True, n=2, h=6, w=6),
    case("cc_3x3_pad1", "condconv", cin=6, cout=8, k=3, padding=1, n=2, h=8, w=8),
    case("cc_3x3_stride2_pad1_odd_bias", "condconv", cin=5, cout=7, k=3, stride=2, padding=1,
         bias=True, n=4, h=9, w=13),
    case("cc_groups2_3x3", "condconv", cin=8, cout=12, k=3, padding=1, groups=2, n=2, h=8,
         w=9),
    case("cc_depthwise_3x3_shared", "condconv", cin=16, cout=16, k=3, padding=1, groups=16,
         shared=True, n=3, h=8, w=8),
    case("cc_3x5_pad12_bias", "condconv", cin=4, cout=6, k=(3, 5), padding=(1, 2), bias=True,
         n=2, h=9, w=13),
    case("cc_3x3_dil2_pad2_stride12", "condconv", cin=4, cout=6, k=3, padding=2, dilation=2,
         stride=(1, 2), n=2, h=9, w=10),
    case("cc_E1_bias", "condconv", cin=4, cout=6, k=3, padding=1, K=1, bias=True, n=2, h=7,
         w=7),
    case("cc_E8_tau0.5", "condconv", cin=8, cout=6, k=3, padding=1, K=8, tau=0.5, n=4, h=6,
         w=7),
    case("cc_tau30_bias", "condconv", cin=8, cout=6, k=3, padding=1, tau=30.0, bias=True, n=3,
         h=6, w=6),
    case("cc_1x1_shared_bias_E8_tau0.5", "condconv", cin=12, cout=8, k=1, K=8, tau=0.5,
         bias=True, shared=True, n=2, h=5, w=5),
    case("cc_bn_3x3_pad1", "condconv", cin=8, cout=8, k=3, padding=1, bn=True, n=2, h=6, w=6),
    # --- ODConv (OSVAI's ODConv2d), four attentions
    case("od_1x1", "odconv", cin=8, cout=12, k=1, n=2, h=6, w=6),
    case("od_3x3_pad1", "odconv", cin=6, cout=8, k=3, padding=1, n=2, h=8, w=8),
    case("od_3x3_stride2_pad1_odd", "odconv", cin=5, cout=7, k=3, stride=2, padding=1, n=4,
         h=9, w=13),
    case("od_groups2_3x3", "odconv", cin=8, cout=12, k=3, padding=1, groups=2, n=2, h=8, w=9),
    case("od_depthwise_3x3", "odconv", cin=16, cout=16, k=3, padding=1, groups=16, n=2, h=8,
         w=8),
    case("od_depthwise_mult2_3x3", "odconv", cin=8, cout=16, k=3, padding=1, groups=8, n=2,
         h=7, w=7),
    case("od_3x5_pad12", "odconv", cin=4, cout=6, k=(3, 5), padding=(1, 2), n=2, h=9, w=13),
    case("od_3x3_dil2_pad2_stride12", "odconv", cin=4, cout=6, k=3, padding=2, dilation=2,
         stride=(1, 2), n=2, h=9, w=10),
    case("od_K1_3x3", "odconv", cin=4, cout=6, k=3, padding=1, K=1, n=2, h=7, w=7),
    case("od_1x1_K1_stride2", "odconv", cin=8, cout=6, k=1, stride=2, K=1, n=3, h=7, w=8),
    case("od_depthwise_1x1_K1", "odconv", cin=8, cout=8, k=1, groups=8, K=1, n=2, h=5, w=5),
    case("od_K8_tau0.5", "odconv", cin=8, cout=6, k=3, padding=1, K=8, tau=0.5, n=4, h=6, w=7),
    case("od_tau30", "odconv", cin=8, cout=6, k=3, padding=1, tau=30.0, n=3, h=6, w=6),
    case("od_cin320_hidden20", "odconv", cin=320, cout=8, k=3, padding=1, n=2, h=4, w=4),
    case("od_bn_3x3_pad1", "odconv", cin=8, cout=8, k=3, padding=1, bn=True, n=2, h=6, w=6,
         bn_eps=1e-3),
]

# Spread of the logits z / tau (standard deviation, roughly): the constant part (the heads'
# biases) and the input-dependent part (which makes the samples differ). Large enough that a
# softmax is far from uniform and that sigmoids span a good part of (0, 1), small enough that
# no sigmoid saturates and float32 still resolves them.
SOFTMAX_BIAS_SPREAD = 1.5
SIGMOID_BIAS_SPREAD = 0.8
INPUT_GAIN = 0.8


def rms(t):
    return float(t.pow(2).mean().sqrt())


def relative_error(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def check_sigmoid(name, what, a):
    """Not saturated, not all 1/2, and (batch > 1) not the same for every sample."""
    assert float(a.min()) > 0.005 and float(a.max()) < 0.995, \
        f"{name}: {what} saturated ({float(a.min()):.4f} .. {float(a.max()):.4f})"
    assert float(a.std()) > 0.05, f"{name}: {what} nearly constant (std {float(a.std()):.4f})"
    if a.shape[0] > 1:
        assert float((a - a[:1]).abs().max()) > 0.02, f"{name}: {what} the same for every sample"


def check_softmax(name, what, a):
    """Rows sum to 1, far from uniform, and (batch > 1) not the same for every sample."""
    k = a.shape[1]
    assert torch.allclose(a.sum(dim=1), torch.ones_like(a[:, 0]), rtol=0, atol=1e-14), name
    if k > 1:
        assert float(a.max()) > 1.0 / k + 0.1, f"{name}: {what} nearly uniform"
        assert float(a.max()) < 0.99, f"{name}: {what} nearly one-hot ({float(a.max()):.4f})"
        if a.shape[0] > 1:
            assert float((a - a[:1]).abs().max()) > 0.01, \
                f"{name}: {what} the same for every sample"


def head_weights(z, outputs, tau, bias_spread):
    """Weight [outputs, hidden] and bias [outputs] of a head fed with z [N, hidden] so that
    (weight z + bias) / tau has an input-dependent part of RMS about INPUT_GAIN and a constant
    part spread by bias_spread."""
    hid = z.shape[1]
    wt = torch.randn(outputs, hid, dtype=torch.float64) / hid ** 0.5
    wt = wt * (INPUT_GAIN * tau / max(rms(z - z.mean(dim=0)) if z.shape[0] > 1 else rms(z),
                                      1e-3))
    b = bias_spread * tau * torch.randn(outputs, dtype=torch.float64) - wt @ z.mean(dim=0)
    return wt, b


def expected_keys(c, m):
    """The state_dict names and shapes the C++ reader relies on (family.md, the brief)."""
    cin, cout, g, K = c["cin"], c["cout"], c["groups"], c["K"]
    kh, kw = c["k"]
    if c["kind"] == "dy":
        hid = m.hidden
        keys = {"weight": (K, cout, cin // g, kh, kw), "attention.fc1.weight": (hid, cin),
                "attention.fc1.bias": (hid,), "attention.fc2.weight": (K, hid),
                "attention.fc2.bias": (K,), "attention.temperature": ()}
        if c["bias"]:
            keys["bias"] = (K, cout)
    elif c["kind"] == "condconv":
        keys = {"weight": (K, cout * (cin // g) * kh * kw)}
        if c["bias"]:
            keys["bias"] = (K, cout)
        if not c["shared"]:
            keys.update({"routing_fn.weight": (K, cin), "routing_fn.bias": (K,),
                         "routing_fn.temperature": ()})
    else:
        hid = max(int(cin * c["reduction"]), c["min_hidden"])
        assert m.hidden == hid
        keys = {"weight": (K, cout, cin // g, kh, kw), "attention.temperature": (),
                "attention.fc.weight": (hid, cin, 1, 1)}
        for b in ("weight", "bias", "running_mean", "running_var"):
            keys["attention.bn." + b] = (hid,)
        keys["attention.bn.num_batches_tracked"] = ()
        heads = {"channel": cin}
        if not (cin == g and cin == cout):
            heads["filter"] = cout
        if (kh, kw) != (1, 1):
            heads["spatial"] = kh * kw
        if K != 1:
            heads["kernel"] = K
        for head, size in heads.items():
            keys[f"attention.{head}_fc.weight"] = (size, hid, 1, 1)
            keys[f"attention.{head}_fc.bias"] = (size,)
        assert m.attention.heads() == list(heads), (c["name"], m.attention.heads())
    return keys


def conv_loop(c, x, kernel_of, bias_of=None):
    """Per-sample oracle: y[n] = conv2d(x[n], kernel_of(n), bias_of(n))."""
    outs = []
    for i in range(x.shape[0]):
        outs.append(F.conv2d(x[i:i + 1], kernel_of(i), None if bias_of is None else bias_of(i),
                             c["stride"], c["padding"], c["dilation"], c["groups"]))
    return torch.cat(outs, dim=0)


def make_dy(c, x, tensors):
    cin, K, tau = c["cin"], c["K"], c["tau"]
    m = DynamicConv2d(cin, c["cout"], c["k"], c["stride"], c["padding"], c["dilation"],
                      c["groups"], c["bias"], K, tau, c["reduction"], c["min_hidden"]).double()
    hid = m.hidden
    att = m.attention
    s = x.mean(dim=(2, 3))                                              # [N, Cin]
    att.fc1.weight.copy_(torch.randn(hid, cin, dtype=torch.float64) / cin ** 0.5
                         / max(rms(s), 1e-3))
    u = s @ att.fc1.weight.t()
    # every hidden unit active for some sample, most of them for most samples
    att.fc1.bias.copy_(0.5 * rms(u) * (1.0 + torch.randn(hid, dtype=torch.float64))
                       - u.mean(dim=0))
    z = F.relu(u + att.fc1.bias)
    wt, b = head_weights(z, K, tau, SOFTMAX_BIAS_SPREAD)
    att.fc2.weight.copy_(wt)
    att.fc2.bias.copy_(b)
    if m.bias is not None:
        m.bias.uniform_(-1.0, 1.0)
    y, pi = m.forward_with_attention(x)
    check_softmax(c["name"], "attention", pi)
    # the batched path (one grouped conv) and a term-by-term per-sample loop
    y_batched = m.convolve_aggregated(x, pi)
    y_loop = conv_loop(c, x, lambda i: sum(pi[i, k] * m.weight[k] for k in range(K)),
                       None if m.bias is None else
                       lambda i: sum(pi[i, k] * m.bias[k] for k in range(K)))
    tensors["attention.kernel"] = pi
    return m, y, [("batched", y_batched), ("loop", y_loop)], hid, "kernel", \
        f"max attention {float(pi.max()):.3f} (uniform {1.0 / K:.3f})"


def routing_init(routing, x, tau):
    s = x.mean(dim=(2, 3))
    wt, b = head_weights(s, routing.experts, tau, SIGMOID_BIAS_SPREAD)
    routing.weight.copy_(wt)
    routing.bias.copy_(b)


def make_condconv(c, x, tensors):
    cin, E, tau = c["cin"], c["K"], c["tau"]
    m = CondConv2d(cin, c["cout"], c["k"], c["stride"], c["padding"], c["dilation"],
                   c["groups"], c["bias"], E, c["shared"],
                   1.0 if c["shared"] else tau).double()
    if m.bias is not None:
        m.bias.uniform_(-1.0, 1.0)
    if c["shared"]:
        block_routing = CondConvRouting(cin, E, tau).double()
        routing_init(block_routing, x, tau)
        r_in = block_routing(x)
        y, r = m.forward_with_routing(x, r_in)
        assert r is r_in
        for name, t in block_routing.state_dict().items():
            tensors["routing_fn." + name] = t.detach().clone()
    else:
        routing_init(m.routing_fn, x, tau)
        y, r = m.forward_with_routing(x)
        # the routing is the formula of family.md
        s = x.mean(dim=(2, 3))
        r2 = torch.sigmoid((s @ m.routing_fn.weight.t() + m.routing_fn.bias) / tau)
        assert relative_error(r, r2) <= 1e-14, c["name"]
    check_sigmoid(c["name"], "routing", r)
    # timm's layout: expert e is row e of weight read as [Cout, Cin/g, kh, kw]
    experts = [m.weight[e].reshape(m.expert_shape) for e in range(E)]
    y_loop = conv_loop(c, x, lambda i: sum(r[i, e] * experts[e] for e in range(E)),
                       None if m.bias is None else
                       lambda i: sum(r[i, e] * m.bias[e] for e in range(E)))
    tensors["routing"] = r
    row_sums = r.sum(dim=1)
    return m, y, [("loop", y_loop)], 0, "routing", \
        f"routing {float(r.min()):.3f}..{float(r.max()):.3f}, row sums " \
        f"{float(row_sums.min()):.2f}..{float(row_sums.max()):.2f}", row_sums


def make_odconv(c, x, tensors):
    cin, cout, K, tau, g = c["cin"], c["cout"], c["K"], c["tau"], c["groups"]
    kh, kw = c["k"]
    m = ODConv2d(cin, cout, c["k"], c["stride"], c["padding"], c["dilation"], g,
                 c["reduction"], K, c["min_hidden"], tau).double().eval()
    att_m = m.attention
    hid = m.hidden
    s = x.mean(dim=(2, 3))                                              # [N, Cin]
    att_m.fc.weight.copy_((torch.randn(hid, cin, dtype=torch.float64) / cin ** 0.5
                           / max(rms(s), 1e-3)).view(hid, cin, 1, 1))
    u = s @ att_m.fc.weight.view(hid, cin).t()                          # bn's input
    bn = att_m.bn
    bn.running_mean.copy_(u.mean(dim=0) + 0.3 * rms(u) * torch.randn(hid, dtype=torch.float64))
    bn.running_var.copy_((0.5 + 1.5 * torch.rand(hid, dtype=torch.float64)) * rms(u) ** 2)
    bn.weight.copy_(1.0 + 0.3 * torch.randn(hid, dtype=torch.float64))
    bn.bias.copy_(0.5 + 0.3 * torch.randn(hid, dtype=torch.float64))    # mostly active ReLU
    bn.num_batches_tracked.fill_(1000)
    z = att_m.descriptor(x).flatten(1)                                  # [N, hidden]
    z_formula = F.relu((u - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
                       * bn.weight + bn.bias)
    assert relative_error(z, z_formula) <= 1e-14, c["name"]
    assert float((z > 0).double().mean()) > 0.5, f"{c['name']}: ReLU mostly off"
    for head in att_m.heads():
        fc = getattr(att_m, head + "_fc")
        spread = SOFTMAX_BIAS_SPREAD if head == "kernel" else SIGMOID_BIAS_SPREAD
        wt, b = head_weights(z, fc.out_channels, tau, spread)
        fc.weight.copy_(wt.view(*fc.weight.shape))
        fc.bias.copy_(b)
    y, att = m.forward_with_attention(x)
    assert list(att) == att_m.heads(), c["name"]
    for head, a in att.items():
        # each head is sigmoid / softmax of its own logits divided by tau (OSVAI)
        fc = getattr(att_m, head + "_fc")
        logits = (z @ fc.weight.view(fc.out_channels, hid).t() + fc.bias) / tau
        ref = F.softmax(logits, dim=1) if head == "kernel" else torch.sigmoid(logits)
        assert relative_error(a, ref) <= 1e-14, (c["name"], head)
        (check_softmax if head == "kernel" else check_sigmoid)(c["name"], head, a)
        tensors["attention." + head] = a
    n = x.shape[0]
    ones = torch.ones
    ch = att["channel"]
    fi = att.get("filter", ones(n, cout, dtype=torch.float64))
    sp = att.get("spatial", ones(n, kh * kw, dtype=torch.float64)).view(n, kh, kw)
    ke = att.get("kernel", ones(n, K, dtype=torch.float64))

    def mixed(i):  # sum_k s * a_k * W_k
        return sum(sp[i] * ke[i, k] * m.weight[k] for k in range(K))

    # (1) OSVAI's order per sample: filter * conv(channel * x, mixed kernel)
    outs = []
    for i in range(n):
        xi = x[i:i + 1] * ch[i].view(1, cin, 1, 1)
        yi = F.conv2d(xi, mixed(i), None, c["stride"], c["padding"], c["dilation"], g)
        outs.append(yi * fi[i].view(1, cout, 1, 1))
    y_scaled = torch.cat(outs, dim=0)

    # (2) the unscaled input with the fully synthesized kernel
    #     W~[o, i, p] = f[o] c[group(o) * Cin/g + i] s[p] sum_k a_k W_k[o, i, p]
    cin_g, cout_g = cin // g, cout // g

    def synthesized(i):
        w = mixed(i).clone()
        for o in range(cout):
            first = (o // cout_g) * cin_g
            w[o] *= fi[i, o] * ch[i, first:first + cin_g].view(cin_g, 1, 1)
        return w

    y_full = conv_loop(c, x, synthesized)
    # ODConv2d.synthesize agrees with the term-by-term kernel
    w_syn = m.synthesize(att)
    for i in range(n):
        assert relative_error(w_syn[i], synthesized(i)) <= 1e-13, c["name"]
    summary = " ".join(f"{h[0]}{float(a.min()):.2f}..{float(a.max()):.2f}"
                       for h, a in att.items())
    return m, y, [("loop_scaled", y_scaled), ("loop_synthesized", y_full)], hid, \
        ",".join(att_m.heads()), f"heads {summary}"


def make_case(c):
    x = layer_case_input(c)
    meta = layer_case_metadata(c)
    meta.update({
        "kernels": str(c["K"]), "temperature": repr(c["tau"]),
        "shared_routing": "1" if c["shared"] else "0", "bn": "1" if c["bn"] else "0",
    })
    if c["kind"] != "condconv":
        meta["reduction"] = repr(c["reduction"]) if isinstance(c["reduction"], float) \
            else str(c["reduction"])
        meta["min_hidden"] = str(c["min_hidden"])
    tensors = {"input": x}
    row_sums = None
    with torch.no_grad():
        if c["kind"] == "dy":
            m, y, checks, hid, heads, summary = make_dy(c, x, tensors)
        elif c["kind"] == "condconv":
            m, y, checks, hid, heads, summary, row_sums = make_condconv(c, x, tensors)
        else:
            m, y, checks, hid, heads, summary = make_odconv(c, x, tensors)
        worst = 0.0
        for what, other in checks:
            assert other.shape == y.shape, (c["name"], what, other.shape, y.shape)
            err = relative_error(other, y)
            assert err <= 1e-12, f"{c['name']}: {what} differs from the forward by {err:.3g}"
            worst = max(worst, err)
        state = m.state_dict()
        expected = expected_keys(c, m)
        got = {k: tuple(t.shape) for k, t in state.items()}
        assert got == expected, f"{c['name']}: state_dict {got} != expected {expected}"
        tensors["output"] = y
        for name, t in state.items():
            tensors["layer." + name] = t.detach().clone()
        meta["hidden"] = str(hid)
        meta["heads"] = heads
        if c["bn"]:
            cout = c["cout"]
            bn = torch.nn.BatchNorm2d(cout, eps=c["bn_eps"]).double().eval()
            bn.weight.copy_(1.0 + 0.5 * torch.randn(cout, dtype=torch.float64))
            bn.bias.copy_(0.5 * torch.randn(cout, dtype=torch.float64))
            bn.running_mean.copy_(0.5 * torch.randn(cout, dtype=torch.float64))
            bn.running_var.copy_(0.25 + 1.75 * torch.rand(cout, dtype=torch.float64))
            tensors["output_bn"] = bn(y)
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensors["bn." + name] = getattr(bn, name).detach().clone()
            meta["bn_eps"] = repr(c["bn_eps"])
    for name, t in tensors.items():
        want = torch.int64 if name.endswith("num_batches_tracked") else torch.float64
        assert t.dtype == want, (c["name"], name, t.dtype)
    meta["output_shape"] = "x".join(str(d) for d in tensors["output"].shape)
    return tensors, meta, f"{summary}; oracle {worst:.1e}", row_sums


def check_routing_loads_linear():
    """timm's block routing is an nn.Linear: its state loads into CondConvRouting, which then
    computes sigmoid(linear(GAP(x))) at tau = 1."""
    lin = torch.nn.Linear(6, 3).double()
    r = CondConvRouting(6, 3).double()
    result = r.load_state_dict(lin.state_dict(), strict=False)
    assert result.missing_keys == ["temperature"] and not result.unexpected_keys, result
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        ref = torch.sigmoid(lin(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        assert relative_error(r(x), ref) <= 1e-15


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # deterministic float64 reductions, and fast enough
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names), "duplicate case names"
    check_routing_loads_linear()
    total = 0
    not_one = 0.0  # how far CondConv's routing rows get from summing to 1
    for c in CASES:
        tensors, meta, summary, row_sums = make_case(c)
        if row_sums is not None:
            not_one = max(not_one, float((row_sums - 1).abs().max()))
        path = os.path.join(args.out, c["name"] + ".safetensors")
        save_safetensors(path, tensors, meta)
        size = os.path.getsize(path)
        total += size
        if not args.quiet:
            print(f"{c['name']:30s} {c['kind']:8s} out {meta['output_shape']:12s} "
                  f"{size / 1024:7.1f} KiB  {summary}")
    assert not_one > 0.5, "CondConv: every routing row sums to about 1; expected otherwise"
    write_manifest(args.out, names)  # last
    counts = {k: sum(c["kind"] == k for c in CASES) for k in KINDS}
    print(f"make_family_parity_data.py: {len(CASES)} cases "
          f"({', '.join(f'{v} {k}' for k, v in counts.items())}), {total / 1e6:.2f} MB in "
          f"{args.out}")


if __name__ == "__main__":
    main()
