//! Timing the training step: whole (`train::step::train_step` itself) and by part.
//!
//! The whole-step figure calls the trainer's own function, so it measures exactly what
//! training runs. The per-part figures come from [`phased_step`], which performs the same
//! operations in the same order with the same library calls (G, R, warp, the model crate's
//! losses, D, the model crate's Adam) and stops a clock between them; `tests` check that it
//! computes the same losses and weights as `train_step`, so the parts cannot drift from the
//! real step unnoticed. On a GPU each clock stop synchronises the device, so the parts are
//! true per-part times (and their sum a little above the whole step).

use crate::stats::Summary;
use model::losses::{discriminator_adversarial, generator_adversarial, reconstruction, smoothness};
use model::warp::warp;
use std::time::Instant;
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};
use train::config::TrainConfig;
use train::nets::{Nets, Optimizers};
use train::step::{step_seed, train_step, BatchTensors, StepStats};

/// Waits for the device's queued work (CUDA), so that a clock read after it is honest.
pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// CPU time (user + system, all threads) this process has used, seconds, from
/// `/proc/self/stat` (in clock ticks of 1/100 s, Linux's `USER_HZ` on every mainstream
/// architecture); `None` off Linux. Unlike wall time, it barely moves when other processes
/// compete for the cores, so ours / PyTorch in CPU time is the steadier ratio on a loaded
/// machine (`bench.py` reads `time.process_time()`, the same quantity).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu_ticks(&stat).map(|t| t as f64 / 100.0)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line; the command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its closing `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Timings of the whole step: wall and CPU seconds of each timed step.
#[derive(Debug, Clone)]
pub struct StepTimes {
    pub wall: Summary,
    /// `None` where the CPU time cannot be read.
    pub cpu: Option<Summary>,
}

/// Runs `warmup + steps` training steps with `train_step` and returns the timings of the last
/// `steps` and the statistics of the first (for the parity check against PyTorch).
pub fn time_train_steps(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    warmup: usize,
    steps: usize,
    device: Device,
) -> anyhow::Result<(StepTimes, StepStats)> {
    let mut samples = Vec::with_capacity(steps);
    let mut cpu_samples = Vec::with_capacity(steps);
    let mut first = StepStats::default();
    for k in 0..warmup + steps {
        sync(device);
        let c0 = process_cpu_seconds();
        let t0 = Instant::now();
        let stats = train_step(nets, opts, batch, cfg, k as u64 + 1, 1.0, false)?;
        sync(device);
        let dt = t0.elapsed().as_secs_f64();
        let cpu = c0.zip(process_cpu_seconds()).map(|(a, b)| b - a);
        tracing::debug!(
            step = k + 1,
            seconds = dt,
            loss_g = stats.loss_g,
            "bench step"
        );
        if k == 0 {
            first = stats;
        }
        if k >= warmup {
            samples.push(dt);
            if let Some(c) = cpu {
                cpu_samples.push(c);
            }
        }
    }
    let wall = Summary::of(samples).ok_or_else(|| anyhow::anyhow!("no timed steps (steps = 0)"))?;
    let cpu = if cpu_samples.len() == wall.samples.len() {
        Summary::of(cpu_samples)
    } else {
        None
    };
    Ok((StepTimes { wall, cpu }, first))
}

/// The parts of the step, in the order they run.
pub const PARTS: &[(&str, &str)] = &[
    ("zero_grad", "zero G+R and D gradients"),
    ("g_forward", "G forward"),
    ("r_forward", "R forward + warp"),
    (
        "d_forward_for_g",
        "D forward on the fake (G's adversarial term)",
    ),
    ("losses", "L1+SSIM, smoothness, adversarial losses"),
    (
        "readback",
        "loss terms and statistics read back to the host",
    ),
    ("gr_backward", "G+R backward (through frozen D)"),
    ("gr_adam", "Adam step of G+R"),
    ("d_forward", "D forward on real and fake (one pass)"),
    ("d_backward", "D backward"),
    ("d_adam", "Adam step of D"),
];

