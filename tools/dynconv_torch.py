"""PyTorch reference of dynconv's dynamic convolution, and a minimal safetensors writer.

This module is the oracle the C++ library is tested against (tools/make_parity_data.py) and is
meant to be imported by later tools. It follows /work/shared/docs/paper.md:

    s      = GAP(x)                       [N, Cin]
    z      = fc2(relu(fc1(s)))            [N, K]
    pi     = softmax(z / tau)             [N, K]
    W~_n   = sum_k pi[n, k] W_k,  b~_n = sum_k pi[n, k] b_k
    y_n    = conv2d(x_n, W~_n, b~_n, stride, padding, dilation, groups)

The forward pass loops over the samples and calls F.conv2d once per sample with that sample's
aggregated kernel: slow, but obviously right. For training, `layer.batched = True` (or
set_batched(model)) switches forward() to the same function computed with one matmul and one
grouped conv per batch (convolve_batched: the batch folded into the groups). Parameter names
match the C++ library and its weight files:

    weight                  [K, Cout, Cin/groups, kh, kw]
    bias                    [K, Cout]                       (only with bias=True)
    attention.fc1.weight    [hidden, Cin]
    attention.fc1.bias      [hidden]
    attention.fc2.weight    [K, hidden]
    attention.fc2.bias      [K]
    attention.temperature   scalar buffer (tau)

Then the rest of the dynamic-convolution family (/work/shared/docs/family.md), batched (the
batch folded into the groups of one conv2d, conv_per_sample_kernels), with the state names of
the public implementations so that their weights load as they are
(tools/make_family_parity_data.py checks them against per-sample loops):

    CondConvRouting(Cin, E, tau)    r = sigmoid(Linear(GAP(x)) / tau) [N, E]: weight [E, Cin],
                                    bias [E] (an nn.Linear's names), temperature (0-d buffer)
    CondConv2d(...)                 timm's CondConv2d: weight [E, Cout*Cin/g*kh*kw] (each expert
                                    flattened from [Cout, Cin/g, kh, kw]), bias [E, Cout];
                                    its own routing_fn, or (shared_routing) the block's routing
                                    passed to forward(x, routing); rows of r do not sum to 1
    ODConv2d(...), ODConvAttention  OSVAI's ODConv: weight [K, Cout, Cin/g, kh, kw] and
                                    attention.{fc, bn, channel_fc, filter_fc, spatial_fc,
                                    kernel_fc, temperature}, heads absent where OSVAI omits them

The second half builds the model zoo of the paper's results table in PyTorch (the static
structure from torchvision, dynamic convolutions swapped in at the same attribute by a policy),
and randomises a model's weights for the model parity test (tools/make_model_parity_data.py):

    ZOO, DY_ZOO, ALL_MODELS         the 7 static names, their 7 "dy_" variants, all 14
    build_model(name, ...)          torchvision structure; for dy_ names the policy's convs are
                                    DynamicConv2d, so a state_dict has the interchange names
                                    P.weight [K, Cout, Cin/g, kh, kw], P.bias [K, Cout] (only
                                    where the static conv had one), P.attention.fc1.weight
                                    [hidden, Cin], .fc1.bias, .fc2.weight [K, hidden], .fc2.bias,
                                    P.attention.temperature (scalar buffer)
    POLICIES                        "default", "all_but_stem", "pointwise_only", "none"
    set_batched(model, True)        every DynamicConv2d of the model runs the batched forward
    check_batched()                 the batched forward and its gradients vs the per-sample loop
    randomize_(model, seed)         random weights, BN statistics and attention FCs, every value
                                    exactly representable in float16

Needs PyTorch (on this machine: /usr/bin/python3 with Debian's python3-torch) and, for the zoo,
torchvision (python3-torchvision); torchvision is imported only when a model is built.
"""

import json
import math
import struct
import zlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KernelAttention", "DynamicConv2d", "attention_hidden", "CondConvRouting",
           "CondConv2d", "ODConvAttention", "ODConv2d", "odconv_hidden",
           "conv_per_sample_kernels", "layer_case_input", "layer_case_metadata", "save_safetensors",
           "SAFETENSORS_DTYPES", "ZOO", "DY_ZOO", "ALL_MODELS", "POLICIES", "model_family",
           "build_model", "dynamic_layers", "ATTENTION_KINDS", "layer_kind", "family_layers",
           "layer_kernels", "temperature_of", "set_temperature", "set_batched", "check_batched", "randomize_",
           "random_input", "round_to_half_", "is_half_exact", "KERNEL_SHARED",
           "ATTENTION_BIAS_SPREAD", "ATTENTION_INPUT_GAIN", "INPUT_OFFSET_STD"]


def _pair(v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def attention_hidden(in_channels, reduction=4, min_hidden=1, hidden_channels=None):
    """hidden_channels if given (> 0), else max(min_hidden, in_channels // reduction)."""
    if hidden_channels:
        return int(hidden_channels)
    return max(int(min_hidden), int(in_channels) // int(reduction))


class KernelAttention(nn.Module):
    """pi = softmax(fc2(relu(fc1(mean_{H,W} x))) / tau): [N, Cin, H, W] -> [N, K]."""

    def __init__(self, in_channels, kernels, hidden, temperature=1.0):
        super().__init__()
        if kernels < 1 or hidden < 1 or in_channels < 1:
            raise ValueError("in_channels, kernels and hidden must be >= 1")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature={temperature} must be finite and > 0")
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, kernels)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def logits(self, x):
        return self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))

    def forward(self, x):
        return F.softmax(self.logits(x) / self.temperature, dim=1)


