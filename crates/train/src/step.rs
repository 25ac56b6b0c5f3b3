//! One RegGAN training step.
//!
//! In RegGAN's order (Kong et al. 2021, `Reg-GAN/trainer/CycTrainer.py`, the regist branch):
//! 1. **G and R**, on one loss and one optimizer:
//!    `fake = G(x)`, `flow = R(fake, y)`, `reg = warp(fake, flow)`;
//!    `loss = recon(reg, y; lung weights) + adv_w * adv_G(D(fake)) + smooth_w * smooth(flow)`.
//!    Without registration (`registration = false`): `recon(fake, y)` and no smoothness.
//!    With R across slices (`model.registration.through_plane`): G also translates the slices
//!    below and above (one forward pass over the three), `flow = R(fakes, y)` has a third
//!    component dz (slices), `reg = warp_through_plane(fakes, flow)`, and the smoothness is the
//!    in-plane field's plus dz's; D, the identity and the contrast terms see the centre slice.
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
//! The code reads as those numbered sections ([`train_step`] calls one function each). Each
//! part of the work ([`PARTS`]) runs inside a trace-level `tracing` span; the benchmark times
//! the trainer's own step by subscribing to them (synchronising the device at each span
//! boundary), so profiling needs no parameter of the step.
//!
//! **Data parallel** ([`train_step_synced`], [`crate::distributed`]): each backward pass is
//! followed by the all-reduce that averages its gradients over the ranks (inside the
//! `gr_backward` and `d_backward` parts), and before the gated updates the loss terms and
//! statistics become their means over the ranks in one more all-reduce that also sums the
//! ranks' stop votes. A term that is not finite on any rank is not finite in the mean, and the
//! amp flags are computed on the averaged gradients, so every rank takes the same decisions
//! with no further exchange; the step keeps its single read-back.
//!
//! The step reseeds libtorch's RNG from `(seed, step)` first, so whatever randomness the
//! networks use (dropout, if a config adds it) is a function of the step, and a resumed run
//! repeats the uninterrupted one without saving libtorch's generator state.

use crate::amp::Autocast;
use crate::config::TrainConfig;
use crate::distributed::Distributed;
use crate::image_losses::image_losses;
use crate::nets::{Nets, Optimizers, GENERATOR, REGISTRATION};
use crate::phases::Phase;
use dataset::sampler::Batch;
use infer::tensors::array_to_tensor;
use model::losses::{discriminator_adversarial, generator_adversarial, smoothness};
use model::warp::{warp_through_plane, warp_with};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

/// A batch on the device, `[batch, 1, height, width]` each.
#[derive(Debug)]
pub struct BatchTensors {
    /// NCCT in [-1, 1] (with 2.5D input: the middle slice).
    pub x: Tensor,
    /// With 2.5D input: G's input, `[batch, 2k + 1, height, width]` (the slice and `k`
    /// neighbours on each side); `None`: G sees `x`.
    pub stack: Option<Tensor>,
    /// With registration across slices (`model.registration.through_plane`): G's inputs for
    /// the slice below, the slice and the slice above, concatenated along the batch,
    /// `[3 * batch, 2k + 1, height, width]`.
    pub planes: Option<Tensor>,
    /// CTPA in [-1, 1].
    pub y: Tensor,
    /// Lung mask, 0/1.
    pub lung: Tensor,
    /// Body mask, 0/1.
    pub body: Tensor,
}

