#!/usr/bin/env python3
"""Golden values for the metrics crate, computed with scikit-image.

Writes crates/metrics/tests/data/metrics_skimage.json, read by crates/metrics/tests/golden.rs.
Run with the reference environment:  /work/pyref/bin/python tools/golden/metrics_skimage.py

Inputs are small random and CT-like arrays (2D and 3D) with masks. Every value is a float32
(what volumes hold in memory) and is stored exactly; the references are computed on float64
copies, because scikit-image keeps float32 inputs in float32 and would round its own result.

References:
- MAE: mean |p - t| over the mask (numpy);
- MSE / PSNR: skimage.metrics.mean_squared_error / peak_signal_noise_ratio on t[mask], p[mask]
  with an explicit data_range;
- SSIM: skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=R): 2D on images, 3D ("volume" mode: the 3D window)
  on volumes, and per axial slice ("axial" mode: mean over all cropped per-slice map values);
  masked SSIM = mean of the full=True map, cropped by (win-1)/2 like skimage's own mean,
  over the mask's voxels in that cropped region;
- "score" cases: the project convention of metrics::score_regions, written independently:
  both volumes clipped to [-1024, 3071], MAE and PSNR (range 4095) on the clipped values, SSIM
  on the clipped values minus -1024.
"""

import json
import pathlib

import numpy as np
import skimage
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/metrics/tests/data/metrics_skimage.json"
WIN = 11
PAD = (WIN - 1) // 2
LO, HI = -1024.0, 3071.0


def ssim_full(a, b, data_range):
    mean, smap = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=data_range, full=True)
    return float(mean), smap


def masked_mean(smap, mask, axes_pad):
    sl = tuple(slice(p, n - p) for p, n in zip(axes_pad, smap.shape))
    sel = mask[sl] != 0
    return float(smap[sl][sel].mean()) if sel.any() else None


def ssim_entries(a, b, mask, data_range):
    """SSIM references for a 2D image pair or a 3D volume pair (both modes)."""
    out = {}
    if a.ndim == 2:
        m, smap = ssim_full(a, b, data_range)
        out["ssim"] = m
        out["ssim_masked"] = masked_mean(smap, mask, (PAD, PAD)) if mask is not None else None
        return out
    m, smap = ssim_full(a, b, data_range)
    out["ssim_volume"] = m
    out["ssim_volume_masked"] = masked_mean(smap, mask, (PAD, PAD, PAD)) if mask is not None else None
    maps = np.stack([ssim_full(a[k], b[k], data_range)[1] for k in range(a.shape[0])])
    out["ssim_axial"] = float(crop(maps, ((0, 0), (PAD, PAD), (PAD, PAD))).mean())
    out["ssim_axial_masked"] = masked_mean(maps, mask, (0, PAD, PAD)) if mask is not None else None
    return out


def pixel_entries(p, t, mask, data_range):
    sel = np.ones(t.shape, bool) if mask is None else mask != 0
    return {
        "mae": float(np.abs(p[sel] - t[sel]).mean()),
        "mse": float(mean_squared_error(t[sel], p[sel])),
        "psnr": float(peak_signal_noise_ratio(t[sel], p[sel], data_range=data_range)),
    }


