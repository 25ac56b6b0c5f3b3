//! NIfTI-1 reading and writing (placeholder signatures; implemented by the IO work).

use crate::{Mask, Result, Volume, VolumeError};
use std::path::Path;

/// Reads a NIfTI-1 file (`.nii` or `.nii.gz`) into HU with LPS geometry.
pub fn read_nifti(path: &Path) -> Result<Volume> {
    Err(VolumeError::unsupported(
        path,
        "NIfTI reading is not implemented yet",
    ))
}

/// Writes a float volume as NIfTI-1 (float32), atomically (temporary name, then rename).
pub fn write_nifti(path: &Path, volume: &Volume) -> Result<()> {
    let _ = volume;
    Err(VolumeError::unsupported(
        path,
        "NIfTI writing is not implemented yet",
    ))
}

/// Writes a mask as NIfTI-1 (uint8), atomically.
pub fn write_nifti_mask(path: &Path, mask: &Mask) -> Result<()> {
    let _ = mask;
    Err(VolumeError::unsupported(
        path,
        "NIfTI writing is not implemented yet",
    ))
}