impl BatchTensors {
    /// Copies a loader batch to `device`, arranged for `cfg`'s G (its input channels) and R
    /// (across slices or not): the loader serves `2k + 1` NCCT slices for G's `2k + 1` input
    /// channels, one more on each side with R across slices ([`sampler_context`]).
    pub fn from_batch(b: &Batch, device: Device, cfg: &TrainConfig) -> anyhow::Result<Self> {
        let t = |a| array_to_tensor(a, device);
        let ncct = t(&b.ncct)?;
        let channels = ncct.size()[1];
        let g_channels = cfg.model.generator.in_channels.max(1);
        let through = cfg.registers_across_slices();
        let expected = g_channels + if through { 2 } else { 0 };
        anyhow::ensure!(
            channels == expected,
            "the batch holds {channels} NCCT slices per sample where G's {g_channels} input \
             channels{} need {expected}",
            if through { " and R across slices" } else { "" }
        );
        let x = ncct.narrow(1, channels / 2, 1).contiguous();
        let g_input_at = |first: i64| ncct.narrow(1, first, g_channels).contiguous();
        let (stack, planes) = match (through, g_channels) {
            (false, 1) => (None, None),
            (false, _) => (Some(ncct.shallow_clone()), None),
            (true, _) => (
                (g_channels > 1).then(|| g_input_at(1)),
                Some(Tensor::cat(
                    &[g_input_at(0), g_input_at(1), g_input_at(2)],
                    0,
                )),
            ),
        };
        Ok(Self {
            x,
            stack,
            planes,
            y: t(&b.ctpa)?,
            lung: t(&b.lung)?,
            body: t(&b.body)?,
        })
    }

    /// What G sees: the 2.5D stack, or `x`.
    pub fn g_input(&self) -> &Tensor {
        self.stack.as_ref().unwrap_or(&self.x)
    }
}

/// The NCCT neighbours on each side the loader serves for `cfg`: `k` for G's `2k + 1` input
/// channels, one more with registration across slices
/// ([`TrainConfig::registers_across_slices`]).
pub fn sampler_context(cfg: &TrainConfig) -> usize {
    cfg.model.generator.in_channels.max(1) as usize / 2 + usize::from(cfg.registers_across_slices())
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
    /// Mean and max of the in-plane |flow| in pixels (0 without R).
    pub flow_mean: f64,
    pub flow_max: f64,
    /// Mean |dz| in slices of R's through-plane component (0 without R across slices).
    pub flow_z_mean: f64,
    /// Gradient L2 norms (only when requested; else 0).
    pub grad_g: f64,
    pub grad_r: f64,
    pub grad_d: f64,
    /// Perceptual (VGG feature) distance, before its weight (0 when off).
    pub perceptual: f64,
    /// The identity term outside the contrast, before its weight (0 when off).
    pub identity: f64,
    /// The drift of G's output over the soft tissue, before its weight (0 when off).
    pub identity_drift: f64,
    /// The contrast region's mean error, before its weight (0 when off).
    pub contrast_mean: f64,
    /// The peak error over the contrast region and the lungs, before its weight (0 when off).
    pub contrast_peak: f64,
    /// The contrast region's quantile shift ([`crate::contrast::quantile_shift`]), before its
    /// factor (0 when off).
    pub contrast_quantile: f64,
    /// The lung weight of this step (the curriculum's, else `loss.lung_weight`).
    pub lung_weight: f64,
    /// Data parallel: the sum of the ranks' stop votes (each the signal number that asked it
    /// to stop, 0 for none), so every rank stops after the same step. 0 in one process.
    pub stop_votes: f64,
}

/// What a data-parallel step shares with the other ranks.
#[derive(Debug, Clone, Copy)]
pub struct StepSync<'a> {
    pub dist: &'a Distributed,
    /// This rank's stop vote: the number of the signal that asked it to stop, 0 for none.
    pub stop_vote: i32,
}

/// Why a step failed: a non-finite loss (every rank sees it), or a collective that failed
/// (a peer died or hangs).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    NonFinite(#[from] NonFinite),
    #[error("{0:#}")]
    Peer(anyhow::Error),
}

/// A loss term that is NaN or infinite.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the {term} loss is not finite ({value}) at step {step}")]
pub struct NonFinite {
    pub step: u64,
    pub term: &'static str,
    pub value: f64,
}