def ellipse(shape, centre, radii):
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def ct_like(rng, shape):
    """A chest-like target (CTPA), a prediction and an NCCT-like image, plus body and lung masks."""
    zyx = shape if len(shape) == 3 else (1,) + shape
    nz, ny, nx = zyx
    body = ellipse(zyx, (nz / 2, ny / 2, nx / 2), (nz * 10, ny * 0.42, nx * 0.46))
    lung_l = ellipse(zyx, (nz / 2, ny * 0.48, nx * 0.3), (nz * 10, ny * 0.25, nx * 0.13))
    lung_r = ellipse(zyx, (nz / 2, ny * 0.48, nx * 0.7), (nz * 10, ny * 0.25, nx * 0.13))
    lung = lung_l | lung_r
    vessel = ellipse(zyx, (nz / 2, ny * 0.45, nx * 0.5), (nz * 10, ny * 0.08, nx * 0.06))
    target = np.full(zyx, -3024.0)          # outside the field of view
    target[body] = 40.0
    target[lung] = -850.0
    target[vessel] = 380.0                   # contrast-filled artery
    target[(nz // 2, int(ny * 0.8), nx // 2)] = 3500.0   # a metal-bright voxel above the window
    target += np.where(body, rng.normal(0.0, 15.0, zyx), 0.0)
    pred = target + np.where(body, rng.normal(5.0, 30.0, zyx), 0.0)
    pred[vessel] -= 120.0                   # under-enhanced artery
    ncct = target + np.where(body, rng.normal(0.0, 15.0, zyx), 0.0)   # another noise realisation
    ncct[vessel] = 40.0 + rng.normal(0.0, 15.0, int(vessel.sum()))     # no contrast
    squeeze = (lambda a: a[0]) if len(shape) == 2 else (lambda a: a)
    f32 = lambda a: squeeze(a).astype(np.float32)
    return f32(target), f32(pred), f32(ncct), squeeze(body).astype(np.uint8), squeeze(lung).astype(np.uint8)


def f32_list(a):
    """float32 values as their shortest decimal that reads back to the same float32."""
    return [float(np.format_float_positional(v, unique=True, trim="-")) for v in a.astype(np.float32).ravel()]


def case(name, p, t, mask, data_range):
    p32, t32 = p.astype(np.float32), t.astype(np.float32)
    p64, t64 = p32.astype(np.float64), t32.astype(np.float64)
    entry = {
        "name": name,
        "shape": list(t32.shape),
        "data_range": data_range,
        "pred": f32_list(p32),
        "target": f32_list(t32),
        "mask": None if mask is None else [int(v) for v in mask.ravel()],
    }
    entry.update(pixel_entries(p64, t64, mask, data_range))
    entry.update(ssim_entries(p64, t64, mask, data_range))
    return entry


def score_regions(p, t, masks):
    p64 = np.clip(p.astype(np.float64), LO, HI)
    t64 = np.clip(t.astype(np.float64), LO, HI)
    rng_ = HI - LO
    _, smap = ssim_full(p64 - LO, t64 - LO, rng_)
    regions = []
    for m in masks:
        sel = m != 0
        regions.append({
            "voxels": int(sel.sum()),
            "mae": float(np.abs(p64[sel] - t64[sel]).mean()),
            "psnr": float(peak_signal_noise_ratio(t64[sel], p64[sel], data_range=rng_)),
            "ssim": masked_mean(smap, m, (PAD, PAD, PAD)),
        })
    return regions


def score_case(name, t, sources, masks):
    """score_regions references: one target, several predictions (model, NCCT), shared masks."""
    return {
        "name": name,
        "shape": list(t.shape),
        "target": f32_list(t),
        "masks": [[int(v) for v in m.ravel()] for m in masks],
        "sources": [
            {"name": k, "pred": f32_list(p), "regions": score_regions(p, t, masks)}
            for k, p in sources
        ],
    }


def main():
    rng = np.random.default_rng(20261125)
    cases = []
    # Random 2D, non-square (catches swapped axes), unit range and a mask.
    a = rng.random((24, 19))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    m = (rng.random(a.shape) < 0.4).astype(np.uint8)
    cases.append(case("random_2d", b, a, m, 1.0))
    # The same without a mask, range 2 on [-1, 1] (the training convention).
    cases.append(case("random_2d_pm1", 2 * b - 1, 2 * a - 1, None, 2.0))
    # CT-like 2D, HU, range 4095; values outside the window are kept (no clipping here).
    t, p, _, body, _ = ct_like(rng, (32, 30))
    cases.append(case("ct_2d", p, t, body, 4095.0))
    # Random 3D (13 slices >= the 11-slice window), non-cubic.
    a = rng.random((13, 16, 14)) * 100 - 50
    b = a + rng.normal(0, 8, a.shape)
    m = (rng.random(a.shape) < 0.5).astype(np.uint8)
    cases.append(case("random_3d", b, a, m, 100.0))
    # CT-like 3D, clipped to the window first (as evaluation does), shifted to start at 0.
    t, p, ncct, body, lung = ct_like(rng, (12, 24, 22))
    clip = lambda v: np.clip(v.astype(np.float64), LO, HI) - LO
    cases.append(case("ct_3d", clip(p), clip(t), lung, HI - LO))
    scores = [score_case("score_ct_3d", t, [("model", p), ("ncct", ncct)], [body, lung])]
    doc = {
        "generator": "tools/golden/metrics_skimage.py",
        "skimage": skimage.__version__,
        "numpy": np.__version__,
        "ssim": {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "win_size": WIN},
        "window": [LO, HI],
        "cases": cases,
        "scores": scores,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    for c in cases:
        print(c["name"], {k: c[k] for k in c if k.startswith(("mae", "psnr", "ssim"))})
    for s in scores:
        for src in s["sources"]:
            print(s["name"], src["name"], src["regions"])


if __name__ == "__main__":
    main()
