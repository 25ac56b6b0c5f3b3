//! The contrast region and the two terms built on it (#16 items 3 and 4).
//!
//! A CTPA is its NCCT plus iodine: contrast only ever *brightens* (blood from ~40 HU to
//! 250-500 HU, parenchyma by a few HU). But the two scans moved between acquisitions, so a
//! plain difference also lights up every bright structure that moved: a rib, the unenhanced
//! vessels all over the lung (a 40 HU vessel moved onto -850 HU parenchyma is 890 HU
//! "brighter"). The region is therefore *motion-tolerant*: a pixel is contrast where the CTPA
//! is brighter by more than `threshold_hu` than the brightest NCCT pixel within `motion_px`
//! (a max-pool of the NCCT): a moved rib or unenhanced vessel finds itself in that
//! neighbourhood, an enhanced vessel does not (300 HU against the NCCT's 40 HU blood). The
//! region then grows by `motion_px` to cover where the vessel lies in the NCCT as well.
//!
//! - `[contrast] weight`: the reconstruction's per-pixel weight is at least this inside the
//!   region (beside the lung weight), so the pulmonary trunk and the hilar arteries, which lie
//!   outside the lungs, count as much as the lungs.
//! - `[identity] weight`: the mean `|G(x) - x|` over the body pixels *outside* the region:
//!   tissue that needs no change stays the NCCT's, instead of taking GAN noise and texture.
//!   `[identity] spare_lung_above_hu` also leaves out the lung structures the NCCT shows
//!   (vessels, airway walls: [`lung_structures`]), where a small artery the region misses lies.
//!
//! Both see the NCCT as G does, after the sampler's intensity augmentation (`data.augment`:
//! contrast, brightness, noise): the identity term asks G to keep its input's own intensities,
//! and the region's threshold moves with the augmentation by a few tens of HU (the max-pool
//! picks up noise peaks). Computing them on the unaugmented NCCT is a possible refinement.

use anyhow::Context;
use dataset::manifest::IntensityWindow;
use ndarray::{s, Array3, ArrayView3};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Where the contrast is, and how much its pixels weigh in the reconstruction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContrastConfig {
    /// The reconstruction weight of a pixel in the region is at least this (the lung
    /// weight's scale; 1 = off). Default: 1.
    pub weight: f64,
    /// CTPA brighter than the NCCT by more than this many HU is contrast. Default: 100.
    pub threshold_hu: f64,
    /// How far (pixels, in-plane) the scans may have moved against each other: the CTPA is
    /// compared with the brightest NCCT pixel this close, and the region grows by as much.
    /// Default: 4 (11 mm at the phantoms' 2.8 mm pixels).
    pub motion_px: usize,
    /// Weight of the region's mean error, `|mean(warp(G(x)) - CTPA)|` over the region per
    /// image, in G+R's loss (0 = off; the L1 weight's scale): the enhancement on average,
    /// which a per-pixel L1 under residual misalignment trades for blur. Default: 0.
    pub mean_weight: f64,
    /// Weight of the peak error (0 = off; the L1 weight's scale) over the region and the
    /// lungs ([`peak_error`]): every bright pixel of `warp(G(x))` needs one as bright in the
    /// CTPA within `peak_px`, and the other way round. A small vessel that R leaves a pixel
    /// beside the CTPA's costs nothing, so its enhancement is learnt where a per-pixel L1
    /// settles on the dark median; a dim vessel, or one wider than the CTPA's by more than
    /// `peak_px`, still costs. Default: 0.
    pub peak_weight: f64,
    /// The peak error's tolerance, pixels in-plane (a `2 * peak_px + 1` square). Default: 1.
    pub peak_px: usize,
    /// Inside the region the reconstruction's L1 becomes the pinball (quantile) loss at this
    /// quantile ([`quantile_shift`]): a pixel's optimum is the `quantile`-quantile of the
    /// targets it is trained against, not their median. Under residual misalignment a small
    /// vessel lies under a given pixel in only some of the pairs, and the median of such a
    /// pixel is the unenhanced lung; at 0.75 it brightens where the vessel lies in more than
    /// a quarter of them. 0.5 = the plain L1 (off). Default: 0.5.
    pub quantile: f64,
    /// Where the pinball loss applies outside the lungs (inside them: the whole region,
    /// where the small vessels are); read it through [`ContrastConfig::quantile_outside`].
    /// Default: the whole region.
    pub quantile_outside_lungs: QuantileOutside,
    /// `quantile_lungs_only`, which runs resolved before `quantile_outside_lungs`
    /// (2026-12-06) recorded in `config.toml` and their checkpoints: still read, so they
    /// resume, `true` as `"none"` ([`ContrastConfig::quantile_outside`]), and written back
    /// only where it was read.
    #[serde(
        default,
        rename = "quantile_lungs_only",
        skip_serializing_if = "Option::is_none"
    )]
    #[doc(hidden)]
    pub legacy_lungs_only: Option<bool>,
    /// The quantile returns linearly to 0.5 (the plain L1) over the first this many steps,
    /// the way a warm-up ends: the pinball's push where G starts (out of the identity), the
    /// median's crisp edges where it ends. 0 = the quantile throughout. Default: 0.
    pub quantile_decay_steps: u64,
}

