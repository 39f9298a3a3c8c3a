#!/usr/bin/env python3
"""Writes PyTorch reference data for the custom-network tests (tests/test_graph.cpp).

    /usr/bin/python3 tools/make_custom_net_data.py --out DIR

CustomNet below is the PyTorch twin of examples/custom_network.hpp: the same layers under the
same module names, so its state_dict is the C++ graph's parameter file. Every parameter, every
BatchNorm statistic and the attention are randomised (one dynamic layer at tau = 1.5), and
DIR/weights.safetensors (the state_dict, F64), DIR/io.safetensors (an input batch of 2 images
and PyTorch's float64 outputs `logits` [2, 10] and `features` [2, 32, 14, 14]) and, last,
DIR/manifest.txt are written.

Exit status: 0 on success; 77 if PyTorch cannot be imported, unless DYNCONV_REQUIRE_TORCH=1,
then 1.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_guard import start  # noqa: E402

start(os.path.basename(__file__), ["torch"])
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dynconv_torch import DynamicConv2d, save_safetensors  # noqa: E402


class CustomNet(nn.Module):
    """The network of examples/custom_network.hpp."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.block_conv1 = DynamicConv2d(16, 16, 3, padding=1, bias=False, kernels=4)
        self.block_bn1 = nn.BatchNorm2d(16)
        self.block_conv2 = DynamicConv2d(16, 16, 3, padding=1, bias=False, kernels=4)
        self.block_bn2 = nn.BatchNorm2d(16)
        self.se_fc1 = nn.Conv2d(16, 4, 1)
        self.se_fc2 = nn.Conv2d(4, 16, 1)
        self.branch_conv = DynamicConv2d(16, 8, 3, padding=1, bias=False, kernels=3)
        self.branch_bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        s = self.stem(x)
        r = F.relu(self.block_bn1(self.block_conv1(s)))
        r = F.relu(self.block_bn2(self.block_conv2(r)) + s)
        gate = torch.sigmoid(self.se_fc2(F.relu(self.se_fc1(F.adaptive_avg_pool2d(r, 1)))))
        r = r * gate
        down = F.max_pool2d(r, 2)
        b = F.silu(self.branch_bn(self.branch_conv(down)))
        features = F.hardswish(self.head(torch.cat([down, b], dim=1)))
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))
        return logits, features


def randomise(net, gen):
    """Every parameter and BatchNorm statistic random; attention logits spread out."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            scale = 1.5 if "attention" in name else 0.5
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=gen, dtype=torch.float64) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
        net.block_conv2.attention.temperature.fill_(1.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(20261203)
    net = CustomNet().double().eval()
    randomise(net, gen)
    x = torch.rand(2, 1, 28, 28, generator=gen, dtype=torch.float64) * 2 - 1
    x[1] += 0.5  # the two samples get clearly different attention
    with torch.no_grad():
        logits, features = net(x)
    save_safetensors(os.path.join(args.out, "weights.safetensors"),
                     {k: v.contiguous() for k, v in net.state_dict().items()})
    save_safetensors(os.path.join(args.out, "io.safetensors"),
                     {"input": x, "logits": logits, "features": features.contiguous()})
    with open(os.path.join(args.out, "manifest.txt"), "w") as f:
        f.write("weights.safetensors\nio.safetensors\n")
    print(f"make_custom_net_data.py: wrote {args.out}")


if __name__ == "__main__":
    main()
