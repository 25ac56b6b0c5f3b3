//! Reading and writing volumes: NIfTI-1 files and DICOM series.
//!
//! [`read_volume`] is the single entry point the rest of the toolkit uses: it accepts a
//! `.nii`/`.nii.gz` file or a folder holding a DICOM series.

pub mod dicom;
pub mod nifti;

use crate::{Mask, Result, Volume, VolumeError};
use ndarray::Array3;
use std::path::Path;

/// The HU of air: CT values below it are scanner padding outside the reconstruction circle
/// (PixelPaddingValue, typically -2048 or -3024), not tissue.
pub const AIR_HU: f32 = -1024.0;

/// Reads a CT volume in HU for the pipeline (prepare, predict, evaluate): [`read_volume`], or
/// `series` of a DICOM folder, with scanner padding read as air ([`pad_to_air`]).
pub fn read_ct(path: &Path, series: Option<&str>) -> Result<Volume> {
    let mut v = match (path.is_dir(), series) {
        (true, series) => dicom::read_series(path, series)?.volume,
        (false, _) => nifti::read_nifti(path)?,
    };
    let padded = pad_to_air(&mut v.data);
    if padded > 0 {
        tracing::info!(
            "{}: {padded} voxels below {AIR_HU} HU (scanner padding outside the reconstructed \
             circle) read as air ({AIR_HU} HU)",
            path.display()
        );
    }
    Ok(v)
}

/// Sets every value below [`AIR_HU`] to it; returns how many there were.
pub fn pad_to_air(data: &mut Array3<f32>) -> usize {
    let mut n = 0;
    data.mapv_inplace(|v| {
        if v < AIR_HU {
            n += 1;
            AIR_HU
        } else {
            v
        }
    });
    n
}

/// Errors naming `path` when a voxel is NaN or infinite (how many, and the first as
/// `[z, y, x]`): such a voxel would turn every loss, mask and metric it touches into NaN, and
/// there is no honest value to put in its place.
pub fn check_finite_voxels(path: &Path, data: &Array3<f32>) -> Result<()> {
    let count = data.iter().filter(|v| !v.is_finite()).count();
    if count == 0 {
        return Ok(());
    }
    let first = data
        .indexed_iter()
        .find(|(_, v)| !v.is_finite())
        .map(|((z, y, x), v)| format!("[z, y, x] = [{z}, {y}, {x}] is {v}"))
        .unwrap_or_default();
    Err(VolumeError::format(
        path,
        format!("{count} voxel(s) are NaN or infinite (the first, {first}); refusing the volume"),
    ))
}

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