/// The target of the step's profiling spans ([`PARTS`]). The spans are at trace level, so a
/// normal log never records them; the benchmark times them with its own subscriber.
pub const SPAN_TARGET: &str = "ncct2ctpa::step";

/// The parts of a step, in the order they first run: `(span name, what it covers)`. Each is a
/// trace span of target [`SPAN_TARGET`] around its code (a part may be entered more than once
/// per step); the PyTorch twin times the same names.
pub const PARTS: [(&str, &str); 11] = [
    ("zero_grad", "drop the G+R and D gradients"),
    ("g_forward", "G forward"),
    ("r_forward", "R forward + warp"),
    ("losses", "L1+SSIM, smoothness, adversarial and D losses"),
    (
        "d_forward_for_g",
        "D forward on the fake (G's adversarial term)",
    ),
    ("gr_backward", "G+R backward (through frozen D)"),
    ("d_forward", "D forward on real and fake (one pass)"),
    ("d_backward", "D backward"),
    ("gr_adam", "Adam step of G+R (gated on the device)"),
    ("d_adam", "Adam step of D (gated on the device)"),
    ("readback", "the one read-back of losses and statistics"),
];

/// Enters the profiling span of a part of the step (one of [`PARTS`]) until the end of the
/// enclosing block.
macro_rules! part {
    ($name:literal) => {
        tracing::trace_span!(target: "ncct2ctpa::step", $name).entered()
    };
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
#[derive(Default)]
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

impl Pending {
    /// Data parallel: every term and statistic becomes its mean over the ranks, and the ranks'
    /// stop votes are summed into [`StepStats::stop_votes`], in one all-reduce of a packed
    /// vector (queued on the device like the rest of the step).
    fn share(&mut self, sync: StepSync<'_>, device: Device) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        let n = self.terms.len() + self.stats.len();
        let mut parts: Vec<Tensor> = self
            .terms
            .iter()
            .map(|(_, t, _)| t)
            .chain(self.stats.iter().map(|(t, _)| t))
            .map(|t| t.to_kind(Kind::Double).reshape([1]))
            .collect();
        parts.push(Tensor::from_slice(&[f64::from(sync.stop_vote)]).to_device(device));
        let packed = Tensor::cat(&parts, 0);
        sync.dist.sum_(&packed, "sharing the step's losses")?;
        let means = packed.narrow(0, 0, n as i64) / sync.dist.world_size() as f64;
        let mut i = 0;
        for (_, t, _) in &mut self.terms {
            *t = means.get(i);
            i += 1;
        }
        for (t, _) in &mut self.stats {
            *t = means.get(i);
            i += 1;
        }
        self.stats
            .push((packed.get(n as i64), |s, v| s.stop_votes = v));
        Ok(())
    }
}

/// Ors two optional float flags (`None` = clear).
fn either(a: &Tensor, b: Option<&Tensor>) -> Tensor {
    match b {
        Some(b) => a.maximum(&b.to_device(a.device())),
        None => a.shallow_clone(),
    }
}

/// What one step needs besides the networks: its settings, resolved once.
struct StepCtx<'a> {
    cfg: &'a TrainConfig,
    /// The (1-based) step being taken.
    step: u64,
    phase: Phase,
    /// Mixed precision (crate::amp): forward passes autocast, outputs and losses in fp32.
    amp: Autocast,
    device: Device,
    /// Compute the gradient norms (a few extra reductions, so only on logging steps).
    want_grad_norms: bool,
    /// Data parallel: the group the gradients and terms are averaged over.
    sync: Option<StepSync<'a>>,
}

