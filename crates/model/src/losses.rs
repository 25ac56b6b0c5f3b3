//! The training losses of RegGAN as adapted to chest CT: the lung-weighted L1 + SSIM
//! reconstruction loss between the registered generator output and the real CTPA, the
//! adversarial losses (LSGAN, hinge, BCE) and the smoothness of the displacement field.
//!
//! Every function takes and returns tch tensors and never reads a value back to the host, so a
//! training step on the GPU does not synchronise here; logging extracts values outside.
//! Shape checks use tensor metadata only.

use metrics::SsimParams;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};
use thiserror::Error;

use crate::perceptual::PerceptualConfig;
use crate::ssim;

/// Invalid input to a loss or to SSIM (programming or configuration errors caught before
/// libtorch would abort on them).
#[derive(Debug, Error)]
pub enum LossError {
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        what: &'static str,
        expected: String,
        got: Vec<i64>,
    },
    #[error("{what}: expected a floating-point tensor, got {got:?}")]
    Kind { what: &'static str, got: Kind },
    #[error("SSIM needs images of at least {win}x{win} pixels (its window), got {height}x{width}")]
    ImageTooSmall { height: i64, width: i64, win: i64 },
    #[error("invalid loss parameter: {0}")]
    InvalidParameter(String),
}

/// Weights of the losses. `Default` is the project's preset; every field has a serde default,
/// so a config file names only what it changes.
///
/// Why these defaults:
/// * `l1_weight = 20`: RegGAN's correction loss ("Corr_lamda" in its configs) is an L1 with
///   weight 20 next to adversarial 1 and smoothness 10; we keep that balance, so with
///   `ssim_weight = 0` and `lung_weight = 1` the reconstruction term is exactly RegGAN's.
/// * `ssim_weight = 10`: the product owner's design adds an SSIM term (1 - SSIM) to the L1. On
///   images in [-1, 1], 1 - SSIM between a blurry synthetic and the real image is typically
///   2-5x the L1 error (e.g. 0.2 vs 0.05), so half the L1 weight makes the two terms of the
///   same size early in training without letting SSIM, which ignores absolute HU offsets in
///   flat regions, dominate the intensity fidelity that L1 enforces.
/// * `lung_weight = 10`: the owner's design — pixels inside the lung mask count 10x, because
///   the pulmonary arteries the CTPA is read for occupy a small part of the slice.
/// * `adversarial = lsgan`, `adversarial_weight = 1`, `smoothness_weight = 10`: RegGAN.
/// * `ssim_data_range = 2`: the network sees images in [-1, 1] (DESIGN.md).
/// * `scale_weights = [1]`: the reconstruction loss at full resolution only (off until the
///   multi-resolution variant is measured to help).
/// * `perceptual`: off (`relative_weight = 0`); it needs a VGG weights file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Weight of the lung-weighted L1 term in [`Recon::total`].
    pub l1_weight: f64,
    /// Weight of the lung-weighted `1 - SSIM` term in [`Recon::total`].
    pub ssim_weight: f64,
    /// Per-pixel weight inside the lung mask (1 outside); 1 disables the lung weighting.
    pub lung_weight: f64,
    /// Data range used for SSIM's constants (2.0 for images in [-1, 1]).
    pub ssim_data_range: f64,
    /// Adversarial loss formulation.
    pub adversarial: AdversarialKind,
    /// Weight of the generator's adversarial term (the trainer applies it; the D loss uses it
    /// too, as RegGAN does).
    pub adversarial_weight: f64,
    /// Weight of the displacement-field smoothness term (the trainer applies it).
    pub smoothness_weight: f64,
    /// Multi-resolution reconstruction: the weight of the L1 + SSIM terms at full resolution,
    /// 1/2, 1/4, ... (each level average-pools the previous one by 2; see [`reconstruction`]).
    /// `[1.0]` is the single-resolution loss; e.g. `[1.0, 0.5, 0.25]` adds the coarser levels.
    /// Every level up to the last non-zero weight must keep SSIM's 11 px window inside the
    /// image ([`LossConfig::check_image_size`]).
    pub scale_weights: Vec<f64>,
    /// The perceptual (VGG feature) loss, applied by the trainer (see [`crate::perceptual`]).
    pub perceptual: PerceptualConfig,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            l1_weight: 20.0,
            ssim_weight: 10.0,
            lung_weight: 10.0,
            ssim_data_range: 2.0,
            adversarial: AdversarialKind::Lsgan,
            adversarial_weight: 1.0,
            smoothness_weight: 10.0,
            scale_weights: vec![1.0],
            perceptual: PerceptualConfig::default(),
        }
    }
}

