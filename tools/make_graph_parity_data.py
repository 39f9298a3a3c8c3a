#!/usr/bin/env python3
"""Writes graph files (docs/graph_format.md) of assorted PyTorch networks for the C++ reader's
tests (include/dynconv/graph_file.hpp), each with its float64 test vectors.

    /usr/bin/python3 tools/make_graph_parity_data.py --out DIR [--only a,b] [--quiet]

For every network of NETWORKS it writes DIR/<name>.safetensors with
tools/export_safetensors.py's export(model, path, dtype="f32", example_input=x): the graph JSON
under the metadata key "dynconv.graph", the tensors its nodes read (F32; num_batches_tracked
I64), the test input `dynconv.test.x` [2, C, H, W] (F32, every value a float16 value: N(0, 1)
plus a per-sample, per-channel offset, so that the two samples' attentions differ) and the
test outputs `dynconv.test.<output>` (F64, the model in float64 on that input). Then
DIR/manifest.txt, the names one per line, is written last (parity_guard deletes it first
thing, so a run that fails or skips never leaves a stale one behind).

The networks (random weights; every BatchNorm's running statistics calibrated on one pass of a
calibration batch that includes the test input, so that no BatchNorm is the identity and the
activations stay O(1) through the depth):

    custom                  1x28x28: a dynamic conv, a residual add, a squeeze-excite (mean ->
                            conv1x1 -> relu -> conv1x1 -> hardsigmoid -> mul), a max pool, an
                            asymmetric F.pad folded into a conv, bilinear upsampling, avg pool,
                            sub, torch.cat, a view-flatten; outputs {"logits", "features"}
    dy_net                  3x32x32: DynamicConv2d dense / depthwise / 1x1 / grouped (3, 5),
                            temperatures 1, 0.75, 2, 1.5; relu6, gelu, hardswish, tanh, nearest
                            Upsample, F.max_pool2d, Flatten, Dropout, log_softmax
    condconv_net            3x32x32: two timm-CondConvResidual-like blocks (a CondConvRouting
                            of the block input feeding three CondConv2d(shared_routing=True)),
                            one CondConv2d with its own routing (tau 1.5)
    odconv_net              3x32x32: ODConv2d with all four heads, depthwise, 1x1 K=1, grouped
                            K=2 (tau 1.7 and 1); outputs (logits, softmax)
    kaijieshi7_net, ardelean_net, osvai_odconv_net, timm_condconv_net
                            3x32x32: the peers' classes (tools/peer_modules.py look-alikes),
                            converted by the exporter: kaijieshi7's Dynamic_conv2d (tau 34, 31,
                            4, 1; hidden K for the 3-channel input, int(Cin*ratio)+1 else; fc2
                            without bias in one layer), TArdelean's DynamicConvolution in a
                            ResNet taking forward(x, temperature), exported as
                            FixedArguments(net, temperature=30), OSVAI's ODConv2d (tau 4, 2.5,
                            1.5, 1 set by update_temperature; hidden 16 and 24), timm's
                            CondConv2d in CondConvResidual blocks and after a routing the
                            network computes
    timm_efficientnet_condconv
                            3x32x32: timm's EfficientNet-CondConv in miniature (its layers'
                            look-alikes: BatchNormAct2d, DepthwiseSeparableConv, CondConvResidual
                            with SqueezeExcite, SelectAdaptivePool2d), BatchNormAct2d exported
                            as batch_norm + silu chains
    resnet50, mobilenet_v3_large, efficientnet_b0
                            torchvision, 3x64x64, 1000 classes (dynconv_torch.randomize_;
                            resnet50's residual branches damped, see _damp_residuals_)
    the 14 zoo models (ZOO: mobilenet_v2_x1_0 ... dy_resnet18)
                            dynconv_torch.build_model, 3x64x64, 1000 classes, stored as F16
                            (the dynamic ResNets with K = 2 kernels, to keep the files small)

Each line of the summary gives the file size, the time, and how far PyTorch's own float32
forward is from the float64 reference (max |y32 - y64| / max(1, max |y64|), the measure of
`dynconv-run --verify`), a sense of what a float32 reader can reach.

Deterministic: each network seeds its own generator from its name (crc32), one thread.

Exit status: 0 on success; 77 (ctest's "skipped") if PyTorch or torchvision cannot be imported,
unless the environment variable DYNCONV_REQUIRE_TORCH=1, then 1.
"""

import argparse
import copy
import functools
import math
import os
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

if __name__ == "__main__":
    from parity_guard import start  # noqa: E402
    start(os.path.basename(__file__), ["torch", "torchvision"])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import dynconv_torch as dt  # noqa: E402