class DynamicConv2d(nn.Module):
    """Dynamic convolution (Chen et al., CVPR 2020): K kernels mixed per sample by attention."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, kernels=4, temperature=1.0, reduction=4, min_hidden=1,
                 hidden_channels=None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        _set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                           groups)
        self.kernels = int(kernels)
        self.hidden = attention_hidden(in_channels, reduction, min_hidden, hidden_channels)
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(
            torch.empty(self.kernels, out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(self.kernels, out_channels)) if bias else None
        self.attention = KernelAttention(in_channels, self.kernels, self.hidden, temperature)
        self.reset_parameters()

    def reset_parameters(self):
        """Each kernel and bias as PyTorch initialises a Conv2d."""
        fan_in = self.weight[0, 0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for k in range(self.kernels):
                nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def aggregate(self, pi_row):
        """The kernel [Cout, Cin/g, kh, kw] and bias [Cout] (or None) for one attention row."""
        w = (pi_row.view(-1, 1, 1, 1, 1) * self.weight).sum(dim=0)
        b = None if self.bias is None else (pi_row.view(-1, 1) * self.bias).sum(dim=0)
        return w, b

    # False (the default): forward() loops over the samples (the oracle of the parity tests).
    # True: forward() runs forward_batched(), the same function computed with one grouped conv
    # (for training). Set it per layer or for a whole model with set_batched(model, True).
    batched = False

    def forward_with_attention(self, x):
        """x [N, Cin, H, W] -> (y [N, Cout, Hout, Wout], pi [N, K])."""
        pi = self.attention(x)
        if self.batched:
            return self.convolve_batched(x, pi), pi
        outs = []
        for n in range(x.shape[0]):
            w, b = self.aggregate(pi[n])
            outs.append(F.conv2d(x[n:n + 1], w, b, self.stride, self.padding, self.dilation,
                                 self.groups))
        return torch.cat(outs, dim=0), pi

    def forward(self, x):
        return self.forward_with_attention(x)[0]

    def convolve_batched(self, x, pi):
        """forward_with_attention's per-sample convolution for the whole batch at once, the
        cheaper of two exactly equivalent ways for this layer: for a dense conv (groups = 1)
        whose output has at most mix_max_pixels pixels, the K kernels applied to the whole
        batch and mixed (convolve_mixed); else the aggregated kernels (convolve_aggregated)."""
        hout, wout = self.output_size(x.shape[-2], x.shape[-1])
        if self.groups == 1 and hout * wout <= self.mix_max_pixels:
            return self.convolve_mixed(x, pi)
        return self.convolve_aggregated(x, pi)

    # convolve_batched mixes outputs instead of aggregating kernels at this many output pixels
    # or fewer: per sample, aggregating costs K*P multiply-adds (P = the kernel's size), a
    # memory-bound [N, K] x [K, P] product, mixing (K-1)*Hout*Wout*P more conv multiply-adds,
    # as well-shaped matmuls. 4 measured fastest for MobileNetV3-Small at 32x32 on CPU (one
    # thread, batch 128: 385 ms per training step, against 742 ms aggregating everywhere).
    # Grouped and depthwise convs always aggregate: their kernels are small, and mixing made
    # the 5x5 depthwise convs on 1x1 and 2x2 maps 5x slower.
    mix_max_pixels = 4

    def output_size(self, h, w):
        """(Hout, Wout) of this layer for an h x w input."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        return ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def convolve_aggregated(self, x, pi):
        """The N aggregated kernels from one matmul ([N, K] x [K, Cout*Cin/g*kh*kw]), run as
        ONE conv2d of x viewed as [1, N*Cin, H, W] with groups = N*groups (the batch folded
        into the groups, as the usual PyTorch training implementations do). Sample n's groups
        see only its own Cin channels and its own kernel, so this is the per-sample loop's
        function exactly (up to floating-point summation order). A dense 1x1 conv (stride 1,
        no padding) is that same grouped conv written as one batched matmul (torch.bmm of
        [N, Cout, Cin] by [N, Cin, H*W]): on CPU, PyTorch runs a grouped conv with large groups
        as a loop over the groups, several times slower than bmm."""
        n, cin, h, w = x.shape
        k = self.kernels
        aggregated = pi @ self.weight.reshape(k, -1)              # [N, Cout*Cin/g*kh*kw]
        bias = None if self.bias is None else pi @ self.bias      # [N, Cout]
        if (self.groups == 1 and self.kernel_size == (1, 1) and self.stride == (1, 1)
                and self.padding == (0, 0)):
            y = torch.bmm(aggregated.reshape(n, self.out_channels, cin), x.reshape(n, cin, h * w))
            if bias is not None:
                y = y + bias.unsqueeze(2)
            return y.reshape(n, self.out_channels, h, w)
        weights = aggregated.reshape(
            n * self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        bias = None if bias is None else bias.reshape(-1)
        y = F.conv2d(x.reshape(1, n * cin, h, w), weights, bias, self.stride, self.padding,
                     self.dilation, self.groups * n)
        return y.reshape(n, self.out_channels, y.shape[-2], y.shape[-1])

    def convolve_mixed(self, x, pi):
        """convolve_then_mix as ONE conv2d with the K kernels stacked along the output channels
        (ordered group-major so that `groups` still splits them right), then the K outputs
        mixed per sample by pi, plus pi @ bias: by linearity, the per-sample loop's function."""
        n = x.shape[0]
        k, g = self.kernels, self.groups
        cout_g = self.out_channels // g
        stacked = self.weight.reshape(k, g, cout_g, *self.weight.shape[2:]).transpose(0, 1)
        stacked = stacked.reshape(g * k * cout_g, *self.weight.shape[2:])
        y = F.conv2d(x, stacked, None, self.stride, self.padding, self.dilation, g)
        hout, wout = y.shape[-2], y.shape[-1]
        y = y.reshape(n, g, k, cout_g, hout * wout)
        y = torch.einsum("ngkcp,nk->ngcp", y, pi).reshape(n, self.out_channels, hout, wout)
        if self.bias is not None:
            y = y + (pi @ self.bias).reshape(n, self.out_channels, 1, 1)
        return y

    def forward_batched(self, x):
        """forward() through convolve_batched, whatever self.batched says."""
        return self.convolve_batched(x, self.attention(x))

    def convolve_then_mix(self, x, pi):
        """The same output computed the other way round (paper.md, linearity):
        sum_k pi[:, k] * conv2d(x, W_k, b_k). Used as an independent check of forward()."""
        y = 0
        for k in range(self.kernels):
            b = None if self.bias is None else self.bias[k]
            yk = F.conv2d(x, self.weight[k], b, self.stride, self.padding, self.dilation,
                          self.groups)
            y = y + pi[:, k].view(-1, 1, 1, 1) * yk
        return y

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, kernels={self.kernels}, "
                f"hidden={self.hidden}, temperature={float(self.attention.temperature)}")


# ---------------------------------------------------------------------------------------------
# The dynamic-convolution family (/work/shared/docs/family.md): CondConv and ODConv

def _check_conv_args(in_channels, out_channels, groups, count, what):
    if in_channels < 1 or out_channels < 1 or groups < 1 or count < 1:
        raise ValueError(f"in_channels, out_channels, groups and {what} must be >= 1")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")


def _set_conv_geometry(module, in_channels, out_channels, kernel_size, stride, padding, dilation,
                       groups):
    """The nn.Conv2d-like attributes every convolution module here has."""
    module.in_channels = int(in_channels)
    module.out_channels = int(out_channels)
    module.kernel_size = _pair(kernel_size)
    module.stride = _pair(stride)
    module.padding = _pair(padding)
    module.dilation = _pair(dilation)
    module.groups = int(groups)


def layer_case_input(c):
    """A parity case's input [n, cin, h, w] (float64): a per-sample, per-channel offset makes
    the pooled features, and so the attention, differ by sample. Seeds torch from the name."""
    torch.manual_seed(zlib.crc32(c["name"].encode()))
    n, cin, h, w = c["n"], c["cin"], c["h"], c["w"]
    return torch.randn(n, cin, h, w, dtype=torch.float64) + \
        1.5 * torch.randn(n, cin, 1, 1, dtype=torch.float64)


def layer_case_metadata(c):
    """The string metadata describing a parity case's convolution (see make_parity_data.py)."""
    kh, kw = c["k"]
    return {
        "kind": c["kind"], "in_channels": str(c["cin"]), "out_channels": str(c["cout"]),
        "kernel_h": str(kh), "kernel_w": str(kw),
        "stride_h": str(c["stride"][0]), "stride_w": str(c["stride"][1]),
        "pad_h": str(c["padding"][0]), "pad_w": str(c["padding"][1]),
        "dilation_h": str(c["dilation"][0]), "dilation_w": str(c["dilation"][1]),
        "groups": str(c["groups"]), "bias": "1" if c["bias"] else "0",
        "batch": str(c["n"]), "height": str(c["h"]), "width": str(c["w"]),
    }


def _temperature_buffer(module, temperature):
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature} must be finite and > 0")
    module.register_buffer("temperature", torch.tensor(float(temperature)))


def conv_per_sample_kernels(x, kernels, bias, stride, padding, dilation, groups):
    """y[n] = conv2d(x[n], kernels[n], bias[n]) for every sample n, as ONE conv2d: the batch is
    folded into the channels (x viewed as [1, N*Cin, H, W], the N kernels stacked along the
    output channels, groups * N groups), so that the groups of sample n see only its own
    channels and its own kernel. x [N, Cin, H, W], kernels [N, Cout, Cin/groups, kh, kw],
    bias [N, Cout] or None -> [N, Cout, Hout, Wout]."""
    n, cin, h, w = x.shape
    cout = kernels.shape[1]
    y = F.conv2d(x.reshape(1, n * cin, h, w), kernels.reshape(n * cout, *kernels.shape[2:]),
                 None if bias is None else bias.reshape(n * cout), stride, padding, dilation,
                 groups * n)
    return y.reshape(n, cout, y.shape[-2], y.shape[-1])


