#!/usr/bin/env python3
"""Makes the reference files for the volume crate's IO tests (crates/volume/tests/data/).

Run once with the reference environment:  /work/pyref/bin/python tools/golden/volume_io.py
It copies a few real test files from the pydicom and nibabel wheels (MIT / MIT licensed),
builds small NIfTI files of every datatype with nibabel, a small multi-slice CT series from
pydicom's CT_small.dcm, and writes golden.json: for each case the geometry as SimpleITK 5.4 reads
it (LPS origin, spacing, direction), and voxel statistics from nibabel / pydicom / SimpleITK.
The Rust tests (tests/io_reference.rs) read golden.json and never run Python.
"""
import copy, json, os, shutil, struct, tempfile
import numpy as np
import nibabel as nib
import pydicom, pydicom.data
import SimpleITK as sitk
from pydicom.uid import generate_uid

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "volume", "tests", "data")
NII = os.path.join(ROOT, "nifti")
DCM = os.path.join(ROOT, "dicom")
PYD = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
NIB = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


def stats(arr):
    """Voxel summary in [z, y, x] order (arr is already [z, y, x], float64)."""
    a = np.asarray(arr, dtype=np.float64)
    z, y, x = a.shape
    probes = [(0, 0, 0), (z - 1, y - 1, x - 1), (z // 2, y // 2, x // 2), (z - 1, 0, x // 3)]
    return {
        "shape_zyx": list(a.shape),
        "min": float(a.min()), "max": float(a.max()), "sum": float(a.sum()),
        "probes": [[int(k), int(j), int(i), float(a[k, j, i])] for k, j, i in probes],
    }


def sitk_geometry(img):
    return {
        "spacing": list(img.GetSpacing()),
        "origin": list(img.GetOrigin()),
        "direction": [list(img.GetDirection()[3 * r:3 * r + 3]) for r in range(3)],
    }


def nifti_case(path, note):
    img = nib.load(path)
    data = np.asanyarray(img.get_fdata(dtype=np.float64))  # [x, y, z(, 1)] with scaling
    data = data.reshape(data.shape[:3])
    s = sitk.ReadImage(path)
    case = {"file": os.path.relpath(path, ROOT), "note": note, "datatype": str(img.get_data_dtype()),
            "sform_code": int(img.header["sform_code"]), "qform_code": int(img.header["qform_code"])}
    case.update(sitk_geometry(s))
    case.update(stats(np.transpose(data, (2, 1, 0))))
    # SimpleITK's own voxels must agree with nibabel's (same file, independent readers).
    sv = sitk.GetArrayFromImage(s).astype(np.float64)
    assert np.allclose(sv, np.transpose(data, (2, 1, 0)), rtol=1e-6, atol=1e-4), path
    return case


def make_nifti():
    os.makedirs(NII, exist_ok=True)
    cases, rejects = [], []
    for name in ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"]:
        shutil.copy(os.path.join(NIB, name), os.path.join(NII, name))
        cases.append(nifti_case(os.path.join(NII, name), f"nibabel tests/data/{name}"))
    # Rejected on purpose: NIfTI-2 and a true 4D series.
    shutil.copy(os.path.join(NIB, "example_nifti2.nii.gz"), os.path.join(NII, "example_nifti2.nii.gz"))
    rejects.append({"file": "nifti/example_nifti2.nii.gz", "contains": "NIfTI-2"})
    shutil.copy(os.path.join(NIB, "functional.nii"), os.path.join(NII, "functional.nii"))
    rejects.append({"file": "nifti/functional.nii", "contains": "only 3D"})

    rng = np.random.default_rng(7)
    aff = np.array([[-0.9, 0.1, 0.0, 90.0], [0.1, 0.9, 0.0, -120.5], [0.0, 0.0, 2.5, -40.0], [0, 0, 0, 1.0]])
    # Make the rotation part exactly orthogonal with column norms (0.9055.., 0.9055.., 2.5).
    u, _, vt = np.linalg.svd(aff[:3, :3])
    aff[:3, :3] = (u @ vt) @ np.diag([0.8, 0.9, 2.5])
    for dtype, scale in [("uint8", None), ("int8", None), ("int16", (2.0, -1024.0)), ("uint16", None),
                         ("int32", None), ("uint32", None), ("int64", None), ("float32", None),
                         ("float64", (0.5, 10.0)), ("uint64", None)]:
        info = np.iinfo(dtype) if dtype.startswith(("u", "i")) else None
        lo, hi = (max(info.min, -3000), min(info.max, 3000)) if info else (-1000.0, 1000.0)
        arr = rng.integers(lo, hi, size=(6, 5, 4)).astype(dtype) if info else \
            rng.uniform(lo, hi, size=(6, 5, 4)).astype(dtype)
        im = nib.Nifti1Image(arr, aff, dtype=np.dtype(dtype))
        im.header.set_qform(aff, 1)
        im.header.set_sform(aff, 1)
        if scale:
            im.header.set_slope_inter(*scale)
        name = f"dtype_{dtype}.nii.gz"
        nib.save(im, os.path.join(NII, name))
        cases.append(nifti_case(os.path.join(NII, name), f"nibabel-made {dtype}, scale {scale}"))
    # Big-endian int16, qform only (no sform), qfac -1.
    arr = rng.integers(-1024, 2000, size=(5, 4, 3)).astype(">i2")
    flip = aff.copy(); flip[:, 2] *= -1
    im = nib.Nifti1Image(arr, flip, dtype=np.dtype(">i2"))
    im.header.set_qform(flip, 1); im.header.set_sform(None, 0)
    hdr = im.header.as_byteswapped(">")
    im = nib.Nifti1Image(arr, None, header=hdr)
    im.header.set_qform(flip, 1); im.header.set_sform(None, 0)
    nib.save(im, os.path.join(NII, "bigendian_qform_only.nii"))
    assert open(os.path.join(NII, "bigendian_qform_only.nii"), "rb").read(4) == struct.pack(">i", 348)
    cases.append(nifti_case(os.path.join(NII, "bigendian_qform_only.nii"), "big-endian int16, qform only, qfac -1"))
    # sform_code 2 and qform_code 1 disagreeing: ITK takes the qform.
    im = nib.Nifti1Image(rng.integers(0, 100, size=(4, 4, 4)).astype(np.int16), aff)
    shifted = aff.copy(); shifted[:3, 3] += [5, 6, 7]
    im.header.set_qform(aff, 1); im.header.set_sform(shifted, 2)
    nib.save(im, os.path.join(NII, "sform2_qform1.nii.gz"))
    cases.append(nifti_case(os.path.join(NII, "sform2_qform1.nii.gz"), "sform code 2 + qform code 1: ITK uses the qform"))
    return cases, rejects


def make_dicom():
    """A 5-slice CT series (oblique, shuffled file names) + a localizer + a second series."""
    series = os.path.join(DCM, "ct_series")
    shutil.rmtree(series, ignore_errors=True)
    os.makedirs(series)
    base = pydicom.dcmread(os.path.join(PYD, "CT_small.dcm"))
    uid = "2.25.1234567890123456789"
    c, s = np.cos(0.2), np.sin(0.2)
    row, col = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    normal = np.cross(row, col)
    order = [3, 0, 4, 1, 2]  # file k holds slice order[k]
    px = base.pixel_array.astype(np.int16)
    for k, z in enumerate(order):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = f"{uid}.{z + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = z + 1
        ds.ImageOrientationPatient = [float(f"{v:.6f}") for v in (*row, *col)]
        pos = np.array([-158.1, -179.0, -75.7]) + 2.5 * z * normal
        ds.ImagePositionPatient = [float(f"{v:.4f}") for v in pos]
        ds.SliceThickness = 2.5
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024 + 10 * z
        ds.PixelData = np.roll(px, 7 * z, axis=1).tobytes()
        ds.save_as(os.path.join(series, f"IMG{k:04d}.dcm"), enforce_file_format=True)
    # A localizer in the same series, at another orientation: must be dropped.
    loc = copy.deepcopy(base)
    loc.SeriesInstanceUID = uid
    loc.SOPInstanceUID = f"{uid}.99"
    loc.file_meta.MediaStorageSOPInstanceUID = loc.SOPInstanceUID
    loc.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    loc.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    loc.save_as(os.path.join(series, "LOCALIZER.dcm"), enforce_file_format=True)
    # A second, smaller series (MR) and a non-DICOM file in the same folder.
    shutil.copy(os.path.join(PYD, "MR_small.dcm"), os.path.join(series, "other_series.dcm"))
    open(os.path.join(series, "notes.txt"), "w").write("not a DICOM file\n")

    # SimpleITK reads the 5 image slices alone (GDCM's sorter gives up on mixed orientations).
    clean = tempfile.mkdtemp()
    for f in os.listdir(series):
        if f.startswith("IMG"):
            shutil.copy(os.path.join(series, f), clean)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(clean, uid))
    img = reader.Execute()
    shutil.rmtree(clean)
    case = {"dir": "dicom/ct_series", "series_uid": uid, "note": "CT_small.dcm as 5 oblique slices",
            "other_series": pydicom.dcmread(os.path.join(PYD, "MR_small.dcm")).SeriesInstanceUID}
    case.update(sitk_geometry(img))
    case.update(stats(sitk.GetArrayFromImage(img)))

    # Single files, each alone in a folder: the real CT slice and compressed MR variants.
    singles = []
    for name, note in [("CT_small.dcm", "pydicom CT slice, explicit VR LE"),
                       ("MR_small.dcm", "pydicom MR slice, uncompressed"),
                       ("MR_small_RLE.dcm", "RLE lossless"),
                       ("MR_small_jp2klossless.dcm", "JPEG 2000 lossless")]:
        d = os.path.join(DCM, os.path.splitext(name)[0])
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        shutil.copy(os.path.join(PYD, name), os.path.join(d, name))
        ds = pydicom.dcmread(os.path.join(d, name))
        arr = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) \
            + float(getattr(ds, "RescaleIntercept", 0))
        img = sitk.ReadImage(os.path.join(d, name))
        one = {"dir": os.path.relpath(d, ROOT), "note": note, "transfer_syntax": str(ds.file_meta.TransferSyntaxUID)}
        one.update(sitk_geometry(img))
        one.update(stats(arr[None, ...]))
        sv = sitk.GetArrayFromImage(img).astype(np.float64)
        one["sitk_matches_pydicom"] = bool(np.array_equal(sv, arr[None, ...]))
        singles.append(one)
    unsupported = []
    d = os.path.join(DCM, "MR_small_jpeg_ls_lossless")
    shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
    shutil.copy(os.path.join(PYD, "MR_small_jpeg_ls_lossless.dcm"), d)
    unsupported.append({"dir": "dicom/MR_small_jpeg_ls_lossless", "contains": "1.2.840.10008.1.2.4.80"})
    return case, singles, unsupported


def main():
    nifti, rejects = make_nifti()
    series, singles, unsupported = make_dicom()
    golden = {"made_by": "tools/golden/volume_io.py", "sitk": sitk.Version.VersionString(),
              "nibabel": nib.__version__, "pydicom": pydicom.__version__,
              "nifti": nifti, "nifti_rejected": rejects, "dicom_series": series,
              "dicom_single": singles, "dicom_unsupported": unsupported}
    with open(os.path.join(ROOT, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    print("wrote", os.path.join(ROOT, "golden.json"))


if __name__ == "__main__":
    main()