impl LossConfig {
    /// Checks that the weights are finite and non-negative, `lung_weight` is positive (so every
    /// pixel keeps a positive weight) and the SSIM data range is positive.
    pub fn validate(&self) -> Result<(), LossError> {
        let weights = [
            ("l1_weight", self.l1_weight),
            ("ssim_weight", self.ssim_weight),
            ("adversarial_weight", self.adversarial_weight),
            ("smoothness_weight", self.smoothness_weight),
        ];
        for (name, value) in weights {
            if !(value.is_finite() && value >= 0.0) {
                return Err(LossError::InvalidParameter(format!(
                    "{name} must be finite and >= 0, got {value}"
                )));
            }
        }
        for (name, value) in [
            ("lung_weight", self.lung_weight),
            ("ssim_data_range", self.ssim_data_range),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(LossError::InvalidParameter(format!(
                    "{name} must be finite and > 0, got {value}"
                )));
            }
        }
        if self.scale_weights.is_empty() || self.scale_weights.len() > MAX_SCALES {
            return Err(LossError::InvalidParameter(format!(
                "scale_weights must have 1 to {MAX_SCALES} values (full resolution first), got {}",
                self.scale_weights.len()
            )));
        }
        if self
            .scale_weights
            .iter()
            .any(|w| !(w.is_finite() && *w >= 0.0))
        {
            return Err(LossError::InvalidParameter(format!(
                "scale_weights must be finite and >= 0, got {:?}",
                self.scale_weights
            )));
        }
        self.perceptual
            .validate()
            .map_err(|e| LossError::InvalidParameter(e.to_string()))?;
        Ok(())
    }

    /// Number of resolution levels that are computed: up to the last non-zero scale weight.
    pub fn active_scales(&self) -> usize {
        self.scale_weights
            .iter()
            .rposition(|&w| w != 0.0)
            .map_or(1, |i| i + 1)
    }

    /// Checks that training images of `height` x `width` suit the losses: the coarsest active
    /// reconstruction level (`size / 2^(levels - 1)`, rounded down by each pooling) must hold
    /// SSIM's window, and the perceptual layers need `2^poolings` pixels. The trainer calls this
    /// with the crop size when the config is validated, so a misfit is reported before step 1.
    pub fn check_image_size(&self, height: i64, width: i64) -> Result<(), LossError> {
        let win = SsimParams::default().win_size() as i64;
        let levels = self.active_scales();
        let (mut h, mut w) = (height, width);
        for _ in 1..levels {
            h /= 2;
            w /= 2;
        }
        if h < win || w < win {
            return Err(LossError::InvalidParameter(format!(
                "scale_weights has {levels} active levels: the coarsest (1/{}) of a {height}x{width} \
                 image is {h}x{w}, smaller than SSIM's {win}x{win} window; use fewer levels (set \
                 the trailing weights to 0) or images of at least {}x{} pixels",
                1 << (levels - 1),
                win << (levels - 1),
                win << (levels - 1),
            )));
        }
        if self.perceptual.enabled() {
            let min = self.perceptual.min_image_size();
            if height < min || width < min {
                return Err(LossError::InvalidParameter(format!(
                    "perceptual.layers need images of at least {min}x{min} pixels, got \
                     {height}x{width}"
                )));
            }
        }
        Ok(())
    }
}

/// Most resolution levels of the multi-resolution loss (full, 1/2, ..., 1/16).
pub const MAX_SCALES: usize = 5;