class CondConvRouting(nn.Module):
    """CondConv's routing r = sigmoid((mean_{H,W}(x) @ weight.T + bias) / tau):
    [N, Cin, H, W] -> [N, E]. Every entry is its own sigmoid, so a row does NOT sum to 1.

    `weight` [E, Cin] and `bias` [E] have the names and shapes of an nn.Linear(Cin, E): the
    state of timm's block-level `routing_fn` (an nn.Linear) loads into it with
    load_state_dict(..., strict=False), the only missing key being `temperature`, a 0-d buffer
    that timm does not have (tau = 1 is timm's function)."""

    def __init__(self, in_channels, experts, temperature=1.0):
        super().__init__()
        if in_channels < 1 or experts < 1:
            raise ValueError("in_channels and experts must be >= 1")
        self.in_channels = int(in_channels)
        self.experts = int(experts)
        self.weight = nn.Parameter(torch.empty(self.experts, self.in_channels))
        self.bias = nn.Parameter(torch.empty(self.experts))
        _temperature_buffer(self, temperature)
        self.reset_parameters()

    def reset_parameters(self):
        """As PyTorch initialises an nn.Linear."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.in_channels)
        with torch.no_grad():
            self.bias.uniform_(-bound, bound)

    def logits(self, x):
        """The routing before the temperature and the sigmoid: [N, E]."""
        return F.linear(x.mean(dim=(2, 3)), self.weight, self.bias)

    def forward(self, x):
        return torch.sigmoid(self.logits(x) / self.temperature)

    def extra_repr(self):
        return (f"{self.in_channels}, experts={self.experts}, "
                f"temperature={float(self.temperature)}")


class CondConv2d(nn.Module):
    """Conditionally parameterised convolution (Yang et al., NeurIPS 2019): E expert kernels
    mixed per sample by a sigmoid routing r [N, E]:

        W~_n = sum_e r[n, e] W_e,  b~_n = sum_e r[n, e] b_e,  y_n = conv2d(x_n, W~_n, b~_n)

    The rows of r do not sum to 1 (unlike DynamicConv2d's softmax), so the scale of W~ follows
    the routing. State names and shapes are those of timm's CondConv2d:

        weight   [E, Cout * Cin/groups * kh * kw]  expert e flattened from [Cout, Cin/g, kh, kw]
        bias     [E, Cout]                          (only with bias=True)

    shared_routing=False: the layer owns `routing_fn` (a CondConvRouting of its own input,
    state routing_fn.weight [E, Cin], routing_fn.bias [E], routing_fn.temperature) and
    forward(x) computes r from x. shared_routing=True: as in timm's CondConvResidual, where one
    routing computed from the block's input drives all of the block's CondConvs, the routing
    [N, E] must be passed to forward(x, routing); the layer then has no routing state, and
    `temperature` must be left at 1 (it belongs to the block's routing module)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=False, experts=4, shared_routing=False, temperature=1.0):
        super().__init__()
        _check_conv_args(in_channels, out_channels, groups, experts, "experts")
        _set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                           groups)
        self.experts = int(experts)
        self.shared_routing = bool(shared_routing)
        # one expert's kernel, in the order its flattened row of `weight` is read
        self.expert_shape = (self.out_channels, self.in_channels // self.groups) + \
            self.kernel_size
        self.weight = nn.Parameter(torch.empty(self.experts, math.prod(self.expert_shape)))
        self.bias = nn.Parameter(torch.empty(self.experts, self.out_channels)) if bias else None
        if self.shared_routing:
            if float(temperature) != 1.0:
                raise ValueError("shared_routing=True: the temperature belongs to the block's "
                                 "routing module (CondConvRouting), not to the layer")
            self.routing_fn = None
        else:
            self.routing_fn = CondConvRouting(self.in_channels, self.experts, temperature)
        self.reset_parameters()

    def reset_parameters(self):
        """Each expert (and its bias) as PyTorch initialises a Conv2d."""
        fan_in = math.prod(self.expert_shape[1:])
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for e in range(self.experts):
                nn.init.kaiming_uniform_(self.weight[e].view(self.expert_shape), a=math.sqrt(5))
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    def expert_weights(self):
        """The experts as a view [E, Cout, Cin/groups, kh, kw] of `weight`."""
        return self.weight.view(self.experts, *self.expert_shape)

    def aggregate(self, routing):
        """Per-sample kernels [N, Cout, Cin/g, kh, kw] and biases [N, Cout] (or None) for a
        routing [N, E]: one [N, E] x [E, Cout*Cin/g*kh*kw] product."""
        n = routing.shape[0]
        w = (routing @ self.weight).view(n, *self.expert_shape)
        b = None if self.bias is None else routing @ self.bias
        return w, b

    def routing_for(self, x, routing=None):
        """The routing [N, E] this layer uses for x: the one passed (shared_routing=True) or
        its own routing_fn(x)."""
        if self.shared_routing:
            if routing is None:
                raise ValueError("CondConv2d(shared_routing=True) needs the block's routing "
                                 "[N, E]: forward(x, routing)")
            if tuple(routing.shape) != (x.shape[0], self.experts):
                raise ValueError(f"routing has shape {tuple(routing.shape)}, expected "
                                 f"({x.shape[0]}, {self.experts})")
            return routing
        if routing is not None:
            raise ValueError("CondConv2d(shared_routing=False) computes its own routing; "
                             "do not pass one")
        return self.routing_fn(x)

    def forward_with_routing(self, x, routing=None):
        """x [N, Cin, H, W] (and, with shared_routing, routing [N, E]) ->
        (y [N, Cout, Hout, Wout], the routing [N, E] used)."""
        r = self.routing_for(x, routing)
        w, b = self.aggregate(r)
        y = conv_per_sample_kernels(x, w, b, self.stride, self.padding, self.dilation,
                                    self.groups)
        return y, r

    def forward(self, x, routing=None):
        return self.forward_with_routing(x, routing)[0]

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, experts={self.experts}, "
                f"shared_routing={self.shared_routing}")


def odconv_hidden(in_channels, reduction=0.0625, min_hidden=16):
    """ODConv's attention width: max(int(in_channels * reduction), min_hidden)."""
    return max(int(in_channels * reduction), int(min_hidden))


class ODConvAttention(nn.Module):
    """ODConv's four attentions from one pooled descriptor:

        z = relu(bn(fc(GAP(x))))                      [N, hidden]  (fc: 1x1 conv, no bias)
        channel = sigmoid(channel_fc(z) / tau)        [N, Cin]     always
        filter  = sigmoid(filter_fc(z) / tau)         [N, Cout]    absent for a depthwise conv
        spatial = sigmoid(spatial_fc(z) / tau)        [N, kh*kw]   absent for a 1x1 kernel
        kernel  = softmax(kernel_fc(z) / tau)         [N, K]       absent for K = 1

    tau divides each head's output logits (bias included), as in OSVAI's code. An absent head
    has no parameters and stands for a factor 1. "Depthwise" follows OSVAI's test exactly:
    in_channels == groups == out_channels (a depthwise conv with a channel multiplier, or any
    other grouped conv, keeps its filter head). forward() returns a dict of the present heads,
    keyed "channel", "filter", "spatial", "kernel". bn uses its running statistics in eval
    mode only; in training mode its batch statistics make each sample's attention depend on
    the other samples of the batch."""

    def __init__(self, in_channels, out_channels, kernel_size, groups=1, reduction=0.0625,
                 kernels=4, min_hidden=16, temperature=1.0):
        super().__init__()
        _check_conv_args(in_channels, out_channels, groups, kernels, "kernels")
        kh, kw = _pair(kernel_size)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = (kh, kw)
        self.kernels = int(kernels)
        self.hidden = odconv_hidden(in_channels, reduction, min_hidden)
        hid = self.hidden
        self.fc = nn.Conv2d(in_channels, hid, 1, bias=False)
        self.bn = nn.BatchNorm2d(hid)
        self.channel_fc = nn.Conv2d(hid, in_channels, 1)
        depthwise = in_channels == groups and in_channels == out_channels
        self.filter_fc = None if depthwise else nn.Conv2d(hid, out_channels, 1)
        self.spatial_fc = None if (kh, kw) == (1, 1) else nn.Conv2d(hid, kh * kw, 1)
        self.kernel_fc = None if self.kernels == 1 else nn.Conv2d(hid, self.kernels, 1)
        _temperature_buffer(self, temperature)
        self.reset_parameters()

    def reset_parameters(self):
        """OSVAI's initialisation: the 1x1 convs He-normal over fan_out, biases 0, bn the
        identity."""
        for m in (self.fc, self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if m is not None:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.bn.reset_parameters()

    def heads(self):
        """The names of the present heads, in the order channel, filter, spatial, kernel."""
        return [name for name in ("channel", "filter", "spatial", "kernel")
                if getattr(self, name + "_fc") is not None]

    def descriptor(self, x):
        """z = relu(bn(fc(GAP(x)))) as [N, hidden, 1, 1]."""
        return F.relu(self.bn(self.fc(x.mean(dim=(2, 3), keepdim=True))))

    def forward(self, x):
        z = self.descriptor(x)
        out = {}
        for name in self.heads():
            logits = getattr(self, name + "_fc")(z).flatten(1) / self.temperature
            out[name] = F.softmax(logits, dim=1) if name == "kernel" else torch.sigmoid(logits)
        return out


class ODConv2d(nn.Module):
    """Omni-dimensional dynamic convolution (Li, Zhou, Yao, ICLR 2022; OSVAI/ODConv): K kernels
    and four attentions (ODConvAttention) along the kernel, spatial, input-channel and
    output-channel dimensions:

        W~_n = sum_k spatial_n * kernel_n[k] * W_k      (spatial over the kh x kw positions)
        y_n  = filter_n * conv2d(channel_n * x_n, W~_n)  (no conv bias)

    which is conv2d(x_n, filter_n[o] * channel_n[i] * W~_n[o, i, p]) (synthesize()). State names
    and shapes are OSVAI's:

        weight                       [K, Cout, Cin/groups, kh, kw]
        attention.fc.weight          [hidden, Cin, 1, 1], hidden = max(int(Cin*reduction),
                                     min_hidden)
        attention.bn.{weight, bias, running_mean, running_var, num_batches_tracked}  [hidden]
        attention.channel_fc.{weight, bias}  [Cin, hidden, 1, 1], [Cin]
        attention.filter_fc.*        [Cout, ...]   (absent for depthwise: Cin == groups == Cout)
        attention.spatial_fc.*       [kh*kw, ...]  (absent for 1x1)
        attention.kernel_fc.*        [K, ...]      (absent for K = 1)
        attention.temperature        0-d buffer (tau; a plain attribute in OSVAI, stored here)

    Unlike OSVAI (square kernels only) kernel_size may be a pair; the spatial head then has
    kh*kw outputs in row-major (kh, kw) order. Run the attention's BatchNorm in eval mode for a
    per-sample function (see ODConvAttention)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, reduction=0.0625, kernels=4, min_hidden=16, temperature=1.0):
        super().__init__()
        _check_conv_args(in_channels, out_channels, groups, kernels, "kernels")
        _set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                           groups)
        self.kernels = int(kernels)
        self.attention = ODConvAttention(in_channels, out_channels, self.kernel_size, groups,
                                         reduction, kernels, min_hidden, temperature)
        self.hidden = self.attention.hidden
        self.weight = nn.Parameter(torch.empty(self.kernels, self.out_channels,
                                               self.in_channels // self.groups,
                                               *self.kernel_size))
        self.reset_parameters()

    def reset_parameters(self):
        """Each of the K kernels He-normal over its fan_out (OSVAI's initialisation)."""
        with torch.no_grad():
            for k in range(self.kernels):
                nn.init.kaiming_normal_(self.weight[k], mode="fan_out", nonlinearity="relu")

    def aggregate(self, att):
        """sum_k spatial * kernel[k] * W_k per sample: [N, Cout, Cin/g, kh, kw] (the kernel
        convolved with channel * x; channel and filter not included)."""
        n = next(iter(att.values())).shape[0]
        kh, kw = self.kernel_size
        shape = self.weight.shape[1:]                                  # [Cout, Cin/g, kh, kw]
        if "kernel" in att:  # one [N, K] x [K, Cout*Cin/g*kh*kw] product
            w = (att["kernel"] @ self.weight.flatten(1)).view(n, *shape)
        else:                # K = 1
            w = self.weight.expand(n, *shape)
        if "spatial" in att:  # the same factor for every k: applied after the sum
            w = w * att["spatial"].view(n, 1, 1, kh, kw)
        return w

    def synthesize(self, att):
        """The whole per-sample kernel W~[n, o, i, p] = filter[o] * channel[g(o), i] *
        spatial[p] * sum_k kernel[k] W_k[o, i, p] [N, Cout, Cin/g, kh, kw], where channel[g(o), i]
        is the attention of input channel i of output channel o's group: conv2d(x_n, W~[n])
        is y_n."""
        w = self.aggregate(att)
        n, g = w.shape[0], self.groups
        cin_g, cout_g = self.in_channels // g, self.out_channels // g
        c = att["channel"].view(n, g, 1, cin_g).expand(n, g, cout_g, cin_g)
        w = w * c.reshape(n, self.out_channels, cin_g, 1, 1)
        if "filter" in att:
            w = w * att["filter"].view(n, self.out_channels, 1, 1, 1)
        return w

    def forward_with_attention(self, x):
        """x [N, Cin, H, W] -> (y [N, Cout, Hout, Wout], {head name: attention [N, size]} for
        the present heads: "channel" [N, Cin], "filter" [N, Cout], "spatial" [N, kh*kw],
        "kernel" [N, K])."""
        att = self.attention(x)
        n = x.shape[0]
        xc = x * att["channel"].view(n, self.in_channels, 1, 1)
        y = conv_per_sample_kernels(xc, self.aggregate(att), None, self.stride, self.padding,
                                    self.dilation, self.groups)
        if "filter" in att:
            y = y * att["filter"].view(n, self.out_channels, 1, 1)
        return y, att

    def forward(self, x):
        return self.forward_with_attention(x)[0]

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, kernels={self.kernels}, hidden={self.hidden}, "
                f"heads={','.join(self.attention.heads())}, "
                f"temperature={float(self.attention.temperature)}")


# torch dtype -> (safetensors dtype name, element size in bytes)
SAFETENSORS_DTYPES = {
    torch.float64: ("F64", 8),
    torch.float32: ("F32", 4),
    torch.float16: ("F16", 2),
    torch.bfloat16: ("BF16", 2),
    torch.int64: ("I64", 8),
}


def _tensor_bytes(t):
    """Row-major little-endian bytes of t."""
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        # numpy has no bfloat16: reinterpret the 16-bit patterns.
        arr = t.view(torch.int16).numpy()
        return arr.astype("<i2", copy=False).tobytes()
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def save_safetensors(path, tensors, metadata=None):
    """Writes tensors (name -> torch.Tensor) to a safetensors file, each in its own dtype
    (float64 F64, float32 F32, float16 F16, bfloat16 BF16, int64 I64), in the dict's order,
    with the string -> string metadata under "__metadata__"."""
    header = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata must map str to str, got {key!r}: {value!r}")
        header["__metadata__"] = dict(metadata)
    chunks = []
    offset = 0
    for name, t in tensors.items():
        if name == "__metadata__":
            raise ValueError("'__metadata__' cannot name a tensor")
        if t.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"tensor '{name}': dtype {t.dtype} has no safetensors equivalent")
        dtype, size = SAFETENSORS_DTYPES[t.dtype]
        data = _tensor_bytes(t)
        assert len(data) == t.numel() * size
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in chunks:
            f.write(data)


# ---------------------------------------------------------------------------------------------
# The model zoo (paper.md, results table): torchvision structures, dynamic convs by policy

ZOO = ["mobilenet_v2_x1_0", "mobilenet_v2_x0_75", "mobilenet_v2_x0_5", "mobilenet_v2_x0_35",
       "mobilenet_v3_small", "resnet10", "resnet18"]
DY_ZOO = ["dy_" + name for name in ZOO]
ALL_MODELS = ZOO + DY_ZOO
# Beside the 14 (C++ models::resnet50_zoo_names()): torchvision's resnet50 and its dy_ twin
RESNET50_ZOO = ["resnet50", "dy_resnet50"]

_MOBILENET_V2_WIDTHS = {"mobilenet_v2_x1_0": 1.0, "mobilenet_v2_x0_75": 0.75,
                        "mobilenet_v2_x0_5": 0.5, "mobilenet_v2_x0_35": 0.35}


def model_family(name):
    """"mobilenet_v2", "mobilenet_v3_small" or "resnet" for a zoo name (with or without dy_)."""
    base = name[3:] if name.startswith("dy_") else name
    if base not in ZOO + RESNET50_ZOO[:1]:
        raise ValueError(f"unknown model '{name}'; the zoo: {', '.join(ALL_MODELS + RESNET50_ZOO)}")
    if base.startswith("mobilenet_v2"):
        return "mobilenet_v2"
    if base == "mobilenet_v3_small":
        return "mobilenet_v3_small"
    return "resnet"


def _is_stem(prefix, family):
    return prefix == ("conv1" if family == "resnet" else "features.0.0")


def _is_squeeze_excite(prefix, family):
    """The 1x1 convs fc1/fc2 of MobileNetV3's squeeze-excite blocks."""
    return family == "mobilenet_v3_small" and prefix.rsplit(".", 1)[-1] in ("fc1", "fc2")


def _policy_default(prefix, conv, family):
    """The paper-closest configuration (paper.md, "Which layers are dynamic")."""
    parts = prefix.split(".")
    if family == "mobilenet_v2":
        # features.1 .. features.17: the inverted residual blocks (expand, depthwise, project)
        return parts[0] == "features" and 1 <= int(parts[1]) <= 17
    if family == "mobilenet_v3_small":
        # everything but the stem (the depthwise convs and features.12.0, 96->576, included)
        return not _is_stem(prefix, family) and not _is_squeeze_excite(prefix, family)
    # ResNet: conv1 and conv2 of every BasicBlock, conv1..conv3 of every Bottleneck
    # (layerN.M.convK); stem, downsample static
    return len(parts) == 3 and parts[0].startswith("layer") and parts[2] in ("conv1", "conv2", "conv3")


def _policy_all_but_stem(prefix, conv, family):
    return not _is_stem(prefix, family) and not _is_squeeze_excite(prefix, family)


def _policy_pointwise_only(prefix, conv, family):
    return (_policy_all_but_stem(prefix, conv, family) and tuple(conv.kernel_size) == (1, 1)
            and conv.groups == 1)


def _policy_none(prefix, conv, family):
    return False


# policy name -> function (prefix, conv_module, model_family) -> bool: is this conv dynamic?
POLICIES = {"default": _policy_default, "all_but_stem": _policy_all_but_stem,
            "pointwise_only": _policy_pointwise_only, "none": _policy_none}


def _resolve_policy(policy):
    if policy is None:
        return "default", POLICIES["default"]
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy '{policy}'; known: {', '.join(POLICIES)}")
        return policy, POLICIES[policy]
    if callable(policy):
        return getattr(policy, "__name__", "custom"), policy
    raise TypeError(f"policy must be None, a name or a callable, got {policy!r}")


def _torchvision_model(base, num_classes):
    import torchvision.models as tvm  # imported here: DynamicConv2d alone needs no torchvision
    from torchvision.models.resnet import BasicBlock, ResNet
    if base in _MOBILENET_V2_WIDTHS:
        return tvm.mobilenet_v2(weights=None, num_classes=num_classes,
                                width_mult=_MOBILENET_V2_WIDTHS[base])
    if base == "mobilenet_v3_small":
        return tvm.mobilenet_v3_small(weights=None, num_classes=num_classes)
    if base == "resnet10":
        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    if base == "resnet18":
        return tvm.resnet18(weights=None, num_classes=num_classes)
    if base == "resnet50":
        return tvm.resnet50(weights=None, num_classes=num_classes)
    raise ValueError(f"unknown model '{base}'")


def build_model(name, num_classes=1000, policy=None, kernels=4, reduction=4, min_hidden=1,
                temperature=1.0, attention="dy"):
    """The zoo model `name` with torchvision's structure and parameter names (weights=None: no
    download, PyTorch's default initialisation). For a dy_ name every nn.Conv2d the policy
    selects is replaced at the same attribute by a DynamicConv2d with the same in/out channels,
    kernel size, stride, padding, dilation, groups and bias, `kernels` kernels and attention
    hidden size max(min_hidden, Cin // reduction). The policy (None = "default", a name of
    POLICIES, or a function (prefix, conv, family) -> bool) is ignored for static names.
    `attention` (ATTENTION_KINDS) picks the family member for the same convolutions: "dy" the
    DynamicConv2d above; "condconv" a CondConv2d with `kernels` experts and its own routing
    (reduction and min_hidden unused); "odconv" an ODConv2d with OSVAI's attention width
    max(int(Cin / 16), 16) (reduction and min_hidden unused; the conv must have no bias). The C++
    zoo builds the same model from ModelOptions::attention_kind (the file's "attention"
    metadata). The model's attributes `zoo_name`, `policy_name`, `kernels` and
    `attention_kind` record the choice."""
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r}: use one of {', '.join(ATTENTION_KINDS)}")
    family = model_family(name)
    dynamic = name.startswith("dy_")
    base = name[3:] if dynamic else name
    model = _torchvision_model(base, num_classes)
    policy_name, decide = _resolve_policy(policy if dynamic else "none")
    if dynamic:
        chosen = [(prefix, m) for prefix, m in model.named_modules()
                  if isinstance(m, nn.Conv2d) and decide(prefix, m, family)]
        for prefix, conv in chosen:
            if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                raise ValueError(f"{name}: {prefix}: only zero padding given as numbers is "
                                 f"supported, got {conv.padding_mode} / {conv.padding!r}")
            geometry = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                        conv.padding, conv.dilation, conv.groups)
            if attention == "odconv":
                if conv.bias is not None:
                    raise ValueError(f"{name}: {prefix}: ODConv has no bias, the conv has one")
                dyn = ODConv2d(*geometry, reduction=OD_REDUCTION, kernels=kernels,
                               min_hidden=OD_MIN_HIDDEN, temperature=temperature)
            elif attention == "condconv":
                dyn = CondConv2d(*geometry, bias=conv.bias is not None, experts=kernels,
                                 temperature=temperature)
            else:
                dyn = DynamicConv2d(*geometry, bias=conv.bias is not None, kernels=kernels,
                                    temperature=temperature, reduction=reduction,
                                    min_hidden=min_hidden)
            parent_name, _, attr = prefix.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, dyn)
    model.zoo_name = name
    model.policy_name = policy_name if dynamic else "none"
    model.kernels = int(kernels) if dynamic else 1
    model.attention_kind = attention if dynamic else None
    return model


