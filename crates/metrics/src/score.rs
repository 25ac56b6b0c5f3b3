//! Scoring a predicted CT volume against its target in HU, inside several regions at once.
//!
//! The project's convention (DESIGN.md, "Metrics in HU"), applied by [`score_regions`]:
//! 1. both volumes are clipped to the HU window ([`ScoreWindow`], default [-1024, 3071]);
//! 2. MAE (HU) and PSNR (dB, data range = window width) are computed over each region's
//!    voxels (SynthRAD 2023 leaves MAE unclipped; clipping it too keeps scanner padding such
//!    as -3024 HU out of all three metrics alike, and inside a body mask the two agree except
//!    where a value leaves the window);
//! 3. SSIM is computed on the clipped volumes shifted to start at 0 (`v - lo`, so in
//!    `[0, range]`, as SynthRAD does): SSIM's luminance term is not shift-invariant and turns
//!    negative when two local means straddle 0, which soft tissue around 0 HU would trigger.
//!    The SSIM map is computed once and averaged inside each region (see
//!    [`crate::ssim::ssim_3d_masked`]).

use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};

use crate::error::{same_shape, Result};
use crate::pixelwise::error_stats;
use crate::ssim::{ssim_scores_offset, SsimMode, SsimParams};
use crate::ScoreWindow;

/// How volumes are scored. `Default` is the project convention.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// Window both volumes are clipped to; its width is the PSNR and SSIM data range.
    pub window: ScoreWindow,
    /// SSIM window and constants.
    pub ssim: SsimParams,
    /// 3D window over the volume (SynthRAD) or 2D per axial slice.
    pub ssim_mode: SsimMode,
}

/// The metrics this crate reports, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Mae,
    Psnr,
    Ssim,
    /// Mean (signed) error, prediction minus target.
    Me,
}

impl Metric {
    /// All metrics in report order.
    pub const ALL: [Metric; 4] = [Metric::Mae, Metric::Psnr, Metric::Ssim, Metric::Me];

    /// Name used in files (`mae`, `psnr`, `ssim`, `me`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Mae => "mae",
            Metric::Psnr => "psnr",
            Metric::Ssim => "ssim",
            Metric::Me => "me",
        }
    }

    /// Unit for tables (`HU`, `dB`, empty for SSIM).
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Mae | Metric::Me => "HU",
            Metric::Psnr => "dB",
            Metric::Ssim => "",
        }
    }

    /// Whether `a` is a better score than `b`: lower MAE, higher PSNR and SSIM, a mean error
    /// closer to 0.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Metric::Mae => a < b,
            Metric::Psnr | Metric::Ssim => a > b,
            Metric::Me => a.abs() < b.abs(),
        }
    }
}

/// The scores of one region of one case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RegionScores {
    /// Voxels in the region.
    pub voxels: u64,
    /// MAE in HU; `None` for an empty region.
    pub mae: Option<f64>,
    /// PSNR in dB; `None` for an empty region.
    pub psnr: Option<f64>,
    /// Mean SSIM inside the region; `None` when no region voxel lies where the SSIM window
    /// fits (an empty region, or one entirely within `(win - 1) / 2` voxels of the border).
    pub ssim: Option<f64>,
    /// Mean error `mean(pred - target)` in HU (the bias); `None` for an empty region.
    #[serde(default)]
    pub me: Option<f64>,
    /// The target's mean HU in the region (so `target_mean + me` is the prediction's); `None`
    /// for an empty region.
    #[serde(default)]
    pub target_mean: Option<f64>,
}

impl RegionScores {
    /// The scores of a region without voxels: every metric `None`.
    pub const EMPTY: RegionScores = RegionScores {
        voxels: 0,
        mae: None,
        psnr: None,
        ssim: None,
        me: None,
        target_mean: None,
    };

    /// One metric's value.
    pub fn get(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::Mae => self.mae,
            Metric::Psnr => self.psnr,
            Metric::Ssim => self.ssim,
            Metric::Me => self.me,
        }
    }
}