/// The reconstruction loss and its parts (scalar tensors, differentiable).
#[derive(Debug)]
pub struct Recon {
    /// Lung-weighted mean absolute error, `sum(w |p - t|) / sum(w)` (before `l1_weight`); with
    /// several resolution levels, the scale-weighted sum `sum_s a_s l1_s`.
    pub l1: Tensor,
    /// Lung-weighted SSIM loss, `1 - sum(w S) / sum(w)` over SSIM's valid region (before
    /// `ssim_weight`); with several levels, `sum_s a_s ssim_s`.
    pub ssim: Tensor,
    /// `l1_weight * l1 + ssim_weight * ssim`.
    pub total: Tensor,
    /// The unweighted terms of each computed level (full resolution first), as (l1, ssim);
    /// levels after the last non-zero scale weight are not computed.
    pub levels: Vec<(Tensor, Tensor)>,
}

/// Per-pixel weights `w = 1 + (lung_weight - 1) * mask`.
///
/// # Shapes
/// `lung_mask`: `[batch, 1, height, width]` -> `[batch, 1, height, width]` (float32).
pub fn lung_weights(lung_mask: &Tensor, lung_weight: f64) -> Tensor {
    lung_mask.to_kind(Kind::Float) * (lung_weight - 1.0) + 1.0
}

/// The reconstruction L1's per-pixel weights: [`lung_weights`], raised to `floor` where it is
/// higher (the contrast region's weight, `train::contrast`).
///
/// # Shapes
/// `lung_mask`, `floor`: `[batch, 1, height, width]` -> the same (float32).
pub fn pixel_weights(lung_mask: &Tensor, lung_weight: f64, floor: Option<&Tensor>) -> Tensor {
    let w = lung_weights(lung_mask, lung_weight);
    match floor {
        Some(f) => w.maximum(&f.to_kind(Kind::Float)),
        None => w,
    }
}

/// Halves the resolution: 2x2 average pooling, stride 2 (odd trailing rows/columns dropped).
///
/// # Shapes
/// `x`: `[batch, c, height, width]` -> `[batch, c, height / 2, width / 2]`.
pub fn downsample(x: &Tensor) -> Tensor {
    x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
}

/// The lung-weighted L1 + SSIM reconstruction loss between the (registered) generator output
/// and the target, at one or several resolutions.
///
/// Each pixel weighs `w = 1 + (lung_weight - 1) * mask`; both terms are weighted means
/// (divided by the sum of the weights), so the loss stays on the scale of a plain mean whatever
/// the size of the lung in the slice: a slice without lung gives the plain L1 and SSIM, and a
/// uniform error gives the same L1 with any mask. The SSIM term uses the weight map cropped to
/// SSIM's valid region (see [`ssim::weighted_ssim`]). A soft (fractional) mask works as a soft
/// weight.
///
/// Multi-resolution (`cfg.scale_weights = [a_0, a_1, ...]`): level `s` compares the images
/// average-pooled `s` times by 2; its mask is the mask pooled the same way (the fraction of
/// lung in each coarse pixel), and its weight map `1 + (lung_weight - 1) * pooled_mask`, so a
/// coarse pixel half in the lung weighs halfway. `l1 = sum_s a_s l1_s`, `ssim = sum_s a_s
/// ssim_s` (not normalised by `sum a_s`: the weights say how much each level adds). With the
/// default `[1]` this is exactly the single-resolution loss. Levels after the last non-zero
/// weight are not computed; a zero-weight level before it is computed (its pooling feeds the
/// next) but adds nothing.
///
/// # Shapes
/// * `pred`, `target`: `[batch, channels, height, width]` in [-1, 1] (channels = 1 here).
/// * `lung_mask`: `[batch, 1, height, width]`, 0/1 float.
/// * returns scalars `[]`.
pub fn reconstruction(
    pred: &Tensor,
    target: &Tensor,
    lung_mask: &Tensor,
    cfg: &LossConfig,
) -> Result<Recon, LossError> {
    reconstruction_floored(pred, target, lung_mask, None, cfg)
}

