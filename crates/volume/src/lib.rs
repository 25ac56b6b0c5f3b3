//! 3D medical volumes for ncct2ctpa: the in-memory [`Volume`] with ITK/LPS geometry, NIfTI and
//! DICOM readers and writers, resampling, rigid alignment and classical body/lung masks.
//!
//! Conventions (see ../shared/DESIGN.md):
//! - voxel data is an `ndarray::Array3` indexed `[z, y, x]` (slowest to fastest);
//! - geometry follows ITK: `spacing`, `origin` and `direction` are in LPS millimetres and in
//!   index order `(x, y, z)` = `(i, j, k)`, so the physical point of voxel `[k, j, i]` is
//!   `origin + direction * diag(spacing) * (i, j, k)`;
//! - CT intensities are `f32` Hounsfield units; masks are `u8` (0 or 1).
//!
//! This crate has no deep-learning dependency, so it builds and tests in seconds.

pub mod error;
pub mod geometry;
pub mod io;
pub mod masks;
pub mod register;
pub mod resample;
pub mod transform;

pub use error::{Result, VolumeError};
pub use geometry::Geometry;

use ndarray::Array3;

/// A 3D image with its physical geometry. `T` is `f32` (HU) for images and `u8` for masks.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T = f32> {
    /// Voxels, `[z, y, x]`.
    pub data: Array3<T>,
    /// Where the voxels lie in patient space (LPS, mm).
    pub geometry: Geometry,
}

/// A binary mask (`0` or `1` per voxel) on the grid of some image.
pub type Mask = Volume<u8>;

impl<T> Volume<T> {
    /// Builds a volume, checking that no dimension is zero.
    pub fn new(data: Array3<T>, geometry: Geometry) -> Result<Self> {
        let (nz, ny, nx) = data.dim();
        if nz == 0 || ny == 0 || nx == 0 {
            return Err(VolumeError::invalid(format!(
                "volume has an empty dimension: [z, y, x] = [{nz}, {ny}, {nx}]"
            )));
        }
        geometry.validate()?;
        Ok(Self { data, geometry })
    }

    /// Shape as `(nx, ny, nz)`, the order ITK, NIfTI and DICOM report it in.
    pub fn size_xyz(&self) -> [usize; 3] {
        let (nz, ny, nx) = self.data.dim();
        [nx, ny, nz]
    }

    /// Shape as `[z, y, x]`, the order of `data`.
    pub fn shape_zyx(&self) -> [usize; 3] {
        let (nz, ny, nx) = self.data.dim();
        [nz, ny, nx]
    }

    /// Whether `other` lies on exactly the same voxel grid (size and geometry within `tol` mm).
    pub fn same_grid<U>(&self, other: &Volume<U>, tol: f64) -> bool {
        self.data.dim() == other.data.dim() && self.geometry.approx_eq(&other.geometry, tol)
    }
}

impl Volume<f32> {
    /// Minimum and maximum voxel value (ignores NaN); `None` for an all-NaN volume.
    pub fn value_range(&self) -> Option<(f32, f32)> {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for &v in self.data.iter() {
            if v.is_nan() {
                continue;
            }
            lo = lo.min(v);
            hi = hi.max(v);
        }
        (lo <= hi).then_some((lo, hi))
    }
}
