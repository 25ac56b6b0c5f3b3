#!/usr/bin/env python3
"""Enhanced (multi-frame) CT files for the volume crate's reader tests, made with pydicom from
the 5-slice oblique series crates/volume/tests/data/dicom/ct_series (its CT images, not the
localizer), so the Rust test can compare them with that series voxel for voxel and in geometry.

Run once:  .venv-twin/bin/python tools/golden/dicom_multiframe.py
Writes crates/volume/tests/data/dicom/multiframe/:
  enhanced_ct.dcm       Enhanced CT Image Storage (1.2.840.10008.5.1.4.1.1.2.1): pixel spacing,
                        slice thickness and orientation in the Shared Functional Groups,
                        position and rescale (each slice keeps its own intercept) per frame;
                        frames stored in a shuffled order (a reader must sort them in space).
  legacy_converted.dcm  Legacy Converted Enhanced CT (1.2.840.10008.5.1.4.1.1.2.2): everything
                        per frame, frames in acquisition order.
  gap.dcm               as enhanced_ct.dcm without the middle frame: not one regular volume.
"""
import copy
import os

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "volume", "tests", "data",
                    "dicom")
SRC = os.path.join(ROOT, "ct_series")
OUT = os.path.join(ROOT, "multiframe")
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_CT = "1.2.840.10008.5.1.4.1.1.2.2"


def source_slices():
    out = []
    for name in sorted(os.listdir(SRC)):
        try:
            ds = pydicom.dcmread(os.path.join(SRC, name))
        except Exception:
            continue
        if ds.Modality == "CT" and "LOCALIZER" not in list(ds.ImageType):
            out.append(ds)
    return out


def item(**kw):
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def frame_groups(ds, per_frame_everything):
    g = Dataset()
    g.PlanePositionSequence = Sequence([item(ImagePositionPatient=list(ds.ImagePositionPatient))])
    g.PixelValueTransformationSequence = Sequence([item(
        RescaleIntercept=ds.RescaleIntercept, RescaleSlope=ds.RescaleSlope, RescaleType="HU")])
    if per_frame_everything:
        g.PixelMeasuresSequence = Sequence([item(
            PixelSpacing=list(ds.PixelSpacing), SliceThickness=ds.SliceThickness)])
        g.PlaneOrientationSequence = Sequence([item(
            ImageOrientationPatient=list(ds.ImageOrientationPatient))])
    return g


def multiframe(slices, sop_class, per_frame_everything, name):
    first = slices[0]
    ds = Dataset()
    for kw in ["PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "Modality",
               "FrameOfReferenceUID", "Rows", "Columns", "BitsAllocated", "BitsStored",
               "HighBit", "PixelRepresentation", "SamplesPerPixel",
               "PhotometricInterpretation"]:
        if kw in first:
            setattr(ds, kw, getattr(first, kw))
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = "multi-frame from ct_series"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(slices)
    if not per_frame_everything:
        ds.SharedFunctionalGroupsSequence = Sequence([item(
            PixelMeasuresSequence=Sequence([item(PixelSpacing=list(first.PixelSpacing),
                                                 SliceThickness=first.SliceThickness)]),
            PlaneOrientationSequence=Sequence([item(
                ImageOrientationPatient=list(first.ImageOrientationPatient))]),
        )])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [frame_groups(s, per_frame_everything) for s in slices])
    ds.PixelData = np.stack([s.pixel_array for s in slices]).astype(np.int16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    path = os.path.join(OUT, name)
    ds.save_as(path, enforce_file_format=True)
    print("wrote", path, len(slices), "frames")


def main():
    os.makedirs(OUT, exist_ok=True)
    slices = source_slices()
    normal = np.cross(np.array(slices[0].ImageOrientationPatient[:3], float),
                      np.array(slices[0].ImageOrientationPatient[3:], float))
    by_position = sorted(slices, key=lambda d: float(np.dot(normal, np.array(
        d.ImagePositionPatient, float))))
    shuffled = [by_position[i] for i in [3, 0, 4, 1, 2]]
    multiframe(shuffled, ENHANCED_CT, False, "enhanced_ct.dcm")
    multiframe(by_position, LEGACY_CONVERTED_CT, True, "legacy_converted.dcm")
    gap = [d for d in shuffled if d is not by_position[2]]
    multiframe(gap, ENHANCED_CT, False, "gap.dcm")


if __name__ == "__main__":
    main()
