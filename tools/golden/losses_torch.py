#!/usr/bin/env python3
"""Golden values for the model crate's losses (crates/model/src/losses.rs).

Writes crates/model/tests/data/losses_torch.safetensors (inputs, float32) and
crates/model/tests/data/losses_torch.json (expected values, computed in float64):
  * adversarial losses on random patch logits d_real, d_fake [2, 1, 6, 6], with PyTorch's own
    loss modules: LSGAN = nn.MSELoss against 1 / 0 (RegGAN's generator term, and its
    discriminator term MSE(real, 1) + MSE(fake, 0) without a 0.5 factor); BCE =
    nn.BCEWithLogitsLoss against 1 / 0; hinge = relu(1 - real).mean() + relu(1 + fake).mean()
    for D and -fake.mean() for G;
  * smoothness of a random displacement field [2, 2, 8, 9]: the mean of the squared forward
    differences along width plus the mean of those along height (RegGAN's smoothness loss);
  * the lung-weighted reconstruction loss of a CT-like pair [1, 1, 32, 32] with a lung mask,
    from an independent route: the L1 part with numpy, the SSIM part from scikit-image's full
    SSIM map (structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=2, full=True)) cropped by 5 pixels and weighted by
    w = 1 + (lung_weight - 1) * mask, for lung_weight 10 and 1;
  * the multi-resolution reconstruction loss of a CT-like pair [1, 1, 64, 64]: images and lung
    mask average-pooled by 2 (torch.nn.functional.avg_pool2d) once and twice, each level's
    lung-weighted L1 and SSIM terms computed as above with w = 1 + (lung_weight - 1) *
    pooled_mask, and the scale-weighted sums for scale weights [1, 0.5, 0.25] and [0, 1].

Run: /work/pyref/bin/python tools/golden/losses_torch.py   (deterministic: fixed seeds)
"""

import json
import os

import numpy as np
import scipy.ndimage as ndi
import torch
from safetensors.torch import save_file
from skimage.metrics import structural_similarity

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "model", "tests", "data")
PAD = 5


