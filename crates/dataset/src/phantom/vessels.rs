//! Pulmonary vessel trees and emboli.
//!
//! Each tree fills its lung region the way real pulmonary vessels do: a cloud of target
//! points is sampled deep inside the lung, and the tree is grown from its root by recursive
//! bisection of that cloud. A branch heads part of the way towards the centroid of the points
//! it serves, then splits them in two across their principal axis; each child serves one half.
//! Radii follow Murray's law (`r³` is conserved at a bifurcation, with flow proportional to
//! the number of points served), so vessels taper from ~10 mm at the hilum to ~1–1.5 mm at the
//! periphery, and branch lengths shrink with them.
//!
//! Emboli are ellipsoidal blobs placed in lobar to subsegmental arteries, sometimes occlusive,
//! sometimes eccentric; only the part inside the artery's lumen counts (a filling defect).

use super::anatomy::{Anatomy, Heart, PaintTube};
use super::shapes::{add, cross, dot, lerp, norm, scale, sub, unit, Tube, V3};
use super::tissue::TubeClass;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tracing::trace;

/// One branch of a vessel tree.
#[derive(Debug, Clone, Copy)]
pub struct Branch {
    pub tube: Tube,
    /// 0 for the root segment, +1 per bifurcation.
    pub generation: u32,
}

/// Grows a tree from `root` (radius `root_radius` mm) serving `points`.
pub fn grow_tree(
    root: V3,
    root_radius: f64,
    mut points: Vec<V3>,
    rng: &mut impl Rng,
) -> Vec<Branch> {
    let mut out = Vec::new();
    grow(&mut out, root, root_radius, &mut points, 0, rng);
    trace!(branches = out.len(), "grew vessel tree");
    out
}

fn centroid(points: &[V3]) -> V3 {
    let n = points.len().max(1) as f64;
    let s = points.iter().fold([0.0; 3], |acc, p| add(acc, *p));
    scale(s, 1.0 / n)
}

/// Principal axis of a point cloud (power iteration on its covariance).
fn principal_axis(points: &[V3], c: V3) -> V3 {
    let mut cov = [[0.0; 3]; 3];
    for p in points {
        let d = sub(*p, c);
        for (r, row) in cov.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v += d[r] * d[k];
            }
        }
    }
    let mut v: V3 = [0.57, 0.58, 0.59];
    for _ in 0..16 {
        let w = [dot(cov[0], v), dot(cov[1], v), dot(cov[2], v)];
        if norm(w) < 1e-12 {
            return [1.0, 0.0, 0.0];
        }
        v = unit(w);
    }
    v
}

fn grow(
    out: &mut Vec<Branch>,
    p: V3,
    r: f64,
    points: &mut [V3],
    generation: u32,
    rng: &mut impl Rng,
) {
    let n = points.len();
    if n == 0 {
        return;
    }
    let c = centroid(points);
    if n == 1 {
        out.push(Branch {
            tube: Tube::new(p, c, r, r * 0.75),
            generation,
        });
        return;
    }
    let to_c = sub(c, p);
    let dist = norm(to_c);
    let mut len = dist * rng.gen_range(0.35..0.6);
    len = len.max((2.5 * r).min(dist));
    let q = add(p, scale(unit(to_c), len));
    out.push(Branch {
        tube: Tube::new(p, q, r, r * 0.96),
        generation,
    });
    let axis = principal_axis(points, c);
    points.sort_by(|a, b| dot(*a, axis).total_cmp(&dot(*b, axis)));
    let jitter = n / 8;
    let mut split = n / 2;
    if jitter > 0 {
        split = (split + rng.gen_range(0..=2 * jitter)).saturating_sub(jitter);
    }
    let split = split.clamp(1, n - 1);
    let (a, b) = points.split_at_mut(split);
    let r0 = r * 0.96;
    let ra = r0 * (a.len() as f64 / n as f64).cbrt();
    let rb = r0 * (b.len() as f64 / n as f64).cbrt();
    grow(out, q, ra, a, generation + 1, rng);
    grow(out, q, rb, b, generation + 1, rng);
}