/// Where, outside the lungs, the contrast region's L1 becomes the pinball loss
/// (`[contrast] quantile_outside_lungs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantileOutside {
    /// The whole region, grown by `motion_px` (`"region"`).
    Region,
    /// Only the region's core, where the CTPA itself is brighter than every NCCT pixel near
    /// it, before it grows (`"core"`): the pulmonary trunk and the hilar arteries keep the
    /// pinball's push, the ring of `motion_px` around them and around the heart and the
    /// aorta, where a pixel is contrast only in the pairs the motion moved a vessel onto it,
    /// keeps the plain L1, so their rims are not brightened.
    Core,
    /// Nowhere (`"none"`): the trunk, the aorta and the heart keep the plain L1.
    None,
}

impl Default for ContrastConfig {
    fn default() -> Self {
        Self {
            weight: 1.0,
            threshold_hu: 100.0,
            motion_px: 4,
            mean_weight: 0.0,
            peak_weight: 0.0,
            peak_px: 1,
            quantile: 0.5,
            quantile_outside_lungs: QuantileOutside::Region,
            legacy_lungs_only: None,
            quantile_decay_steps: 0,
        }
    }
}

impl ContrastConfig {
    /// Whether the reconstruction weighs the region.
    pub fn weighted(&self) -> bool {
        self.weight != 1.0
    }

    /// Whether the region's mean error is a loss term.
    pub fn mean_term(&self) -> bool {
        self.mean_weight > 0.0
    }

    /// Whether the peak error is a loss term.
    pub fn peak_term(&self) -> bool {
        self.peak_weight > 0.0
    }

    /// Whether the region's L1 is a pinball loss (a quantile other than the median).
    pub fn quantile_term(&self) -> bool {
        self.quantile != 0.5
    }

    /// The quantile at `step` (1-based): `quantile` at step 1, back to 0.5 from step
    /// `quantile_decay_steps + 1` on (with a decay).
    pub fn quantile_at(&self, step: u64) -> f64 {
        match self.quantile_decay_steps {
            0 => self.quantile,
            n => {
                let done = (step.saturating_sub(1) as f64 / n as f64).min(1.0);
                self.quantile + (0.5 - self.quantile) * done
            }
        }
    }

    /// Where the pinball loss applies outside the lungs: `quantile_outside_lungs`, or
    /// `"none"` for a run that recorded `quantile_lungs_only = true`.
    pub fn quantile_outside(&self) -> QuantileOutside {
        match self.legacy_lungs_only {
            Some(true) => QuantileOutside::None,
            _ => self.quantile_outside_lungs,
        }
    }

    /// Whether any of this block's terms needs the region.
    pub fn uses_region(&self) -> bool {
        self.weighted() || self.mean_term() || self.peak_term() || self.quantile_term()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.weight.is_finite() && self.weight >= 1.0,
            "contrast.weight must be finite and >= 1 (1 = off), got {}",
            self.weight
        );
        anyhow::ensure!(
            self.threshold_hu.is_finite() && self.threshold_hu > 0.0,
            "contrast.threshold_hu must be > 0, got {}",
            self.threshold_hu
        );
        anyhow::ensure!(
            self.mean_weight.is_finite() && self.mean_weight >= 0.0,
            "contrast.mean_weight must be finite and >= 0, got {}",
            self.mean_weight
        );
        anyhow::ensure!(
            self.peak_weight.is_finite() && self.peak_weight >= 0.0,
            "contrast.peak_weight must be finite and >= 0, got {}",
            self.peak_weight
        );
        anyhow::ensure!(
            self.quantile > 0.0 && self.quantile < 1.0,
            "contrast.quantile must be between 0 and 1 (0.5 = the plain L1), got {}",
            self.quantile
        );
        anyhow::ensure!(
            self.quantile_term()
                || (self.quantile_outside() == QuantileOutside::Region
                    && self.quantile_decay_steps == 0),
            "contrast.quantile_outside_lungs and contrast.quantile_decay_steps shape the pinball \
             loss, which contrast.quantile = 0.5 leaves off: set a quantile, or leave them out"
        );
        anyhow::ensure!(
            self.legacy_lungs_only.is_none()
                || self.quantile_outside_lungs == QuantileOutside::Region,
            "contrast.quantile_lungs_only is the old name of contrast.quantile_outside_lungs \
             (true = \"none\"): name one of them"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.peak_px),
            "contrast.peak_px must be 1 to 16, got {}",
            self.peak_px
        );
        anyhow::ensure!(
            self.motion_px <= 64,
            "contrast.motion_px must be at most 64, got {}",
            self.motion_px
        );
        Ok(())
    }
}

