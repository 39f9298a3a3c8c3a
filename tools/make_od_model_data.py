#!/usr/bin/env python3
"""Writes PyTorch reference data for whole ODConv models (OSVAI's od_resnet18, od_resnet50,
od_mobilenetv2).

    /usr/bin/python3 tools/make_od_model_data.py --out DIR [--quiet]

For every case below (a model of tools/dynconv_torch.py's build_od_model with K kernels per
ODConv and 10 classes, random weights) it writes

    DIR/<case>.safetensors      the model's state_dict exactly as model.state_dict() gives it,
                                in its order: F32 tensors (weights, BatchNorm statistics, the
                                0-d attention.temperature buffer of every ODConv) and I64
                                num_batches_tracked; metadata model (the zoo name), kernels,
                                num_classes
    DIR/<case>_io.safetensors   input [2, 3, 64, 64] F64 (every value a float16 value) and
                                logits [2, 10] F64: the eval-mode model run in float64 (a deep
                                copy, .double(), of the float32 weights above) on that input;
                                the same metadata

and DIR/manifest.txt, the case names one per line. The weights are such that a reader that
gets any part of ODConv wrong gets different logits:

- every BatchNorm (the model's and each attention's) has random eval statistics, set layer
  by layer in forward order on one float64 pass of a calibration batch (the test input and
  6 more samples): the model's running_mean = m + u sqrt(v), running_var = v r, with m, v
  the BN input's per-channel mean and variance, u in [-0.2, 0.2], r in [0.5, 2] (weight in
  [0.5, 1.5], bias in [-0.2, 0.2]), so that the activations stay O(1) through the depth;
  each attention's from the size of its fc output u (running_mean = mean(u) + 0.3 c N(0, 1),
  running_var = c^2 r, c^2 = var_samples(u) + rms(u)^2), weight 1 + 0.3 N(0, 1), bias
  0.5 + 0.3 N(0, 1) (a mostly active ReLU);
- the attention heads are set from their actual descriptor z on that batch: logits / tau with
  a constant part spread by 0.8 (sigmoid heads: normal) or 1.5 (kernel softmax: K evenly
  spaced values in a random order), as in tools/make_family_parity_data.py, and an
  input-dependent part of RMS about INPUT_GAIN (see there), so that on the test input no
  sigmoid is saturated or constant, the softmax is neither uniform nor one-hot, and every head
  depends on the input (the two samples' differ; all checked, every head of every layer);
- every ODConv has temperature TEMPERATURE (1.7): the logits with tau = 1 instead are checked
  to differ clearly, so that a reader ignoring the temperature fails;
- the K kernels of an ODConv share half of their variance (dynconv_torch.KERNEL_SHARED).

Also checked: the state_dict loads strictly into a fresh build_od_model, has exactly one
attention.temperature per ODConv and only F32 / I64 tensors; the parameter counts of all
build_od_model names at 1000 classes and K = 1, 4 equal OSVAI's (OD_OFFICIAL_PARAMS); the two
samples' logits differ. The summary reports the float32 forward's relative difference to the
float64 logits (max |l32 - l64| / max |l64|) as a sense of the tolerance a float32 reader needs.

Deterministic: each case seeds its own generator from its name (crc32), one thread.

DIR/manifest.txt exists only after a run that completed: it is deleted first thing (before
PyTorch is imported) and written last, so that a run that skips or fails never leaves an old
manifest behind.

Exit status: 0 on success; 77 (ctest's "skipped") if PyTorch cannot be imported, unless the
environment variable DYNCONV_REQUIRE_TORCH=1, then 1.
"""

import argparse
import copy
import math
import os
import sys
import zlib


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_guard import start, write_manifest  # noqa: E402

start(os.path.basename(__file__), ["torch"])
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dynconv_torch import (KERNEL_SHARED, OD_OFFICIAL_PARAMS, OD_ZOO, ODConv2d,  # noqa: E402
                           build_od_model, od_layers, random_input, save_safetensors,
                           set_temperature)

# case name, zoo name, K
# (od_resnet50 at K = 4 is left out: its state_dict is 360 MB of float32)
CASES = [("od_resnet18_K1", "od_resnet18", 1),
         ("od_resnet18_K4", "od_resnet18", 4),
         ("od_resnet50_K1", "od_resnet50", 1),
         ("od_mobilenet_v2_x1_0_K4", "od_mobilenet_v2_x1_0", 4),
         ("od_mobilenet_v2_x0_5_K4", "od_mobilenet_v2_x0_5", 4)]
