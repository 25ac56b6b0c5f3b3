"""PyTorch twin of the ncct2ctpa networks (crates/model): G, R, the spatial transformer and D.

The twin builds the SAME architectures as the Rust code on tch, from the SAME configuration
(the JSON form of `model::config::ModelConfig`, keys and defaults identical), and its
`state_dict()` keys are the names of our VarStore variables, so weights move both ways with
safetensors and no renaming (only BatchNorm's `num_batches_tracked`, which we do not keep, is
dropped by `export_state`).

It serves two purposes:
  * tools/golden/model_parity.py builds it, exports weights and golden outputs, and the Rust
    test crates/model/tests/parity.rs checks that our networks reproduce them to 1e-4;
  * benchmarks compare our training step against this one, like with like.

Conventions (see crates/model/src/*.rs for the reasoning):
  * tensors NCHW float32, images in [-1, 1];
  * UNet: max-pool down, 2x2 transposed-conv up, skip concatenated BEFORE the upsampled
    features, 1x1 head; G adds tanh; R's head starts at N(0, head_init_std), zero bias;
  * warp: displacement in pixels, channel 0 = dx (width), 1 = dy (height), bilinear,
    align_corners=True, border padding, grid = 2 * (x + dx) / (W - 1) - 1;
  * D: pix2pix NLayerDiscriminator, torch.nn.utils.spectral_norm on every conv (1 power
    iteration per training forward), no norm on the first layer, condition concatenated first.

Usage:
    import reggan_twin as twin
    cfg = twin.preset("tiny")
    g, r, d = twin.build(cfg)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_CONFIG",
    "PRESETS",
    "preset",
    "merge_config",
    "Generator",
    "RegistrationNet",
    "Discriminator",
    "warp",
    "build",
    "count_parameters",
    "export_state",
]

GAN_INIT_STD = 0.02
# model::generator::RESIDUAL_EPS: a residual G clamps its centre input channel to
# [-1 + eps, 1 - eps] before atanh, so that air (-1) has a finite pre-activation.
RESIDUAL_EPS = 1e-4

# The Default of model::config::ModelConfig, key for key.
DEFAULT_CONFIG: dict[str, Any] = {
    "generator": {
        "in_channels": 1,
        "out_channels": 1,
        "base_channels": 64,
        "depth": 4,
        "max_channels": 1024,
        "convs_per_stage": 4,
        "norm": "instance",
        "activation": "relu",
        "leaky_slope": 0.2,
        "residual": False,
        "init": "gan",
    },
    "registration": {
        "base_channels": 12,
        "depth": 3,
        "max_channels": 24,
        "convs_per_stage": 2,
        "norm": "none",
        "activation": "leaky_relu",
        "leaky_slope": 0.2,
        "head_init_std": 1e-5,
        "attention": False,
    },
    "discriminator": {
        "image_channels": 1,
        "conditional": False,
        "condition_channels": 1,
        "base_channels": 64,
        "n_layers": 3,
        "max_channels": 512,
        "norm": "instance",
        "leaky_slope": 0.2,
        "spectral_norm": True,
        "spectral_norm_eps": 1e-12,
    },
}

# model::config::ModelConfig::preset, as overrides of DEFAULT_CONFIG.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": {
        "generator": {"base_channels": 8, "depth": 3, "max_channels": 64, "convs_per_stage": 2},
        "registration": {"base_channels": 8, "depth": 2, "max_channels": 16},
        "discriminator": {"base_channels": 8, "max_channels": 64},
    },
    "reggan": {
        "registration": {"base_channels": 32, "depth": 4, "max_channels": 128},
    },
}


def merge_config(overrides: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` (DEFAULT_CONFIG) with `overrides` applied; unknown keys raise (like serde's
    deny_unknown_fields)."""
    out = copy.deepcopy(DEFAULT_CONFIG if base is None else base)
    for section, values in overrides.items():
        if section not in out:
            raise KeyError(f"unknown config section {section!r}")
        for key, value in values.items():
            if key not in out[section]:
                raise KeyError(f"unknown key {section}.{key}")
            out[section][key] = value
    return out


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    return merge_config(PRESETS[name])


# ---------------------------------------------------------------------------- building blocks