from dynconv_torch import CondConv2d, CondConvRouting, DynamicConv2d, ODConv2d  # noqa: E402
from export_graph import FixedArguments  # noqa: E402
from export_safetensors import export, read_safetensors  # noqa: E402
from parity_guard import write_manifest  # noqa: E402
import peer_modules as pm  # noqa: E402

BATCH = 2
CALIBRATION_EXTRA = 6   # calibration batch = the test input + this many more samples
DTYPE = "f32"


# ---------------------------------------------------------------------------------------------
# The small networks

class CustomNet(nn.Module):
    """A bit of everything the exporter converts, on a 1-channel 28x28 input."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.conv1 = DynamicConv2d(16, 16, 3, padding=1, bias=False, kernels=4)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding="same", bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.se_fc1 = nn.Conv2d(16, 4, 1)
        self.se_fc2 = nn.Conv2d(4, 16, 1)
        self.pool = nn.MaxPool2d(2)
        self.branch_conv = nn.Conv2d(16, 8, 3, bias=True)
        self.branch_bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        s = self.stem(x)
        r = F.relu(self.bn1(self.conv1(s)))
        r = self.bn2(self.conv2(r))
        r += s                                                  # the residual
        r = F.relu(r)
        g = r.mean((2, 3), keepdim=True)                        # squeeze-excite
        g = F.hardsigmoid(self.se_fc2(F.relu(self.se_fc1(g))))
        r = r * g
        down = self.pool(r)                                     # 14x14
        b = self.branch_bn(self.branch_conv(F.pad(down, (1, 1, 2, 0))))   # top 2, bottom 0
        u = F.avg_pool2d(F.interpolate(b, scale_factor=2, mode="bilinear",
                                       align_corners=False), 2)
        b = F.silu(torch.sub(b, u))
        features = F.hardswish(self.head(torch.cat([down, b], dim=1)))
        p = F.adaptive_avg_pool2d(features, 1)
        logits = self.fc(p.view(p.size(0), -1))
        return {"logits": logits, "features": features}


class DyNet(nn.Module):
    """DynamicConv2d in several geometries."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.d1 = DynamicConv2d(16, 24, 3, padding=1, bias=True, kernels=4)
        self.bn1 = nn.BatchNorm2d(24)
        self.act1 = nn.GELU()
        self.d2 = DynamicConv2d(24, 24, 3, stride=2, padding=1, groups=24, bias=False,
                                kernels=3)
        self.bn2 = nn.BatchNorm2d(24)
        self.act2 = nn.Hardswish()
        self.d3 = DynamicConv2d(24, 32, 1, bias=True, kernels=4, reduction=2)
        self.bn3 = nn.BatchNorm2d(32)
        self.d4 = DynamicConv2d(32, 32, (3, 5), padding=(1, 2), groups=2, bias=False,
                                kernels=2)
        self.bn4 = nn.BatchNorm2d(32)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                  nn.Linear(32, classes))
        self.temperatures = {"d1": 1.0, "d2": 0.75, "d3": 2.0, "d4": 1.5}

    def forward(self, x):
        x = self.stem(x)                                        # 16x16
        x = self.act1(self.bn1(self.d1(x)))
        x = self.act2(self.bn2(self.d2(x)))                     # 8x8
        y = torch.tanh(self.bn3(self.d3(x)))
        x = y + self.bn4(self.d4(y))
        x = F.max_pool2d(self.up(x), 3, stride=2, padding=1)    # 16x16 -> 8x8
        return F.log_softmax(self.head(x), dim=1)


class CondConvBlock(nn.Module):
    """timm's CondConvResidual in miniature: one routing computed from the block input drives
    the expand 1x1, the depthwise 3x3 and the project 1x1 CondConv2d."""

    def __init__(self, cin, cout, expand=4, experts=4, stride=1, temperature=1.0):
        super().__init__()
        mid = cin * expand
        self.has_residual = stride == 1 and cin == cout
        self.routing_fn = CondConvRouting(cin, experts, temperature)
        self.conv_pw = CondConv2d(cin, mid, 1, experts=experts, shared_routing=True)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = CondConv2d(mid, mid, 3, stride=stride, padding=1, groups=mid,
                                  experts=experts, shared_routing=True)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv_pwl = CondConv2d(mid, cout, 1, experts=experts, shared_routing=True)
        self.bn3 = nn.BatchNorm2d(cout)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        routing = self.routing_fn(x)
        y = self.act(self.bn1(self.conv_pw(x, routing)))
        y = self.act(self.bn2(self.conv_dw(y, routing)))
        y = self.bn3(self.conv_pwl(y, routing))
        if self.has_residual:
            y = y + x
        return y


class CondConvNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.SiLU(inplace=True))
        self.block1 = CondConvBlock(16, 16, expand=4, experts=4, temperature=1.0)
        self.block2 = CondConvBlock(16, 24, expand=3, experts=3, stride=2, temperature=0.8)
        self.conv = CondConv2d(24, 32, 3, padding=1, bias=True, experts=4, temperature=1.5)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ODConvNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        od = dict(reduction=0.25, min_hidden=4)
        self.od1 = ODConv2d(16, 32, 3, stride=2, padding=1, kernels=4, temperature=1.7, **od)
        self.bn1 = nn.BatchNorm2d(32)
        self.od2 = ODConv2d(32, 32, 3, padding=1, groups=32, kernels=4, **od)    # depthwise
        self.bn2 = nn.BatchNorm2d(32)
        self.od3 = ODConv2d(32, 48, 1, kernels=1, temperature=1.7, **od)         # 1x1, K = 1
        self.bn3 = nn.BatchNorm2d(48)
        self.od4 = ODConv2d(48, 48, 3, padding=1, groups=2, kernels=2, **od)
        self.bn4 = nn.BatchNorm2d(48)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(48, classes)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn1(self.od1(x)))
        x = F.relu(self.bn2(self.od2(x)))
        x = self.bn3(self.od3(x))
        x = F.relu(x + self.bn4(self.od4(x)))
        logits = self.fc(torch.flatten(self.pool(x), 1))
        return logits, self.softmax(logits)


# ---------------------------------------------------------------------------------------------
# The peers' modules (tools/peer_modules.py look-alikes of the classes people train with),
# converted by the exporter; every tau differs from 1 somewhere, and the attentions are
# calibrated in units of tau, so that a tau lost or misread changes the outputs