NUM_CLASSES = 10
BATCH, HEIGHT, WIDTH = 2, 64, 64
CALIBRATION_BATCH = 8
TEMPERATURE = 1.7

# The attention logits z / tau: a constant part spread (std) by the heads' biases
# (make_family_parity_data.py's values), and an input-dependent part of RMS about INPUT_GAIN
# in units of the size of the descriptor z (not of its spread over the samples, which in deep
# layers is a small fraction of it). That gain is also how much an error of a layer's input,
# relative to its size, is amplified into the attention: over the 16 (ResNet-18) to 51
# (MobileNetV2) ODConvs, 0.8 relative to the samples' spread made MobileNetV2's float32
# forward differ from the float64 one by 50%, 0.5 relative to the size keeps it near 1e-5.
SOFTMAX_BIAS_SPREAD = 1.5
SIGMOID_BIAS_SPREAD = 0.8
INPUT_GAIN = 0.5
# every head's attention differs between the two test samples by more than this (max abs)
SAMPLE_DIFFERENCE = 1e-3


def rms(t):
    return float(t.pow(2).mean().sqrt())


def relative_error(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


class Randomizer:
    """Random values from one seeded generator, float64."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(int(seed))

    def normal(self, *shape):
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    def uniform(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=self.gen, dtype=torch.float64)


def head_weights(rnd, z, outputs, tau, bias_spread, even=False):
    """Weight [outputs, hidden] and bias [outputs] of a head fed with z [N, hidden] so that
    (weight z + bias) / tau has an input-dependent part of RMS about INPUT_GAIN (z in units of
    rms(z)) and a constant part (centred on the samples' mean) of standard deviation
    bias_spread: normal, or (even) evenly spaced values in a random order, so that a softmax
    over a few logits is never uniform by chance."""
    hid = z.shape[1]
    wt = rnd.normal(outputs, hid) / math.sqrt(hid)
    wt = wt * (INPUT_GAIN * tau / max(rms(z), 1e-3))
    if even and outputs > 1:
        levels = torch.linspace(-1.0, 1.0, outputs, dtype=torch.float64)
        levels = levels / levels.std(unbiased=False)
        constant = levels[torch.randperm(outputs, generator=rnd.gen)]
    else:
        constant = rnd.normal(outputs)
    b = bias_spread * tau * constant - wt @ z.mean(dim=0)
    return wt, b


def calibrate_batchnorm(rnd):
    """Pre-hook of a model BatchNorm2d: running statistics from the BN's actual input."""
    def hook(bn, inputs):
        x = inputs[0].detach().double()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-4)
        c = bn.num_features
        bn.running_mean.copy_(mean + rnd.uniform(-0.2, 0.2, c) * var.sqrt())
        bn.running_var.copy_(var * rnd.uniform(0.5, 2.0, c))
    return hook


def calibrate_odconv(rnd):
    """Pre-hook of an ODConv2d: its attention (fc, bn, the present heads) from its actual
    input x on the calibration batch."""
    def hook(layer, inputs):
        att = layer.attention
        x = inputs[0].detach().double()
        s = x.mean(dim=(2, 3))                                          # [N, Cin]
        cin, hid, tau = layer.in_channels, layer.hidden, float(att.temperature)
        att.fc.weight.copy_((rnd.normal(hid, cin) / math.sqrt(cin)).view(hid, cin, 1, 1))
        u = s @ att.fc.weight.view(hid, cin).t()                        # bn's input [N, hid]
        # bn's scale: the size of u (its spread over the samples plus its RMS), so that bn
        # does not amplify an error of u relative to its size
        scale2 = u.var(dim=0, unbiased=False) + rms(u) ** 2
        bn = att.bn
        bn.running_mean.copy_(u.mean(dim=0) + 0.3 * scale2.sqrt() * rnd.normal(hid))
        bn.running_var.copy_(rnd.uniform(0.5, 2.0, hid) * scale2)
        bn.weight.copy_(1.0 + 0.3 * rnd.normal(hid))
        bn.bias.copy_(0.5 + 0.3 * rnd.normal(hid))                      # mostly active ReLU
        z = att.descriptor(x).flatten(1)                                # [N, hid]
        for head in att.heads():
            fc = getattr(att, head + "_fc")
            if head == "kernel":
                wt, b = head_weights(rnd, z, fc.out_channels, tau, SOFTMAX_BIAS_SPREAD, True)
            else:
                wt, b = head_weights(rnd, z, fc.out_channels, tau, SIGMOID_BIAS_SPREAD)
            fc.weight.copy_(wt.view(*fc.weight.shape))
            fc.bias.copy_(b)
    return hook


def randomize(model, rnd, calibration_input):
    """Every parameter and BatchNorm buffer of a build_od_model result (made float64 here),
    then the calibration pass; see the module docstring. Returns the model (float64, eval)."""
    model.double().eval()
    attention_modules = {id(m) for _, layer in od_layers(model)
                         for m in layer.attention.modules()}
    filled = set()
    hooks = []
    with torch.no_grad():
        set_temperature(model, TEMPERATURE)
        for prefix, m in model.named_modules():
            if isinstance(m, ODConv2d):
                fan_in = m.weight[0, 0].numel()
                shared = rnd.normal(*m.weight.shape[1:]).unsqueeze(0)
                own = rnd.normal(*m.weight.shape)
                mixed = math.sqrt(KERNEL_SHARED) * shared + math.sqrt(1 - KERNEL_SHARED) * own
                m.weight.copy_(mixed * math.sqrt(2.0 / fan_in))
                filled.add(id(m.weight))
                hooks.append(m.register_forward_pre_hook(calibrate_odconv(rnd)))
                att = m.attention
                filled.update(id(p) for p in att.parameters())          # set by the hook
            elif id(m) in attention_modules:
                continue
            elif isinstance(m, nn.Conv2d):
                assert m.bias is None, prefix
                m.weight.copy_(rnd.normal(*m.weight.shape) * math.sqrt(2.0 / m.weight[0].numel()))
                filled.add(id(m.weight))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(rnd.normal(*m.weight.shape) / math.sqrt(m.in_features))
                m.bias.copy_(rnd.uniform(-0.2, 0.2, *m.bias.shape))
                filled.update((id(m.weight), id(m.bias)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(rnd.uniform(0.5, 1.5, m.num_features))
                m.bias.copy_(rnd.uniform(-0.2, 0.2, m.num_features))
                filled.update((id(m.weight), id(m.bias)))
                hooks.append(m.register_forward_pre_hook(calibrate_batchnorm(rnd)))
        missed = [n for n, p in model.named_parameters() if id(p) not in filled]
        assert not missed, f"randomize: no rule for {missed}"
        try:
            model(calibration_input)
        finally:
            for h in hooks:
                h.remove()
    return model


def attention_of(model, x):
    """{prefix of the ODConv: {head: attention [N, size]}} of the eval forward of x, and the
    logits."""
    found = {}
    hooks = []
    for prefix, layer in od_layers(model):
        def hook(m, inputs, output, prefix=prefix):
            found[prefix] = {k: v.detach() for k, v in output.items()}
        hooks.append(layer.attention.register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return found, logits


def check_attention(case, found):
    """Every head of every layer: sigmoids not saturated, not constant; softmax rows summing to
    1, neither uniform nor one-hot; each head different for the two samples (by more than
    SAMPLE_DIFFERENCE: it depends on the input). Returns a summary string."""
    lo, hi, kmax, kmin = 1.0, 0.0, 0.0, 1.0
    diffs = []
    for prefix, att in found.items():
        for head, a in att.items():
            where = f"{case}: {prefix} {head}"
            if head == "kernel":
                k = a.shape[1]
                assert torch.allclose(a.sum(dim=1), torch.ones_like(a[:, 0]), atol=1e-12), where
                assert float(a.max()) > 1.0 / k + 0.1, f"{where}: nearly uniform"
                assert float(a.max()) < 0.99, f"{where}: one-hot ({float(a.max()):.4f})"
                kmax = max(kmax, float(a.max()))
                kmin = min(kmin, float(a.max(dim=1).values.min()))
            else:
                assert float(a.min()) > 0.002 and float(a.max()) < 0.998, \
                    f"{where}: saturated ({float(a.min()):.4f} .. {float(a.max()):.4f})"
                assert float(a.std()) > 0.05, f"{where}: nearly constant"
                lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            diffs.append(float((a[1] - a[0]).abs().max()))
            assert diffs[-1] > SAMPLE_DIFFERENCE, \
                f"{where}: the same for both samples ({diffs[-1]:.2g})"
    diffs.sort()
    text = (f"sigmoids {lo:.3f}..{hi:.3f}, samples' heads differ by {diffs[0]:.3f} (median "
            f"{diffs[len(diffs) // 2]:.3f})")
    if kmax > 0:
        text += f", softmax max {kmin:.2f}..{kmax:.2f}"
    return text


def check_official_counts():
    """build_od_model's parameter counts at 1000 classes equal OSVAI's, for every name."""
    for name in OD_ZOO:
        for k in (1, 4):
            m = build_od_model(name, 1000, kernels=k)
            got = sum(p.numel() for p in m.parameters())
            want = OD_OFFICIAL_PARAMS[(name, k)]
            assert got == want, f"{name} K={k}: {got} parameters, OSVAI's has {want}"


def make_case(case, zoo_name, kernels):
    seed = zlib.crc32(case.encode())
    torch.manual_seed(seed)
    rnd = Randomizer(seed)
    x = random_input(BATCH, HEIGHT, WIDTH, rnd.gen)
    # the test input and further samples: the statistics the attentions are set from include
    # the test samples' own, so that they are in range for them by construction
    calibration = torch.cat([x, random_input(CALIBRATION_BATCH - BATCH, HEIGHT, WIDTH,
                                             rnd.gen)])
    model = randomize(build_od_model(zoo_name, NUM_CLASSES, kernels), rnd, calibration)
    model.float().eval()
    state = model.state_dict()
    n_od = len(od_layers(model))
    temps = [k for k in state if k.endswith("attention.temperature")]
    assert len(temps) == n_od, (case, len(temps), n_od)
    for name, t in state.items():
        want = torch.int64 if name.endswith("num_batches_tracked") else torch.float32
        assert t.dtype == want, (case, name, t.dtype)
    fresh = build_od_model(zoo_name, NUM_CLASSES, kernels)
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        m64 = copy.deepcopy(model).double().eval()
        found, logits = attention_of(m64, x)
        assert tuple(logits.shape) == (BATCH, NUM_CLASSES), logits.shape
        assert bool(torch.isfinite(logits).all()), case
        att_summary = check_attention(case, found)
        assert len(found) == n_od, case
        spread = float((logits[1] - logits[0]).abs().max()) / float(logits.abs().max())
        assert spread > 0.05, f"{case}: the two samples' logits nearly equal ({spread:.3g})"
        # a reader ignoring the temperature computes clearly different logits
        m_tau1 = copy.deepcopy(m64)
        set_temperature(m_tau1, 1.0)
        tau_effect = relative_error(m_tau1(x), logits)
        assert tau_effect > 0.05, f"{case}: temperature barely matters ({tau_effect:.3g})"
        f32_error = relative_error(model(x.float()).double(), logits)
    meta = {"model": zoo_name, "kernels": str(kernels), "num_classes": str(NUM_CLASSES)}
    io = {"input": x, "logits": logits.detach().clone()}
    summary = (f"{n_od} ODConvs, {sum(p.numel() for p in model.parameters())} params; "
               f"{att_summary}; logits |max| {float(logits.abs().max()):.3g}, samples differ "
               f"by {spread:.2f} rel; tau=1 changes them by {tau_effect:.2f} rel; float32 vs "
               f"float64 {f32_error:.2e} rel")
    return state, io, meta, summary, f32_error


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)  # deterministic float64 reductions
    names = [c[0] for c in CASES]
    assert len(set(names)) == len(names), "duplicate case names"
    check_official_counts()
    total = 0
    worst = 0.0
    for case, zoo_name, kernels in CASES:
        state, io, meta, summary, f32_error = make_case(case, zoo_name, kernels)
        worst = max(worst, f32_error)
        sizes = []
        for path, tensors in ((os.path.join(args.out, case + ".safetensors"), state),
                              (os.path.join(args.out, case + "_io.safetensors"), io)):
            save_safetensors(path, tensors, meta)
            sizes.append(os.path.getsize(path))
        total += sum(sizes)
        if not args.quiet:
            print(f"{case:26s} {sizes[0] / 1e6:6.2f} MB + io {sizes[1] / 1024:5.1f} KiB  "
                  f"{summary}")
    write_manifest(args.out, names)  # last
    print(f"make_od_model_data.py: {len(CASES)} cases, {total / 1e6:.2f} MB in {args.out}; "
          f"float32 logits within {worst:.1e} (relative) of float64")


if __name__ == "__main__":
    main()
