//! Rigid pre-alignment of two CT volumes of the same patient (the CTPA onto the NCCT).
//!
//! RegGAN's registration network only absorbs small residual motion, so `prepare` first removes
//! the gross rigid misalignment between the two scans. The method is the classical one
//! (as in ITK/SimpleITK's registration framework):
//!
//! - a [`Rigid3`] about the centre of the fixed image, initialised at the identity (or at the
//!   difference of the body centroids, [`RigidInit::BodyCentroids`]);
//! - a similarity on a deterministic subsample of the fixed image's body voxels (above
//!   `sample_threshold_hu`): normalised cross-correlation ([`metric`], the default) or Mattes
//!   mutual information ([`mattes`], robust to the contrast agent's intensity change);
//! - a multi-resolution pyramid (default shrink 4, 2, 1 with Gaussian smoothing), see
//!   [`pyramid`];
//! - regular-step gradient ascent on `(angles, translation)` with the angles scaled by the
//!   samples' RMS distance from the centre, so that one unit of every parameter moves the
//!   anatomy by about one millimetre (ITK's physical-shift scaling); the step shrinks when the
//!   gradient turns back or the similarity would get worse, and a level ends when the step is
//!   below `min_step_mm` or after `max_iterations`.
//!
//! Everything is deterministic: same inputs, same transform, bit for bit.

pub mod demons;
pub mod mattes;
pub mod metric;
pub mod pyramid;

use crate::resample::Grid;
use crate::transform::Rigid3;
use crate::{Result, Volume, VolumeError};
use mattes::Binning;
use metric::Samples;
use serde::{Deserialize, Serialize};
use std::fmt;
use tracing::{debug, info};

/// The similarity measure between the fixed and the (transformed) moving image; both are
/// maximised by the same optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Similarity {
    /// Normalised cross-correlation in [-1, 1], higher is better (`"ncc"`).
    Ncc,
    /// Mattes mutual information in nats, `>= 0`, higher is better (`"mattes_mi"`), with
    /// [`RigidConfig::mi_bins`] histogram bins. Unlike NCC it does not assume the CTPA's
    /// intensities are a linear function of the NCCT's. ITK reports the same number negated.
    MattesMi,
}

impl fmt::Display for Similarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Similarity::Ncc => write!(f, "NCC"),
            Similarity::MattesMi => write!(f, "Mattes MI"),
        }
    }
}

/// A similarity made ready for one set of samples and one moving image (MI fixes its
/// histogram's intensity ranges per level, so that it is a smooth function of the transform).
#[derive(Debug, Clone, Copy)]
enum LevelMetric {
    Ncc,
    MattesMi(Binning),
}

impl LevelMetric {
    fn new(cfg: &RigidConfig, samples: &Samples, moving: &Volume) -> Result<Self> {
        Ok(match cfg.metric {
            Similarity::Ncc => LevelMetric::Ncc,
            Similarity::MattesMi => {
                LevelMetric::MattesMi(Binning::for_level(cfg.mi_bins, samples, moving)?)
            }
        })
    }

    /// Value (higher is better) and gradient with respect to (angles, translation).
    fn evaluate(
        &self,
        samples: &Samples,
        moving: &Volume,
        t: &Rigid3,
        with_gradient: bool,
    ) -> (f64, [f64; 6]) {
        let (v, g, _) = match self {
            LevelMetric::Ncc => metric::ncc(samples, moving, t, with_gradient),
            LevelMetric::MattesMi(b) => mattes::mattes_mi(samples, moving, t, b, with_gradient),
        };
        (v, g)
    }
}

/// How the transform starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RigidInit {
    /// No rotation, no translation (scans from one session share the scanner's coordinates).
    Identity,
    /// Translation = moving body centroid − fixed body centroid (voxels above
    /// `sample_threshold_hu`), for volumes whose coordinates do not agree.
    BodyCentroids,
}

/// Settings of [`align_rigid`]; the defaults suit chest CT at 0.5–3 mm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RigidConfig {
    pub metric: Similarity,
    /// Histogram bins per image of [`Similarity::MattesMi`] (ITK's and Mattes' default 50;
    /// unused by NCC). Older manifests without it read as 50.
    pub mi_bins: usize,
    pub init: RigidInit,
    /// Shrink factor of each level, coarse to fine.
    pub shrink_factors: Vec<usize>,
    /// Gaussian sigma of each level in units of the fixed image's largest spacing (0: none).
    pub smoothing_sigmas: Vec<f64>,
    /// Only fixed voxels above this take part (HU): the body, not the air around it.
    pub sample_threshold_hu: f32,
    /// Most sample points per level.
    pub max_samples: usize,
    /// Most iterations per level.
    pub max_iterations: usize,
    /// First step (mm of anatomy displacement) at the coarsest level; each finer level starts
    /// with this divided by the ratio of shrink factors.
    pub initial_step_mm: f64,
    /// A level stops once the step is below this (mm), scaled by its shrink factor.
    pub min_step_mm: f64,
    /// Factor applied to the step when the gradient turns back or the similarity drops.
    pub relaxation: f64,
}

