//! Resampling a volume onto another voxel grid, optionally through a rigid transform.
//!
//! This follows ITK's `ResampleImageFilter`: for every voxel of the output [`Grid`], its
//! physical point is sent through the transform (fixed → moving, see [`Rigid3`]), converted to
//! a continuous index of the input, and the input is interpolated there. A point whose
//! continuous index lies outside `[-0.5, size - 0.5)` on any axis (outside the input's voxels,
//! counting half a voxel around the centres, as ITK does) gets the fill value; inside that
//! band, linear interpolation clamps to the edge voxels, as ITK's `LinearInterpolateImageFunction`
//! does. Nearest rounds half-indices up (ITK's `RoundHalfIntegerUp`).
//!
//! Because output index → input index is affine, it is precomputed once as a 3x4 matrix and
//! stepped along x, so the inner loop is a few additions and one interpolation. Slices along z
//! are computed in parallel.

use crate::transform::{matmul3, matvec3, Rigid3};
use crate::{Geometry, Mask, Result, Volume, VolumeError};
use ndarray::{Array3, ArrayView3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::debug;

/// How to read the input between voxel centres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Trilinear: for images.
    Linear,
    /// Nearest neighbour: for masks and labels.
    Nearest,
}

/// A voxel grid: size and geometry, without data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    /// Number of voxels along `(x, y, z)`.
    pub size_xyz: [usize; 3],
    pub geometry: Geometry,
}

impl Grid {
    /// A grid, checked (no empty axis, valid geometry).
    pub fn new(size_xyz: [usize; 3], geometry: Geometry) -> Result<Self> {
        if size_xyz.contains(&0) {
            return Err(VolumeError::invalid(format!(
                "grid has an empty dimension: (x, y, z) = {size_xyz:?}"
            )));
        }
        geometry.validate()?;
        Ok(Self { size_xyz, geometry })
    }

    /// The grid a volume lies on.
    pub fn of<T>(volume: &Volume<T>) -> Self {
        Self {
            size_xyz: volume.size_xyz(),
            geometry: volume.geometry,
        }
    }

    /// The grid covering the same physical extent with another spacing, the way ITK users build
    /// it: same origin and direction, `size = round(size * old_spacing / new_spacing)`, at least 1.
    pub fn with_spacing(&self, spacing: [f64; 3]) -> Grid {
        let mut size = [1usize; 3];
        for a in 0..3 {
            let extent = self.size_xyz[a] as f64 * self.geometry.spacing[a];
            let n = (extent / spacing[a]).round();
            size[a] = if n.is_finite() && n >= 1.0 {
                n as usize
            } else {
                1
            };
        }
        Grid {
            size_xyz: size,
            geometry: Geometry {
                spacing,
                ..self.geometry
            },
        }
    }

    /// Shape as `[z, y, x]`.
    pub fn shape_zyx(&self) -> [usize; 3] {
        [self.size_xyz[2], self.size_xyz[1], self.size_xyz[0]]
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.size_xyz.iter().product()
    }

    /// Whether the grid has no voxel (never true for a grid built by [`Grid::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Physical centre of the grid (the midpoint between the first and last voxel centres).
    pub fn center(&self) -> [f64; 3] {
        let mid = [0, 1, 2].map(|a| (self.size_xyz[a] as f64 - 1.0) / 2.0);
        self.geometry.index_to_point(mid)
    }
}

/// The affine map from an output continuous index to an input continuous index:
/// `in = a · out + b`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexMap {
    pub a: [[f64; 3]; 3],
    pub b: [f64; 3],
}