/// The identity-preserving term's settings (the region is `[contrast]`'s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Weight of the term in G+R's loss (0 = off; the L1 weight's scale, e.g. 10). Default: 0.
    pub weight: f64,
    /// Inside the lungs, NCCT pixels brighter than this many HU (the vessels and airway walls
    /// an NCCT shows without contrast), grown by `spare_px`, are left out of the term: a small
    /// artery that the contrast region misses (moved across slices, partial volume) is free
    /// to brighten instead of being held at its unenhanced value ([`lung_structures`]).
    /// Default: none (the term covers all the body outside the region).
    pub spare_lung_above_hu: Option<f64>,
    /// How far (pixels, in-plane) the spared lung structures grow. Default: 1.
    pub spare_px: usize,
    /// Weight of the drift term in G+R's loss (0 = off; the L1 weight's scale), independent
    /// of `weight`: the mean over the soft tissue outside the lungs and the contrast region
    /// of `|local mean of (G(x) - x)|`, the local mean taken over that tissue within
    /// `drift_px` ([`drift_loss`]). An offset of G's output over tissue that needs no change
    /// costs its full size, texture of zero mean almost nothing, and the lungs, where the
    /// small arteries the region misses lie, are left free. Default: 0.
    pub drift_weight: f64,
    /// The drift's scale: the local mean's square reaches this many pixels in-plane (1 to
    /// 32). Default: 8.
    pub drift_px: usize,
    /// The weight rises linearly from 0 to `weight` over the first this many steps
    /// ([`IdentityConfig::weight_at`]): G, which starts as the identity (a residual G), is
    /// free to leave it where the contrast is before the term holds the tissue, so a weight
    /// that would keep G at the identity from step 1 only holds what needs no change.
    /// 0 = the full weight from step 1. Default: 0.
    pub ramp_steps: u64,
    /// Runs started before the region moved to `[contrast]` (2026-12-05) recorded its
    /// settings here: accepted and ignored, so those runs still resume (with the new region).
    #[serde(default, skip_serializing, rename = "contrast_threshold_hu")]
    #[doc(hidden)]
    pub legacy_threshold_hu: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing, rename = "dilation_px")]
    #[doc(hidden)]
    pub legacy_dilation_px: Option<serde::de::IgnoredAny>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            weight: 0.0,
            spare_lung_above_hu: None,
            spare_px: 1,
            ramp_steps: 0,
            drift_weight: 0.0,
            drift_px: 8,
            legacy_threshold_hu: None,
            legacy_dilation_px: None,
        }
    }
}

impl IdentityConfig {
    pub fn enabled(&self) -> bool {
        self.weight > 0.0
    }

    /// Whether the drift term is on.
    pub fn drift_term(&self) -> bool {
        self.drift_weight > 0.0
    }

    /// Whether either of this block's terms needs `[contrast]`'s region.
    pub fn uses_region(&self) -> bool {
        self.enabled() || self.drift_term()
    }

    /// The term's weight at `step` (1-based): `weight * step / ramp_steps` up to
    /// `ramp_steps`, then `weight` (without a ramp, `weight` throughout).
    pub fn weight_at(&self, step: u64) -> f64 {
        match self.ramp_steps {
            0 => self.weight,
            n => self.weight * (step as f64 / n as f64).min(1.0),
        }
    }

    /// Where the term does not apply: the contrast `region` and, with `spare_lung_above_hu`,
    /// the [`lung_structures`] of `ncct` (normalised with `window`).
    ///
    /// # Shapes
    /// `region`, `ncct`, `lung`: `[batch, 1, height, width]` -> the same.
    pub fn exempt(
        &self,
        region: &Tensor,
        ncct: &Tensor,
        lung: &Tensor,
        window: &IntensityWindow,
    ) -> Tensor {
        match self.spare_lung_above_hu {
            Some(hu) => {
                let threshold = f64::from(window.normalize(hu as f32));
                region.maximum(&lung_structures(ncct, lung, threshold, self.spare_px))
            }
            None => region.shallow_clone(),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.weight.is_finite() && self.weight >= 0.0,
            "identity.weight must be finite and >= 0, got {}",
            self.weight
        );
        if let Some(hu) = self.spare_lung_above_hu {
            anyhow::ensure!(
                hu.is_finite(),
                "identity.spare_lung_above_hu must be finite, got {hu}"
            );
        }
        anyhow::ensure!(
            self.drift_weight.is_finite() && self.drift_weight >= 0.0,
            "identity.drift_weight must be finite and >= 0, got {}",
            self.drift_weight
        );
        anyhow::ensure!(
            (1..=32).contains(&self.drift_px),
            "identity.drift_px must be 1 to 32, got {}",
            self.drift_px
        );
        anyhow::ensure!(
            self.enabled() || self.ramp_steps == 0,
            "identity.ramp_steps ramps the identity term, which identity.weight = 0 leaves \
             off: set a weight, or leave it out"
        );
        anyhow::ensure!(
            self.spare_px <= 16,
            "identity.spare_px must be at most 16, got {}",
            self.spare_px
        );
        Ok(())
    }
}

