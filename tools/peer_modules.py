"""Test look-alikes of the dynamic-convolution modules people train with (not their code).

The exporter (tools/export_graph.py) recognises the public implementations' classes by their
class name and structure, because a user imports the peer's own class, not ours. These
classes stand in for them in this project's tests (tools/make_graph_parity_data.py,
tools/test_export_graph.py): each is written here from a reading of the peer's module and has
the same class name, constructor arguments, attribute names, state_dict names and shapes, and
forward semantics (what is computed, where tau divides, which layers have a bias), so that a
model built from the peer's class exports exactly as one built from these.

kaijieshi7/Dynamic-convolution-Pytorch, dynamic_conv.py:
    attention2d(in_planes, ratios, K, temperature)    GAP -> fc1 (1x1 conv, no bias) -> relu
        -> fc2 (1x1 conv with bias) -> softmax(. / temperature); hidden = K when in_planes == 3,
        else int(in_planes * ratios) + 1; temperature a plain attribute (34 by default, lowered
        by 3 per updata_temperature() call down to 1; the constructor wants tau % 3 == 1)
    Dynamic_conv2d(in_planes, out_planes, kernel_size, ratio=0.25, stride=1, padding=0,
        dilation=1, groups=1, bias=True, K=4, temperature=34)
        weight [K, Cout, Cin/g, k, k], bias [K, Cout]; the per-sample kernel pi @ weight
TArdelean/DynamicConvolution, dynamic_convolutions.py and models/common.py:
    TempModule                      an nn.Module whose forward takes (x, temperature)
    AttentionLayer(c_dim, hidden_dim, nof_kernels)   global_pooling = (AdaptiveAvgPool2d(1),
        Flatten()), to_scores = (Linear, ReLU, Linear); forward(x, temperature=1) =
        softmax(scores / temperature)
    DynamicConvolution(nof_kernels, reduce, in_channels, out_channels, kernel_size, stride=1,
        padding=0, dilation=1, groups=1, bias=True)      kernels_weights [K, Cout, Cin/g, kh, kw],
        kernels_bias [K, Cout]; hidden = max(1, in_channels // reduce); tau is an argument of
        forward(x, temperature=1), passed down by the network's forward(x, temperature)
    CustomSequential(*layers)       a Sequential passing the temperature to its TempModules
    (export one with export_graph.FixedArguments(net, temperature=tau): the file stores tau)
OSVAI/ODConv, modules/odconv.py:
    Attention(in_planes, out_planes, kernel_size, groups, reduction, kernel_num, min_channel)
        fc (1x1 conv, no bias) -> bn -> relu -> channel_fc / filter_fc / spatial_fc / kernel_fc
        (1x1 convs with bias; sigmoid, sigmoid, sigmoid, softmax of logits / temperature);
        filter_fc absent for a depthwise conv (in == groups == out), spatial_fc for 1x1,
        kernel_fc for kernel_num 1; temperature a plain attribute (1.0, update_temperature(t))
    ODConv2d(in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1, groups=1,
        reduction=0.0625, kernel_num=4)  weight [K, Cout, Cin/g, k, k], no bias
timm (huggingface/pytorch-image-models), timm/layers/cond_conv2d.py and
timm/models/_efficientnet_blocks.py:
    CondConv2d(in_channels, out_channels, kernel_size=3, stride=1, padding='', dilation=1,
        groups=1, bias=False, num_experts=4)    weight [E, Cout*Cin/g*kh*kw] (each expert
        flattened from [Cout, Cin/g, kh, kw]), bias [E, Cout]; forward(x, routing_weights):
        the routing [N, E] comes from the caller; padding '' (symmetric, PyTorch-style),
        'valid', 'same' (static when stride 1 and the dilated kernel is odd, else computed
        from the input size at run time: dynamic_padding) or numbers
    CondConvResidual(in_chs, out_chs, ...)     an inverted residual block: routing =
        sigmoid(routing_fn(flatten(adaptive_avg_pool2d(x, 1)))), routing_fn an nn.Linear,
        passed to conv_pw, conv_dw and conv_pwl; by default timm's older block layout (bn1 /
        bn2 / bn3 nn.BatchNorm2d, act1 / act2 separate, no SE), with norm_layer=BatchNormAct2d
        (and se_layer) its current one (bn1 / bn2 with the activation, bn3 without, se between
        conv_dw and conv_pwl)
timm/layers/norm_act.py, timm/layers/adaptive_avgmax_pool.py, timm/models/_efficientnet_blocks.py
(the layers of timm's EfficientNet-CondConv, efficientnet_cc_b0_4e ...):
    BatchNormAct2d(num_features, eps=1e-5, momentum=0.1, affine=True,
        track_running_stats=True, apply_act=True, act_layer=nn.ReLU, act_kwargs=None,
        inplace=True, drop_layer=None)          an nn.BatchNorm2d subclass (its state is
        BatchNorm2d's) whose forward is batch norm, then `drop` (nn.Identity unless a
        drop_layer is given), then `act` (nn.Identity when apply_act is False)
    SelectAdaptivePool2d(output_size=1, pool_type='fast', flatten=False)     `pool` then
        `flatten` (nn.Flatten(1) or nn.Identity): pool_type 'avg' an nn.AdaptiveAvgPool2d,
        'max' an nn.AdaptiveMaxPool2d, 'fast' FastAdaptiveAvgPool (x.mean((2, 3),
        keepdim=not flatten), which then flattens itself), '' nn.Identity
    SqueezeExcite(in_chs, rd_ratio=0.25, rd_channels=None, act_layer=nn.ReLU,
        gate_layer=nn.Sigmoid)                  x * gate(conv_expand(act1(conv_reduce(x.mean(
        (2, 3), keepdim=True))))), the 1x1 convs with a bias, rd_channels = round(in_chs *
        rd_ratio) (EfficientNet's builder passes rd_ratio = se_ratio / exp_ratio)
    DepthwiseSeparableConv(in_chs, out_chs, dw_kernel_size=3, stride=1, pad_type='',
        noskip=False, pw_act=False, act_layer=nn.ReLU, se_layer=None)   conv_dw (depthwise,
        no bias) -> bn1 (BatchNormAct2d) -> aa (nn.Identity) -> se -> conv_pw (1x1) -> bn2
        (activation only with pw_act), + the input when stride 1 and in_chs == out_chs
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["attention2d", "Dynamic_conv2d", "TempModule", "AttentionLayer",
           "DynamicConvolution", "CustomSequential", "Attention", "ODConv2d", "CondConv2d",
           "CondConvResidual", "BatchNormAct2d", "FastAdaptiveAvgPool", "SelectAdaptivePool2d",
           "SqueezeExcite", "DepthwiseSeparableConv"]


def _per_sample_conv(x, kernels, bias, stride, padding, dilation, groups):
    """conv2d of sample n with kernels[n] [Cout, Cin/g, kh, kw] (and bias[n] [Cout]): the batch
    folded into the groups of one convolution, as all four peers do."""
    n, _, h, w = x.shape
    cout = kernels.shape[1]
    y = F.conv2d(x.reshape(1, -1, h, w), kernels.reshape(n * cout, *kernels.shape[2:]),
                 None if bias is None else bias.reshape(-1), stride, padding, dilation,
                 groups * n)
    return y.reshape(n, cout, y.shape[-2], y.shape[-1])


# ---------------------------------------------------------------------------------------------
# kaijieshi7/Dynamic-convolution-Pytorch

class attention2d(nn.Module):  # noqa: N801 (the peer's class name)
    """kaijieshi7's kernel attention: softmax(fc2(relu(fc1(GAP(x)))) / temperature)."""

    def __init__(self, in_planes, ratios, K, temperature, init_weight=True):
        super().__init__()
        if temperature % 3 != 1:  # the peer asserts it: its schedule steps tau by 3 down to 1
            raise ValueError(f"temperature={temperature}: kaijieshi7's attention2d wants "
                             f"temperature % 3 == 1")
        hidden = K if in_planes == 3 else int(in_planes * ratios) + 1
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, K, 1, bias=True)
        self.temperature = temperature
        if init_weight:
            for conv in (self.fc1, self.fc2):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)

    def updata_temperature(self):  # the peer's spelling
        if self.temperature != 1:
            self.temperature -= 3

    def forward(self, x):
        z = F.relu(self.fc1(self.avgpool(x)))
        logits = self.fc2(z).view(x.size(0), -1)
        return F.softmax(logits / self.temperature, 1)