class Kaijieshi7Net(nn.Module):
    """kaijieshi7's Dynamic_conv2d: the 3-channel input's hidden = K rule, hidden
    int(Cin * ratio) + 1 per layer, tau 34 (the peer's default), 31, 4, 1, fc2 without a bias
    in one layer (the peer's first version)."""

    def __init__(self, classes=10):
        super().__init__()
        self.d1 = pm.Dynamic_conv2d(3, 16, 3, stride=2, padding=1, K=4)       # hidden 4, tau 34
        self.bn1 = nn.BatchNorm2d(16)
        self.d2 = pm.Dynamic_conv2d(16, 24, 3, padding=1, bias=False, K=4, temperature=31)
        self.bn2 = nn.BatchNorm2d(24)                                          # hidden 5
        self.d3 = pm.Dynamic_conv2d(24, 32, 1, ratio=0.5, K=3, temperature=4)  # hidden 13
        self.bn3 = nn.BatchNorm2d(32)
        self.d4 = pm.Dynamic_conv2d(32, 32, 3, padding=1, groups=4, K=2, temperature=1)
        self.d4.attention.fc2 = nn.Conv2d(self.d4.attention.fc1.out_channels, 2, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.d1(x)))                        # 16x16
        x = F.relu(self.bn2(self.d2(x)))
        x = F.hardswish(self.bn3(self.d3(x)))
        x = F.relu(x + self.bn4(self.d4(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ArdeleanBlock(pm.TempModule):
    """TArdelean's ResNet BasicBlock: forward(x, temperature), the shortcut a
    CustomSequential (empty: the identity)."""

    def __init__(self, cin, cout, stride, kernels, bias=False):
        super().__init__()
        self.conv1 = pm.DynamicConvolution(kernels, 4, cin, cout, 3, stride=stride, padding=1,
                                           bias=bias)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = pm.DynamicConvolution(kernels, 4, cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = pm.CustomSequential()
        if stride != 1 or cin != cout:
            self.shortcut = pm.CustomSequential(
                pm.DynamicConvolution(kernels, 4, cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout))

    def forward(self, x, temperature):
        out = F.relu(self.bn1(self.conv1(x, temperature)))
        out = self.bn2(self.conv2(out, temperature))
        out += self.shortcut(x, temperature)
        return F.relu(out)


class ArdeleanNet(pm.TempModule):
    """TArdelean's ResNet in miniature: the first conv static, forward(x, temperature)."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = pm.CustomSequential(ArdeleanBlock(16, 16, 1, 4, bias=True))
        self.layer2 = pm.CustomSequential(ArdeleanBlock(16, 32, 2, 3))
        self.linear = nn.Linear(32, classes)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x, temperature):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out, temperature), temperature)
        out = self.avg_pool(out)
        return F.log_softmax(self.linear(out.view(out.size(0), -1)), dim=1)


def ardelean_model(temperature=30.0):
    """ArdeleanNet exported as its trainer evaluates it: at one tau (TArdelean anneals from
    30), fixed by export_graph.FixedArguments."""
    return FixedArguments(ArdeleanNet(), temperature=temperature)


class OsvaiNet(nn.Module):
    """OSVAI's ODConv2d (hidden = max(int(Cin * reduction), 16)): all four heads, depthwise,
    1x1 with K = 1 (the peer's one-kernel path), grouped with hidden 24; tau (a plain
    attribute, set by update_temperature) 4, 2.5, 1.5 and 1."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.od1 = pm.ODConv2d(16, 32, 3, stride=2, padding=1, reduction=0.25, kernel_num=4)
        self.bn1 = nn.BatchNorm2d(32)
        self.od2 = pm.ODConv2d(32, 32, 3, padding=1, groups=32, kernel_num=4)   # depthwise
        self.bn2 = nn.BatchNorm2d(32)
        self.od3 = pm.ODConv2d(32, 48, 1, kernel_num=1)                         # 1x1, K = 1
        self.bn3 = nn.BatchNorm2d(48)
        self.od4 = pm.ODConv2d(48, 48, 3, padding=1, groups=2, reduction=0.5, kernel_num=2)
        self.bn4 = nn.BatchNorm2d(48)
        self.fc = nn.Linear(48, classes)
        self.od1.update_temperature(4.0)
        self.od2.update_temperature(2.5)
        self.od3.update_temperature(1.5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn1(self.od1(x)))
        x = F.relu(self.bn2(self.od2(x)))
        x = self.bn3(self.od3(x))
        x = F.relu(x + self.bn4(self.od4(x)))
        return self.fc(x.mean((2, 3)))


class TimmCondConvNet(nn.Module):
    """timm's CondConv2d: two CondConvResidual blocks (routing = sigmoid(routing_fn(pooled
    input)) for their three convs; padding 'same' resolved statically, '' with stride 2 and a
    5x5 depthwise), then a CondConv2d with a bias whose routing the network computes from
    x.mean((2, 3))."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.SiLU(inplace=True))
        self.block1 = pm.CondConvResidual(16, 16, exp_ratio=4, num_experts=4, pad_type="same",
                                          act_layer=nn.SiLU)
        self.block2 = pm.CondConvResidual(16, 24, dw_kernel_size=5, stride=2, exp_ratio=3,
                                          num_experts=3)
        self.routing_fn = nn.Linear(24, 4)
        self.conv = pm.CondConv2d(24, 32, 3, padding=1, bias=True, num_experts=4)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        routing = torch.sigmoid(self.routing_fn(x.mean((2, 3))))
        x = F.relu(self.bn(self.conv(x, routing)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TimmCondConvEfficientNet(nn.Module):
    """timm's EfficientNet-CondConv (efficientnet_cc_b0_4e) in miniature, from timm's layers
    (tools/peer_modules.py look-alikes): conv_stem + bn1 (BatchNormAct2d, SiLU), blocks =
    stages of a DepthwiseSeparableConv with squeeze-excite and a residual, then two
    CondConvResidual blocks in timm's current layout (BatchNormAct2d, SiLU; squeeze-excite
    with SiLU and a sigmoid gate, rd = the block input's channels / 4; 4 experts; the first
    stride 2 with a 3x3 depthwise, the second 5x5 with the residual), conv_head + bn2
    (BatchNormAct2d, SiLU), global_pool (SelectAdaptivePool2d 'avg', flatten), dropout (eval),
    classifier. The paths are timm's (blocks.1.0.conv_pw, bn1.act ...)."""

    def __init__(self, classes=10):
        super().__init__()
        act = nn.SiLU
        self.conv_stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)    # 16x16
        self.bn1 = pm.BatchNormAct2d(16, act_layer=act)
        se = functools.partial(pm.SqueezeExcite, rd_ratio=0.25)
        self.blocks = nn.Sequential(
            nn.Sequential(pm.DepthwiseSeparableConv(16, 16, act_layer=act, se_layer=se)),
            nn.Sequential(
                pm.CondConvResidual(16, 24, stride=2, exp_ratio=4, num_experts=4,  # 8x8
                                    act_layer=act, norm_layer=pm.BatchNormAct2d,
                                    se_layer=functools.partial(pm.SqueezeExcite,
                                                               rd_ratio=0.25 / 4)),
                pm.CondConvResidual(24, 24, dw_kernel_size=5, exp_ratio=3, num_experts=4,
                                    act_layer=act, norm_layer=pm.BatchNormAct2d,
                                    se_layer=functools.partial(pm.SqueezeExcite,
                                                               rd_ratio=0.25 / 3))))
        self.conv_head = nn.Conv2d(24, 64, 1, bias=False)
        self.bn2 = pm.BatchNormAct2d(64, act_layer=act)
        self.global_pool = pm.SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.drop_rate = 0.2
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        x = self.blocks(self.bn1(self.conv_stem(x)))
        x = self.global_pool(self.bn2(self.conv_head(x)))
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)


# ---------------------------------------------------------------------------------------------
# Random weights for the small networks

GAIN = 0.6            # input-dependent part of an attention logit (RMS, in units of tau)
SOFTMAX_SPREAD = 1.5  # constant part of a softmax logit (std, units of tau)
SIGMOID_SPREAD = 0.8  # constant part of a sigmoid logit


def _rms(t):
    return float(t.pow(2).mean().sqrt())


class _Rand:
    def __init__(self, gen):
        self.gen = gen

    def normal(self, *shape):
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    def uniform(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=self.gen, dtype=torch.float64)

    def kernels(self, k, shape, fan_in):
        """k kernels of `shape` sharing dt.KERNEL_SHARED of their variance, He-scaled."""
        shared = self.normal(*shape).unsqueeze(0)
        own = self.normal(k, *shape)
        a = dt.KERNEL_SHARED
        return (math.sqrt(a) * shared + math.sqrt(1 - a) * own) * math.sqrt(2.0 / fan_in)

    def head(self, z, outputs, tau, spread):
        """weight [outputs, hid], bias [outputs] with (weight z + bias) / tau = an
        input-dependent part of RMS about GAIN plus a constant part spread by `spread`."""
        hid = z.shape[1]
        w = self.normal(outputs, hid) / math.sqrt(hid)
        zc = z - z.mean(dim=0)
        scale = max(_rms(zc @ w.t()), 0.1 * _rms(z @ w.t()), 1e-6)
        w = w * (GAIN * tau / scale)
        b = spread * tau * self.normal(outputs) - w @ z.mean(dim=0)
        return w, b


def _routing_hook(rnd):
    def hook(m, inputs):
        s = inputs[0].detach().double().mean(dim=(2, 3))
        w, b = rnd.head(s, m.experts, float(m.temperature), SIGMOID_SPREAD)
        m.weight.copy_(w.to(m.weight.dtype))
        m.bias.copy_(b.to(m.bias.dtype))
    return hook


def _calibrate_od_attention(rnd, att, x, cin, hid, tau, heads):
    """An ODConv attention (this project's or OSVAI's: fc, bn and the `<name>_fc` heads of
    `heads`, the names present) calibrated on the layer input x: fc scaled to the pooled input,
    the BatchNorm's statistics near the batch's, each head in units of tau."""
    s = x.mean(dim=(2, 3))
    fc = rnd.normal(hid, cin) / math.sqrt(cin) / max(_rms(s), 1e-6)
    att.fc.weight.copy_(fc.view(hid, cin, 1, 1).to(att.fc.weight.dtype))
    u = s @ att.fc.weight.double().view(hid, cin).t()
    scale2 = u.var(dim=0, unbiased=False) + _rms(u) ** 2
    att.bn.running_mean.copy_(u.mean(dim=0) + 0.3 * scale2.sqrt() * rnd.normal(hid))
    att.bn.running_var.copy_(rnd.uniform(0.5, 2.0, hid) * scale2)
    att.bn.weight.copy_(1.0 + 0.3 * rnd.normal(hid))
    att.bn.bias.copy_(0.5 + 0.3 * rnd.normal(hid))
    att.bn.num_batches_tracked.fill_(100)
    xd = x.to(att.fc.weight.dtype).mean(dim=(2, 3), keepdim=True)
    z = F.relu(att.bn(att.fc(xd))).double().flatten(1)
    for name in heads:
        head = getattr(att, name + "_fc")
        spread = SOFTMAX_SPREAD if name == "kernel" else SIGMOID_SPREAD
        w, b = rnd.head(z, head.out_channels, tau, spread)
        head.weight.copy_(w.view(*head.weight.shape).to(head.weight.dtype))
        head.bias.copy_(b.to(head.bias.dtype))


def _odconv_hook(rnd):
    def hook(layer, inputs):
        att = layer.attention
        _calibrate_od_attention(rnd, att, inputs[0].detach().double(), layer.in_channels,
                                layer.hidden, float(att.temperature), att.heads())
    return hook


def _bn_hook(rnd):
    def hook(bn, inputs):
        x = inputs[0].detach().double()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-4)
        c = bn.num_features
        bn.running_mean.copy_(mean + rnd.uniform(-0.2, 0.2, c) * var.sqrt())
        bn.running_var.copy_(var * rnd.uniform(0.5, 2.0, c))
        bn.num_batches_tracked.fill_(100)
    return hook