impl IndexMap {
    /// `output index → output point → transform → input index`.
    pub fn new(output: &Geometry, transform: Option<&Rigid3>, input: &Geometry) -> Self {
        // output index -> point: p = D_o S_o i + o_o
        let mut ds_out = [[0.0; 3]; 3];
        for (r, row) in ds_out.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = output.direction[r][c] * output.spacing[c];
            }
        }
        // point -> moving point: q = R p + t
        let (r, t) = match transform {
            Some(tr) => (tr.matrix(), tr.offset()),
            None => (
                [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                [0.0; 3],
            ),
        };
        // moving point -> input index: j = S_i^-1 D_i^T (q - o_i)
        let mut inv_in = [[0.0; 3]; 3];
        for (rr, row) in inv_in.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = input.direction[c][rr] / input.spacing[rr];
            }
        }
        let a = matmul3(&inv_in, &matmul3(&r, &ds_out));
        let q0 = matvec3(&r, output.origin);
        let d = [
            q0[0] + t[0] - input.origin[0],
            q0[1] + t[1] - input.origin[1],
            q0[2] + t[2] - input.origin[2],
        ];
        Self {
            a,
            b: matvec3(&inv_in, d),
        }
    }

    #[inline]
    pub fn at(&self, i: f64, j: f64, k: f64) -> [f64; 3] {
        let a = &self.a;
        [
            a[0][0] * i + a[0][1] * j + a[0][2] * k + self.b[0],
            a[1][0] * i + a[1][1] * j + a[1][2] * k + self.b[1],
            a[2][0] * i + a[2][1] * j + a[2][2] * k + self.b[2],
        ]
    }
}

/// Whether a continuous index lies in ITK's buffer band `[-0.5, n - 0.5)` on every axis.
#[inline]
fn inside(idx: [f64; 3], dims_xyz: [usize; 3]) -> bool {
    (0..3).all(|a| idx[a] >= -0.5 && idx[a] < dims_xyz[a] as f64 - 0.5)
}

/// Trilinear value at a continuous index `(x, y, z)` known to be [`inside`]; neighbours beyond
/// the last voxel are clamped to it.
#[inline]
pub(crate) fn trilinear(data: &ArrayView3<f32>, idx: [f64; 3]) -> f32 {
    let (nz, ny, nx) = data.dim();
    let n = [nx, ny, nz];
    let mut i0 = [0usize; 3];
    let mut i1 = [0usize; 3];
    let mut w = [0.0f64; 3];
    for a in 0..3 {
        let f = idx[a].floor();
        let frac = idx[a] - f;
        let base = f as isize;
        if base < 0 {
            i0[a] = 0;
            i1[a] = 0;
            w[a] = 0.0;
        } else {
            let b = base as usize;
            i0[a] = b.min(n[a] - 1);
            i1[a] = (b + 1).min(n[a] - 1);
            w[a] = frac;
        }
    }
    let v = |x: usize, y: usize, z: usize| f64::from(data[[z, y, x]]);
    let c00 = v(i0[0], i0[1], i0[2]) * (1.0 - w[0]) + v(i1[0], i0[1], i0[2]) * w[0];
    let c10 = v(i0[0], i1[1], i0[2]) * (1.0 - w[0]) + v(i1[0], i1[1], i0[2]) * w[0];
    let c01 = v(i0[0], i0[1], i1[2]) * (1.0 - w[0]) + v(i1[0], i0[1], i1[2]) * w[0];
    let c11 = v(i0[0], i1[1], i1[2]) * (1.0 - w[0]) + v(i1[0], i1[1], i1[2]) * w[0];
    let c0 = c00 * (1.0 - w[1]) + c10 * w[1];
    let c1 = c01 * (1.0 - w[1]) + c11 * w[1];
    (c0 * (1.0 - w[2]) + c1 * w[2]) as f32
}

/// Nearest voxel `[z, y, x]` of a continuous index known to be [`inside`] (half up).
#[inline]
fn nearest_index(idx: [f64; 3], dims_xyz: [usize; 3]) -> [usize; 3] {
    let r = |a: usize| ((idx[a] + 0.5).floor().max(0.0) as usize).min(dims_xyz[a] - 1);
    [r(2), r(1), r(0)]
}

