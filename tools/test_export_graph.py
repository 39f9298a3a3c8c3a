#!/usr/bin/env python3
"""Tests of tools/export_graph.py and the graph files of tools/make_graph_parity_data.py.

    /usr/bin/python3 tools/test_export_graph.py [--data DIR] [--only a,b] [-v]

1. For every network of make_graph_parity_data.NETWORKS (written to a temporary directory, or
   read from DIR, an existing --out of that script), `run_graph` below, a small interpreter of
   docs/graph_format.md written from the spec (torch.nn.functional in float64 on the file's
   tensors; it does not use the exporter or dynconv_torch's modules), runs the file's graph on
   its test input and must reproduce its float64 test outputs to 1e-6 relative
   (max |y - y_ref| / max |y_ref|); every node's computed shape must be its recorded `shape`,
   and every tensor of the file must be read by a node or the test (num_batches_tracked
   excepted).
2. Error cases: an unsupported op (torch.topk, x.permute, an unsupported torch.nn module)
   gives an ExportError naming the fx node and the source line; F.pad with a non-zero value,
   a zero F.pad feeding a non-conv, a parameterised module called twice, a broadcast other
   than [N, C, 1, 1]; and a few things that must work: register_adapter for a user class,
   padding='same', in-place ops seen by later uses, the CLI --module form.
3. The peers' classes (tools/peer_modules.py): tau stored where each keeps it (kaijieshi7's
   and OSVAI's attribute, TArdelean's call constant through FixedArguments or a buffer, its
   default 1) and a lost tau caught by the file's test; hidden read from each layer's weights;
   a module named like a peer's class but built otherwise refused with the reason; a user's
   own dynamic convolution registered with register_adapter(cls, fn, constant_args=...).
4. Chains: a user adapter returning two nodes (names, parity, a wrong chain refused); timm's
   BatchNormAct2d with every supported activation (batch_norm + `<path>.act`), apply_act
   False, a Dropout, no num_batches_tracked, and an unsupported activation / drop refused;
   timm's SelectAdaptivePool2d 'avg' / 'fast' / '' (with and without flatten), 'max' refused.

Exit status 0 if everything passes, 1 otherwise; 77 if torch / torchvision are missing (1
with DYNCONV_REQUIRE_TORCH=1).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

if __name__ == "__main__":
    from parity_guard import start  # noqa: E402  (exit 77, or 1 under DYNCONV_REQUIRE_TORCH=1)
    start(os.path.basename(__file__), ["torch", "torchvision"])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import export_graph as eg  # noqa: E402
from export_safetensors import export, read_safetensors  # noqa: E402

TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------
# The interpreter (from docs/graph_format.md)

def _conv(x, w, b, a):
    """conv2d with [top, bottom, left, right] padding (possibly asymmetric)."""
    t, bo, le, r = a["padding"]
    if t == bo and le == r:
        return F.conv2d(x, w, b, a["stride"], (t, le), a["dilation"], a["groups"])
    return F.conv2d(F.pad(x, (le, r, t, bo)), w, b, a["stride"], 0, a["dilation"],
                    a["groups"])


def _per_sample_conv(x, kernels, biases, a):
    """y[n] = conv(x[n], kernels[n], biases[n]), a loop over the samples."""
    outs = []
    for n in range(x.shape[0]):
        outs.append(_conv(x[n:n + 1], kernels[n], None if biases is None else biases[n], a))
    return torch.cat(outs)


def _dynamic_conv(x, p, a, routing=None):
    kind, k = a["attention"], a["kernels"]
    cin, cout, g = a["in_channels"], a["out_channels"], a["groups"]
    kh, kw = a["kernel_size"]
    s = x.mean(dim=(2, 3))                                             # [N, Cin]
    n = x.shape[0]
    if kind == "dy":
        tau = p["attention.temperature"]
        h = F.relu(s @ p["attention.fc1.weight"].t() + p["attention.fc1.bias"])
        pi = torch.softmax((h @ p["attention.fc2.weight"].t() + p["attention.fc2.bias"]) / tau,
                           dim=1)
        w = torch.einsum("nk,kocij->nocij", pi, p["weight"])
        b = pi @ p["bias"] if a["bias"] else None
        return _per_sample_conv(x, w, b, a)
    if kind == "condconv":
        if a.get("shared_routing", False):
            r = routing
        else:
            r = torch.sigmoid((s @ p["routing_fn.weight"].t() + p["routing_fn.bias"])
                              / p["routing_fn.temperature"])
        w = (r @ p["weight"]).view(n, cout, cin // g, kh, kw)
        b = r @ p["bias"] if a["bias"] else None
        return _per_sample_conv(x, w, b, a)
    if kind == "odconv":
        tau = p["attention.temperature"]
        hid = a["hidden"]
        u = s @ p["attention.fc.weight"].view(hid, cin).t()
        z = F.relu((u - p["attention.bn.running_mean"])
                   / torch.sqrt(p["attention.bn.running_var"] + 1e-5)
                   * p["attention.bn.weight"] + p["attention.bn.bias"])

        def head(name, act):
            key = f"attention.{name}_fc"
            if key + ".weight" not in p:
                return None
            wt = p[key + ".weight"]
            logits = (z @ wt.view(wt.shape[0], hid).t() + p[key + ".bias"]) / tau
            return act(logits)
        channel = head("channel", torch.sigmoid)                       # [N, Cin]
        filt = head("filter", torch.sigmoid)                           # [N, Cout] or None
        spatial = head("spatial", torch.sigmoid)                       # [N, kh*kw] or None
        kernel = head("kernel", lambda t: torch.softmax(t, dim=1))     # [N, K] or None
        if kernel is None:
            kernel = torch.ones(n, k, dtype=x.dtype)
        w = torch.einsum("nk,kocij->nocij", kernel, p["weight"])
        if spatial is not None:
            w = w * spatial.view(n, 1, 1, kh, kw)
        y = _per_sample_conv(x * channel.view(n, cin, 1, 1), w, None, a)
        if filt is not None:
            y = y * filt.view(n, cout, 1, 1)
        return y
    raise ValueError(f"unknown attention {kind!r}")


def _op(node, xs, p):
    op, a = node["op"], node["attrs"]
    x = xs[0]
    if op == "conv2d":
        return _conv(x, p["weight"], p.get("bias") if a["bias"] else None, a)
    if op == "dynamic_conv2d":
        return _dynamic_conv(x, p, a, xs[1] if len(xs) > 1 else None)
    if op == "condconv_routing":
        return torch.sigmoid((x.mean(dim=(2, 3)) @ p["weight"].t() + p["bias"])
                             / p["temperature"])
    if op == "batch_norm":
        c = a["num_features"]
        scale = p["weight"] / torch.sqrt(p["running_var"] + a["eps"])
        return (x - p["running_mean"].view(1, c, 1, 1)) * scale.view(1, c, 1, 1) + \
            p["bias"].view(1, c, 1, 1)
    if op == "linear":
        y = x @ p["weight"].t()
        return y + p["bias"] if a["bias"] else y
    acts = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
            "hardsigmoid": F.hardsigmoid, "sigmoid": torch.sigmoid, "silu": F.silu,
            "tanh": torch.tanh, "gelu": F.gelu}
    if op in acts:
        return acts[op](x)
    if op in ("add", "sub", "mul"):
        fa, fb = xs
        return fa + fb if op == "add" else fa - fb if op == "sub" else fa * fb
    if op == "cat":
        return torch.cat(xs, dim=1)
    if op == "flatten":
        return x.reshape(x.shape[0], -1)
    if op == "identity":
        return x
    if op == "max_pool2d":
        return F.max_pool2d(x, a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                            a["ceil_mode"])
    if op == "avg_pool2d":
        return F.avg_pool2d(x, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                            a["count_include_pad"])
    if op == "adaptive_avg_pool2d":
        return F.adaptive_avg_pool2d(x, a["output_size"])
    if op == "softmax":
        return torch.softmax(x, dim=1)
    if op == "log_softmax":
        return torch.log_softmax(x, dim=1)
    if op == "upsample":
        kw = {"mode": a["mode"]}
        if a["mode"] == "bilinear":
            kw["align_corners"] = a["align_corners"]
        if "size" in a:
            return F.interpolate(x, size=a["size"], **kw)
        return F.interpolate(x, scale_factor=a["scale_factor"], **kw)
    raise ValueError(f"unknown op {op!r}")


def run_graph(graph, tensors, inputs):
    """{output name: float64 tensor} of the graph on `inputs` ({input name: tensor}); checks
    every node's shape against the recorded one (same batch). Returns (outputs, names of the
    tensors read)."""
    values = {name: t.double() for name, t in inputs.items()}
    for i in graph["inputs"]:
        assert list(values[i["name"]].shape) == i["shape"], (i, values[i["name"]].shape)
    nodes = {n["name"]: n for n in graph["nodes"]}
    read = set()
    done = set(values)

    # each tensor belongs to the node whose name is its longest prefix before a "."
    params = {}
    for key, t in tensors.items():
        parts = key.split(".")
        for i in range(len(parts) - 1, 0, -1):
            owner = ".".join(parts[:i])
            if owner in nodes:
                params.setdefault(owner, {})[".".join(parts[i:])] = \
                    t.double() if t.is_floating_point() else t
                break

    def params_of(name):
        read.update(f"{name}.{k}" for k in params.get(name, {}))
        return params.get(name, {})

    pending = list(graph["nodes"])
    while pending:  # the reader orders nodes; do the same (a node may name a later one)
        progressed = False
        rest = []
        for n in pending:
            if all(v in done for v in n["inputs"]):
                y = _op(n, [values[v] for v in n["inputs"]], params_of(n["name"]))
                assert list(y.shape) == n["shape"], \
                    f"node {n['name']} ({n['op']}): computed {list(y.shape)}, recorded " \
                    f"{n['shape']}"
                values[n["name"]] = y
                done.add(n["name"])
                progressed = True
            else:
                rest.append(n)
        assert progressed, f"cycle or undefined value among {[n['name'] for n in rest]}"
        pending = rest
    return {o["name"]: values[o["value"]] for o in graph["outputs"]}, read


def check_file(path):
    """Runs the graph file's test; returns (max relative error, node count, op set)."""
    tensors, meta = read_safetensors(path)
    graph = json.loads(meta["dynconv.graph"])
    assert graph["format"] == "dynconv.graph" and graph["version"] == 1
    allowed = {"format", "version", "inputs", "nodes", "outputs", "test"}
    assert set(graph) <= allowed, set(graph) - allowed
    for n in graph["nodes"]:
        assert set(n) == {"name", "op", "inputs", "shape", "attrs"}, n
        assert n["op"] in eg.KNOWN_OPS, n["op"]
    names = [i["name"] for i in graph["inputs"]] + [n["name"] for n in graph["nodes"]]
    assert len(names) == len(set(names)), "a name used twice"
    test = graph["test"]
    inputs = {name: tensors[key] for name, key in test["inputs"].items()}
    for t in inputs.values():
        assert t.dtype == torch.float32
    outputs, read = run_graph(graph, tensors, inputs)
    worst = 0.0
    for name, key in test["outputs"].items():
        ref = tensors[key]
        assert ref.dtype == torch.float64, (key, ref.dtype)
        y = outputs[name]
        assert y.shape == ref.shape, (name, y.shape, ref.shape)
        err = float((y - ref).abs().max()) / max(float(ref.abs().max()), 1e-300)
        worst = max(worst, err)
    read |= set(test["inputs"].values()) | set(test["outputs"].values())
    unread = sorted(k for k in tensors if k not in read and
                    not k.endswith("num_batches_tracked"))
    assert not unread, f"tensors no node reads: {unread[:5]}"
    # every node is needed by an output
    needed = {o["value"] for o in graph["outputs"]}
    for n in reversed(graph["nodes"]):
        if n["name"] in needed:
            needed.update(n["inputs"])
    dead = [n["name"] for n in graph["nodes"] if n["name"] not in needed]
    assert not dead, f"nodes no output needs: {dead[:5]}"
    return worst, len(graph["nodes"]), sorted({n["op"] for n in graph["nodes"]}), meta