class Dynamic_conv2d(nn.Module):  # noqa: N801
    """kaijieshi7's dynamic convolution: K kernels mixed by attention2d, one grouped conv."""

    def __init__(self, in_planes, out_planes, kernel_size, ratio=0.25, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, K=4, temperature=34, init_weight=True):
        super().__init__()
        if in_planes % groups:
            raise ValueError("groups must divide in_planes")
        self.in_planes, self.out_planes = in_planes, out_planes
        self.kernel_size = kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.K = K
        self.attention = attention2d(in_planes, ratio, K, temperature)
        self.weight = nn.Parameter(torch.randn(K, out_planes, in_planes // groups, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(K, out_planes)) if bias else None
        if init_weight:
            for k in range(K):
                nn.init.kaiming_uniform_(self.weight[k])

    def update_temperature(self):
        self.attention.updata_temperature()

    def forward(self, x):
        pi = self.attention(x)                                          # [N, K]
        n = x.shape[0]
        kernels = (pi @ self.weight.view(self.K, -1)).view(
            n, self.out_planes, self.in_planes // self.groups, self.kernel_size,
            self.kernel_size)
        bias = None if self.bias is None else pi @ self.bias
        return _per_sample_conv(x, kernels, bias, self.stride, self.padding, self.dilation,
                                self.groups)


# ---------------------------------------------------------------------------------------------
# TArdelean/DynamicConvolution

def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class TempModule(nn.Module):
    """A module whose forward takes the temperature after the input."""

    def forward(self, x, temperature):
        return x


class AttentionLayer(nn.Module):
    """TArdelean's attention: softmax(Linear(relu(Linear(GAP(x)))) / temperature)."""

    def __init__(self, c_dim, hidden_dim, nof_kernels):
        super().__init__()
        self.global_pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.to_scores = nn.Sequential(nn.Linear(c_dim, hidden_dim), nn.ReLU(inplace=True),
                                       nn.Linear(hidden_dim, nof_kernels))

    def forward(self, x, temperature=1):
        scores = self.to_scores(self.global_pooling(x))
        return F.softmax(scores / temperature, dim=-1)


class DynamicConvolution(TempModule):
    """TArdelean's dynamic convolution; tau is the forward argument `temperature`."""

    def __init__(self, nof_kernels, reduce, in_channels, out_channels, kernel_size, stride=1,
                 padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.conv_args = {"stride": stride, "padding": padding, "dilation": dilation}
        self.nof_kernels = nof_kernels
        self.attention = AttentionLayer(in_channels, max(1, in_channels // reduce), nof_kernels)
        self.kernel_size = _pair(kernel_size)
        self.kernels_weights = nn.Parameter(torch.empty(nof_kernels, out_channels,
                                                        in_channels // groups,
                                                        *self.kernel_size))
        if bias:
            self.kernels_bias = nn.Parameter(torch.empty(nof_kernels, out_channels))
        else:
            self.register_parameter("kernels_bias", None)
        for k in range(nof_kernels):
            nn.init.kaiming_uniform_(self.kernels_weights[k], a=math.sqrt(5))
        if self.kernels_bias is not None:
            bound = 1 / math.sqrt(self.kernels_weights[0, 0].numel())
            nn.init.uniform_(self.kernels_bias, -bound, bound)

    def forward(self, x, temperature=1):
        n = x.shape[0]
        alphas = self.attention(x, temperature)                         # [N, K]
        kernels = (alphas.view(n, -1, 1, 1, 1, 1) * self.kernels_weights.unsqueeze(0)).sum(1)
        bias = None
        if self.kernels_bias is not None:
            bias = (alphas.view(n, -1, 1) * self.kernels_bias.unsqueeze(0)).sum(1)
        return _per_sample_conv(x, kernels, bias, groups=self.groups, **self.conv_args)


class CustomSequential(TempModule):
    """A Sequential that hands the temperature to the TempModules among its layers."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x, temperature):
        for layer in self.layers:
            x = layer(x, temperature) if isinstance(layer, TempModule) else layer(x)
        return x


# ---------------------------------------------------------------------------------------------
# OSVAI/ODConv

class Attention(nn.Module):
    """OSVAI's four attentions (channel, filter, spatial, kernel) of one pooled descriptor.
    forward(x) returns the four, 1.0 standing for an absent head."""

    def __init__(self, in_planes, out_planes, kernel_size, groups=1, reduction=0.0625,
                 kernel_num=4, min_channel=16):
        super().__init__()
        hidden = max(int(in_planes * reduction), min_channel)
        self.kernel_size = kernel_size
        self.kernel_num = kernel_num
        self.temperature = 1.0
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(hidden, in_planes, 1, bias=True)
        if not (in_planes == groups and in_planes == out_planes):  # else depthwise: no filter
            self.filter_fc = nn.Conv2d(hidden, out_planes, 1, bias=True)
        if kernel_size != 1:
            self.spatial_fc = nn.Conv2d(hidden, kernel_size * kernel_size, 1, bias=True)
        if kernel_num != 1:
            self.kernel_fc = nn.Conv2d(hidden, kernel_num, 1, bias=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def update_temperature(self, temperature):
        self.temperature = temperature

    def forward(self, x):
        z = self.relu(self.bn(self.fc(self.avgpool(x))))
        n, tau = x.size(0), self.temperature
        channel = torch.sigmoid(self.channel_fc(z).view(n, -1, 1, 1) / tau)
        filt = torch.sigmoid(self.filter_fc(z).view(n, -1, 1, 1) / tau) \
            if hasattr(self, "filter_fc") else 1.0
        spatial = 1.0
        if self.kernel_size != 1:
            spatial = torch.sigmoid(self.spatial_fc(z).view(
                n, 1, 1, 1, self.kernel_size, self.kernel_size) / tau)
        kernel = 1.0
        if self.kernel_num != 1:
            kernel = F.softmax(self.kernel_fc(z).view(n, -1, 1, 1, 1, 1) / tau, dim=1)
        return channel, filt, spatial, kernel


class ODConv2d(nn.Module):
    """OSVAI's omni-dimensional dynamic convolution (no bias)."""

    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, reduction=0.0625, kernel_num=4):
        super().__init__()
        self.in_planes, self.out_planes = in_planes, out_planes
        self.kernel_size = kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.kernel_num = kernel_num
        self.attention = Attention(in_planes, out_planes, kernel_size, groups=groups,
                                   reduction=reduction, kernel_num=kernel_num)
        self.weight = nn.Parameter(torch.randn(kernel_num, out_planes, in_planes // groups,
                                               kernel_size, kernel_size))
        for k in range(kernel_num):
            nn.init.kaiming_normal_(self.weight[k], mode="fan_out", nonlinearity="relu")

    def update_temperature(self, temperature):
        self.attention.update_temperature(temperature)

    def forward(self, x):
        channel, filt, spatial, kernel = self.attention(x)
        x = x * channel
        if self.kernel_size == 1 and self.kernel_num == 1:  # the peer's shortcut: one kernel
            y = F.conv2d(x, self.weight[0], None, self.stride, self.padding, self.dilation,
                         self.groups)
        else:
            mixed = (spatial * kernel * self.weight.unsqueeze(0)).sum(dim=1)
            y = _per_sample_conv(x, mixed, None, self.stride, self.padding, self.dilation,
                                 self.groups)
        return y * filt


# ---------------------------------------------------------------------------------------------
# timm

def _timm_padding(padding, kernel_size, stride, dilation):
    """(static padding, dynamic) as timm resolves a CondConv2d's padding argument."""
    if not isinstance(padding, str):
        return padding, False
    symmetric = ((stride - 1) + dilation * (kernel_size - 1)) // 2
    padding = padding.lower()
    if padding == "valid":
        return 0, False
    if padding == "same":
        if stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0:
            return symmetric, False
        return 0, True                      # TF 'SAME': computed from the input size
    return symmetric, False                 # '' and anything else: PyTorch-style symmetric


def _same_pad_amounts(size, kernel, stride, dilation):
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class CondConv2d(nn.Module):
    """timm's CondConv2d: experts mixed by the routing the caller passes."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding="",
                 dilation=1, groups=1, bias=False, num_experts=4):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        pad, dynamic = _timm_padding(padding, kernel_size, stride, dilation)
        self.dynamic_padding = dynamic
        self.padding = _pair(pad)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.num_experts = num_experts
        self.weight_shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = nn.Parameter(torch.empty(num_experts, math.prod(self.weight_shape)))
        if bias:
            self.bias_shape = (out_channels,)
            self.bias = nn.Parameter(torch.empty(num_experts, out_channels))
        else:
            self.register_parameter("bias", None)
        fan_in = math.prod(self.weight_shape[1:])
        with torch.no_grad():
            for e in range(num_experts):
                nn.init.kaiming_uniform_(self.weight[e].view(self.weight_shape), a=math.sqrt(5))
            if self.bias is not None:
                self.bias.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x, routing_weights):
        n = x.shape[0]
        kernels = (routing_weights @ self.weight).view(n, *self.weight_shape)
        bias = None if self.bias is None else routing_weights @ self.bias
        if self.dynamic_padding:
            (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
            top, bottom = _same_pad_amounts(x.shape[-2], kh, sh, dh)
            left, right = _same_pad_amounts(x.shape[-1], kw, sw, dw)
            x = F.pad(x, (left, right, top, bottom))
        return _per_sample_conv(x, kernels, bias, self.stride, self.padding, self.dilation,
                                self.groups)


class CondConvResidual(nn.Module):
    """timm's CondConv inverted residual block: one routing from the block input drives the
    three CondConv2d. norm_layer None: timm's older layout (bn and act separate, no SE);
    norm_layer=BatchNormAct2d: its current one (the activation inside bn1 / bn2, none in bn3,
    se_layer(mid, act_layer=act_layer) between conv_dw and conv_pwl)."""

    def __init__(self, in_chs, out_chs, dw_kernel_size=3, stride=1, pad_type="",
                 exp_ratio=1.0, num_experts=4, act_layer=nn.ReLU, noskip=False,
                 norm_layer=None, se_layer=None):
        super().__init__()
        mid = int(in_chs * exp_ratio)
        self.has_skip = in_chs == out_chs and stride == 1 and not noskip
        self.conv_pw = CondConv2d(in_chs, mid, 1, padding=pad_type, num_experts=num_experts)
        if norm_layer is None:
            self.bn1 = nn.BatchNorm2d(mid)
            self.act1 = act_layer(inplace=True)
        else:
            self.bn1 = norm_layer(mid, act_layer=act_layer)
        self.conv_dw = CondConv2d(mid, mid, dw_kernel_size, stride=stride, padding=pad_type,
                                  groups=mid, num_experts=num_experts)
        if norm_layer is None:
            self.bn2 = nn.BatchNorm2d(mid)
            self.act2 = act_layer(inplace=True)
        else:
            self.bn2 = norm_layer(mid, act_layer=act_layer)
        self.se = se_layer(mid, act_layer=act_layer) if se_layer is not None else nn.Identity()
        self.conv_pwl = CondConv2d(mid, out_chs, 1, padding=pad_type, num_experts=num_experts)
        self.bn3 = nn.BatchNorm2d(out_chs) if norm_layer is None else \
            norm_layer(out_chs, apply_act=False)
        self.routing_fn = nn.Linear(in_chs, num_experts)

    def forward(self, x):
        shortcut = x
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        routing_weights = torch.sigmoid(self.routing_fn(pooled))
        x = self.bn1(self.conv_pw(x, routing_weights))
        if hasattr(self, "act1"):
            x = self.act1(x)
        x = self.bn2(self.conv_dw(x, routing_weights))
        if hasattr(self, "act2"):
            x = self.act2(x)
        x = self.se(x)
        x = self.bn3(self.conv_pwl(x, routing_weights))
        if self.has_skip:
            x = x + shortcut
        return x


# ---------------------------------------------------------------------------------------------
# timm's layers around CondConv2d in its EfficientNet-CondConv networks

class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: an nn.BatchNorm2d (the same state) whose forward also applies
    `drop` and `act`."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, apply_act=True, act_layer=nn.ReLU, act_kwargs=None,
                 inplace=True, drop_layer=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        if act_layer is not None and apply_act:
            kwargs = dict(act_kwargs or {})
            if inplace:
                kwargs["inplace"] = True
            self.act = act_layer(**kwargs)
        else:
            self.act = nn.Identity()

    def forward(self, x):
        x = super().forward(x)      # timm repeats BatchNorm2d's forward here: the same numbers
        return self.act(self.drop(x))


class FastAdaptiveAvgPool(nn.Module):
    """timm's fast global average pooling: the mean over the pixels, kept 4-d unless
    flatten."""

    def __init__(self, flatten=False):
        super().__init__()
        self.flatten = flatten
        self.dim = (2, 3)

    def forward(self, x):
        return x.mean(self.dim, keepdim=not self.flatten)


class SelectAdaptivePool2d(nn.Module):
    """timm's SelectAdaptivePool2d for an NCHW input: pool then flatten (pool_type '', 'avg',
    'max', 'fast'; timm's 'avgmax' / 'catavgmax' are not in this look-alike)."""

    def __init__(self, output_size=1, pool_type="fast", flatten=False):
        super().__init__()
        self.pool_type = pool_type or ""
        self.flatten = nn.Flatten(1) if flatten else nn.Identity()
        if not pool_type:
            self.pool = nn.Identity()
        elif pool_type == "fast":
            if output_size != 1:
                raise ValueError("fast pooling needs output_size 1")
            self.pool = FastAdaptiveAvgPool(flatten)
            self.flatten = nn.Identity()
        elif pool_type == "avg":
            self.pool = nn.AdaptiveAvgPool2d(output_size)
        elif pool_type == "max":
            self.pool = nn.AdaptiveMaxPool2d(output_size)
        else:
            raise ValueError(f"pool_type {pool_type!r} is not in this look-alike")

    def forward(self, x):
        return self.flatten(self.pool(x))


class SqueezeExcite(nn.Module):
    """timm's EfficientNet squeeze-excite: x times a gate of its pooled channels."""

    def __init__(self, in_chs, rd_ratio=0.25, rd_channels=None, act_layer=nn.ReLU,
                 gate_layer=nn.Sigmoid):
        super().__init__()
        if rd_channels is None:
            rd_channels = round(in_chs * rd_ratio)
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x):
        s = self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True)))
        return x * self.gate(self.conv_expand(s))


class DepthwiseSeparableConv(nn.Module):
    """timm's depthwise-separable block (its convs nn.Conv2d without bias, its norms
    BatchNormAct2d)."""

    def __init__(self, in_chs, out_chs, dw_kernel_size=3, stride=1, pad_type="",
                 noskip=False, pw_act=False, act_layer=nn.ReLU, se_layer=None):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs and not noskip
        pad, dynamic = _timm_padding(pad_type, dw_kernel_size, stride, 1)
        if dynamic:
            raise ValueError("timm's dynamic 'same' padding is not in this look-alike")
        self.conv_dw = nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride, pad, groups=in_chs,
                                 bias=False)
        self.bn1 = BatchNormAct2d(in_chs, act_layer=act_layer)
        self.aa = nn.Identity()
        self.se = se_layer(in_chs, act_layer=act_layer) if se_layer is not None else \
            nn.Identity()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = BatchNormAct2d(out_chs, act_layer=act_layer, apply_act=pw_act)
        self.drop_path = nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.se(self.aa(self.bn1(self.conv_dw(x))))
        x = self.bn2(self.conv_pw(x))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x