def _dy_peer_hook(rnd):
    """kaijieshi7's Dynamic_conv2d and TArdelean's DynamicConvolution: fc1 (a 1x1 conv or a
    Linear, with or without a bias) and fc2 calibrated as dynconv_torch's, fc2 in units of the
    layer's tau (kaijieshi7: attention.temperature; TArdelean: the forward argument)."""
    def hook(layer, inputs):
        att = layer.attention
        if isinstance(layer, pm.DynamicConvolution):
            fc1, fc2 = att.to_scores[0], att.to_scores[2]
            tau = float(inputs[1]) if len(inputs) > 1 else 1.0
        else:
            fc1, fc2, tau = att.fc1, att.fc2, float(att.temperature)
        x = inputs[0].detach().double()
        s = x.mean(dim=(2, 3))
        hid, cin = fc1.weight.shape[0], fc1.weight.shape[1]
        w1 = rnd.normal(hid, cin) / math.sqrt(cin) / max(_rms(x), 1e-6)
        u = s @ w1.t()
        if fc1.bias is not None:   # every hidden unit active for some calibration sample
            b1 = torch.maximum(rnd.uniform(-0.5, 0.5, hid), 0.25 - u.max(dim=0).values)
            fc1.bias.copy_(b1.to(fc1.bias.dtype))
        else:                      # no bias: a unit active for no sample is turned round
            b1 = torch.zeros(hid, dtype=torch.float64)
            w1 = w1 * torch.where(u.max(dim=0).values > 0, 1.0, -1.0).unsqueeze(1)
        fc1.weight.copy_(w1.view(fc1.weight.shape).to(fc1.weight.dtype))
        z = F.relu(s @ fc1.weight.double().view(hid, cin).t() + b1)
        w2, b2 = rnd.head(z, fc2.weight.shape[0], tau, SOFTMAX_SPREAD)
        fc2.weight.copy_(w2.view(fc2.weight.shape).to(fc2.weight.dtype))
        if fc2.bias is not None:
            fc2.bias.copy_(b2.to(fc2.bias.dtype))
    return hook


