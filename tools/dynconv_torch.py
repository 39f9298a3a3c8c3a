"""PyTorch reference of dynconv's dynamic convolution, and a minimal safetensors writer.

This module is the oracle the C++ library is tested against (tools/make_parity_data.py) and is
meant to be imported by later tools. It follows /work/shared/docs/paper.md:

    s      = GAP(x)                       [N, Cin]
    z      = fc2(relu(fc1(s)))            [N, K]
    pi     = softmax(z / tau)             [N, K]
    W~_n   = sum_k pi[n, k] W_k,  b~_n = sum_k pi[n, k] b_k
    y_n    = conv2d(x_n, W~_n, b~_n, stride, padding, dilation, groups)

The forward pass loops over the samples and calls F.conv2d once per sample with that sample's
aggregated kernel: slow, but obviously right. Parameter names match the C++ library and its
weight files:

    weight                  [K, Cout, Cin/groups, kh, kw]
    bias                    [K, Cout]                       (only with bias=True)
    attention.fc1.weight    [hidden, Cin]
    attention.fc1.bias      [hidden]
    attention.fc2.weight    [K, hidden]
    attention.fc2.bias      [K]
    attention.temperature   scalar buffer (tau)

Needs PyTorch (on this machine: /usr/bin/python3 with Debian's python3-torch).
"""

import json
import math
import struct

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KernelAttention", "DynamicConv2d", "attention_hidden", "save_safetensors",
           "SAFETENSORS_DTYPES"]


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
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = int(groups)
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

    def forward_with_attention(self, x):
        """x [N, Cin, H, W] -> (y [N, Cout, Hout, Wout], pi [N, K])."""
        pi = self.attention(x)
        outs = []
        for n in range(x.shape[0]):
            w, b = self.aggregate(pi[n])
            outs.append(F.conv2d(x[n:n + 1], w, b, self.stride, self.padding, self.dilation,
                                 self.groups))
        return torch.cat(outs, dim=0), pi

    def forward(self, x):
        return self.forward_with_attention(x)[0]

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
