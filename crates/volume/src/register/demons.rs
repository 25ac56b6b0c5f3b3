//! Deformable registration of two CT volumes on one grid: Thirion's demons with symmetric
//! ("ESM") forces and Gaussian regularisation of the displacement field, over a
//! multi-resolution pyramid: the algorithm of ITK's `SymmetricForcesDemonsRegistrationFilter`
//! (SimpleITK's `SymmetricForcesDemonsRegistrationFilter`, Vercauteren et al. 2009 for the
//! symmetric gradient).
//!
//! The training side uses it to score a prediction honestly (#16): the CTPA, moved against
//! the NCCT by breathing and posture, is warped onto the NCCT once, and a prediction (which
//! lies on the NCCT's anatomy) is then scored against that, instead of against a target that
//! rewards a model for guessing the motion. A classical registration, not the trained R: it
//! depends on the scans only, so no model can learn to please it.
//!
//! # Method
//! The displacement `u` (voxels of the fixed grid, per axis) maps a fixed voxel `i` to the
//! moving image at `i + u(i)`. Each iteration, with `d = m(i + u) - f(i)` and the symmetric
//! gradient `g = (grad f + grad m(i + u)) / 2` (central differences, HU per voxel):
//!
//! `u <- G_sigma * (u - d g / (|g|^2 + d^2))`
//!
//! The `d^2` term bounds every update to half a voxel.
//! Both images are first clipped to `clip_hu`: contrast brightens the blood from ~40 HU to
//! 250-500 HU, which the demons' intensity-matching assumption would otherwise read as
//! motion; clipped at 100 HU, an enhanced vessel differs from an unenhanced one by ~60 HU while
//! the edges that move (lung against chest wall and diaphragm, fat against muscle) keep their
//! hundreds of HU. Coarse levels (images smoothed and shrunk by [`super::pyramid::level`])
//! find the large motion, the field is resampled onto the next level's grid and refined.
//! Demons has no line search: each level keeps the field of its best match (lowest RMS
//! difference of the clipped images, the entering field included), and a registration that
//! ends no better than the scans as they lie returns the identity.
//! Deterministic: same inputs, same field, bit for bit (the parallel loops write disjoint
//! voxels and reduce in a fixed order).

use super::pyramid::{gaussian_smooth, level};
use crate::resample::{trilinear, IndexMap};
use crate::{Result, Volume, VolumeError};
use ndarray::{Array3, Axis, Zip};
use serde::{Deserialize, Serialize};
use tracing::debug;

/// Settings of [`register_demons`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemonsConfig {
    /// Pyramid levels, coarsest first: each level's grid is the fixed grid shrunk this many
    /// times. Default: `[4, 2, 1]`.
    pub shrink_factors: Vec<usize>,
    /// Gaussian smoothing of both images per level, mm. Default: `[2, 1, 0]`.
    pub smoothing_sigmas_mm: Vec<f64>,
    /// Iterations per level. Default: `[50, 40, 20]`.
    pub iterations: Vec<usize>,
    /// Standard deviation of the Gaussian that regularises the field after every update,
    /// voxels of the level. Default: 1.5 (ITK's default is 1; 1.5 keeps a breathing field
    /// smoother against the phantom's and scanners' noise).
    pub field_sigma_voxels: f64,
    /// Both images are clipped to this HU range first (see the module docs). Default:
    /// `[-1024, 100]`.
    pub clip_hu: [f32; 2],
}

impl Default for DemonsConfig {
    fn default() -> Self {
        Self {
            shrink_factors: vec![4, 2, 1],
            smoothing_sigmas_mm: vec![2.0, 1.0, 0.0],
            iterations: vec![50, 40, 20],
            field_sigma_voxels: 1.5,
            clip_hu: [-1024.0, 100.0],
        }
    }
}

