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
//! **One read-back per step.** Nothing is read to the host while the step's work is queued:
//! G+R's and D's forward and backward passes run first, then every loss term is checked on
//! the device (one `isfinite` over all of them), and the two Adam updates are queued
//! *gated by that flag* ([`model::optim::Adam::step_unless`], torch's fused Adam under a
//! GradScaler), so a NaN or inf never reaches the weights without the host having to look
//! first. Only then are the terms and statistics read back, in one transfer; a non-finite
//! term is reported as [`NonFinite`] naming it, with neither network updated. On a GPU the
//! device runs the whole step without waiting for the host; the read-back at the end is
//! the `loss.item()` a PyTorch loop does for its log.
//!
//! D's passes come before G+R's Adam update (RegGAN updates G first): D sees the detached
//! output of step 1 and not G's weights, so the order changes no value, and it lets one
//! flag cover both updates.
//!
//! [`train_step_with_laps`] reports the end of each [`Part`] to a [`Laps`] (the benchmark's
//! per-part profile times the trainer's own step this way).
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
use model::warp::warp_with;
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

/// The parts of a step, declared in the order they first end (for a profiler, through
/// [`Laps`]): `part as usize` is its index in [`Part::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Dropping the G+R and D gradients.
    ZeroGrad,
    GForward,
    /// R forward and the warp.
    RForward,
    /// Every loss computation (image losses, smoothness, adversarial, D's loss).
    Losses,
    /// D forward on the fake, for G's adversarial term.
    DForwardForG,
    /// G+R backward through the frozen D (and the amp unscale, gradient norms).
    GrBackward,
    /// D forward on real and fake, in one pass.
    DForward,
    /// D backward (and R1's double backward on its steps).
    DBackward,
    GrAdam,
    DAdam,
    /// The one read-back of every loss term and statistic.
    Readback,
}

impl Part {
    /// Every part, in the order they first end in a step.
    pub const ALL: [Part; 11] = [
        Part::ZeroGrad,
        Part::GForward,
        Part::RForward,
        Part::Losses,
        Part::DForwardForG,
        Part::GrBackward,
        Part::DForward,
        Part::DBackward,
        Part::GrAdam,
        Part::DAdam,
        Part::Readback,
    ];

    /// Short name (the benchmark's JSON key; the PyTorch twin uses the same names).
    pub fn name(self) -> &'static str {
        match self {
            Part::ZeroGrad => "zero_grad",
            Part::GForward => "g_forward",
            Part::RForward => "r_forward",
            Part::DForwardForG => "d_forward_for_g",
            Part::Losses => "losses",
            Part::GrBackward => "gr_backward",
            Part::DForward => "d_forward",
            Part::DBackward => "d_backward",
            Part::GrAdam => "gr_adam",
            Part::DAdam => "d_adam",
            Part::Readback => "readback",
        }
    }

    /// One line for a table.
    pub fn describe(self) -> &'static str {
        match self {
            Part::ZeroGrad => "drop the G+R and D gradients",
            Part::GForward => "G forward",
            Part::RForward => "R forward + warp",
            Part::DForwardForG => "D forward on the fake (G's adversarial term)",
            Part::Losses => "L1+SSIM, smoothness, adversarial and D losses",
            Part::GrBackward => "G+R backward (through frozen D)",
            Part::DForward => "D forward on real and fake (one pass)",
            Part::DBackward => "D backward",
            Part::GrAdam => "Adam step of G+R (gated on the device)",
            Part::DAdam => "Adam step of D (gated on the device)",
            Part::Readback => "the one read-back of losses and statistics",
        }
    }
}

/// Told when each part of a step ends (a part may end more than once per step: the time
/// since the previous lap belongs to the part named).
pub trait Laps {
    fn lap(&mut self, part: Part);
}

/// No profiling.
impl Laps for () {
    fn lap(&mut self, _part: Part) {}
}

/// Global L2 norm of the gradients of `vars` (those that have one), on the device, f64.
fn grad_norm(vars: &[Tensor], device: Device) -> Tensor {
    let _guard = tch::no_grad_guard();
    let squares: Vec<Tensor> = vars
        .iter()
        .map(Tensor::grad)
        .filter(Tensor::defined)
        .map(|g| g.square().sum(Kind::Double))
        .collect();
    if squares.is_empty() {
        Tensor::zeros([], (Kind::Double, device))
    } else {
        Tensor::stack(&squares, 0).sum(Kind::Double).sqrt()
    }
}

/// Device scalars waiting for the step's one read-back: loss terms (checked for finiteness)
/// and statistics (not checked), each with where its value goes.
struct Pending {
    terms: Vec<(&'static str, Tensor, SetStat)>,
    stats: Vec<(Tensor, SetStat)>,
}

/// Where a read-back value goes in [`StepStats`].
type SetStat = fn(&mut StepStats, f64);

impl Pending {
    fn term(&mut self, name: &'static str, t: &Tensor, set: SetStat) {
        self.terms.push((name, t.detach(), set));
    }

    fn stat(&mut self, t: Tensor, set: SetStat) {
        self.stats.push((t.detach(), set));
    }

