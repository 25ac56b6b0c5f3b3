//! One RegGAN training step.
//!
//! In RegGAN's order (Kong et al. 2021, `Reg-GAN/trainer/CycTrainer.py`, the regist branch):
//! 1. **G and R**, on one loss and one optimizer:
//!    `fake = G(x)`, `flow = R(fake, y)`, `reg = warp(fake, flow)`;
//!    `loss = recon(reg, y; lung weights) + adv_w * adv_G(D(fake)) + smooth_w * smooth(flow)`.
//!    Without registration (`registration = false`): `recon(fake, y)` and no smoothness.
//! 2. **D**, on real vs the detached fake of step 1:
//!    `loss_D = adv_w * adv_D(D(y), D(fake.detach()))`, real and fake in one forward pass. (RegGAN re-runs the updated G under
//!    `no_grad` for this; reusing step 1's output saves a forward pass and is the
//!    pix2pix/CycleGAN practice.)
//!
//! With progressive training (`[progressive]`, [`crate::phases`]) the early steps leave out
//! R (recon of `fake` itself) and/or D (no adversarial term, no D update). With R1 (`[r1]`,
//! [`model::r1`]) the D loss gains `(gamma / 2) * E ||grad_y D(y)||^2` on its R1 steps.
//!
//! Every loss term is read back and checked before any backward pass: a non-finite term stops
//! the step with [`NonFinite`] naming it, before it can reach the weights.
//!
//! The step reseeds libtorch's RNG from `(seed, step)` first, so whatever randomness the
//! networks use (dropout, if a config adds it) is a function of the step, and a resumed run
//! repeats the uninterrupted one without saving libtorch's generator state.

use crate::config::TrainConfig;
use crate::image_losses::image_losses;
use crate::nets::{Nets, Optimizers, GENERATOR, REGISTRATION};
use crate::tensors::array_to_tensor;
use dataset::sampler::Batch;
use model::losses::{discriminator_adversarial, generator_adversarial, smoothness};
use model::warp::warp;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// A batch on the device, `[batch, 1, height, width]` each.
#[derive(Debug)]
pub struct BatchTensors {
    /// NCCT in [-1, 1].
    pub x: Tensor,
    /// CTPA in [-1, 1].
    pub y: Tensor,
    /// Lung mask, 0/1.
    pub lung: Tensor,
    /// Body mask, 0/1.
    pub body: Tensor,
}

impl BatchTensors {
    /// Copies a loader batch to `device`.
    pub fn from_batch(b: &Batch, device: Device) -> anyhow::Result<Self> {
        let t = |a| array_to_tensor(a, device);
        Ok(Self {
            x: t(&b.ncct)?,
            y: t(&b.ctpa)?,
            lung: t(&b.lung)?,
            body: t(&b.body)?,
        })
    }
}

/// What one step measured (all host `f64`). Loss terms are unweighted unless named `loss_*`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// Total G+R loss (weighted sum).
    pub loss_g: f64,
    /// Lung-weighted L1 of the (registered) output, before `l1_weight`.
    pub l1: f64,
    /// Lung-weighted `1 - SSIM`, before `ssim_weight`.
    pub ssim: f64,
    /// Generator adversarial term, before `adversarial_weight`.
    pub adv_g: f64,
    /// Flow smoothness, before `smoothness_weight` (0 without R).
    pub smooth: f64,
    /// D loss (weighted), the R1 penalty included on R1 steps; 0 before D trains
    /// (progressive training).
    pub loss_d: f64,
    /// R1: `E ||grad_y D(y)||^2` on D's real inputs, before `(gamma / 2) * every`; `None` on
    /// steps without the penalty (R1 off, or lazy R1 between its steps; null in
    /// `metrics.jsonl`).
    pub r1: Option<f64>,
    /// Mean D logit on real and on fake images.
    pub d_real: f64,
    pub d_fake: f64,
    /// Mean and max |flow| in pixels (0 without R).
    pub flow_mean: f64,
    pub flow_max: f64,
    /// Gradient L2 norms (only when requested; else 0).
    pub grad_g: f64,
    pub grad_r: f64,
    pub grad_d: f64,
    /// Perceptual (VGG feature) distance, before its weight (0 when off).
    pub perceptual: f64,
    /// The lung weight of this step (the curriculum's, else `loss.lung_weight`).
    pub lung_weight: f64,
}