impl StepCtx<'_> {
    /// Data parallel: replaces the gradients of `vars` by their means over the ranks.
    fn average_gradients(&self, vars: &[Tensor], what: &str) -> Result<(), StepError> {
        match self.sync {
            Some(sync) => sync
                .dist
                .average_gradients(vars, what)
                .map_err(StepError::Peer),
            None => Ok(()),
        }
    }

    /// A failure that is not a loss value (bad shapes, autograd): reported as a non-finite
    /// `term`, so the run stops the same way.
    fn internal(&self, term: &'static str) -> NonFinite {
        NonFinite {
            step: self.step,
            term,
            value: f64::NAN,
        }
    }
}

/// What section 1 (G and R) leaves for the rest of the step.
struct GeneratorPass {
    /// G's output, `[batch, 1, height, width]`, still attached to G's graph.
    fake: Tensor,
    /// The lung weight the reconstruction used.
    lung_weight: f64,
    /// amp's found-inf flag of G+R's gradients (`None` without the f16 scaler).
    amp_flag: Option<Tensor>,
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
    match train_step_synced(
        nets,
        opts,
        batch,
        cfg,
        step,
        lr_factor,
        want_grad_norms,
        None,
    ) {
        Ok(stats) => Ok(stats),
        Err(StepError::NonFinite(nf)) => Err(nf),
        // without a group there is no collective to fail
        Err(StepError::Peer(e)) => unreachable!("a collective failed without a group: {e:#}"),
    }
}

/// [`train_step`] as one rank of a data-parallel run (`sync`; `None`: one process).
#[allow(clippy::too_many_arguments)]
pub fn train_step_synced(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    step: u64,
    lr_factor: f64,
    want_grad_norms: bool,
    sync: Option<StepSync<'_>>,
) -> Result<StepStats, StepError> {
    tch::manual_seed(step_seed(cfg.seed, step));
    opts.gr.set_lr(cfg.optim.generator.lr * lr_factor);
    opts.d.set_lr(cfg.optim.discriminator.lr * lr_factor);
    let device = batch.x.device();
    let ctx = StepCtx {
        cfg,
        step,
        phase: cfg.progressive.phase_at(step),
        amp: Autocast::new(cfg.amp, device),
        device,
        want_grad_norms,
        sync,
    };
    let mut pending = Pending::default();
    // 1. G and R: forward, losses, backward (D frozen).
    let gr = generator_pass(&ctx, nets, opts, batch, &mut pending)?;
    // 2. D on real vs the detached fake (crate::phases: before D joins it is neither run
    //    nor stepped).
    let amp_d = match ctx.phase.trains_discriminator() {
        true => discriminator_pass(&ctx, nets, opts, batch, &gr.fake, &mut pending)?,
        false => None,
    };
    // Data parallel: the terms and statistics become their means over the ranks.
    if let Some(sync) = ctx.sync {
        let _part = part!("gr_adam");
        pending.share(sync, device).map_err(StepError::Peer)?;
    }
    // 3. The updates, called off on the device if any term (or, with amp, any gradient) is
    //    not finite.
    gated_updates(&ctx, opts, &pending, gr.amp_flag.as_ref(), amp_d.as_ref());
    // 4. The one read-back of terms, statistics and amp's flags; then the host's verdict.
    let flags = [gr.amp_flag.as_ref(), amp_d.as_ref()];
    let values = read_back(&ctx, &pending, &flags)?;
    Ok(settle(
        &ctx,
        opts,
        &pending,
        &values,
        &flags,
        gr.lung_weight,
    )?)
}

