"""Golden references for the volume crate's resampling and rigid transform (SimpleITK).

Writes crates/volume/tests/data/processing_resample.json, read by
crates/volume/tests/resample_golden.rs. Run from the repository root:

    /work/pyref/bin/python tools/golden/volume_processing.py

A small random float32 volume with an oblique direction is resampled by `sitk.Resample`
through an `Euler3DTransform` (ITK's default ZXY angle order) onto a grid with another size,
spacing, origin and direction, with linear and nearest interpolation. Arrays are stored
flattened in [z, y, x] order (SimpleITK's GetArrayFromImage order).
"""

import json
import math
import os

import numpy as np
import SimpleITK as sitk

OUT = os.path.join("crates", "volume", "tests", "data", "processing_resample.json")


def rotation(ax, ay, az):
    """A proper rotation matrix (row-major), used as an image direction."""
    t = sitk.Euler3DTransform()
    t.SetRotation(ax, ay, az)
    return list(t.GetMatrix())


def main():
    rng = np.random.default_rng(20261125)
    arr = rng.uniform(-1000.0, 1000.0, size=(5, 6, 7)).astype(np.float32)  # [z, y, x]
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.3, 0.9, 2.1))
    image.SetOrigin((-4.0, 2.5, 7.0))
    image.SetDirection(rotation(0.2, -0.15, 0.35))

    transform = sitk.Euler3DTransform()
    transform.SetCenter((0.5, 4.0, 9.0))
    transform.SetRotation(math.radians(6.0), math.radians(-4.0), math.radians(9.0))
    transform.SetTranslation((0.8, -1.1, 0.6))

    out_size = (8, 7, 6)
    out_spacing = (1.0, 1.1, 1.7)
    out_origin = (-5.0, 1.0, 6.0)
    out_direction = rotation(-0.1, 0.05, 0.2)

    def run(interpolator):
        f = sitk.ResampleImageFilter()
        f.SetSize(out_size)
        f.SetOutputSpacing(out_spacing)
        f.SetOutputOrigin(out_origin)
        f.SetOutputDirection(out_direction)
        f.SetTransform(transform)
        f.SetInterpolator(interpolator)
        f.SetDefaultPixelValue(-2000.0)
        f.SetOutputPixelType(sitk.sitkFloat32)
        return sitk.GetArrayFromImage(f.Execute(image))

    linear = run(sitk.sitkLinear)
    nearest = run(sitk.sitkNearestNeighbor)

    points = [[0.0, 0.0, 0.0], [10.0, -20.0, 30.0], [-3.5, 7.25, 11.0]]
    mapped = [list(transform.TransformPoint(p)) for p in points]

    doc = {
        "_generated_by": "tools/golden/volume_processing.py (SimpleITK " + sitk.Version_VersionString() + ")",
        "input": {
            "size_xyz": list(image.GetSize()),
            "spacing": list(image.GetSpacing()),
            "origin": list(image.GetOrigin()),
            "direction": list(image.GetDirection()),
            "data_zyx": [float(v) for v in arr.ravel()],
        },
        "transform": {
            "center": list(transform.GetCenter()),
            "angles_rad": [transform.GetAngleX(), transform.GetAngleY(), transform.GetAngleZ()],
            "translation": list(transform.GetTranslation()),
            "matrix": list(transform.GetMatrix()),
            "points": points,
            "mapped": mapped,
        },
        "output": {
            "size_xyz": list(out_size),
            "spacing": list(out_spacing),
            "origin": list(out_origin),
            "direction": list(out_direction),
            "fill": -2000.0,
            "linear_zyx": [float(v) for v in linear.ravel()],
            "nearest_zyx": [float(v) for v in nearest.ravel()],
        },
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, OUT)
    filled = int((linear == -2000.0).sum())
    print(f"wrote {OUT}: {linear.size} voxels, {filled} outside (fill)")


if __name__ == "__main__":
    main()
