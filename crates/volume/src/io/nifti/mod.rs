//! NIfTI-1 reading and writing with ITK's geometry conventions.
//!
//! - [`header`]: the 348-byte header, validated on decode, deterministic on encode;
//! - [`orient`]: qform/sform (RAS) to and from ITK's LPS [`Geometry`](crate::Geometry),
//!   choosing the transform the way ITK 5.4 does;
//! - [`read`] and [`write`]: voxel data, gzip, scaling, size checks, atomic output.

pub mod header;
pub mod orient;
pub mod read;
pub mod write;

pub use header::{DataType, NiftiHeader};
pub use orient::TransformSource;
pub use read::{read_nifti_bytes, read_nifti_displacement, read_nifti_file, NiftiImage};
pub use write::{write_nifti, write_nifti_described, write_nifti_displacement, write_nifti_mask};

use crate::{Result, Volume};
use std::path::Path;

/// Reads a NIfTI-1 file (`.nii` or `.nii.gz`) into float32 HU with LPS geometry.
pub fn read_nifti(path: &Path) -> Result<Volume> {
    Ok(read_nifti_file(path)?.volume)
}