/// Section 1: G (and R) forward, G+R's loss, and its backward pass through the frozen D.
fn generator_pass(
    ctx: &StepCtx<'_>,
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    pending: &mut Pending,
) -> Result<GeneratorPass, StepError> {
    {
        let _part = part!("zero_grad");
        // D's weights take no gradient from this loss.
        nets.d_store.freeze();
        opts.gr.zero_grad();
    }
    // [batch, 1, height, width]; with R across slices also [batch, 3, height, width]: G's
    // outputs for the slices below, at and above (one forward pass over the three)
    let across = batch.planes.as_ref().filter(|_| registers(ctx, nets));
    let (fake, planes) = {
        let _part = part!("g_forward");
        match across {
            Some(inputs) => {
                let all = ctx.amp.run(|| nets.g.forward_t(inputs, true));
                let parts = all.split(batch.x.size()[0], 0);
                (parts[1].shallow_clone(), Some(Tensor::cat(&parts, 1)))
            }
            None => (
                ctx.amp.run(|| nets.g.forward_t(batch.g_input(), true)),
                None,
            ),
        }
    };
    let (registered, smooth) = register(ctx, nets, batch, &fake, planes.as_ref(), pending)?;
    let (loss_g, lung_weight) =
        generator_loss(ctx, nets, batch, &fake, &registered, smooth, pending)?;
    let _part = part!("gr_backward");
    // scaled by the f16 loss scale, then unscaled before any use of the gradients
    opts.scaler.backward(&loss_g);
    ctx.average_gradients(&nets.gr_store.trainable_variables(), "G+R")?;
    let amp_flag = opts
        .scaler
        .unscale_flag(&nets.gr_store.trainable_variables());
    if ctx.want_grad_norms {
        let g = grad_norm(&nets.gr_variables(GENERATOR), ctx.device);
        pending.stat(g, |s, v| s.grad_g = v);
        let r = grad_norm(&nets.gr_variables(REGISTRATION), ctx.device);
        pending.stat(r, |s, v| s.grad_r = v);
    }
    nets.d_store.unfreeze();
    Ok(GeneratorPass {
        fake,
        lung_weight,
        amp_flag,
    })
}

/// Whether R runs this step (configured, and joined: crate::phases).
fn registers(ctx: &StepCtx<'_>, nets: &Nets) -> bool {
    nets.r.is_some() && ctx.phase.trains_registration()
}

/// R's flow on `fake` against the CTPA and the warped `fake`, with the flow's smoothness
/// term; `fake` itself and no smoothness without R (or before R joins, crate::phases). With
/// `planes` (R across slices: G's outputs below, at and above), R sees the three and its
/// through-plane component interpolates them ([`warp_through_plane`]); the smoothness is the
/// in-plane field's plus dz's.
fn register(
    ctx: &StepCtx<'_>,
    nets: &Nets,
    batch: &BatchTensors,
    fake: &Tensor,
    planes: Option<&Tensor>,
    pending: &mut Pending,
) -> Result<(Tensor, Option<Tensor>), NonFinite> {
    let Some(r) = nets.r.as_ref().filter(|_| registers(ctx, nets)) else {
        return Ok((fake.shallow_clone(), None));
    };
    if r.config().through_plane != planes.is_some() {
        // a hand-built batch without the neighbouring slices (or with them for a plain R)
        tracing::error!(
            "step {}: R {} across slices but the batch {} G's outputs for the neighbouring \
             slices",
            ctx.step,
            if r.config().through_plane {
                "registers"
            } else {
                "does not register"
            },
            if planes.is_some() { "holds" } else { "lacks" }
        );
        return Err(ctx.internal("registration across slices (batch without neighbours)"));
    }
    let method = ctx.cfg.model.registration.warp;
    let (flow, registered) = {
        let _part = part!("r_forward");
        // [batch, 2 (3 across slices), height, width], pixels (and slices)
        let flow = ctx
            .amp
            .run(|| r.forward_t(planes.unwrap_or(fake), &batch.y, true));
        let registered = match planes {
            Some(p) => warp_through_plane(method, p, &flow),
            None => warp_with(method, fake, &flow),
        };
        (flow, registered)
    };
    let _part = part!("losses");
    let inplane = flow.narrow(1, 0, 2);
    let mag = inplane
        .detach()
        .square()
        .sum_dim_intlist(1, false, Kind::Float)
        .sqrt();
    pending.stat(mag.mean(Kind::Float), |s, v| s.flow_mean = v);
    pending.stat(mag.max(), |s, v| s.flow_max = v);
    let bad = |_| ctx.internal("smoothness (bad flow shape)");
    let mut smooth = smoothness(&inplane).map_err(bad)?;
    if planes.is_some() {
        let dz = flow.narrow(1, 2, 1);
        pending.stat(dz.detach().abs().mean(Kind::Float), |s, v| {
            s.flow_z_mean = v
        });
        smooth += smoothness(&dz).map_err(bad)?;
    }
    Ok((registered, Some(smooth)))
}