/// Scores `pred` against `target` (both `[z, y, x]` in HU) inside each mask (non-zero =
/// inside), following the module's convention. Returns one [`RegionScores`] per mask, in
/// order.
///
/// # Errors
/// Shapes differ, the window is invalid, or the volume is smaller than the SSIM window
/// (fewer than 11 slices in [`SsimMode::Volume`]: use [`SsimMode::Axial`]).
pub fn score_regions(
    pred: ArrayView3<'_, f32>,
    target: ArrayView3<'_, f32>,
    masks: &[ArrayView3<'_, u8>],
    cfg: &ScoreConfig,
) -> Result<Vec<RegionScores>> {
    cfg.window.validate()?;
    same_shape("prediction vs target", pred.shape(), target.shape())?;
    for m in masks {
        same_shape("mask vs target", m.shape(), target.shape())?;
    }
    let p = cfg.window.clip(pred);
    let t = cfg.window.clip(target);
    let range = cfg.window.range();
    let ssim = ssim_scores_offset(
        p.view(),
        t.view(),
        -f64::from(cfg.window.lo),
        masks,
        cfg.ssim_mode,
        range,
        &cfg.ssim,
    )?;
    masks
        .iter()
        .zip(ssim.masked)
        .map(|(m, ssim)| {
            let e = error_stats(p.view(), t.view(), Some(m.view()))?;
            Ok(RegionScores {
                voxels: e.n,
                mae: e.mae(),
                psnr: e.psnr(range),
                ssim,
                me: e.me(),
                target_mean: e.target_mean(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn clipping_and_regions() {
        // Target: soft tissue; prediction: +40 HU in the top half, a -3000 HU hole outside
        // the window at one voxel (clipped to -1024, so it counts as 1024+ HU of error, not 3000).
        let shape = (12, 16, 16);
        let t = Array3::<f32>::from_elem(shape, 40.0);
        let mut p = t.clone();
        p.slice_mut(ndarray::s![.., ..8, ..])
            .mapv_inplace(|v| v + 40.0);
        p[[6, 12, 12]] = -3000.0;
        let top = Array3::from_shape_fn(shape, |(_, y, _)| u8::from(y < 8));
        let bottom = top.mapv(|v| 1 - v);
        let empty = Array3::<u8>::zeros(shape);
        let cfg = ScoreConfig {
            ssim_mode: SsimMode::Volume,
            ..Default::default()
        };
        let r = score_regions(
            p.view(),
            t.view(),
            &[top.view(), bottom.view(), empty.view()],
            &cfg,
        )
        .unwrap();
        assert_eq!(r[0].voxels, 12 * 8 * 16);
        assert_eq!(r[0].mae, Some(40.0));
        let n = (12 * 8 * 16) as f64;
        assert!((r[1].mae.unwrap() - 1064.0 / n).abs() < 1e-12);
        // the signed error: +40 everywhere on top; below, one voxel at -1024 - 40 HU
        assert_eq!(r[0].me, Some(40.0));
        assert!((r[1].me.unwrap() + 1064.0 / n).abs() < 1e-12);
        assert_eq!(r[0].target_mean, Some(40.0));
        assert_eq!(r[2], RegionScores::EMPTY);
        // Near the step between the halves, structure differs: SSIM below 1 in both.
        assert!(r[0].ssim.unwrap() < 0.999 && r[1].ssim.unwrap() < 0.999);
    }

    #[test]
    fn ssim_is_computed_on_values_shifted_to_the_window_start() {
        // Constant images: variances vanish, SSIM is the luminance term alone,
        // (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), on HU + 1024.
        let shape = (11, 11, 11);
        let t = Array3::<f32>::from_elem(shape, -10.0);
        let p = Array3::<f32>::from_elem(shape, 30.0);
        let all = Array3::<u8>::ones(shape);
        let r = score_regions(p.view(), t.view(), &[all.view()], &ScoreConfig::default()).unwrap();
        let (m1, m2, c1) = (1054.0f64, 1014.0f64, (0.01f64 * 4095.0).powi(2));
        let want = (2.0 * m1 * m2 + c1) / (m1 * m1 + m2 * m2 + c1);
        assert!(
            (r[0].ssim.unwrap() - want).abs() < 1e-12,
            "{:?} vs {want}",
            r[0].ssim
        );
        // Unshifted, the means straddle 0 and the luminance term would be far lower.
        assert!((2.0 * -10.0 * 30.0 + c1) / (100.0 + 900.0 + c1) < 0.9 * want);
        assert_eq!(r[0].mae, Some(40.0));
    }
}