/// Accumulates time per part within one step.
struct Clock {
    device: Device,
    last: Instant,
    acc: Vec<f64>,
}

impl Clock {
    fn new(device: Device) -> Self {
        sync(device);
        Self {
            device,
            last: Instant::now(),
            acc: vec![0.0; PARTS.len()],
        }
    }

    /// Charges the time since the last lap to `part`.
    fn lap(&mut self, part: &str) {
        sync(self.device);
        let now = Instant::now();
        let i = PARTS.iter().position(|(p, _)| *p == part).unwrap_or(0);
        self.acc[i] += (now - self.last).as_secs_f64();
        self.last = now;
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

/// What [`phased_step`] computed (to compare with `train_step`'s [`StepStats`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhasedStats {
    pub loss_g: f64,
    pub loss_d: f64,
}

/// One training step as `train::step::train_step` runs it (with registration, no gradient
/// norms), with a clock stopped between its parts. Returns the losses and the seconds spent
/// in each of [`PARTS`].
pub fn phased_step(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    step: u64,
) -> anyhow::Result<(PhasedStats, Vec<f64>)> {
    let device = batch.x.device();
    let loss_cfg = &cfg.loss;
    tch::manual_seed(step_seed(cfg.seed, step));
    opts.gr.set_lr(cfg.optim.generator.lr);
    opts.d.set_lr(cfg.optim.discriminator.lr);
    let mut clock = Clock::new(device);

    // 1. G and R, D frozen
    nets.d_store.freeze();
    opts.gr.zero_grad();
    clock.lap("zero_grad");
    let fake = nets.g.forward_t(&batch.x, true);
    clock.lap("g_forward");
    let r = nets
        .r
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the benchmark times the step with registration"))?;
    let flow = r.forward_t(&fake, &batch.y, true);
    let registered = warp(&fake, &flow);
    clock.lap("r_forward");
    let mag = flow
        .detach()
        .square()
        .sum_dim_intlist(1, false, Kind::Float)
        .sqrt();
    let (flow_mean, flow_max) = (mag.mean(Kind::Float), mag.max());
    let smooth = smoothness(&flow)?;
    let recon = reconstruction(&registered, &batch.y, &batch.lung, loss_cfg)?;
    clock.lap("losses");
    let d_fake_for_g = nets.d.forward_t(&nets.d.input(&fake, &batch.x), true);
    clock.lap("d_forward_for_g");
    let adv_g = generator_adversarial(loss_cfg.adversarial, &d_fake_for_g);
    let loss_g =
        &recon.total + &adv_g * loss_cfg.adversarial_weight + &smooth * loss_cfg.smoothness_weight;
    clock.lap("losses");
    let mut values = Vec::with_capacity(8);
    for t in [
        &flow_mean,
        &flow_max,
        &recon.l1,
        &recon.ssim,
        &adv_g,
        &smooth,
        &loss_g,
    ] {
        values.push(scalar(t));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        anyhow::bail!("a loss term is not finite ({v}) at step {step}");
    }
    clock.lap("readback");
    loss_g.backward();
    clock.lap("gr_backward");
    opts.gr.step();
    nets.d_store.unfreeze();
    clock.lap("gr_adam");

    // 2. D on real vs the detached fake
    opts.d.zero_grad();
    clock.lap("zero_grad");
    let fake = fake.detach();
    // real and fake in one D pass, as train_step does: [2 * batch, 1, h', w']
    let n = batch.y.size()[0];
    let d_in = Tensor::cat(
        &[
            nets.d.input(&batch.y, &batch.x),
            nets.d.input(&fake, &batch.x),
        ],
        0,
    );
    let d_out = nets.d.forward_t(&d_in, true);
    let (d_real, d_fake) = (d_out.narrow(0, 0, n), d_out.narrow(0, n, n));
    clock.lap("d_forward");
    let loss_d = discriminator_adversarial(loss_cfg.adversarial, &d_real, &d_fake)
        * loss_cfg.adversarial_weight;
    clock.lap("losses");
    let loss_d_value = scalar(&loss_d);
    let _ = (
        scalar(&d_real.detach().mean(Kind::Float)),
        scalar(&d_fake.detach().mean(Kind::Float)),
    );
    if !loss_d_value.is_finite() {
        anyhow::bail!("the discriminator loss is not finite ({loss_d_value}) at step {step}");
    }
    clock.lap("readback");
    loss_d.backward();
    clock.lap("d_backward");
    opts.d.step();
    clock.lap("d_adam");
    let stats = PhasedStats {
        loss_g: values[6],
        loss_d: loss_d_value,
    };
    Ok((stats, clock.acc))
}

/// Times `warmup + steps` [`phased_step`]s; returns one summary per part of [`PARTS`].
pub fn time_parts(
    nets: &mut Nets,
    opts: &mut Optimizers,
    batch: &BatchTensors,
    cfg: &TrainConfig,
    warmup: usize,
    steps: usize,
    first_step: u64,
) -> anyhow::Result<Vec<(String, Summary)>> {
    let mut per_part: Vec<Vec<f64>> = vec![Vec::with_capacity(steps); PARTS.len()];
    for k in 0..warmup + steps {
        let (_, parts) = phased_step(nets, opts, batch, cfg, first_step + k as u64)?;
        if k >= warmup {
            for (acc, v) in per_part.iter_mut().zip(parts) {
                acc.push(v);
            }
        }
    }
    PARTS
        .iter()
        .zip(per_part)
        .map(|((name, _), samples)| {
            Summary::of(samples)
                .map(|s| ((*name).to_owned(), s))
                .ok_or_else(|| anyhow::anyhow!("no timed steps (steps = 0)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::synthetic_batch;

    #[test]
    fn reads_cpu_ticks_past_an_odd_command_name() {
        let line = "1234 (my (odd) cmd) R 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 3 0 100";
        assert_eq!(parse_stat_cpu_ticks(line), Some(281));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let a = process_cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(process_cpu_seconds().unwrap() >= a);
    }

    fn setup() -> (TrainConfig, Nets, Optimizers) {
        let mut cfg = TrainConfig::with_preset("tiny").unwrap();
        cfg.seed = 7;
        let nets = Nets::new(&cfg, Device::Cpu);
        let opts = nets.optimizers(&cfg).unwrap();
        (cfg, nets, opts)
    }

    /// The timed mirror computes what the trainer's step computes: same losses at every step
    /// and the same weights afterwards, from the same start.
    #[test]
    fn phased_step_matches_train_step() {
        let batch = synthetic_batch(2, 32, Device::Cpu).unwrap();
        let (cfg, mut a, mut oa) = setup();
        let (_, mut b, mut ob) = setup();
        for step in 1..=2 {
            let sa = train_step(&mut a, &mut oa, &batch, &cfg, step, 1.0, false).unwrap();
            let (sb, parts) = phased_step(&mut b, &mut ob, &batch, &cfg, step).unwrap();
            assert_eq!(parts.len(), PARTS.len());
            assert!(parts.iter().all(|t| *t >= 0.0));
            assert!(
                (sa.loss_g - sb.loss_g).abs() <= 1e-6 * sa.loss_g.abs().max(1.0),
                "{sa:?} {sb:?}"
            );
            assert!(
                (sa.loss_d - sb.loss_d).abs() <= 1e-6 * sa.loss_d.abs().max(1.0),
                "{sa:?} {sb:?}"
            );
        }
        let va = a.gr_store.variables();
        let vb = b.gr_store.variables();
        for (name, t) in &va {
            let diff = (t - &vb[name]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name} differs by {diff}");
        }
        let (da, db) = (a.d_store.variables(), b.d_store.variables());
        for (name, t) in &da {
            let diff = (t - &db[name]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "D {name} differs by {diff}");
        }
    }
}
