#!/usr/bin/env python3
"""Golden for volume::register::demons: SimpleITK's SymmetricForcesDemonsRegistrationFilter
(ITK 5.4) on a small synthetic pair, one resolution level, unit spacing.

The pair: smooth Gaussian blobs (fixed) and the same blobs moved by a smooth, known
displacement (moving), so that the moving image at p + u(p) is the fixed one at p, float32,
[z, y, x] = [16, 24, 24], spacing 1 mm (so ITK's normaliser, the mean squared spacing, is 1 and
its smoothing standard deviation, in voxels, means the same as ours).

Writes into crates/volume/tests/data/demons/: fixed.f32, moving.f32 (little-endian float32,
C order), field_sitk.f32 ([3, z, y, x]: the x, y, z components of SimpleITK's displacement, in
voxels) and golden.json (shape, settings, the RMS before/after SimpleITK reaches, and its
field's mean error against the true displacement inside a 3-voxel margin).

Usage: python3 tools/golden/demons_sitk.py   (needs SimpleITK and numpy; run once, commit)
"""
import json
import pathlib

import numpy as np
import SimpleITK as sitk

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/volume/tests/data/demons"
SHAPE = (16, 24, 24)  # z, y, x
ITERATIONS = 40
SIGMA = 1.5

def blobs(x, y, z):
    centres = [(8, 9, 7, 3.0, 300.0), (15, 14, 8, 2.5, -200.0), (11, 17, 5, 2.0, 250.0),
               (17, 7, 10, 3.5, 150.0), (6, 16, 9, 2.0, -150.0)]
    v = np.zeros_like(x, dtype=np.float64)
    for cx, cy, cz, s, a in centres:
        v += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return v

def main():
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij")
    # the motion: up to ~1.5 voxels, smooth
    ux = 1.2 * np.sin(np.pi * y / 24.0)
    uy = 0.8 * np.cos(np.pi * x / 24.0) * np.sin(np.pi * z / 16.0)
    uz = 0.4 * np.ones_like(z)
    fixed = blobs(x, y, z).astype(np.float32)
    # moving(p) = fixed-anatomy at p - u(p): moving(p + u) = fixed(p) to first order
    moving = blobs(x - ux, y - uy, z - uz).astype(np.float32)

    f = sitk.GetImageFromArray(fixed)
    m = sitk.GetImageFromArray(moving)
    demons = sitk.SymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(ITERATIONS)
    demons.SetStandardDeviations(SIGMA)
    demons.SetSmoothDisplacementField(True)
    demons.SetSmoothUpdateField(False)
    # all iterations, as ours (ITK's default stops once the field's RMS change is below 0.02)
    demons.SetMaximumRMSError(0.0)
    field = demons.Execute(f, m)
    assert demons.GetElapsedIterations() == ITERATIONS, demons.GetElapsedIterations()
    # [z, y, x, 3] -> [3, z, y, x]; unit spacing: mm are voxels
    u = np.moveaxis(sitk.GetArrayFromImage(field), -1, 0).astype(np.float32)
    warped = sitk.GetArrayFromImage(
        sitk.Warp(m, sitk.Cast(field, sitk.sitkVectorFloat64), sitk.sitkLinear)
    )
    rms_before = float(np.sqrt(np.mean((moving - fixed) ** 2)))
    truth = np.stack([ux, uy, uz]).astype(np.float32)
    inner = (slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    sitk_vs_truth = float(np.mean(np.abs(u - truth)[inner]))
    rms_after = float(np.sqrt(np.mean((warped - fixed) ** 2)))
    OUT.mkdir(parents=True, exist_ok=True)
    fixed.tofile(OUT / "fixed.f32")
    moving.tofile(OUT / "moving.f32")
    u.tofile(OUT / "field_sitk.f32")
    (OUT / "golden.json").write_text(json.dumps({
        "shape_zyx": list(SHAPE),
        "iterations": ITERATIONS,
        "field_sigma_voxels": SIGMA,
        "sitk_version": sitk.Version.VersionString(),
        "rms_before": rms_before,
        "rms_after_sitk": rms_after,
        "max_true_displacement": float(np.sqrt(ux ** 2 + uy ** 2 + uz ** 2).max()),
        "sitk_mean_abs_error_vs_true_displacement_inner": sitk_vs_truth,
    }, indent=1) + "\n")
    print(f"rms {rms_before:.3f} -> {rms_after:.3f}, field vs truth {sitk_vs_truth:.4f} "
          f"(SimpleITK {sitk.Version.VersionString()})")

if __name__ == "__main__":
    main()