/// G+R's loss: reconstruction (multi-resolution, curriculum lung weight) + perceptual,
/// adversarial (once D trains) and smoothness, each queued for the read-back. Returns the
/// total and the lung weight used.
fn generator_loss(
    ctx: &StepCtx<'_>,
    nets: &Nets,
    batch: &BatchTensors,
    fake: &Tensor,
    registered: &Tensor,
    smooth: Option<Tensor>,
    pending: &mut Pending,
) -> Result<(Tensor, f64), NonFinite> {
    let (cfg, step) = (ctx.cfg, ctx.step);
    // [batch, 1, height, width], 0/1: where the CTPA is brighter (crate::contrast)
    let c = &cfg.contrast;
    let core = (cfg.identity.uses_region() || c.uses_region()).then(|| {
        let w = cfg.window();
        let threshold = 2.0 * cfg.contrast.threshold_hu / f64::from(w.max - w.min);
        crate::contrast::contrast_core(&batch.x, &batch.y, &batch.body, threshold, c.motion_px)
    });
    let region = core
        .as_ref()
        .map(|core| crate::contrast::grow_core(core, &batch.body, c.motion_px));
    let floor = region
        .as_ref()
        .filter(|_| cfg.contrast.weighted())
        .map(|r| crate::contrast::weight_floor(r, cfg.contrast.weight));
    let image = {
        let _part = part!("losses");
        let losses = cfg.loss.clone();
        image_losses(
            registered,
            &batch.y,
            &batch.lung,
            floor.as_ref(),
            cfg,
            nets.perceptual.as_ref(),
            step,
        )
        .map_err(|e| {
            tracing::error!("step {step}: {e} (loss settings {losses:?})");
            ctx.internal(e.term())
        })?
    };
    // D judges G's output only once it trains (crate::phases)
    let adv_g = ctx.phase.trains_discriminator().then(|| {
        let _part = part!("d_forward_for_g");
        let d_fake_for_g = ctx
            .amp
            .run(|| nets.d.forward_t(&nets.d.input(fake, &batch.x), true));
        generator_adversarial(cfg.loss.adversarial, &d_fake_for_g)
    });
    let _part = part!("losses");
    let mut loss_g = match &adv_g {
        Some(a) => &image.total + a * cfg.loss.adversarial_weight,
        // a new tensor: the `+=` below must not write into image.total
        None => image.total.copy(),
    };
    if let Some(s) = &smooth {
        loss_g += s * cfg.loss.smoothness_weight;
    }
    if let (true, Some(region)) = (cfg.identity.enabled(), &region) {
        let free = cfg
            .identity
            .exempt(region, &batch.x, &batch.lung, &cfg.window());
        let id = crate::contrast::identity_loss(fake, &batch.x, &free, &batch.body);
        loss_g += &id * cfg.identity.weight_at(step);
        pending.term("identity", &id, |s, v| s.identity = v);
    }
    if let (true, Some(region)) = (cfg.identity.drift_term(), &region) {
        // the soft tissue: the body outside the lungs and the region
        let kept = tch::no_grad(|| (region.neg() + 1.0) * (batch.lung.neg() + 1.0) * &batch.body);
        let d = crate::contrast::drift_loss(fake, &batch.x, &kept, cfg.identity.drift_px);
        loss_g += &d * cfg.identity.drift_weight;
        pending.term("identity drift", &d, |s, v| s.identity_drift = v);
    }
    if let (true, Some(region)) = (c.mean_term(), &region) {
        let m = crate::contrast::region_mean_error(registered, &batch.y, region);
        loss_g += &m * c.mean_weight;
        pending.term("contrast mean error", &m, |s, v| s.contrast_mean = v);
    }
    if let (true, Some(region)) = (c.peak_term(), &region) {
        // where the vessels are: the contrast region and the lungs
        let mask = tch::no_grad(|| region.maximum(&batch.lung));
        let p = crate::contrast::peak_error(registered, &batch.y, &mask, c.peak_px);
        loss_g += &p * c.peak_weight;
        pending.term("contrast peak error", &p, |s, v| s.contrast_peak = v);
    }
    let quantile = c.quantile_at(step);
    if let (true, Some(region), Some(core)) = (quantile != 0.5, &region, &core) {
        // the full-resolution L1's own pixel weights, so the sum is its pinball loss
        let w = model::losses::pixel_weights(&batch.lung, image.lung_weight, floor.as_ref());
        let within =
            crate::contrast::quantile_region(region, core, &batch.lung, c.quantile_outside());
        let q = crate::contrast::quantile_shift(registered, &batch.y, &within, &w);
        let factor = (2.0 * quantile - 1.0) * cfg.loss.l1_weight * cfg.loss.scale_weights[0];
        loss_g += &q * factor;
        pending.term("contrast quantile shift", &q, |s, v| {
            s.contrast_quantile = v
        });
    }
    if cfg.hooks.inject_nan_at_step == Some(step) {
        loss_g *= f64::NAN;
    }
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
    Ok((loss_g, image.lung_weight))
}