/// [`reconstruction`] with a floor under the weight map: each pixel weighs
/// `max(1 + (lung_weight - 1) * mask, floor)`, so a region outside the lungs (the contrast
/// region of the trainer's `[contrast]`) can weigh as much as the lungs. At coarser levels the
/// floor is average-pooled like the mask. `None` is exactly [`reconstruction`].
///
/// # Shapes
/// `floor`: `[batch, 1, height, width]`, like `lung_mask`.
pub fn reconstruction_floored(
    pred: &Tensor,
    target: &Tensor,
    lung_mask: &Tensor,
    floor: Option<&Tensor>,
    cfg: &LossConfig,
) -> Result<Recon, LossError> {
    cfg.validate()?;
    let size = pred.size();
    if size.len() != 4 || target.size() != size {
        return Err(LossError::Shape {
            what: "reconstruction target (must match the prediction)",
            expected: format!("{size:?}, 4D"),
            got: target.size(),
        });
    }
    let msize = lung_mask.size();
    if msize.len() != 4 || msize[0] != size[0] || msize[1] != 1 || msize[2..] != size[2..] {
        return Err(LossError::Shape {
            what: "lung mask",
            expected: format!("[{}, 1, {}, {}]", size[0], size[2], size[3]),
            got: msize,
        });
    }
    if let Some(f) = floor {
        if f.size() != msize {
            return Err(LossError::Shape {
                what: "weight floor (must match the lung mask)",
                expected: format!("{msize:?}"),
                got: f.size(),
            });
        }
    }
    let levels = cfg.active_scales();
    let (mut p, mut t) = (pred.shallow_clone(), target.shallow_clone());
    let mut mask = lung_mask.shallow_clone();
    let mut floor = floor.map(Tensor::shallow_clone);
    let mut parts = Vec::with_capacity(levels);
    let mut sums: Option<(Tensor, Tensor)> = None;
    for (level, &a) in cfg.scale_weights.iter().enumerate().take(levels) {
        if level > 0 {
            // [batch, channels, height / 2^level, width / 2^level]
            p = downsample(&p);
            t = downsample(&t);
            // [batch, 1, height / 2^level, width / 2^level]: lung fraction per coarse pixel
            mask = downsample(&mask.to_kind(pred.kind()));
            floor = floor.map(|f| downsample(&f.to_kind(pred.kind())));
            tracing::trace!(level, size = ?p.size(), "multi-resolution reconstruction level");
        }
        let (l1, ssim_term) = reconstruction_level(&p, &t, &mask, floor.as_ref(), cfg)?;
        if a != 0.0 {
            // A weight of 1 adds the level unscaled, so the default `[1]` is bitwise today's loss.
            let scale = |x: &Tensor| if a == 1.0 { x.shallow_clone() } else { x * a };
            let (sl1, sssim) = (scale(&l1), scale(&ssim_term));
            sums = Some(match sums {
                Some((l, s)) => (l + sl1, s + sssim),
                None => (sl1, sssim),
            });
        }
        parts.push((l1, ssim_term));
    }
    let (l1, ssim_term) = match sums {
        Some(s) => s,
        // Every scale weight is 0: a zero loss that still depends on the prediction.
        None => (pred.sum(pred.kind()) * 0.0, pred.sum(pred.kind()) * 0.0),
    };
    let total = &l1 * cfg.l1_weight + &ssim_term * cfg.ssim_weight;
    Ok(Recon {
        l1,
        ssim: ssim_term,
        total,
        levels: parts,
    })
}

/// The lung-weighted L1 and `1 - SSIM` at one resolution (shapes already checked).
fn reconstruction_level(
    pred: &Tensor,
    target: &Tensor,
    lung_mask: &Tensor,
    floor: Option<&Tensor>,
    cfg: &LossConfig,
) -> Result<(Tensor, Tensor), LossError> {
    let kind = pred.kind();
    // [batch, 1, height, width]
    let w = pixel_weights(lung_mask, cfg.lung_weight, floor).to_kind(kind);
    // [batch, channels, height, width]
    let w_full = w.expand_as(pred);
    let l1 = (&w_full * (pred - target).abs()).sum(kind) / w_full.sum(kind);
    let ssim_term = 1.0
        - ssim::weighted_ssim(
            pred,
            target,
            &w,
            cfg.ssim_data_range,
            &SsimParams::default(),
        )?;
    Ok((l1, ssim_term))
}

/// Which adversarial objective G and D play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdversarialKind {
    /// Least squares GAN (Mao et al. 2017), RegGAN's choice: D regresses real to 1 and fake to
    /// 0, G pushes fake to 1.
    #[default]
    Lsgan,
    /// Hinge loss (Miyato et al. 2018, as used with spectral norm).
    Hinge,
    /// The original non-saturating GAN loss, binary cross-entropy on logits.
    Bce,
}

