//! ITK-style image geometry in LPS millimetres.

use crate::{Result, VolumeError};
use serde::{Deserialize, Serialize};

/// Position of a voxel grid in patient space (LPS), in ITK's conventions.
///
/// All three fields are in index order `(i, j, k)` = `(x, y, z)`: `spacing[0]` is the size of a
/// voxel along the fastest axis. `direction` is row-major and its **columns** are the unit
/// vectors of the index axes in LPS, so
/// `point = origin + direction * diag(spacing) * [i, j, k]` (ITK's `TransformIndexToPhysicalPoint`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    pub spacing: [f64; 3],
    pub origin: [f64; 3],
    pub direction: [[f64; 3]; 3],
}

impl Default for Geometry {
    fn default() -> Self {
        Self::identity([1.0; 3])
    }
}

impl Geometry {
    /// Axis-aligned geometry at the origin with the given spacing.
    pub fn identity(spacing: [f64; 3]) -> Self {
        Self {
            spacing,
            origin: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        }
    }

    /// Checks spacing is finite and positive and the direction is orthonormal (within 1e-3).
    pub fn validate(&self) -> Result<()> {
        if self.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(VolumeError::invalid(format!(
                "spacing must be finite and positive, got {:?}",
                self.spacing
            )));
        }
        if self.origin.iter().any(|o| !o.is_finite()) {
            return Err(VolumeError::invalid(format!(
                "origin is not finite: {:?}",
                self.origin
            )));
        }
        let d = &self.direction;
        for a in 0..3 {
            for b in 0..3 {
                let dot: f64 = (0..3).map(|r| d[r][a] * d[r][b]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                if !dot.is_finite() || (dot - want).abs() > 1e-3 {
                    return Err(VolumeError::invalid(format!(
                        "direction is not orthonormal: {:?}",
                        self.direction
                    )));
                }
            }
        }
        Ok(())
    }

    /// Physical LPS point of a continuous index `(i, j, k)`.
    // Matrix arithmetic reads best with explicit row/column indices.
    #[allow(clippy::needless_range_loop)]
    pub fn index_to_point(&self, index: [f64; 3]) -> [f64; 3] {
        let mut p = self.origin;
        for (r, pr) in p.iter_mut().enumerate() {
            for c in 0..3 {
                *pr += self.direction[r][c] * self.spacing[c] * index[c];
            }
        }
        p
    }

    /// Continuous index `(i, j, k)` of a physical LPS point (inverse of [`Self::index_to_point`];
    /// uses the transpose of the orthonormal direction).
    pub fn point_to_index(&self, point: [f64; 3]) -> [f64; 3] {
        let d = [
            point[0] - self.origin[0],
            point[1] - self.origin[1],
            point[2] - self.origin[2],
        ];
        let mut idx = [0.0; 3];
        for (c, ic) in idx.iter_mut().enumerate() {
            let proj: f64 = (0..3).map(|r| self.direction[r][c] * d[r]).sum();
            *ic = proj / self.spacing[c];
        }
        idx
    }

    /// 4x4 index-to-LPS affine (row-major).
    #[allow(clippy::needless_range_loop)]
    pub fn affine_lps(&self) -> [[f64; 4]; 4] {
        let mut a = [[0.0; 4]; 4];
        for r in 0..3 {
            for c in 0..3 {
                a[r][c] = self.direction[r][c] * self.spacing[c];
            }
            a[r][3] = self.origin[r];
        }
        a[3][3] = 1.0;
        a
    }

    /// Whether two geometries agree within `tol` (mm for spacing/origin, unitless for direction).
    pub fn approx_eq(&self, other: &Geometry, tol: f64) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= tol;
        (0..3).all(|i| close(self.spacing[i], other.spacing[i]))
            && (0..3).all(|i| close(self.origin[i], other.origin[i]))
            && (0..3).all(|r| (0..3).all(|c| close(self.direction[r][c], other.direction[r][c])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_point_round_trip_with_oblique_direction() {
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        let g = Geometry {
            spacing: [0.7, 0.8, 2.5],
            origin: [-100.0, 20.0, 35.0],
            direction: [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]],
        };
        g.validate().unwrap();
        let idx = [3.0, 7.5, 11.0];
        let p = g.index_to_point(idx);
        let back = g.point_to_index(p);
        for i in 0..3 {
            assert!((back[i] - idx[i]).abs() < 1e-9, "{back:?} vs {idx:?}");
        }
        // Moving one voxel along i moves spacing[0] mm along the first direction column.
        let p1 = g.index_to_point([4.0, 7.5, 11.0]);
        assert!((p1[0] - p[0] - 0.7 * c).abs() < 1e-12);
        assert!((p1[1] - p[1] - 0.7 * s).abs() < 1e-12);
    }

    #[test]
    fn validate_rejects_bad_spacing_and_direction() {
        let mut g = Geometry::identity([1.0, 1.0, 0.0]);
        assert!(g.validate().is_err());
        g = Geometry::identity([1.0; 3]);
        g.direction[0][0] = 2.0;
        assert!(g.validate().is_err());
    }
}