impl DemonsConfig {
    /// The default pyramid, coarsened for fine grids so that the finest level's in-plane
    /// spacing is at least 2 mm (a 0.7 mm scan registers at shrink 8, 4, 2 and its field is
    /// interpolated onto the full grid): breathing fields are smooth at that scale, and a
    /// 512 x 512 x 300 volume would otherwise take minutes and gigabytes per registration.
    pub fn for_spacing(spacing_xyz: [f64; 3]) -> Self {
        let inplane = spacing_xyz[0].min(spacing_xyz[1]);
        let finest = if inplane > 0.0 && inplane.is_finite() {
            ((2.0 / inplane).floor() as usize).max(1)
        } else {
            1
        };
        let d = Self::default();
        Self {
            shrink_factors: d.shrink_factors.iter().map(|s| s * finest).collect(),
            smoothing_sigmas_mm: d
                .smoothing_sigmas_mm
                .iter()
                .map(|s| s * finest as f64)
                .collect(),
            ..d
        }
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.shrink_factors.len();
        let bad = |m: String| Err(VolumeError::Invalid(format!("demons registration: {m}")));
        if n == 0 || self.smoothing_sigmas_mm.len() != n || self.iterations.len() != n {
            return bad(format!(
                "shrink_factors, smoothing_sigmas_mm and iterations need one entry per level \
                 (got {n}, {}, {})",
                self.smoothing_sigmas_mm.len(),
                self.iterations.len()
            ));
        }
        if self.shrink_factors.contains(&0) {
            return bad("shrink factors must be at least 1".into());
        }
        if self
            .smoothing_sigmas_mm
            .iter()
            .any(|s| !s.is_finite() || *s < 0.0)
        {
            return bad("smoothing sigmas must be finite and >= 0".into());
        }
        if !(self.field_sigma_voxels.is_finite() && self.field_sigma_voxels >= 0.0) {
            return bad(format!(
                "field_sigma_voxels must be finite and >= 0, got {}",
                self.field_sigma_voxels
            ));
        }
        let [lo, hi] = self.clip_hu;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return bad(format!(
                "clip_hu must be [low, high], got {:?}",
                self.clip_hu
            ));
        }
        Ok(())
    }
}

/// A displacement field on a grid: `[x, y, z]` components in voxels of that grid, each
/// `[z, y, x]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Displacement {
    pub components: [Array3<f32>; 3],
}

impl Displacement {
    fn zeros(shape_zyx: [usize; 3]) -> Self {
        let z = Array3::zeros(shape_zyx);
        Self {
            components: [z.clone(), z.clone(), z],
        }
    }

    /// Largest displacement length, in mm, for a grid of `spacing` (x, y, z).
    pub fn max_mm(&self, spacing: [f64; 3]) -> f64 {
        let [ux, uy, uz] = &self.components;
        let mut max = 0.0f64;
        Zip::from(ux).and(uy).and(uz).for_each(|&x, &y, &z| {
            let (x, y, z) = (
                f64::from(x) * spacing[0],
                f64::from(y) * spacing[1],
                f64::from(z) * spacing[2],
            );
            max = max.max((x * x + y * y + z * z).sqrt());
        });
        max
    }
}

/// The outcome of [`register_demons`].
#[derive(Debug, Clone)]
pub struct DemonsResult {
    /// On the fixed grid: the fixed voxel `i` matches the moving image at `i + u(i)`.
    pub field: Displacement,
    /// The moving image warped onto the fixed one (unclipped intensities).
    pub warped: Volume,
    /// RMS difference (HU) of the clipped images before and after, over the whole grid.
    pub rms_before: f64,
    pub rms_after: f64,
}

/// `moving` sampled at `i + u(i)` for every voxel `i` of `u`'s grid (trilinear; positions
/// outside take the nearest edge value).
pub fn warp(moving: &Array3<f32>, u: &Displacement) -> Array3<f32> {
    let view = moving.view();
    let [ux, uy, uz] = &u.components;
    let mut out = Array3::<f32>::zeros(ux.raw_dim());
    Zip::indexed(&mut out)
        .and(ux)
        .and(uy)
        .and(uz)
        .par_for_each(|(k, j, i), o, &dx, &dy, &dz| {
            let idx = [
                i as f64 + f64::from(dx),
                j as f64 + f64::from(dy),
                k as f64 + f64::from(dz),
            ];
            *o = trilinear(&view, idx.map(|v| v.max(0.0)));
        });
    out
}

