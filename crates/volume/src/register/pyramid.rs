//! Gaussian smoothing and the multi-resolution pyramid of the rigid registration.
//!
//! Coarse levels see the anatomy without its noise and fine detail, so the similarity has
//! fewer local optima there and the optimiser can make large moves; finer levels refine.
//! A level is the image smoothed with a Gaussian (sigma in mm) and resampled (linear) to a
//! spacing `shrink` times coarser over the same physical extent.

use crate::resample::{resample, Grid, Interpolation};
use crate::{Result, Volume};
use ndarray::{Array3, ArrayViewMut1, Axis, Zip};
use tracing::debug;

/// Normalised 1D Gaussian kernel for `sigma` voxels, truncated at 3 sigma.
fn kernel(sigma: f64) -> Vec<f64> {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let mut k: Vec<f64> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

fn convolve_lane(mut lane: ArrayViewMut1<f32>, k: &[f64]) {
    let n = lane.len() as isize;
    let r = (k.len() / 2) as isize;
    let src: Vec<f32> = lane.iter().copied().collect();
    for (i, out) in lane.iter_mut().enumerate() {
        let mut acc = 0.0f64;
        for (t, &w) in k.iter().enumerate() {
            // replicate the edge voxels
            let j = (i as isize + t as isize - r).clamp(0, n - 1) as usize;
            acc += w * f64::from(src[j]);
        }
        *out = acc as f32;
    }
}

/// Separable Gaussian smoothing with a per-axis sigma in mm (`(x, y, z)` order); an axis whose
/// sigma is below a tenth of a voxel is left alone.
pub fn gaussian_smooth(volume: &Volume, sigma_mm_xyz: [f64; 3]) -> Volume {
    let mut data: Array3<f32> = volume.data.clone();
    for (axis_xyz, &sigma_mm) in sigma_mm_xyz.iter().enumerate() {
        let sigma = sigma_mm / volume.geometry.spacing[axis_xyz];
        if sigma < 0.1 {
            continue;
        }
        let k = kernel(sigma);
        let axis = Axis(2 - axis_xyz); // [z, y, x]
        Zip::from(data.lanes_mut(axis)).par_for_each(|lane| convolve_lane(lane, &k));
    }
    Volume {
        data,
        geometry: volume.geometry,
    }
}

/// One level of the pyramid: smoothed with `sigma_mm` (isotropic), then resampled to the
/// spacing multiplied by `shrink` (unchanged when `shrink` is 1).
pub fn level(volume: &Volume, shrink: usize, sigma_mm: f64) -> Result<Volume> {
    let smoothed = if sigma_mm > 0.0 {
        gaussian_smooth(volume, [sigma_mm; 3])
    } else {
        volume.clone()
    };
    if shrink <= 1 {
        return Ok(smoothed);
    }
    let grid = Grid::of(volume);
    let spacing = volume.geometry.spacing.map(|s| s * shrink as f64);
    let coarse = grid.with_spacing(spacing);
    // Centre the coarse grid on the same extent (ITK's shrink keeps the physical centre).
    let mut coarse_geometry = coarse.geometry;
    let shift = [0, 1, 2].map(|a| {
        let full = grid.size_xyz[a] as f64 * grid.geometry.spacing[a];
        let part = coarse.size_xyz[a] as f64 * spacing[a];
        // move the first centre from origin to (start of extent + half a coarse voxel)
        (spacing[a] - grid.geometry.spacing[a]) / 2.0 + (full - part) / 2.0
    });
    coarse_geometry.origin = grid.geometry.index_to_point([
        shift[0] / grid.geometry.spacing[0],
        shift[1] / grid.geometry.spacing[1],
        shift[2] / grid.geometry.spacing[2],
    ]);
    let coarse = Grid::new(coarse.size_xyz, coarse_geometry)?;
    debug!(shrink, sigma_mm, size = ?coarse.size_xyz, "pyramid level");
    resample(&smoothed, &coarse, None, Interpolation::Linear, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Geometry;

    #[test]
    fn smoothing_keeps_constants_and_mass() {
        let g = Geometry::identity([1.0, 2.0, 3.0]);
        let flat = Volume::new(Array3::from_elem((6, 7, 8), 5.0f32), g).unwrap();
        let s = gaussian_smooth(&flat, [2.0; 3]);
        assert!(s.data.iter().all(|&v| (v - 5.0).abs() < 1e-5));
        let mut spike = Array3::<f32>::zeros((21, 21, 21));
        spike[[10, 10, 10]] = 1000.0;
        let v = Volume::new(spike, Geometry::identity([1.0; 3])).unwrap();
        let s = gaussian_smooth(&v, [1.5; 3]);
        let total: f32 = s.data.sum();
        assert!((total - 1000.0).abs() < 0.1, "{total}");
        assert!(s.data[[10, 10, 10]] < 100.0);
        assert!(s.data[[10, 10, 11]] > 10.0);
    }

    #[test]
    fn coarse_level_covers_the_same_extent() {
        let v = Volume::new(
            Array3::from_elem((8, 12, 16), 1.0f32),
            Geometry::identity([1.0; 3]),
        )
        .unwrap();
        let l = level(&v, 4, 2.0).unwrap();
        assert_eq!(l.size_xyz(), [4, 3, 2]);
        // first coarse centre at 1.5 mm: the middle of the first four fine voxels
        assert!((l.geometry.origin[0] - 1.5).abs() < 1e-12);
        assert!(l.data.iter().all(|&x| (x - 1.0).abs() < 1e-5));
    }
}