/// Section 2: D's forward, loss (+ R1) and backward on real vs the detached `fake`; queues
/// its terms in `pending` and returns amp's found-inf flag for D's gradients (`None` without
/// amp).
fn discriminator_pass(
    ctx: &StepCtx<'_>,
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    fake: &Tensor,
    pending: &mut Pending,
) -> Result<Option<Tensor>, StepError> {
    {
        let _part = part!("zero_grad");
        opts.d.zero_grad();
    }
    let cfg = ctx.cfg;
    let n = batch.y.size()[0];
    // On R1 steps the real image is a leaf that requires a gradient (model::r1).
    let r1_now = cfg.r1.active_at(ctx.step);
    let real = match r1_now {
        true => batch.y.detach().copy().set_requires_grad(true),
        false => batch.y.shallow_clone(),
    };
    // [2 * batch, 1, h', w']
    let d_out = {
        let _part = part!("d_forward");
        // Real and fake go through D in one forward pass (concatenated along the batch; D's
        // instance norm is per image, so this equals two passes): one power iteration per D
        // update, and the spectral-norm vectors the graph saved are not changed in place by
        // a second forward before the backward pass.
        let d_in = Tensor::cat(
            &[
                nets.d.input(&real, &batch.x),
                nets.d.input(&fake.detach(), &batch.x),
            ],
            0,
        );
        ctx.amp.run(|| nets.d.forward_t(&d_in, true))
    };
    let (d_real, d_fake) = (d_out.narrow(0, 0, n), d_out.narrow(0, n, n));
    let mut loss_d = {
        let _part = part!("losses");
        discriminator_adversarial(cfg.loss.adversarial, &d_real, &d_fake)
            * cfg.loss.adversarial_weight
    };
    let _part = part!("d_backward");
    if r1_now {
        // E ||grad_y D(y)||^2 by double backward; its gradient reaches D's weights below
        let r1 = model::r1::mean_squared_gradient(&d_real, &real).map_err(|e| {
            tracing::error!("step {}: {e}", ctx.step);
            ctx.internal("R1 penalty (autograd)")
        })?;
        pending.term("R1 penalty", &r1, |s, v| s.r1 = Some(v));
        loss_d += r1 * cfg.r1.weight();
    }
    pending.term("discriminator", &loss_d, |s, v| s.loss_d = v);
    pending.stat(d_real.detach().mean(Kind::Float), |s, v| s.d_real = v);
    pending.stat(d_fake.detach().mean(Kind::Float), |s, v| s.d_fake = v);
    opts.scaler.backward(&loss_d);
    let vars = nets.d_store.trainable_variables();
    ctx.average_gradients(&vars, "D")?;
    let amp_d = opts.scaler.unscale_flag(&vars);
    if ctx.want_grad_norms {
        pending.stat(grad_norm(&vars, ctx.device), |s, v| s.grad_d = v);
    }
    Ok(amp_d)
}

