#!/usr/bin/env python3
"""The expected provenance of a synthetic series written with a reference series, from pydicom.

Run once with the full PyTorch environment (`make setup-twin`, which has pydicom):
    .venv-twin/bin/python tools/golden/provenance_pydicom.py
writes crates/volume/tests/data/provenance.json: for the reference series
crates/volume/tests/data/dicom/ct_series (its CT series; the folder also holds a localizer and an
MR image), pydicom's reading of the series and study UIDs, and of each image's SOP class and
instance UID in the order of their position along the slice normal: what the derived series'
SourceImageSequence must name, slice by slice (tests/io_dicom_provenance.rs reads it).

    .venv-twin/bin/python tools/golden/provenance_pydicom.py --check OUT_SERIES_DIR
reads a series ncct2ctpa wrote with pydicom and checks the same references and texts (used
once, by hand, to confirm that pydicom parses what we write; the result goes in the notes).
"""
import argparse
import json
import os
import sys

import numpy as np
import pydicom

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "volume", "tests", "data")
REFERENCE = os.path.join(ROOT, "dicom", "ct_series")


def reference_series():
    """The CT series of the reference folder, sorted along its slice normal."""
    series = {}
    for name in sorted(os.listdir(REFERENCE)):
        path = os.path.join(REFERENCE, name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" not in ds or getattr(ds, "Modality", "") != "CT":
            continue
        if "LOCALIZER" in [str(v).upper() for v in getattr(ds, "ImageType", [])]:
            continue
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    uid, images = max(series.items(), key=lambda kv: len(kv[1]))
    iop = np.array(images[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    images.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    return uid, images


def golden():
    uid, images = reference_series()
    out = {
        "made_by": "tools/golden/provenance_pydicom.py (pydicom %s)" % pydicom.__version__,
        "reference": "dicom/ct_series",
        "series_instance_uid": str(uid),
        "study_instance_uid": str(images[0].StudyInstanceUID),
        "sources_by_position": [
            {"sop_class_uid": str(d.SOPClassUID), "sop_instance_uid": str(d.SOPInstanceUID),
             "position": [float(v) for v in d.ImagePositionPatient]}
            for d in images
        ],
        "image_type": ["DERIVED", "SECONDARY", "AXIAL"],
        "series_description_prefix": "SYNTHETIC",
    }
    path = os.path.join(ROOT, "provenance.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", path)


def check(folder):
    uid, images = reference_series()
    want = {str(d.SOPInstanceUID) for d in images}
    files = sorted(os.listdir(folder))
    for name in files:
        ds = pydicom.dcmread(os.path.join(folder, name))
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"], ds.ImageType
        assert ds.SeriesDescription.startswith("SYNTHETIC"), ds.SeriesDescription
        assert "ncct2ctpa" in ds.DerivationDescription
        src = ds.SourceImageSequence[0]
        assert str(src.ReferencedSOPInstanceUID) in want
        ref = ds.ReferencedSeriesSequence[0]
        assert str(ref.SeriesInstanceUID) == str(uid)
        assert ds.StudyInstanceUID == images[0].StudyInstanceUID
    print(f"pydicom {pydicom.__version__} read {len(files)} files of {folder}: ImageType, "
          "SeriesDescription, DerivationDescription, SourceImageSequence, "
          "ReferencedSeriesSequence and StudyInstanceUID as expected")
    print("DerivationDescription:", ds.DerivationDescription)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", metavar="SERIES_DIR")
    a = ap.parse_args()
    check(a.check) if a.check else golden()
    sys.exit(0)
