//! Rigid 3D transforms in ITK's `Euler3DTransform` convention.
//!
//! A [`Rigid3`] maps a point of the **fixed** space to the **moving** space, as every ITK
//! transform used for resampling does: to resample a moving image onto a fixed grid, each
//! output (fixed) point is sent through the transform and the moving image is read there.
//!
//! The rotation follows ITK's default (`ComputeZYX = false`): rotate about Y first, then X,
//! then Z, i.e. `R = Rz(γ) · Rx(α) · Ry(β)` with `angles_rad = [α, β, γ]` about `[x, y, z]`, and
//!
//! ```text
//! T(p) = R · (p − center) + center + translation
//! ```
//!
//! This is pinned against SimpleITK by the golden test in `tests/resample.rs`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A rotation about `center` followed by a translation (ITK `Euler3DTransform`, ZXY order).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rigid3 {
    /// Centre of rotation (LPS mm). Not an optimised parameter: it only changes what the
    /// angles and translation mean.
    pub center: [f64; 3],
    /// Rotation angles about the x, y and z axes, radians.
    pub angles_rad: [f64; 3],
    /// Translation (LPS mm), applied after the rotation.
    pub translation: [f64; 3],
}

impl Default for Rigid3 {
    fn default() -> Self {
        Self::identity()
    }
}

/// 3x3 matrix product `a · b`.
pub(crate) fn matmul3(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut m = [[0.0; 3]; 3];
    for (r, row) in m.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[r][k] * b[k][c]).sum();
        }
    }
    m
}

/// 3x3 matrix times vector.
pub(crate) fn matvec3(a: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [
        a[0][0] * v[0] + a[0][1] * v[1] + a[0][2] * v[2],
        a[1][0] * v[0] + a[1][1] * v[1] + a[1][2] * v[2],
        a[2][0] * v[0] + a[2][1] * v[1] + a[2][2] * v[2],
    ]
}

pub(crate) fn transpose3(a: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut t = [[0.0; 3]; 3];
    for (r, row) in a.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            t[c][r] = *v;
        }
    }
    t
}

/// The three elementary rotations `(Rx, Ry, Rz)` for the given angles.
fn elementary(angles: [f64; 3]) -> [[[f64; 3]; 3]; 3] {
    let (sx, cx) = angles[0].sin_cos();
    let (sy, cy) = angles[1].sin_cos();
    let (sz, cz) = angles[2].sin_cos();
    let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
    let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
    let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
    [rx, ry, rz]
}

/// Derivatives of the elementary rotations with respect to their own angle.
fn elementary_derivatives(angles: [f64; 3]) -> [[[f64; 3]; 3]; 3] {
    let (sx, cx) = angles[0].sin_cos();
    let (sy, cy) = angles[1].sin_cos();
    let (sz, cz) = angles[2].sin_cos();
    let drx = [[0.0, 0.0, 0.0], [0.0, -sx, -cx], [0.0, cx, -sx]];
    let dry = [[-sy, 0.0, cy], [0.0, 0.0, 0.0], [-cy, 0.0, -sy]];
    let drz = [[-sz, -cz, 0.0], [cz, -sz, 0.0], [0.0, 0.0, 0.0]];
    [drx, dry, drz]
}

impl Rigid3 {
    /// The identity (centre at the origin).
    pub fn identity() -> Self {
        Self {
            center: [0.0; 3],
            angles_rad: [0.0; 3],
            translation: [0.0; 3],
        }
    }

    /// Builds a transform from its centre, angles (radians) and translation (mm).
    pub fn new(center: [f64; 3], angles_rad: [f64; 3], translation: [f64; 3]) -> Self {
        Self {
            center,
            angles_rad,
            translation,
        }
    }

    /// This transform with parameter `k` moved by `delta`, in the order of the similarity
    /// gradients (`register::metric`): 0-2 the angles (radians), 3-5 the translation (mm).
    /// For finite differences.
    ///
    /// # Panics
    /// If `k > 5` (a programming error).
    pub fn nudged(&self, k: usize, delta: f64) -> Self {
        let mut t = *self;
        match k {
            0..=2 => t.angles_rad[k] += delta,
            3..=5 => t.translation[k - 3] += delta,
            _ => panic!("Rigid3 has 6 parameters, not {}", k + 1),
        }
        t
    }

    /// Same as [`Self::new`] with the angles in degrees (handy in configs and tests).
    pub fn from_degrees(center: [f64; 3], angles_deg: [f64; 3], translation: [f64; 3]) -> Self {
        Self::new(center, angles_deg.map(f64::to_radians), translation)
    }

    /// Rotation matrix `Rz · Rx · Ry` (row-major; ITK's `GetMatrix()`).
    pub fn matrix(&self) -> [[f64; 3]; 3] {
        let [rx, ry, rz] = elementary(self.angles_rad);
        matmul3(&rz, &matmul3(&rx, &ry))
    }