def dynamic_layers(model):
    """[(prefix, DynamicConv2d)] in forward (registration) order."""
    return [(p, m) for p, m in model.named_modules() if isinstance(m, DynamicConv2d)]


# The family's attention kinds, as build_model(attention=...) and the "attention" metadata name
# them; the C++ AttentionKind DyConv, CondConv, ODConv.
ATTENTION_KINDS = ("dy", "condconv", "odconv")


def layer_kind(module):
    """"dy", "condconv" or "odconv" for a family layer, else None."""
    if isinstance(module, DynamicConv2d):
        return "dy"
    if isinstance(module, CondConv2d):
        return "condconv"
    if isinstance(module, ODConv2d):
        return "odconv"
    return None


def family_layers(model):
    """[(prefix, layer)] of every DynamicConv2d, CondConv2d and ODConv2d in registration order."""
    return [(p, m) for p, m in model.named_modules() if layer_kind(m) is not None]


def layer_kernels(module):
    """K of a family layer (a CondConv2d's experts)."""
    return module.experts if isinstance(module, CondConv2d) else module.kernels


def temperature_of(module):
    """The 0-d temperature buffer of a family layer (a CondConv2d's routing_fn's), or None for a
    CondConv2d with shared routing (its block's routing module holds it)."""
    if isinstance(module, CondConv2d):
        return None if module.routing_fn is None else module.routing_fn.temperature
    return module.attention.temperature