/// Generator's adversarial loss on D's logits for generated images (mean over all patches).
///
/// * LSGAN: `mean((d_fake - 1)^2)` (RegGAN: `MSELoss(pred_fake, 1)`).
/// * hinge: `-mean(d_fake)`.
/// * BCE: `mean(softplus(-d_fake))`, i.e. BCE-with-logits against 1 (non-saturating).
///
/// # Shapes
/// `d_fake`: any shape, typically `[batch, 1, h, w]` patch logits -> `[]`.
pub fn generator_adversarial(kind: AdversarialKind, d_fake: &Tensor) -> Tensor {
    match kind {
        AdversarialKind::Lsgan => d_fake.mse_loss(&d_fake.ones_like(), Reduction::Mean),
        AdversarialKind::Hinge => -d_fake.mean(d_fake.kind()),
        AdversarialKind::Bce => bce_with_logits(d_fake, 1.0),
    }
}

/// Discriminator's adversarial loss, real and fake terms summed (not halved).
///
/// * LSGAN: `mean((d_real - 1)^2) + mean(d_fake^2)`. RegGAN's trainer sums the two MSE terms
///   without the 0.5 factor that pix2pix/CycleGAN apply; we follow RegGAN (with Adam the factor
///   only rescales the effective learning rate of D early on, but it changes the logged value).
/// * hinge: `mean(relu(1 - d_real)) + mean(relu(1 + d_fake))`.
/// * BCE: `BCEWithLogits(d_real, 1) + BCEWithLogits(d_fake, 0)`, each a mean.
///
/// # Shapes
/// `d_real`, `d_fake`: any shapes (each averaged on its own) -> `[]`.
pub fn discriminator_adversarial(
    kind: AdversarialKind,
    d_real: &Tensor,
    d_fake: &Tensor,
) -> Tensor {
    match kind {
        AdversarialKind::Lsgan => {
            d_real.mse_loss(&d_real.ones_like(), Reduction::Mean)
                + d_fake.mse_loss(&d_fake.zeros_like(), Reduction::Mean)
        }
        AdversarialKind::Hinge => {
            (d_real.neg() + 1.0).relu().mean(d_real.kind())
                + (d_fake + 1.0).relu().mean(d_fake.kind())
        }
        AdversarialKind::Bce => bce_with_logits(d_real, 1.0) + bce_with_logits(d_fake, 0.0),
    }
}

/// Mean binary cross-entropy of `logits` against a constant target (numerically stable form).
fn bce_with_logits(logits: &Tensor, target: f64) -> Tensor {
    let target = logits.full_like(target);
    logits.binary_cross_entropy_with_logits::<Tensor>(&target, None, None, Reduction::Mean)
}

/// Smoothness of a displacement field: `mean(dx^2) + mean(dy^2)` of the forward differences
/// along width and height, each mean over all its elements (batch, channels, positions).
///
/// This is exactly RegGAN's `smooothing_loss` (Kid-Liet/Reg-GAN, `trainer/utils.py`): it squares
/// the absolute forward differences and adds the two means. Note the sum of the two means, not
/// the mean over both directions, so a field varying equally in x and y scores twice the
/// one-direction value; keep this when comparing weights with RegGAN's `Smooth_lamda` 10.
///
/// # Shapes
/// `flow`: `[batch, 2, height, width]` (any channel count works), height and width >= 2 -> `[]`.
pub fn smoothness(flow: &Tensor) -> Result<Tensor, LossError> {
    let size = flow.size();
    if size.len() != 4 || size[2] < 2 || size[3] < 2 {
        return Err(LossError::Shape {
            what: "displacement field",
            expected: "[batch, 2, height >= 2, width >= 2]".into(),
            got: size,
        });
    }
    let (h, w) = (size[2], size[3]);
    let kind = flow.kind();
    // [batch, channels, height - 1, width]
    let dy = flow.narrow(2, 1, h - 1) - flow.narrow(2, 0, h - 1);
    // [batch, channels, height, width - 1]
    let dx = flow.narrow(3, 1, w - 1) - flow.narrow(3, 0, w - 1);
    Ok((&dx * &dx).mean(kind) + (&dy * &dy).mean(kind))
}