/// A loss term that is NaN or infinite.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the {term} loss is not finite ({value}) at step {step}")]
pub struct NonFinite {
    pub step: u64,
    pub term: &'static str,
    pub value: f64,
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

/// Global L2 norm of the gradients of `vars` (those that have one).
fn grad_norm(vars: &[Tensor]) -> f64 {
    let _guard = tch::no_grad_guard();
    let mut sq = 0.0;
    for v in vars {
        let g = v.grad();
        if g.defined() {
            sq += scalar(&g.square().sum(Kind::Double));
        }
    }
    sq.sqrt()
}

/// One step on `batch`: updates G+R, then D. `step` is 1-based (the step being taken);
/// `lr_factor` scales both optimizers' configured learning rates; `want_grad_norms` computes
/// the gradient norms (a few extra reductions, so only on logging steps).
pub fn train_step(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    step: u64,
    lr_factor: f64,
    want_grad_norms: bool,
) -> Result<StepStats, NonFinite> {
    tch::manual_seed(step_seed(cfg.seed, step));
    opts.gr.set_lr(cfg.optim.generator.lr * lr_factor);
    opts.d.set_lr(cfg.optim.discriminator.lr * lr_factor);
    let loss_cfg = &cfg.loss;
    let check = |term: &'static str, t: &Tensor| -> Result<f64, NonFinite> {
        let value = scalar(t);
        if value.is_finite() {
            Ok(value)
        } else {
            Err(NonFinite { step, term, value })
        }
    };
    let mut stats = StepStats::default();
    let phase = cfg.progressive.phase_at(step);
    // Mixed precision (crate::amp): forward passes autocast, outputs and losses in fp32.
    let amp = crate::amp::Autocast::new(cfg.amp, batch.x.device());

    // 1. G and R. D's weights take no gradient from this loss.
    nets.d_store.freeze();
    opts.gr.zero_grad();
    // [batch, 1, height, width]
    let fake = amp.run(|| nets.g.forward_t(&batch.x, true));
    let (registered, smooth) = match nets.r.as_ref().filter(|_| phase.trains_registration()) {
        Some(r) => {
            // [batch, 2, height, width], pixels
            let flow = amp.run(|| r.forward_t(&fake, &batch.y, true));
            let mag = flow
                .detach()
                .square()
                .sum_dim_intlist(1, false, Kind::Float)
                .sqrt();
            stats.flow_mean = scalar(&mag.mean(Kind::Float));
            stats.flow_max = scalar(&mag.max());
            let smooth = smoothness(&flow).map_err(|_| NonFinite {
                step,
                term: "smoothness (bad flow shape)",
                value: f64::NAN,
            })?;
            (warp(&fake, &flow), Some(smooth))
        }
        None => (fake.shallow_clone(), None),
    };
    // Reconstruction (multi-resolution, curriculum lung weight) + perceptual.
    let image = image_losses(
        &registered,
        &batch.y,
        &batch.lung,
        cfg,
        nets.perceptual.as_ref(),
        step,
    )
    .map_err(|e| {
        tracing::error!("step {step}: {e}");
        NonFinite {
            step,
            term: e.term(),
            value: f64::NAN,
        }
    })?;
    let recon = &image.recon;
    stats.lung_weight = image.lung_weight;
    // D judges G's output only once it trains (crate::phases)
    let adv_g = phase.trains_discriminator().then(|| {
        let d_fake_for_g = amp.run(|| nets.d.forward_t(&nets.d.input(&fake, &batch.x), true));
        generator_adversarial(loss_cfg.adversarial, &d_fake_for_g)
    });
    let mut loss_g = match &adv_g {
        Some(a) => &image.total + a * loss_cfg.adversarial_weight,
        // a new tensor: the `+=` below must not write into image.total
        None => image.total.copy(),
    };
    if let Some(s) = &smooth {
        loss_g += s * loss_cfg.smoothness_weight;
    }
    if cfg.debug.inject_nan_at_step == Some(step) {
        loss_g *= f64::NAN;
    }
    stats.l1 = check("l1", &recon.l1)?;
    stats.ssim = check("ssim", &recon.ssim)?;
    if let Some(p) = &image.perceptual {
        stats.perceptual = check("perceptual", p)?;
    }
    if let Some(a) = &adv_g {
        stats.adv_g = check("adversarial (G)", a)?;
    }
    if let Some(s) = &smooth {
        stats.smooth = check("smoothness", s)?;
    }
    stats.loss_g = check("total G+R", &loss_g)?;
    // scaled by the f16 loss scale, then unscaled before any use of the gradients
    opts.scaler.backward(&loss_g);
    let gr_finite = opts.scaler.unscale(&nets.gr_store.trainable_variables());
    if want_grad_norms {
        stats.grad_g = grad_norm(&nets.gr_variables(GENERATOR));
        stats.grad_r = grad_norm(&nets.gr_variables(REGISTRATION));
    }
    if gr_finite {
        opts.gr.step();
    }
    nets.d_store.unfreeze();
    if !phase.trains_discriminator() {
        opts.scaler.update();
        // crate::phases: before D joins it is neither run nor stepped (no Adam update at all)
        return Ok(stats);
    }

