#!/usr/bin/env python3
"""Golden SSIM values from scikit-image for the model crate's differentiable SSIM.

Writes crates/model/tests/data/ssim_skimage.json (metadata, expected values) and
crates/model/tests/data/ssim_skimage.bin (little-endian arrays the JSON points into).

Every value is scikit-image's
    structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                          use_sample_covariance=False, data_range=R)
computed in float64 on the float32 inputs that are stored (so the Rust test sees exactly the
same inputs). For some cases the script also stores:
  * `weighted`: sum(w * S) / sum(w) over the valid region, S being skimage's full SSIM map
    (full=True) and w a lung-like weight map 1 + 9 * mask, both cropped by (win - 1) / 2;
  * `fd_grad`: central finite differences (step 1e-5, float64) of skimage's mean SSIM with
    respect to chosen pixels of the first image, to check autograd independently. (skimage's
    own `gradient=True` output is not used: it is the gradient of the uncropped mean, and it
    does not agree with finite differences of skimage's own value.)

Run: /work/pyref/bin/python tools/golden/ssim_skimage.py   (deterministic: fixed seeds)
"""

import json
import os

import numpy as np
import scipy.ndimage as ndi
import skimage
from skimage.metrics import structural_similarity

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "model", "tests", "data")
PAD = 5  # (11 - 1) // 2 for sigma 1.5, truncate 3.5


def ct_like(rng, shape, noise):
    """Smooth blobs (body, lungs, vessels) in [-1, 1] plus Gaussian noise, like a CT slice."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full(shape, -1.0)  # air
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.48 * w)) ** 2 < 1
    img[body] = 0.05  # soft tissue
    for cx in (0.3 * w, 0.7 * w):  # lungs
        lung = ((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - cx) / (0.15 * w)) ** 2 < 1
        img[lung] = -0.8
    for _ in range(6):  # vessels / nodules
        cy, cx, r = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w), rng.uniform(1.5, 4)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.1, 0.6)
    img = ndi.gaussian_filter(img, 1.0)
    return np.clip(img + rng.normal(0, noise, shape), -1, 1)


def lung_mask(shape):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    m = np.zeros(shape)
    for cx in (0.3 * w, 0.7 * w):
        m[((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - cx) / (0.15 * w)) ** 2 < 1] = 1
    return m


def main():
    rng = np.random.default_rng(20261125)
    cases = []

    # (a) random images
    a = rng.uniform(0, 1, (48, 48))
    cases.append(("random_independent", a, rng.uniform(0, 1, (48, 48)), 1.0))
    cases.append(("random_correlated", a, np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1), 1.0))
    # (b) CT-like on [-1, 1] (range 2) and in HU (range 4095), non-square too
    t = ct_like(rng, (48, 48), 0.02)
    p = ct_like(np.random.default_rng(7), (48, 48), 0.05)  # a different "prediction"
    p = 0.7 * t + 0.3 * p
    cases.append(("ct_unit", t, p, 2.0))
    to_hu = lambda x: (x + 1) / 2 * 4095 - 1024  # [-1, 1] -> [-1024, 3071]
    cases.append(("ct_hu", to_hu(t), to_hu(p), 4095.0))
    t2 = ct_like(rng, (40, 56), 0.03)
    cases.append(("ct_unit_40x56", t2, ndi.shift(t2, (0.6, -1.2), mode="nearest") * 0.95, 2.0))
    # (c) a pair with a constant region (left half constant in both, different constants)
    c1 = ct_like(rng, (48, 48), 0.02)
    c2 = c1 + rng.normal(0, 0.05, c1.shape)
    c1[:, :24] = -1.0
    c2[:, :24] = -0.9
    cases.append(("constant_region", c1, c2, 2.0))
    # both images entirely constant and equal: SSIM 1 everywhere
    k = np.full((24, 24), 0.25)
    cases.append(("constant_equal", k, k.copy(), 2.0))

    blobs = []
    offset = 0

    def put(arr, dtype):
        nonlocal offset
        data = np.ascontiguousarray(arr, dtype=dtype).tobytes()
        entry = {"offset": offset, "dtype": np.dtype(dtype).name, "shape": list(arr.shape)}
        blobs.append(data)
        offset += len(data)
        return entry

    out_cases = []
    for name, x, y, rng_ in cases:
        x32 = x.astype(np.float32)
        y32 = y.astype(np.float32)
        x64, y64 = x32.astype(np.float64), y32.astype(np.float64)
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=rng_)
        value, full = structural_similarity(x64, y64, full=True, **kw)
        entry = {
            "name": name,
            "data_range": rng_,
            "a": put(x32, np.float32),
            "b": put(y32, np.float32),
            "ssim": float(value),
        }
        if name in ("ct_unit", "constant_region", "ct_unit_40x56"):
            w = 1 + 9 * lung_mask(x.shape)
            wc, sc = w[PAD:-PAD, PAD:-PAD], full[PAD:-PAD, PAD:-PAD]
            entry["weight"] = put(w.astype(np.float32), np.float32)
            entry["weighted"] = float((wc * sc).sum() / wc.sum())
        if name in ("ct_unit", "random_correlated", "constant_region"):
            h, w = x.shape
            pixels = [(0, 0), (3, 7), (5, 5), (h // 2, w // 2), (h - 1, w - 2), (h // 3, 2 * w // 3)]
            pixels += [tuple(int(v) for v in rng.integers(0, (h, w))) for _ in range(6)]
            fd = []
            for i, j in pixels:
                step = 1e-5
                xp, xm = x64.copy(), x64.copy()
                xp[i, j] += step
                xm[i, j] -= step
                d = (structural_similarity(xp, y64, **kw) - structural_similarity(xm, y64, **kw)) / (2 * step)
                fd.append([i, j, float(d)])
            entry["fd_grad"] = fd
        out_cases.append(entry)

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "ssim_skimage.bin"), "wb") as f:
        f.write(b"".join(blobs))
    meta = {
        "generator": "tools/golden/ssim_skimage.py",
        "scikit_image": skimage.__version__,
        "numpy": np.__version__,
        "settings": "structural_similarity(gaussian_weights=True, sigma=1.5, "
        "use_sample_covariance=False, data_range=R), float64 on the stored float32 inputs",
        "binary": "ssim_skimage.bin (little-endian; offset in bytes, dtype, shape [height, width])",
        "cases": out_cases,
    }
    with open(os.path.join(OUT, "ssim_skimage.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    for c in out_cases:
        print(f"{c['name']:24s} ssim={c['ssim']:.10f}" + (f" weighted={c['weighted']:.10f}" if "weighted" in c else ""))


if __name__ == "__main__":
    main()