# ---------------------------------------------------------------------------------------------
# Error cases and small positive cases

def expect_error(model, x, *fragments):
    try:
        eg.graph_of(model, x)
    except eg.ExportError as e:
        text = str(e)
        for f in fragments:
            assert f in text, f"expected {f!r} in the error:\n{text}"
        assert "Supported:" in text, text
        return text
    raise AssertionError(f"{type(model).__name__}: no ExportError")


class TopK(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x).flatten(1)
        return torch.topk(y, 3).values  # the unsupported line


class Permute(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)  # permute here


class PadNonZero(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(F.pad(x, (1, 1, 1, 1), value=1.0))


class PadToRelu(nn.Module):
    def forward(self, x):
        return F.relu(F.pad(x, (1, 1, 1, 1)))


class PadToDynamic(nn.Module):
    def __init__(self):
        super().__init__()
        from dynconv_torch import DynamicConv2d
        self.conv = DynamicConv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(F.pad(x, (1, 1, 1, 1)))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x))


class Broadcast(nn.Module):
    def forward(self, x):
        return x * F.avg_pool2d(x, (1, 8))  # [N, C, H, 1] against [N, C, H, W]


class UnknownModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.lrn = nn.LocalResponseNorm(2)

    def forward(self, x):
        return self.lrn(x)