    // 2. D on real vs the detached fake.
    opts.d.zero_grad();
    let fake = fake.detach();
    // Real and fake go through D in one forward pass (concatenated along the batch; D's
    // instance norm is per image, so this equals two passes): one power iteration per D
    // update, and the spectral-norm vectors the graph saved are not changed in place by a
    // second forward before the backward pass.
    let n = batch.y.size()[0];
    // On R1 steps the real image is a leaf that requires a gradient (model::r1).
    let r1_now = cfg.r1.active_at(step);
    let real = if r1_now {
        batch.y.detach().copy().set_requires_grad(true)
    } else {
        batch.y.shallow_clone()
    };
    let d_in = Tensor::cat(
        &[nets.d.input(&real, &batch.x), nets.d.input(&fake, &batch.x)],
        0,
    );
    // [2 * batch, 1, h', w']
    let d_out = amp.run(|| nets.d.forward_t(&d_in, true));
    let d_real = d_out.narrow(0, 0, n);
    let d_fake = d_out.narrow(0, n, n);
    let mut loss_d = discriminator_adversarial(loss_cfg.adversarial, &d_real, &d_fake)
        * loss_cfg.adversarial_weight;
    if r1_now {
        // E ||grad_y D(y)||^2 by double backward; its gradient reaches D's weights below
        let r1 = model::r1::mean_squared_gradient(&d_real, &real).map_err(|e| {
            tracing::error!("step {step}: {e}");
            NonFinite {
                step,
                term: "R1 penalty (autograd)",
                value: f64::NAN,
            }
        })?;
        stats.r1 = Some(check("R1 penalty", &r1)?);
        loss_d += r1 * cfg.r1.weight();
    }
    stats.loss_d = check("discriminator", &loss_d)?;
    stats.d_real = scalar(&d_real.detach().mean(Kind::Float));
    stats.d_fake = scalar(&d_fake.detach().mean(Kind::Float));
    opts.scaler.backward(&loss_d);
    let d_finite = opts.scaler.unscale(&nets.d_store.trainable_variables());
    if want_grad_norms {
        stats.grad_d = grad_norm(&nets.d_store.trainable_variables());
    }
    if d_finite {
        opts.d.step();
    }
    opts.scaler.update();
    Ok(stats)
}

/// libtorch's seed for step `step` of a run seeded `seed` (splitmix64 of the pair, kept
/// non-negative for `manual_seed`).
pub fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 1) as i64
}