def activation(kind: str, slope: float) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "leaky_relu":
        return nn.LeakyReLU(slope)
    if kind == "elu":
        return nn.ELU()
    if kind == "gelu":
        return nn.GELU()
    if kind == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown activation {kind!r}")


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ConvNormAct(nn.Module):
    """3x3 conv (padding 1, no bias before batch norm) + norm + activation."""

    def __init__(self, c_in: int, c_out: int, norm: str, act: str, slope: float):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm != "batch")
        self.norm = norm_layer(norm, c_out)
        self.act = activation(act, slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class Stage(nn.ModuleList):
    """`convs` ConvNormAct layers; keys `<stage>.<j>.conv.weight`."""

    def __init__(self, c_in: int, c_out: int, convs: int, norm: str, act: str, slope: float):
        super().__init__(
            ConvNormAct(c_in if j == 0 else c_out, c_out, norm, act, slope) for j in range(convs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x


class UpStage(nn.Module):
    def __init__(self, c_deep: int, c_out: int, stage_args: tuple):
        super().__init__()
        self.upconv = nn.ConvTranspose2d(c_deep, c_out, 2, stride=2)
        self.convs = Stage(2 * c_out, c_out, *stage_args)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([skip, self.upconv(deep)], 1))


class UNet(nn.Module):
    def __init__(self, c_in, c_out, base, depth, max_channels, convs, norm, act, slope):
        super().__init__()
        width = [min(base * 2**i, max_channels) for i in range(depth + 1)]
        stage_args = (convs, norm, act, slope)
        self.down = nn.ModuleList(
            Stage(c_in if i == 0 else width[i - 1], width[i], *stage_args) for i in range(depth)
        )
        self.mid = Stage(c_in if depth == 0 else width[depth - 1], width[depth], *stage_args)
        self.up = nn.ModuleList(UpStage(width[i + 1], width[i], stage_args) for i in range(depth))
        self.head = nn.Conv2d(width[0], c_out, 1)
        self.bottleneck_channels = width[depth]

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Hook on the bottleneck features before the decoder (identity here; R's attention)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, stage in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        if len(self.down) > 0:
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(self.mid(x))
        for up, skip in reversed(list(zip(self.up, skips))):
            x = up(x, skip)
        return self.head(x)


def _init_normal(module: nn.Module, std: float) -> None:
    """pix2pix's init_weights(net, 'normal', std): conv weights N(0, std), biases 0, batch-norm
    scale N(1, std)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = getattr(m, "weight_orig", m.weight)
            nn.init.normal_(weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def _init_kaiming(module: "UNet", cfg: dict[str, Any]) -> None:
    """He normal, fan in, as GeneratorConfig's init = "kaiming": the activation's gain (leaky
    ReLU's for leaky_relu, ReLU's for the others) on every conv and up-conv, gain 1 on the
    head; biases 0. PyTorch's fan in of a ConvTranspose2d weight [c_in, c_out, k, k] is
    c_out k^2, as tch's."""
    if cfg["activation"] == "leaky_relu":
        gain = math.sqrt(2.0 / (1.0 + cfg["leaky_slope"] ** 2))
    else:
        gain = math.sqrt(2.0)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            g = 1.0 if m is module.head else gain
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
            with torch.no_grad():
                m.weight.mul_(g)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            # as in Rust, batch norm's scale keeps pix2pix's N(1, 0.02) whatever the conv init
            nn.init.normal_(m.weight, 1.0, GAN_INIT_STD)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------- networks


class Generator(UNet):
    """G: UNet + tanh. x [B, in_channels, H, W] -> [B, out_channels, H, W] in [-1, 1].

    Weights N(0, 0.02), biases 0 (pix2pix/RegGAN), as in crates/model/src/generator.rs.

    With cfg["residual"] (default False), G corrects its centre input channel (channel
    in_channels // 2, the slice itself in a 2.5D stack) instead of predicting the whole image:
    out = tanh(atanh(clamp(x_centre, -1 + RESIDUAL_EPS, 1 - RESIDUAL_EPS)) + unet(x)),
    broadcast over out_channels, with the 1x1 head's weights starting at zero (an untrained G
    is the identity up to RESIDUAL_EPS)."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(
            cfg["in_channels"], cfg["out_channels"], cfg["base_channels"], cfg["depth"],
            cfg["max_channels"], cfg["convs_per_stage"], cfg["norm"], cfg["activation"],
            cfg["leaky_slope"],
        )
        init = cfg.get("init", "gan")
        if init == "gan":
            _init_normal(self, GAN_INIT_STD)
        elif init == "kaiming":
            _init_kaiming(self, cfg)
        else:
            raise ValueError(f"unknown generator init {init!r}")
        self.residual = bool(cfg.get("residual", False))
        self.centre = cfg["in_channels"] // 2
        if self.residual:
            nn.init.zeros_(self.head.weight)  # the bias is zero already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = super().forward(x)
        if not self.residual:
            return torch.tanh(u)
        centre = x[:, self.centre : self.centre + 1]
        centre = centre.clamp(-1.0 + RESIDUAL_EPS, 1.0 - RESIDUAL_EPS).atanh()
        return torch.tanh(centre + u)


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019), crates/model/src/attention.rs:
    q, k = 1x1 convs to max(C // 8, 1) channels, v = 1x1 conv to C, attn = softmax_j(q_i . k_j)
    (no scaling), out = gamma * (v attn^T) + x with gamma starting at 0. x [B, C, H, W]."""

    def __init__(self, channels: int):
        super().__init__()
        qc = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, qc, 1)
        self.key = nn.Conv2d(channels, qc, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).view(b, -1, h * w).permute(0, 2, 1)  # [B, N, C']
        k = self.key(x).view(b, -1, h * w)  # [B, C', N]
        v = self.value(x).view(b, c, h * w)  # [B, C, N]
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # [B, N, N]
        o = torch.bmm(v, attn.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * o + x


class RegistrationNet(UNet):
    """R: (moving [B,1,H,W], fixed [B,1,H,W]) -> flow [B, 2, H, W] in pixels (dx, dy).

    Hidden convs He-uniform (fan-in, ReLU gain) with zero bias, head N(0, head_init_std) with
    zero bias, as in crates/model/src/registration.rs."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(
            2, 2, cfg["base_channels"], cfg["depth"], cfg["max_channels"],
            cfg["convs_per_stage"], cfg["norm"], cfg["activation"], cfg["leaky_slope"],
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, 0.0, cfg["head_init_std"])
        nn.init.zeros_(self.head.bias)
        # built after the init loop: PyTorch's default Conv2d init, as tch's in attention.rs
        self.attn = SelfAttention(self.bottleneck_channels) if cfg["attention"] else None

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.attn is None else self.attn(x)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([moving, fixed], 1))


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image [B, C, H, W] sampled at (x + dx, y + dy): bilinear, align_corners, border."""
    _, _, h, w = flow.shape
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device).view(1, h, 1)
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device).view(1, 1, w)
    gx = 2.0 * (xs + flow[:, 0]) / (w - 1) - 1.0
    gy = 2.0 * (ys + flow[:, 1]) / (h - 1) - 1.0
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


class SNConvLayer(nn.Module):
    def __init__(self, c_in, c_out, stride, norm, slope, eps, spectral=True):
        super().__init__()
        conv = nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1, bias=norm != "batch")
        self.conv = nn.utils.spectral_norm(conv, n_power_iterations=1, eps=eps) if spectral else conv
        self.norm = norm_layer(norm, c_out)
        self.act = nn.LeakyReLU(slope) if slope is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class Discriminator(nn.Module):
    """D: PatchGAN with spectral norm (unless cfg["spectral_norm"] is False).
    x [B, C, H, W] -> logits [B, 1, H', W']."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        c_in = cfg["image_channels"] + (cfg["condition_channels"] if cfg["conditional"] else 0)
        n = cfg["n_layers"]
        width = [min(cfg["base_channels"] * 2**k, cfg["max_channels"]) for k in range(n + 1)]
        slope, eps, norm = cfg["leaky_slope"], cfg["spectral_norm_eps"], cfg["norm"]
        plan = [(c_in, width[0], 2, "none", slope)]
        plan += [(width[k - 1], width[k], 2, norm, slope) for k in range(1, n)]
        plan += [(width[max(n - 1, 0)], width[n], 1, norm, slope), (width[n], 1, 1, "none", None)]
        spectral = cfg["spectral_norm"]
        self.layers = nn.ModuleList(SNConvLayer(*p, eps, spectral) for p in plan)
        self.conditional = cfg["conditional"]
        _init_normal(self, GAN_INIT_STD)

    def input(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return torch.cat([condition, image], 1) if self.conditional else image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------------------- helpers


def build(cfg: dict[str, Any]) -> tuple[Generator, RegistrationNet, Discriminator]:
    """G, R and D of a full model config (DEFAULT_CONFIG's shape)."""
    return (
        Generator(cfg["generator"]),
        RegistrationNet(cfg["registration"]),
        Discriminator(cfg["discriminator"]),
    )


def count_parameters(module: nn.Module) -> int:
    """Trainable parameter count (ModelSummary's `trainable`)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def export_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict keyed by our VarStore names: contiguous float32 tensors, without
    BatchNorm's `num_batches_tracked` (we do not keep it)."""
    return {
        k: v.detach().contiguous().clone()
        for k, v in module.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