    /// Derivatives of [`Self::matrix`] with respect to each of the three angles, used by the
    /// analytic gradient of the registration metric.
    pub fn matrix_derivatives(&self) -> [[[f64; 3]; 3]; 3] {
        let [rx, ry, rz] = elementary(self.angles_rad);
        let [drx, dry, drz] = elementary_derivatives(self.angles_rad);
        [
            matmul3(&rz, &matmul3(&drx, &ry)),
            matmul3(&rz, &matmul3(&rx, &dry)),
            matmul3(&drz, &matmul3(&rx, &ry)),
        ]
    }

    /// ITK's "offset": `T(p) = R · p + offset`.
    pub fn offset(&self) -> [f64; 3] {
        let rc = matvec3(&self.matrix(), self.center);
        [
            self.translation[0] + self.center[0] - rc[0],
            self.translation[1] + self.center[1] - rc[1],
            self.translation[2] + self.center[2] - rc[2],
        ]
    }

    /// Maps a point of the fixed space to the moving space.
    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let m = self.matrix();
        let o = self.offset();
        let rp = matvec3(&m, p);
        [rp[0] + o[0], rp[1] + o[1], rp[2] + o[2]]
    }

    /// The 4x4 homogeneous matrix (row-major) of [`Self::apply`].
    pub fn to_affine(&self) -> [[f64; 4]; 4] {
        let m = self.matrix();
        let o = self.offset();
        let mut a = [[0.0; 4]; 4];
        for r in 0..3 {
            a[r][..3].copy_from_slice(&m[r]);
            a[r][3] = o[r];
        }
        a[3][3] = 1.0;
        a
    }

    /// The transform with the same centre whose rotation matrix is `m` (assumed a proper
    /// rotation) and whose translation is `translation`. Angles are recovered as ITK's
    /// `Euler3DTransform::SetMatrix` does for the ZXY order; at gimbal lock (|α| = 90°) the z
    /// angle is set to zero.
    pub fn from_matrix(center: [f64; 3], m: &[[f64; 3]; 3], translation: [f64; 3]) -> Self {
        // R = Rz Rx Ry has R[2][1] = sin α, R[2][0] = -cos α sin β, R[2][2] = cos α cos β,
        // R[0][1] = -sin γ cos α, R[1][1] = cos γ cos α.
        let ax = m[2][1].clamp(-1.0, 1.0).asin();
        let ca = ax.cos();
        let (ay, az) = if ca.abs() > 1e-9 {
            ((-m[2][0]).atan2(m[2][2]), (-m[0][1]).atan2(m[1][1]))
        } else {
            (m[1][0].atan2(m[0][0]), 0.0)
        };
        Self::new(center, [ax, ay, az], translation)
    }

    /// The inverse transform (moving to fixed), about the same centre:
    /// `T⁻¹(q) = Rᵀ (q − c) + c − Rᵀ t`.
    pub fn inverse(&self) -> Self {
        let rt = transpose3(&self.matrix());
        let t = matvec3(&rt, self.translation);
        Self::from_matrix(self.center, &rt, [-t[0], -t[1], -t[2]])
    }

    /// `self ∘ first`: the transform that applies `first` and then `self`, expressed about
    /// `first`'s centre.
    pub fn compose(&self, first: &Rigid3) -> Self {
        let m = matmul3(&self.matrix(), &first.matrix());
        // T(p) = M p + o ; with centre c: t = o − c + M c.
        let c = first.center;
        let q = self.apply(first.apply(c));
        let t = [q[0] - c[0], q[1] - c[1], q[2] - c[2]];
        Self::from_matrix(c, &m, t)
    }

    /// Angles in degrees.
    pub fn angles_deg(&self) -> [f64; 3] {
        self.angles_rad.map(f64::to_degrees)
    }

    /// Total rotation angle (degrees) of the rotation part, whatever the axis.
    pub fn rotation_angle_deg(&self) -> f64 {
        let m = self.matrix();
        let trace = m[0][0] + m[1][1] + m[2][2];
        ((trace - 1.0) / 2.0).clamp(-1.0, 1.0).acos().to_degrees()
    }

    /// Largest distance (mm) between where `self` and `other` send the corners of the box
    /// `center ± half_extent`: a single number to judge how far apart two transforms are over a
    /// region of interest.
    pub fn max_corner_distance(
        &self,
        other: &Rigid3,
        box_center: [f64; 3],
        half_extent: [f64; 3],
    ) -> f64 {
        let mut worst: f64 = 0.0;
        for corner in 0..8 {
            let p = [0, 1, 2].map(|a| {
                let s = if corner & (1 << a) != 0 { 1.0 } else { -1.0 };
                box_center[a] + s * half_extent[a]
            });
            let (a, b) = (self.apply(p), other.apply(p));
            let d = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt();
            worst = worst.max(d);
        }
        worst
    }
}