/// Section 3: both Adam updates, queued on the device and called off there when any term is
/// not finite (or, with amp, when that network's gradients are not): nothing waits for the
/// host.
fn gated_updates(
    ctx: &StepCtx<'_>,
    opts: &mut Optimizers,
    pending: &Pending,
    amp_gr: Option<&Tensor>,
    amp_d: Option<&Tensor>,
) {
    let bad = {
        let _part = part!("gr_adam");
        let bad = pending.non_finite_flag(ctx.device);
        opts.gr.step_unless(&either(&bad, amp_gr));
        bad
    };
    if ctx.phase.trains_discriminator() {
        let _part = part!("d_adam");
        opts.d.step_unless(&either(&bad, amp_d));
    }
}

/// Section 4: every queued term and statistic, then amp's flags, to the host in one
/// transfer, in that order.
fn read_back(
    ctx: &StepCtx<'_>,
    pending: &Pending,
    flags: &[Option<&Tensor>; 2],
) -> Result<Vec<f64>, NonFinite> {
    let _part = part!("readback");
    let all: Vec<Tensor> = pending
        .terms
        .iter()
        .map(|(_, t, _)| t)
        .chain(pending.stats.iter().map(|(t, _)| t))
        .map(|t| t.to_kind(Kind::Double).reshape([1]))
        .chain(
            flags
                .iter()
                .flatten()
                .map(|f| f.reshape([1]).to_device(ctx.device).to_kind(Kind::Double)),
        )
        .collect();
    Vec::<f64>::try_from(Tensor::cat(&all, 0).to_device(Device::Cpu))
        .map_err(|_| ctx.internal("read-back"))
}

/// The host's side of the read-back `values`: fills the statistics, takes back the step
/// counts of updates the device called off, reports the first non-finite term, and feeds
/// amp's loss scaler.
fn settle(
    ctx: &StepCtx<'_>,
    opts: &mut Optimizers,
    pending: &Pending,
    values: &[f64],
    flags: &[Option<&Tensor>; 2],
    lung_weight: f64,
) -> Result<StepStats, NonFinite> {
    let (term_values, rest) = values.split_at(pending.terms.len());
    let (stat_values, flag_values) = rest.split_at(pending.stats.len());
    let mut stats = StepStats {
        lung_weight,
        ..StepStats::default()
    };
    for ((_, _, set), v) in pending.terms.iter().zip(term_values) {
        set(&mut stats, *v);
    }
    for ((_, set), v) in pending.stats.iter().zip(stat_values) {
        set(&mut stats, *v);
    }
    let mut flag_values = flag_values.iter();
    let [amp_gr, amp_d] = flags;
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
    if ctx.phase.trains_discriminator() && (first_bad.is_some() || !d_finite) {
        opts.d.uncount_step();
    }
    if let Some(((term, _, _), value)) = first_bad {
        return Err(NonFinite {
            step: ctx.step,
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

    /// Every part has a distinct name and a description (the benchmark's JSON keys and the
    /// PyTorch twin's).
    #[test]
    fn parts_have_distinct_names() {
        let mut names: Vec<&str> = PARTS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PARTS.len());
        assert!(PARTS.iter().all(|(_, d)| !d.is_empty()));
    }
}