/// Samples `count` target points deep inside one lung (`left` chooses the side), at least
/// `margin` mm from other tissue. Gives up (returning fewer) after many rejections.
pub fn sample_lung_points(
    anatomy: &Anatomy,
    heart: &Heart,
    tubes: &[PaintTube],
    left: bool,
    count: usize,
    margin: f64,
    rng: &mut impl Rng,
) -> Vec<V3> {
    let mut pts = Vec::with_capacity(count);
    let mut tries = 0;
    while pts.len() < count && tries < count * 60 {
        tries += 1;
        let x = rng.gen_range(8.0..175.0) * if left { 1.0 } else { -1.0 };
        let p = [
            x,
            rng.gen_range(-110.0..130.0),
            rng.gen_range(-175.0..115.0),
        ];
        if anatomy.deep_in_lung(p, heart, tubes, margin) {
            pts.push(p);
        }
    }
    pts
}

/// The arterial and venous trees of both lungs.
#[derive(Debug, Clone, Default)]
pub struct VesselTrees {
    pub arteries: Vec<Branch>,
    pub veins: Vec<Branch>,
}

/// Grows both lungs' arterial trees (from the hila) and the four venous trees (from the
/// left atrial ostia). `points_per_lung` sets how fine the trees get.
pub fn grow_trees(
    anatomy: &Anatomy,
    tubes: &[PaintTube],
    points_per_lung: usize,
    rng: &mut impl Rng,
) -> VesselTrees {
    let heart = anatomy.heart();
    let mut trees = VesselTrees::default();
    for left in [false, true] {
        let hilum = if left {
            anatomy.left_hilum()
        } else {
            anatomy.right_hilum()
        };
        let pts = sample_lung_points(anatomy, &heart, tubes, left, points_per_lung, 5.0, rng);
        trees.arteries.extend(grow_tree(hilum, 9.0, pts, rng));
        // Veins: independent targets, split into upper and lower lobes' drainage.
        let pts = sample_lung_points(anatomy, &heart, tubes, left, points_per_lung, 5.0, rng);
        let ostia = anatomy.vein_ostia();
        let (sup, inf) = if left {
            (ostia[2], ostia[3])
        } else {
            (ostia[0], ostia[1])
        };
        let split_z = 0.5 * (sup[2] + inf[2]);
        let (upper, lower): (Vec<V3>, Vec<V3>) = pts.into_iter().partition(|p| p[2] > split_z);
        trees.veins.extend(grow_tree(sup, 7.0, upper, rng));
        trees.veins.extend(grow_tree(inf, 7.0, lower, rng));
    }
    trees
}

/// The bronchi that run beside the arteries (the bronchovascular bundle), which a real NCCT
/// shows beside every artery down to the subsegmental level and which tell a small artery
/// from a small vein without contrast: for each artery branch past the root, an airway wall
/// of the artery's radius with a lumen of 80 % of it, parallel to the branch, beside it with a
/// gap of 0.5 mm, on the side `cross(axis, z)` (`x` for a branch along `z`). A branch whose
/// bronchus would not lie inside the lung (ends tested with [`Anatomy::deep_in_lung`]) gets
/// none. Deterministic: no random draws, so a phantom set without bronchi is unchanged.
pub fn bronchi(
    arteries: &[Branch],
    anatomy: &Anatomy,
    heart: &Heart,
    tubes: &[PaintTube],
) -> Vec<PaintTube> {
    let mut out = Vec::new();
    for b in arteries.iter().filter(|b| b.generation > 0) {
        let Tube { a, b: end, ra, rb } = b.tube;
        let axis = unit(sub(end, a));
        let side = cross(axis, [0.0, 0.0, 1.0]);
        let side = if norm(side) < 1e-3 {
            [1.0, 0.0, 0.0]
        } else {
            unit(side)
        };
        // centre to centre: the artery's radius, the gap, the bronchus's radius (the same)
        let (pa, pb) = (
            add(a, scale(side, 2.0 * ra + 0.5)),
            add(end, scale(side, 2.0 * rb + 0.5)),
        );
        if !(anatomy.deep_in_lung(pa, heart, tubes, ra)
            && anatomy.deep_in_lung(pb, heart, tubes, rb))
        {
            continue;
        }
        for (class, f) in [(TubeClass::AirwayWall, 1.0), (TubeClass::Airway, 0.8)] {
            out.push(PaintTube {
                class,
                tube: Tube::new(pa, pb, f * ra, f * rb),
                mediastinal: false,
            });
        }
    }
    trace!(
        bronchi = out.len() / 2,
        "placed bronchi beside the arteries"
    );
    out
}

