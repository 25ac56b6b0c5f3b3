#!/usr/bin/env python3
"""Random-weight VGG files in torchvision's `features` layout, and PyTorch goldens of the
perceptual loss (crates/model/src/perceptual.rs).

torchvision is not needed (nor installed in /work/pyref): `features` is rebuilt here exactly as
torchvision.models.vgg.make_layers builds it without batch norm -- for each entry of the
configuration a Conv2d(3x3, padding 1) followed by ReLU, and a MaxPool2d(2, 2) at the end of
each block -- so the module indices, and therefore the keys `features.N.weight/bias`, are
torchvision's.

Default mode (the test data; deterministic, fixed seeds) writes under crates/model/tests/data/:
  * vgg16_random.safetensors, vgg19_random.safetensors: "VGG-shaped" networks with narrow
    channel widths (4, 6, 8, 8, 8 per block instead of 64, 128, 256, 512, 512), Kaiming-normal
    weights and small random biases, float32 (a few kB each);
  * perceptual_torch.safetensors: the fixed inputs pred and target [2, 1, 32, 32] in [-1, 1];
  * perceptual_torch.json: computed in float64 by PyTorch on the same float32 weights and
    inputs: the perceptual loss (weighted mean over layers of the mean L1 / mean squared
    feature difference, after mapping [-1, 1] to [0, 1], replicating to 3 channels and
    ImageNet normalisation) for several layer sets and weights, the sum of |d loss / d pred|,
    and the mean and (population) standard deviation of each compared layer's features of pred.

`--full-width OUT` writes a VGG16 with torchvision's widths and torchvision's initialisation
(kaiming_normal_(fan_out, relu), zero biases; seed 0) to OUT (58.9 MB, float32). It is the file
of configs/ablation/perceptual.toml: a RANDOM network, not ImageNet's VGG, so that ablation
measures a random-feature loss, not the real perceptual loss.

Run: /work/pyref/bin/python tools/golden/vgg_random.py
     /work/pyref/bin/python tools/golden/vgg_random.py --full-width data/vgg16_random_init.safetensors
"""

import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "model", "tests", "data")
BLOCKS = {"vgg16": [2, 2, 3, 3, 3], "vgg19": [2, 2, 4, 4, 4]}
TORCHVISION_WIDTHS = [64, 128, 256, 512, 512]
NARROW_WIDTHS = [4, 6, 8, 8, 8]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def make_features(variant, widths):
    """torchvision.models.vgg.make_layers(cfgs[...], batch_norm=False), and the layer names."""
    layers, names, in_ch = [], [], 3
    for b, (n, w) in enumerate(zip(BLOCKS[variant], widths), start=1):
        for k in range(1, n + 1):
            layers += [torch.nn.Conv2d(in_ch, w, kernel_size=3, padding=1), torch.nn.ReLU(inplace=False)]
            names += [f"conv{b}_{k}", f"relu{b}_{k}"]
            in_ch = w
        layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        names.append(f"pool{b}")
    return torch.nn.Sequential(*layers), names


def init_torchvision(features, random_bias):
    for m in features:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if random_bias:
                torch.nn.init.uniform_(m.bias, -0.1, 0.1)
            else:
                torch.nn.init.zeros_(m.bias)


def state(features):
    return {f"features.{k}": v.detach().float().contiguous() for k, v in features.state_dict().items()}


def imagenet_input(x):
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (((x + 1) / 2).repeat(1, 3, 1, 1) - mean) / std


def layer_outputs(features, names, x, wanted):
    out, h = {}, x
    last = max(names.index(n) for n in wanted)
    for i, m in enumerate(features):
        if i > last:
            break
        h = m(h)
        if names[i] in wanted:
            out[names[i]] = h
    return [out[n] for n in wanted]


def perceptual(features, names, pred, target, layers, weights, distance):
    fp = layer_outputs(features, names, imagenet_input(pred), layers)
    with torch.no_grad():
        ft = layer_outputs(features, names, imagenet_input(target), layers)
    total = 0
    for p, t, w in zip(fp, ft, weights):
        d = (p - t).abs().mean() if distance == "l1" else (p - t).pow(2).mean()
        total = total + w * d
    return total / sum(weights), fp


