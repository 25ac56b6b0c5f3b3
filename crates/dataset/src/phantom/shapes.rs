//! Geometric primitives of the phantom, in anatomical millimetres (LPS axes: +x patient left,
//! +y posterior, +z superior): small vector helpers, ellipsoids, tapered tube segments and
//! smooth centre lines sampled from a few control points.

/// A point or vector in millimetres, `(x, y, z)` in LPS.
pub type V3 = [f64; 3];

pub fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
pub fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
pub fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
pub fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
pub fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
pub fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}
/// Unit vector along `a` (or `a` itself when it is zero).
pub fn unit(a: V3) -> V3 {
    let n = norm(a);
    if n > 0.0 {
        scale(a, 1.0 / n)
    } else {
        a
    }
}
pub fn lerp(a: V3, b: V3, t: f64) -> V3 {
    add(a, scale(sub(b, a), t))
}

/// Hermite smooth step from 0 at `e0` to 1 at `e1`.
pub fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// An ellipsoid with axis-aligned semi-axes, rotated about z by `yaw` (radians).
#[derive(Debug, Clone, Copy)]
pub struct Ellipsoid {
    pub center: V3,
    pub radii: V3,
    pub yaw: f64,
}

impl Ellipsoid {
    pub fn new(center: V3, radii: V3, yaw: f64) -> Self {
        Self { center, radii, yaw }
    }

    /// The same ellipsoid with every semi-axis grown by `d` mm (a wall or a fat rim).
    pub fn grown(&self, d: f64) -> Self {
        Self {
            radii: [self.radii[0] + d, self.radii[1] + d, self.radii[2] + d],
            ..*self
        }
    }

    /// Squared normalised radius: `< 1` inside, `1` on the surface.
    pub fn level(&self, p: V3) -> f64 {
        let d = sub(p, self.center);
        let (s, c) = self.yaw.sin_cos();
        let u = c * d[0] + s * d[1];
        let v = -s * d[0] + c * d[1];
        (u / self.radii[0]).powi(2) + (v / self.radii[1]).powi(2) + (d[2] / self.radii[2]).powi(2)
    }

    pub fn contains(&self, p: V3) -> bool {
        self.level(p) < 1.0
    }

    /// Axis-aligned bounding box `(min, max)`, a little generous for the rotated case.
    pub fn bounds(&self) -> (V3, V3) {
        let r = self.radii[0].max(self.radii[1]);
        (
            [
                self.center[0] - r,
                self.center[1] - r,
                self.center[2] - self.radii[2],
            ],
            [
                self.center[0] + r,
                self.center[1] + r,
                self.center[2] + self.radii[2],
            ],
        )
    }
}

/// A straight tube from `a` (radius `ra`) to `b` (radius `rb`) with rounded ends, so that
/// consecutive segments of a centre line join without gaps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tube {
    pub a: V3,
    pub b: V3,
    pub ra: f64,
    pub rb: f64,
}

impl Tube {
    pub fn new(a: V3, b: V3, ra: f64, rb: f64) -> Self {
        Self { a, b, ra, rb }
    }

    /// Signed distance-like value: (distance to the axis) − (local radius); negative inside.
    pub fn depth(&self, p: V3) -> f64 {
        let ab = sub(self.b, self.a);
        let len2 = dot(ab, ab);
        let t = if len2 > 0.0 {
            (dot(sub(p, self.a), ab) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let c = add(self.a, scale(ab, t));
        norm(sub(p, c)) - (self.ra + (self.rb - self.ra) * t)
    }

    /// Fraction of a voxel of size `h` mm centred on `p` that lies inside (linear ramp across
    /// the wall): the partial-volume effect that keeps thin vessels visible.
    pub fn coverage(&self, p: V3, h: f64) -> f64 {
        (0.5 - self.depth(p) / h).clamp(0.0, 1.0)
    }

    pub fn bounds(&self) -> (V3, V3) {
        let r = self.ra.max(self.rb);
        let mut lo = [0.0; 3];
        let mut hi = [0.0; 3];
        for i in 0..3 {
            lo[i] = self.a[i].min(self.b[i]) - r;
            hi[i] = self.a[i].max(self.b[i]) + r;
        }
        (lo, hi)
    }

    pub fn length(&self) -> f64 {
        norm(sub(self.b, self.a))
    }
}

/// Samples a Catmull-Rom spline through `points` every `step` mm (about) and returns tubes
/// along it whose radius is interpolated linearly from `radii` (one per control point).
pub fn spline_tubes(points: &[V3], radii: &[f64], step: f64) -> Vec<Tube> {
    assert_eq!(points.len(), radii.len(), "one radius per control point");
    let n = points.len();
    if n < 2 {
        return Vec::new();
    }
    let get = |i: isize| points[i.clamp(0, n as isize - 1) as usize];
    let mut samples: Vec<(V3, f64)> = Vec::new();
    for i in 0..n - 1 {
        let (p0, p1, p2, p3) = (
            get(i as isize - 1),
            get(i as isize),
            get(i as isize + 1),
            get(i as isize + 2),
        );
        let pieces = (norm(sub(p2, p1)) / step).ceil().max(1.0) as usize;
        for s in 0..pieces {
            let t = s as f64 / pieces as f64;
            let (t2, t3) = (t * t, t * t * t);
            let mut p = [0.0; 3];
            for k in 0..3 {
                p[k] = 0.5
                    * (2.0 * p1[k]
                        + (-p0[k] + p2[k]) * t
                        + (2.0 * p0[k] - 5.0 * p1[k] + 4.0 * p2[k] - p3[k]) * t2
                        + (-p0[k] + 3.0 * p1[k] - 3.0 * p2[k] + p3[k]) * t3);
            }
            samples.push((p, radii[i] + (radii[i + 1] - radii[i]) * t));
        }
    }
    samples.push((points[n - 1], radii[n - 1]));
    samples
        .windows(2)
        .map(|w| Tube::new(w[0].0, w[1].0, w[0].1, w[1].1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tube_depth_and_coverage() {
        let t = Tube::new([0.0; 3], [10.0, 0.0, 0.0], 2.0, 1.0);
        assert!((t.depth([5.0, 0.0, 0.0]) + 1.5).abs() < 1e-12);
        assert!((t.depth([5.0, 3.0, 0.0]) - 1.5).abs() < 1e-12);
        assert_eq!(t.coverage([5.0, 0.0, 0.0], 1.0), 1.0);
        assert_eq!(t.coverage([5.0, 3.0, 0.0], 1.0), 0.0);
        assert!((t.coverage([5.0, 1.5, 0.0], 1.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn spline_passes_through_its_control_points() {
        let pts = [[0.0, 0.0, 0.0], [10.0, 5.0, 0.0], [20.0, 0.0, 3.0]];
        let tubes = spline_tubes(&pts, &[3.0, 2.0, 1.0], 2.0);
        assert_eq!(tubes[0].a, pts[0]);
        assert_eq!(tubes.last().map(|t| t.b), Some(pts[2]));
        assert!(tubes.iter().any(|t| norm(sub(t.a, pts[1])) < 1e-9));
        for w in tubes.windows(2) {
            assert_eq!(w[0].b, w[1].a);
        }
    }

    #[test]
    fn rotated_ellipsoid() {
        let e = Ellipsoid::new(
            [1.0, 2.0, 3.0],
            [10.0, 2.0, 5.0],
            std::f64::consts::FRAC_PI_2,
        );
        // After a quarter turn the long axis lies along y.
        assert!(e.contains([1.0, 11.0, 3.0]));
        assert!(!e.contains([10.0, 2.0, 3.0]));
    }
}