/// Fills an output grid by evaluating `sample(input index)` at each voxel, slices in parallel.
fn resample_with<T, F>(grid: &Grid, map: &IndexMap, fill: T, sample: F) -> Array3<T>
where
    T: Copy + Send + Sync,
    F: Fn([f64; 3]) -> Option<T> + Sync,
{
    let [nz, ny, nx] = grid.shape_zyx();
    let mut out = Array3::from_elem((nz, ny, nx), fill);
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(k, mut slice)| {
            for j in 0..ny {
                let start = map.at(0.0, j as f64, k as f64);
                let step = [map.a[0][0], map.a[1][0], map.a[2][0]];
                for i in 0..nx {
                    let fi = i as f64;
                    let idx = [
                        start[0] + step[0] * fi,
                        start[1] + step[1] * fi,
                        start[2] + step[2] * fi,
                    ];
                    if let Some(v) = sample(idx) {
                        slice[[j, i]] = v;
                    }
                }
            }
        });
    out
}

/// Resamples `volume` onto `grid`. With a transform, the output at point `p` is the input at
/// `transform.apply(p)` (fixed → moving, ITK convention); points falling outside the input get
/// `fill`.
pub fn resample(
    volume: &Volume,
    grid: &Grid,
    transform: Option<&Rigid3>,
    interp: Interpolation,
    fill: f32,
) -> Result<Volume> {
    let grid = Grid::new(grid.size_xyz, grid.geometry)?;
    volume.geometry.validate()?;
    let map = IndexMap::new(&grid.geometry, transform, &volume.geometry);
    let dims = volume.size_xyz();
    let data = volume.data.view();
    debug!(
        input = ?dims, output = ?grid.size_xyz, ?interp, transform = ?transform.map(|t| t.to_string()),
        "resample"
    );
    let out = match interp {
        Interpolation::Linear => resample_with(&grid, &map, fill, |idx| {
            inside(idx, dims).then(|| trilinear(&data, idx))
        }),
        Interpolation::Nearest => resample_with(&grid, &map, fill, |idx| {
            inside(idx, dims).then(|| data[nearest_index(idx, dims)])
        }),
    };
    Volume::new(out, grid.geometry)
}

/// Resamples a mask onto `grid` with nearest-neighbour interpolation; outside is 0.
pub fn resample_mask(mask: &Mask, grid: &Grid, transform: Option<&Rigid3>) -> Result<Mask> {
    let grid = Grid::new(grid.size_xyz, grid.geometry)?;
    mask.geometry.validate()?;
    let map = IndexMap::new(&grid.geometry, transform, &mask.geometry);
    let dims = mask.size_xyz();
    let data = mask.data.view();
    debug!(input = ?dims, output = ?grid.size_xyz, "resample mask");
    let out = resample_with(&grid, &map, 0u8, |idx| {
        inside(idx, dims).then(|| data[nearest_index(idx, dims)])
    });
    Volume::new(out, grid.geometry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_spacing_keeps_extent() {
        let g = Grid {
            size_xyz: [512, 512, 100],
            geometry: Geometry::identity([0.7, 0.7, 2.5]),
        };
        let h = g.with_spacing([1.4, 1.4, 1.0]);
        assert_eq!(h.size_xyz, [256, 256, 250]);
        assert_eq!(h.geometry.origin, g.geometry.origin);
        let tiny = g.with_spacing([1e6, 1e6, 1e6]);
        assert_eq!(tiny.size_xyz, [1, 1, 1]);
    }

    #[test]
    fn inside_band_is_half_voxel() {
        assert!(inside([-0.5, 0.0, 0.0], [4, 4, 4]));
        assert!(!inside([-0.51, 0.0, 0.0], [4, 4, 4]));
        assert!(inside([3.49, 0.0, 0.0], [4, 4, 4]));
        assert!(!inside([3.5, 0.0, 0.0], [4, 4, 4]));
    }
}