class ScaledConv(nn.Module):
    """A user class: a conv whose forward multiplies the weight by a scalar (not traceable
    as ops; an adapter makes it one conv2d with the scaled weight)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.scale = 0.5

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, padding=1)


class UsesScaledConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = ScaledConv()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return F.relu(self.bn(self.body(x)))


class InPlace(nn.Module):
    """x.add_(y) mutates x: the later use of x must see x + y; 'same' padding on an even
    kernel (the extra row and column at the bottom / right); getattr-shape reshape."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 2, padding="same")
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        u = self.a(x)
        v = self.b(x)
        u.add_(v)
        w = u * torch.sigmoid(v)
        out = torch.cat([u, w], 1).mean((-2, -1))
        return out.reshape(x.shape[0], -1), F.relu(u, inplace=True) + u


def _run_small(model, x):
    """The exported graph of a small model against its float64 forward, via a file."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        export(model, path, dtype="f32", example_input=x)
        return check_file(path)


def test_errors():
    x = torch.randn(2, 3, 8, 8)
    text = expect_error(TopK(), x, "'topk'", "torch.topk", "test_export_graph.py:",
                        "the unsupported line")
    expect_error(Permute(), x, "'permute'", "Tensor.permute", "permute here")
    expect_error(PadNonZero(), x, "'pad'", "value=1.0", "constant zero")
    expect_error(PadToRelu(), x, "'pad'", "'relu'")
    expect_error(PadToDynamic(), x, "'pad'", "attention would see the padded input")
    expect_error(Twice(), x, "'conv_1'", "called twice", "self.conv(self.conv(x))")
    expect_error(Broadcast(), x, "'mul'", "[2, 3, 8, 1]")
    expect_error(UnknownModule(), x, "'lrn'", "LocalResponseNorm", "no adapter")
    expect_error(UsesScaledConv(), x, "body_weight", "outside a supported module")
    return text


def test_adapter_and_inplace():
    def adapt(m, path):
        attrs = {"in_channels": 3, "out_channels": 4, "kernel_size": [3, 3], "stride": [1, 1],
                 "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "bias": False,
                 "source": "ScaledConv"}
        return "conv2d", attrs, {"weight": m.weight.detach() * m.scale}
    eg.register_adapter(ScaledConv, adapt)
    try:
        torch.manual_seed(1)
        m = UsesScaledConv().eval()
        with torch.no_grad():
            m.bn.running_mean.uniform_(-0.5, 0.5)
            m.bn.running_var.uniform_(0.5, 2)
        graph, tensors = eg.graph_of(m, torch.randn(2, 3, 8, 8))
        assert graph["nodes"][0]["name"] == "body" and "body.weight" in tensors, graph
        err_adapter = _run_small(m, torch.randn(2, 3, 8, 8))[0]
    finally:
        eg._ADAPTERS.pop(ScaledConv, None)
    torch.manual_seed(2)
    err_inplace, _, ops, _ = _run_small(InPlace().eval(), torch.randn(2, 3, 7, 9))
    g, _ = eg.graph_of(InPlace().eval(), torch.randn(2, 3, 7, 9))
    pads = [n["attrs"]["padding"] for n in g["nodes"] if n["name"] == "a"]
    assert pads == [[0, 1, 0, 1]], pads
    return err_adapter, err_inplace


def test_cli():
    """--module file.py:factory with a checkpoint; the old --model form still parses."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "net.py")
        with open(src, "w") as f:
            f.write("import torch.nn as nn\n"
                    "def factory():\n"
                    "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),\n"
                    "                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
                    "                         nn.Linear(8, 5))\n")
        sys.path.insert(0, d)
        try:
            import net  # noqa: E402
        finally:
            sys.path.remove(d)
        torch.manual_seed(3)
        model = net.factory()
        with torch.no_grad():
            model[1].running_var.uniform_(0.5, 2.0)
        ckpt = os.path.join(d, "ckpt.pt")
        torch.save({"model": model.state_dict()}, ckpt)
        out = os.path.join(d, "net.safetensors")
        cmd = [sys.executable, os.path.join(HERE, "export_safetensors.py"), "--module",
               f"{src}:factory", "--checkpoint", ckpt, "--input-shape", "2,3,10,12",
               "--out", out, "--dtype", "f32"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        err, _, _, meta = check_file(out)
        tensors, _ = read_safetensors(out)
        assert torch.equal(tensors["1.running_var"], model[1].running_var), "checkpoint"
        assert meta["kernels"] == "1" and "attention" not in meta, meta
        r = subprocess.run([sys.executable, os.path.join(HERE, "export_safetensors.py"),
                            "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "--model" in r.stdout and "--module" in r.stdout
        return err


def test_f16():
    """An F16 graph file: its test vectors are the function of the rounded weights it stores
    (the interpreter runs on those), so they still agree to 1e-6."""
    import make_graph_parity_data as mg
    model, x = mg.NETWORKS["odconv_net"]("odconv_net")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        meta = export(model, path, dtype="f16", example_input=x.float())
        tensors, _ = read_safetensors(path)
        assert meta["dtype"] == "F16" and tensors["od1.weight"].dtype == torch.float16
        assert tensors["dynconv.test.x"].dtype == torch.float32
        err = check_file(path)[0]
        assert err <= TOLERANCE, err
        return err


def test_zoo_cli():
    """The zoo form --model NAME --checkpoint (no graph) works as before."""
    import dynconv_torch as dt
    from export_safetensors import load_into
    with tempfile.TemporaryDirectory() as d:
        model = dt.build_model("dy_mobilenet_v3_small", num_classes=10)
        ckpt = os.path.join(d, "ckpt.pt")
        torch.save(model.state_dict(), ckpt)
        out = os.path.join(d, "zoo.safetensors")
        r = subprocess.run([sys.executable, os.path.join(HERE, "export_safetensors.py"),
                            "--model", "dy_mobilenet_v3_small", "--num-classes", "10",
                            "--checkpoint", ckpt, "--out", out, "--meta", "dataset=x"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        fresh = dt.build_model("dy_mobilenet_v3_small", num_classes=10)
        meta = load_into(fresh, out)
        assert "dynconv.graph" not in meta, sorted(meta)
        assert meta["model"] == "dy_mobilenet_v3_small" and meta["attention"] == "dy" and \
            meta["kernels"] == "4" and meta["dataset"] == "x" and meta["dtype"] == "F16", meta
        return "metadata " + ",".join(sorted(meta))


# ---------------------------------------------------------------------------------------------
# The peers' modules (tools/peer_modules.py look-alikes): tau, hidden, refusals, user adapters

def _file_of(model, x, dtype="f32"):
    """(graph, tensors, max relative error of the file's test) of an exported model."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.safetensors")
        export(model, path, dtype=dtype, example_input=x)
        err = check_file(path)[0]
        tensors, meta = read_safetensors(path)
    return json.loads(meta["dynconv.graph"]), tensors, err


def _error_with(graph, tensors, changed):
    """The interpreter's error against the file's test outputs with some tensors replaced."""
    t = dict(tensors)
    t.update(changed)
    inputs = {name: t[key] for name, key in graph["test"]["inputs"].items()}
    out, _ = run_graph(graph, t, inputs)
    return max(float((out[n] - t[k]).abs().max()) / max(1.0, float(t[k].abs().max()))
               for n, k in graph["test"]["outputs"].items())


def _calibrated(model, x):
    """The attentions' last layers scaled by their tau (as the parity data does), so that
    tau matters: make_graph_parity_data.randomize_small_ on x."""
    import make_graph_parity_data as mg
    gen = torch.Generator().manual_seed(7)
    return mg.randomize_small_(model, gen, x.double()).eval()


class KaijieshiPair(nn.Module):
    def __init__(self):
        super().__init__()
        import peer_modules as pm
        self.a = pm.Dynamic_conv2d(3, 16, 3, padding=1, K=4)                  # tau 34, hidden K
        self.b = pm.Dynamic_conv2d(16, 8, 3, padding=1, K=3, temperature=7)   # hidden 5

    def forward(self, x):
        return self.b(F.relu(self.a(x)))


def test_peer_tau():
    """tau kept where each peer keeps it (an attribute, a call's constant), stored in the file,
    and the file's test catches a lost tau (the interpreter with tau = 1 is far off)."""
    import make_graph_parity_data as mg
    import peer_modules as pm
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    m = _calibrated(KaijieshiPair(), x)
    g, t, err = _file_of(m, x.float())
    assert err <= TOLERANCE, f"the file's test: relative error {err:.3g}"
    assert float(t["a.attention.temperature"]) == 34.0, t["a.attention.temperature"]
    assert float(t["b.attention.temperature"]) == 7.0
    lost = _error_with(g, t, {k: torch.ones_like(v) for k, v in t.items()
                              if k.endswith("temperature")})
    assert lost > 1e-2, f"tau = 1 changes the outputs by only {lost:.2e}"
    m.a.update_temperature()                                     # 34 -> 31, an attribute
    g, t, err = _file_of(m, x.float())
    assert float(t["a.attention.temperature"]) == 31.0 and err <= TOLERANCE
    # OSVAI: update_temperature sets the attribute
    od = mg.OsvaiNet()
    od = _calibrated(od, torch.randn(4, 3, 16, 16, dtype=torch.float64))
    od.od4.update_temperature(3.0)
    g, t, err = _file_of(od, torch.randn(2, 3, 16, 16))
    assert [float(t[f"od{i}.attention.temperature"]) for i in (1, 2, 3, 4)] == \
        [4.0, 2.5, 1.5, 3.0] and err <= TOLERANCE
    od.od1.update_temperature(1.7)                  # not a float16 (nor float32) value
    g, t, err = _file_of(od, torch.randn(2, 3, 16, 16), dtype="f16")
    tau = t["od1.attention.temperature"]
    assert tau.dtype == torch.float64 and float(tau) == 1.7, tau        # stored unrounded
    assert t["od1.weight"].dtype == torch.float16 and err <= TOLERANCE, err
    # TArdelean: the call's constant (FixedArguments), a buffer of a wrapper, the default 1
    net = _calibrated(mg.ardelean_model(12.0), x)
    g, t, err = _file_of(net, x.float())
    taus = {k: float(v) for k, v in t.items() if k.endswith("temperature")}
    assert len(taus) == 5 and set(taus.values()) == {12.0} and err <= TOLERANCE, taus
    assert "layer1.layers.0.conv1.kernels_weights" not in t and \
        "layer1.layers.0.conv1.weight" in t, "names: the model's paths, the format's names"
    assert _error_with(g, t, {k: torch.ones_like(v) for k, v in t.items()
                              if k.endswith("temperature")}) > 1e-2

    class BufferTau(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.register_buffer("tau", torch.tensor(12.0))

        def forward(self, x):
            return self.net(x, self.tau)
    g, t, err = _file_of(BufferTau(net.model), x.float())
    assert {float(v) for k, v in t.items() if k.endswith("temperature")} == {12.0}
    assert err <= TOLERANCE and "tau" not in t

    class DefaultTau(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = pm.DynamicConvolution(3, 2, 3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x)                                  # forward()'s default: 1
    g, t, err = _file_of(DefaultTau().eval(), x.float())
    assert float(t["conv.attention.temperature"]) == 1.0 and err <= TOLERANCE
    # the raw network takes tau as an input: refused, with the way out
    expect_error(net.model, (x.float(), torch.tensor(12.0)), "'temperature'",
                 "computed at run time", "FixedArguments(model, temperature=value)")
    return f"tau 34 / 31 / 7 / 12 / 1 stored; tau lost: error {lost:.2f}"


def test_peer_hidden():
    """hidden read from each layer's weights, never from a model-wide setting."""
    import peer_modules as pm
    m = KaijieshiPair().eval()
    g, t = eg.graph_of(m, torch.randn(2, 3, 8, 8))
    hidden = {n["name"]: n["attrs"]["hidden"] for n in g["nodes"]
              if n["op"] == "dynamic_conv2d"}
    assert hidden == {"a": 4, "b": 5}, hidden                    # K for Cin 3, int(16/4) + 1
    assert list(t["b.attention.fc1.weight"].shape) == [5, 16]
    assert torch.equal(t["b.attention.fc1.bias"], torch.zeros(5)), "fc1 has no bias: zeros"
    # a layer whose attention was rebuilt with another width (a checkpoint's)
    m.b.attention.fc1 = nn.Conv2d(16, 9, 1, bias=False)
    m.b.attention.fc2 = nn.Conv2d(9, 3, 1, bias=False)
    g, t, err = _file_of(m, torch.randn(2, 3, 8, 8))
    b = [n for n in g["nodes"] if n["name"] == "b"][0]
    assert b["attrs"]["hidden"] == 9 and err <= TOLERANCE, b["attrs"]
    assert torch.equal(t["b.attention.fc2.bias"], torch.zeros(3))
    od = nn.Sequential(pm.ODConv2d(48, 16, 3, padding=1, reduction=0.5, kernel_num=2)).eval()
    g, _ = eg.graph_of(od, torch.randn(2, 48, 6, 6))
    assert g["nodes"][0]["attrs"]["hidden"] == 24, g["nodes"][0]["attrs"]
    dc = nn.Sequential(pm.DynamicConvolution(4, 8, 32, 8, 3)).eval()  # a root is traced into
    g, _ = eg.graph_of(dc, torch.randn(2, 32, 6, 6))
    assert g["nodes"][0]["attrs"]["hidden"] == 4
    return "kaijieshi7 4, 5, 9; OSVAI 24; TArdelean 4"


def test_peer_refusals():
    """A module named like a peer's class but built otherwise is refused with the reason."""
    import peer_modules as pm
    x = torch.randn(2, 16, 8, 8)
    m = pm.Dynamic_conv2d(16, 8, 3, padding=1)
    m.attention.bn = nn.BatchNorm2d(5)                 # the variant with a BN in the attention
    texts = [expect_error(nn.Sequential(m).eval(), x, "Dynamic_conv2d", "kaijieshi7",
                          "['avgpool', 'bn', 'fc1', 'fc2']", "register_adapter")]
    m = pm.Dynamic_conv2d(16, 8, 3, padding=1)
    m.attention.fc1 = nn.Conv2d(16, 5, 3, padding=1, bias=False)
    texts.append(expect_error(nn.Sequential(m).eval(), x, "attention.fc1", "not a plain 1x1"))
    m = pm.ODConv2d(16, 16, 3, padding=1)
    m.attention.bn.eps = 1e-3
    texts.append(expect_error(nn.Sequential(m).eval(), x, "OSVAI", "eps=0.001"))
    m = pm.ODConv2d(16, 16, 3, padding=1)
    m.update_temperature(0.0)
    texts.append(expect_error(nn.Sequential(m).eval(), x, "attention.temperature is 0.0"))
    m = pm.DynamicConvolution(4, 4, 16, 8, 3)
    m.attention.to_scores = nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Dropout(0.1),
                                          nn.Linear(4, 4))
    texts.append(expect_error(nn.Sequential(m).eval(), x, "TArdelean",
                              "not (Linear, ReLU, Linear)"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.routing_fn = nn.Linear(16, 4)
            self.conv = pm.CondConv2d(16, 8, 3, stride=2, padding="same")

        def forward(self, x):
            r = torch.sigmoid(self.routing_fn(x.mean((2, 3))))
            return self.conv(x, r)
    texts.append(expect_error(Block().eval(), x, "timm", "dynamic 'same'"))
    return f"{len(texts)} refusals"


class GatedConv(nn.Module):
    """A user's own dynamic convolution: gate = softmax(g2(relu(g1(mean x))) / tau), tau an
    argument of forward(); not recognised until registered."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.g1 = nn.Linear(cin, 6)
        self.g2 = nn.Linear(6, k)
        self.bank = nn.Parameter(torch.randn(k, cout, cin, 3, 3) * 0.2)

    def forward(self, x, tau):
        gate = F.softmax(self.g2(F.relu(self.g1(x.mean((2, 3))))) / tau, dim=1)
        w = torch.einsum("nk,koihw->noihw", gate, self.bank)
        return torch.cat([F.conv2d(x[i:i + 1], w[i], padding=1) for i in range(x.shape[0])])


class UsesGatedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.gated = GatedConv(3, 8, 3)

    def forward(self, x):
        return F.relu(self.gated(x, 0.5))


def test_user_dynamic_adapter():
    """register_adapter for a user's dynamic convolution, tau a constant argument."""
    def adapt(m, path, constants):
        k, cout, cin = m.bank.shape[:3]
        attrs = {"in_channels": cin, "out_channels": cout, "kernel_size": [3, 3],
                 "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
                 "bias": False, "attention": "dy", "kernels": k, "hidden": 6,
                 "source": "GatedConv"}
        return "dynamic_conv2d", attrs, {
            "weight": m.bank, "attention.fc1.weight": m.g1.weight,
            "attention.fc1.bias": m.g1.bias, "attention.fc2.weight": m.g2.weight,
            "attention.fc2.bias": m.g2.bias,
            "attention.temperature": torch.tensor(float(constants["tau"]))}
    torch.manual_seed(4)
    m = UsesGatedConv().eval()
    x = torch.randn(2, 3, 8, 8)
    expect_error(m, x, "could not trace")   # unregistered: traced into, which fails
    eg.register_adapter(GatedConv, adapt, constant_args=("tau",))
    try:
        g, t, err = _file_of(m, x)
    finally:
        eg._ADAPTERS.pop(GatedConv, None)
    assert [n["op"] for n in g["nodes"]] == ["dynamic_conv2d", "relu"], g["nodes"]
    assert float(t["gated.attention.temperature"]) == 0.5 and err <= TOLERANCE, err
    return f"max rel err {err:.2e}"


# ---------------------------------------------------------------------------------------------
# Chains: an adapter returning several nodes; timm's BatchNormAct2d and SelectAdaptivePool2d

class ConvAct(nn.Module):
    """A user class computing two ops: conv2d (its weight scaled) then hardswish."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3)
        self.scale = 2.0

    def forward(self, x):
        return F.hardswish(F.conv2d(x, self.weight * self.scale, padding=1))


class UsesConvAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.blk = ConvAct()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.blk(x).mean((2, 3)))


def _conv_act_attrs():
    return {"in_channels": 3, "out_channels": 6, "kernel_size": [3, 3], "stride": [1, 1],
            "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "bias": False}


def test_chain_adapter():
    """register_adapter with a chain: the first node named by the path with the tensors, the
    later ones `<path>.<suffix>` (default: the op; `_1` if taken); the file's test passes; a
    wrong chain is refused (tensors after the first node, a two-input op later, a shape that
    is not the module's)."""
    conv = ("conv2d", _conv_act_attrs(), None)

    def adapt(m, path):
        return [("conv2d", _conv_act_attrs(), {"weight": m.weight.detach() * m.scale}),
                ("hardswish", {}, {}, "act")]
    torch.manual_seed(5)
    m = UsesConvAct().eval()
    x = torch.randn(2, 3, 8, 8)
    eg.register_adapter(ConvAct, adapt)
    try:
        g, t, err = _file_of(m, x)
        assert [(n["name"], n["op"], n["inputs"]) for n in g["nodes"][:2]] == \
            [("blk", "conv2d", ["x"]), ("blk.act", "hardswish", ["blk"])], g["nodes"][:2]
        assert g["nodes"][1]["shape"] == [2, 6, 8, 8] and "blk.weight" in t
        assert err <= TOLERANCE, err
        # default suffixes (the op), a repeated one made unique
        eg.register_adapter(ConvAct, lambda m, path: [
            ("conv2d", _conv_act_attrs(), {"weight": m.weight.detach() * m.scale}),
            ("identity", {}, {}), ("identity", {}, {}), ("hardswish", {}, {})])
        g, _ = eg.graph_of(m, x)
        assert [n["name"] for n in g["nodes"][:4]] == \
            ["blk", "blk.identity", "blk.identity_1", "blk.hardswish"], g["nodes"][:4]
        w = m.blk.weight.detach()
        bad = [([conv[:2] + ({"weight": w},), ("relu", {}, {"w": w})],
                "only the first node of a chain"),
               ([conv[:2] + ({"weight": w},), ("add", {}, {})], "takes 2..2 inputs"),
               ([conv[:2] + ({"weight": w},), ("flatten", {}, {})],
                "computes the shape [2, 384], but the module computed [2, 6, 8, 8]"),
               ([], "non-empty list"),
               ([conv[:2] + ({"weight": w},), ("relu", {}, {}, "")], "name suffix"),
               ([conv[:2] + ({"weight": w},), ("relu", {}, {}, "weight")],
                "ambiguous")]
        for chain, fragment in bad:
            eg.register_adapter(ConvAct, lambda m, path, chain=chain: chain)
            expect_error(m, x, "'blk'", fragment)
    finally:
        eg._ADAPTERS.pop(ConvAct, None)
    return f"max rel err {err:.2e}; {len(bad)} bad chains refused"


class Swish(nn.Module):          # timm's own activation classes (by name, outside torch)
    def __init__(self, inplace=False):  # timm's activations take inplace
        super().__init__()

    def forward(self, x):
        return x * torch.sigmoid(x)


class GELU(nn.Module):
    def __init__(self, inplace=False):  # timm's activations take inplace
        super().__init__()

    def forward(self, x):
        return F.gelu(x)


class GELUTanh(nn.Module):
    def __init__(self, inplace=False):  # timm's activations take inplace
        super().__init__()

    def forward(self, x):
        return F.gelu(x, approximate="tanh")


class BnActNet(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = norm

    def forward(self, x):
        return self.bn(self.conv(x))


def _bn_act_net(norm):
    torch.manual_seed(6)
    m = BnActNet(norm)
    with torch.no_grad():
        if norm.affine:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        if norm.running_mean is not None:
            norm.running_mean.uniform_(-0.3, 0.3)
            norm.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_timm_batch_norm_act():
    """timm's BatchNormAct2d: batch_norm + `<path>.act` for every supported activation, one
    batch_norm for nn.Identity (apply_act=False); a Dropout drop, no num_batches_tracked, no
    affine are fine; an unsupported act / drop, no running statistics are refused."""
    import peer_modules as pm
    x = torch.randn(2, 3, 6, 6)
    acts = [(nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.Hardswish, "hardswish"),
            (nn.Hardsigmoid, "hardsigmoid"), (nn.Sigmoid, "sigmoid"), (nn.SiLU, "silu"),
            (nn.Tanh, "tanh"), (nn.GELU, "gelu"), (Swish, "silu"), (GELU, "gelu")]
    worst = 0.0
    for cls, op in acts:
        m = _bn_act_net(pm.BatchNormAct2d(8, act_layer=cls, inplace=False))
        g, t, err = _file_of(m, x)
        got = [(n["name"], n["op"], n["inputs"]) for n in g["nodes"]]
        assert got == [("conv", "conv2d", ["x"]), ("bn", "batch_norm", ["conv"]),
                       ("bn.act", op, ["bn"])], (cls, got)
        assert "pytorch-image-models" in g["nodes"][1]["attrs"]["source"], g["nodes"][1]["attrs"]
        assert err <= TOLERANCE, (cls, err)
        worst = max(worst, err)
    # the activation matters: the file's test sees it (relu against the identity)
    m = _bn_act_net(pm.BatchNormAct2d(8, act_layer=nn.ReLU))
    g, t, _ = _file_of(m, x)
    g["nodes"][2]["op"] = "identity"
    assert _error_with(g, t, {}) > 1e-2, "dropping the activation goes unnoticed"
    # apply_act=False / act_layer None: one batch_norm; a Dropout drop, no num_batches_tracked,
    # affine=False
    variants = [pm.BatchNormAct2d(8, apply_act=False), pm.BatchNormAct2d(8, act_layer=None),
                pm.BatchNormAct2d(8, act_layer=nn.SiLU, drop_layer=lambda: nn.Dropout(0.3)),
                pm.BatchNormAct2d(8, affine=False, act_layer=nn.ReLU)]
    no_count = pm.BatchNormAct2d(8, act_layer=nn.SiLU)
    no_count.register_buffer("num_batches_tracked", None)
    variants.append(no_count)
    for i, norm in enumerate(variants):
        m = _bn_act_net(norm)
        g, t, err = _file_of(m, x)
        ops = [n["op"] for n in g["nodes"]]
        assert ops == (["conv2d", "batch_norm"] if i < 2 else
                       ["conv2d", "batch_norm", "relu" if i == 3 else "silu"]), (i, ops)
        assert err <= TOLERANCE, (i, err)
        assert ("bn.num_batches_tracked" in t) == (i != 4), (i, sorted(t))
    # refused
    refusals = [(pm.BatchNormAct2d(8, act_layer=nn.LeakyReLU), "LeakyReLU",
                 "not one of the activations"),
                (pm.BatchNormAct2d(8, act_layer=nn.Mish), "Mish", "not one of the activations"),
                (pm.BatchNormAct2d(8, act_layer=GELUTanh), "GELUTanh",
                 "not one of the activations"),
                (pm.BatchNormAct2d(8, act_layer=nn.GELU, act_kwargs={"approximate": "tanh"},
                                   inplace=False), "approximate='tanh'", "erf form"),
                (pm.BatchNormAct2d(8, act_layer=nn.ReLU, drop_layer=nn.ReLU), "'drop' is ReLU",
                 "nn.Dropout"),
                (pm.BatchNormAct2d(8, track_running_stats=False), "running statistics",
                 "BatchNormAct2d")]
    extra = pm.BatchNormAct2d(8)
    extra.aa = nn.Identity()
    refusals.append((extra, "['aa', 'act', 'drop']", "expected exactly"))
    for norm, *fragments in refusals:
        expect_error(BnActNet(norm).eval(), x, "'bn'", "BatchNormAct2d",
                     "huggingface/pytorch-image-models", *fragments)
    return f"{len(acts)} activations, max rel err {worst:.2e}; {len(refusals)} refused"


def test_timm_select_pool():
    """timm's SelectAdaptivePool2d: 'avg' (+ flatten), 'fast', '' convert; 'max' is refused."""
    import peer_modules as pm

    class Head(nn.Module):
        def __init__(self, pool, flat):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3)
            self.global_pool = pm.SelectAdaptivePool2d(pool_type=pool, flatten=flat)

        def forward(self, x):
            return self.global_pool(self.conv(x))
    x = torch.randn(2, 3, 7, 7)
    cases = [("avg", True, ["adaptive_avg_pool2d", "flatten"], [2, 5]),
             ("avg", False, ["adaptive_avg_pool2d"], [2, 5, 1, 1]),
             ("fast", True, ["adaptive_avg_pool2d", "flatten"], [2, 5]),
             ("fast", False, ["adaptive_avg_pool2d"], [2, 5, 1, 1]),
             ("", True, ["flatten"], [2, 125]),
             ("", False, ["identity"], [2, 5, 5, 5])]
    worst = 0.0
    for pool, flat, ops, shape in cases:
        torch.manual_seed(8)
        g, _, err = _file_of(Head(pool, flat).eval(), x)
        nodes = g["nodes"][1:]
        assert [n["op"] for n in nodes] == ops and nodes[-1]["shape"] == shape, (pool, nodes)
        assert nodes[0]["name"] == "global_pool" and \
            [n["name"] for n in nodes[1:]] == ["global_pool.flatten"] * (len(nodes) - 1)
        worst = max(worst, err)
        assert err <= TOLERANCE, (pool, flat, err)
    expect_error(Head("max", True).eval(), x, "'global_pool'", "SelectAdaptivePool2d",
                 "pool_type is 'max'", "only average pooling")
    return f"{len(cases)} forms, max rel err {worst:.2e}; 'max' refused"

# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="an existing make_graph_parity_data.py --out directory")
    ap.add_argument("--only", help="comma-separated network names")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import make_graph_parity_data as mg
    names = list(mg.NETWORKS) if not args.only else args.only.split(",")
    failures = []

    def case(label, fn):
        t0 = time.time()
        try:
            result = fn()
            print(f"ok    {label:28s} {result}  ({time.time() - t0:.1f} s)", flush=True)
        except Exception:  # report every failure, then fail
            failures.append(label)
            print(f"FAIL  {label}\n{traceback.format_exc()}", flush=True)

    tmp = None
    data = args.data
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        data = tmp.name
    for name in names:
        def one(name=name):
            path = os.path.join(data, name + ".safetensors")
            if args.data is None:
                mg.write_network(name, data)
            err, count, ops, meta = check_file(path)
            assert err <= TOLERANCE, f"relative error {err:.3g} > {TOLERANCE}"
            size = os.path.getsize(path)
            text = f"max rel err {err:.2e}, {count} nodes, {size / 1e6:.2f} MB"
            if args.data is None:
                os.remove(path)
            if args.verbose:
                text += f", ops {','.join(ops)}, attention={meta.get('attention')}, " \
                        f"kernels={meta.get('kernels')}, temperature={meta.get('temperature')}"
            return text
        case(name, one)

    def errors():
        text = test_errors()
        if args.verbose:
            print(text)
        return "9 error cases"
    case("errors", errors)
    case("adapter, in-place, same pad",
         lambda: "max rel err %.2e, %.2e" % test_adapter_and_inplace())
    case("cli --module", lambda: f"max rel err {test_cli():.2e}")
    case("f16 graph file", lambda: f"max rel err {test_f16():.2e}")
    case("cli --model (zoo file)", test_zoo_cli)
    case("peers: tau", test_peer_tau)
    case("peers: hidden", test_peer_hidden)
    case("peers: refusals", test_peer_refusals)
    case("user dynamic adapter", test_user_dynamic_adapter)
    case("chain adapter", test_chain_adapter)
    case("timm BatchNormAct2d", test_timm_batch_norm_act)
    case("timm SelectAdaptivePool2d", test_timm_select_pool)
    if tmp is not None:
        tmp.cleanup()
    if failures:
        print(f"test_export_graph.py: {len(failures)} failed: {', '.join(failures)}")
        return 1
    print("test_export_graph.py: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
