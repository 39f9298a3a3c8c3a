#!/usr/bin/env python3
"""Writes the PyTorch reference data for tests/test_cli.cpp (the dynconv-run command).

    /usr/bin/python3 tools/make_cli_test_data.py --out DIR

Two small models with random weights (tools/dynconv_torch.py build_model + randomize_, every
value exactly representable in float16, stored as F16):

    DIR/tiny_dynamic.safetensors  dy_mobilenet_v3_small, 10 classes, with the metadata of a
                                  Fashion-MNIST model: model, num_classes, class_names,
                                  input_size "32", resize "bilinear", normalize_mean/std,
                                  grayscale_to_rgb "true", kernels, reduction, min_hidden, policy
    DIR/tiny_static.safetensors   mobilenet_v3_small, 10 classes, no metadata at all (so
                                  dynconv-run takes --classes and the ImageNet preset)

inputs (pixels drawn from a seeded generator; images written with PIL):

    DIR/input.safetensors  tensor 'input' [3, 3, 32, 32] F32, 0.5 * dynconv_torch.random_input
                           (32x32 and that scale are inside what the BatchNorms were
                           calibrated on: elsewhere this random model's float32 forward
                           drifts from float64 by up to 3e-3, in PyTorch too)
    DIR/grey28.png         28x28 grey (a Fashion-MNIST-sized image)
    DIR/colour.png         30x40 RGB (wider than tall)
    DIR/rgba.png           45x33 RGBA (taller than wide; alpha is dropped)
    DIR/big.ppm            80x96 RGB PPM (P6), shrunk by the ImageNet preset (antialiasing)
    DIR/grey.jpg           28x28 grey JPEG (quality 90)
    DIR/labels.txt         10 class names, one per line

and DIR/expected.safetensors with, for each case of CASES below, `logits.<case>` [N, 10] F64:
PyTorch's float64 forward on the inputs preprocessed in Python by torchvision's functional
transforms (decoded by PIL; resize: torchvision.transforms.functional.resize, bilinear,
antialias=True, on the float image; center_crop; normalize), independently of the C++ under
test. The C++ test runs dynconv-run with each case's arguments and compares its --output
logits (relative to max |logit|) and its printed top-1 classes. The JPEG case has its own
looser tolerance: stb_image and libjpeg (PIL) decode JPEG slightly differently.

DIR/manifest.txt (the case names) exists only after a run that completed: it is deleted first
thing (before PyTorch is imported) and written last.

Exit status: 0 on success; 77 (ctest's "skipped") if PyTorch, torchvision or PIL cannot be
imported, unless the environment variable DYNCONV_REQUIRE_TORCH=1, then 1.
"""

import argparse
import json
import os
import subprocess
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_guard import start, write_manifest  # noqa: E402

start(os.path.basename(__file__), ["torch", "torchvision", "PIL"])
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from PIL import Image  # noqa: E402

import dynconv_torch as dt  # noqa: E402

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
LABELS = [f"label {i}" for i in range(10)]  # labels.txt, for the static model
FASHION_MEAN = [0.2860, 0.2860, 0.2860]
FASHION_STD = [0.3530, 0.3530, 0.3530]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# Every case must have PyTorch's float32 logits within MAX_FLOAT32_ERROR of its float64 ones
# (relative to max |logit|) and a top-1 margin of at least MIN_MARGIN (same units).
MAX_FLOAT32_ERROR = 2e-5
MIN_MARGIN = 1e-3

# The preprocessing each weight file implies: (resize, crop, mean, std, grayscale).
DYNAMIC_PREP = dict(resize=32, crop=32, mean=FASHION_MEAN, std=FASHION_STD, grayscale=True)


def imagenet_prep(crop, normalize=True):
    return dict(resize=int(round(crop * 256 / 224)), crop=crop,
                mean=IMAGENET_MEAN if normalize else None,
                std=IMAGENET_STD if normalize else None, grayscale=False)


# name -> (weights, images or None for input.safetensors, preprocessing). The C++ test has the
# same table with dynconv-run's arguments (tests/test_cli.cpp, kParityCases).
CASES = {
    "tensor": ("tiny_dynamic", None, None),
    "images_metadata": ("tiny_dynamic", ["grey28.png", "colour.png", "rgba.png", "big.ppm"],
                        DYNAMIC_PREP),
    "images_imagenet": ("tiny_static", ["colour.png", "big.ppm", "grey28.png"],
                        imagenet_prep(32)),
    "images_no_normalize": ("tiny_static", ["big.ppm", "rgba.png"],
                            imagenet_prep(40, normalize=False)),
    "jpeg": ("tiny_dynamic", ["grey.jpg"], DYNAMIC_PREP),
}


def seed_of(text):
    return zlib.crc32(text.encode("utf-8"))


def make_model(name, seed):
    """A randomised model. randomize_ calibrates the BatchNorm statistics on a random batch;
    at 32x32 the last stages are 1x1 or 2x2, so a batch of 4 (the default) gives variances
    from a handful of values and logits of 1e5 or more that float32 cannot follow to 1e-4:
    256 samples keep the logits O(1)."""
    model = dt.build_model(name, num_classes=10)
    dt.randomize_(model, seed, input_size=(32, 32), calibration_batch=256)
    model.eval()
    return model


def save_weights(model, path, metadata):
    tensors = {}
    for key, t in model.state_dict().items():
        t = t.detach()
        if key.endswith("attention.temperature"):
            tensors[key] = t.float()
        elif t.is_floating_point():
            assert dt.is_half_exact(t), key
            tensors[key] = t.half()
        else:
            tensors[key] = t
    dt.save_safetensors(path, tensors, metadata)