/// Central differences (one-sided at the edges) along `axis` of a `[z, y, x]` array.
fn gradient(a: &Array3<f32>, axis: usize) -> Array3<f32> {
    let n = a.len_of(Axis(axis));
    let mut g = Array3::<f32>::zeros(a.raw_dim());
    if n < 2 {
        return g;
    }
    Zip::from(g.lanes_mut(Axis(axis)))
        .and(a.lanes(Axis(axis)))
        .par_for_each(|mut out, lane| {
            for t in 0..n {
                let (lo, hi) = (t.saturating_sub(1), (t + 1).min(n - 1));
                out[t] = (lane[hi] - lane[lo]) / (hi - lo) as f32;
            }
        });
    g
}

fn rms(a: &Array3<f32>, b: &Array3<f32>) -> f64 {
    let sum: f64 = Zip::from(a)
        .and(b)
        .fold(0.0, |s, &x, &y| s + f64::from(x - y).powi(2));
    (sum / a.len().max(1) as f64).sqrt()
}

/// The field smoothed by a Gaussian of `sigma` voxels on each axis.
fn smooth(u: &mut Displacement, geometry: crate::Geometry, sigma: f64) {
    if sigma <= 0.0 {
        return;
    }
    let sigma_mm = geometry.spacing.map(|s| s * sigma);
    for c in &mut u.components {
        let v = Volume {
            data: std::mem::take(c),
            geometry,
        };
        *c = gaussian_smooth(&v, sigma_mm).data;
    }
}

/// `iterations` demons updates of `u` on one level; `u` ends as the field of the best match
/// seen (lowest RMS difference, the entering field included): demons has no line search,
/// and where the images differ by more than motion (contrast, noise) an update can make the
/// match worse.
fn refine(fixed: &Array3<f32>, moving: &Array3<f32>, u: &mut Displacement, cfg: &LevelRun) {
    let grad_f = [2, 1, 0].map(|axis| gradient(fixed, axis)); // d/dx, d/dy, d/dz
    let mut best: Option<(f64, usize, Displacement)> = None;
    for it in 0..=cfg.iterations {
        let w = warp(moving, u);
        let now = rms(&w, fixed);
        if best.as_ref().is_none_or(|b| now < b.0) {
            best = Some((now, it, u.clone()));
        }
        tracing::trace!(level = cfg.index, it, rms = now, "demons");
        if it == cfg.iterations {
            break;
        }
        let grad_w = [2, 1, 0].map(|axis| gradient(&w, axis));
        let [ux, uy, uz] = &mut u.components;
        Zip::indexed(ux)
            .and(uy)
            .and(uz)
            .par_for_each(|at, ux, uy, uz| {
                let d = f64::from(w[at] - fixed[at]);
                let g = [0, 1, 2].map(|a| 0.5 * f64::from(grad_f[a][at] + grad_w[a][at]));
                let denom = g[0] * g[0] + g[1] * g[1] + g[2] * g[2] + d * d;
                // ITK's thresholds: no force where the images agree or are flat
                if d.abs() < 1e-3 || denom < 1e-9 {
                    return;
                }
                let s = d / denom;
                *ux -= (s * g[0]) as f32;
                *uy -= (s * g[1]) as f32;
                *uz -= (s * g[2]) as f32;
            });
        smooth(u, cfg.geometry, cfg.field_sigma);
    }
    if let Some((rms, it, field)) = best {
        debug!(
            level = cfg.index,
            rms,
            iteration = it,
            "demons level: best match"
        );
        *u = field;
    }
}

struct LevelRun {
    index: usize,
    iterations: usize,
    field_sigma: f64,
    geometry: crate::Geometry,
}

