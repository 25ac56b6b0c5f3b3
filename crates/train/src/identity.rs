//! `[identity]`: an identity-preserving term for tissue that must not change (#16 item 4).
//! Everywhere outside the contrast, a CTPA is its NCCT; a GAN still paints noise and texture
//! there. The term is the mean `|G(x) - x|` over the body pixels outside the contrast region,
//! where the region is `|CTPA - NCCT| > threshold` dilated by a few pixels (a max-pool), so
//! vessels that light up, and the edges that misalignment moves, are left to the
//! reconstruction loss.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The term's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Weight of the term in G+R's loss (0 = off; the L1 weight's scale, e.g. 10). Default: 0.
    pub weight: f64,
    /// |CTPA - NCCT| above this many HU is contrast (left out). Default: 100.
    pub contrast_threshold_hu: f64,
    /// The contrast region grows by this many pixels each way. Default: 3.
    pub dilation_px: usize,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            weight: 0.0,
            contrast_threshold_hu: 100.0,
            dilation_px: 3,
        }
    }
}

impl IdentityConfig {
    pub fn enabled(&self) -> bool {
        self.weight > 0.0
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.weight.is_finite() && self.weight >= 0.0,
            "identity.weight must be finite and >= 0, got {}",
            self.weight
        );
        anyhow::ensure!(
            self.contrast_threshold_hu.is_finite() && self.contrast_threshold_hu > 0.0,
            "identity.contrast_threshold_hu must be > 0, got {}",
            self.contrast_threshold_hu
        );
        anyhow::ensure!(
            self.dilation_px <= 64,
            "identity.dilation_px must be at most 64, got {}",
            self.dilation_px
        );
        Ok(())
    }
}

/// The mean `|fake - ncct|` over `body` pixels outside the dilated contrast region of
/// `|ctpa - ncct| > threshold` (images normalised, `threshold` in the same units); 0 when no
/// pixel is left. All `[batch, 1, height, width]` -> a scalar.
pub fn identity_loss(
    fake: &Tensor,
    ncct: &Tensor,
    ctpa: &Tensor,
    body: &Tensor,
    threshold: f64,
    dilation_px: usize,
) -> Tensor {
    let region = tch::no_grad(|| {
        let contrast = (ctpa - ncct).abs().gt(threshold).to_kind(Kind::Float);
        let d = dilation_px as i64;
        let grown = match d {
            0 => contrast,
            d => contrast.max_pool2d([2 * d + 1, 2 * d + 1], [1, 1], [d, d], [1, 1], false),
        };
        (grown.neg() + 1.0) * body
    });
    let kept = region.sum(Kind::Float);
    ((fake - ncct).abs() * &region).sum(Kind::Float) / kept.clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unchanged_body_tissue_counts() {
        let t = |v: &[f32]| Tensor::from_slice(v).reshape([1, 1, 1, 4]);
        let ncct = t(&[0.0, 0.0, 0.0, 0.0]);
        let ctpa = t(&[0.0, 0.5, 0.0, 0.0]); // contrast at pixel 1
        let body = t(&[1.0, 1.0, 1.0, 0.0]); // pixel 3 is outside the body
        let fake = t(&[0.2, 0.9, 0.4, 0.7]);
        // no dilation: pixels 0 and 2 count -> (0.2 + 0.4) / 2
        let l = identity_loss(&fake, &ncct, &ctpa, &body, 0.1, 0).double_value(&[]);
        assert!((l - 0.3).abs() < 1e-6, "{l}");
        // dilation 1 takes pixels 0 and 2 into the contrast region too: nothing left -> 0
        let l = identity_loss(&fake, &ncct, &ctpa, &body, 0.1, 1).double_value(&[]);
        assert_eq!(l, 0.0);
        // the gradient reaches G's output only where the term counts
        let f = fake.detach().set_requires_grad(true);
        identity_loss(&f, &ncct, &ctpa, &body, 0.1, 0).backward();
        let g = Vec::<f32>::try_from(f.grad().reshape([-1])).unwrap();
        assert_eq!(g, vec![0.5, 0.0, 0.5, 0.0]);
    }
}