/// A pulmonary embolus: an ellipsoid along an artery; only its part inside the lumen counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Embolus {
    pub center: V3,
    /// Unit vector along the artery.
    pub axis: V3,
    pub half_length: f64,
    pub radius: f64,
    /// Radius of the artery where it sits, mm.
    pub artery_radius: f64,
}

impl Embolus {
    /// Partial-volume coverage of a voxel of size `h` at `p` (before clipping to the lumen).
    pub fn coverage(&self, p: V3, h: f64) -> f64 {
        let d = sub(p, self.center);
        let along = dot(d, self.axis);
        let perp = norm(sub(d, scale(self.axis, along)));
        // Distance-like value of an ellipsoid, scaled to the short radius.
        let level = ((along / self.half_length).powi(2) + (perp / self.radius).powi(2)).sqrt();
        (0.5 - (level - 1.0) * self.radius / h).clamp(0.0, 1.0)
    }

    pub fn bounds(&self) -> (V3, V3) {
        let r = self.half_length.max(self.radius);
        (
            [self.center[0] - r, self.center[1] - r, self.center[2] - r],
            [self.center[0] + r, self.center[1] + r, self.center[2] + r],
        )
    }
}

/// Places `count` emboli in arteries of radius 2–9 mm (lobar to subsegmental).
pub fn place_emboli(arteries: &[Branch], count: usize, rng: &mut impl Rng) -> Vec<Embolus> {
    let candidates: Vec<&Branch> = arteries
        .iter()
        .filter(|b| {
            let r = 0.5 * (b.tube.ra + b.tube.rb);
            (2.0..9.0).contains(&r) && b.tube.length() > 2.0 * r
        })
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    (0..count)
        .map(|_| {
            let b = candidates[rng.gen_range(0..candidates.len())];
            let t = rng.gen_range(0.25..0.75);
            let axis = unit(sub(b.tube.b, b.tube.a));
            let r = b.tube.ra + (b.tube.rb - b.tube.ra) * t;
            // An eccentric clot sits against one side of the wall.
            let helper = if axis[2].abs() < 0.9 {
                [0.0, 0.0, 1.0]
            } else {
                [1.0, 0.0, 0.0]
            };
            let side = unit(cross(axis, helper));
            let ecc = rng.gen_range(0.0..0.45) * r;
            Embolus {
                center: add(lerp(b.tube.a, b.tube.b, t), scale(side, ecc)),
                axis,
                half_length: r * rng.gen_range(1.5..3.5),
                radius: r * rng.gen_range(0.55..1.1),
                artery_radius: r,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn tree_serves_every_point_and_obeys_murray() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let pts: Vec<V3> = (0..64)
            .map(|_| {
                [
                    rng.gen_range(20.0..80.0),
                    rng.gen_range(-30.0..30.0),
                    rng.gen_range(-30.0..30.0),
                ]
            })
            .collect();
        let tree = grow_tree([0.0; 3], 8.0, pts.clone(), &mut rng);
        // Every target point is the end of a terminal branch.
        for p in &pts {
            assert!(
                tree.iter().any(|b| norm(sub(b.tube.b, *p)) < 1e-9),
                "{p:?} not reached"
            );
        }
        // A tree over n points bisected to single points has 2n - 1 segments.
        assert_eq!(tree.len(), 2 * pts.len() - 1);
        // Terminal radius from Murray's law: about 8 * (1/64)^(1/3) = 2 mm, tapered.
        let min_r = tree.iter().map(|b| b.tube.rb).fold(f64::INFINITY, f64::min);
        assert!((1.0..2.2).contains(&min_r), "min radius {min_r}");
    }
}