def main():
    gen = torch.Generator().manual_seed(99)
    d_real = (torch.randn(2, 1, 6, 6, generator=gen) * 1.5 + 0.3).float()
    d_fake = (torch.randn(2, 1, 6, 6, generator=gen) * 1.5 - 0.4).float()
    flow = (torch.randn(2, 2, 8, 9, generator=gen).cumsum(3) * 0.3).float()
    r, f, fl = d_real.double(), d_fake.double(), flow.double()

    mse = torch.nn.MSELoss()
    bce = torch.nn.BCEWithLogitsLoss()
    one, zero = torch.ones_like(r), torch.zeros_like(r)
    values = {
        "lsgan_g": mse(f, one).item(),
        "lsgan_d": (mse(r, one) + mse(f, zero)).item(),
        "bce_g": bce(f, one).item(),
        "bce_d": (bce(r, one) + bce(f, zero)).item(),
        "hinge_g": (-f.mean()).item(),
        "hinge_d": (torch.relu(1 - r).mean() + torch.relu(1 + f).mean()).item(),
        "smoothness": (
            torch.diff(fl, dim=3).pow(2).mean() + torch.diff(fl, dim=2).pow(2).mean()
        ).item(),
    }

    # Reconstruction: a CT-like target, a blurred and offset prediction, a lung mask.
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    target = np.full((32, 32), 0.05)
    mask = np.zeros((32, 32))
    for cx in (10.0, 22.0):
        lung = ((yy - 16) / 10) ** 2 + ((xx - cx) / 5) ** 2 < 1
        target[lung] = -0.8
        mask[lung] = 1.0
    target = np.clip(ndi.gaussian_filter(target, 0.7) + rng.normal(0, 0.03, target.shape), -1, 1)
    pred = np.clip(ndi.gaussian_filter(target, 1.2) + 0.05 * mask + rng.normal(0, 0.02, target.shape), -1, 1)
    target32, pred32, mask32 = (a.astype(np.float32) for a in (target, pred, mask))
    t64, p64 = target32.astype(np.float64), pred32.astype(np.float64)
    _, smap = structural_similarity(
        p64, t64, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0, full=True
    )
    for lung_weight in (10.0, 1.0):
        w = 1 + (lung_weight - 1) * mask32.astype(np.float64)
        l1 = float((w * np.abs(p64 - t64)).sum() / w.sum())
        wc = w[PAD:-PAD, PAD:-PAD]
        ssim_term = float(1 - (wc * smap[PAD:-PAD, PAD:-PAD]).sum() / wc.sum())
        tag = f"lung{int(lung_weight)}"
        values[f"recon_{tag}_l1"] = l1
        values[f"recon_{tag}_ssim"] = ssim_term

    # Multi-resolution reconstruction (separate generator: the values above are unchanged).
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    ms_target = np.full((64, 64), 0.1)
    ms_mask = np.zeros((64, 64))
    for cx in (20.0, 43.0):
        lung = ((yy - 33) / 21) ** 2 + ((xx - cx) / 10) ** 2 < 1
        ms_target[lung] = -0.75
        ms_mask[lung] = 1.0
    vessel = ((yy - 30) / 3) ** 2 + ((xx - 22) / 3) ** 2 < 1
    ms_target[vessel] = 0.4
    ms_target = np.clip(ndi.gaussian_filter(ms_target, 0.8) + rng.normal(0, 0.03, ms_target.shape), -1, 1)
    ms_pred = np.clip(
        ndi.gaussian_filter(ms_target, 1.5) + 0.08 * ms_mask + rng.normal(0, 0.02, ms_target.shape), -1, 1
    )
    ms32 = [a.astype(np.float32) for a in (ms_pred, ms_target, ms_mask)]
    levels = [[torch.from_numpy(a.astype(np.float64)).view(1, 1, 64, 64) for a in ms32]]
    for _ in range(2):
        levels.append([torch.nn.functional.avg_pool2d(t, 2) for t in levels[-1]])
    for lung_weight in (10.0, 1.0):
        tag = f"lung{int(lung_weight)}"
        terms = []
        for lv, (p_t, t_t, m_t) in enumerate(levels):
            p, t, m = (x[0, 0].numpy() for x in (p_t, t_t, m_t))
            w = 1 + (lung_weight - 1) * m
            l1 = float((w * np.abs(p - t)).sum() / w.sum())
            _, smap = structural_similarity(
                p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0, full=True
            )
            wc = w[PAD:-PAD, PAD:-PAD]
            ssim_term = float(1 - (wc * smap[PAD:-PAD, PAD:-PAD]).sum() / wc.sum())
            values[f"multires_{tag}_level{lv}_l1"] = l1
            values[f"multires_{tag}_level{lv}_ssim"] = ssim_term
            terms.append((l1, ssim_term))
        for name, weights in (("w1_05_025", (1.0, 0.5, 0.25)), ("w0_1", (0.0, 1.0))):
            values[f"multires_{tag}_{name}_l1"] = sum(a * x[0] for a, x in zip(weights, terms))
            values[f"multires_{tag}_{name}_ssim"] = sum(a * x[1] for a, x in zip(weights, terms))

    tensors = {
        "multires_pred": torch.from_numpy(ms32[0]).view(1, 1, 64, 64).contiguous(),
        "multires_target": torch.from_numpy(ms32[1]).view(1, 1, 64, 64).contiguous(),
        "multires_mask": torch.from_numpy(ms32[2]).view(1, 1, 64, 64).contiguous(),
        "d_real": d_real.contiguous(),
        "d_fake": d_fake.contiguous(),
        "flow": flow.contiguous(),
        "recon_pred": torch.from_numpy(pred32).view(1, 1, 32, 32).contiguous(),
        "recon_target": torch.from_numpy(target32).view(1, 1, 32, 32).contiguous(),
        "recon_mask": torch.from_numpy(mask32).view(1, 1, 32, 32).contiguous(),
    }
    save_file(tensors, os.path.join(OUT, "losses_torch.safetensors"), metadata={"generator": "tools/golden/losses_torch.py"})
    meta = {
        "generator": "tools/golden/losses_torch.py",
        "torch": torch.__version__,
        "inputs": "losses_torch.safetensors (float32)",
        "values": values,
    }
    with open(os.path.join(OUT, "losses_torch.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    for k, v in values.items():
        print(f"{k:22s} {v:.10f}")


if __name__ == "__main__":
    main()
