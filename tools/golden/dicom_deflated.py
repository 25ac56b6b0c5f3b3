#!/usr/bin/env python3
"""Makes the references for reading Deflated Explicit VR Little Endian DICOM files.

Run once with the reference environment:  /work/pyref/bin/python tools/golden/dicom_deflated.py
Writes into crates/volume/tests/data/ (read by crates/volume/tests/io_deflated.rs, which never
runs Python):
- dicom/image_dfl/image_dfl.dcm: pydicom's test file (MIT licensed, 4.6 kB), a 512 x 512 8-bit
  image deflated by another toolkit; it has no ImagePositionPatient, so it is checked slice-wise.
- dicom/CT_small_deflated/CT_small_deflated.dcm: pydicom's CT_small.dcm (explicit VR LE) saved
  by pydicom with transfer syntax 1.2.840.10008.1.2.1.99: a whole CT slice with geometry.
- dicom_deflated.json: for each file, what pydicom reads (it inflates with zlib): header fields,
  the pixel values in HU (stored * slope + intercept), every row's and every column's sum (so any
  wrong pixel shows) and probe pixels; and the geometry as SimpleITK (GDCM) reads it, after
  checking that SimpleITK's pixels equal pydicom's.
"""
import json, os, shutil
import numpy as np
import pydicom, pydicom.data
import SimpleITK as sitk
from pydicom.uid import DeflatedExplicitVRLittleEndian

from volume_io import ROOT, PYD, sitk_geometry, stats


def fresh_dir(name):
    d = os.path.join(ROOT, "dicom", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def case(path, note):
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian, path
    arr = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) \
        + float(getattr(ds, "RescaleIntercept", 0))
    img = sitk.ReadImage(path)
    assert np.array_equal(sitk.GetArrayFromImage(img).astype(np.float64), arr[None, ...]), path
    one = {
        "file": os.path.relpath(path, ROOT), "note": note,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "series_uid": str(ds.SeriesInstanceUID), "modality": str(ds.Modality),
        "rows": int(ds.Rows), "columns": int(ds.Columns),
        "has_position": "ImagePositionPatient" in ds,
        "row_sums": [float(s) for s in arr.sum(axis=1)],
        "column_sums": [float(s) for s in arr.sum(axis=0)],
    }
    one.update(sitk_geometry(img))
    one.update(stats(arr[None, ...]))
    return one


def main():
    cases = []
    d = fresh_dir("image_dfl")
    path = os.path.join(d, "image_dfl.dcm")
    shutil.copy(os.path.join(PYD, "image_dfl.dcm"), path)
    cases.append(case(path, "pydicom's deflated test file (another toolkit's deflate), no geometry"))

    d = fresh_dir("CT_small_deflated")
    path = os.path.join(d, "CT_small_deflated.dcm")
    ds = pydicom.dcmread(os.path.join(PYD, "CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    cases.append(case(path, "pydicom's CT_small.dcm saved deflated by pydicom"))

    golden = {"made_by": "tools/golden/dicom_deflated.py (pydicom %s, SimpleITK %s)"
                         % (pydicom.__version__, sitk.Version_VersionString()),
              "files": cases}
    out = os.path.join(ROOT, "dicom_deflated.json")
    with open(out, "w") as f:
        json.dump(golden, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