def make_images(out, gen):
    """Smooth random patterns plus noise, as uint8 arrays; written with PIL."""
    def pattern(h, w, c):
        low = torch.rand(1, c, 4, 5, generator=gen, dtype=torch.float64)
        smooth = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic",
                                                 align_corners=False)[0]
        noise = 0.15 * torch.rand(c, h, w, generator=gen, dtype=torch.float64)
        img = (smooth + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return img.permute(1, 2, 0).numpy()  # HWC

    Image.fromarray(pattern(28, 28, 1)[:, :, 0], "L").save(os.path.join(out, "grey28.png"))
    Image.fromarray(pattern(30, 40, 3), "RGB").save(os.path.join(out, "colour.png"))
    Image.fromarray(pattern(45, 33, 4), "RGBA").save(os.path.join(out, "rgba.png"))
    Image.fromarray(pattern(80, 96, 3), "RGB").save(os.path.join(out, "big.ppm"))
    Image.fromarray(pattern(28, 28, 1)[:, :, 0], "L").save(os.path.join(out, "grey.jpg"),
                                                          quality=90)


def preprocess(path, resize, crop, mean, std, grayscale):
    """[3, crop, crop] float64: torchvision's functional transforms on PIL's decoding."""
    img = Image.open(path)
    img = img.convert("L") if grayscale or img.mode in ("L", "LA") else img.convert("RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.float64) / 255.0)
    x = x.unsqueeze(0).expand(3, -1, -1) if x.dim() == 2 else x.permute(2, 0, 1)
    x = TF.resize(x.unsqueeze(0).contiguous(), [resize],
                  interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    x = TF.center_crop(x, [crop, crop])[0]
    if mean is not None:
        x = TF.normalize(x, mean, std)
    return x


SHIPPED = ["dy_mobilenet_v3_small", "mobilenet_v3_small", "condconv_mobilenet_v3_small",
           "odconv_mobilenet_v3_small"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)

    models = {"tiny_dynamic": make_model("dy_mobilenet_v3_small", seed_of("cli/dynamic")),
              "tiny_static": make_model("mobilenet_v3_small", seed_of("cli/static"))}
    dyn = models["tiny_dynamic"]
    save_weights(dyn, os.path.join(out, "tiny_dynamic.safetensors"), {
        "model": "dy_mobilenet_v3_small", "num_classes": "10",
        "class_names": json.dumps(CLASS_NAMES), "input_size": "32", "resize": "bilinear",
        "normalize_mean": json.dumps(FASHION_MEAN), "normalize_std": json.dumps(FASHION_STD),
        "grayscale_to_rgb": "true", "kernels": str(dyn.kernels), "reduction": "4",
        "min_hidden": "1", "policy": dyn.policy_name})
    save_weights(models["tiny_static"], os.path.join(out, "tiny_static.safetensors"), None)
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("".join(name + "\n" for name in LABELS))

    gen = torch.Generator().manual_seed(seed_of("cli/tensor"))
    x = (0.5 * dt.random_input(3, 32, 32, gen)).float()  # within the calibration's range
    gen = torch.Generator().manual_seed(seed_of("cli/images"))
    dt.save_safetensors(os.path.join(out, "input.safetensors"), {"input": x},
                        {"note": "dynconv-run test input"})
    make_images(out, gen)

    expected = {}
    for case, (weights, images, prep) in CASES.items():
        model = models[weights]
        if images is None:
            batch = x.double()
        else:
            batch = torch.stack([preprocess(os.path.join(out, p), **prep) for p in images])
        with torch.no_grad():
            logits32 = model.float()(batch.float()).double()
            logits = model.double()(batch)
        expected[f"logits.{case}"] = logits
        scale = float(logits.abs().max())
        top2 = logits.topk(2, dim=1).values
        margin = float((top2[:, 0] - top2[:, 1]).min()) / scale
        err32 = float((logits32 - logits).abs().max()) / scale
        print(f"{case:20s} {weights:13s} input {list(batch.shape)}  top-1 "
              f"{logits.argmax(dim=1).tolist()}  max |logit| {scale:.3g}  "
              f"min top-1 margin {margin:.2e}  torch float32 error {err32:.1e}")
        # The C++ test compares at 1e-4 relative and checks the top-1 classes: the data must
        # leave room for float32 (PyTorch's own float32 forward is the yardstick).
        if err32 > MAX_FLOAT32_ERROR or margin < MIN_MARGIN:
            sys.exit(f"make_cli_test_data.py: case {case} is ill-conditioned (float32 error "
                     f"{err32:.1e} > {MAX_FLOAT32_ERROR:.0e} or top-1 margin {margin:.1e} < "
                     f"{MIN_MARGIN:.0e}); change the seeds")
    dt.save_safetensors(os.path.join(out, "expected.safetensors"), expected,
                        {"torch_version": torch.__version__})

    # PyTorch's predictions for the 10,000 Fashion-MNIST test images with each shipped model
    # (examples/fashion_mnist_weights/), for the C++ agreement check: <model>.torch_predictions.txt.
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    for name in SHIPPED:
        weights = os.path.join(root, "examples", "fashion_mnist_weights", name + ".safetensors")
        subprocess.run([sys.executable, os.path.join(root, "tools", "train_fashion_mnist.py"),
                        "--predict-only", "--weights", weights, "--predictions",
                        os.path.join(out, name + ".torch_predictions.txt")], check=True)

    write_manifest(out, CASES)  # last


if __name__ == "__main__":
    main()