/// The lung structures the NCCT already shows, 0/1 (no gradient): `lung` pixels of `ncct`
/// above `threshold` (normalised like `ncct`), grown by `grow_px` in-plane.
///
/// # Shapes
/// `ncct`, `lung`: `[batch, 1, height, width]` -> the same.
pub fn lung_structures(ncct: &Tensor, lung: &Tensor, threshold: f64, grow_px: usize) -> Tensor {
    tch::no_grad(|| grow(&(ncct.gt(threshold).to_kind(Kind::Float) * lung), grow_px))
}

/// The contrast region's core, 0/1 (no gradient): body pixels where `ctpa` exceeds the
/// brightest `ncct` pixel within `motion_px` by more than `threshold` (images normalised,
/// `threshold` in the same units): where the CTPA itself shows the contrast.
///
/// # Shapes
/// `ncct`, `ctpa`, `body`: `[batch, 1, height, width]` -> the same.
pub fn contrast_core(
    ncct: &Tensor,
    ctpa: &Tensor,
    body: &Tensor,
    threshold: f64,
    motion_px: usize,
) -> Tensor {
    tch::no_grad(|| {
        (ctpa - grow(ncct, motion_px))
            .gt(threshold)
            .to_kind(Kind::Float)
            * body
    })
}

/// The contrast region from its [`contrast_core`]: the core grown by `motion_px` (to cover
/// where the vessel lies in the NCCT as well), inside the body.
pub fn grow_core(core: &Tensor, body: &Tensor, motion_px: usize) -> Tensor {
    tch::no_grad(|| grow(core, motion_px) * body)
}

/// The contrast region, 0/1 (no gradient): [`contrast_core`] grown by `motion_px`
/// ([`grow_core`]).
///
/// # Shapes
/// `ncct`, `ctpa`, `body`: `[batch, 1, height, width]` -> the same.
pub fn contrast_region(
    ncct: &Tensor,
    ctpa: &Tensor,
    body: &Tensor,
    threshold: f64,
    motion_px: usize,
) -> Tensor {
    let core = contrast_core(ncct, ctpa, body, threshold, motion_px);
    grow_core(&core, body, motion_px)
}

/// A square max-pool of side `2 * px + 1`, stride 1, same size (`px = 0`: the input).
fn grow(t: &Tensor, px: usize) -> Tensor {
    match px as i64 {
        0 => t.shallow_clone(),
        d => t.max_pool2d([2 * d + 1, 2 * d + 1], [1, 1], [d, d], [1, 1], false),
    }
}

/// Where the pinball loss applies ([`QuantileOutside`]): the region inside the lungs and,
/// outside them, the region, its core or nothing. `core` must be the region's
/// [`contrast_core`] (`core` is read only for [`QuantileOutside::Core`]).
///
/// # Shapes
/// All `[batch, 1, height, width]` -> the same.
pub fn quantile_region(
    region: &Tensor,
    core: &Tensor,
    lung: &Tensor,
    outside: QuantileOutside,
) -> Tensor {
    tch::no_grad(|| match outside {
        QuantileOutside::Region => region.shallow_clone(),
        QuantileOutside::Core => region * lung + core * (lung.neg() + 1.0),
        QuantileOutside::None => region * lung,
    })
}

/// Slices per [`contrast_region`] call in [`contrast_region_volume`] (bounds the temporary
/// tensors on large volumes).
const REGION_CHUNK: usize = 32;

/// [`contrast_region`] on whole `[z, y, x]` HU volumes, slice by slice (in-plane, as training
/// computes it; `threshold_hu` in HU): validation's contrast region, where `mae_contrast`
/// scores a prediction against the CTPA as it lies (crate::validate).
pub fn contrast_region_volume(
    ncct: ArrayView3<'_, f32>,
    ctpa: ArrayView3<'_, f32>,
    body: ArrayView3<'_, u8>,
    threshold_hu: f32,
    motion_px: usize,
) -> anyhow::Result<Array3<u8>> {
    let (nz, ny, nx) = ncct.dim();
    // [slices, 1, height, width]
    let tensor = |a: ArrayView3<'_, f32>| {
        let a = a.as_standard_layout();
        let data = a
            .as_slice()
            .context("a standard-layout array has a slice")?;
        Ok::<_, anyhow::Error>(Tensor::from_slice(data).reshape([-1, 1, ny as i64, nx as i64]))
    };
    let mut out = Vec::with_capacity(nz * ny * nx);
    for z0 in (0..nz).step_by(REGION_CHUNK) {
        let zs = s![z0..(z0 + REGION_CHUNK).min(nz), .., ..];
        let region = contrast_region(
            &tensor(ncct.slice(zs))?,
            &tensor(ctpa.slice(zs))?,
            &tensor(body.slice(zs).mapv(f32::from).view())?,
            f64::from(threshold_hu),
            motion_px,
        );
        let v = Vec::<f32>::try_from(region.reshape([-1])).context("reading the region")?;
        out.extend(v.into_iter().map(|r| u8::from(r > 0.0)));
    }
    Ok(Array3::from_shape_vec((nz, ny, nx), out)?)
}