def smooth_image(gen, n, size):
    """CT-like smooth random images in [-1, 1]: low-resolution noise, bilinearly upsampled."""
    low = torch.rand(n, 1, size // 8, size // 8, generator=gen, dtype=torch.float64) * 1.6 - 0.8
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (img + torch.randn(n, 1, size, size, generator=gen, dtype=torch.float64) * 0.05).clamp(-1, 1)


CASES = [
    # (name, variant, layers, layer weights, distance)
    ("vgg16_default_l1", "vgg16", ["relu1_2", "relu2_2", "relu3_3", "relu4_3"], [1, 1, 1, 1], "l1"),
    ("vgg16_weighted_l1", "vgg16", ["relu1_2", "relu2_2", "relu3_3", "relu4_3"], [1, 0.5, 0.25, 2], "l1"),
    ("vgg16_weighted_mse", "vgg16", ["relu1_2", "relu2_2", "relu3_3", "relu4_3"], [1, 0.5, 0.25, 2], "mse"),
    ("vgg16_deep_l1", "vgg16", ["conv1_1", "pool2", "relu5_3"], [1, 1, 1], "l1"),
    ("vgg19_l1", "vgg19", ["relu1_1", "relu3_4", "relu4_4", "conv5_4"], [1, 1, 0.5, 0.5], "l1"),
]


def goldens():
    torch.manual_seed(1234)
    nets = {}
    for variant in ("vgg16", "vgg19"):
        features, names = make_features(variant, NARROW_WIDTHS)
        init_torchvision(features, random_bias=True)
        tensors = state(features)
        path = os.path.join(OUT, f"{variant}_random.safetensors")
        save_file(tensors, path, metadata={"generator": "tools/golden/vgg_random.py", "widths": str(NARROW_WIDTHS)})
        # The float32 weights as stored, in float64 for the reference computation.
        features.load_state_dict({k[len("features."):]: v for k, v in tensors.items()})
        nets[variant] = (features.double().eval(), names)
        print(f"{path}: {sum(v.numel() for v in tensors.values())} parameters")

    gen = torch.Generator().manual_seed(77)
    target = smooth_image(gen, 2, 32).float()
    pred = (target.double() + smooth_image(gen, 2, 32) * 0.2).clamp(-1, 1).float()
    save_file(
        {"pred": pred.contiguous(), "target": target.contiguous()},
        os.path.join(OUT, "perceptual_torch.safetensors"),
        metadata={"generator": "tools/golden/vgg_random.py"},
    )

    cases = []
    for name, variant, layers, weights, distance in CASES:
        features, names = nets[variant]
        p = pred.double().requires_grad_(True)
        loss, fp = perceptual(features, names, p, target.double(), layers, weights, distance)
        loss.backward()
        stats = [
            {"layer": n, "shape": list(f.shape), "mean": f.mean().item(), "std": f.std(unbiased=False).item()}
            for n, f in zip(layers, fp)
        ]
        cases.append(
            {
                "name": name,
                "variant": variant,
                "layers": layers,
                "layer_weights": [float(w) for w in weights],
                "distance": distance,
                "loss": loss.item(),
                "grad_abs_sum": p.grad.abs().sum().item(),
                "features_of_pred": stats,
            }
        )
        print(f"{name:20s} loss {loss.item():.10f}")
    x = imagenet_input(pred.double())
    meta = {
        "generator": "tools/golden/vgg_random.py",
        "torch": torch.__version__,
        "weights": {"vgg16": "vgg16_random.safetensors", "vgg19": "vgg19_random.safetensors"},
        "widths": NARROW_WIDTHS,
        "inputs": "perceptual_torch.safetensors (float32 pred, target [2, 1, 32, 32])",
        "imagenet_input_channel_means": [x[:, c].mean().item() for c in range(3)],
        "cases": cases,
    }
    with open(os.path.join(OUT, "perceptual_torch.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")


def full_width(out):
    torch.manual_seed(0)
    features, _ = make_features("vgg16", TORCHVISION_WIDTHS)
    init_torchvision(features, random_bias=False)
    tensors = state(features)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    save_file(tensors, tmp, metadata={"generator": "tools/golden/vgg_random.py --full-width", "note": "random init, NOT ImageNet weights"})
    os.replace(tmp, out)
    n = sum(v.numel() for v in tensors.values())
    print(f"{out}: VGG16 features, torchvision widths, random init, {n} parameters ({n * 4 / 2**20:.1f} MiB)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full-width", metavar="OUT", help="write a full-width random VGG16 to OUT instead of the test data")
    args = ap.parse_args()
    if args.full_width:
        full_width(args.full_width)
    else:
        goldens()
