//! The R1 gradient penalty on the discriminator's real inputs (Mescheder, Geiger and Nowozin
//! 2018, "Which training methods for GANs do actually converge?"):
//!
//! ```text
//! R1 = (gamma / 2) * E_real[ || grad_x D(x) ||^2 ]
//! ```
//!
//! It penalises D's slope on the data, which stops D from pushing its decision boundary
//! arbitrarily steep around the real images and makes GAN training locally convergent. It is
//! an alternative (or a complement) to spectral norm, which bounds D's Lipschitz constant
//! everywhere by construction (`DiscriminatorConfig::spectral_norm`).
//!
//! # Computation
//! Exactly, by double backward: the gradient of D's output with respect to the real input is
//! taken with `create_graph = true` (`torch.autograd.grad(..., create_graph=True)`), so the
//! penalty is itself a differentiable function of D's weights and its gradient reaches them
//! when the D loss is backpropagated. Every layer of D has a double backward in libtorch
//! (conv, instance/batch norm, leaky ReLU as `where`, and the spectral-norm division, whose
//! u and v are constants).
//!
//! D is a PatchGAN: its output is a map of patch logits [B, 1, h', w']. The penalty uses the
//! gradient of each image's *summed* patch logits (the usual `d_out.sum()` of R1 code, which
//! for a per-image scalar D is exactly Mescheder's definition); `E` is the mean over the batch
//! of the per-image squared norm over all input pixels and channels.
//!
//! # Lazy regularisation
//! StyleGAN2 (Karras et al. 2020, appendix B) computes the penalty only every `k`-th D update
//! and multiplies it by `k`, which keeps the same average strength at 1/k of the cost:
//! [`R1Config::active_at`] and [`R1Config::weight`].

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use thiserror::Error;

/// Errors of the R1 penalty.
#[derive(Debug, Error)]
pub enum R1Error {
    #[error("invalid R1 configuration: {0}")]
    InvalidConfig(String),
    #[error("R1: the real input must require a gradient (call `set_requires_grad(true)` on it before D's forward)")]
    InputNotTracked,
    #[error("R1: D's output does not depend on the real input (no gradient path from it)")]
    NotConnected,
    #[error("R1: the double backward failed: {0}")]
    Autograd(#[from] tch::TchError),
}

/// R1 settings (`[r1]` of the training config). Off by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct R1Config {
    /// gamma: the penalty is `(gamma / 2) * E ||grad||^2`. 0 turns R1 off. Mescheder et al.
    /// and StyleGAN use 10 at this order of image size. Default: 0.
    pub gamma: f64,
    /// Compute the penalty every `every`-th step only (steps divisible by it), with its
    /// weight multiplied by `every` (StyleGAN2's lazy regularisation, which uses 16).
    /// 1: every step. Default: 1.
    pub every: u64,
}

impl Default for R1Config {
    fn default() -> Self {
        Self {
            gamma: 0.0,
            every: 1,
        }
    }
}

impl R1Config {
    /// Checks `gamma >= 0` (finite) and `every >= 1`.
    pub fn validate(&self) -> Result<(), R1Error> {
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(R1Error::InvalidConfig(format!(
                "gamma must be a finite number >= 0, got {}",
                self.gamma
            )));
        }
        if self.every == 0 {
            return Err(R1Error::InvalidConfig(
                "every must be at least 1 (1 = every step)".into(),
            ));
        }
        Ok(())
    }

    /// Whether R1 is on at all.
    pub fn enabled(&self) -> bool {
        self.gamma > 0.0
    }

    /// Whether the penalty is computed at (1-based) training step `step`: a pure function of
    /// the step, so a resumed run regularises on the same steps.
    pub fn active_at(&self, step: u64) -> bool {
        self.enabled() && step.is_multiple_of(self.every.max(1))
    }

    /// The factor that multiplies `E ||grad||^2` on an active step: `gamma / 2 * every`.
    pub fn weight(&self) -> f64 {
        0.5 * self.gamma * self.every.max(1) as f64
    }
}

/// `E_batch[ || d(sum of d_out[b]) / d input[b] ||^2 ]`: the mean over the batch of the
/// squared L2 norm of the gradient of each image's summed D output with respect to its input,
/// with the graph kept (`create_graph`), so the result can be backpropagated into D's weights.
/// Multiply by [`R1Config::weight`] for the penalty.
///
/// `input` must be a leaf that requires a gradient and was fed (possibly concatenated with
/// other images along the batch, or with a condition along channels) through D to give
/// `d_out`; the gradient is taken with respect to `input` only.
///
/// # Shapes
/// `d_out`: any shape (the patch logits of the real images, [batch, 1, h', w']);
/// `input`: [batch, channels, height, width] -> scalar.
pub fn mean_squared_gradient(d_out: &Tensor, input: &Tensor) -> Result<Tensor, R1Error> {
    if !input.requires_grad() {
        return Err(R1Error::InputNotTracked);
    }
    let total = d_out.sum(Kind::Float);
    let mut grads = Tensor::f_run_backward(&[&total], &[input], true, true)?;
    // libtorch returns an undefined gradient for an input the output does not depend on
    let grad = match grads.pop() {
        Some(g) if g.defined() => g,
        _ => return Err(R1Error::NotConnected),
    };
    // [batch, channels, height, width] -> [batch] -> scalar
    let per_image = grad
        .square()
        .flatten(1, -1)
        .sum_dim_intlist(1, false, Kind::Float);
    let value = per_image.mean(Kind::Float);
    tracing::trace!(
        r1 = value.detach().to_kind(Kind::Double).double_value(&[]),
        "R1 mean squared gradient"
    );
    Ok(value)
}