/// The mean `|fake - ncct|` over `body` pixels outside `region`; 0 when no pixel is left.
///
/// # Shapes
/// All `[batch, 1, height, width]` -> a scalar.
pub fn identity_loss(fake: &Tensor, ncct: &Tensor, region: &Tensor, body: &Tensor) -> Tensor {
    let kept = tch::no_grad(|| (region.neg() + 1.0) * body);
    let n = kept.sum(Kind::Float);
    ((fake - ncct).abs() * &kept).sum(Kind::Float) / n.clamp_min(1.0)
}

/// The drift of `fake` from `ncct` over `kept` (0/1): the mean over `kept` of `|m|`, where
/// `m` at a pixel is the mean of `fake - ncct` over the `kept` pixels within `px` in-plane (a
/// `2 * px + 1` square): an offset `c` over `kept` scores `|c|`, a pattern that averages to 0
/// within the square close to 0. 0 when `kept` is empty.
///
/// # Shapes
/// All `[batch, 1, height, width]` -> a scalar.
pub fn drift_loss(fake: &Tensor, ncct: &Tensor, kept: &Tensor, px: usize) -> Tensor {
    let (k, p) = (2 * px as i64 + 1, px as i64);
    let pool = |t: &Tensor| t.avg_pool2d([k, k], [1, 1], [p, p], false, true, None::<i64>);
    let count = tch::no_grad(|| pool(kept));
    let local = pool(&((fake - ncct) * kept)) / count.clamp_min(1e-6);
    (local.abs() * kept).sum(Kind::Float) / kept.sum(Kind::Float).clamp_min(1.0)
}

/// The region's mean error per image, `|sum((pred - target) * region) / sum(region)|`,
/// averaged over the batch (an image without region pixels adds 0).
///
/// # Shapes
/// All `[batch, 1, height, width]` -> a scalar.
pub fn region_mean_error(pred: &Tensor, target: &Tensor, region: &Tensor) -> Tensor {
    let dims: &[i64] = &[1, 2, 3];
    let n = region
        .sum_dim_intlist(dims, false, Kind::Float)
        .clamp_min(1.0);
    let diff = ((pred - target) * region).sum_dim_intlist(dims, false, Kind::Float);
    (diff / n).abs().mean(Kind::Float)
}

/// The peak error, a brightness distance that forgives `px` pixels of misplacement: the mean
/// over `mask` of `relu(pred - maxpool(target)) + relu(target - maxpool(pred))` (square
/// max-pools of side `2 * px + 1`, stride 1, same size). The first part: a bright `pred`
/// pixel needs a target as bright within `px`; the second: a bright target pixel needs a
/// `pred` as bright within `px`. A vessel shifted by up to `px` costs nothing, a dim one
/// costs its missing brightness, one grown wider than `px` beyond the target's costs its
/// overhang. 0 when `mask` is empty.
///
/// # Shapes
/// All `[batch, 1, height, width]` -> a scalar.
pub fn peak_error(pred: &Tensor, target: &Tensor, mask: &Tensor, px: usize) -> Tensor {
    let (k, p) = (2 * px as i64 + 1, px as i64);
    let pool = |t: &Tensor| t.max_pool2d([k, k], [1, 1], [p, p], [1, 1], false);
    let target_pool = tch::no_grad(|| pool(target));
    let unsupported = (pred - target_pool).relu();
    let unmet = (target - pool(pred)).relu();
    let n = mask.sum(Kind::Float).clamp_min(1.0);
    ((unsupported + unmet) * mask).sum(Kind::Float) / n
}

/// The quantile shift, `sum(w * region * (target - pred)) / sum(w)` with `w` the
/// reconstruction L1's pixel weights (`model::losses::pixel_weights`), so that
/// `L1 + (2 q - 1) * shift` is, pixel for pixel inside the region, twice the pinball loss at
/// quantile `q`: `2 q (target - pred)` where the prediction is too dark, `2 (1 - q) (pred -
/// target)` where it is too bright (`|e| + (2 q - 1) e = 2 max(q e, (q - 1) e)`, `e = target -
/// pred`), and the L1 elsewhere. Added to G+R's loss with `(2 q - 1)` times the
/// full-resolution L1's weight.
///
/// # Shapes
/// All `[batch, 1, height, width]` -> a scalar.
pub fn quantile_shift(pred: &Tensor, target: &Tensor, region: &Tensor, weights: &Tensor) -> Tensor {
    let w = tch::no_grad(|| weights.to_kind(Kind::Float));
    ((target - pred) * region * &w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1e-12)
}