def set_temperature(model, temperature):
    """Sets tau of every family layer of `model` that holds one. Returns the number set."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature} must be finite and > 0")
    count = 0
    with torch.no_grad():
        for _, m in family_layers(model):
            t = temperature_of(m)
            if t is not None:
                t.fill_(float(temperature))
                count += 1
    return count


def set_batched(model, batched=True):
    """Sets DynamicConv2d.batched on every dynamic conv of `model` (True: one grouped conv
    per layer and batch, for training; False: the per-sample loop, the default). Returns the
    number of layers changed."""
    layers = dynamic_layers(model) if not isinstance(model, DynamicConv2d) else [("", model)]
    for _, m in layers:
        m.batched = bool(batched)
    return len(layers)


def check_batched(seed=0):
    """The batched paths (convolve_aggregated, convolve_mixed, convolve_batched) against the
    per-sample loop in float64, outputs and gradients (input and every parameter), for dense,
    1x1, strided, grouped, depthwise and dilated layers on 11x9, 2x2 and 1x1 inputs. Returns
    the largest absolute difference (about 1e-14 where they agree)."""
    gen = torch.Generator().manual_seed(int(seed))
    cases = [  # cin, cout, kernel, stride, padding, dilation, groups, bias
        (8, 12, 3, 1, 1, 1, 1, True), (16, 24, 1, 1, 0, 1, 1, False),
        (16, 24, 1, 2, 0, 1, 1, True), (12, 18, 3, 2, 1, 1, 3, True),
        (12, 18, 1, 1, 0, 1, 3, False), (16, 16, 5, 2, 2, 1, 16, False),
        (16, 16, 3, 1, 2, 2, 16, True), (8, 16, 3, 1, 1, 1, 8, True),
        (6, 10, (5, 3), (2, 1), (2, 1), 1, 1, True)]
    worst = 0.0
    for cin, cout, k, stride, pad, dil, groups, bias in cases:
        for hw in ((11, 9), (2, 2), (1, 1)):
            m = DynamicConv2d(cin, cout, k, stride, pad, dil, groups, bias=bias, kernels=4,
                              temperature=0.7).double()
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
            x = torch.randn(3, cin, *hw, generator=gen, dtype=torch.float64, requires_grad=True)
            results = []
            for path in (None, m.convolve_aggregated, m.convolve_mixed, m.convolve_batched):
                m.zero_grad()
                x.grad = None
                y = m(x) if path is None else path(x, m.attention(x))
                if not results:
                    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
                (y * gy).sum().backward()
                results.append([y.detach(), x.grad.clone()] +
                               [p.grad.clone() for p in m.parameters()])
            for other in results[1:]:
                for a, b in zip(results[0], other):
                    worst = max(worst, float((a - b).abs().max()))
    return worst


# ---------------------------------------------------------------------------------------------
# Random weights for the parity tests

def round_to_half_(t):
    """Rounds a floating tensor in place to the nearest float16 value (kept in its dtype)."""
    with torch.no_grad():
        t.copy_(t.half().to(t.dtype))
    return t


def is_half_exact(t):
    """True if every element of a floating tensor is a finite float16 value."""
    h = t.detach().half()
    return bool(torch.isfinite(h).all()) and bool((h.to(t.dtype) == t).all())


# The K kernels of a dynamic conv share this fraction of their variance (W_k = sqrt(a) W_shared
# + sqrt(1 - a) W_own_k): the norm of the aggregated kernel then depends less on how peaked
# the attention of a sample is, so that samples with different attention keep comparable
# activation scales through the depth (with independent kernels that norm varies by up to
# sqrt(K) between uniform and one-hot attention, and MobileNetV3-Small's activations drift
# apart by 100x between samples). Half of each kernel is still its own.
KERNEL_SHARED = 0.5

# The attention logits z / tau = (fc2.bias + fc2.weight h) / tau: the bias is spread by
# ATTENTION_BIAS_SPREAD (std over the K kernels), which makes pi far from uniform; the input-
# dependent part fc2.weight h has an RMS of about ATTENTION_INPUT_GAIN, which makes pi differ
# from sample to sample. The gain is also how much an error of the layer's input (relative to
# its RMS) is amplified into the attention, and so into the output: over 50 dynamic layers a
# larger gain makes the float32 forward itself drift from the float64 one beyond 1e-4.
ATTENTION_BIAS_SPREAD = 2.5
ATTENTION_INPUT_GAIN = 0.5


# Test inputs: N(0, 1) plus a per-sample, per-channel offset N(0, INPUT_OFFSET_STD^2), so that
# the samples of a batch differ in their pooled features and so in their attention.
INPUT_OFFSET_STD = 0.5


def random_input(batch, height, width, generator, channels=3):
    """A float64 input [batch, channels, height, width], every value a float16 value."""
    x = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    x = x + INPUT_OFFSET_STD * torch.randn(batch, channels, 1, 1, generator=generator,
                                           dtype=torch.float64)
    return x.half().double()


def randomize_(model, seed, input_size=(224, 224), calibration_batch=4,
               calibration_input=None):
    """Fills every parameter and BatchNorm buffer of `model` (a build_model result) with random
    values drawn from a generator seeded with `seed`, each rounded to float16 so that it can
    be stored as F16 without loss. Returns a summary dict.

    - Conv2d (static, squeeze-excite) and each of the K kernels of a DynamicConv2d: normal with
      std sqrt(2 / fan_in) (He), the K kernels sharing KERNEL_SHARED of their variance; conv
      and Linear biases uniform in [-0.2, 0.2]; Linear: normal with std
      sqrt(2 / in_features) (hidden classifier layer) or sqrt(1 / in_features) (the last).
    - BatchNorm2d: weight uniform in [0.5, 1.5], bias in [-0.2, 0.2]. The running statistics
      are calibrated on one forward pass of a batch (calibration_input, default a random_input
      of calibration_batch x 3 x input_size drawn from the seeded generator), layer by layer in
      forward order: with m, v the per-channel mean and variance of the BN's actual input,
      running_mean = m + u sqrt(v), u uniform in [-0.2, 0.2], and running_var = v * r, r
      uniform in [0.5, 2.0]. So every BN output is O(1): activations
      neither explode nor vanish through the depth, whatever the attention does to the scale
      of the aggregated kernels.
    - Attention of each DynamicConv2d, calibrated on the same pass from its input x and pooled
      input s: fc1 normal / (sqrt(Cin) rms(x)), bias uniform in [-0.5, 0.5] raised where needed
      so that each hidden unit is active for some calibration sample; fc2 normal, scaled so
      that fc2.weight h has an RMS of about ATTENTION_INPUT_GAIN * tau, bias normal with std
      ATTENTION_BIAS_SPREAD * tau. So pi is far from uniform, differs between samples, and the
      float32 forward stays within about 1e-5 of the float64 one.
    - attention.temperature: 0.75 for every 5th dynamic layer (from the 2nd), 2.0 for every 5th
      (from the 4th), else 1.0.
    """
    gen = torch.Generator().manual_seed(int(seed))
    dyn = dynamic_layers(model)
    hooks = []

    def normal(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    def put(t, value):
        t.copy_(value.to(t.dtype))
        round_to_half_(t)

    with torch.no_grad():
        attention_fcs = {id(fc) for _, m in dyn for fc in (m.attention.fc1, m.attention.fc2)}
        last_linear = _last_linear(model)
        for prefix, m in model.named_modules():
            if isinstance(m, DynamicConv2d):
                fan_in = m.weight[0, 0].numel()
                shared = normal(*m.weight.shape[1:]).unsqueeze(0)
                own = normal(*m.weight.shape)
                mixed = math.sqrt(KERNEL_SHARED) * shared + math.sqrt(1 - KERNEL_SHARED) * own
                put(m.weight, mixed * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    put(m.bias, uniform(-0.2, 0.2, *m.bias.shape))
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                put(m.weight, normal(*m.weight.shape) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    put(m.bias, uniform(-0.2, 0.2, *m.bias.shape))
            elif isinstance(m, nn.Linear) and id(m) not in attention_fcs:
                gain = 1.0 if prefix == last_linear else 2.0
                put(m.weight, normal(*m.weight.shape) * math.sqrt(gain / m.in_features))
                if m.bias is not None:
                    put(m.bias, uniform(-0.2, 0.2, *m.bias.shape))
            elif isinstance(m, nn.BatchNorm2d):
                put(m.weight, uniform(0.5, 1.5, m.num_features))
                put(m.bias, uniform(-0.2, 0.2, m.num_features))
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                hooks.append(m.register_forward_pre_hook(_calibrate_batchnorm(gen)))
            elif len(list(m.parameters(recurse=False))) or len(list(m.buffers(recurse=False))):
                if not isinstance(m, (KernelAttention, nn.Linear)):
                    raise TypeError(f"randomize_: no rule for {prefix} ({type(m).__name__})")
        for i, (prefix, m) in enumerate(dyn):
            tau = 0.75 if i % 5 == 1 else 2.0 if i % 5 == 3 else 1.0
            m.attention.temperature.fill_(tau)
            round_to_half_(m.attention.temperature)
            hooks.append(m.register_forward_pre_hook(_calibrate_attention(gen)))

        was_training = model.training
        model.eval()
        if calibration_input is not None:
            x = calibration_input
        else:
            h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
            x = random_input(calibration_batch, h, w, gen)
        dtype = next(model.parameters()).dtype
        try:
            model(x.to(dtype))
        finally:
            for hook in hooks:
                hook.remove()
        model.train(was_training)

        for name, t in model.state_dict().items():
            if t.is_floating_point() and not is_half_exact(t):
                raise AssertionError(f"randomize_: {name} is not exactly float16")
    return {"seed": int(seed), "dynamic_layers": len(dyn),
            "temperatures": [float(m.attention.temperature) for _, m in dyn]}


def _last_linear(model):
    """The prefix of the last Linear outside the attention modules (the classifier output)."""
    last = None
    for prefix, m in model.named_modules():
        if isinstance(m, nn.Linear) and ".attention." not in f".{prefix}.":
            last = prefix
    return last


def _calibrate_batchnorm(gen):
    def hook(bn, inputs):
        x = inputs[0].detach().double()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-4)
        c = bn.num_features
        u = -0.2 + 0.4 * torch.rand(c, generator=gen, dtype=torch.float64)
        r = 0.5 + 1.5 * torch.rand(c, generator=gen, dtype=torch.float64)
        bn.running_mean.copy_((mean + u * var.sqrt()).to(bn.running_mean.dtype))
        bn.running_var.copy_((var * r).to(bn.running_var.dtype))
        round_to_half_(bn.running_mean)
        round_to_half_(bn.running_var)
    return hook


def _rms(t):
    return float(t.pow(2).mean().sqrt())


def _calibrate_attention(gen):
    def hook(layer, inputs):
        att = layer.attention
        x = inputs[0].detach().double()
        s = x.mean(dim=(2, 3))                                          # [N, Cin]
        cin, hid, k = layer.in_channels, layer.hidden, layer.kernels
        tau = float(att.temperature)
        # fc1 in units of the layer input's scale (not of the pooled features', which can be
        # much smaller): an error of the input relative to its RMS is not amplified.
        w1 = torch.randn(hid, cin, generator=gen, dtype=torch.float64) / math.sqrt(cin)
        w1 = w1 / max(_rms(x), 1e-6)
        u = s @ w1.t()
        # every hidden unit active (> 0.25) for at least one calibration sample
        b1 = -0.5 + torch.rand(hid, generator=gen, dtype=torch.float64)
        b1 = torch.maximum(b1, 0.25 - u.max(dim=0).values)
        att.fc1.weight.copy_(w1.to(att.fc1.weight.dtype))
        att.fc1.bias.copy_(b1.to(att.fc1.bias.dtype))
        round_to_half_(att.fc1.weight)
        round_to_half_(att.fc1.bias)
        hidden = F.relu(s @ att.fc1.weight.double().t() + att.fc1.bias.double())
        w2 = torch.randn(k, hid, generator=gen, dtype=torch.float64) / math.sqrt(hid)
        w2 = w2 * (ATTENTION_INPUT_GAIN * tau / max(_rms(hidden), 1e-3))
        b2 = ATTENTION_BIAS_SPREAD * tau * torch.randn(k, generator=gen, dtype=torch.float64)
        att.fc2.weight.copy_(w2.to(att.fc2.weight.dtype))
        att.fc2.bias.copy_(b2.to(att.fc2.bias.dtype))
        round_to_half_(att.fc2.weight)
        round_to_half_(att.fc2.bias)
    return hook


# ---------------------------------------------------------------------------------------------
# OSVAI's ODConv models (models/od_resnet.py, models/od_mobilenetv2.py): look-alikes with their
# module structure and state_dict names, built from ODConv2d above

OD_ZOO = ["od_resnet18", "od_resnet50", "od_mobilenet_v2_x1_0", "od_mobilenet_v2_x0_75",
          "od_mobilenet_v2_x0_5"]

# zoo name -> OSVAI's constructor (the width multiplier in its name)
OD_OFFICIAL_NAMES = {"od_resnet18": "od_resnet18", "od_resnet50": "od_resnet50",
                     "od_mobilenet_v2_x1_0": "od_mobilenetv2_100",
                     "od_mobilenet_v2_x0_75": "od_mobilenetv2_075",
                     "od_mobilenet_v2_x0_5": "od_mobilenetv2_050"}

# sum(p.numel() for p in model.parameters()) of OSVAI's models at 1000 classes, by K (1 and 4)
OD_OFFICIAL_PARAMS = {
    ("od_resnet18", 1): 11943944, ("od_resnet18", 4): 44901640,
    ("od_resnet50", 1): 28635112, ("od_resnet50", 4): 90670888,
    ("od_mobilenet_v2_x1_0", 1): 4940185, ("od_mobilenet_v2_x1_0", 4): 11512149,
    ("od_mobilenet_v2_x0_75", 1): 3507113, ("od_mobilenet_v2_x0_75", 4): 7496013,
    ("od_mobilenet_v2_x0_5", 1): 2425537, ("od_mobilenet_v2_x0_5", 4): 4435501,
}

# OSVAI's defaults for every ODConv of its models
OD_REDUCTION = 0.0625
OD_MIN_HIDDEN = 16

_OD_MOBILENET_V2_WIDTHS = {"od_mobilenet_v2_x1_0": 1.0, "od_mobilenet_v2_x0_75": 0.75,
                           "od_mobilenet_v2_x0_5": 0.5}


def _odconv(cin, cout, k, stride=1, groups=1, kernels=1):
    """An ODConv2d as OSVAI's models declare them: padding (k - 1) // 2, reduction 1/16,
    min hidden 16, temperature 1."""
    return ODConv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups,
                    reduction=OD_REDUCTION, kernels=kernels, min_hidden=OD_MIN_HIDDEN)


def od_layers(model):
    """[(prefix, ODConv2d)] in forward (registration) order."""
    return [(p, m) for p, m in model.named_modules() if isinstance(m, ODConv2d)]


class ODBasicBlock(nn.Module):
    """ResNet's BasicBlock with both 3x3 convs ODConv2d (OSVAI's od_resnet BasicBlock):
    relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)), downsample static (1x1 conv + BN)
    or None."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, kernels=1):
        super().__init__()
        self.conv1 = _odconv(inplanes, planes, 3, stride, kernels=kernels)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _odconv(planes, planes, 3, kernels=kernels)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ODBottleneck(nn.Module):
    """ResNet's Bottleneck (torchvision's v1.5: the stride on the 3x3) with its three convs
    ODConv2d (OSVAI's od_resnet Bottleneck): relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))
    + downsample(x)), conv1 and conv3 1x1, conv3 widening to 4 * planes."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, kernels=1):
        super().__init__()
        self.conv1 = _odconv(inplanes, planes, 1, kernels=kernels)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _odconv(planes, planes, 3, stride, kernels=kernels)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _odconv(planes, planes * self.expansion, 1, kernels=kernels)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ODResNet(nn.Module):
    """OSVAI's OD_ResNet (`block` ODBasicBlock or ODBottleneck): torchvision's ResNet names
    (conv1, bn1, layerL.B.*, layerL.0.downsample.{0,1}, fc) plus a Dropout (p = 0.1, no state)
    before fc. The stem, the downsample convs and fc are static."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, dropout=0.1, kernels=1,
                 block=None):
        super().__init__()
        self.block = block = block or ODBasicBlock
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            setattr(self, f"layer{i + 1}",
                    self._stage(planes, blocks, 1 if i == 0 else 2, kernels))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        # OSVAI's initialisation (the ODConv kernels keep ODConv2d's own)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _stage(self, planes, blocks, stride, kernels):
        out = planes * self.block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out))
        stage = [self.block(self.inplanes, planes, stride, downsample, kernels)]
        self.inplanes = out
        stage += [self.block(out, planes, kernels=kernels) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def net_update_temperature(self, temperature):
        set_temperature(self, temperature)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


def _make_divisible(v, divisor=8):
    """MobileNet's channel rounding: the nearest multiple of divisor (at least divisor), one
    more step up if that lost more than 10%."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def _conv_bn_relu6(conv, channels):
    """[conv, BatchNorm2d, ReLU6] as torchvision's and OSVAI's ConvBNReLU (names .0 .1 .2)."""
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU6(inplace=True))


class ODInvertedResidual(nn.Module):
    """MobileNetV2's inverted residual with every conv ODConv2d (OSVAI's): conv = [expand 1x1
    ODConv+BN+ReLU6 (absent for t = 1), depthwise 3x3 ODConv+BN+ReLU6, project 1x1 ODConv,
    BN], x + conv(x) when stride 1 and inp == oup."""

    def __init__(self, inp, oup, stride, expand_ratio, kernels=1):
        super().__init__()
        self.stride = stride
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(_odconv(inp, hidden, 1, kernels=kernels), hidden))
        layers.append(_conv_bn_relu6(
            _odconv(hidden, hidden, 3, stride, groups=hidden, kernels=kernels), hidden))
        layers.append(_odconv(hidden, oup, 1, kernels=kernels))
        layers.append(nn.BatchNorm2d(oup))
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class ODMobileNetV2(nn.Module):
    """OSVAI's OD_MobileNetV2: torchvision's MobileNetV2 names (features.0 the static stem
    conv+BN+ReLU6, features.1..17 the inverted residuals, features.18 the last 1x1 as an
    ODConv+BN+ReLU6, classifier = [Dropout(0.2), Linear] so classifier.1)."""

    # t (expansion), c (channels), n (blocks), s (first stride)
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=1000, width_mult=1.0, dropout=0.2, kernels=1):
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features = [_conv_bn_relu6(nn.Conv2d(3, channels, 3, 2, 1, bias=False), channels)]
        for t, c, n, s in self.SETTING:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(ODInvertedResidual(channels, out, s if i == 0 else 1, t,
                                                   kernels))
                channels = out
        features.append(_conv_bn_relu6(_odconv(channels, self.last_channel, 1, kernels=kernels),
                                       self.last_channel))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout),
                                        nn.Linear(self.last_channel, num_classes))
        # OSVAI's initialisation (the ODConv kernels keep ODConv2d's own)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def net_update_temperature(self, temperature):
        set_temperature(self, temperature)

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        return self.classifier(x)


def build_od_model(name, num_classes=1000, kernels=1):
    """OSVAI's od_resnet18 / od_resnet50 / od_mobilenetv2_{100,075,050} (OD_OFFICIAL_NAMES) as `name` of
    OD_ZOO: the same modules and state_dict names, every conv of the BasicBlocks / inverted
    residuals and MobileNetV2's last 1x1 (features.18.0) an ODConv2d with `kernels` kernels,
    reduction 1/16, min hidden 16 and temperature 1 (set_temperature changes it). Their
    state_dicts are OSVAI's plus one 0-d buffer attention.temperature per ODConv (OSVAI keeps
    tau as a plain attribute), so OSVAI's checkpoints load with strict=False, the temperatures
    the only missing keys. Records zoo_name and kernels on the model."""
    if name == "od_resnet18":
        model = ODResNet((2, 2, 2, 2), num_classes=num_classes, kernels=kernels)
    elif name == "od_resnet50":
        model = ODResNet((3, 4, 6, 3), num_classes=num_classes, kernels=kernels,
                         block=ODBottleneck)
    elif name in _OD_MOBILENET_V2_WIDTHS:
        model = ODMobileNetV2(num_classes, _OD_MOBILENET_V2_WIDTHS[name], kernels=kernels)
    else:
        raise ValueError(f"unknown ODConv model '{name}'; known: {', '.join(OD_ZOO)}")
    model.zoo_name = name
    model.kernels = int(kernels)
    return model


__all__ += ["OD_ZOO", "OD_OFFICIAL_NAMES", "OD_OFFICIAL_PARAMS", "OD_REDUCTION",
            "OD_MIN_HIDDEN", "ODBasicBlock", "ODBottleneck", "ODResNet", "ODInvertedResidual", "ODMobileNetV2",
            "build_od_model", "od_layers"]
