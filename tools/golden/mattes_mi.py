"""Golden Mattes mutual information values from SimpleITK for the volume crate's MI metric.

Writes crates/volume/tests/data/mattes_mi.json, read by crates/volume/tests/register_mattes.rs.
Run from the repository root:

    /work/pyref/bin/python tools/golden/mattes_mi.py

A small fixed/moving pair (float32, rounded to 0.1 HU, stored flattened in [z, y, x] order,
SimpleITK's GetArrayFromImage order) on different grids: the moving grid covers the fixed one
with a margin of several mm, so every fixed voxel lands inside the moving image under every
transform below (ITK drops points outside the moving image, our metric extends the edge
instead; with full overlap both see the same samples). The moving image has a contrast change:
a "vessel" that is 40 HU in the fixed image is 350 HU in the moving one, and fat/soft tissue
are remapped non-linearly, so MI is not a function of NCC here.

For each Euler3DTransform (ITK's ZXY angle order, centre = the fixed grid's centre) and bin
count, ImageRegistrationMethod with Mattes MI, sampling strategy NONE (every fixed voxel, no
jitter), linear interpolation, MetricEvaluate(fixed, moving) gives ITK's value, which is -MI.
"""

import json
import math
import os

import numpy as np
import SimpleITK as sitk

OUT = os.path.join("crates", "volume", "tests", "data", "mattes_mi.json")

FIXED = dict(size=(18, 16, 14), spacing=(1.5, 1.2, 2.0), origin=(-10.0, 5.0, 3.0))
MOVING = dict(size=(30, 28, 23), spacing=(1.3, 1.1, 1.7), origin=(-16.0, -1.0, -3.0))


def grid_points(g):
    """Physical points (x, y, z) of every voxel, arrays shaped [z, y, x]."""
    nx, ny, nz = g["size"]
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    return [g["origin"][a] + g["spacing"][a] * i for a, i in enumerate((x, y, z))]


def scene(x, y, z, contrast):
    """A smooth body with fat, soft tissue, a lung-like dark blob and a vessel (HU)."""
    body = np.exp(-(((x - 2.0) / 14.0) ** 2 + ((y - 14.0) / 9.0) ** 2 + ((z - 16.0) / 15.0) ** 2))
    lung = np.exp(-(((x + 3.0) / 4.0) ** 2 + ((y - 12.0) / 4.0) ** 2 + ((z - 18.0) / 6.0) ** 2))
    vessel = np.exp(-(((x - 7.0) / 2.5) ** 2 + ((y - 17.0) / 2.5) ** 2))
    tissue = -1000.0 + 1100.0 * body - 800.0 * lung
    if contrast:
        # non-linear remap of the background tissue and a bright vessel
        tissue = tissue + 60.0 * np.tanh((tissue + 100.0) / 80.0)
        return tissue + 310.0 * vessel
    return tissue


def image(arr, g):
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing(g["spacing"])
    img.SetOrigin(g["origin"])
    return img


def main():
    rng = np.random.default_rng(2003)
    fx, fy, fz = grid_points(FIXED)
    fixed = np.round(scene(fx, fy, fz, False) + rng.normal(0.0, 15.0, fx.shape), 1)
    mx, my, mz = grid_points(MOVING)
    # the moving scene is the fixed one moved by a small rigid shift, with contrast
    moving = np.round(scene(mx - 1.2, my + 0.8, mz - 0.5, True) + rng.normal(0.0, 15.0, mx.shape), 1)
    fixed = fixed.astype(np.float32)
    moving = moving.astype(np.float32)
    fimg, mimg = image(fixed, FIXED), image(moving, MOVING)

    center = [
        FIXED["origin"][a] + FIXED["spacing"][a] * (FIXED["size"][a] - 1) / 2.0 for a in range(3)
    ]
    transforms = [
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ([0.0, 0.0, 0.0], [1.2, -0.8, 0.5]),
        ([math.radians(2.0), math.radians(-1.5), math.radians(3.0)], [0.0, 0.0, 0.0]),
        ([math.radians(-1.0), math.radians(2.5), math.radians(-2.0)], [0.7, 1.1, -1.6]),
        ([math.radians(0.5), math.radians(0.3), math.radians(-0.4)], [2.0, -1.5, 1.0]),
    ]
    cases = []
    for bins in (50, 24):
        for angles, translation in transforms:
            t = sitk.Euler3DTransform()
            t.SetCenter(center)
            t.SetRotation(*angles)
            t.SetTranslation(translation)
            reg = sitk.ImageRegistrationMethod()
            reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
            reg.SetMetricSamplingStrategy(reg.NONE)
            reg.SetInterpolator(sitk.sitkLinear)
            reg.SetInitialTransform(t, inPlace=False)
            value = reg.MetricEvaluate(fimg, mimg)
            cases.append(
                dict(bins=bins, angles_rad=angles, translation=translation, itk_value=value)
            )
            print(f"bins {bins} angles {angles} translation {translation}: ITK {value:.12f}")

    def geometry(g):
        return dict(size_xyz=list(g["size"]), spacing=list(g["spacing"]), origin=list(g["origin"]))

    out = dict(
        made_by="tools/golden/mattes_mi.py (SimpleITK " + sitk.Version_VersionString() + ")",
        note="itk_value is ImageRegistrationMethod.MetricEvaluate with Mattes MI, sampling NONE, "
        "linear interpolation: the negative mutual information in nats",
        center=center,
        fixed=dict(geometry(FIXED), data=[float(v) for v in fixed.ravel()]),
        moving=dict(geometry(MOVING), data=[float(v) for v in moving.ravel()]),
        cases=cases,
    )
    with open(OUT + ".tmp", "w") as f:
        json.dump(out, f, separators=(",", ":"))
    os.replace(OUT + ".tmp", OUT)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
