#!/usr/bin/env python3
"""PyTorch side of `ncct2ctpa bench`: the same RegGAN training step and inference as
crates/train/src/step.rs and crates/infer/src/predict.rs, on the PyTorch twin of the networks
(reggan_twin.py), timed the same way. Prints one JSON object (schema below) on stdout.

`ncct2ctpa bench --pytorch PYTHON` runs this script once per benchmark configuration with the
same preset, crop size, batch, thread count, step counts and initial weights as the Rust side,
and prints ours / PyTorch for every figure. It can also be run alone:

    python tools/pytorch_twin/bench.py --preset tiny --size 128 --batch 4 --threads 2

The step (identical to train::step::train_step, in its order):
  1. G and R on one loss, D frozen:
       fake = G(x); flow = R(fake, y); reg = warp(fake, flow)
       loss_G = 20 * L1_w(reg, y) + 10 * (1 - SSIM_w(reg, y)) + 1 * LSGAN_G(D(fake))
                + 10 * smooth(flow)
     with per-pixel lung weights w = 1 + 9 * lung (weighted means), SSIM with the Gaussian
     window 11 / sigma 1.5 as two depthwise valid 1D convs over 5 stacked statistics (the same
     computation as crates/model/src/ssim.rs); backward; Adam(lr 1e-4, betas (0.5, 0.999))
     over G and R.
  2. D on real vs the detached fake, in one pass over cat([y, fake]):
     loss_D = LSGAN_D(D(y), D(fake)); backward; its own Adam.
  Both backward passes run before either update (D sees the detached fake, not G's weights,
  so the order changes no value); every loss term and statistic is then read back in ONE
  transfer (`torch.stack(...).tolist()`) and checked for NaN before the two `opt.step()`s,
  the way a careful PyTorch loop avoids a `.item()` per term. (Ours checks on the device and
  gates its fused Adam by the flag, reading back after the updates; same values.)
  `zero_grad()` is torch's default, set_to_none=True, as ours.
Inference: G in eval mode under no_grad, batches of slices normalised from HU and mapped
back, as infer::predict::Translator does.

The parts (PARTS, the names of train::step::Part) are timed in `steps` further steps after
one warm-up, with a clock read between parts (after torch.cuda.synchronize on a GPU), as
bench::step::time_parts does inside our trainer's step.

Peak memory: /proc/self/clear_refs ("5") resets VmHWM to the current RSS before a phase, and
VmHWM is read after it; the same method as the Rust side.

Output (all times in seconds; `null` where a figure was not measured):
{
  "schema": 1, "torch": "2.13.0", "threads": 2, "preset": "tiny", "size": 128, "batch": 4,
  "steps": 20, "warmup": 3,
  "channels_last": false,
  "step": {"samples": [...], "median": s, "p10": s, "p90": s, "mean": s},
  "step_cpu": {summary of time.process_time() per step: user + system CPU, all threads},
  "parts": {"g_forward": {summary}, ...} (PARTS, timed in separate steps; null with --no-parts),
  "first_step": {"loss_g": f, "loss_d": f, "l1": f, "ssim": f, "adv_g": f, "smooth": f},
  "infer": {"size": 512, "slices": n, "batch": b, "seconds": s, "slices_per_s": f},
  "memory": {"step": {"base_mb": f, "peak_mb": f}, "infer": {...}},
  "flops": {"step": n, "g_forward_infer": n}
}
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reggan_twin as twin  # noqa: E402

SCHEMA = 2

# crates/model/src/losses.rs LossConfig::default
LOSS = dict(l1_weight=20.0, ssim_weight=10.0, lung_weight=10.0, ssim_data_range=2.0,
            adversarial_weight=1.0, smoothness_weight=10.0)
# crates/model/src/optim.rs AdamConfig::default (RegGAN)
ADAM = dict(lr=1e-4, betas=(0.5, 0.999), eps=1e-8)
# metrics::SsimParams::default (scikit-image)
SSIM_SIGMA, SSIM_TRUNCATE, SSIM_K1, SSIM_K2 = 1.5, 3.5, 0.01, 0.03


# ---------------------------------------------------------------------------- losses


def gaussian_window() -> list[float]:
    n = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
    r = n // 2
    w = [math.exp(-0.5 * (i - r) ** 2 / SSIM_SIGMA**2) for i in range(n)]
    s = sum(w)
    return [v / s for v in w]


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """[B, C, H, W] pair -> [B, C, H - 10, W - 10] SSIM (model::ssim::ssim_map)."""
    c = a.shape[1]
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    offset = ((a.mean(dim=(2, 3), keepdim=True) + b.mean(dim=(2, 3), keepdim=True)) * 0.5).detach()
    a0, b0 = a - offset, b - offset
    stacked = torch.cat([a0, b0, a0 * a0, b0 * b0, a0 * b0], 1)
    g = torch.tensor(gaussian_window(), dtype=a.dtype, device=a.device)
    n = g.numel()
    ch = 5 * c
    vertical = g.view(1, 1, n, 1).repeat(ch, 1, 1, 1)
    horizontal = g.view(1, 1, 1, n).repeat(ch, 1, 1, 1)
    filt = F.conv2d(F.conv2d(stacked, vertical, groups=ch), horizontal, groups=ch)
    mu_a0, mu_b0, e_aa, e_bb, e_ab = filt.chunk(5, 1)
    var_a = e_aa - mu_a0 * mu_a0
    var_b = e_bb - mu_b0 * mu_b0
    cov = e_ab - mu_a0 * mu_b0
    mu_a, mu_b = mu_a0 + offset, mu_b0 + offset
    lum = (mu_a * mu_b * 2.0 + c1) / (mu_a * mu_a + mu_b * mu_b + c1)
    return lum * (cov * 2.0 + c2) / (var_a + var_b + c2)


def reconstruction(pred, target, lung):
    """(l1, 1 - ssim, total): lung-weighted means (model::losses::reconstruction)."""
    w = lung * (LOSS["lung_weight"] - 1.0) + 1.0
    w_full = w.expand_as(pred)
    l1 = (w_full * (pred - target).abs()).sum() / w_full.sum()
    m = ssim_map(pred, target, LOSS["ssim_data_range"])
    pad = (len(gaussian_window()) - 1) // 2
    h, wd = pred.shape[2], pred.shape[3]
    wc = w[:, :, pad:h - pad, pad:wd - pad].expand_as(m)
    ssim_term = 1.0 - (wc * m).sum() / wc.sum()
    return l1, ssim_term, l1 * LOSS["l1_weight"] + ssim_term * LOSS["ssim_weight"]


def smoothness(flow):
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    return (dx * dx).mean() + (dy * dy).mean()


# ---------------------------------------------------------------------------- the step


class Step:
    """G, R, D, their two Adams, and one RegGAN step (train::step::train_step)."""

    def __init__(self, cfg: dict, init_dir: str | None, channels_last: bool = False):
        self.g, self.r, self.d = twin.build(cfg)
        if init_dir:
            for net, name in ((self.g, "generator"), (self.r, "registration"), (self.d, "discriminator")):
                load_exact(net, Path(init_dir) / f"{name}.safetensors")
        for m in (self.g, self.r, self.d):
            m.train()
            if channels_last:
                # 4-D weights NHWC in memory (the optimizers' moments follow: zeros_like)
                m.to(memory_format=torch.channels_last)
        self.d_params = list(self.d.parameters())
        self.opt_gr = torch.optim.Adam(list(self.g.parameters()) + list(self.r.parameters()), **ADAM)
        self.opt_d = torch.optim.Adam(self.d_params, **ADAM)

    def __call__(self, x, y, lung, step: int, clock: "Clock | None" = None) -> dict:
        """One step; with `clock`, the time of each part (PARTS) is charged to it."""
        lap = clock.lap if clock is not None else (lambda _part: None)
        torch.manual_seed(step)  # ours reseeds libtorch every step too
        # 1. G and R; D's weights take no gradient from this loss
        for p in self.d_params:
            p.requires_grad_(False)
        self.opt_gr.zero_grad()
        lap("zero_grad")
        fake = self.g(x)
        lap("g_forward")
        flow = self.r(fake, y)
        reg = twin.warp(fake, flow)
        lap("r_forward")
        mag = flow.detach().square().sum(1).sqrt()
        flow_mean, flow_max = mag.mean(), mag.max()
        smooth = smoothness(flow)
        l1, ssim_term, recon = reconstruction(reg, y, lung)
        lap("losses")
        d_fake_for_g = self.d(self.d.input(fake, x))
        lap("d_forward_for_g")
        adv_g = F.mse_loss(d_fake_for_g, torch.ones_like(d_fake_for_g))
        loss_g = recon + adv_g * LOSS["adversarial_weight"] + smooth * LOSS["smoothness_weight"]
        lap("losses")
        loss_g.backward()
        for p in self.d_params:
            p.requires_grad_(True)
        lap("gr_backward")
        # 2. D on real vs the detached fake
        self.opt_d.zero_grad()
        lap("zero_grad")
        fake = fake.detach()
        # real and fake in one D pass (one power iteration), as train_step does
        n = y.shape[0]
        d_out = self.d(torch.cat([self.d.input(y, x), self.d.input(fake, x)], 0))
        d_real, d_fake = d_out[:n], d_out[n:]
        lap("d_forward")
        loss_d = (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake))) \
            * LOSS["adversarial_weight"]
        lap("losses")
        loss_d.backward()
        lap("d_backward")
        # 3. one read-back of every term and statistic, checked before the updates
        names = ("l1", "ssim", "adv_g", "smooth", "loss_g", "loss_d", "flow_mean", "flow_max",
                 "d_real", "d_fake")
        values = torch.stack([t.detach().reshape(()).double() for t in (
            l1, ssim_term, adv_g, smooth, loss_g, loss_d, flow_mean, flow_max,
            d_real.mean(), d_fake.mean())]).tolist()
        stats = dict(zip(names, values))
        for name in names[:6]:
            if not math.isfinite(stats[name]):
                raise FloatingPointError(f"{name} is not finite at step {step}")
        lap("readback")
        self.opt_gr.step()
        lap("gr_adam")
        self.opt_d.step()
        lap("d_adam")
        return stats


# The parts of the step (train::step::Part, same names).
PARTS = ("zero_grad", "g_forward", "r_forward", "losses", "d_forward_for_g", "gr_backward",
         "d_forward", "d_backward", "gr_adam", "d_adam", "readback")


def sync(device: torch.device) -> None:
    """Waits for queued device work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds per part within one step; each lap synchronises the device first."""

    def __init__(self, device: torch.device):
        self.device = device
        sync(device)
        self.last = time.perf_counter()
        self.acc = dict.fromkeys(PARTS, 0.0)

    def lap(self, part: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.acc[part] += now - self.last
        self.last = now


def load_exact(net: torch.nn.Module, path: Path) -> None:
    """Copies a safetensors file keyed by our VarStore names into `net`'s parameters and buffers
    (spectral-norm weight_orig/u/v included), requiring every tensor to be present."""
    from safetensors.torch import load_file

    src = load_file(str(path))
    targets = dict(net.named_parameters())
    targets.update(dict(net.named_buffers()))
    missing = [k for k in targets if k not in src and not k.endswith("num_batches_tracked")]
    if missing:
        raise KeyError(f"{path}: missing {missing[:3]}")
    with torch.no_grad():
        for k, t in targets.items():
            if k in src:
                if tuple(src[k].shape) != tuple(t.shape):
                    raise ValueError(f"{path}: {k} has shape {tuple(src[k].shape)}, expected {tuple(t.shape)}")
                t.copy_(src[k])


def synthetic_batch(batch: int, size: int):
    """The batch the Rust bench builds (bench::workload::synthetic_batch), by the same formula:
    smooth images in [-0.8, 0.8], the target a shifted copy, a rectangular lung mask."""
    i = torch.arange(size, dtype=torch.float64).view(1, 1, size, 1)
    j = torch.arange(size, dtype=torch.float64).view(1, 1, 1, size)
    b = torch.arange(batch, dtype=torch.float64).view(batch, 1, 1, 1)
    phase = 0.11 * i + 0.07 * j + 0.5 * b
    x = (0.8 * torch.sin(phase)).float()
    y = (0.8 * torch.sin(phase + 0.3)).float()
    q = size // 4
    lung = torch.zeros(batch, 1, size, size)
    lung[:, :, q:size - q, size // 6:size - size // 6] = 1.0
    return x, y, lung


# ---------------------------------------------------------------------------- measuring


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


@contextmanager
def peak_memory(out: dict, key: str):
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "clear_refs"
    except OSError:
        method = "process_lifetime"
    base = rss_mb("VmRSS")
    yield
    out[key] = {"base_mb": base, "peak_mb": rss_mb("VmHWM"), "method": method}


def summary(samples: list[float]) -> dict:
    s = sorted(samples)

    def q(p):  # linear interpolation, as bench::stats::Summary
        if not s:
            return None
        pos = p * (len(s) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return {"samples": samples, "median": q(0.5), "p10": q(0.1), "p90": q(0.9),
            "mean": sum(s) / len(s) if s else None}


def step_flops(step: Step, x, y, lung) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(x, y, lung, 0)
    return int(counter.get_total_flops())


def inference(g, window, size: int, slices: int, batch: int) -> dict:
    lo, hi = window
    zz = np.arange(slices, dtype=np.float32).reshape(-1, 1, 1)
    yy = np.arange(size, dtype=np.float32).reshape(1, -1, 1)
    xx = np.arange(size, dtype=np.float32).reshape(1, 1, -1)
    hu = (-1000.0 + 1200.0 * (0.5 + 0.5 * np.sin(0.05 * xx + 0.03 * yy + 0.2 * zz))).astype(np.float32)
    out = np.empty_like(hu)
    g.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for z0 in range(0, slices, batch):
            chunk = hu[z0:z0 + batch]
            norm = (np.clip(chunk, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0
            pred = g(torch.from_numpy(norm).unsqueeze(1)).squeeze(1).numpy()
            out[z0:z0 + batch] = (pred + 1.0) * 0.5 * (hi - lo) + lo
    seconds = time.perf_counter() - t0
    g.train()
    return {"size": size, "slices": slices, "batch": batch, "seconds": seconds,
            "slices_per_s": slices / seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(twin.PRESETS))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--init", help="folder with generator/registration/discriminator.safetensors")
    ap.add_argument("--infer-size", type=int, default=512)
    ap.add_argument("--infer-slices", type=int, default=0, help="0 skips inference")
    ap.add_argument("--infer-batch", type=int, default=8)
    ap.add_argument("--window", type=float, nargs=2, default=(-1024.0, 1500.0))
    ap.add_argument("--no-flops", action="store_true", help="skip the FlopCounterMode pass")
    ap.add_argument("--no-parts", action="store_true", help="skip the per-part timing")
    ap.add_argument("--channels-last", action="store_true",
                    help="weights and inputs in channels-last (NHWC) memory format")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    cfg = twin.preset(args.preset)
    memory: dict = {}
    result = {"schema": SCHEMA, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "preset": args.preset, "size": args.size, "batch": args.batch,
              "steps": args.steps, "warmup": args.warmup, "channels_last": args.channels_last}

    step = Step(cfg, args.init, args.channels_last)
    x, y, lung = synthetic_batch(args.batch, args.size)
    if args.channels_last:
        x, y, lung = (t.contiguous(memory_format=torch.channels_last) for t in (x, y, lung))
    with peak_memory(memory, "step"):
        samples, cpu_samples = [], []
        for k in range(args.warmup + args.steps):
            c0 = time.process_time()
            t0 = time.perf_counter()
            stats = step(x, y, lung, k + 1)
            dt = time.perf_counter() - t0
            cpu = time.process_time() - c0
            if k == 0:
                result["first_step"] = stats
            if k >= args.warmup:
                samples.append(dt)
                cpu_samples.append(cpu)
    result["step"] = summary(samples)
    result["step_cpu"] = summary(cpu_samples)

    result["parts"] = None
    if not args.no_parts:
        per_part = {p: [] for p in PARTS}
        first = args.warmup + args.steps + 1
        for k in range(1 + args.steps):
            clock = Clock(x.device)
            step(x, y, lung, first + k, clock)
            if k >= 1:
                for p in PARTS:
                    per_part[p].append(clock.acc[p])
        result["parts"] = {p: summary(v) for p, v in per_part.items()}

    flops = {"step": None, "g_forward_infer": None}
    if not args.no_flops:
        flops["step"] = step_flops(step, x, y, lung)
    if args.infer_slices > 0:
        with peak_memory(memory, "infer"):
            result["infer"] = inference(step.g, args.window, args.infer_size, args.infer_slices,
                                        args.infer_batch)
        if not args.no_flops:
            from torch.utils.flop_counter import FlopCounterMode
            with torch.no_grad(), FlopCounterMode(display=False) as c:
                step.g.eval()
                step.g(torch.zeros(1, cfg["generator"]["in_channels"], args.infer_size, args.infer_size))
                step.g.train()
            flops["g_forward_infer"] = int(c.get_total_flops())
    else:
        result["infer"] = None
    result["flops"] = flops
    result["memory"] = memory
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