    /// 1.0 where any term is NaN or inf, else 0.0: a float32 `[1]` tensor on `device`.
    fn non_finite_flag(&self, device: Device) -> Tensor {
        let _guard = tch::no_grad_guard();
        if self.terms.is_empty() {
            return Tensor::zeros([1], (Kind::Float, device));
        }
        let all = Tensor::cat(
            &self
                .terms
                .iter()
                .map(|(_, t, _)| t.to_kind(Kind::Float).reshape([1]))
                .collect::<Vec<_>>(),
            0,
        );
        all.isfinite()
            .all()
            .logical_not()
            .to_kind(Kind::Float)
            .reshape([1])
    }
}

/// Ors two optional float flags (`None` = clear).
fn either(a: &Tensor, b: Option<&Tensor>) -> Tensor {
    match b {
        Some(b) => a.maximum(&b.to_device(a.device())),
        None => a.shallow_clone(),
    }
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
    train_step_with_laps(
        nets,
        opts,
        batch,
        cfg,
        step,
        lr_factor,
        want_grad_norms,
        &mut (),
    )
}

/// [`train_step`], telling `laps` when each [`Part`] ends.
#[allow(clippy::too_many_arguments)]
pub fn train_step_with_laps(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    step: u64,
    lr_factor: f64,
    want_grad_norms: bool,
    laps: &mut dyn Laps,
) -> Result<StepStats, NonFinite> {
    tch::manual_seed(step_seed(cfg.seed, step));
    opts.gr.set_lr(cfg.optim.generator.lr * lr_factor);
    opts.d.set_lr(cfg.optim.discriminator.lr * lr_factor);
    let loss_cfg = &cfg.loss;
    let device = batch.x.device();
    let internal = |term: &'static str| NonFinite {
        step,
        term,
        value: f64::NAN,
    };
    let mut pending = Pending {
        terms: Vec::with_capacity(8),
        stats: Vec::with_capacity(8),
    };
    let phase = cfg.progressive.phase_at(step);
    // Mixed precision (crate::amp): forward passes autocast, outputs and losses in fp32.
    let amp = crate::amp::Autocast::new(cfg.amp, device);