impl Default for RigidConfig {
    fn default() -> Self {
        Self {
            metric: Similarity::Ncc,
            mi_bins: 50,
            init: RigidInit::Identity,
            shrink_factors: vec![4, 2, 1],
            smoothing_sigmas: vec![2.0, 1.0, 0.0],
            sample_threshold_hu: -900.0,
            max_samples: 40_000,
            max_iterations: 150,
            initial_step_mm: 4.0,
            min_step_mm: 0.02,
            relaxation: 0.5,
        }
    }
}

/// What [`align_rigid`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RigidResult {
    /// Fixed → moving: resample the moving image with it onto the fixed grid to align them.
    pub transform: Rigid3,
    pub metric: Similarity,
    /// Similarity ([`Self::metric`]) at full resolution before (initial transform) and after;
    /// higher is better.
    pub before: f64,
    pub after: f64,
    /// Iterations over all levels.
    pub iterations: usize,
}

impl RigidConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(VolumeError::invalid(format!("rigid registration: {m}")));
        if self.shrink_factors.is_empty() || self.shrink_factors.contains(&0) {
            return bad(format!(
                "shrink factors must be >= 1 and not empty, got {:?}",
                self.shrink_factors
            ));
        }
        if self.smoothing_sigmas.len() != self.shrink_factors.len()
            || self
                .smoothing_sigmas
                .iter()
                .any(|s| !s.is_finite() || *s < 0.0)
        {
            return bad(format!(
                "need one finite, non-negative smoothing sigma per level, got {:?} for {} levels",
                self.smoothing_sigmas,
                self.shrink_factors.len()
            ));
        }
        let positive = self.initial_step_mm > 0.0 && self.min_step_mm > 0.0;
        let relaxation_ok = self.relaxation > 0.0 && self.relaxation < 1.0;
        if self.metric == Similarity::MattesMi && !(5..=1024).contains(&self.mi_bins) {
            return bad(format!(
                "Mattes MI needs 5 to 1024 histogram bins, got {}",
                self.mi_bins
            ));
        }
        if !positive || !relaxation_ok || self.max_samples < 8 {
            return bad(format!(
                "steps must be positive, relaxation in (0, 1) and max_samples >= 8 (got step {}, min step {}, relaxation {}, samples {})",
                self.initial_step_mm, self.min_step_mm, self.relaxation, self.max_samples
            ));
        }
        Ok(())
    }
}

/// Centroid (LPS mm) of the voxels above `threshold`, if any.
fn centroid_above(v: &Volume, threshold: f32) -> Option<[f64; 3]> {
    let mut sum = [0.0f64; 3];
    let mut n = 0usize;
    for ((k, j, i), &x) in v.data.indexed_iter() {
        if x > threshold {
            let p = v.geometry.index_to_point([i as f64, j as f64, k as f64]);
            for a in 0..3 {
                sum[a] += p[a];
            }
            n += 1;
        }
    }
    (n > 0).then(|| sum.map(|s| s / n as f64))
}

/// Parameters as the optimiser sees them: angles times the lever arm (mm), translations (mm).
fn to_params(t: &Rigid3, lever: f64) -> [f64; 6] {
    let a = t.angles_rad;
    let tr = t.translation;
    [
        a[0] * lever,
        a[1] * lever,
        a[2] * lever,
        tr[0],
        tr[1],
        tr[2],
    ]
}

fn from_params(x: &[f64; 6], lever: f64, center: [f64; 3]) -> Rigid3 {
    Rigid3::new(
        center,
        [x[0] / lever, x[1] / lever, x[2] / lever],
        [x[3], x[4], x[5]],
    )
}