impl fmt::Display for Rigid3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.angles_deg();
        let t = self.translation;
        write!(
            f,
            "rotation [{:+.2}°, {:+.2}°, {:+.2}°] (x, y, z; ZXY order) translation [{:+.2}, {:+.2}, {:+.2}] mm about [{:.1}, {:.1}, {:.1}]",
            a[0], a[1], a[2], t[0], t[1], t[2], self.center[0], self.center[1], self.center[2]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 3], b: [f64; 3], tol: f64) -> bool {
        (0..3).all(|i| (a[i] - b[i]).abs() < tol)
    }

    #[test]
    fn single_axis_rotations_follow_right_hand_rule() {
        let t = Rigid3::from_degrees([0.0; 3], [0.0, 0.0, 90.0], [0.0; 3]);
        assert!(close(t.apply([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], 1e-12));
        let t = Rigid3::from_degrees([0.0; 3], [90.0, 0.0, 0.0], [0.0; 3]);
        assert!(close(t.apply([0.0, 1.0, 0.0]), [0.0, 0.0, 1.0], 1e-12));
        let t = Rigid3::from_degrees([0.0; 3], [0.0, 90.0, 0.0], [0.0; 3]);
        assert!(close(t.apply([0.0, 0.0, 1.0]), [1.0, 0.0, 0.0], 1e-12));
    }

    #[test]
    fn order_is_y_then_x_then_z() {
        let t = Rigid3::from_degrees([0.0; 3], [30.0, 40.0, 50.0], [0.0; 3]);
        let p = [1.0, 2.0, 3.0];
        let only = |a: [f64; 3]| Rigid3::from_degrees([0.0; 3], a, [0.0; 3]);
        let step = only([0.0, 0.0, 50.0])
            .apply(only([30.0, 0.0, 0.0]).apply(only([0.0, 40.0, 0.0]).apply(p)));
        assert!(close(t.apply(p), step, 1e-12));
    }

    #[test]
    fn inverse_and_matrix_round_trip() {
        let t = Rigid3::from_degrees([10.0, -20.0, 5.0], [7.0, -12.0, 33.0], [4.0, -8.0, 2.5]);
        let inv = t.inverse();
        for p in [[0.0, 0.0, 0.0], [100.0, -50.0, 30.0], [-3.0, 7.0, 11.0]] {
            assert!(close(inv.apply(t.apply(p)), p, 1e-9));
            assert!(close(t.apply(inv.apply(p)), p, 1e-9));
        }
        let back = Rigid3::from_matrix(t.center, &t.matrix(), t.translation);
        assert!(close(back.angles_rad, t.angles_rad, 1e-12));
        let a = t.to_affine();
        let p = [1.0, 2.0, 3.0];
        let q = [0, 1, 2].map(|r| a[r][0] * p[0] + a[r][1] * p[1] + a[r][2] * p[2] + a[r][3]);
        assert!(close(q, t.apply(p), 1e-12));
    }

    #[test]
    fn compose_applies_first_then_self() {
        let a = Rigid3::from_degrees([1.0, 2.0, 3.0], [5.0, 0.0, -3.0], [1.0, 0.0, 2.0]);
        let b = Rigid3::from_degrees([-4.0, 0.0, 9.0], [0.0, 8.0, 2.0], [0.0, -3.0, 1.0]);
        let ab = a.compose(&b);
        let p = [12.0, -7.0, 4.0];
        assert!(close(ab.apply(p), a.apply(b.apply(p)), 1e-9));
    }

    #[test]
    fn matrix_derivatives_match_finite_differences() {
        let t = Rigid3::from_degrees([0.0; 3], [10.0, -20.0, 30.0], [0.0; 3]);
        let d = t.matrix_derivatives();
        let h = 1e-6;
        for (a, da) in d.iter().enumerate() {
            let (mp, mm) = (t.nudged(a, h).matrix(), t.nudged(a, -h).matrix());
            for r in 0..3 {
                for c in 0..3 {
                    let fd = (mp[r][c] - mm[r][c]) / (2.0 * h);
                    assert!((fd - da[r][c]).abs() < 1e-6, "angle {a} [{r}][{c}]");
                }
            }
        }
    }

    #[test]
    fn display_is_in_degrees_and_mm() {
        let t = Rigid3::from_degrees([0.0; 3], [5.0, 0.0, 0.0], [8.0, 0.0, -1.5]);
        let s = t.to_string();
        assert!(s.contains("+5.00°"), "{s}");
        assert!(s.contains("+8.00, +0.00, -1.50] mm"), "{s}");
    }
}