    // 1. G and R. D's weights take no gradient from this loss.
    nets.d_store.freeze();
    opts.gr.zero_grad();
    laps.lap(Part::ZeroGrad);
    // [batch, 1, height, width]
    let fake = amp.run(|| nets.g.forward_t(&batch.x, true));
    laps.lap(Part::GForward);
    let (registered, smooth) = match nets.r.as_ref().filter(|_| phase.trains_registration()) {
        Some(r) => {
            // [batch, 2, height, width], pixels
            let flow = amp.run(|| r.forward_t(&fake, &batch.y, true));
            let registered = warp_with(cfg.model.registration.warp, &fake, &flow);
            laps.lap(Part::RForward);
            let mag = flow
                .detach()
                .square()
                .sum_dim_intlist(1, false, Kind::Float)
                .sqrt();
            pending.stat(mag.mean(Kind::Float), |s, v| s.flow_mean = v);
            pending.stat(mag.max(), |s, v| s.flow_max = v);
            let smooth = smoothness(&flow).map_err(|_| internal("smoothness (bad flow shape)"))?;
            (registered, Some(smooth))
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
        internal(e.term())
    })?;
    laps.lap(Part::Losses);
    // D judges G's output only once it trains (crate::phases)
    let adv_g = phase.trains_discriminator().then(|| {
        let d_fake_for_g = amp.run(|| nets.d.forward_t(&nets.d.input(&fake, &batch.x), true));
        laps.lap(Part::DForwardForG);
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
    laps.lap(Part::Losses);
    pending.term("l1", &image.recon.l1, |s, v| s.l1 = v);
    pending.term("ssim", &image.recon.ssim, |s, v| s.ssim = v);
    if let Some(p) = &image.perceptual {
        pending.term("perceptual", p, |s, v| s.perceptual = v);
    }
    if let Some(a) = &adv_g {
        pending.term("adversarial (G)", a, |s, v| s.adv_g = v);
    }
    if let Some(s) = &smooth {
        pending.term("smoothness", s, |st, v| st.smooth = v);
    }
    pending.term("total G+R", &loss_g, |s, v| s.loss_g = v);
    // scaled by the f16 loss scale, then unscaled before any use of the gradients
    opts.scaler.backward(&loss_g);
    let amp_gr = opts
        .scaler
        .unscale_flag(&nets.gr_store.trainable_variables());
    if want_grad_norms {
        pending.stat(grad_norm(&nets.gr_variables(GENERATOR), device), |s, v| {
            s.grad_g = v
        });
        pending.stat(
            grad_norm(&nets.gr_variables(REGISTRATION), device),
            |s, v| s.grad_r = v,
        );
    }
    nets.d_store.unfreeze();
    laps.lap(Part::GrBackward);

    // 2. D on real vs the detached fake (crate::phases: before D joins it is neither run
    // nor stepped).
    let amp_d = if phase.trains_discriminator() {
        discriminator_pass(
            nets,
            opts,
            batch,
            cfg,
            step,
            want_grad_norms,
            &fake,
            &amp,
            &mut pending,
            laps,
        )?
    } else {
        None
    };

    // 3. The updates, called off on the device if any term is not finite (or, with amp,
    // any gradient).
    let bad = pending.non_finite_flag(device);
    opts.gr.step_unless(&either(&bad, amp_gr.as_ref()));
    laps.lap(Part::GrAdam);
    if phase.trains_discriminator() {
        opts.d.step_unless(&either(&bad, amp_d.as_ref()));
        laps.lap(Part::DAdam);
    }

    // 4. The one read-back: terms, statistics and amp's flags.
    let mut flags = vec![];
    flags.extend(amp_gr.iter().map(|f| f.reshape([1])));
    flags.extend(amp_d.iter().map(|f| f.reshape([1])));
    let all: Vec<Tensor> = pending
        .terms
        .iter()
        .map(|(_, t, _)| t)
        .chain(pending.stats.iter().map(|(t, _)| t))
        .map(|t| t.to_kind(Kind::Double).reshape([1]))
        .chain(
            flags
                .iter()
                .map(|f| f.to_device(device).to_kind(Kind::Double)),
        )
        .collect();
    let values = Vec::<f64>::try_from(Tensor::cat(&all, 0).to_device(Device::Cpu))
        .map_err(|_| internal("read-back"))?;
    laps.lap(Part::Readback);
    let (term_values, rest) = values.split_at(pending.terms.len());
    let (stat_values, flag_values) = rest.split_at(pending.stats.len());
    let mut stats = StepStats {
        lung_weight: image.lung_weight,
        ..StepStats::default()
    };
    for ((_, _, set), v) in pending.terms.iter().zip(term_values) {
        set(&mut stats, *v);
    }
    for ((_, set), v) in pending.stats.iter().zip(stat_values) {
        set(&mut stats, *v);
    }
    let mut flag_values = flag_values.iter();
    let gr_finite = amp_gr.is_none() || flag_values.next() == Some(&0.0);
    let d_finite = amp_d.is_none() || flag_values.next() == Some(&0.0);
    let first_bad = pending
        .terms
        .iter()
        .zip(term_values)
        .find(|(_, v)| !v.is_finite());
    if first_bad.is_some() || !gr_finite {
        opts.gr.uncount_step();
    }
    if phase.trains_discriminator() && (first_bad.is_some() || !d_finite) {
        opts.d.uncount_step();
    }
    if let Some(((term, _, _), value)) = first_bad {
        return Err(NonFinite {
            step,
            term,
            value: *value,
        });
    }
    if amp_gr.is_some() {
        opts.scaler.record(gr_finite);
    }
    if amp_d.is_some() {
        opts.scaler.record(d_finite);
    }
    opts.scaler.update();
    Ok(stats)
}

/// D's forward, loss (+ R1) and backward on real vs the detached `fake`; queues its terms in
/// `pending` and returns amp's found-inf flag for D's gradients (`None` without amp).
#[allow(clippy::too_many_arguments)]
fn discriminator_pass(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    step: u64,
    want_grad_norms: bool,
    fake: &Tensor,
    amp: &crate::amp::Autocast,
    pending: &mut Pending,
    laps: &mut dyn Laps,
) -> Result<Option<Tensor>, NonFinite> {
    opts.d.zero_grad();
    laps.lap(Part::ZeroGrad);
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
    laps.lap(Part::DForward);
    let d_real = d_out.narrow(0, 0, n);
    let d_fake = d_out.narrow(0, n, n);
    let mut loss_d = discriminator_adversarial(cfg.loss.adversarial, &d_real, &d_fake)
        * cfg.loss.adversarial_weight;
    laps.lap(Part::Losses);
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
        pending.term("R1 penalty", &r1, |s, v| s.r1 = Some(v));
        loss_d += r1 * cfg.r1.weight();
        laps.lap(Part::DBackward);
    }
    pending.term("discriminator", &loss_d, |s, v| s.loss_d = v);
    pending.stat(d_real.detach().mean(Kind::Float), |s, v| s.d_real = v);
    pending.stat(d_fake.detach().mean(Kind::Float), |s, v| s.d_fake = v);
    opts.scaler.backward(&loss_d);
    let amp_d = opts
        .scaler
        .unscale_flag(&nets.d_store.trainable_variables());
    if want_grad_norms {
        let vars = nets.d_store.trainable_variables();
        pending.stat(grad_norm(&vars, fake.device()), |s, v| s.grad_d = v);
    }
    laps.lap(Part::DBackward);
    Ok(amp_d)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `Part::ALL` lists every part once, in declaration order, so `part as usize` indexes
    /// it (the benchmark's clock relies on this); names are distinct.
    #[test]
    fn parts_are_listed_in_declaration_order_with_distinct_names() {
        for (i, part) in Part::ALL.iter().enumerate() {
            assert_eq!(*part as usize, i, "{part:?}");
        }
        let mut names: Vec<&str> = Part::ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Part::ALL.len());
    }
}