/// The reconstruction's weight floor: `weight` inside `region`, 0 elsewhere (the lung
/// weighting, at least 1 everywhere, wins there).
pub fn weight_floor(region: &Tensor, weight: f64) -> Tensor {
    region * weight
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).reshape([1, 1, 1, v.len() as i64])
    }

    #[test]
    fn the_region_is_one_sided_motion_tolerant_and_inside_the_body() {
        // pixel 1: enhanced (0.5 where the NCCT is 0 everywhere near); pixels 3 -> 4: a bright
        // structure (0.6) that moved by one pixel; pixel 6: darkened; pixel 7 outside the body
        let ncct = t(&[0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.5, 0.0]);
        let ctpa = t(&[0.0, 0.5, 0.0, 0.0, 0.6, 0.0, 0.0, 0.9]);
        let body = t(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        let v = |r: Tensor| Vec::<f32>::try_from(r.reshape([-1])).unwrap();
        // without motion tolerance the moved structure counts as contrast
        let r = contrast_region(&ncct, &ctpa, &body, 0.1, 0);
        assert_eq!(v(r), vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        // one pixel of tolerance: only the enhancement, grown by one pixel
        let r = contrast_region(&ncct, &ctpa, &body, 0.1, 1);
        assert_eq!(v(r), vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    }

    /// The core is the ungrown region; the pinball's region keeps the whole region in the
    /// lungs and, outside them, the region, its core or nothing.
    #[test]
    fn the_pinball_region_outside_the_lungs_is_the_region_its_core_or_nothing() {
        // an enhanced pixel outside the lungs (1) and one inside them (6)
        let ncct = t(&[0.0; 8]);
        let ctpa = t(&[0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0]);
        let body = t(&[1.0; 8]);
        let lung = t(&[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let v = |r: Tensor| Vec::<f32>::try_from(r.reshape([-1])).unwrap();
        let core = contrast_core(&ncct, &ctpa, &body, 0.1, 1);
        assert_eq!(v(core.shallow_clone()), [0., 1., 0., 0., 0., 0., 1., 0.]);
        let region = grow_core(&core, &body, 1);
        assert_eq!(v(region.shallow_clone()), [1., 1., 1., 0., 0., 1., 1., 1.]);
        let within = |o| v(quantile_region(&region, &core, &lung, o));
        assert_eq!(within(QuantileOutside::Region), v(region.shallow_clone()));
        assert_eq!(
            within(QuantileOutside::Core),
            [0., 1., 0., 0., 0., 1., 1., 1.]
        );
        assert_eq!(
            within(QuantileOutside::None),
            [0., 0., 0., 0., 0., 1., 1., 1.]
        );
    }

    #[test]
    fn the_mean_error_is_the_regions_bias_per_image() {
        let img = |v: &[f32]| Tensor::from_slice(v).reshape([2, 1, 1, 3]);
        let target = img(&[0.5, 0.5, 0.0, 0.5, 0.5, 0.5]);
        // image 0: -0.2 and +0.1 in the region (bias -0.05); image 1: no region pixel
        let pred = img(&[0.3, 0.6, 0.9, 0.0, 0.0, 0.0]);
        let region = img(&[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let e = region_mean_error(&pred, &target, &region).double_value(&[]);
        assert!((e - 0.025).abs() < 1e-7, "{e}");
        // under-enhancement is pushed up everywhere in the region, nowhere else
        let p = pred.detach().set_requires_grad(true);
        region_mean_error(&p, &target, &region).backward();
        let g = Vec::<f32>::try_from(p.grad().reshape([-1])).unwrap();
        assert!(g[0] < 0.0 && g[1] < 0.0 && g[0] == g[1], "{g:?}");
        assert!(g[2..].iter().all(|&v| v == 0.0), "{g:?}");
    }

    /// The drift: an offset over the kept pixels scores its size, a checkerboard of zero mean
    /// nearly nothing, and whatever lies outside the kept pixels nothing at all.
    #[test]
    fn the_drift_is_the_local_mean_offset_over_the_kept_pixels() {
        let img = |f: &dyn Fn(i64, i64) -> f32| {
            let v: Vec<f32> = (0..16 * 16).map(|i| f(i / 16, i % 16)).collect();
            Tensor::from_slice(&v).reshape([1, 1, 16, 16])
        };
        let ncct = img(&|_, _| 0.1);
        // kept: the left half; the right half holds a large enhancement
        let kept = img(&|_, x| f32::from(u8::from(x < 8)));
        let value = |fake: &Tensor| drift_loss(fake, &ncct, &kept, 2).double_value(&[]);
        let offset = img(&|_, x| if x < 8 { 0.13 } else { 0.9 });
        assert!((value(&offset) - 0.03).abs() < 1e-6, "{}", value(&offset));
        let texture = img(&|y, x| match x < 8 {
            true => 0.1 + if (x + y) % 2 == 0 { 0.05 } else { -0.05 },
            false => 0.9,
        });
        assert!(value(&texture) < 0.005, "{}", value(&texture));
        assert_eq!(value(&img(&|_, x| if x < 8 { 0.1 } else { 0.9 })), 0.0);
    }

    /// `weight_at`: linear from `weight / ramp_steps` at step 1 to `weight` at step
    /// `ramp_steps`, then constant; without a ramp, `weight` throughout.
    #[test]
    fn the_identity_weight_ramps_linearly_to_its_value() {
        let c = IdentityConfig {
            weight: 8.0,
            ramp_steps: 4,
            ..Default::default()
        };
        let at: Vec<f64> = (1..=6).map(|s| c.weight_at(s)).collect();
        assert_eq!(at, [2.0, 4.0, 6.0, 8.0, 8.0, 8.0]);
        let constant = IdentityConfig {
            weight: 8.0,
            ..Default::default()
        };
        assert_eq!(constant.weight_at(1), 8.0);
    }

    /// `quantile_at`: linear from the quantile at step 1 to 0.5 after `quantile_decay_steps`;
    /// without a decay the quantile throughout.
    #[test]
    fn the_quantile_decays_linearly_to_the_median() {
        let c = ContrastConfig {
            quantile: 0.9,
            quantile_decay_steps: 4,
            ..Default::default()
        };
        let at: Vec<f64> = (1..=6).map(|s| c.quantile_at(s)).collect();
        let want = [0.9, 0.8, 0.7, 0.6, 0.5, 0.5];
        assert!(
            at.iter().zip(want).all(|(a, w)| (a - w).abs() < 1e-12),
            "{at:?}"
        );
        let constant = ContrastConfig {
            quantile: 0.9,
            ..Default::default()
        };
        assert_eq!(constant.quantile_at(1_000_000), 0.9);
    }

    /// One pixel trained against four pairs, a vessel under it in one (target 0.8, else 0):
    /// the plain L1 settles on the dark median; `L1 + (2q - 1) * shift` inside the region
    /// settles on the q-quantile (bright from q > 3/4), and outside the region stays the L1.
    #[test]
    fn the_quantile_shift_turns_the_regions_l1_into_the_pinball_loss() {
        let targets = Tensor::from_slice(&[0.8f32, 0.0, 0.0, 0.0]).reshape([4, 1, 1, 1]);
        let ones = Tensor::ones([4, 1, 1, 1], (Kind::Float, tch::Device::Cpu));
        let loss = |pred: f32, q: f64, region: &Tensor| {
            let p = Tensor::full(
                [4, 1, 1, 1],
                f64::from(pred),
                (Kind::Float, tch::Device::Cpu),
            );
            let l1 = (&p - &targets).abs().mean(Kind::Float);
            (l1 + quantile_shift(&p, &targets, region, &ones) * (2.0 * q - 1.0)).double_value(&[])
        };
        let argmin = |q: f64, region: &Tensor| {
            let grid: Vec<f32> = (0..=80).map(|i| i as f32 / 100.0).collect();
            let best = grid
                .iter()
                .copied()
                .min_by(|&a, &b| loss(a, q, region).partial_cmp(&loss(b, q, region)).unwrap());
            best.unwrap()
        };
        let zeros = ones.zeros_like();
        assert_eq!(argmin(0.5, &ones), 0.0);
        assert_eq!(argmin(0.7, &ones), 0.0);
        assert_eq!(argmin(0.8, &ones), 0.8);
        assert_eq!(argmin(0.8, &zeros), 0.0);
        // the pinball loss itself: 2 q e for a dark prediction, 2 (1 - q) |e| for a bright one
        let one = |pred: f32, target: f32, q: f64| {
            let (p, t) = (
                Tensor::from_slice(&[pred]).reshape([1, 1, 1, 1]),
                Tensor::from_slice(&[target]).reshape([1, 1, 1, 1]),
            );
            let w = Tensor::from_slice(&[3.0f32]).reshape([1, 1, 1, 1]);
            let l1 = (&p - &t).abs().mean(Kind::Float);
            (l1 + quantile_shift(&p, &t, &w.ones_like(), &w) * (2.0 * q - 1.0)).double_value(&[])
        };
        assert!((one(0.2, 0.6, 0.75) - 2.0 * 0.75 * 0.4).abs() < 1e-6);
        assert!((one(0.6, 0.2, 0.75) - 2.0 * 0.25 * 0.4).abs() < 1e-6);
    }

    #[test]
    fn the_peak_error_forgives_a_pixel_of_shift_but_not_a_dim_or_wider_vessel() {
        let row = |v: &[f32]| Tensor::from_slice(v).reshape([1, 1, 1, v.len() as i64]);
        let mask = row(&[1.0; 7]);
        let target = row(&[0.0, 0.0, 0.0, 0.8, 0.0, 0.0, 0.0]);
        let e = |pred: &Tensor, px| peak_error(pred, &target, &mask, px).double_value(&[]);
        // the vessel one pixel off: no error within 1 px (L1 would count 1.6 / 7)
        let shifted = row(&[0.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.0]);
        assert!(e(&shifted, 1).abs() < 1e-7, "{}", e(&shifted, 1));
        // two pixels off: unsupported at 1, unmet at 3 -> 2 x 0.8 / 7; nothing within 2 px
        let far = row(&[0.0, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert!((e(&far, 1) - 1.6 / 7.0).abs() < 1e-6, "{}", e(&far, 1));
        assert!(e(&far, 2).abs() < 1e-7, "{}", e(&far, 2));
        // dim by 0.4 where it lies: the target's peak misses 0.4 -> 0.4 / 7
        let dim = row(&[0.0, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0]);
        assert!((e(&dim, 1) - 0.4 / 7.0).abs() < 1e-6, "{}", e(&dim, 1));
        // two pixels wider on each side: the outer pixels have no target within 1 px
        let wide = row(&[0.0, 0.8, 0.8, 0.8, 0.8, 0.8, 0.0]);
        assert!((e(&wide, 1) - 1.6 / 7.0).abs() < 1e-6, "{}", e(&wide, 1));
        // the dim vessel's gradient reaches its brightest pixel only, upwards
        let p = dim.detach().set_requires_grad(true);
        peak_error(&p, &target, &mask, 1).backward();
        let g = Vec::<f32>::try_from(p.grad().reshape([-1])).unwrap();
        assert!(g[3] < 0.0, "{g:?}");
        assert!(
            g.iter().enumerate().all(|(i, &v)| i == 3 || v == 0.0),
            "{g:?}"
        );
        // only the mask counts; an empty mask gives 0, not NaN
        let left = row(&[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!((peak_error(&far, &target, &left, 1).double_value(&[]) - 0.8 / 3.0).abs() < 1e-6);
        let none = row(&[0.0; 7]);
        assert_eq!(peak_error(&dim, &target, &none, 1).double_value(&[]), 0.0);
    }

    #[test]
    fn the_volume_region_is_the_training_region_slice_by_slice() {
        // random HU volumes with bright spots: validation's region of a whole [z, y, x]
        // volume must be training's region of its slices as one batch
        // more slices than one chunk, so the chunks must join up
        let (nz, ny, nx) = (REGION_CHUNK as i64 + 7, 17, 13);
        let ncct = Tensor::randn([nz, ny, nx], (Kind::Float, tch::Device::Cpu)) * 200.0;
        let ctpa =
            &ncct + Tensor::rand([nz, ny, nx], (Kind::Float, tch::Device::Cpu)).gt(0.9) * 400.0;
        let body = Tensor::rand([nz, ny, nx], (Kind::Float, tch::Device::Cpu))
            .gt(0.1)
            .to_kind(Kind::Float);
        let arr = |t: &Tensor| {
            let v = Vec::<f32>::try_from(t.reshape([-1])).unwrap();
            Array3::from_shape_vec((nz as usize, ny as usize, nx as usize), v).unwrap()
        };
        let body_u8 = arr(&body).mapv(|v| v as u8);
        for motion in [0, 1, 3] {
            let got = contrast_region_volume(
                arr(&ncct).view(),
                arr(&ctpa).view(),
                body_u8.view(),
                100.0,
                motion,
            )
            .unwrap();
            let want = contrast_region(
                &ncct.unsqueeze(1),
                &ctpa.unsqueeze(1),
                &body.unsqueeze(1),
                100.0,
                motion,
            );
            assert_eq!(
                got.mapv(f32::from),
                arr(&want.squeeze_dim(1)),
                "motion {motion}"
            );
            assert!(
                got.iter().any(|&v| v == 1),
                "motion {motion}: an empty region tests nothing"
            );
        }
    }

    #[test]
    fn the_spared_lung_structures_are_the_ncct_bright_lung_pixels_grown() {
        // pixel 2: a vessel in the lung; pixel 6: as bright but outside the lung (mediastinum)
        let ncct = t(&[-0.9, -0.9, 0.1, -0.9, -0.9, -0.9, 0.1, -0.9]);
        let lung = t(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        let v = |r: Tensor| Vec::<f32>::try_from(r.reshape([-1])).unwrap();
        let s = lung_structures(&ncct, &lung, -0.5, 0);
        assert_eq!(v(s), vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let s = lung_structures(&ncct, &lung, -0.5, 1);
        assert_eq!(v(s), vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // above every pixel: nothing is spared
        let s = lung_structures(&ncct, &lung, 0.5, 1);
        assert_eq!(v(s), vec![0.0; 8]);
    }

    #[test]
    fn only_unchanged_body_tissue_counts() {
        let ncct = t(&[0.0, 0.0, 0.0, 0.0]);
        let region = t(&[0.0, 1.0, 0.0, 0.0]); // contrast at pixel 1
        let body = t(&[1.0, 1.0, 1.0, 0.0]); // pixel 3 is outside the body
        let fake = t(&[0.2, 0.9, 0.4, 0.7]);
        // pixels 0 and 2 count -> (0.2 + 0.4) / 2
        let l = identity_loss(&fake, &ncct, &region, &body).double_value(&[]);
        assert!((l - 0.3).abs() < 1e-6, "{l}");
        // nothing left -> 0
        let all = t(&[1.0, 1.0, 1.0, 1.0]);
        assert_eq!(
            identity_loss(&fake, &ncct, &all, &body).double_value(&[]),
            0.0
        );
        // the gradient reaches G's output only where the term counts
        let f = fake.detach().set_requires_grad(true);
        identity_loss(&f, &ncct, &region, &body).backward();
        let g = Vec::<f32>::try_from(f.grad().reshape([-1])).unwrap();
        assert_eq!(g, vec![0.5, 0.0, 0.5, 0.0]);
    }
}