/// Regular-step gradient ascent of the similarity on one level; returns the transform and the
/// number of iterations.
fn optimise_level(
    metric: &LevelMetric,
    samples: &Samples,
    moving: &Volume,
    start: Rigid3,
    step0: f64,
    min_step: f64,
    cfg: &RigidConfig,
) -> (Rigid3, usize) {
    let lever = samples.rms_radius(start.center);
    let center = start.center;
    let mut x = to_params(&start, lever);
    let eval = |x: &[f64; 6], grad: bool| {
        let (v, g) = metric.evaluate(samples, moving, &from_params(x, lever, center), grad);
        // chain rule for the scaled angles
        let g = [g[0] / lever, g[1] / lever, g[2] / lever, g[3], g[4], g[5]];
        (v, g)
    };
    let (mut value, mut grad) = eval(&x, true);
    let mut step = step0;
    let mut prev_dir: Option<[f64; 6]> = None;
    let mut iterations = 0;
    while iterations < cfg.max_iterations && step >= min_step {
        iterations += 1;
        let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        if norm < 1e-12 {
            break;
        }
        let dir = grad.map(|g| g / norm);
        if let Some(p) = prev_dir {
            if p.iter().zip(&dir).map(|(a, b)| a * b).sum::<f64>() < 0.0 {
                step *= cfg.relaxation;
            }
        }
        let mut trial = x;
        for k in 0..6 {
            trial[k] += step * dir[k];
        }
        let (v, g) = eval(&trial, true);
        if v >= value {
            x = trial;
            value = v;
            grad = g;
            prev_dir = Some(dir);
        } else {
            // too far: shrink and try again from the same point
            step *= cfg.relaxation;
            prev_dir = None;
        }
        if iterations % 10 == 0 {
            tracing::trace!(iterations, value, step, "rigid: iteration");
        }
    }
    debug!(iterations, value, step, lever, "rigid: level done");
    (from_params(&x, lever, center), iterations)
}

/// Rigidly aligns `moving` to `fixed`. The returned transform maps fixed points to moving
/// points: `resample(moving, &Grid::of(fixed), Some(&result.transform), ..)` is the moving
/// image aligned to the fixed one.
pub fn align_rigid(fixed: &Volume, moving: &Volume, cfg: &RigidConfig) -> Result<RigidResult> {
    cfg.validate()?;
    fixed.geometry.validate()?;
    moving.geometry.validate()?;
    let center = Grid::of(fixed).center();
    let mut transform = Rigid3::new(center, [0.0; 3], [0.0; 3]);
    if cfg.init == RigidInit::BodyCentroids {
        match (
            centroid_above(fixed, cfg.sample_threshold_hu),
            centroid_above(moving, cfg.sample_threshold_hu),
        ) {
            (Some(f), Some(m)) => transform.translation = [m[0] - f[0], m[1] - f[1], m[2] - f[2]],
            _ => {
                return Err(VolumeError::invalid(format!(
                    "rigid registration: no voxel above {} HU to initialise from",
                    cfg.sample_threshold_hu
                )))
            }
        }
    }
    let initial = transform;
    let max_spacing = fixed.geometry.spacing.iter().copied().fold(0.0, f64::max);
    let coarsest = cfg.shrink_factors[0] as f64;
    let mut iterations = 0;
    let mut full_samples: Option<Samples> = None;
    for (&shrink, &sigma) in cfg.shrink_factors.iter().zip(&cfg.smoothing_sigmas) {
        let sigma_mm = sigma * max_spacing;
        let f = pyramid::level(fixed, shrink, sigma_mm)?;
        let m = pyramid::level(moving, shrink, sigma_mm)?;
        let samples = Samples::from_fixed(&f, cfg.sample_threshold_hu, cfg.max_samples);
        if samples.len() < 8 {
            return Err(VolumeError::invalid(format!(
                "rigid registration: only {} fixed voxels above {} HU at shrink {shrink}; nothing to align",
                samples.len(),
                cfg.sample_threshold_hu
            )));
        }
        let step0 = cfg.initial_step_mm * shrink as f64 / coarsest;
        let min_step = cfg.min_step_mm * shrink as f64;
        let level_metric = LevelMetric::new(cfg, &samples, &m)?;
        let (t, it) = optimise_level(&level_metric, &samples, &m, transform, step0, min_step, cfg);
        transform = t;
        iterations += it;
        debug!(shrink, samples = samples.len(), %transform, "rigid: level result");
        if shrink == 1 && sigma == 0.0 {
            full_samples = Some(samples);
        }
    }
    // Report the similarity on the original images.
    let samples = match full_samples {
        Some(s) => s,
        None => Samples::from_fixed(fixed, cfg.sample_threshold_hu, cfg.max_samples),
    };
    let full_metric = LevelMetric::new(cfg, &samples, moving)?;
    let before = full_metric.evaluate(&samples, moving, &initial, false).0;
    let after = full_metric.evaluate(&samples, moving, &transform, false).0;
    info!(%transform, metric = %cfg.metric, before, after, iterations, "rigid alignment");
    Ok(RigidResult {
        transform,
        metric: cfg.metric,
        before,
        after,
        iterations,
    })
}
