#!/usr/bin/env python3
"""PyTorch side of `ncct2ctpa bench --epoch`: one training epoch on a prepared slice store,
data loading included, with a standard `torch.utils.data.DataLoader`.

The Rust side runs its own loader (`dataset::sampler::Loader`, `loader_threads` threads,
2 batches prefetched each) and `train::step::train_step`; this script runs the same step
(bench.py's `Step`, the twin of train_step) fed by a `DataLoader(num_workers=W,
prefetch_factor=2, shuffle=True, drop_last=True)` over `StoreDataset`, which reads the same
store files (crates/dataset/src/store.rs, format version 1):

    PREPARED/manifest.json            window {min, max}, cases [{case, split, dir, grid.shape_zyx}]
    PREPARED/cases/CASE/ncct.i16      HU, int16 little-endian, C order [z, y, x], no header
    PREPARED/cases/CASE/ctpa.i16      same grid
    PREPARED/cases/CASE/{body,lung}.u8

through `numpy.memmap`, and augments each sample with the same shape of work as
`dataset::augment::augment_crop` (default `AugmentConfig`): one affine map per sample (random
crop position, left-right flip with p 0.5, rotation in [-10, 10] degrees, scale in [0.9, 1.1]),
images resampled bilinearly with fill -1, masks with nearest neighbour, then NCCT-only contrast
(+-5 %), brightness (+-0.02) and Gaussian noise (std 0.01). The resampling runs in torch
(`F.grid_sample`, the way torchvision's tensor transforms do it) instead of our scalar loops;
the random streams differ (torch's generator vs ChaCha8), so the two sides see different crops
of the same slices.

Slices are those of the train split whose body mask covers at least 5 % of the slice
(`dataset::sampler::split_keys` with the trainer's default `min_body_fraction`).

Prints one JSON object:
{"schema": 1, "torch": "2.13.0", "threads": 2, "workers": 2, "preset": "tiny", "crop": 96,
 "batch": 4, "slices": 212, "steps": 53, "seconds": s, "first_batch_s": s,
 "step": {summary of the per-step seconds, loader wait included}, "first_loss_g": f}
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import reggan_twin as twin  # noqa: E402

SCHEMA = 1

# dataset::augment::AugmentConfig::default
AUGMENT = dict(flip_x_prob=0.5, flip_y_prob=0.0, rotate_deg=10.0, scale=0.1,
               ncct_contrast=0.05, ncct_brightness=0.02, ncct_noise_std=0.01)
FILL = -1.0  # what the trainer's sampler fills outside the slice with
MIN_BODY_FRACTION = 0.05  # train::config::DataConfig::default


class StoreDataset(Dataset):
    """The train-split slices of a prepared store, cropped and augmented on read."""

    def __init__(self, root: str, crop: int, split: str = "train"):
        self.root = Path(root)
        manifest = json.loads((self.root / "manifest.json").read_text())
        if manifest.get("format") != "ncct2ctpa-prepared" or manifest.get("format_version") != 1:
            raise ValueError(f"{self.root}/manifest.json: not a version-1 prepared store")
        self.lo, self.hi = manifest["window"]["min"], manifest["window"]["max"]
        self.crop = crop
        self.cases = []
        self.keys = []
        for entry in manifest["cases"]:
            if entry["split"] != split:
                continue
            shape = tuple(entry["grid"]["shape_zyx"])
            d = self.root / entry["dir"]
            arrays = {
                name: np.memmap(d / f"{name}.{ext}", dtype=dt, mode="r", shape=shape)
                for name, ext, dt in (("ncct", "i16", "<i2"), ("ctpa", "i16", "<i2"),
                                      ("body", "u8", "u1"), ("lung", "u8", "u1"))
            }
            c = len(self.cases)
            self.cases.append(arrays)
            body = arrays["body"]
            plane = shape[1] * shape[2]
            for z in range(shape[0]):
                if np.count_nonzero(body[z]) >= MIN_BODY_FRACTION * plane:
                    self.keys.append((c, z))
        if not self.keys:
            raise ValueError(f"{self.root}: no {split} slice with enough body")

    def __len__(self) -> int:
        return len(self.keys)

    def _normalize(self, hu: np.ndarray) -> torch.Tensor:
        t = (np.clip(hu.astype(np.float32), self.lo, self.hi) - self.lo) / (self.hi - self.lo)
        return torch.from_numpy(2.0 * t - 1.0)

    def __getitem__(self, i: int):
        c, z = self.keys[i]
        a = self.cases[c]
        ncct = self._normalize(a["ncct"][z])
        ctpa = self._normalize(a["ctpa"][z])
        masks = torch.from_numpy(np.stack([a["lung"][z], a["body"][z]]).astype(np.float32))
        h, w = ncct.shape
        crop = self.crop
        # crop position, then geometry, then intensity (augment_crop's draw order)
        top = float(torch.randint(0, h - crop + 1, ()).item()) if h > crop else -float((crop - h) // 2)
        left = float(torch.randint(0, w - crop + 1, ()).item()) if w > crop else -float((crop - w) // 2)
        u = torch.rand(4, dtype=torch.float64).tolist()
        flip_x, flip_y = u[0] < AUGMENT["flip_x_prob"], u[1] < AUGMENT["flip_y_prob"]
        angle = (2 * u[2] - 1) * math.radians(AUGMENT["rotate_deg"])
        scale = 1.0 + (2 * u[3] - 1) * AUGMENT["scale"]
        # output pixel (r, c) reads source (y, x) = M (r - half, c - half) + centre
        # (GeometricDraw::inverse_matrix: flips * scale^-1 * rotation(-angle))
        s, co = math.sin(-angle), math.cos(-angle)
        k = 1.0 / scale
        fy, fx = (-1.0 if flip_y else 1.0), (-1.0 if flip_x else 1.0)
        m = torch.tensor([[fy * k * co, fy * k * s], [fx * k * -s, fx * k * co]], dtype=torch.float32)
        half = (crop - 1) / 2.0
        r = torch.arange(crop, dtype=torch.float32) - half
        rr, cc = torch.meshgrid(r, r, indexing="ij")
        ys = m[0, 0] * rr + m[0, 1] * cc + (top + half)
        xs = m[1, 0] * rr + m[1, 1] * cc + (left + half)
        # grid_sample's normalised coordinates, align_corners=True: -1 and 1 are pixel centres
        grid = torch.stack([2 * xs / (w - 1) - 1, 2 * ys / (h - 1) - 1], -1).unsqueeze(0)
        # bilinear with fill -1: shift so the fill is 0 (zero padding), sample, shift back
        images = F.grid_sample(torch.stack([ncct, ctpa]).unsqueeze(0) - FILL, grid, mode="bilinear",
                               padding_mode="zeros", align_corners=True)[0] + FILL
        masks = F.grid_sample(masks.unsqueeze(0), grid, mode="nearest", padding_mode="zeros",
                              align_corners=True)[0]
        j = torch.rand(2, dtype=torch.float64).tolist()
        contrast = 1.0 + (2 * j[0] - 1) * AUGMENT["ncct_contrast"]
        brightness = (2 * j[1] - 1) * AUGMENT["ncct_brightness"]
        x = images[0] * contrast + brightness + torch.randn(crop, crop) * AUGMENT["ncct_noise_std"]
        # [1, crop, crop] each: the DataLoader stacks them to [batch, 1, crop, crop]
        return x.unsqueeze(0), images[1:2], masks[0:1], masks[1:2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared store (ncct2ctpa prepare)")
    ap.add_argument("--preset", default="tiny", choices=sorted(twin.PRESETS))
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    ap.add_argument("--steps", type=int, default=0, help="cap on the steps (0: the whole epoch)")
    ap.add_argument("--init", help="folder with generator/registration/discriminator.safetensors")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ds = StoreDataset(args.data, args.crop)
    step = bench.Step(twin.preset(args.preset), args.init)
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        prefetch_factor=2 if args.workers > 0 else None, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    steps = len(loader) if args.steps <= 0 else min(args.steps, len(loader))
    samples = []
    first_loss = None
    first_batch = None
    t0 = time.perf_counter()
    last = t0
    for k, (x, y, lung, _body) in enumerate(loader):
        if k >= steps:
            break
        if first_batch is None:
            first_batch = time.perf_counter() - t0
        stats = step(x, y, lung, k + 1)
        if first_loss is None:
            first_loss = stats["loss_g"]
        now = time.perf_counter()
        samples.append(now - last)
        last = now
    seconds = time.perf_counter() - t0
    out = {"schema": SCHEMA, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "workers": args.workers, "preset": args.preset, "crop": args.crop, "batch": args.batch,
           "slices": len(ds), "steps": len(samples), "seconds": seconds,
           "first_batch_s": first_batch, "step": bench.summary(samples), "first_loss_g": first_loss}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
