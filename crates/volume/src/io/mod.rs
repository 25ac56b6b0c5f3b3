//! Reading and writing volumes: NIfTI-1 files and DICOM series.
//!
//! [`read_volume`] is the single entry point the rest of the toolkit uses: it accepts a
//! `.nii`/`.nii.gz` file or a folder holding a DICOM series.

pub mod dicom;
pub mod nifti;

use crate::{Mask, Result, Volume};
use std::path::Path;

/// Reads a CT volume in HU from a NIfTI file or a DICOM series folder (the largest CT series
/// when the folder holds several; see [`dicom::read_series`] to choose one).
pub fn read_volume(path: &Path) -> Result<Volume> {
    if path.is_dir() {
        dicom::read_series(path, None).map(|s| s.volume)
    } else {
        nifti::read_nifti(path)
    }
}

/// Reads a mask (any non-zero voxel is 1) from a NIfTI file.
pub fn read_mask(path: &Path) -> Result<Mask> {
    let v = nifti::read_nifti(path)?;
    Ok(Volume {
        data: v.data.mapv(|x| u8::from(x != 0.0)),
        geometry: v.geometry,
    })
}

/// Whether a file name looks like NIfTI (`.nii` or `.nii.gz`).
pub fn is_nifti_path(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// File name without `.nii`/`.nii.gz` (the case name of a raw dataset file).
pub fn nifti_stem(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
}