/// `u` (on `from`'s grid) resampled onto `to`'s grid, its components rescaled from `from`'s
/// voxels to `to`'s. Fine voxels beyond the coarse grid's last centre (a shrunk grid can cover
/// a little less than the full one when its size rounds down) take the edge value, not 0.
fn upsample(u: Displacement, from: &Volume, to: &Volume) -> Result<Displacement> {
    to.geometry.validate()?;
    let map = IndexMap::new(&to.geometry, None, &from.geometry);
    let mut components = Vec::with_capacity(3);
    for (a, c) in u.components.into_iter().enumerate() {
        let scale = from.geometry.spacing[a] / to.geometry.spacing[a];
        let view = c.view();
        let mut r = Array3::<f32>::zeros(to.shape_zyx());
        Zip::indexed(&mut r).par_for_each(|(k, j, i), o| {
            // trilinear clamps indices outside the grid to its edge
            let idx = map.at(i as f64, j as f64, k as f64);
            *o = (f64::from(trilinear(&view, idx)) * scale) as f32;
        });
        components.push(r);
    }
    let [x, y, z]: [Array3<f32>; 3] = components.try_into().expect("three components");
    Ok(Displacement {
        components: [x, y, z],
    })
}

/// Registers `moving` onto `fixed` (both on one grid): see the module docs.
///
/// # Errors
/// The grids differ, or the settings are invalid.
pub fn register_demons(
    fixed: &Volume,
    moving: &Volume,
    cfg: &DemonsConfig,
) -> Result<DemonsResult> {
    cfg.validate()?;
    if !fixed.same_grid(moving, 1e-4) {
        return Err(VolumeError::Invalid(format!(
            "demons registration needs both volumes on one grid: fixed {:?} spacing {:?}, \
             moving {:?} spacing {:?}",
            fixed.size_xyz(),
            fixed.geometry.spacing,
            moving.size_xyz(),
            moving.geometry.spacing
        )));
    }
    let [lo, hi] = cfg.clip_hu;
    let clip = |v: &Volume| Volume {
        data: v.data.mapv(|x| x.clamp(lo, hi)),
        geometry: v.geometry,
    };
    let (f_full, m_full) = (clip(fixed), clip(moving));
    let rms_before = rms(&m_full.data, &f_full.data);
    let t0 = std::time::Instant::now();
    let mut u: Option<(Displacement, Volume)> = None;
    for (index, ((&shrink, &sigma_mm), &iterations)) in cfg
        .shrink_factors
        .iter()
        .zip(&cfg.smoothing_sigmas_mm)
        .zip(&cfg.iterations)
        .enumerate()
    {
        let f = level(&f_full, shrink, sigma_mm)?;
        let m = level(&m_full, shrink, sigma_mm)?;
        let mut field = match u.take() {
            None => Displacement::zeros(f.shape_zyx()),
            Some((prev, prev_grid)) => upsample(prev, &prev_grid, &f)?,
        };
        let run = LevelRun {
            index,
            iterations,
            field_sigma: cfg.field_sigma_voxels,
            geometry: f.geometry,
        };
        refine(&f.data, &m.data, &mut field, &run);
        debug!(
            level = index,
            shrink,
            size = ?f.size_xyz(),
            iterations,
            max_mm = field.max_mm(f.geometry.spacing),
            "demons level done"
        );
        u = Some((field, f));
    }
    let (mut field, grid) = u.expect("at least one level");
    if grid.shape_zyx() != fixed.shape_zyx() {
        // the last level was shrunk: bring the field to the full grid
        field = upsample(field, &grid, fixed)?;
    }
    let mut rms_after = rms(&warp(&m_full.data, &field), &f_full.data);
    if rms_after >= rms_before {
        // the registration found nothing better than where the scans lie (little motion, or
        // differences that are not motion): keep them as they are
        debug!(
            rms_before,
            rms_after, "demons: no improvement, identity kept"
        );
        field = Displacement::zeros(fixed.shape_zyx());
        rms_after = rms_before;
    }
    let warped = Volume::new(warp(&moving.data, &field), fixed.geometry)?;
    debug!(
        rms_before,
        rms_after,
        max_mm = field.max_mm(fixed.geometry.spacing),
        seconds = t0.elapsed().as_secs_f64(),
        "demons registration"
    );
    Ok(DemonsResult {
        field,
        warped,
        rms_before,
        rms_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Geometry;

    /// A textured "chest": an ellipsoidal body at 40 HU in air, two "lungs" at -850 HU with
    /// bright dots, sampled at position `p - shift(p)` so that a smooth shift moves it.
    fn chest(shape: [usize; 3], shift: impl Fn(f64, f64, f64) -> [f64; 3]) -> Array3<f32> {
        let [nz, ny, nx] = shape;
        Array3::from_shape_fn(shape, |(k, j, i)| {
            let [sx, sy, sz] = shift(i as f64, j as f64, k as f64);
            let (x, y, z) = (i as f64 - sx, j as f64 - sy, k as f64 - sz);
            let (cx, cy, cz) = (nx as f64 / 2.0, ny as f64 / 2.0, nz as f64 / 2.0);
            let e = |ax: f64, ay: f64, az: f64, ox: f64| {
                ((x - cx - ox) / ax).powi(2) + ((y - cy) / ay).powi(2) + ((z - cz) / az).powi(2)
            };
            if e(nx as f64 * 0.42, ny as f64 * 0.38, nz as f64 * 0.6, 0.0) > 1.0 {
                return -1000.0;
            }
            let lung = e(
                nx as f64 * 0.14,
                ny as f64 * 0.25,
                nz as f64 * 0.45,
                -(nx as f64) * 0.18,
            ) <= 1.0
                || e(
                    nx as f64 * 0.14,
                    ny as f64 * 0.25,
                    nz as f64 * 0.45,
                    nx as f64 * 0.18,
                ) <= 1.0;
            if lung {
                let dots = ((x * 0.9).sin() * (y * 0.8).sin() * (z * 0.7 + 0.3).sin()).max(0.0);
                (-850.0 + 700.0 * dots.powi(3)) as f32
            } else {
                40.0
            }
        })
    }

    fn vol(data: Array3<f32>) -> Volume {
        Volume::new(data, Geometry::identity([2.0, 2.0, 3.0])).unwrap()
    }

    fn small() -> DemonsConfig {
        DemonsConfig {
            shrink_factors: vec![2, 1],
            smoothing_sigmas_mm: vec![1.0, 0.0],
            iterations: vec![40, 30],
            ..DemonsConfig::default()
        }
    }

    #[test]
    fn a_smooth_motion_is_recovered() {
        let shape = [16, 40, 48];
        // breathing-like: up to 2.5 voxels in y, more at the bottom, and 1 voxel in x
        let motion =
            |_x: f64, y: f64, z: f64| [1.0, 2.5 * (0.5 + 0.5 * (y / 40.0)), 0.3 * z / 16.0];
        let fixed = vol(chest(shape, |_, _, _| [0.0; 3]));
        // moving(p) = chest(p - motion(p)), so moving(i + u) = fixed(i) for u ~ motion
        let moving = vol(chest(shape, motion));
        let r = register_demons(&fixed, &moving, &small()).unwrap();
        assert!(
            r.rms_after < 0.35 * r.rms_before,
            "rms {} -> {}",
            r.rms_before,
            r.rms_after
        );
        // inside the body, the field follows the motion (moving(i + u) = fixed(i))
        let (mut err, mut n) = (0.0f64, 0usize);
        for k in 4..12 {
            for j in 10..30 {
                for i in 10..38 {
                    let [_, by, _] = motion(i as f64, j as f64, k as f64);
                    err += (f64::from(r.field.components[1][[k, j, i]]) - by).abs();
                    n += 1;
                }
            }
        }
        let mean = err / n as f64;
        assert!(mean < 0.6, "mean |u_y - truth| = {mean} voxels");
    }

    #[test]
    fn contrast_alone_does_not_move_anything() {
        let shape = [12, 32, 40];
        let fixed = chest(shape, |_, _, _| [0.0; 3]);
        // the "CTPA": the same anatomy, a vessel lit up from 40 to 350 HU
        let mut moving = fixed.clone();
        for k in 3..9 {
            for j in 14..18 {
                for i in 18..22 {
                    moving[[k, j, i]] = 350.0;
                }
            }
        }
        let r = register_demons(&vol(fixed), &vol(moving), &small()).unwrap();
        let max_mm = r.field.max_mm([2.0, 2.0, 3.0]);
        assert!(
            max_mm < 1.0,
            "the field moved {max_mm} mm for contrast alone"
        );
    }

    #[test]
    fn fine_grids_register_on_a_coarser_pyramid() {
        assert_eq!(
            DemonsConfig::for_spacing([2.8, 2.8, 5.0]),
            DemonsConfig::default()
        );
        let fine = DemonsConfig::for_spacing([0.7, 0.7, 1.0]);
        assert_eq!(fine.shrink_factors, vec![8, 4, 2]);
        assert_eq!(fine.smoothing_sigmas_mm, vec![4.0, 2.0, 0.0]);
        // the field of a shrunk last level comes back on the full grid
        let shape = [8, 24, 24];
        let f = Volume::new(
            chest(shape, |_, _, _| [0.0; 3]),
            Geometry::identity([0.7, 0.7, 1.0]),
        )
        .unwrap();
        let m = Volume::new(
            chest(shape, |_, _, _| [1.0, 0.0, 0.0]),
            Geometry::identity([0.7, 0.7, 1.0]),
        )
        .unwrap();
        let cfg = DemonsConfig {
            shrink_factors: vec![2],
            smoothing_sigmas_mm: vec![0.0],
            iterations: vec![20],
            ..DemonsConfig::default()
        };
        let r = register_demons(&f, &m, &cfg).unwrap();
        assert_eq!(r.field.components[0].shape(), &shape);
        assert!(
            r.rms_after < r.rms_before,
            "{} -> {}",
            r.rms_before,
            r.rms_after
        );
    }

    /// Demons has no line search; the result is never a worse match than the scans as they
    /// lie: on a pair that differs by noise and a bright region but no motion, the RMS after
    /// is at most the RMS before.
    #[test]
    fn the_result_never_matches_worse_than_no_registration() {
        let shape = [10, 28, 32];
        let fixed = chest(shape, |_, _, _| [0.0; 3]);
        let mut moving = fixed.clone();
        let mut state = 12345u64;
        for (n, v) in moving.iter_mut().enumerate() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v += ((state >> 33) % 61) as f32 - 30.0 + if n % 97 < 20 { 250.0 } else { 0.0 };
        }
        let r = register_demons(&vol(fixed), &vol(moving), &small()).unwrap();
        assert!(
            r.rms_after <= r.rms_before,
            "{} -> {}",
            r.rms_before,
            r.rms_after
        );
    }

    /// A shrunk grid can end before the full one (21 voxels at shrink 4: 5 coarse voxels
    /// cover 20); the upsampled field continues to the last voxel instead of dropping to 0.
    #[test]
    fn an_upsampled_field_reaches_the_grids_last_voxel() {
        let full = vol(Array3::zeros([4, 8, 21]));
        let coarse = level(&full, 4, 0.0).unwrap();
        assert_eq!(coarse.size_xyz()[0], 5);
        let shape = coarse.shape_zyx();
        let u = Displacement {
            components: [
                Array3::from_elem(shape, 1.0),
                Array3::zeros(shape),
                Array3::zeros(shape),
            ],
        };
        let up = upsample(u, &coarse, &full).unwrap();
        // one coarse voxel is 4 fine ones, everywhere including x = 20
        assert!(up.components[0].iter().all(|&v| (v - 4.0).abs() < 1e-5));
    }

    #[test]
    fn bad_settings_and_grids_are_refused() {
        let a = vol(Array3::zeros([4, 8, 8]));
        let b = vol(Array3::zeros([4, 8, 9]));
        let e = register_demons(&a, &b, &small()).unwrap_err().to_string();
        assert!(e.contains("one grid"), "{e}");
        let mut c = small();
        c.iterations.pop();
        let e = register_demons(&a, &a, &c).unwrap_err().to_string();
        assert!(e.contains("one entry per level"), "{e}");
        let c = DemonsConfig {
            clip_hu: [100.0, -100.0],
            ..small()
        };
        assert!(register_demons(&a, &a, &c).is_err());
    }
}