def _osvai_hook(rnd):
    """OSVAI's ODConv2d: as _odconv_hook, its heads found by attribute."""
    def hook(layer, inputs):
        att = layer.attention
        heads = [n for n in ("channel", "filter", "spatial", "kernel")
                 if getattr(att, n + "_fc", None) is not None]
        _calibrate_od_attention(rnd, att, inputs[0].detach().double(), layer.in_planes,
                                att.fc.out_channels, float(att.temperature), heads)
    return hook


def _linear_routing_hook(rnd):
    """timm's routing_fn (an nn.Linear of the pooled input, then a sigmoid): as
    _routing_hook, tau 1."""
    def hook(m, inputs):
        s = inputs[0].detach().double()
        w, b = rnd.head(s, m.out_features, 1.0, SIGMOID_SPREAD)
        m.weight.copy_(w.to(m.weight.dtype))
        m.bias.copy_(b.to(m.bias.dtype))
    return hook


def randomize_small_(model, gen, calibration, temperatures=None):
    """Every parameter and buffer of a small network (any of the family layers, Conv2d,
    Linear, BatchNorm2d), the attentions and BatchNorm statistics calibrated in forward order
    on one pass of `calibration`."""
    rnd = _Rand(gen)
    owned = set()    # modules inside a family layer, set by its own rule
    hooks = []
    with torch.no_grad():
        for prefix, m in model.named_modules():
            if isinstance(m, DynamicConv2d):
                owned.update(id(s) for s in m.attention.modules())
                m.weight.copy_(rnd.kernels(m.kernels, m.weight.shape[1:],
                                           m.weight[0, 0].numel()))
                if m.bias is not None:
                    m.bias.copy_(rnd.uniform(-0.2, 0.2, *m.bias.shape))
                tau = (temperatures or {}).get(prefix)
                if tau is not None:
                    m.attention.temperature.fill_(tau)
                hooks.append(m.register_forward_pre_hook(dt._calibrate_attention(gen)))
            elif isinstance(m, CondConv2d):
                fan_in = math.prod(m.expert_shape[1:])
                m.weight.copy_(rnd.kernels(m.experts, m.expert_shape, fan_in)
                               .reshape(m.weight.shape))
                if m.bias is not None:
                    m.bias.copy_(rnd.uniform(-0.2, 0.2, *m.bias.shape))
            elif isinstance(m, CondConvRouting):
                hooks.append(m.register_forward_pre_hook(_routing_hook(rnd)))
            elif isinstance(m, ODConv2d):
                owned.update(id(s) for s in m.attention.modules())
                m.weight.copy_(rnd.kernels(m.kernels, m.weight.shape[1:],
                                           m.weight[0, 0].numel()))
                hooks.append(m.register_forward_pre_hook(_odconv_hook(rnd)))
            elif isinstance(m, (pm.Dynamic_conv2d, pm.DynamicConvolution, pm.ODConv2d)):
                owned.update(id(s) for s in m.attention.modules())
                w = m.kernels_weights if isinstance(m, pm.DynamicConvolution) else m.weight
                b = m.kernels_bias if isinstance(m, pm.DynamicConvolution) else \
                    getattr(m, "bias", None)
                w.copy_(rnd.kernels(w.shape[0], w.shape[1:], w[0, 0].numel()))
                if b is not None:
                    b.copy_(rnd.uniform(-0.2, 0.2, *b.shape))
                hook = _osvai_hook(rnd) if isinstance(m, pm.ODConv2d) else _dy_peer_hook(rnd)
                hooks.append(m.register_forward_pre_hook(hook))
            elif isinstance(m, pm.CondConv2d):
                m.weight.copy_(rnd.kernels(m.num_experts, m.weight_shape,
                                           math.prod(m.weight_shape[1:]))
                               .reshape(m.weight.shape))
                if m.bias is not None:
                    m.bias.copy_(rnd.uniform(-0.2, 0.2, *m.bias.shape))
            elif id(m) in owned:
                continue
            elif isinstance(m, nn.Linear) and prefix.split(".")[-1] == "routing_fn":
                hooks.append(m.register_forward_pre_hook(_linear_routing_hook(rnd)))
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(rnd.normal(*m.weight.shape) * math.sqrt(2.0 / m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(rnd.uniform(-0.2, 0.2, *m.bias.shape))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(rnd.normal(*m.weight.shape) / math.sqrt(m.in_features))
                m.bias.copy_(rnd.uniform(-0.2, 0.2, *m.bias.shape))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(rnd.uniform(0.5, 1.5, m.num_features))
                m.bias.copy_(rnd.uniform(-0.2, 0.2, m.num_features))
                hooks.append(m.register_forward_pre_hook(_bn_hook(rnd)))
        model.eval()
        try:
            model(calibration.to(next(model.parameters()).dtype))
        finally:
            for h in hooks:
                h.remove()
    return model


# ---------------------------------------------------------------------------------------------
# The list

def _seed(name):
    return zlib.crc32(name.encode("utf-8"))


def _inputs(gen, channels, size):
    x = dt.random_input(BATCH, size, size, gen, channels)
    calibration = torch.cat([x, dt.random_input(CALIBRATION_EXTRA, size, size, gen, channels)])
    return x, calibration


def _small(cls, channels, size, temperatures=None):
    def build(name):
        gen = torch.Generator().manual_seed(_seed(name))
        torch.manual_seed(_seed(name))
        model = cls()
        x, calibration = _inputs(gen, channels, size)
        taus = temperatures if temperatures is not None else getattr(model, "temperatures",
                                                                     None)
        randomize_small_(model, gen, calibration, taus)
        return model.eval(), x
    return build


def _damp_residuals_(model, factor, gen, calibration):
    """Scales the last BatchNorm of every ResNet residual branch (Bottleneck.bn3,
    BasicBlock.bn2) by `factor`, then recalibrates every BatchNorm's running statistics on
    `calibration`. With random weights each branch is as large as the identity path and a
    float32 forward drifts by about 1.4x per block (resnet50: 6e-5 of the logits, next to
    dynconv-run --verify's 1e-4); trained ResNets have small branches, and 0.3 brings
    resnet50's float32 error to about 4e-6."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    rnd = _Rand(gen)
    with torch.no_grad():
        for m in model.modules():
            last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 \
                if isinstance(m, BasicBlock) else None
            if last is not None:
                last.weight.mul_(factor)
                last.bias.mul_(factor)
        hooks = [m.register_forward_pre_hook(_bn_hook(rnd)) for m in model.modules()
                 if isinstance(m, nn.BatchNorm2d)]
        model.eval()
        try:
            model(calibration.float())
        finally:
            for h in hooks:
                h.remove()


def _torchvision(arch, damp=None):
    def build(name):
        import torchvision.models as tvm
        gen = torch.Generator().manual_seed(_seed(name))
        torch.manual_seed(_seed(name))
        model = getattr(tvm, arch)(weights=None)
        x, calibration = _inputs(gen, 3, 64)
        dt.randomize_(model, _seed(name), input_size=(64, 64), calibration_input=calibration)
        if damp is not None:
            _damp_residuals_(model, damp, gen, calibration)
        return model.eval(), x
    return build


def _zoo(zoo_name, **kwargs):
    def build(name):
        gen = torch.Generator().manual_seed(_seed(name))
        torch.manual_seed(_seed(name))
        model = dt.build_model(zoo_name, **kwargs)
        x, calibration = _inputs(gen, 3, 64)
        dt.randomize_(model, _seed(name), input_size=(64, 64), calibration_input=calibration)
        return model.eval(), x
    return build


# name -> builder(name) -> (model in eval mode, float64 test input [2, C, H, W])
NETWORKS = {
    "custom": _small(CustomNet, 1, 28, {"conv1": 1.5}),
    "dy_net": _small(DyNet, 3, 32),
    "condconv_net": _small(CondConvNet, 3, 32),
    "odconv_net": _small(ODConvNet, 3, 32),
    "kaijieshi7_net": _small(Kaijieshi7Net, 3, 32),
    "ardelean_net": _small(ardelean_model, 3, 32),
    "osvai_odconv_net": _small(OsvaiNet, 3, 32),
    "timm_condconv_net": _small(TimmCondConvNet, 3, 32),
    "timm_efficientnet_condconv": _small(TimmCondConvEfficientNet, 3, 32),
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large"),
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "resnet50": _torchvision("resnet50", damp=0.3),
}
# The 14 zoo models (include/dynconv/models/zoo.hpp's zoo_names(), in its order), stored as F16
# to keep the files small (the test vectors are computed from the stored weights); the dynamic
# ResNets with K = 2 kernels (dy_resnet18 at K = 4 would be 90 MB even in F16).
ZOO = ("mobilenet_v2_x1_0", "mobilenet_v2_x0_75", "mobilenet_v2_x0_5", "mobilenet_v2_x0_35",
       "mobilenet_v3_small", "resnet10", "resnet18")
ZOO = ZOO + tuple("dy_" + n for n in ZOO)
NETWORKS.update({n: _zoo(n, kernels=2) if n.startswith("dy_resnet") else _zoo(n) for n in ZOO})
ZOO_DTYPE = "f16"


def _float32_error(model, x, path):
    """max |y32 - y64| / max(1, max |y64|) over the outputs: PyTorch's float32 forward
    against the file's float64 test vectors."""
    tensors, _ = read_safetensors(path)
    with torch.no_grad():
        y = model(x.float())
    if isinstance(y, torch.Tensor):
        y = {"output": y}
    elif isinstance(y, (tuple, list)):
        y = {f"output{i}": v for i, v in enumerate(y)}
    worst = 0.0
    for key, v in y.items():
        ref = tensors["dynconv.test." + key]
        err = float((v.double() - ref).abs().max()) / max(1.0, float(ref.abs().max()))
        worst = max(worst, err)
    return worst


def write_network(name, out_dir):
    """Builds, exports and checks one network; returns a summary dict."""
    t0 = time.time()
    model, x = NETWORKS[name](name)
    path = os.path.join(out_dir, name + ".safetensors")
    export(model, path, {"network": name, "seed": str(_seed(name))},
           dtype=ZOO_DTYPE if name in ZOO else DTYPE,
           example_input=x.float())
    seconds = time.time() - t0
    return {"name": name, "path": path, "bytes": os.path.getsize(path), "seconds": seconds,
            "float32_error": _float32_error(copy.deepcopy(model), x, path)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--only", help="comma-separated network names (default: all)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic reductions; the machine is shared
    names = list(NETWORKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in NETWORKS]
        if unknown:
            parser.error(f"unknown network(s) {unknown}; known: {', '.join(NETWORKS)}")
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    total = 0
    for name in names:
        s = write_network(name, args.out)
        total += s["bytes"]
        if not args.quiet:
            print(f"{name:24s} {s['bytes'] / 1e6:7.2f} MB  {s['seconds']:5.1f} s  torch float32 "
                  f"vs float64 {s['float32_error']:.1e}", flush=True)
    write_manifest(args.out, names)  # last
    print(f"make_graph_parity_data.py: {len(names)} networks, {total / 1e6:.1f} MB, "
          f"{time.time() - t0:.1f} s, in {args.out}")


if __name__ == "__main__":
    main()
